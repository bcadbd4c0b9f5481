import Files
import Foundation
import Synchronization
import Training

/// Ends the command on SIGINT, SIGTERM or SIGHUP (a closed terminal) without leaving anything half-made behind: the temporary directories named
/// here and the temporaries of output files being written (`OutputFile.removeTemporariesInFlight`) are removed first,
/// the output files whose writing was cut short are named on standard error, and the process ends at once
/// (`StopSignals.endProcess`, while other threads may still be computing). Normal and error exits remove them themselves.
enum RemoveOnSignal {
    private static let state = Mutex<(directories: [(temporary: String, target: String?)], sources: [any DispatchSourceSignal])>(([], []))

    /// Installs the handlers (once) and adds `directory`, if any, to what they remove; `target` is the output it is
    /// being made for (named when a signal cuts it short), nil for scratch space.
    static func install(removing directory: String? = nil, for target: String? = nil) {
        state.withLock { state in
            if let directory { state.directories.append((directory, target)) }
            guard state.sources.isEmpty else { return }
            for signalNumber in [SIGINT, SIGTERM, SIGHUP] {
                // A signal the command was started with ignored (`nohup` ignores SIGHUP) stays ignored.
                if StopSignals.isIgnored(signalNumber) { continue }
                state.sources.append(StopSignals.handle(signalNumber) { stop(by: signalNumber) })
            }
        }
    }

    private static func stop(by signalNumber: Int32) -> Never {
        OutputFile.removeTemporariesInFlight { interrupted -> Never in
            let directories = state.withLock { $0.directories }
            // A file written inside a temporary directory is part of that directory's output.
            func outside(_ file: String) -> Bool { !directories.contains { file.hasPrefix($0.temporary + "/") } }
            var unfinished = interrupted.unfinished.filter(outside)
            for (directory, target) in directories where (try? FileManager.default.removeItem(atPath: directory)) != nil {
                if let target { unfinished.append(target) }
            }
            let finished = interrupted.finished.filter(outside)
            // Said, not a silent exit status: what is in place and what is not.
            var line = "ddp: stopped by signal \(signalNumber) (\(String(cString: strsignal(signalNumber))))"
            if !unfinished.isEmpty {
                line += " before it finished writing \(unfinished.joined(separator: ", ")): not written (what was there before is "
                    + "untouched), and nothing half-written is left"
                if !finished.isEmpty { line += "; written before the signal: \(finished.joined(separator: ", "))" }
            } else if !finished.isEmpty {
                line += " after writing \(finished.joined(separator: ", ")); nothing half-written is left"
            } else {
                line += " before it wrote any file"
            }
            try? FileHandle.standardError.write(contentsOf: Foundation.Data((line + "\n").utf8))
            StopSignals.endProcess(status: 128 + signalNumber)
        }
    }
}
