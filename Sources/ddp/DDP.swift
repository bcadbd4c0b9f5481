import ArgumentParser
import Foundation
import HDF5

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
        HDF5Library.skipCleanupAtExit()
        reopenClosedStandardStreams()
        do {
            try refuseArgumentsThatAreNotUTF8(Array(CommandLine.arguments.dropFirst()))
            var command = try parseAsRoot()
            if standardOutputWasClosed {
                throw RunError("standard output is closed; ddp prints its results there: redirect it to a file, or to /dev/null to discard them")
            }
            try command.run()
            // What was printed must have reached its file: a full disk is an error, not a quiet exit 0. (The last of
            // the buffered output is written here, and fails as any earlier part did.)
            if fflush(nil) != 0 {
                throw RunError.standardOutputFailed(String(cString: strerror(errno)), "what ddp printed there is lost")
            }
        } catch {
            flushStandardOutput()
            // ArgumentParser's own output, but an error in one write: ranks started by mpirun that fail at once (each
            // checking the same file before MPI starts) then print whole lines, never interleaved within one.
            let code = exitCode(for: error)
            let message = fullMessage(for: error)
            // One rank of several that stops before MPI: said once by rank 0, and the job's other ranks stop too.
            if stopBeforeMPI(message: message, isError: code != .success, oneProcess: error is OneProcessCommandUnderMPI) {
                Foundation.exit(code.rawValue)
            } else if code == .success {
                if !message.isEmpty { print(message) }
            } else if !message.isEmpty {
                try? FileHandle.standardError.write(contentsOf: Foundation.Data((message + "\n").utf8))  // stderr may be closed
            }
            Foundation.exit(code.rawValue)
        }
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure this machine or cluster.",
        subcommands: [BenchAllreduce.self, BenchStep.self, BenchData.self, BenchDecode.self]
    )
}

/// Whether standard input was closed when `ddp` started (it then reads /dev/null; `generate` says so).
nonisolated(unsafe) var standardInputWasClosed = false
/// Whether standard output was closed when `ddp` started (refused: what a command prints would be lost).
nonisolated(unsafe) var standardOutputWasClosed = false

/// Opens /dev/null onto standard input, output or error when one is closed at start: otherwise the next file opened
/// (a checkpoint, metrics.jsonl) would take its number, and log lines go into that file or input be read from it.
func reopenClosedStandardStreams() {
    for descriptor: Int32 in 0...2 where fcntl(descriptor, F_GETFD) == -1 {
        // The lowest free number is this one: the lower ones are open (checked, or opened, first).
        _ = open("/dev/null", descriptor == 0 ? O_RDONLY : O_WRONLY)
        if descriptor == 0 { standardInputWasClosed = true }
        if descriptor == 1 { standardOutputWasClosed = true }
    }
}

/// Command-line bytes that are not UTF-8 arrive as U+FFFD: a path would name another file than the one typed (a run
/// directory would be created under the replaced name), a value say something else. Refused by position and option.
func refuseArgumentsThatAreNotUTF8(_ arguments: [String]) throws {
    guard let index = arguments.firstIndex(where: { $0.contains("\u{FFFD}") }) else { return }
    // Named by its option when it says so itself (--run-dir=...), else by what comes before it (an option or a flag).
    let argument = arguments[index]
    let option = argument.hasPrefix("-") && argument.contains("=") ? " (the value of \(argument.prefix { $0 != "=" }))"
        : index > 0 && arguments[index - 1].hasPrefix("-") ? " (after \(arguments[index - 1]))" : ""
    throw RunError("argument \(index + 1), '\(arguments[index])'\(option), holds bytes that are not UTF-8 text (shown as \u{FFFD}); "
                   + "give a UTF-8 path or value (rename the file or directory)")
}

/// Writes out what `print` has buffered (all C output streams), before something goes to standard error.
func flushStandardOutput() { fflush(nil) }

/// One line to standard error, after what standard output holds so far (so a log keeps them in the order written).
func printToStandardError(_ line: String) {
    flushStandardOutput()
    try? FileHandle.standardError.write(contentsOf: Foundation.Data((line + "\n").utf8))  // stderr may be closed
}
