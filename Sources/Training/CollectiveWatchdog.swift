import Foundation
import Synchronization

/// Ends the job when a collective does not complete within `timeout` seconds (a rank stalled, a link cut):
/// a thread checks the phase in progress and, past the limit, prints which phase hung and exits non-zero, which
/// makes mpirun end every rank. Blocking MPI calls cannot be interrupted, so exiting is the only way out.
public final class CollectiveWatchdog: Sendable {
    private struct Phase {
        var name: String
        var started: ContinuousClock.Instant
    }
    private let timeout: Duration
    private let rank: Int
    private let phase = Mutex<Phase?>(nil)
    private let running = Atomic<Bool>(true)

    public init(timeoutSeconds: Double, rank: Int) {
        self.timeout = .milliseconds(Int64(timeoutSeconds * 1000))
        self.rank = rank
        guard timeoutSeconds > 0 else { return }
        let thread = Thread { [self] in watch() }
        thread.name = "ddp-collective-watchdog"
        thread.start()
    }

    private func watch() {
        while running.load(ordering: .relaxed) {
            Thread.sleep(forTimeInterval: 0.2)
            let overdue = phase.withLock { current -> String? in
                guard let current, ContinuousClock.now - current.started > timeout else { return nil }
                return current.name
            }
            if let overdue {
                let message = "ddp: rank \(rank): collective '\(overdue)' did not complete within \(timeout); "
                    + "a rank stalled or the network failed. Ending the job (resume from the last checkpoint).\n"
                FileHandle.standardError.write(Foundation.Data(message.utf8))
                exit(3)
            }
        }
    }

    /// Runs `body` (a collective, or a step that ends in one) under the time limit.
    public func guarding<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
        phase.withLock { $0 = Phase(name: name, started: .now) }
        defer { phase.withLock { $0 = nil } }
        return try body()
    }

    public func stop() { running.store(false, ordering: .relaxed) }
    deinit { running.store(false, ordering: .relaxed) }
}
