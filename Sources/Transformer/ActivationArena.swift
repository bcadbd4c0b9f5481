import Kernels

/// One allocation for every activation and scratch buffer of a step, carved at construction for the largest batch
/// shape the model takes (and carved again, without allocating, when a batch of another shape comes): a step
/// allocates nothing.
///
/// Layers ask for their buffers with `carve` while they are built. Built first against a counting arena (`counting()`),
/// which hands out empty buffers and adds up the sizes, the model learns how much it needs before allocating anything;
/// built again against an arena of that size, the same requests get their buffers.
final class ActivationArena {
    private(set) var storage: FloatBuffer
    /// Floats handed out so far (each buffer starts 64-byte aligned).
    private(set) var used = 0
    /// The same, in Double: while counting, sizes from an untrusted config may add up past Int's range.
    private(set) var usedFloats = 0.0
    /// Whether this arena only counts (`counting()`): its buffers are empty.
    let counting: Bool

    /// An arena that only counts (its buffers are empty).
    static func counting() -> ActivationArena { ActivationArena(floats: nil) }

    /// An arena of `floats` zeroed floats.
    init(floats: Int?) {
        counting = floats == nil
        storage = .allocate(capacity: max(1, floats ?? 0))
        storage.initialize(repeating: 0)
    }

    deinit { storage.deallocate() }

    /// Floats at the arena's start that outlive re-carving (`keepCarved`).
    private(set) var kept = 0

    /// Keeps what has been carved so far (a table that never moves) through every `releaseToKept`.
    func keepCarved() { kept = used }

    /// Hands out the floats after the kept ones again: every buffer carved since `keepCarved` is given up, to be
    /// carved anew for another batch shape (their contents are stale, as between steps).
    func releaseToKept() {
        used = kept
        usedFloats = Double(kept)
    }

    /// The next `count` floats (an empty buffer while counting).
    func carve(_ count: Int) -> FloatBuffer {
        usedFloats += Double(count) + 15
        let start = used
        let (end, overflow) = used.addingReportingOverflow((count + 15) & ~15)
        used = overflow ? .max : end
        guard !counting else { return FloatBuffer(start: storage.baseAddress, count: 0) }
        precondition(used <= storage.count, "the activation arena was sized for \(storage.count) floats, \(used) asked for")
        return FloatBuffer(rebasing: storage[start..<(start + count)])
    }
}
