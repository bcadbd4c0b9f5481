import Foundation
import MPI
import Synchronization

/// Ends the job when a rank waits too long for the others in a collective (a rank stalled, a link cut), measuring
/// waiting, not work (`training.collective_timeout`).
///
/// - `guarding` wraps a blocking collective that every rank reaches after the same work (the training step's
///   allreduces): a thread checks how long it has been in progress and, past the limit, prints the phase and exits
///   non-zero, which makes mpirun end every rank. Blocking MPI calls cannot be interrupted; exiting is the only way out.
/// - `working` wraps local work that other ranks may wait for (a rank's share of evaluation, rank 0's checkpoint
///   write): a thread tells every other rank, every `timeout / 4` (at most 1 s), that this rank is still at work.
/// - `allreduce` and `wait` finish a collective after such work: the rank polls it, tells the others it has arrived,
///   and counts time only since the last word from any rank. So a slow evaluation or a long checkpoint write is never
///   taken for a stall, while a stopped rank (SIGSTOP) or a cut link goes silent and ends the job within the timeout;
///   the message names the ranks that sent no word.
/// - Time this process spent stopped itself (the whole job suspended, Ctrl-Z then `fg`) is not counted: the watch
///   loops notice the pause (`suspensionGap`) and count from its end.
///
/// Notices travel on a duplicate of the world communicator (tag `noticeTag`), so they never meet training messages.
/// MPI runs `.serialized`: the notice thread makes MPI calls only while the main thread does local work.
public final class CollectiveWatchdog: @unchecked Sendable {
    // @unchecked: `phase` and `running` are synchronised; `phaseNumber` and `notices` are used by the main thread
    // only, and by a notice thread only while the main thread makes no MPI call.
    private struct Phase {
        var name: String
        var started: ContinuousClock.Instant
    }
    private let timeout: Duration
    private let world: Communicator
    private let rank: Int
    private let size: Int
    private let phase = Mutex<Phase?>(nil)
    private let running = Atomic<Bool>(true)
    /// The notice channel; nil when the timeout is off or the world has one rank.
    private let notices: Communicator?
    /// Counts the polled collectives; every rank runs the same sequence, so the numbers agree across ranks.
    private var phaseNumber: Int64 = 0
    static let noticeTag = 7_301
    /// A pause in a loop that runs every 0.2 s (or faster) this long means the process was stopped, not that another
    /// rank was slow: the time waited is counted from the end of the pause.
    static let suspensionGap = Duration.seconds(2)

    /// `world` must be the communicator the collectives run on; every rank constructs its watchdog at the same point
    /// (the notice channel is made by a collective).
    public init(timeoutSeconds: Double, world: Communicator) throws {
        timeout = .milliseconds(Int64(timeoutSeconds * 1000))
        self.world = world
        rank = world.rank
        size = world.size
        notices = timeoutSeconds > 0 && world.size > 1 ? try world.duplicate() : nil
        guard timeoutSeconds > 0 else { return }
        // The thread holds the watchdog only while it checks, so releasing the watchdog also ends the thread.
        let thread = Thread { [weak self] in
            var last = ContinuousClock.now
            while true {
                Thread.sleep(forTimeInterval: 0.2)
                guard let watchdog = self, watchdog.running.load(ordering: .relaxed) else { return }
                // This process was stopped meanwhile (SIGSTOP, a suspended job, Ctrl-Z and fg), the whole job perhaps:
                // no rank waited for another in that time, so the guarded collective's time counts from now.
                let now = ContinuousClock.now
                if now - last > Self.suspensionGap { watchdog.phase.withLock { $0?.started = now } }
                last = now
                watchdog.check()
            }
        }
        thread.name = "ddp-collective-watchdog"
        thread.start()
    }

    /// Ends the job when the guarded collective has run past the timeout.
    private func check() {
        let overdue = phase.withLock { current -> String? in
            guard let current, ContinuousClock.now - current.started > timeout else { return nil }
            return current.name
        }
        if let overdue { fail("collective '\(overdue)' did not complete within \(timeout); a rank stalled or the network failed") }
    }

    private func fail(_ reason: String) -> Never {
        try? FileHandle.standardError.write(contentsOf: Foundation.Data("ddp: rank \(rank): \(reason). Ending the job (resume from the last checkpoint).\n".utf8))
        StopSignals.endProcess(status: 3)  // the main thread is inside a blocking collective
    }

    /// Runs `body` (a blocking collective every rank reaches after the same work) under the time limit.
    public func guarding<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
        phase.withLock { $0 = Phase(name: name, started: .now) }
        defer { phase.withLock { $0 = nil } }
        return try body()
    }

    /// Runs `body`, local work with no MPI call that other ranks may wait for, telling them meanwhile that this rank
    /// is at work (see the type's notes).
    public func working<T>(_ body: () throws -> T) rethrows -> T {
        guard let notices else { return try body() }
        let sender = NoticeSender(channel: notices, rank: rank, size: size, value: Self.notice(phase: phaseNumber + 1, arrived: false),
                                  interval: min(1, timeout.seconds / 4))
        defer { sender.stop() }
        return try body()
    }

    /// Sums `values` over every rank after uneven local work (see the type's notes).
    public func allreduce(_ values: inout [Double], phase name: String) throws {
        try values.withUnsafeMutableBufferPointer { buffer in
            try wait(name, for: try world.iallreduce(buffer, op: .sum))
        }
    }

    /// Waits for `request` (a nonblocking collective every rank started) after uneven local work: polls it, tells the
    /// other ranks this one has arrived, and ends the job when no rank has said anything for the timeout.
    public func wait(_ name: String, for request: Request) throws {
        guard let notices else {
            try guarding(name) { try request.wait() }
            return
        }
        phaseNumber += 1
        let started = ContinuousClock.now
        var sends: [Request] = []
        for other in 0..<size where other != rank {
            sends.append(try notices.isend(Self.notice(phase: phaseNumber, arrived: true), to: other, tag: Self.noticeTag))
        }
        defer { for send in sends where (try? send.test()) != true { send.abandon() } }
        var lastWord = started, lastPoll = started
        var heard = Set([rank]), arrived = Set([rank])
        var pause = 0.000_05
        while try !request.test() {
            // Stopped meanwhile (see `suspensionGap`): the others' silence in that time says nothing about them.
            let now = ContinuousClock.now
            if now - lastPoll > Self.suspensionGap { lastWord = now }
            lastPoll = now
            while let (source, value) = try notices.receivePending(tag: Self.noticeTag) {
                guard value >> 1 == phaseNumber else { continue }  // a notice of an earlier phase, late
                lastWord = .now
                heard.insert(source)
                if value & 1 == 1 { arrived.insert(source) }
            }
            sends.removeAll { (try? $0.test()) == true }
            if ContinuousClock.now - lastWord > timeout {
                let silent = (0..<size).filter { !heard.contains($0) }
                let waiting = (0..<size).filter { !arrived.contains($0) }
                fail("collective '\(name)' did not complete within \(timeout) of the last word from any rank"
                     + (silent.isEmpty ? "" : "; no word at all from rank(s) \(silent.map(String.init).joined(separator: ", "))")
                     + (waiting.isEmpty ? "; every rank had arrived, so a rank stopped inside it (suspended or hung) or the network failed"
                        : "; rank(s) \(waiting.map(String.init).joined(separator: ", ")) had not arrived (stalled, or the network failed)"))
            }
            Thread.sleep(forTimeInterval: pause)
            pause = min(0.005, pause * 2)
        }
    }

    /// A notice: the phase number and whether the sender has arrived at it (else it is still working towards it).
    private static func notice(phase: Int64, arrived: Bool) -> Int64 { phase << 1 | (arrived ? 1 : 0) }

    /// Stops the watch thread, which notices within 0.2 s (releasing the watchdog stops it too).
    public func stop() { running.store(false, ordering: .relaxed) }
    deinit { running.store(false, ordering: .relaxed) }
}

/// Sends one notice to every other rank every `interval` seconds on its own thread until stopped.
private final class NoticeSender: @unchecked Sendable {
    // @unchecked: the thread owns `channel` until `stop` has waited for it to finish; `stopping` is atomic.
    private let stopping = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)
    private let wake = DispatchSemaphore(value: 0)
    private let channel: Communicator

    init(channel: Communicator, rank: Int, size: Int, value: Int64, interval: Double) {
        self.channel = channel
        let thread = Thread { [self] in send(value, from: rank, to: size, every: interval) }
        thread.name = "ddp-work-notices"
        thread.start()
    }

    private func send(_ value: Int64, from rank: Int, to size: Int, every interval: Double) {
        var sends: [Request] = []
        while !stopping.load(ordering: .relaxed) {
            for other in 0..<size where other != rank {
                if let send = try? channel.isend(value, to: other, tag: CollectiveWatchdog.noticeTag) { sends.append(send) }
            }
            sends.removeAll { (try? $0.test()) == true }
            _ = wake.wait(timeout: .now() + interval)
        }
        for send in sends where (try? send.test()) != true { send.abandon() }
        finished.signal()
    }

    /// Stops the thread and waits until it has made its last MPI call.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        wake.signal()
        finished.wait()
    }
}
