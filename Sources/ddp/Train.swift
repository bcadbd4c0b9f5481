import ArgumentParser
import Foundation
import MPI
import Training

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a model: alone (local mode) or under mpirun, every rank running this command.",
        discussion: """
            Rank 0 prints progress, appends metrics to RUN_DIR/metrics.jsonl and writes checkpoints to RUN_DIR
            (RUN_DIR/latest names the newest). --resume continues from it: parameters, optimizer moments, step,
            schedule, data position and dropout seed.

            Examples:
              ddp train --config Configs/reverse.yaml
              Launch/mpirun.sh -np 2 train --config Configs/reverse.yaml --run-dir runs/reverse
            """
    )

    @Option(help: "The run config (YAML).")
    var config: String

    @Option(help: "Where checkpoints and metrics go (default: runs/<config name>).")
    var runDir: String?

    @Flag(help: "Continue from RUN_DIR/latest.")
    var resume = false

    @Option(name: .customLong("set"), help: "Override a config key: --set training.steps=100 (repeatable).")
    var overrides: [String] = []

    func run() throws {
        let run = try RunConfig.load(config, overrides: overrides)
        let directory = runDir ?? "runs/" + ((config as NSString).lastPathComponent as NSString).deletingPathExtension
        try withMPI { runtime in
            let world = runtime.world
            let trainer = Trainer(config: run, runDirectory: directory, world: world) { line in
                if world.rank == 0 { print(line) }
            }
            let (state, evaluation, stopped) = try trainer.run(resume: resume)
            if world.rank == 0 {
                print((stopped ? "stopped by a signal" : "done") + " at step \(state.step); run directory \(directory), "
                      + "metrics \(directory)/metrics.jsonl" + (stopped ? " (continue with --resume)" : ""))
                if let evaluation {
                    var line = String(format: "final validation: loss %.4f, perplexity %.3f, token accuracy %.4f over %d tokens",
                                      evaluation.loss, evaluation.perplexity, evaluation.tokenAccuracy, evaluation.tokens)
                    if let exact = evaluation.exactMatch, let bleu = evaluation.bleu {
                        line += String(format: "; exact match %.4f, BLEU %.2f (greedy)", exact, bleu)
                    }
                    print(line)
                }
            }
        }
    }
}
