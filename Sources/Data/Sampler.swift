import Basics

/// Where training is in the data: independent of the world size, so a run resumes exactly, also on another
/// number of ranks (with the same global batch).
public struct SamplerPosition: Codable, Equatable, Sendable {
    /// Passes over the training samples completed before this one (0 for the first epoch).
    public var epoch: Int
    /// Global batches already taken in this epoch.
    public var batch: Int

    /// A position; by default the start of training.
    public init(epoch: Int = 0, batch: Int = 0) {
        self.epoch = epoch
        self.batch = batch
    }
}

/// The distributed sampler: one global index space over all training samples; epoch e is a permutation seeded by
/// (seed, e); global batch k is the slice [k·G, (k+1)·G) with G = per-rank batch × world size × accumulation
/// steps; rank r takes, for each micro-step a, the `perRankBatch` indices at (a·W + r)·b within it.
/// A last partial global batch is not used; `droppedPerEpoch` counts it, so nothing is dropped silently.
public struct DistributedSampler: Sendable {
    /// Training samples in the split's global index space.
    public let samples: Int
    /// Seeds every epoch's permutation together with the epoch number (`training.seed`).
    public let seed: UInt64
    /// Samples per optimizer step over all ranks: per-rank batch × world size × accumulation steps.
    public let globalBatch: Int

    /// A sampler over `samples` samples whose global batch is `perRankBatch` × `worldSize` × `accumulationSteps`; every
    /// argument but `seed` must be positive (a precondition).
    public init(samples: Int, seed: UInt64, perRankBatch: Int, worldSize: Int, accumulationSteps: Int) {
        precondition(samples > 0 && perRankBatch > 0 && worldSize > 0 && accumulationSteps > 0)
        self.samples = samples
        self.seed = seed
        self.globalBatch = perRankBatch * worldSize * accumulationSteps
    }

    /// Full global batches in one epoch.
    public var batchesPerEpoch: Int { samples / globalBatch }
    /// Samples an epoch leaves out (fewer than one global batch; a different set each epoch).
    public var droppedPerEpoch: Int { samples - batchesPerEpoch * globalBatch }

    /// The epoch's order of all sample indices (Fisher-Yates, SplitMix64 seeded by seed and epoch).
    public func permutation(epoch: Int) -> [Int] {
        var order = Array(0..<samples)
        var random = SplitMix64(seed: seed &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(epoch) &* 0xD1B5_4A32_D192_ED03)
        for i in stride(from: samples - 1, to: 0, by: -1) {
            let j = Int(random.next() % UInt64(i + 1))
            order.swapAt(i, j)
        }
        return order
    }

    /// The sample indices of global batch `position.batch`, in order: G of them.
    public func globalBatch(at position: SamplerPosition, order: [Int]) -> ArraySlice<Int> {
        precondition(position.batch < batchesPerEpoch, "batch \(position.batch) is past the epoch's \(batchesPerEpoch)")
        return order[(position.batch * globalBatch)..<((position.batch + 1) * globalBatch)]
    }

    /// Rank `rank`'s share of one micro-step of a global batch.
    public func share(of batch: ArraySlice<Int>, rank: Int, worldSize: Int, microStep: Int, perRankBatch: Int) -> ArraySlice<Int> {
        let start = batch.startIndex + (microStep * worldSize + rank) * perRankBatch
        return batch[start..<(start + perRankBatch)]
    }

    /// The position after `position`, rolling over into the next epoch.
    public func advance(_ position: SamplerPosition) -> SamplerPosition {
        position.batch + 1 < batchesPerEpoch ? SamplerPosition(epoch: position.epoch, batch: position.batch + 1)
                                              : SamplerPosition(epoch: position.epoch + 1, batch: 0)
    }

    /// Evaluation: every sample exactly once over all ranks (rank r takes r, r + W, ...); no padding duplicates.
    public static func evaluationIndices(samples: Int, rank: Int, worldSize: Int) -> [Int] {
        Array(stride(from: rank, to: samples, by: worldSize))
    }
}
