import Foundation

// A `BatchLoader`'s plans: which samples each batch holds, in order, computed on the loader thread.

/// This rank's micro-batches from a sampler position on, for a number of updates: a loader's plan (it runs on
/// the loader thread).
public final class RankPlan: @unchecked Sendable {
    // @unchecked: all state is touched under `lock`.
    private let lock = NSLock()
    private let sampler: any TrainingSampler
    private let rank: Int, worldSize: Int, accumulationSteps: Int
    private var position: SamplerPosition
    private var remainingUpdates: Int
    private var micro = 0
    private var batches: [[Int]] = []
    private var batchesEpoch = -1

    /// The micro-batches of `updates` updates from `start` on: for each update, micro-steps 0 ..< accumulationSteps
    /// of this rank's share of the global batch.
    public init(sampler: any TrainingSampler, start: SamplerPosition, updates: Int, rank: Int, worldSize: Int, accumulationSteps: Int) {
        self.sampler = sampler
        self.position = start
        self.remainingUpdates = updates
        self.rank = rank
        self.worldSize = worldSize
        self.accumulationSteps = accumulationSteps
    }

    /// The next micro-batch's sample indices (possibly none: a small token-budget batch has fewer samples than
    /// ranks), or nil after the last update.
    public func next() -> [Int]? {
        lock.lock()
        defer { lock.unlock() }
        guard remainingUpdates > 0 else { return nil }
        if batchesEpoch != position.epoch {
            batches = sampler.globalBatches(epoch: position.epoch)
            batchesEpoch = position.epoch
        }
        let share = sampler.share(of: batches[position.batch], rank: rank, worldSize: worldSize, microStep: micro,
                                  accumulationSteps: accumulationSteps)
        micro += 1
        if micro == accumulationSteps {
            micro = 0
            remainingUpdates -= 1
            position = sampler.advance(position)
        }
        return share
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
