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

/// The thread count the compute kernels split work over, as last set by `setComputeThreads` (1 until then).
public var computeThreads: Int { threadSetting.load(ordering: .relaxed) }

/// Runs `body` once per tile of `0..<count` and waits. Tiles have fixed boundaries counted from 0
/// (`[i·tile, min((i+1)·tile, count))`), chosen by the caller from the problem's shape and never from the thread
/// count; the compute threads share the tiles out. So every call of `body` sees the same range whatever the number
/// of threads, and as long as `body` writes only what its range owns, results are bitwise the same for any thread
/// count — even where the arithmetic depends on where a range starts (OpenBLAS's micro-kernels treat a row
/// differently by its place in a block; SIMD loops differ in their tails).
@inline(__always)
func parallelFor(_ count: Int, tile: Int, _ body: (Range<Int>) -> Void) {
    precondition(tile >= 1, "tile size \(tile) must be positive")
    guard count > 0 else { return }
    let tiles = (count + tile - 1) / tile
    let threads = min(computeThreads, tiles)
    guard threads > 1 else {
        for index in 0..<tiles { body(tileRange(index, tile: tile, count: count)) }
        return
    }
    withoutActuallyEscaping(body) { body in
        let task = UncheckedSendable(body)
        DispatchQueue.concurrentPerform(iterations: threads) { part in
            for index in (tiles * part / threads)..<(tiles * (part + 1) / threads) {
                task.value(tileRange(index, tile: tile, count: count))
            }
        }
    }
}

/// Tile `index` of `0..<count` cut into tiles of `tile`: `[index·tile, min((index+1)·tile, count))`.
@inline(__always)
func tileRange(_ index: Int, tile: Int, count: Int) -> Range<Int> {
    (index * tile)..<min(count, (index + 1) * tile)
}

/// Carries a closure into concurrentPerform. Safe here because parallelFor waits for every part to finish before
/// returning, and the parts write disjoint ranges.
private struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// Elements per tile of the element-wise loops (64 KiB of floats: large enough that a tile costs far more than
/// handing it to a thread).
let elementTile = 1 << 14
