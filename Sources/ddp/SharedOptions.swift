import ArgumentParser
import Files
import Kernels
import MPI
import Training
import Transformer

// Options several commands take, declared once (swift-argument-parser's `@OptionGroup`): one help text, one default
// and one validation each.

/// `--checkpoint`: a checkpoint file or a run directory.
struct CheckpointOption: ParsableArguments {
    @Option(help: "A checkpoint file, or a run directory (its latest checkpoint).")
    var checkpoint: String

    /// The checkpoint file meant: `checkpoint` itself, or the one its `latest` names. Throws `CheckpointError` naming
    /// the path when there is none.
    func resolve() throws -> String { try Checkpoint.resolve(checkpoint) }

    /// What a command reading the checkpoint `path` (`resolve()`'s) must never write over: the checkpoint, the path
    /// given and its `latest`, and the files of the run beside the checkpoint (`RunDirectory.runFiles`: its other
    /// checkpoints, metrics, event files).
    func protectedFiles(resolved path: String) -> [String] {
        [path, checkpoint, Paths.join(checkpoint, Checkpoint.latestName)] + RunDirectory.runFiles(in: Paths.parent(path))
    }
}

/// The most steps, iterations, rounds or batches a benchmark counts (their sums cannot overflow).
let largestBenchCount = 1_000_000

/// `--threads`: compute threads of this process.
struct ThreadsOption: ParsableArguments {
    @Option(parsing: .unconditional, help: "Compute threads of each process (default: SWIFTDDP_THREADS, else this node's cores divided by the processes on it).")
    var threads: Int?

    func validate() throws {
        if let threads, !(1...largestThreadCount).contains(threads) {
            throw ValidationError("--threads must be 1 to \(largestThreadCount), got \(threads).")
        }
    }

    /// Sets the compute threads (`localRanks`: processes of this job on this node) and returns how many.
    @discardableResult
    func apply(localRanks: Int = 1) throws -> Int {
        let count = try threads ?? defaultComputeThreads(localRanks: localRanks)
        setComputeThreads(count)
        return count
    }

    /// `apply` on every rank of `world` together: a setting refused on any rank (`SWIFTDDP_THREADS=abc` there) stops
    /// every rank with its sentence, said once.
    @discardableResult
    func apply(world: Communicator) throws -> Int {
        try togetherOnEveryRank(world, "thread settings") { try apply(localRanks: world.localSize) }
    }
}

/// `--config` and `--set`: a run config and overrides of its keys.
struct ConfigOptions: ParsableArguments {
    @Option(help: "A run config (YAML).")
    var config: String

    @Option(name: .customLong("set"), help: "Override a config key, as in --set training.steps=100 (repeatable).")
    var overrides: [String] = []

    /// The config with its overrides applied; throws `ConfigError` naming the file or key.
    /// With `baseModel`, the config's `model` section may be left out or partial (`ddp train --init`).
    func load(baseModel: ModelConfig? = nil) throws -> RunConfig { try RunConfig.load(config, overrides: overrides, baseModel: baseModel) }
}

/// How a translation is decoded: `--decode`, `--beam-size`, `--length-penalty`.
struct DecodingOptions: ParsableArguments {
    enum Method: String, ExpressibleByArgument, CaseIterable {
        case greedy, beam
    }

    @Option(help: "Translation: greedy or beam (default: greedy).")
    var decode: Method?

    @Option(parsing: .unconditional, help: "Hypotheses per source for --decode beam, 1 to 256 (default 4, the paper's).")
    var beamSize: Int?

    /// The widest beam: each hypothesis is a row of the decoder's batch, and beams past a few dozen only cost time.
    static let largestBeam = 256

    @Option(parsing: .unconditional,
            help: "Length penalty α for --decode beam: a finished hypothesis scores log P / ((5 + length) / 6)^α (default 0.6, the paper's).")
    var lengthPenalty: Double?

    /// The options given, by their names (for a refusal where nothing is decoded).
    var given: [String] {
        [decode.map { _ in "--decode" }, beamSize.map { _ in "--beam-size" }, lengthPenalty.map { _ in "--length-penalty" }].compactMap { $0 }
    }

    func validate() throws {
        if let beamSize, !(1...Self.largestBeam).contains(beamSize) {
            throw ValidationError("--beam-size must be 1 to \(Self.largestBeam), got \(beamSize).")
        }
        if let lengthPenalty, !(lengthPenalty >= 0 && lengthPenalty.isFinite) {
            throw ValidationError("--length-penalty must be a finite number, 0 or more, got \(lengthPenalty).")
        }
    }

    /// Refuses beam settings without `--decode beam` (they would be ignored without a word); called once the model is
    /// known to decode translations, so the advice to add `--decode beam` is never wrong.
    func checkBeamSettings() throws {
        if decode != .beam, let option = given.first(where: { $0 != "--decode" }) {
            // A run-time refusal (the model is known by now), without the usage ArgumentParser would print: the root
            // command's, since it cannot tell which subcommand threw.
            throw RunError("\(option) applies to beam search only; add --decode beam (or leave \(option) out).")
        }
    }

    /// The beam width and length penalty `method` uses.
    var beamWidth: Int { beamSize ?? 4 }
    var penalty: Double { lengthPenalty ?? 0.6 }

    var method: DecodingMethod { decode == .beam ? .beam(size: beamWidth, lengthPenalty: penalty) : .greedy }
}
