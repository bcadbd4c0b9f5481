/// A named tensor inside an arena: where it starts and its shape.
public struct TensorView: Sendable, Equatable {
    public let name: String
    public let offset: Int
    public let shape: [Int]
    public var count: Int { shape.reduce(1, *) }
}

/// Every parameter in one contiguous Float buffer, in forward order, with named views. Gradients and optimizer
/// moments are arenas of the same layout, so all-reduce buckets, checkpoints and optimizer sharding are slices.
public final class ParameterLayout: Sendable {
    public let views: [TensorView]
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

    public func view(_ name: String) -> TensorView? { index[name].map { views[$0] } }
}

/// An owned, zero-initialised Float buffer of one layout (parameters, gradients, or an AdamW moment).
public final class Arena {
    public let layout: ParameterLayout
    public let storage: UnsafeMutableBufferPointer<Float>

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

    public subscript(view: TensorView) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(rebasing: storage[view.offset..<(view.offset + view.count)])
    }

    public func zero() { storage.update(repeating: 0) }
}
