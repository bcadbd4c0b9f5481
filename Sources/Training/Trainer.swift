import Data
import Foundation
import Kernels
import MPI
import Transformer

/// A run that cannot start or continue, with a message every rank can print.
public struct TrainingError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Ranks that disagree on the config or the data: found by an allgather every rank completed, so every rank
/// raises it together and exits with the same message.
public struct RanksDisagree: ErrorOnEveryRank, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}

/// Rank 0 could not write a checkpoint; every rank stops with this, and `latest` still names the previous one.
public struct CheckpointWriteFailed: ErrorOnEveryRank, CustomStringConvertible, Sendable {
    public let step: Int
    public let message: String
    public var description: String { "stopping at step \(step): \(message)" }
}

/// The training loop (DESIGN.md "Training"): every rank runs it; rank 0 also logs and writes checkpoints.
public final class Trainer {
    public let config: RunConfig
    public let runDirectory: String
    private let world: Communicator
    private let log: (String) -> Void

    public init(config: RunConfig, runDirectory: String, world: Communicator, log: @escaping (String) -> Void) {
        self.config = config
        self.runDirectory = runDirectory
        self.world = world
        self.log = log
    }

    /// Trains to `training.steps` (continuing from `latest` with `resume`), evaluates and checkpoints at the end.
    /// SIGTERM or SIGINT on any rank ends the run at the next step boundary with a checkpoint (`stopped` is true).
    @discardableResult
    public func run(resume: Bool) throws -> (state: TrainingState, evaluation: Evaluation?, stopped: Bool) {
        let threads = config.training.threads > 0 ? config.training.threads : defaultComputeThreads(localRanks: world.localSize)
        setComputeThreads(threads)
        let isLM = config.model.kind == .decoderOnly
        let train = try DataSplit(directory: config.data.directory, split: "train", sequenceLength: isLM ? config.data.targetLength : 0)
        let validDirectoryHasFiles = ((try? FileManager.default.contentsOfDirectory(atPath: config.data.directory)) ?? []).contains { $0.hasPrefix("valid-") }
        let valid = validDirectoryHasFiles
            ? try DataSplit(directory: config.data.directory, split: "valid", sequenceLength: isLM ? config.data.targetLength : 0) : nil
        guard train.tokenizer.vocabularySize <= config.model.vocabSize else {
            throw TrainingError("config key 'model.vocab_size': \(config.model.vocabSize) is smaller than the data's tokenizer (\(train.tokenizer.vocabularySize) tokens)")
        }
        let watchdog = CollectiveWatchdog(timeoutSeconds: config.training.collectiveTimeout, rank: world.rank)
        defer { watchdog.stop() }
        try watchdog.guarding("start-up agreement (config and data hash)") { try agreeAcrossRanks(train: train) }

        let model = try TransformerModel(config: config.model, maxBatch: config.training.batchSize,
                                         maxSourceLength: isLM ? 0 : config.data.sourceLength, maxTargetLength: config.data.targetLength)
        model.initializeParameters(seed: config.training.seed)
        try watchdog.guarding("parameter broadcast") { try world.broadcast(model.parameters.storage, root: 0) }
        let optimizer = AdamW(layout: model.layout, settings: config.optimizer.settings)
        var state = TrainingState(step: 0, position: SamplerPosition(), dropoutSeed: config.training.seed)
        if resume, let latest = try Checkpoint.latest(in: runDirectory) {
            let header = try Checkpoint.load(latest, into: model, optimizer: optimizer)
            state = header.state
            if world.rank == 0 { log("resumed from \(latest) at step \(state.step)") }
        }

        let sampler = DistributedSampler(samples: train.samples, seed: config.training.seed, perRankBatch: config.training.batchSize,
                                         worldSize: world.size, accumulationSteps: config.training.gradAccum)
        guard sampler.batchesPerEpoch >= 1 else {
            throw TrainingError("the train split has \(train.samples) samples, fewer than one global batch of \(sampler.globalBatch)")
        }
        if world.rank == 0 && state.step == 0 {
            log("training \(model.layout.count) parameters on \(world.size) rank(s) x \(threads) thread(s); \(train.samples) samples, "
                + "global batch \(sampler.globalBatch), \(sampler.batchesPerEpoch) updates per epoch (\(sampler.droppedPerEpoch) samples left out each epoch)")
        }
        let plan = RankPlan(sampler: sampler, start: state.position, updates: config.training.steps - state.step, rank: world.rank,
                            worldSize: world.size, microSteps: config.training.gradAccum, perRankBatch: config.training.batchSize)
        let loader = BatchLoader(split: train, maxSourceLength: config.data.sourceLength, maxTargetLength: config.data.targetLength) { plan.next() }
        defer { loader.stop() }
        let synchronizer = GradientSynchronizer(gradients: model.gradients, communicator: world,
                                                bucketBytes: Int(config.training.bucketMb * 1_048_576), compression: config.training.gradCompression)
        let schedule = config.learningRateSchedule
        let metrics = world.rank == 0 ? try MetricsLog(directory: runDirectory) : nil
        let clock = ContinuousClock()
        let started = clock.now
        var tokensSinceStart = 0.0
        var evaluation: Evaluation?
        var stopped = false
        StopSignals.install()

        while state.step < config.training.steps {
            model.training = true
            model.gradients.zero()
            var local = [0.0, 0.0, 0.0]  // loss sum, tokens, correct
            for micro in 0..<config.training.gradAccum {
                guard let tokenBatch = try loader.next() else { throw TrainingError("the data loader ended early at step \(state.step)") }
                model.dropoutSeed = state.dropoutSeed &+ UInt64(state.step) &* 0x9E37_79B9 &+ UInt64(micro * world.size + world.rank) &* 0x85EB_CA6B
                let isLast = micro == config.training.gradAccum - 1
                if isLast { synchronizer.attach(to: model) }
                let result = model.forwardBackward(Batch(tokenBatch), labelSmoothing: config.training.labelSmoothing)
                if isLast { try watchdog.guarding("gradient allreduce") { try synchronizer.finish(detaching: model) } }
                local[0] += result.loss
                local[1] += Double(result.tokens)
                local[2] += Double(result.correct)
            }
            try watchdog.guarding("loss and token-count allreduce") { try world.allreduce(&local, op: .sum) }
            let tokens = local[1]
            guard tokens > 0 else { throw TrainingError("step \(state.step + 1) has no target tokens on any rank") }
            let lossPerToken = local[0] / tokens
            let gradientNorm = sumOfSquares(model.gradients.storage).squareRoot() / tokens
            guard lossPerToken.isFinite, gradientNorm.isFinite else {
                throw TrainingError("non-finite loss (\(lossPerToken)) or gradient norm (\(gradientNorm)) at step \(state.step + 1); "
                                    + "stopping without a checkpoint, the last good one stays in \(runDirectory)")
            }
            let learningRate = schedule.rate(step: state.step + 1)
            let clip = clippingFactor(norm: gradientNorm, maxNorm: config.training.clipNorm)
            optimizer.update(parameters: model.parameters, gradients: model.gradients, learningRate: learningRate,
                             gradientScale: clip / Float(tokens))
            state.step += 1
            state.position = sampler.advance(state.position)
            tokensSinceStart += tokens

            if let metrics {
                let elapsed = (clock.now - started).seconds
                let rate = tokensSinceStart / max(elapsed, 1e-9)
                try metrics.append(["step": state.step, "loss": lossPerToken, "lr": Double(learningRate), "grad_norm": gradientNorm,
                                    "tokens_per_s": rate, "elapsed_s": elapsed, "epoch": state.position.epoch])
                if state.step % config.training.logEvery == 0 || state.step == config.training.steps {
                    let eta = Double(config.training.steps - state.step) * elapsed / Double(max(1, state.step))
                    log(String(format: "step %d/%d  loss %.4f  lr %.3g  grad norm %.3f  %.0f tokens/s  ETA %.0f s",
                               state.step, config.training.steps, lossPerToken, learningRate, gradientNorm, rate, eta))
                }
            }
            // Every rank learns whether any rank was asked to stop, so they all stop at this same boundary.
            let stopSignal = try watchdog.guarding("stop-signal allreduce") { try world.allreduce(StopSignals.received, op: .max) }
            stopped = stopSignal != 0
            if stopped && world.rank == 0 { log("signal \(stopSignal) received: stopping after step \(state.step) with a checkpoint") }
            let atEnd = state.step == config.training.steps || stopped
            if let valid, !stopped, atEnd || (config.eval.every > 0 && state.step % config.eval.every == 0) {
                evaluation = try watchdog.guarding("evaluation") { try evaluate(model, on: valid) }
                if let metrics, let evaluation {
                    var fields: [String: Any] = ["step": state.step, "valid_loss": evaluation.loss, "valid_perplexity": evaluation.perplexity,
                                                 "valid_token_accuracy": evaluation.tokenAccuracy, "valid_tokens": evaluation.tokens]
                    var line = String(format: "eval at step %d: loss %.4f  perplexity %.3f  token accuracy %.4f", state.step,
                                      evaluation.loss, evaluation.perplexity, evaluation.tokenAccuracy)
                    if let exact = evaluation.exactMatch, let bleu = evaluation.bleu {
                        fields["valid_exact_match"] = exact
                        fields["valid_bleu"] = bleu
                        line += String(format: "  exact match %.4f  BLEU %.2f", exact, bleu)
                    }
                    try metrics.append(fields)
                    log(line)
                }
            }
            if atEnd || (config.checkpoint.every > 0 && state.step % config.checkpoint.every == 0) {
                // Rank 0 writes; the others learn how that went, so a failed write (disk full, permissions) stops
                // every rank with rank 0's message instead of leaving them to be aborted.
                var failure = ""
                if world.rank == 0 {
                    do {
                        let path = try Checkpoint.save(directory: runDirectory, model: model, optimizer: optimizer, state: state,
                                                       config: config, tokenizer: train.tokenizer, keep: config.checkpoint.keep)
                        log("checkpoint \(path)")
                    } catch {
                        failure = "\(error)"
                    }
                }
                failure = try watchdog.guarding("checkpoint barrier") { try world.broadcast(failure, root: 0) }
                if !failure.isEmpty { throw CheckpointWriteFailed(step: state.step, message: failure) }
            }
            if stopped { break }
        }
        return (state, evaluation, stopped)
    }

    /// The validation split as `eval` configures it (eval.max_batches, eval.decode_samples greedy), split across
    /// ranks; every rank gets the same numbers.
    public func evaluate(_ model: TransformerModel, on valid: DataSplit) throws -> Evaluation {
        let plan = EvaluationPlan(batchSize: config.training.batchSize, sourceLength: config.data.sourceLength,
                                  targetLength: config.data.targetLength, maxBatches: config.eval.maxBatches,
                                  decodeSamples: config.eval.decodeSamples, decoding: .greedy)
        return try Training.evaluate(model, on: valid, plan: plan, world: world)
    }

    /// Every rank must train the same config on the same data: compare a hash of both; a mismatch stops every
    /// rank with the same message (no rank is left waiting in a collective).
    private func agreeAcrossRanks(train: DataSplit) throws {
        var hasher = FNV1a()
        hasher.add(String(decoding: try JSONEncoder.sorted.encode(config), as: UTF8.self))
        for shard in train.shards {
            hasher.add((shard.path as NSString).lastPathComponent)
            hasher.add("\(shard.samples) \(shard.tokens)")
        }
        let all = try world.allgather([Int64(bitPattern: hasher.value)])
        if let differing = all.firstIndex(where: { $0 != all[0] }) {
            throw RanksDisagree(message: "ranks disagree on the config or the dataset: rank \(differing) differs from rank 0 "
                                         + "(same config file, same data directory on every node?)")
        }
    }
}

extension Batch {
    /// A data batch as the model takes it (the same special ids on both sides).
    init(_ batch: TokenBatch) {
        self.init(batchSize: batch.batchSize, sourceLength: batch.sourceLength, targetLength: batch.targetLength,
                  source: batch.source, decoderInput: batch.decoderInput, labels: batch.labels)
    }
}

/// Compute threads per rank when nothing says otherwise: SWIFTDDP_THREADS (Launch/mpirun.sh sets it from the
/// hostfile's ranks per node), else this node's cores / ranks sharing this node.
public func defaultComputeThreads(localRanks: Int) -> Int {
    if let text = ProcessInfo.processInfo.environment["SWIFTDDP_THREADS"], let threads = Int(text), threads >= 1 { return threads }
    return max(1, ProcessInfo.processInfo.activeProcessorCount / max(1, localRanks))
}

extension Duration {
    /// The duration in seconds, as a Double (for rates and logs).
    public var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}

extension JSONEncoder {
    static var sorted: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }
}

/// 64-bit FNV-1a over strings: a cheap, stable fingerprint to compare across ranks.
struct FNV1a {
    var value: UInt64 = 0xCBF2_9CE4_8422_2325
    mutating func add(_ text: String) {
        for byte in text.utf8 {
            value ^= UInt64(byte)
            value = value &* 0x0000_0100_0000_01B3
        }
        value ^= 0xFF
    }
}

/// This rank's micro-batches from a sampler position on, for a number of updates: a loader's plan (it runs on
/// the loader thread).
public final class RankPlan: @unchecked Sendable {
    // @unchecked: all state is touched under `lock`.
    private let lock = NSLock()
    private let sampler: DistributedSampler
    private let rank: Int, worldSize: Int, microSteps: Int, perRankBatch: Int
    private var position: SamplerPosition
    private var remainingUpdates: Int
    private var micro = 0
    private var order: [Int] = []
    private var orderEpoch = -1

    public init(sampler: DistributedSampler, start: SamplerPosition, updates: Int, rank: Int, worldSize: Int, microSteps: Int,
                perRankBatch: Int) {
        self.sampler = sampler
        self.position = start
        self.remainingUpdates = updates
        self.rank = rank
        self.worldSize = worldSize
        self.microSteps = microSteps
        self.perRankBatch = perRankBatch
    }

    public func next() -> [Int]? {
        lock.lock()
        defer { lock.unlock() }
        guard remainingUpdates > 0 else { return nil }
        if orderEpoch != position.epoch {
            order = sampler.permutation(epoch: position.epoch)
            orderEpoch = position.epoch
        }
        let share = sampler.share(of: sampler.globalBatch(at: position, order: order), rank: rank, worldSize: worldSize,
                                  microStep: micro, perRankBatch: perRankBatch)
        micro += 1
        if micro == microSteps {
            micro = 0
            remainingUpdates -= 1
            position = sampler.advance(position)
        }
        return Array(share)
    }
}

/// A fixed list of batches, in order (evaluation): a loader's plan.
public final class ListPlan: @unchecked Sendable {
    // @unchecked: `items` is touched under `lock` only.
    private let lock = NSLock()
    private var items: [[Int]]
    public init(_ items: [[Int]]) { self.items = items.reversed() }
    public func next() -> [Int]? {
        lock.lock()
        defer { lock.unlock() }
        return items.popLast()
    }
}

/// metrics.jsonl in the run directory: one JSON object per line, appended (rank 0 only).
final class MetricsLog {
    private let handle: FileHandle

    init(directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = (directory as NSString).appendingPathComponent("metrics.jsonl")
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        guard let handle = FileHandle(forWritingAtPath: path) else { throw TrainingError("\(path): cannot open for appending") }
        handle.seekToEndOfFile()
        self.handle = handle
    }

    func append(_ fields: [String: Any]) throws {
        var data = try JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])
        data.append(0x0A)
        try handle.write(contentsOf: data)
    }

    deinit { try? handle.close() }
}
