/// One allocation for every activation and scratch buffer of a step, carved once at model construction
/// for the largest batch and lengths: a step allocates nothing.
final class ActivationArena {
    private var sizes: [Int] = []
    private(set) var storage: UnsafeMutableBufferPointer<Float> = .init(start: nil, count: 0)
    private var offsets: [Int] = []

    /// Reserves `count` floats; returns the handle to fetch the buffer after `allocate()`.
    func reserve(_ count: Int) -> Int {
        sizes.append(count)
        return sizes.count - 1
    }

    func allocate() {
        var offset = 0
        offsets = sizes.map { size in
            defer { offset += (size + 15) & ~15 }  // 64-byte aligned starts
            return offset
        }
        storage = .allocate(capacity: max(1, offset))
        storage.initialize(repeating: 0)
    }

    subscript(handle: Int) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(rebasing: storage[offsets[handle]..<(offsets[handle] + sizes[handle])])
    }

    var floatCount: Int { storage.count }

    /// Floats reserved so far, before `allocate` (in Double: a sum that cannot overflow, for the memory check).
    var reservedFloats: Double { sizes.reduce(0) { $0 + Double($1) + 15 } }

    deinit { storage.deallocate() }
}
