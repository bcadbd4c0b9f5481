import Basics
import Data
import Files
import Foundation
import Kernels
import MPI
import Transformer

/// A run that cannot start or continue, with a message every rank can print.
public struct TrainingError: Error, CustomStringConvertible, Sendable {
    /// The whole sentence, naming the file, key or step at fault.
    public let message: String
    /// An error saying `message`.
    public init(_ message: String) { self.message = message }
    /// The message itself.
    public var description: String { message }
}

/// Ranks that disagree on the config or the data: found by an allgather every rank completed, so every rank
/// raises it together and exits with the same message.
public struct RanksDisagree: ErrorOnEveryRank, CustomStringConvertible, Sendable {
    /// Which rank differs from rank 0, and what to check.
    public let message: String
    /// The message itself.
    public var description: String { message }
}

/// Rank 0 could not write a checkpoint; every rank stops with this, and `latest` still names the previous one.
public struct CheckpointWriteFailed: ErrorOnEveryRank, CustomStringConvertible, Sendable {
    /// The step whose checkpoint failed (trained, but not saved).
    public let step: Int
    /// Rank 0's reason, naming the file.
    public let message: String
    /// "stopping at step N: MESSAGE".
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
    /// Where training ended: the step, sampler position and dropout seed of the last checkpoint.
    public var state: TrainingState
    /// The final evaluation (after the last step, not for a run a signal stopped), if it ran and succeeded.
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
    /// The run's config, the same on every rank.
    public let config: RunConfig
    /// Where checkpoints, `latest` and `metrics.jsonl` go (rank 0 writes them).
    public let runDirectory: String
    private let world: Communicator
    private let log: (String) -> Void

    /// A trainer of `config` over the ranks of `world`; `log` receives rank 0's progress lines (other ranks log nothing).
    public init(config: RunConfig, runDirectory: String, world: Communicator, log: @escaping (String) -> Void) {
        self.config = config
        self.runDirectory = runDirectory
        self.world = world
        self.log = log
    }

    /// A checkpoint whose parameters a fresh run starts from instead of the seed's initialisation (`ddp train --init`;
    /// the architecture must match, `dropout` aside, and its tokenizer must be the training data's). Ignored when the
    /// run resumes.
    public var initialParameters: String?

    /// Rank 0: the run directory's checkpoints after the one this run resumed from, of the attempt it replaces, that
    /// it has not yet written over; rotation (`checkpoint.keep`) leaves them alone.
    private var abandonedCheckpoints: Set<String> = []
    /// Rank 0's lock on the run directory (`RunDirectory.prepare`), held until the trainer is gone.
    private var runDirectoryLock: FileLock?

    /// Trains to `training.steps` (continuing from `latest` as `resume` says), checkpoints, then evaluates at the
    /// end. SIGTERM, SIGINT or SIGHUP on any rank (`StopSignals`) ends the run at the next step boundary with a checkpoint.
    @discardableResult
    public func run(resume: ResumeMode, overwrite: Bool = false) throws -> TrainingOutcome {
        let run = try setUp()
        defer { run.watchdog.stop() }
        var state = try startOrResume(resume, overwrite: overwrite, run: run)
        if world.rank == 0 && run.valid == nil {
            log("no valid split in \(config.data.directory) (no valid-*.h5 file): the run is not evaluated (ddp prepare "
                + "writes one with --valid-fraction above 0)")
        }
        let loader = run.loader(from: state, config: config, world: world)
        defer { loader.stop() }
        let step = TrainingStep(model: run.model, optimizer: run.optimizer, world: world, training: config.training, watchdog: run.watchdog)
        let progress = world.rank == 0 ? try ProgressReport(config: config, runDirectory: runDirectory, log: log) : nil
        var outcome = TrainingOutcome(state: state, stopped: false)
        StopSignals.install()
        while state.step < config.training.steps {
            let learningRate = config.learningRateSchedule.rate(step: state.step + 1)
            let result = try take(step, at: state, learningRate: learningRate, loader: loader, masking: run.masking)
            state.step += 1
            state.position = run.sampler.advance(state.position)
            (outcome.state, outcome.stopped) = (state, result.stopRequested)
            progress?.record(result, state: state, learningRate: learningRate)
            let atEnd = state.step == config.training.steps || outcome.stopped
            if atEnd || isDue(every: config.checkpoint.every, step: state.step) { try saveCheckpoint(run, state: state) }
            if let valid = run.valid, !outcome.stopped, atEnd || isDue(every: config.eval.every, step: state.step) {
                let (evaluation, failure) = try evaluateAndReport(run.model, on: valid, step: state.step, atEnd: atEnd,
                                                                  watchdog: run.watchdog, progress: progress)
                if atEnd { outcome.evaluation = evaluation }
                if atEnd { outcome.evaluationFailure = failure }
            }
            if outcome.stopped { break }
        }
        return outcome
    }

    /// What a run holds from start to end.
    private struct Run {
        let train: DataSplit, valid: DataSplit?
        let watchdog: CollectiveWatchdog
        /// Identifies the training data for resuming (`dataFingerprint`, `DataSplit.contentDigest` in hexadecimal).
        let fingerprint: String, digest: String
        /// The validation data's content (`DataSplit.contentDigest` in hexadecimal), nil without a valid split.
        var validDigest: String? { valid.map { String($0.contentDigest, radix: 16) } }
        let sampler: any TrainingSampler
        /// Sequences per update over all ranks (the checkpoint's provenance); 0 for token-budget batches, which are
        /// defined globally.
        let globalBatch: Int
        /// How the run batches, for the start-up line.
        let batching: String
        let model: TransformerModel
        let optimizer: AdamW
        let threads: Int
        /// Encoder-only models: the masked-LM recipe applied to every training batch.
        let masking: MaskedLanguageModeling?

        /// The background loader of this rank's micro-batches from `state` to the last step.
        func loader(from state: TrainingState, config: RunConfig, world: Communicator) -> BatchLoader {
            let plan = RankPlan(sampler: sampler, start: state.position, updates: config.training.steps - state.step, rank: world.rank,
                                worldSize: world.size, accumulationSteps: config.training.accumulationSteps)
            return BatchLoader(split: train, maxSourceLength: config.data.sourceLength, maxTargetLength: config.data.targetLength) {
                plan.next()
            }
        }
    }

    /// Threads, data, the ranks' agreement on config and data, the sampler and the model (not yet initialised).
    private func setUp() throws -> Run {
        // (Together: a SWIFTDDP_THREADS refused on one rank stops every rank, said once.)
        let threads = try togetherOnEveryRank(world, "thread settings") {
            config.training.threads > 0 ? config.training.threads : try defaultComputeThreads(localRanks: world.localSize)
        }
        setComputeThreads(threads)
        let watchdog = try CollectiveWatchdog(timeoutSeconds: config.training.collectiveTimeout, world: world)
        do {
            let (train, valid, pairs) = try togetherOnEveryRank(world, "data checks", watchdog: watchdog) {
                let (train, valid) = try openSplits()
                // seq2seq: every pair is checked now (met in a batch, one too long would end the run at that step); the
                // train split's reader also gives the token-budget sampler its lengths.
                let pairs = config.model.kind.readsTokenStream ? nil : try SampleReader(split: train)
                if let pairs {
                    for reader in [pairs] + (try valid.map { [try SampleReader(split: $0)] } ?? []) {
                        try reader.checkFits(maxSourceLength: config.data.sourceLength, maxTargetLength: config.data.targetLength)
                    }
                }
                return (train, valid, pairs)
            }
            let trainDigest = train.contentDigest
            let fingerprint = dataFingerprint(train), digest = String(trainDigest, radix: 16)
            // Every rank must train the same config on the same data (node-local copies of a data directory can differ).
            var configDigest = ContentDigest()
            configDigest.add(String(decoding: try JSONEncoder.sortedKeys.encode(config), as: UTF8.self))
            try watchdog.guarding("start-up agreement (config and data hash)") {
                try requireRanksAgree(world, on: [("the config", configDigest.value),
                                                  ("the training data (its shards' names and content, and the tokenizer)", trainDigest),
                                                  ("the validation data (its shards' names and content)", valid?.contentDigest ?? 0)],
                                      hint: "the same config file, and the same data directory, on every node?")
            }
            let (batching, model) = try togetherOnEveryRank(world, "batching and model checks", watchdog: watchdog) {
                let batching = try makeSampler(train, valid: valid, pairs: pairs)
                let isLM = config.model.kind.readsTokenStream
                do {
                    return (batching, try TransformerModel(config: config.model, maxBatch: batching.maxRows,
                                                           maxSourceLength: isLM ? 0 : config.data.sourceLength,
                                                           maxTargetLength: config.data.targetLength, shapes: batching.shapes,
                                                           optimizerState: true))
                } catch let error as ModelConfigError where error.key == "batch_size" {
                    // The activations of the batches push the model over: the batching keys are at fault, not the model's.
                    guard let maxTokens = config.training.maxTokens else {
                        throw TrainingError("training.batch_size \(config.training.batchSize): \(error.message); lower it, or raise "
                                            + "training.grad_accum (the same global batch in smaller micro-batches)")
                    }
                    // With a token budget, the batches' shapes (and the evaluation's batch_size rows) decide the memory.
                    throw TrainingError("training.max_tokens \(maxTokens) (batches of up to \(batching.maxRows) rows, the "
                                        + "evaluation's included, which training.batch_size bounds): \(error.message); lower them, or raise training.grad_accum")
                }
            }
            model.specialTokens = train.tokenizer.specialTokens
            return Run(train: train, valid: valid, watchdog: watchdog, fingerprint: fingerprint, digest: digest, sampler: batching.sampler,
                       globalBatch: batching.globalBatch, batching: batching.description, model: model,
                       optimizer: AdamW(layout: model.layout, settings: config.optimizer.settings), threads: threads,
                       masking: config.model.kind == .encoderOnly ? config.mlm.recipe(for: train.tokenizer) : nil)
        } catch {
            watchdog.stop()
            throw error
        }
    }

    /// The run's sampler: `training.batch_size` sequences per rank, or token-budget batches (`training.max_tokens`);
    /// with the batch shapes the model's buffers must fit (none: `batch_size` rows of the longest lengths) and the
    /// most rows of any batch, training's or evaluation's. `pairs` reads a seq2seq train split's lengths (nil for lm);
    /// `valid`, the split evaluated (none: no evaluation batches).
    private func makeSampler(_ train: DataSplit, valid: DataSplit?, pairs: SampleReader?) throws
        -> (sampler: any TrainingSampler, globalBatch: Int, description: String, shapes: [TransformerModel.BatchShape], maxRows: Int) {
        let accumulation = config.training.accumulationSteps
        guard let maxTokens = config.training.maxTokens else {
            let sampler = DistributedSampler(samples: train.samples, seed: config.training.seed, perRankBatch: config.training.batchSize,
                                             worldSize: world.size, accumulationSteps: accumulation)
            guard sampler.batchesPerEpoch >= 1 else {
                throw TrainingError("data directory \(config.data.directory): the train split has \(train.samples) samples, fewer than one "
                                    + "global batch of \(sampler.globalBatch) (training.batch_size x ranks x training.grad_accum)")
            }
            return (sampler, sampler.globalBatch, "global batch \(sampler.globalBatch), \(updatesPerEpoch(sampler.batchesPerEpoch)) "
                    + "(\(sampler.droppedPerEpoch) sample\(sampler.droppedPerEpoch == 1 ? "" : "s") left out each epoch)", [], config.training.batchSize)
        }
        let isLM = config.model.kind.readsTokenStream
        let groups = config.training.lengthGroups
        let sampler: TokenBudgetSampler
        do {
            if let pairs {
                // A pair's positions: source + EOS and BOS + target; the longer side is what a batch pads to.
                sampler = try TokenBudgetSampler(pairs: pairs.allLengths(), seed: config.training.seed, maxTokens: maxTokens, groups: groups)
            } else {
                // Every window is target_length positions: the budget only sets how many go in a batch.
                sampler = try TokenBudgetSampler(lengths: [Int](repeating: config.data.targetLength, count: train.samples),
                                                 seed: config.training.seed, maxTokens: maxTokens, groups: groups)
            }
        } catch {  // SampleOverBudget, the only error the samplers throw
            guard let (shard, local) = train.locate(error.index) else {
                throw TrainingError("data directory \(config.data.directory): the train split holds no samples")
            }
            throw TrainingError("\(shard.path): \(isLM ? "window" : "pair") \(local) takes \(error.positions) positions"
                                + (isLM ? " (data.target_length)" : " (its longer side, EOS or BOS included)")
                                + ", \(error.exceeded)"
                                + (isLM ? (groups == 1 ? " to at least \(error.positions)" : "") : ", or leave such pairs out (ddp prepare --max-length)"))
        }
        // Checked after the budget (a group too small for the samples is the first thing to change).
        guard world.size * accumulation >= groups else {
            let needed = (groups + world.size - 1) / world.size
            throw TrainingError("training.length_groups \(groups) needs at least as many micro-batches per update (ranks x "
                                + "training.grad_accum, \(world.size) x \(accumulation) here), one or more per group; "
                                + (needed <= RunConfig.largestAccumulation ? "raise training.grad_accum to \(needed)"
                                   : "training.grad_accum cannot exceed \(RunConfig.largestAccumulation): lower training.length_groups"))
        }
        let parts = sampler.partSizes(parts: world.size * accumulation)
        let mostRows = parts.map(\.samples).max() ?? 1
        guard mostRows <= RunConfig.largestBatch else {
            throw TrainingError("training.max_tokens \(maxTokens): a rank's share of one batch \(groups == 1 ? "would" : "could") hold \(mostRows) "
                                + "short samples, more than the \(RunConfig.largestBatch) sequences a batch may have; lower max_tokens or raise "
                                + "training.grad_accum")
        }
        let sourceLength = isLM ? config.data.targetLength : config.data.sourceLength
        var shapes = parts.map { TransformerModel.BatchShape(batch: $0.samples, sourceLength: min($0.longest, sourceLength),
                                                             targetLength: min($0.longest, config.data.targetLength)) }
        // Evaluation and decoding take `batch_size` rows of any length, and never more rows than a rank's share of the
        // validation split (a budget far above a small split's size allocates only what that split can fill).
        if let valid {
            shapes.append(.init(batch: evaluationRows(batchSize: config.training.batchSize, samples: valid.samples, worldSize: world.size),
                                sourceLength: sourceLength, targetLength: config.data.targetLength))
        }
        let description = (groups == 1 ? "token-budget batches of at most \(maxTokens) positions (training.max_tokens)"
                                       : "token-budget batches of up to \(groups) length groups of at most \(sampler.groupBudget) positions "
                                         + "(training.max_tokens \(maxTokens) / training.length_groups \(groups))")
            + ", \(updatesPerEpoch(sampler.batchesPerEpoch)), every sample once"
        return (sampler, 0, description, shapes, shapes.map(\.batch).max() ?? 1)
    }

    /// One update at `state`, its batches from `loader`; a step that cannot be taken ends the run with the last
    /// checkpoint named.
    private func take(_ step: TrainingStep, at state: TrainingState, learningRate: Float, loader: BatchLoader,
                      masking: MaskedLanguageModeling?) throws -> TrainingStep.Outcome {
        do {
            return try step.run(step: state.step, dropoutSeed: state.dropoutSeed, learningRate: learningRate,
                                stopRequested: StopSignals.received != 0) {
                guard let batch = try loader.next() else { throw TrainingError("the data loader ended early at step \(state.step)") }
                // Every micro-batch of an update belongs to the same global batch, hence to the state's epoch.
                return masking?.apply(to: batch, seed: config.training.seed, epoch: state.position.epoch) ?? batch
            }
        } catch let failure as TrainingError {
            let last = (try? Checkpoint.latest(in: runDirectory)) ?? nil
            throw TrainingError("\(failure.message); stopping without a checkpoint" + (last.map { ", the last good one stays: \($0)" }
                                ?? ": none was written yet, so start over (with --overwrite, as \(runDirectory) keeps this attempt's metrics)"))
        }
    }

    /// "1 update per epoch", "12 updates per epoch".
    private func updatesPerEpoch(_ count: Int) -> String { "\(count) update\(count == 1 ? "" : "s") per epoch" }

    /// Whether something done every `every` updates (0: never) is due after update `step`.
    private func isDue(every: Int, step: Int) -> Bool { every > 0 && step % every == 0 }

    /// The train split, and the valid split when the data directory has one.
    private func openSplits() throws -> (train: DataSplit, valid: DataSplit?) {
        // The context, for a language model's windows; seq2seq data ignores it, and lm data given to an encoder-decoder
        // model then opens, to be refused below as the other task.
        let sequenceLength = config.data.targetLength
        guard !config.data.directory.isEmpty else {
            throw TrainingError("config key 'data.directory' is not set: name the directory `ddp prepare --output` wrote the shards to")
        }
        // The task first: lm data too short for one window of an encoder-decoder's target_length is the other task.
        try config.model.kind.requireData(try DataSplit.firstShard(directory: config.data.directory, split: "train")?.task, in: config.data.directory)
        let train = try DataSplit(directory: config.data.directory, split: "train", sequenceLength: sequenceLength)
        let valid = try DataSplit.firstShard(directory: config.data.directory, split: "valid") != nil
            ? try DataSplit(directory: config.data.directory, split: "valid", sequenceLength: sequenceLength) : nil
        // The valid split is read with the train split's tokenizer and model: its ids must mean the same (another
        // tokenizer's could lie past the vocabulary, and evaluation would index the embedding with them).
        if let valid, let validShard = valid.shards.first, let trainShard = train.shards.first {
            guard valid.task == train.task else {
                throw DataError(file: validShard.path, "task \(valid.task.rawValue) differs from \(trainShard.path)'s \(train.task.rawValue)")
            }
            guard valid.tokenizer == train.tokenizer else {
                throw DataError(file: validShard.path, "its tokenizer differs from \(trainShard.path)'s (every shard must use one tokenizer)")
            }
            // The splits of two prepares: a dev set prepared on its own, or what a prepare --overwrite killed between the
            // splits leaves (another dataset's valid split, which may overlap the training data). Said, not refused.
            if !valid.datasetIDs.isEmpty && !train.datasetIDs.isEmpty && valid.datasetIDs.isDisjoint(with: train.datasetIDs) {
                log("note: \(validShard.path) was written by another ddp prepare than \(trainShard.path) (dataset_id "
                    + "\(valid.datasetIDs.sorted()[0]), not \(train.datasetIDs.sorted()[0])): fine for a validation set prepared on its own; "
                    + "if a prepare --overwrite was stopped part-way (kill -9), prepare the data again")
            }
        }
        // Some of one prepare's files: a subset someone chose, or files lost (a whole split is what prepare wrote).
        for split in [train] + (valid.map { [$0] } ?? []) {
            for partial in split.partialPrepares {
                log("note: \(config.data.directory) holds \(partial.present) of the \(partial.written) \(split.split) files ddp prepare wrote "
                    + "(dataset_id \(partial.datasetID)): only those are read; if files were lost, prepare the data again")
            }
        }
        // An encoder-only model's mask token comes after the data's tokens (README "Encoder-only models").
        let needed = max(train.tokenizer.vocabularySize, config.model.kind == .encoderOnly ? Int(train.tokenizer.maskToken) + 1 : 0)
        guard needed <= config.model.vocabSize else {
            if let initial = initialParameters, train.tokenizer.vocabularySize <= config.model.vocabSize {
                // Only the mask token does not fit: the same tokenizer again would not either.
                throw TrainingError("\(initial)'s model has \(config.model.vocabSize) token ids: the \(train.tokenizer.vocabularySize) of the "
                                    + "tokenizer of the data in \(config.data.directory), and no room for the mask token \(train.tokenizer.maskToken) "
                                    + "an encoder-only model needs after them; start from a checkpoint whose model.vocab_size is at least "
                                    + "\(train.tokenizer.vocabularySize + 1), or train without --init")
            }
            if let initial = initialParameters {
                throw TrainingError("the training data in \(config.data.directory) has a \(train.tokenizer.kind) tokenizer of \(train.tokenizer.vocabularySize) "
                                    + "ids, more than the \(config.model.vocabSize) of \(initial)'s model: prepare it with ddp prepare --tokenizer-from \(initial)")
            }
            throw TrainingError("config key 'model.vocab_size': \(config.model.vocabSize) is smaller than the tokenizer of the data in "
                                + "\(config.data.directory) (\(train.tokenizer.vocabularySize) tokens"
                                + (needed > train.tokenizer.vocabularySize ? ", and the mask token \(train.tokenizer.maskToken) after them" : "") + "); set it to at least \(needed)")
        }
        return (train, valid)
    }

    /// Checks the run directory (rank 0) and either resumes from its `latest` checkpoint, every rank receiving the
    /// parameters, AdamW moments and position, or initialises the parameters from the seed on rank 0 and broadcasts
    /// them. Returns where training starts.
    private func startOrResume(_ resume: ResumeMode, overwrite: Bool, run: Run) throws -> TrainingState {
        let directory = RunDirectory(path: runDirectory)
        let resumeFrom = try decideOnRank0("run directory check", watchdog: run.watchdog) {
            let (checkpoint, lock) = try directory.prepare(resume: resume, overwrite: overwrite, log: log)
            runDirectoryLock = lock
            return checkpoint
        }
        guard !resumeFrom.isEmpty else {
            run.model.initializeParameters(seed: config.training.seed)
            if let initial = initialParameters {
                try decideOnRank0("initial parameters", watchdog: run.watchdog) {
                    let header = try Checkpoint.load(initial, into: run.model, parametersOnly: true)
                    let nonFinite = Checkpoint.nonFiniteTensors(run.model)
                    guard nonFinite.isEmpty else {
                        throw TrainingError("\(initial) holds parameters that are not finite (NaN or infinity) in "
                                            + nonFinite.map { "\($0.name) (\($0.count))" }.joined(separator: ", ") + "; it cannot start a run")
                    }
                    if let tokenizer = header.tokenizer, tokenizer != run.train.tokenizer {
                        throw TrainingError("the training data in \(config.data.directory) is encoded with a \(run.train.tokenizer.kind) tokenizer of "
                                            + "\(run.train.tokenizer.vocabularySize) ids, not the \(tokenizer.kind) tokenizer of \(initial) "
                                            + "(\(tokenizer.vocabularySize) ids): prepare it with ddp prepare --tokenizer-from \(initial)")
                    }
                    log("starting from the parameters of \(initial) (step \(header.state.step)); AdamW, schedule and data position fresh")
                    return ""
                }
            }
            try run.watchdog.guarding("parameter broadcast") { try world.broadcast(run.model.parameters.storage, root: 0) }
            if world.rank == 0 {
                log("training \(run.model.layout.count) parameters on \(world.size) rank(s) x \(run.threads) thread(s) (OpenBLAS "
                    + "\(blasCoreName) kernels, \(blasThreading) build); \(run.train.samples) samples, \(run.batching)")
            }
            return TrainingState(step: 0, position: SamplerPosition(), dropoutSeed: config.training.seed)
        }
        try decideOnRank0("resume check", watchdog: run.watchdog) {
            // A damaged latest: say which earlier checkpoints the run directory still holds.
            let header = try Checkpoint.readHeader(toResume: resumeFrom, in: runDirectory)
            // A checkpoint renamed by hand: its contents say where training is; its name would mislead rotation and readers.
            if let named = Checkpoint.step(ofCheckpointNamed: Paths.lastComponent(resumeFrom)), named != header.state.step {
                log("note: \(resumeFrom) holds step \(header.state.step), not the step \(named) its name says; resuming at step \(header.state.step)")
            }
            try Checkpoint.checkResume(resumeFrom, with: config, globalBatch: run.globalBatch,
                                       batchesPerEpoch: run.sampler.batchesPerEpoch, dataFingerprint: run.fingerprint,
                                       dataDigest: run.digest, validDigest: run.validDigest, log: log)
            return ""
        }
        let state = try restore(resumeFrom, model: run.model, optimizer: run.optimizer, watchdog: run.watchdog)
        if world.rank == 0 {
            log("resumed from \(resumeFrom) at step \(state.step)")
            // Checkpoints after it are another attempt's, which this one replaces: rotation leaves them alone (one of
            // the same step is replaced when this attempt writes it).
            let existing = Checkpoint.checkpointNames(in: runDirectory)
            let later = existing.filter {
                (Checkpoint.step(ofCheckpointNamed: $0) ?? 0) > state.step && Paths.entryType(Paths.join(runDirectory, $0)) == .typeRegular
            }
            // With those an earlier resume set aside (stored in the checkpoint resumed from), where they still exist.
            let stored = (try? Checkpoint.readHeader(resumeFrom).abandoned) ?? []
            abandonedCheckpoints = Set(later).union(Set(stored).intersection(existing))
            if !abandonedCheckpoints.isEmpty {
                let names = existing.filter(abandonedCheckpoints.contains)
                log("resume: checkpoint.keep leaves \(names.joined(separator: ", ")) as they are: checkpoints of an attempt a resume "
                    + "replaced (one of the same step is replaced when this run writes it)")
            }
            if state.step >= config.training.steps {
                log("nothing to train: the checkpoint is at step \(state.step) and training.steps is \(config.training.steps) (raise "
                    + "training.steps, with --set training.steps=N, to train on)")
            }
        }
        return state
    }

    /// Evaluates on the valid split and reports it. A failed evaluation (`EvaluationFailed`, which every rank raises
    /// together) is logged, recorded in metrics and returned as its message: training goes on, or has already been
    /// checkpointed. Anything else (MPI failing) is thrown.
    private func evaluateAndReport(_ model: TransformerModel, on valid: DataSplit, step: Int, atEnd: Bool, watchdog: CollectiveWatchdog,
                                   progress: ProgressReport?) throws -> (Evaluation?, String?) {
        let clock = ContinuousClock(), started = clock.now
        do {
            let evaluation = try evaluate(model, on: valid, watchdog: watchdog)
            progress?.record(evaluation, step: step, seconds: (clock.now - started).seconds)
            return (evaluation, nil)
        } catch let failure as EvaluationFailed {
            if world.rank == 0 {
                log("evaluation at step \(step) failed (training \(atEnd ? "is complete and checkpointed" : "goes on")): \(failure.message)")
            }
            progress?.recordFailedEvaluation(failure.message, step: step)
            return (nil, failure.message)
        }
    }

    /// The validation split as `eval` configures it (eval.max_batches, eval.decode_samples greedy, eval.bleu_tokenize), split across
    /// ranks; every rank gets the same numbers.
    public func evaluate(_ model: TransformerModel, on valid: DataSplit, watchdog: CollectiveWatchdog? = nil) throws -> Evaluation {
        var plan = EvaluationPlan(batchSize: config.training.batchSize, sourceLength: config.data.sourceLength,
                                  targetLength: config.data.targetLength, maxBatches: config.eval.maxBatches,
                                  decodeSamples: config.eval.decodeSamples, decoding: .greedy)
        plan.masking = config.evaluationMasking(tokenizer: valid.tokenizer)
        plan.bleuTokenization = config.eval.bleuTokenize
        return try Training.evaluate(model, on: valid, plan: plan, world: world, watchdog: watchdog)
    }

    /// Rank 0 writes the checkpoint (as local work the others wait for without a stall timeout); every rank learns
    /// whether it worked, and a failed write (disk full, permissions) stops every rank with rank 0's message.
    private func saveCheckpoint(_ run: Run, state: TrainingState) throws {
        var failure = ""
        var failed = [0.0]
        if world.rank == 0 {
            do {
                let path = try run.watchdog.working {
                    try Checkpoint.save(directory: runDirectory, model: run.model, optimizer: run.optimizer, state: state, config: config,
                                        tokenizer: run.train.tokenizer, keep: config.checkpoint.keep,
                                        provenance: .init(globalBatch: run.globalBatch, worldSize: world.size,
                                                          dataFingerprint: run.fingerprint, dataDigest: run.digest,
                                                          validDigest: run.validDigest),
                                        abandoned: abandonedCheckpoints)
                }
                abandonedCheckpoints.remove(Paths.lastComponent(path))
                log("checkpoint \(path)")
            } catch {
                failure = "\(error)"
                failed[0] = 1
            }
        }
        try run.watchdog.allreduce(&failed, phase: "checkpoint write")
        guard failed[0] > 0 else { return }
        failure = try run.watchdog.guarding("checkpoint failure message") { try world.broadcast(failure, root: 0) }
        throw CheckpointWriteFailed(step: state.step, message: failure)
    }

    /// Runs `decide` on rank 0 and gives every rank its answer; an error there becomes the same error on every rank.
    @discardableResult
    private func decideOnRank0(_ phase: String, watchdog: CollectiveWatchdog, _ decide: () throws -> String) throws -> String {
        var answer = "", failure = ""
        if world.rank == 0 {
            do { answer = try decide() } catch { failure = sentenceOnEveryRank(error) }
        }
        failure = try watchdog.guarding(phase) { try world.broadcast(failure, root: 0) }
        if !failure.isEmpty { throw RunDirectoryRefused(message: failure) }
        return try watchdog.guarding(phase) { try world.broadcast(answer, root: 0) }
    }

    /// Rank 0 loads the checkpoint; every rank receives its parameters, AdamW moments and position, so the run
    /// directory need only be readable on rank 0's node.
    private func restore(_ path: String, model: TransformerModel, optimizer: AdamW, watchdog: CollectiveWatchdog) throws -> TrainingState {
        var numbers = [Int64](repeating: 0, count: 5)
        // A tensor that cannot be read (a damaged checkpoint) stops every rank with rank 0's sentence.
        _ = try decideOnRank0("checkpoint load", watchdog: watchdog) {
            let header: Checkpoint.Header
            do { header = try Checkpoint.load(path, into: model, optimizer: optimizer) } catch let error as CheckpointError {
                throw CheckpointError(file: error.file, message: error.message + Checkpoint.otherCheckpoints(in: runDirectory, besides: path, forTraining: true))
            }
            if let unusable = Checkpoint.unusableState(model, optimizer: optimizer) {
                throw CheckpointError(file: path, message: "cannot resume: \(unusable)" + Checkpoint.otherCheckpoints(in: runDirectory, besides: path, forTraining: true))
            }
            numbers = [Int64(header.state.step), Int64(header.state.position.epoch), Int64(header.state.position.batch),
                       Int64(bitPattern: header.state.dropoutSeed), Int64(header.optimizerStep)]
            return ""
        }
        try watchdog.guarding("checkpoint broadcast") {
            try world.broadcast(&numbers, root: 0)
            for arena in [model.parameters, optimizer.firstMoment, optimizer.secondMoment] { try world.broadcast(arena.storage, root: 0) }
        }
        optimizer.restore(step: Int(numbers[4]))
        return TrainingState(step: Int(numbers[0]), position: SamplerPosition(epoch: Int(numbers[1]), batch: Int(numbers[2])),
                             dropoutSeed: UInt64(bitPattern: numbers[3]))
    }

    /// What identifies the training data for resuming: every train shard's name, samples and tokens, and the tokenizer
    /// (the checkpoint's `data_fingerprint`; `FNV1a`, the hash it has always been made with, so older checkpoints compare).
    private func dataFingerprint(_ train: DataSplit) -> String {
        var hasher = FNV1a()
        for shard in train.shards {
            hasher.add(Paths.lastComponent(shard.path))
            hasher.add("\(shard.samples) \(shard.tokens)")
        }
        hasher.add(train.tokenizer.json)
        return String(hasher.value, radix: 16)
    }
}

/// A run directory that cannot be used as asked (it holds another run, nothing to resume, a refused change): every
/// rank stops with rank 0's message.
public struct RunDirectoryRefused: ErrorOnEveryRank, CustomStringConvertible, Sendable {
    /// Rank 0's reason, naming the directory and what to do.
    public let message: String
    /// The message itself.
    public var description: String { message }
}

/// The most compute threads a process takes (`training.threads`, `--threads`, SWIFTDDP_THREADS).
public let largestThreadCount = 1 << 12

/// Compute threads per rank when nothing says otherwise: SWIFTDDP_THREADS (Launch/mpirun.sh sets it from the
/// hostfile's ranks per node; empty is unset), else this node's cores / ranks sharing this node. Throws
/// `TrainingError` for a SWIFTDDP_THREADS that is not a whole number from 1 to `largestThreadCount` (it was ignored).
public func defaultComputeThreads(localRanks: Int) throws -> Int {
    if let text = ProcessInfo.processInfo.environment["SWIFTDDP_THREADS"], !text.isEmpty {
        guard let threads = Int(text), (1...largestThreadCount).contains(threads) else {
            throw TrainingError("SWIFTDDP_THREADS=\(text.prefix(40)): expected a whole number of compute threads from 1 to "
                                + "\(largestThreadCount) (or unset it: then this node's cores divided by the ranks on it)")
        }
        return threads
    }
    return max(1, ProcessInfo.processInfo.activeProcessorCount / max(1, localRanks))
}

extension Duration {
    /// The duration in seconds, as a Double (for rates and logs).
    public var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}

extension JSONEncoder {
    /// Keys sorted: the same bytes for the same value, to hash, compare and read.
    public static var sortedKeys: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }
}

/// 64-bit FNV-1a over strings: the hash of a checkpoint's `data_fingerprint`, kept so that the fingerprints of
/// checkpoints already written still compare (other digests are `ContentDigest`s).
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
