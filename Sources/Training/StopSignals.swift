import Dispatch
import Synchronization
#if canImport(Glibc)
@preconcurrency import Glibc  // `stdout`, a C global (the stream locks itself)
#endif

/// SIGTERM, SIGINT and SIGHUP as a request to stop at the next step boundary instead of dying mid-step: the trainer
/// all-reduces the flag once per step, so every rank agrees, rank 0 checkpoints, and all exit 0 (what a scheduler's
/// time limit, a Ctrl-C or a closed terminal or ssh session should lead to).
public enum StopSignals {
    private static let flag = Atomic<Int32>(0)
    private static let installed = Mutex<[any DispatchSourceSignal]>([])

    /// Whether `signalNumber` is ignored in this process now (SIG_IGN), as a signal the process was started with
    /// ignored is (`nohup`, a shell's `&`): then no handler is installed for it.
    public static func isIgnored(_ signalNumber: Int32) -> Bool {
        var current = sigaction()
        guard sigaction(signalNumber, nil, &current) == 0 else { return false }
        // (C function pointers have no == in Swift: compared as addresses.)
        return unsafeBitCast(current.__sigaction_handler.sa_handler, to: Int.self) == unsafeBitCast(SIG_IGN, to: Int.self)
    }

    /// Replaces the default action of SIGTERM, SIGINT and SIGHUP with setting the flag (idempotent). A signal the
    /// process was started with ignored stays ignored: `nohup` ignores SIGHUP so that a logout does not stop the run,
    /// and a shell ignores SIGINT for `ddp train &` in a script.
    public static func install() {
        installed.withLock { sources in
            guard sources.isEmpty else { return }
            for signalNumber in [SIGTERM, SIGINT, SIGHUP] {
                if isIgnored(signalNumber) { continue }
                sources.append(handle(signalNumber) { StopSignals.flag.store(signalNumber, ordering: .relaxed) })
            }
        }
    }

    /// A dispatch source that runs `handler` (on a global queue) for each `signalNumber` received, in place when this
    /// returns. libdispatch installs its own signal handler when it registers the source, on another thread; until
    /// then the signal keeps its default action (it ends the process, before anything of the command's is written).
    /// (Setting SIG_IGN first, as Apple's documentation advises, lost a signal that came in between: a SIGTERM 0.1 s
    /// into `ddp eval` was ignored 2 times in 60, and the command ran to its end.)
    public static func handle(_ signalNumber: Int32, _ handler: @escaping @Sendable () -> Void) -> any DispatchSourceSignal {
        let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
        let registered = DispatchSemaphore(value: 0)
        source.setRegistrationHandler { registered.signal() }
        source.setEventHandler(handler: handler)
        source.resume()
        _ = registered.wait(timeout: .now() + 5)
        return source
    }

    /// Asks for the same stop as a received signal (`signalNumber` is what `received` then says): for a cause the
    /// process finds itself, as a log whose reader has gone (SIGPIPE).
    public static func request(_ signalNumber: Int32) {
        _ = flag.compareExchange(expected: 0, desired: signalNumber, ordering: .relaxed)
    }

    /// The signal received so far (0 for none).
    public static var received: Int32 { flag.load(ordering: .relaxed) }

    /// Ends the process at once with `status`, from any thread, while other threads may still be computing: standard
    /// output is flushed when no thread is writing to it, then `_exit`. Not `exit`: that runs the libraries' exit
    /// handlers and destructors first (OpenBLAS's frees the buffers a matrix product on another thread is using), and
    /// a SIGTERM during `ddp embed` ended in a segmentation fault 10 times in 12.
    public static func endProcess(status: Int32) -> Never {
        if ftrylockfile(stdout) == 0 {
            fflush_unlocked(stdout)
            funlockfile(stdout)
        }
        _exit(status)
    }
}
