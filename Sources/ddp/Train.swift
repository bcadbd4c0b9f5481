import ArgumentParser
import Files
import Foundation
import MPI
import Training
import Transformer

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a model: alone (local mode) or under mpirun, every rank running this command.",
        discussion: """
            Rank 0 prints progress, appends metrics to RUN_DIR/metrics.jsonl and writes checkpoints to RUN_DIR \
            (RUN_DIR/latest names the newest). --resume continues from it: parameters, optimizer moments, step, \
            schedule, data position and dropout seed; keys that differ from the checkpoint's config are printed, and \
            changes that would alter which samples are seen (seed, global batch, data) are refused.

            A new run never writes into a RUN_DIR that holds an earlier run: continue it with --resume, replace it \
            with --overwrite, or choose another --run-dir. --resume-if-present suits job scripts that are requeued.

            --init CHECKPOINT starts a new run from a checkpoint's parameters (fine-tuning; ddp import makes one from a \
            Hugging Face GPT-2): fresh AdamW moments, schedule and data position. The config's model section may be \
            left out or set only dropout: the checkpoint's model is used, and any other key that differs is refused. The \
            data must be encoded with the checkpoint's tokenizer (ddp prepare --tokenizer-from CHECKPOINT). A run that \
            resumes continues from its own checkpoint instead.

            Examples:
              ddp train --config Configs/reverse.yaml
              Launch/mpirun.sh -np 2 train --config Configs/reverse.yaml --run-dir runs/reverse
            """
    )

    @OptionGroup var config: ConfigOptions

    @Option(help: "Where checkpoints and metrics go (default: runs/<config name>).")
    var runDir: String?

    @Option(name: .customLong("init"), help: ArgumentHelp("Start from this checkpoint's parameters (a file or run directory): fine-tuning.",
                                                         valueName: "checkpoint"))
    var initFrom: String?

    @Flag(help: "Continue from RUN_DIR/latest (an error when there is none).")
    var resume = false

    @Flag(help: "Continue from RUN_DIR/latest when there is one, else start fresh (an error for checkpoints without a latest).")
    var resumeIfPresent = false

    @Flag(help: "Start fresh in a RUN_DIR that holds an earlier run, deleting its checkpoints and metrics.")
    var overwrite = false

    func validate() throws {
        if let runDir, runDir.isEmpty { throw ValidationError("--run-dir is empty; give a directory for checkpoints and metrics.") }
        guard [resume, resumeIfPresent, overwrite].filter({ $0 }).count <= 1 else {
            throw ValidationError("--resume, --resume-if-present and --overwrite exclude each other.")
        }
    }

    func run() throws {
        // A write to a pipe whose reader has gone fails (EPIPE) instead of killing the run before its checkpoint.
        signal(SIGPIPE, SIG_IGN)
        // The default run directory is named after the config file; a config a shell hands over as /dev/fd/63
        // (`--config <(...)`) names no run.
        if runDir == nil, config.config.hasPrefix("/dev/fd/") || config.config.hasPrefix("/proc/self/fd/") || config.config.hasPrefix("/dev/stdin") {
            throw RunError("--config \(config.config) is a pipe, whose name says nothing of the run: give --run-dir")
        }
        let directory = runDir ?? "runs/" + Paths.stem(config.config)
        // Rank 0's refusal to go on with a lost log, thrown once every rank has finished (rank 0 alone throwing inside
        // would abort the job while the others finalise).
        var logLost: RunError?
        try withMPI { runtime in
            let world = runtime.world
            let (ownModel, resumeProblem) = try resumedModel(in: directory, world: world)
            // A refusal is said once, by rank 0, when every rank refuses the same.
            let (run, initPath) = try togetherOnEveryRank(world, "config") {
                try loadConfig(directory: directory, ownModel: ownModel, resumeProblem: resumeProblem)
            }
            // Each line flushed: a job log (stdout to a file or a pipe) shows it at once, and keeps it if the job is killed.
            let trainer = Trainer(config: run, runDirectory: directory, world: world) { line in
                if world.rank == 0 {
                    print(line)
                    // A log whose reader has gone (`ddp train | head`): stop with a checkpoint, as for SIGTERM.
                    if fflush(nil) != 0 && errno == EPIPE { StopSignals.request(SIGPIPE) }
                }
            }
            if let initFrom, ownModel != nil, world.rank == 0 { print("--init \(initFrom) is not read: \(directory) resumes its own run") }
            trainer.initialParameters = initPath
            let outcome = try trainer.run(resume: resume ? .required : resumeIfPresent ? .ifPresent : .fresh, overwrite: overwrite)
            // The trainer holds the run directory's lock: until the run's last line, not only until its last use.
            defer { withExtendedLifetime(trainer) {} }
            if world.rank == 0 {
                // The log went to a pipe nobody reads any more: where to go on from goes to standard error, exit 1.
                if outcome.stopped && StopSignals.received == SIGPIPE {
                    logLost = RunError.standardOutputFailed("its reader has gone", "the run stopped at step "
                                                         + "\(outcome.state.step) with a checkpoint; run directory \(directory), "
                                                         + "metrics \(directory)/metrics.jsonl (continue with --resume)")
                } else {
                    print((outcome.stopped ? "stopped by a signal" : "done") + " at step \(outcome.state.step); run directory \(directory), "
                          + "metrics \(directory)/metrics.jsonl" + (outcome.stopped ? " (continue with --resume)" : ""))
                }
                if let evaluation = outcome.evaluation, outcome.evaluationFailure == nil {
                    var line = String(format: "final validation: loss %.4f, perplexity %.3f, token accuracy %.4f over %d tokens",
                                      evaluation.loss, evaluation.perplexity, evaluation.tokenAccuracy, evaluation.targetTokens)
                    if let exact = evaluation.exactMatch {
                        line += String(format: "; exact match %.4f, %@, chrF %.2f (greedy)", exact, evaluation.bleuText, evaluation.chrF ?? 0)
                    }
                    print(line)
                }
            }
            if let failure = outcome.evaluationFailure {
                throw FinalEvaluationFailed(message: "training finished at step \(outcome.state.step) and its checkpoint is in "
                                                     + "\(directory), but the final evaluation failed: \(failure)")
            }
        }
        if let logLost { throw logLost }
    }

    /// When the run resumes, the model of the checkpoint it resumes from, or why there is none to resume from: rank 0
    /// reads it (only rank 0's node needs the run directory) and sends it to the others. Neither for a fresh run, nor for
    /// a resume-if-present with nothing to resume.
    private func resumedModel(in directory: String, world: Communicator) throws -> (model: ModelConfig?, problem: String?) {
        guard resume || resumeIfPresent else { return (nil, nil) }
        var text = ""
        if world.rank == 0 {
            do {
                if let latest = try RunDirectory(path: directory).checkpointToResume(resume ? .required : .ifPresent) {
                    let header = try Checkpoint.readHeader(toResume: latest, in: directory)
                    text = "model " + String(decoding: try JSONEncoder().encode(header.config.model), as: UTF8.self)
                }
            } catch {
                text = "error \(error)"
            }
        }
        if world.size > 1 { text = try world.broadcast(text, root: 0) }
        if text.hasPrefix("error ") { return (nil, String(text.dropFirst(6))) }
        guard text.hasPrefix("model ") else { return (nil, nil) }
        return (try JSONDecoder().decode(ModelConfig.self, from: Foundation.Data(text.dropFirst(6).utf8)), nil)
    }

    /// The run's config, with --init's checkpoint (its path) or, when the run resumes, the run's own model (`ownModel`)
    /// as the base of the model section: a fine-tune's config leaves that section out, and its resume needs no --init
    /// (which may have moved since the start, and is not read); the refusals of --init. A config without its model
    /// section that cannot resume is refused for `resumeProblem`, the reason the trainer would give (a damaged or
    /// missing `latest`), rather than for the section.
    private func loadConfig(directory: String, ownModel: ModelConfig?, resumeProblem: String?) throws -> (RunConfig, initPath: String?) {
        var initPath: String?
        var baseModel: ModelConfig?
        if ownModel == nil, resumeProblem == nil, let initFrom {
            let path: String
            do {
                path = try Checkpoint.resolve(initFrom, pin: false)
                baseModel = try Checkpoint.readHeader(path).config.model
            } catch let error as CheckpointError {
                // Named as the option it came from: "--init X: does not exist", "--init X: checkpoint X/latest: ...".
                throw RunError("--init \(initFrom): " + (error.file == initFrom ? error.message : "\(error)"))
            }
            initPath = path
            func resolved(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().path }
            if overwrite && Paths.parent(resolved(path)) == resolved(directory) {
                throw RunError("--init \(initFrom) is a checkpoint of --run-dir \(directory), which --overwrite would delete first; "
                                      + "copy it elsewhere, or choose another --run-dir.")
            }
        }
        let run: RunConfig
        if resume || resumeIfPresent, baseModel == nil {
            // The run's own model fills in only a model section a fine-tune's config leaves out (or gives only dropout):
            // a config that names the model keeps its own values, and their defaults, as at the start.
            do { run = try config.load() } catch let error as ConfigError where error.isMissingKey
                && (error.key == "model" || error.key?.hasPrefix("model.") == true) {
                if let resumeProblem { throw RunError(resumeProblem) }
                guard let ownModel else { throw error }
                run = try config.load(baseModel: ownModel)
            }
        } else {
            run = try config.load(baseModel: baseModel)
        }
        if let initPath, let baseModel, let differences = Checkpoint.architectureDifferences(baseModel, run.model) {
            throw RunError("--init \(initPath) holds another model than the config's (\(differences)); --init keeps the "
                                        + "checkpoint's network: leave out the model section, or give only model.dropout")
        }
        // (eval may leave it out and take --data; training has nothing else to read)
        guard !run.data.directory.isEmpty else {
            // Named where it was emptied: a --set (data.directory="") or the file.
            let override = config.overrides.last { $0.hasPrefix("data.directory=") }
            throw ConfigError(file: override.map { "--set \($0)" } ?? config.config, key: "data.directory",
                              message: "is not set: name the directory `ddp prepare --output` wrote the shards to")
        }
        return (run, initPath)
    }
}

/// The run is trained and checkpointed, but its final evaluation failed (every rank learned it together).
struct FinalEvaluationFailed: ErrorOnEveryRank, CustomStringConvertible {
    let message: String
    var description: String { message }
}
