/// Where training is in the data: independent of the world size, so a run resumes exactly, also on another
/// number of ranks (with the same global batch).
public struct SamplerPosition: Codable, Equatable, Sendable {
    public var epoch: Int
    /// Global batches already taken in this epoch.
    public var batch: Int

    public init(epoch: Int = 0, batch: Int = 0) {
        self.epoch = epoch
        self.batch = batch
    }
}

/// DESIGN.md's sampler: one global index space over all training samples; epoch e is a permutation seeded by
/// (seed, e); global batch k is the slice [k·G, (k+1)·G) with G = per-rank batch × world size × accumulation
/// steps; rank r takes, for each micro-step a, the `perRankBatch` indices at (a·W + r)·b within it.
/// A last partial global batch is not used; `droppedPerEpoch` counts it, so nothing is dropped silently.
public struct DistributedSampler: Sendable {
    public let samples: Int
    public let seed: UInt64
    public let globalBatch: Int

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
        var random = Mix64(state: seed &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(epoch) &* 0xD1B5_4A32_D192_ED03)
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

/// SplitMix64: small, fast, and the same sequence everywhere.
struct Mix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
