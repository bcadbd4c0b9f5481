import Files
import Foundation
import Synchronization
import Training

/// Ends the command on SIGINT, SIGTERM or SIGHUP (a closed terminal) without leaving anything half-made behind: the temporary directories named
/// here and the temporaries of output files being written (`OutputFile.removeTemporariesInFlight`) are removed first.
/// Normal and error exits remove them themselves.
enum RemoveOnSignal {
    private static let state = Mutex<(directories: [String], sources: [any DispatchSourceSignal])>(([], []))

    /// Installs the handlers (once) and adds `directory`, if any, to what they remove.
    static func install(removing directory: String? = nil) {
        state.withLock { state in
            if let directory { state.directories.append(directory) }
            guard state.sources.isEmpty else { return }
            for signalNumber in [SIGINT, SIGTERM, SIGHUP] {
                // A signal the command was started with ignored (`nohup` ignores SIGHUP) stays ignored.
                if StopSignals.isIgnored(signalNumber) { continue }
                signal(signalNumber, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
                source.setEventHandler {
                    OutputFile.removeTemporariesInFlight()
                    let directories = RemoveOnSignal.state.withLock { $0.directories }
                    for directory in directories { try? FileManager.default.removeItem(atPath: directory) }
                    // Said, not a silent exit status: what was complete before the signal is in place, nothing else.
                    let name = String(cString: strsignal(signalNumber))
                    let line = "ddp: stopped by signal \(signalNumber) (\(name)); files it had not finished writing were removed, "
                        + "those finished before are in place\n"
                    try? FileHandle.standardError.write(contentsOf: Foundation.Data(line.utf8))
                    exit(128 + signalNumber)
                }
                source.resume()
                state.sources.append(source)
            }
        }
    }
}
