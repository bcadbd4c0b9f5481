import Dispatch
import Synchronization

/// How many threads the compute kernels (GEMMs included) split work over. Ranks x threads should not exceed
/// the node's cores.
private let threadSetting = Atomic<Int>(1)

/// Sets the thread count of the compute kernels; OpenBLAS itself stays single-threaded (see `gemm`).
public func setComputeThreads(_ count: Int) {
    threadSetting.store(max(1, count), ordering: .relaxed)
    setBLASThreads(1)
}

public var computeThreads: Int { threadSetting.load(ordering: .relaxed) }

/// Runs `body` over `0..<count` split into contiguous ranges, one per thread, and waits. Each index is handled
/// by exactly one call with the same arithmetic whatever the split, so results do not depend on the thread count
/// as long as `body` only writes what its range owns.
@inline(__always)
func parallelFor(_ count: Int, minimumPerThread: Int = 1, _ body: (Range<Int>) -> Void) {
    let threads = min(computeThreads, max(1, count / max(1, minimumPerThread)))
    guard threads > 1 else {
        body(0..<count)
        return
    }
    withoutActuallyEscaping(body) { body in
        let task = UncheckedSendable(body)
        DispatchQueue.concurrentPerform(iterations: threads) { part in
            task.value((count * part / threads)..<(count * (part + 1) / threads))
        }
    }
}

/// Carries a closure into concurrentPerform. Safe here because parallelFor waits for every part to finish before
/// returning, and the parts write disjoint ranges.
private struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// `parallelFor` over the 16-element chunks of `count` elements: every chunk is computed whole by one thread,
/// so the SIMD arithmetic is the same for any thread count.
@inline(__always)
func parallelChunks(_ count: Int, _ body: (_ start: Int, _ width: Int) -> Void) {
    parallelFor((count + 15) / 16, minimumPerThread: 1024) { chunks in
        for chunk in chunks { body(chunk * 16, min(16, count - chunk * 16)) }
    }
}
