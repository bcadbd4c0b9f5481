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
                signal(signalNumber, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
                source.setEventHandler { stop(by: signalNumber) }
                source.resume()
                state.sources.append(source)
            }
        }
    }

    private static func stop(by signalNumber: Int32) -> Never {
        OutputFile.removeTemporariesInFlight { files -> Never in
            let directories = state.withLock { $0.directories }
            // A file written inside a temporary directory is part of that directory's output.
            var unfinished = files.filter { file in !directories.contains { file.hasPrefix($0.temporary + "/") } }
            for (directory, target) in directories where (try? FileManager.default.removeItem(atPath: directory)) != nil {
                if let target { unfinished.append(target) }
            }
            // Said, not a silent exit status.
            let name = String(cString: strsignal(signalNumber))
            let line = unfinished.isEmpty
                ? "ddp: stopped by signal \(signalNumber) (\(name)); it was not writing a file, so nothing is half-written\n"
                : "ddp: stopped by signal \(signalNumber) (\(name)) before it finished writing \(unfinished.joined(separator: ", ")): "
                    + "not written (what was there before is untouched), and nothing half-written is left\n"
            try? FileHandle.standardError.write(contentsOf: Foundation.Data(line.utf8))
            StopSignals.endProcess(status: 128 + signalNumber)
        }
    }
}
