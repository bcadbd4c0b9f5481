import Foundation

// A `BatchLoader`'s plans: which samples each batch holds, in order, computed on the loader thread.

/// This rank's micro-batches from a sampler position on, for a number of updates: a loader's plan (it runs on
/// the loader thread).
public final class RankPlan: @unchecked Sendable {
    // @unchecked: all state is touched under `lock`.
    private let lock = NSLock()
    private let sampler: DistributedSampler
    private let rank: Int, worldSize: Int, accumulationSteps: Int, perRankBatch: Int
    private var position: SamplerPosition
    private var remainingUpdates: Int
    private var micro = 0
    private var order: [Int] = []
    private var orderEpoch = -1

    /// The micro-batches of `updates` updates from `start` on: for each update, micro-steps 0 ..< accumulationSteps
    /// of this rank's share of the global batch.
    public init(sampler: DistributedSampler, start: SamplerPosition, updates: Int, rank: Int, worldSize: Int, accumulationSteps: Int,
                perRankBatch: Int) {
        self.sampler = sampler
        self.position = start
        self.remainingUpdates = updates
        self.rank = rank
        self.worldSize = worldSize
        self.accumulationSteps = accumulationSteps
        self.perRankBatch = perRankBatch
    }

    /// The next micro-batch's sample indices, or nil after the last update.
    public func next() -> [Int]? {
        lock.lock()
        defer { lock.unlock() }
        guard remainingUpdates > 0 else { return nil }
        if orderEpoch != position.epoch {
            order = sampler.permutation(epoch: position.epoch)
            orderEpoch = position.epoch
        }
        let share = sampler.share(of: sampler.globalBatch(at: position, order: order), rank: rank, worldSize: worldSize,
                                  microStep: micro, perRankBatch: perRankBatch)
        micro += 1
        if micro == accumulationSteps {
            micro = 0
            remainingUpdates -= 1
            position = sampler.advance(position)
        }
        return Array(share)
    }
}

/// A fixed list of batches, in order (evaluation): a loader's plan.
public final class ListPlan: @unchecked Sendable {
    // @unchecked: `items` is touched under `lock` only.
    private let lock = NSLock()
    private var items: [[Int]]
    /// The batches `items` (sample indices each), in order.
    public init(_ items: [[Int]]) { self.items = items.reversed() }

    /// The next batch, or nil after the last.
    public func next() -> [Int]? {
        lock.lock()
        defer { lock.unlock() }
        return items.popLast()
    }
}
