import ArgumentParser
import Foundation
import Kernels
import MPI
import Training
import Transformer

struct BenchStep: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "step",
        abstract: "Time full training steps (forward, backward, AdamW) of a config's model on random tokens, alone or under mpirun.",
        discussion: """
            Reports the median step time after warm-up, tokens/s (target tokens), model GFLOP/s \
            (6 x parameters x tokens + 12 x attention layers x T x d_model x tokens, as PyTorch's reference counts), \
            and peak resident memory against the model's own need (parameters, gradients, two AdamW moments, activations).

            Under mpirun every rank takes its own batch and gradients are all-reduced in buckets during backward, as in
            training; tokens/s counts all ranks, and the communication share is the time spent waiting after backward.
            Data-parallel efficiency = (N-rank tokens/s) / (N x 1-rank tokens/s).

            Example: ddp bench step --config Configs/bench-w2.yaml --threads 1
                     Launch/mpirun.sh -np 2 --threads 1 bench step --config Configs/bench-w1.yaml
            """
    )

    @Option(help: "A run config (YAML); its model, training.batch_size and data lengths define the workload.")
    var config: String

    @Option(help: "Threads for BLAS and the compute kernels.")
    var threads: Int = 1

    @Option(name: .customLong("set"), help: "Override a config key: --set training.steps=100 (repeatable).")
    var overrides: [String] = []

    @Option(help: "Timed steps.")
    var steps: Int = 10

    @Option(help: "Untimed warm-up steps.")
    var warmup: Int = 2

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    @Flag(help: "Only load and check the config, and print the model's parameter count.")
    var dryRun = false

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1, got \(threads).") }
        guard steps >= 1 else { throw ValidationError("--steps must be at least 1, got \(steps).") }
        guard warmup >= 0 else { throw ValidationError("--warmup must be 0 or more, got \(warmup).") }
    }

    func run() throws {
        let run = try RunConfig.load(config, overrides: overrides)
        let model = run.model
        if dryRun {
            print("\(config): valid, \(TransformerModel.parameterLayout(for: model).count) parameters")
            return
        }
        try withMPI { runtime in
            let world = runtime.world
            setComputeThreads(threads)
            let b = run.training.batchSize, s = model.kind == .encoderDecoder ? run.data.sourceLength : 0, t = run.data.targetLength
            let transformer = try TransformerModel(config: model, maxBatch: b, maxSourceLength: s, maxTargetLength: t)
            transformer.initializeParameters(seed: run.training.seed)
            let optimizer = AdamW(layout: transformer.layout, settings: run.optimizer.settings)
            let synchronizer = world.size > 1
                ? GradientSynchronizer(gradients: transformer.gradients, communicator: world, bucketBytes: Int(run.training.bucketMb * 1_048_576),
                                       compression: run.training.gradCompression)
                : nil

            // Random real tokens (no PAD), as the PyTorch reference draws them; different on every rank.
            var random = SplitMix64(seed: UInt64(world.rank) &+ 17)
            let token = { Int32.random(in: 4..<Int32(model.vocabSize), using: &random) }
            let batch = Batch(batchSize: b, sourceLength: s, targetLength: t, source: (0..<(b * s)).map { _ in token() },
                              decoderInput: (0..<(b * t)).map { _ in token() }, labels: (0..<(b * t)).map { _ in token() })

            let clock = ContinuousClock()
            var times: [Double] = [], waits: [Double] = []
            var lastLoss = 0.0
            for step in 0..<(warmup + steps) {
                try world.barrier()
                let start = clock.now
                transformer.gradients.zero()
                synchronizer?.attach(to: transformer)
                var result = transformer.forwardBackward(batch, labelSmoothing: run.training.labelSmoothing)
                let waitStart = clock.now
                try synchronizer?.finish(detaching: transformer)
                if world.size > 1 {
                    var sums = [result.loss, Double(result.tokens)]
                    try world.allreduce(&sums, op: .sum)
                    result = LossSum(loss: sums[0], tokens: Int(sums[1]))
                }
                let waited = clock.now - waitStart
                optimizer.update(parameters: transformer.parameters, gradients: transformer.gradients, learningRate: run.optimizer.lr,
                                 gradientScale: 1 / Float(result.tokens))
                let elapsed = clock.now - start
                if step >= warmup {
                    times.append(elapsed.seconds)
                    waits.append(waited.seconds)
                }
                lastLoss = result.loss / Double(result.tokens)
            }
            try world.allreduce(&times, op: .max)
            try world.allreduce(&waits, op: .max)
            let stepSeconds = median(times)
            let parameters = transformer.layout.count
            let tokens = b * t * world.size
            let attentionLayers = model.encoderLayers + model.decoderLayers * (model.kind == .encoderDecoder ? 2 : 1)
            let flops = (6 * Double(parameters) + 12 * Double(attentionLayers) * Double(t) * Double(model.dModel)) * Double(tokens)
            let needBytes = (4 * parameters + transformer.activationFloats) * 4
            let peakBytes = try world.allreduce(Int64(peakResidentBytes()), op: .max)
            let report = StepReport(workload: config, ranks: world.size, threads: threads, parameters: parameters, tokens_per_step: tokens,
                                    step_seconds: stepSeconds, tokens_per_s: Double(tokens) / stepSeconds, gflops: flops / stepSeconds / 1e9,
                                    communication_wait_share: median(waits) / stepSeconds, peak_rss_bytes: Int(peakBytes),
                                    model_bytes: needBytes, memory_ratio: Double(peakBytes) / Double(needBytes), final_loss: lastLoss)
            if world.rank == 0 { print(json ? try report.json() : report.table()) }
        }
    }
}

struct StepReport: Encodable {
    let workload: String
    let ranks: Int
    let threads: Int
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
    let final_loss: Double

    func table() -> String {
        """
        workload     \(workload), \(ranks) rank(s) x \(threads) thread(s), \(parameters) parameters, \(tokens_per_step) tokens per step
        step         \(String(format: "%.4f", step_seconds)) s (median, slowest rank), waiting for communication \(String(format: "%.1f", communication_wait_share * 100))%
        throughput   \(String(format: "%.1f", tokens_per_s)) tokens/s, \(String(format: "%.1f", gflops)) GFLOP/s
        memory       peak \(formatBytes(peak_rss_bytes)), model needs \(formatBytes(model_bytes)) (ratio \(String(format: "%.2f", memory_ratio)))
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
