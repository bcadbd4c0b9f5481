import Data
import Files
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

/// How `ddp train` treats a run directory that may hold an earlier run.
public enum ResumeMode: Sendable {
    /// Start at step 0; a directory holding checkpoints or metrics is refused unless `overwrite`.
    case fresh
    /// Continue from `latest`; a directory without one is an error.
    case required
    /// Continue from `latest` when there is one, else start fresh (for job scripts that are requeued).
    case ifPresent
}

/// What a run ended with.
public struct TrainingOutcome: Sendable {
    public var state: TrainingState
    /// The last evaluation, if one ran and succeeded.
    public var evaluation: Evaluation?
    /// The final evaluation's failure (the checkpoint was written before it ran).
    public var evaluationFailure: String?
    /// Ended by SIGTERM/SIGINT at a step boundary, with a checkpoint.
    public var stopped: Bool
}

/// The training loop: every rank runs it; rank 0 also logs, writes metrics and checkpoints.
///
/// Each update: micro-batches with the bucketed gradient all-reduce overlapped with the last backward; one allreduce
/// of loss, token and correct counts and the stop-signal flag; clipping and AdamW. Then rank 0 appends the metrics
/// line (a failure to append is reported once and never stops training), a checkpoint is written when due — before
/// evaluation, so nothing that can fail comes between the last step and its checkpoint — and the validation split is
/// evaluated when due (a failed evaluation is reported and recorded in metrics, never a reason to stop).
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

    /// Trains to `training.steps` (continuing from `latest` as `resume` says), checkpoints, then evaluates at the
    /// end. SIGTERM or SIGINT on any rank ends the run at the next step boundary with a checkpoint.
    @discardableResult
    public func run(resume: ResumeMode, overwrite: Bool = false) throws -> TrainingOutcome {
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
        let watchdog = try CollectiveWatchdog(timeoutSeconds: config.training.collectiveTimeout, world: world)
        defer { watchdog.stop() }
        let fingerprint = dataFingerprint(train)
        try watchdog.guarding("start-up agreement (config and data hash)") { try agreeAcrossRanks(fingerprint: fingerprint) }
        let sampler = DistributedSampler(samples: train.samples, seed: config.training.seed, perRankBatch: config.training.batchSize,
                                         worldSize: world.size, accumulationSteps: config.training.gradAccum)
        guard sampler.batchesPerEpoch >= 1 else {
            throw TrainingError("the train split has \(train.samples) samples, fewer than one global batch of \(sampler.globalBatch)")
        }

        let model = try TransformerModel(config: config.model, maxBatch: config.training.batchSize,
                                         maxSourceLength: isLM ? 0 : config.data.sourceLength, maxTargetLength: config.data.targetLength)
        model.initializeParameters(seed: config.training.seed)
        let optimizer = AdamW(layout: model.layout, settings: config.optimizer.settings)
        var state = TrainingState(step: 0, position: SamplerPosition(), dropoutSeed: config.training.seed)
        let run = RunDirectory(path: runDirectory)
        let resumeFrom = try decideOnRank0("run directory check", watchdog: watchdog) {
            try run.prepare(resume: resume, overwrite: overwrite, log: log)
        }
        if !resumeFrom.isEmpty {
            try decideOnRank0("resume check", watchdog: watchdog) {
                try Checkpoint.checkResume(resumeFrom, with: config, globalBatch: sampler.globalBatch, dataFingerprint: fingerprint, log: log)
                return ""
            }
            state = try watchdog.guarding("checkpoint broadcast") { try restore(resumeFrom, model: model, optimizer: optimizer) }
            if world.rank == 0 { log("resumed from \(resumeFrom) at step \(state.step)") }
        } else {
            try watchdog.guarding("parameter broadcast") { try world.broadcast(model.parameters.storage, root: 0) }
            if world.rank == 0 {
                log("training \(model.layout.count) parameters on \(world.size) rank(s) x \(threads) thread(s) (OpenBLAS \(blasCoreName) "
                    + "kernels, \(blasThreading) build); \(train.samples) samples, "
                    + "global batch \(sampler.globalBatch), \(sampler.batchesPerEpoch) updates per epoch (\(sampler.droppedPerEpoch) samples left out each epoch)")
            }
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
        var outcome = TrainingOutcome(state: state, stopped: false)
        var saidPastSchedule = false
        StopSignals.install()

        while state.step < config.training.steps {
            model.training = true
            model.gradients.zero()
            var local = [0.0, 0.0, 0.0, 0.0]  // loss sum, tokens, correct, ranks asked to stop
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
            // Every rank learns in the same allreduce whether any rank was asked to stop, so all stop at this boundary.
            local[3] = StopSignals.received != 0 ? 1 : 0
            try watchdog.guarding("loss, token-count and stop-signal allreduce") { try world.allreduce(&local, op: .sum) }
            let tokens = local[1]
            guard tokens > 0 else { throw TrainingError("step \(state.step + 1) has no target tokens on any rank") }
            let lossPerToken = local[0] / tokens
            let gradientNorm = sumOfSquares(model.gradients.storage).squareRoot() / tokens
            guard lossPerToken.isFinite, gradientNorm.isFinite else {
                throw TrainingError("non-finite loss (\(lossPerToken)) or gradient norm (\(gradientNorm)) at step \(state.step + 1); "
                                    + "stopping without a checkpoint, the last good one stays in \(runDirectory)")
            }
            let learningRate = schedule.rate(step: state.step + 1)
            if let end = schedule.end, state.step + 1 > end, !saidPastSchedule, world.rank == 0 {
                log("step \(state.step + 1) is past the schedule's end (schedule.total_steps \(end)): the learning rate stays at \(learningRate)")
                saidPastSchedule = true
            }
            let clip = clippingFactor(norm: gradientNorm, maxNorm: config.training.clipNorm)
            optimizer.update(parameters: model.parameters, gradients: model.gradients, learningRate: learningRate,
                             gradientScale: clip / Float(tokens))
            state.step += 1
            state.position = sampler.advance(state.position)
            tokensSinceStart += tokens
            outcome.stopped = local[3] > 0
            outcome.state = state

            if let metrics {
                let elapsed = (clock.now - started).seconds
                let rate = tokensSinceStart / max(elapsed, 1e-9)
                metrics.record(["step": state.step, "loss": lossPerToken, "lr": Double(learningRate), "grad_norm": gradientNorm,
                                "tokens_per_s": rate, "elapsed_s": elapsed, "epoch": state.position.epoch], log: log)
                if state.step % config.training.logEvery == 0 || state.step == config.training.steps {
                    let eta = Double(config.training.steps - state.step) * elapsed / Double(max(1, state.step))
                    log(String(format: "step %d/%d  loss %.4f  lr %.3g  grad norm %.3f  %.0f tokens/s  ETA %.0f s",
                               state.step, config.training.steps, lossPerToken, learningRate, gradientNorm, rate, eta))
                }
                if outcome.stopped { log("a stop signal was received: stopping after step \(state.step) with a checkpoint") }
            }
            let atEnd = state.step == config.training.steps || outcome.stopped
            if atEnd || (config.checkpoint.every > 0 && state.step % config.checkpoint.every == 0) {
                try saveCheckpoint(model: model, optimizer: optimizer, state: state, tokenizer: train.tokenizer,
                                   globalBatch: sampler.globalBatch, fingerprint: fingerprint, watchdog: watchdog)
            }
            if let valid, !outcome.stopped, atEnd || (config.eval.every > 0 && state.step % config.eval.every == 0) {
                do {
                    let evaluationStarted = clock.now
                    outcome.evaluation = try evaluate(model, on: valid, watchdog: watchdog)
                    if let evaluation = outcome.evaluation {
                        report(evaluation, step: state.step, seconds: (clock.now - evaluationStarted).seconds, metrics: metrics)
                    }
                } catch let failure as EvaluationFailed {
                    if world.rank == 0 {
                        log("evaluation at step \(state.step) failed (training \(atEnd ? "is complete and checkpointed" : "goes on")): \(failure)")
                    }
                    metrics?.record(["step": state.step, "eval_error": failure.message], log: log)
                    if atEnd { outcome.evaluationFailure = failure.message }
                }
            }
            if outcome.stopped { break }
        }
        return outcome
    }

    /// The validation split as `eval` configures it (eval.max_batches, eval.decode_samples greedy), split across
    /// ranks; every rank gets the same numbers.
    public func evaluate(_ model: TransformerModel, on valid: DataSplit, watchdog: CollectiveWatchdog? = nil) throws -> Evaluation {
        let plan = EvaluationPlan(batchSize: config.training.batchSize, sourceLength: config.data.sourceLength,
                                  targetLength: config.data.targetLength, maxBatches: config.eval.maxBatches,
                                  decodeSamples: config.eval.decodeSamples, decoding: .greedy)
        return try Training.evaluate(model, on: valid, plan: plan, world: world, watchdog: watchdog)
    }

    /// Rank 0 logs an evaluation and appends it to the metrics (with how long it took, in seconds).
    private func report(_ evaluation: Evaluation, step: Int, seconds: Double, metrics: MetricsLog?) {
        guard let metrics else { return }
        var fields: [String: Any] = ["step": step, "valid_loss": evaluation.loss, "valid_perplexity": evaluation.perplexity,
                                     "valid_token_accuracy": evaluation.tokenAccuracy, "valid_tokens": evaluation.tokens,
                                     "valid_seconds": seconds]
        var line = String(format: "eval at step %d: loss %.4f  perplexity %.3f  token accuracy %.4f", step,
                          evaluation.loss, evaluation.perplexity, evaluation.tokenAccuracy)
        if let exact = evaluation.exactMatch {
            fields["valid_exact_match"] = exact
            fields["valid_bleu"] = evaluation.bleu ?? NSNull()
            if let reason = evaluation.bleuUnavailable { fields["valid_bleu_unavailable"] = reason }
            fields["valid_chrf"] = evaluation.chrF ?? NSNull()
            line += String(format: "  exact match %.4f  %@  chrF %.2f", exact, evaluation.bleuText, evaluation.chrF ?? 0)
        }
        metrics.record(fields, log: log)
        log(line)
    }

    /// Rank 0 writes the checkpoint (as local work the others wait for without a stall timeout); every rank learns
    /// whether it worked, and a failed write (disk full, permissions) stops every rank with rank 0's message.
    private func saveCheckpoint(model: TransformerModel, optimizer: AdamW, state: TrainingState, tokenizer: Tokenizer,
                                globalBatch: Int, fingerprint: String, watchdog: CollectiveWatchdog) throws {
        var failure = ""
        var failed = [0.0]
        if world.rank == 0 {
            do {
                let path = try watchdog.working {
                    try Checkpoint.save(directory: runDirectory, model: model, optimizer: optimizer, state: state, config: config,
                                        tokenizer: tokenizer, keep: config.checkpoint.keep,
                                        provenance: .init(globalBatch: globalBatch, worldSize: world.size, dataFingerprint: fingerprint))
                }
                log("checkpoint \(path)")
            } catch {
                failure = "\(error)"
                failed[0] = 1
            }
        }
        try watchdog.allreduce(&failed, phase: "checkpoint write")
        guard failed[0] > 0 else { return }
        failure = try watchdog.guarding("checkpoint failure message") { try world.broadcast(failure, root: 0) }
        throw CheckpointWriteFailed(step: state.step, message: failure)
    }

    /// Runs `decide` on rank 0 and gives every rank its answer; an error there becomes the same error on every rank.
    @discardableResult
    private func decideOnRank0(_ phase: String, watchdog: CollectiveWatchdog, _ decide: () throws -> String) throws -> String {
        var answer = "", failure = ""
        if world.rank == 0 {
            do { answer = try decide() } catch { failure = "\(error)" }
        }
        failure = try watchdog.guarding(phase) { try world.broadcast(failure, root: 0) }
        if !failure.isEmpty { throw RunDirectoryRefused(message: failure) }
        return try watchdog.guarding(phase) { try world.broadcast(answer, root: 0) }
    }

    /// Rank 0 loads the checkpoint; every rank receives its parameters, AdamW moments and position, so the run
    /// directory need only be readable on rank 0's node.
    private func restore(_ path: String, model: TransformerModel, optimizer: AdamW) throws -> TrainingState {
        var numbers = [Int64](repeating: 0, count: 5)
        if world.rank == 0 {
            let header = try Checkpoint.load(path, into: model, optimizer: optimizer)
            let nonFinite = Checkpoint.nonFiniteTensors(model)
            guard nonFinite.isEmpty else {
                throw CheckpointError(file: path, message: "cannot resume: parameters that are not finite (NaN or infinity) in "
                                      + nonFinite.map(\.name).joined(separator: ", "))
            }
            numbers = [Int64(header.state.step), Int64(header.state.position.epoch), Int64(header.state.position.batch),
                       Int64(bitPattern: header.state.dropoutSeed), Int64(header.optimizerStep)]
        }
        try world.broadcast(&numbers, root: 0)
        for arena in [model.parameters, optimizer.firstMoment, optimizer.secondMoment] { try world.broadcast(arena.storage, root: 0) }
        optimizer.restore(step: Int(numbers[4]))
        return TrainingState(step: Int(numbers[0]), position: SamplerPosition(epoch: Int(numbers[1]), batch: Int(numbers[2])),
                             dropoutSeed: UInt64(bitPattern: numbers[3]))
    }

    /// What identifies the training data for resuming: every train shard's name, samples and tokens, and the tokenizer.
    private func dataFingerprint(_ train: DataSplit) -> String {
        var hasher = FNV1a()
        for shard in train.shards {
            hasher.add(Paths.lastComponent(shard.path))
            hasher.add("\(shard.samples) \(shard.tokens)")
        }
        hasher.add(train.tokenizer.json)
        return String(hasher.value, radix: 16)
    }

    /// Every rank must train the same config on the same data: compare a hash of both; a mismatch stops every
    /// rank with the same message (no rank is left waiting in a collective).
    private func agreeAcrossRanks(fingerprint: String) throws {
        var hasher = FNV1a()
        hasher.add(String(decoding: try JSONEncoder.sorted.encode(config), as: UTF8.self))
        hasher.add(fingerprint)
        let all = try world.allgather([Int64(bitPattern: hasher.value)])
        if let differing = all.firstIndex(where: { $0 != all[0] }) {
            throw RanksDisagree(message: "ranks disagree on the config or the dataset: rank \(differing) differs from rank 0 "
                                         + "(same config file, same data directory on every node?)")
        }
    }
}

/// A run directory that cannot be used as asked (it holds another run, nothing to resume, a refused change): every
/// rank stops with rank 0's message.
public struct RunDirectoryRefused: ErrorOnEveryRank, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
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

/// metrics.jsonl in the run directory: one JSON object per line, appended (rank 0 only). A value that is not finite
/// (the perplexity of a diverged model) is written as null, so every line stays valid JSON.
final class MetricsLog {
    private let handle: FileHandle
    private let path: String
    private var failed = false

    init(directory: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw TrainingError("\(directory): cannot create the run directory: \(describe(error))")
        }
        path = Paths.join(directory, "metrics.jsonl")
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        guard let handle = FileHandle(forWritingAtPath: path) else { throw TrainingError("\(path): cannot open for appending") }
        handle.seekToEndOfFile()
        self.handle = handle
    }

    /// `fields` with non-finite numbers replaced by null.
    static func finite(_ fields: [String: Any]) -> [String: Any] {
        fields.mapValues { value in
            if let number = value as? Double, !number.isFinite { return NSNull() }
            if let number = value as? Float, !number.isFinite { return NSNull() }
            return value
        }
    }

    /// Appends one line. Training never stops for its metrics: the first failure (a full disk, say) is logged
    /// through `log` with the reason, later ones are not repeated.
    func record(_ fields: [String: Any], log: (String) -> Void) {
        do {
            var data = try JSONSerialization.data(withJSONObject: Self.finite(fields), options: [.sortedKeys])
            data.append(0x0A)
            try handle.write(contentsOf: data)
        } catch {
            if !failed { log("warning: \(path): cannot append metrics (\(describe(error))); training goes on, later failures are not repeated") }
            failed = true
        }
    }

    deinit { try? handle.close() }
}
