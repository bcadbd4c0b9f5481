import Basics
import ArgumentParser
import Data
import Foundation
import Kernels
import MPI
import Training
import Transformer

struct BenchStep: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "step",
        abstract: "Time full training steps of a config's model on random tokens, alone or under mpirun.",
        discussion: """
            A step is training's own (TrainingStep): forward and backward of training.grad_accum micro-batches, the \
            bucketed gradient all-reduce during the last backward (under mpirun), the allreduce of loss and token \
            counts, gradient clipping and AdamW. It reports the median step time after warm-up, tokens/s (target \
            tokens), model GFLOP/s (6 per parameter per position it processes, plus 12 x d_model x key positions per \
            attention layer per query position; an encoder's parameters at source positions; as PyTorch's reference \
            counts), and peak resident memory against the model's own need (parameters, \
            gradients, two AdamW moments, activations), with what attention keeps of it between forward and \
            backward (one log-sum-exp per row, head and query: B·H·T per layer) and what its kernels allocate while \
            they run (score tiles and packed operands).

            Under mpirun every rank takes its own batch; tokens/s counts all ranks, and the communication share is \
            the time spent waiting after backward. Data-parallel efficiency = (N-rank tokens/s) / (N x 1-rank tokens/s).

            Examples:
              ddp bench step --config Configs/bench-w2.yaml --threads 1
              Launch/mpirun.sh -np 2 --threads 1 bench step --config Configs/bench-w1.yaml
            """
    )

    /// Its model, training settings and data lengths define the workload.
    @OptionGroup var config: ConfigOptions

    @OptionGroup var threads: ThreadsOption

    @Option(parsing: .unconditional, help: "Timed steps.")
    var steps: Int = 10

    @Option(parsing: .unconditional, help: "Untimed warm-up steps.")
    var warmup: Int = 2

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    @Flag(help: "Only load and check the config (and that memory holds the model's parameters, gradients and AdamW moments), and print the model's parameter count.")
    var dryRun = false

    func validate() throws {
        guard (1...largestBenchCount).contains(steps) else { throw ValidationError("--steps must be 1 to \(largestBenchCount), got \(steps).") }
        guard (0...largestBenchCount).contains(warmup) else { throw ValidationError("--warmup must be 0 to \(largestBenchCount), got \(warmup).") }
    }

    func run() throws {
        // (Without MPI: one process says whether the config is valid.)
        if dryRun { try requireOneProcess("ddp bench step --dry-run") }
        let run = try config.load()
        let model = run.model
        if dryRun {
            // Parameters, gradients and AdamW's two moments, at least (activations come on top): a model this machine
            // cannot hold is not "valid" here, though nothing is allocated to find out.
            let parameters = TransformerModel.parameterLayout(for: model).count
            if let shortfall = MemoryBudget.shortfall(Double(parameters) * 16, for: "training it (parameters, gradients and AdamW moments, before activations)") {
                throw RunError("\(config.config): a model of \(parameters) parameters, which this machine cannot train: \(shortfall)")
            }
            print("\(config.config): valid, \(parameters) parameters")
            return
        }
        try withMPI { runtime in
            let world = runtime.world
            // Ranks given other step counts would wait in collectives the others never make; another model or batch
            // mismatches in one, and the report would give rank 0's tokens for all. (Threads may differ per rank.)
            var comparable = run
            comparable.training.threads = 0
            var digest = ContentDigest()
            digest.add(String(decoding: try JSONEncoder.sortedKeys.encode(comparable), as: UTF8.self) + " \(steps) \(warmup)")
            try requireRanksAgree(world, on: [("the config and the options (--steps, --warmup)", digest.value)],
                                  hint: "the same --config, --set and options on every rank?")
            let threadCount = try threads.apply(world: world)
            let b = run.training.batchSize, s = model.kind == .encoderDecoder ? run.data.sourceLength : 0, t = run.data.targetLength
            let transformer: TransformerModel
            do {
                transformer = try TransformerModel(config: model, maxBatch: b, maxSourceLength: s, maxTargetLength: t, optimizerState: true)
            } catch let error as ModelConfigError where error.key == "batch_size" {
                throw RunError("\(config.config): training.batch_size \(b): \(error.message) (the activations of a batch push the model over)")
            }
            transformer.initializeParameters(seed: run.training.seed)
            let step = TrainingStep(model: transformer, optimizer: AdamW(layout: transformer.layout, settings: run.optimizer.settings),
                                    world: world, training: run.training)

            let batch = Self.randomBatch(run, rank: world.rank)
            let clock = ContinuousClock()
            var times: [Double] = [], waits: [Double] = []
            var lastLoss = 0.0
            for index in 0..<(warmup + steps) {
                try world.barrier()
                let start = clock.now
                let outcome = try step.run(step: index, dropoutSeed: run.training.seed, learningRate: run.learningRateSchedule.rate(step: index + 1),
                                           stopRequested: false) { batch }
                if index >= warmup {
                    times.append((clock.now - start).seconds)
                    waits.append(outcome.communicationSeconds)
                }
                lastLoss = outcome.lossPerToken
            }
            try world.allreduce(&times, op: .max)
            try world.allreduce(&waits, op: .max)
            let stepSeconds = median(times)
            let parameters = transformer.layout.count
            let sequences = b * world.size * run.training.accumulationSteps, tokens = sequences * t
            let flops = Self.modelFLOPs(model, layout: transformer.layout, sourceLength: s, targetLength: t) * Double(sequences)
            let needBytes = (4 * parameters + transformer.activationFloats) * 4
            let scratchBytes = transformer.attentionScratchFloats(threads: threadCount) * 4
            let peakBytes = try world.allreduce(Int64(peakResidentBytes()), op: .max)
            let report = StepReport(workload: config.config, ranks: world.size, threads: threadCount, blas_kernels: blasCoreName,
                                    parameters: parameters,
                                    tokens_per_step: tokens, step_seconds: stepSeconds, tokens_per_s: Double(tokens) / stepSeconds,
                                    gflops: flops / stepSeconds / 1e9, communication_wait_share: median(waits) / stepSeconds,
                                    peak_rss_bytes: Int(peakBytes), model_bytes: needBytes, memory_ratio: Double(peakBytes) / Double(needBytes),
                                    attention_state_bytes: transformer.attentionStateFloats * 4, attention_scratch_bytes: scratchBytes,
                                    final_loss: lastLoss)
            if world.rank == 0 { print(json ? try report.json() : report.table()) }
        }
    }
}

extension BenchStep {
    /// Model FLOPs of training on one sequence (pair) of `sourceLength` and `targetLength` positions, as nanoGPT
    /// and PaLM count them: 6 per parameter per position it processes (an encoder-decoder's `encoder.` parameters
    /// at source positions, every other parameter at target positions) plus 12 x d_model x key positions per
    /// attention layer per query position (encoder self-attention over the source, decoder self-attention over the
    /// target, cross-attention from target to source). An encoder-only model's positions are the target's.
    static func modelFLOPs(_ model: ModelConfig, layout: ParameterLayout, sourceLength s: Int, targetLength t: Int) -> Double {
        let (c, source, target) = (Double(model.dModel), Double(s), Double(t))
        guard model.kind == .encoderDecoder else {
            let layers = Double(model.kind == .encoderOnly ? model.encoderLayers : model.decoderLayers)
            return (6 * Double(layout.count) + 12 * layers * target * c) * target
        }
        let encoder = Double(layout.views.filter { $0.name.hasPrefix("encoder.") }.map(\.count).reduce(0, +))
        let rest = Double(layout.count) - encoder
        return (6 * encoder + 12 * Double(model.encoderLayers) * source * c) * source
            + (6 * rest + 12 * Double(model.decoderLayers) * (target + source) * c) * target
    }

    /// A batch of random real tokens (no PAD), as the PyTorch reference draws them, different on every rank; an
    /// encoder-only model's windows go through BERT's recipe with the last id as the mask token.
    static func randomBatch(_ run: RunConfig, rank: Int) -> TokenBatch {
        let model = run.model
        let b = run.training.batchSize, s = model.kind == .encoderDecoder ? run.data.sourceLength : 0, t = run.data.targetLength
        var random = SplitMix64(seed: UInt64(rank) &+ 17)
        // Encoder-only: the last id is the mask token, which real windows never hold.
        let ordinary = Tokenizer.firstByteID..<Int32(model.vocabSize - (model.kind == .encoderOnly ? 1 : 0))
        let token = { Int32.random(in: ordinary, using: &random) }
        let batch = TokenBatch(batchSize: b, sourceLength: s, targetLength: t, source: (0..<(b * s)).map { _ in token() },
                               decoderInput: (0..<(b * t)).map { _ in token() }, labels: (0..<(b * t)).map { _ in token() },
                               samples: Array(0..<b))
        guard model.kind == .encoderOnly else { return batch }
        return MaskedLanguageModeling(probability: run.mlm.probability, maskReplace: run.mlm.maskReplaceProb,
                                      randomReplace: run.mlm.randomReplaceProb, maskToken: ordinary.upperBound, randomTokens: ordinary)
            .apply(to: batch, seed: run.training.seed, epoch: 0)
    }
}

struct StepReport: Encodable {
    let workload: String
    let ranks: Int
    let threads: Int
    /// The OpenBLAS kernel family the GEMMs ran (`Haswell`, `SkylakeX`, ...).
    let blas_kernels: String
    let parameters: Int
    let tokens_per_step: Int
    let step_seconds: Double
    let tokens_per_s: Double
    let gflops: Double
    /// Median share of the step spent waiting for gradients and the loss after backward (0 alone).
    let communication_wait_share: Double
    let peak_rss_bytes: Int
    let model_bytes: Int
    let memory_ratio: Double
    /// Of model_bytes, what attention keeps for backward besides its projections (B·H·T floats per layer).
    let attention_state_bytes: Int
    /// What the attention kernels allocate while they run (score tiles, packed operands), all of this process's
    /// compute threads together, at most.
    let attention_scratch_bytes: Int
    let final_loss: Double

    func table() -> String {
        """
        workload     \(workload), \(ranks) rank(s) x \(threads) thread(s) (OpenBLAS \(blas_kernels) kernels), \(parameters) parameters, \(tokens_per_step) tokens per step
        step         \(String(format: "%.4f", step_seconds)) s (median, slowest rank), waiting for communication \(String(format: "%.1f", communication_wait_share * 100))%
        throughput   \(String(format: "%.1f", tokens_per_s)) tokens/s, \(String(format: "%.1f", gflops)) GFLOP/s
        memory       peak \(formatBytes(peak_rss_bytes)), model needs \(formatBytes(model_bytes)) (ratio \(String(format: "%.2f", memory_ratio))); \
        attention keeps \(formatBytes(attention_state_bytes)) (B·H·T floats per attention layer, all layers), and its kernels \(formatBytes(attention_scratch_bytes)) while they run
        """
    }

    func json() throws -> String { try jsonLine(self) }
}

/// Peak resident set size of this process (getrusage reports kilobytes on Linux).
func peakResidentBytes() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Int(usage.ru_maxrss) * 1024
}
