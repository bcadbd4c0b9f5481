import Foundation
import Kernels
import MPI
import Synchronization
import Transformer

/// Sums the gradient arena over all ranks in buckets, overlapped with backward.
///
/// The arena is cut into buckets of about `bucketBytes` from its end (backward finishes the end first). The model's
/// layers report the arena ranges whose gradients are final (`TransformerModel.onGradientsFinal`); once the reported
/// ranges cover everything from a bucket's start to the arena's end, that bucket starts a nonblocking in-place
/// allreduce at once; `finish()` starts the rest and waits for all. Only the last micro-step of an accumulation
/// communicates: earlier ones just accumulate locally.
///
/// Open MPI moves a nonblocking collective forward only inside MPI calls. When MPI allows calls from another
/// thread (`.serialized` or better), a progress thread owns every MPI call of the step and keeps the all-reduces
/// moving while backward computes, as PyTorch DDP's and Horovod's background threads do; otherwise the training
/// thread tests the requests each time backward reports progress.
///
/// With `.bf16` compression each bucket crosses the network as bfloat16 (half the bytes), summed in float32 pairwise
/// and rounded once per sum; the result is written back to the float32 gradients.
public final class GradientSynchronizer {
    private let reducer: BucketReducer
    /// Bucket ranges in launch order: the last slice of the arena first.
    public let buckets: [Range<Int>]
    /// Whether a progress thread drives communication (else the training thread, between layers).
    public let usesProgressThread: Bool
    private let progress: ProgressThread?
    private var inFlight: [BucketReducer.InFlight] = []
    private var launched = 0
    private let arenaCount: Int
    /// Every gradient from here to the arena's end is final in this step.
    private var finalFrom: Int
    /// Reported ranges not yet joined to the final tail.
    private var reported: [Range<Int>] = []
    private var failure: MPIError?
    /// Buckets launched before backward ended in the last step (how much communication overlapped).
    public private(set) var launchedDuringBackward = 0

    /// `progressThread` nil: use one when MPI's thread level allows it.
    public init(gradients: Arena, communicator: Communicator, bucketBytes: Int, compression: GradientCompression = .none,
                progressThread: Bool? = nil) {
        let perBucket = max(1, bucketBytes / MemoryLayout<Float>.stride)
        var buckets: [Range<Int>] = []
        var end = gradients.layout.count
        while end > 0 {
            let start = max(0, end - perBucket)
            buckets.append(start..<end)
            end = start
        }
        self.buckets = buckets
        arenaCount = gradients.layout.count
        finalFrom = arenaCount
        reducer = BucketReducer(communicator: communicator, gradients: gradients.storage, compression: compression)
        let allowed = (MPIRuntime.threadLevel ?? .single) >= .serialized && communicator.size > 1
        usesProgressThread = (progressThread ?? allowed) && allowed
        progress = usesProgressThread ? ProgressThread(reducer: reducer) : nil
    }

    deinit { progress?.close() }

    /// Connects to the model's backward for one micro-step that must communicate.
    public func attach(to model: TransformerModel) {
        inFlight.removeAll(keepingCapacity: true)
        launched = 0
        failure = nil
        launchedDuringBackward = 0
        finalFrom = arenaCount
        reported.removeAll(keepingCapacity: true)
        model.onGradientsFinal = { [unowned self] range in self.gradientsFinal(range) }
    }

    /// Notes `range` as final, starts every bucket whose gradients are now all final, and lets MPI progress the ones
    /// in flight.
    func gradientsFinal(_ range: Range<Int>) {
        reported.append(range)
        // Join every reported range that reaches the final tail, whatever order they came in.
        while let index = reported.firstIndex(where: { $0.upperBound >= finalFrom }) {
            finalFrom = min(finalFrom, reported.remove(at: index).lowerBound)
        }
        let first = launched
        while launched < buckets.count && buckets[launched].lowerBound >= finalFrom {
            launched += 1
            if finalFrom > 0 { launchedDuringBackward += 1 }
        }
        if let progress {
            if launched > first { progress.enqueue(Array(buckets[first..<launched]), finishing: false) }
            return
        }
        do {
            for bucket in buckets[first..<launched] where failure == nil { inFlight.append(try reducer.start(bucket)) }
            // Open MPI progresses nonblocking collectives inside MPI calls: a test per report keeps them moving.
            for bucket in inFlight where failure == nil { _ = try reducer.test(bucket) }
        } catch {
            failure = error
        }
    }

    /// Starts what is left, waits for everything, and detaches from the model. Afterwards every rank holds the
    /// same summed gradients.
    public func finish(detaching model: TransformerModel) throws(MPIError) {
        model.onGradientsFinal = nil
        let rest = Array(buckets[launched...])
        launched = buckets.count
        if let progress {
            progress.enqueue(rest, finishing: true)
            if let error = progress.waitUntilDone() { throw error }
            return
        }
        if let failure { throw failure }
        for bucket in rest { inFlight.append(try reducer.start(bucket)) }
        for bucket in inFlight { try reducer.wait(bucket) }
    }
}

/// How gradient buckets cross the network (`training.grad_compression`).
public enum GradientCompression: String, Codable, Sendable, CaseIterable {
    /// float32, exact.
    case none
    /// bfloat16: half the bytes; every sum rounded to 8 significant bits.
    case bf16
}

/// Starts and completes one bucket's all-reduce, compressing to bfloat16 and back when asked.
private final class BucketReducer {
    final class InFlight {
        let range: Range<Int>
        let request: Request
        /// The sum has been written back to the float32 gradients.
        var finished = false

        init(range: Range<Int>, request: Request) {
            self.range = range
            self.request = request
        }
    }
    private let communicator: Communicator
    private let gradients: UnsafeMutableBufferPointer<Float>
    /// bfloat16 copies of the gradients, the same layout (only with compression).
    private let compressed: UnsafeMutableBufferPointer<UInt16>?

    init(communicator: Communicator, gradients: UnsafeMutableBufferPointer<Float>, compression: GradientCompression) {
        self.communicator = communicator
        self.gradients = gradients
        compressed = compression == .bf16 ? .allocate(capacity: gradients.count) : nil
    }

    deinit { compressed?.deallocate() }

    func start(_ range: Range<Int>) throws(MPIError) -> InFlight {
        guard let compressed else {
            return InFlight(range: range, request: try communicator.iallreduce(UnsafeMutableBufferPointer(rebasing: gradients[range]), op: .sum))
        }
        let slice = UnsafeMutableBufferPointer(rebasing: compressed[range])
        bfloat16Compress(UnsafeBufferPointer(rebasing: gradients[range]), into: slice)
        return InFlight(range: range, request: try communicator.iallreduceBFloat16Sum(slice))
    }

    /// True once the bucket's sum is in the gradients.
    func test(_ bucket: InFlight) throws(MPIError) -> Bool {
        guard try bucket.request.test() else { return false }
        unpack(bucket)
        return true
    }

    func wait(_ bucket: InFlight) throws(MPIError) {
        try bucket.request.wait()
        unpack(bucket)
    }

    /// Writes a completed bucket's bfloat16 sum back to the float32 gradients, once.
    private func unpack(_ bucket: InFlight) {
        guard !bucket.finished else { return }
        bucket.finished = true
        guard let compressed else { return }
        bfloat16Decompress(UnsafeBufferPointer(rebasing: compressed[bucket.range]),
                           into: UnsafeMutableBufferPointer(rebasing: gradients[bucket.range]))
    }
}

/// A thread that starts and completes nonblocking all-reduces of gradient buckets.
///
/// `@unchecked Sendable` because it carries the reducer (the communicator and the gradient storage) to its thread,
/// which the compiler cannot check; the hand-over protocol makes it safe: between the first `enqueue` of a step and the return
/// of `waitUntilDone`, the training thread makes no MPI call (MPI is `.serialized`), and it writes only gradients
/// of buckets it has not yet enqueued, while this thread touches only enqueued ones. Shared state is in `state`.
private final class ProgressThread: @unchecked Sendable {
    private struct State {
        var pending: [Range<Int>] = []
        var finishing = false
        var closing = false
        var failure: MPIError?
    }
    private let state = Mutex(State())
    private let work = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    private let reducer: BucketReducer
    /// Pause between MPI_Test rounds while requests are in flight: short enough to keep a 10 Gbit/s link's socket
    /// buffers full, long enough to cost the compute thread next to it almost nothing.
    private static let pollInterval: useconds_t = 200

    init(reducer: BucketReducer) {
        self.reducer = reducer
        let thread = Thread { [self] in run() }
        thread.name = "ddp-gradient-allreduce"
        thread.start()
    }

    func enqueue(_ buckets: [Range<Int>], finishing: Bool) {
        state.withLock {
            $0.pending += buckets
            $0.finishing = $0.finishing || finishing
        }
        work.signal()
    }

    /// Blocks until every enqueued bucket is summed; returns the first MPI error of the step, if any.
    func waitUntilDone() -> MPIError? {
        done.wait()
        return state.withLock { state in
            defer { state.failure = nil }
            return state.failure
        }
    }

    func close() {
        state.withLock { $0.closing = true }
        work.signal()
    }

    private func run() {
        var requests: [BucketReducer.InFlight] = []
        while true {
            let (buckets, finishing, closing) = state.withLock { state in
                defer { state.pending.removeAll(keepingCapacity: true) }
                return (state.pending, state.finishing, state.closing)
            }
            if closing { return }
            do {
                for range in buckets { requests.append(try reducer.start(range)) }
                var stillRunning: [BucketReducer.InFlight] = []
                for request in requests {
                    if try !reducer.test(request) { stillRunning.append(request) }
                }
                requests = stillRunning
            } catch {
                // MPI is not usable after a failed call: report it and drop what is in flight.
                state.withLock { $0.failure = $0.failure ?? error }
                requests.removeAll()
            }
            if requests.isEmpty {
                if finishing && state.withLock({ $0.pending.isEmpty }) {
                    state.withLock { $0.finishing = false }
                    done.signal()
                }
                work.wait()
            } else {
                usleep(Self.pollInterval)
            }
        }
    }
}
