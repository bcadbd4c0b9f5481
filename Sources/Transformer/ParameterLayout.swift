/// A named tensor inside an arena: where it starts and its shape.
public struct TensorView: Sendable, Equatable {
    /// The parameter's name, as torch.nn names it (`decoder.layers.0.ffn.fc1.weight`).
    public let name: String
    /// Its first element's index in the arena.
    public let offset: Int
    /// Its shape, torch's order (a weight is [out, in]).
    public let shape: [Int]
    /// Its element count.
    public var count: Int { shape.reduce(1, *) }
}

/// Every parameter in one contiguous Float buffer, in forward order, with named views. Gradients and optimizer
/// moments are arenas of the same layout, so all-reduce buckets, checkpoints and optimizer sharding are slices.
public final class ParameterLayout: Sendable {
    /// Every tensor in arena order.
    public let views: [TensorView]
    /// Floats in the arena (the total parameter count).
    public let count: Int
    private let index: [String: Int]

    init(_ entries: [(String, [Int])]) {
        var views: [TensorView] = []
        var offset = 0
        for (name, shape) in entries {
            views.append(TensorView(name: name, offset: offset, shape: shape))
            offset += shape.reduce(1, *)
        }
        self.views = views
        self.count = offset
        self.index = Dictionary(uniqueKeysWithValues: views.enumerated().map { ($1.name, $0) })
    }

    /// The tensor named `name`, or nil when the layout has none.
    public func view(_ name: String) -> TensorView? { index[name].map { views[$0] } }
}

/// An owned, zero-initialised Float buffer of one layout (parameters, gradients, or an AdamW moment).
public final class Arena {
    /// What the floats are.
    public let layout: ParameterLayout
    /// The floats, `layout.count` of them (one at least).
    public let storage: UnsafeMutableBufferPointer<Float>

    /// A zeroed arena for `layout`.
    public init(layout: ParameterLayout) {
        self.layout = layout
        storage = .allocate(capacity: max(1, layout.count))
        storage.initialize(repeating: 0)
    }

    deinit { storage.deallocate() }

    /// The named tensor's slice; a name the layout does not have is a programming error.
    public subscript(name: String) -> UnsafeMutableBufferPointer<Float> {
        guard let view = layout.view(name) else { preconditionFailure("no parameter named '\(name)'") }
        return self[view]
    }

    /// The slice `view` names (a view of this arena's layout).
    public subscript(view: TensorView) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(rebasing: storage[view.offset..<(view.offset + view.count)])
    }

    /// Sets every float to 0.
    public func zero() { storage.update(repeating: 0) }
}
