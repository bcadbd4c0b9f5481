import ArgumentParser
import Foundation

@main
struct DDP: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ddp",
        abstract: "SwiftDDP: data-parallel transformer training on CPUs over MPI.",
        discussion: """
            Run alone for local mode, or under mpirun (see Launch/mpirun.sh) for data-parallel runs.
            """,
        subcommands: [Prepare.self, Train.self, Eval.self, Generate.self, Embed.self, Inspect.self, Export.self, Import.self, AttentionMaps.self, Plot.self, Bench.self]
    )

    /// ArgumentParser's `main`, with standard output flushed before an error goes to standard error: into a file or a
    /// pipe (a job's log) it is buffered, and the progress lines that came before the error would land after it.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            flushStandardOutput()
            exit(withError: error)
        }
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure this machine or cluster.",
        subcommands: [BenchAllreduce.self, BenchStep.self, BenchData.self, BenchDecode.self]
    )
}

/// Writes out what `print` has buffered (all C output streams), before something goes to standard error.
func flushStandardOutput() { fflush(nil) }

/// One line to standard error, after what standard output holds so far (so a log keeps them in the order written).
func printToStandardError(_ line: String) {
    flushStandardOutput()
    FileHandle.standardError.write(Foundation.Data((line + "\n").utf8))
}
