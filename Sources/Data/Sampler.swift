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

    /// Evaluation: every sample exactly once over all ranks (rank r takes r, r + W, ...); no padding duplicates.
    public static func evaluationIndices(samples: Int, rank: Int, worldSize: Int) -> [Int] {
        Array(stride(from: rank, to: samples, by: worldSize))
    }
}

/// What a training run's sampler gives: global batches that do not depend on the number of ranks, each split into
/// one share per (micro-step, rank). `DistributedSampler` (a fixed count of sequences, `training.batch_size`) and
/// `TokenBudgetSampler` (batches of similar length under a token budget, `training.max_tokens`) are the two kinds.
public protocol TrainingSampler: Sendable {
    /// Global batches in one epoch (the same every epoch).
    var batchesPerEpoch: Int { get }
    /// Every global batch of epoch `epoch`, in the order they are trained (sample indices).
    func globalBatches(epoch: Int) -> [[Int]]
    /// The samples of `batch` that rank `rank` computes in micro-step `microStep`: part `microStep · worldSize + rank`
    /// of `worldSize · accumulationSteps` parts. A part may be empty when a batch holds fewer samples than parts.
    func share(of batch: [Int], rank: Int, worldSize: Int, microStep: Int, accumulationSteps: Int) -> [Int]
}

extension TrainingSampler {
    /// The position after `position`, rolling over into the next epoch.
    public func advance(_ position: SamplerPosition) -> SamplerPosition {
        position.batch + 1 < batchesPerEpoch ? SamplerPosition(epoch: position.epoch, batch: position.batch + 1)
                                              : SamplerPosition(epoch: position.epoch + 1, batch: 0)
    }
}

extension DistributedSampler: TrainingSampler {
    /// The epoch's permutation cut into `globalBatch`-sized slices; the remainder is left out.
    public func globalBatches(epoch: Int) -> [[Int]] {
        let order = permutation(epoch: epoch)
        return (0..<batchesPerEpoch).map { Array(order[($0 * globalBatch)..<(($0 + 1) * globalBatch)]) }
    }

    /// Equal slices: per-rank batch = global batch / (world size · accumulation steps).
    public func share(of batch: [Int], rank: Int, worldSize: Int, microStep: Int, accumulationSteps: Int) -> [Int] {
        let perRank = batch.count / (worldSize * accumulationSteps)
        return Array(share(of: batch[...], rank: rank, worldSize: worldSize, microStep: microStep, perRankBatch: perRank))
    }
}

/// A sample that does not fit the token budget on its own (`TokenBudgetSampler`).
public struct SampleOverBudget: Error, Sendable {
    /// The sample's global index in the split.
    public let index: Int
    /// Positions it takes on its longer side (source + EOS or BOS + target).
    public let positions: Int
    /// The budget of one length group: `training.max_tokens` / `training.length_groups`.
    public let budget: Int
    /// `training.max_tokens` and `training.length_groups`, for the sentence.
    public let maxTokens: Int, groups: Int

    /// "more than training.max_tokens M allows a whole batch: raise training.max_tokens", or with length groups the
    /// per-group arithmetic and both remedies: the end of the sentence that names the sample.
    public var exceeded: String {
        groups == 1 ? "more than training.max_tokens \(maxTokens) allows a whole batch: raise training.max_tokens"
                    : "more than one of training.length_groups \(groups) groups may hold (training.max_tokens \(maxTokens) / \(groups) = "
                      + "\(budget)): raise training.max_tokens or lower training.length_groups"
    }
}

/// The paper's batching ("Attention Is All You Need", 5.1: "sentence pairs were batched together by approximate
/// sequence length"; fairseq's `--max-tokens`): each global batch holds as many samples of similar length as fit
/// `maxTokens`, counting padding, on the longer of the source and target sides.
///
/// Each epoch the samples are ordered by length (the positions of their longer side, then of their shorter side,
/// so that both sides of a batch pad little), equal lengths in an order seeded by (seed, epoch); cut in that order into batches whose size × longest length stays within the budget; and
/// the batches' order is shuffled, seeded by (seed, epoch). The cuts depend only on the sorted lengths, so every
/// epoch has the same number of batches; which samples of equal length go together, and the order of batches,
/// change. Every sample is in exactly one batch of every epoch. A batch is defined globally: `share` splits it into
/// contiguous runs of its length-sorted samples, one per (micro-step, rank), the largest padded run as small as it
/// can be.
///
/// With `groups` > 1 (`training.length_groups`), the cuts are made under `maxTokens / groups` and each global batch
/// joins `groups` of them, one from each of `groups` strata (runs of consecutive cuts in length order, shuffled within
/// each epoch), so from across the whole length order: an update then sees short and long samples together, in about
/// the proportions of the data, as a fixed-count batch does (stratified sampling), while each (micro-step, rank) part still holds
/// samples of similar length (`share` cuts the joined batch back along its length order, where the groups follow one
/// another; a part may straddle two neighbouring groups). Each part holds at most `maxTokens / groups` padded
/// positions, for any number of parts from `groups` up (with exactly `groups` parts the batch holds at most
/// `maxTokens`; with more, parts may cut across groups and pad somewhat more in all). Batches of one length give
/// noisier updates than mixed ones; on a small corpus that costs validation loss at equal updates (README, "Batching").
public struct TokenBudgetSampler: Sendable {
    /// Seeds the order among equal lengths and of the batches, with the epoch (`training.seed`).
    public let seed: UInt64
    /// Padded positions a global batch may hold on its longer side (`training.max_tokens`), over all its groups.
    public let maxTokens: Int
    /// Length groups joined into each global batch (`training.length_groups`, 1: the paper's batches of one length).
    public let groups: Int
    /// Per sample: the positions it takes on its longer side, max(source + 1, target + 1) (EOS and BOS included).
    public let lengths: [Int]
    /// Per sample: the positions of its shorter side (the second sort key; all 0 when not given).
    public let shorterLengths: [Int]
    /// The length groups as ranges of the length-sorted order (the same every epoch); with `groups` 1, the batches.
    public let cuts: [Range<Int>]

    /// The version of the epoch order `globalBatches` makes, stored in checkpoints ("sampler_version"): 1 joined the
    /// length groups of a batch by chance, 2 one from each stratum. A resume inside an epoch needs the same order.
    public static let orderVersion = 2

    /// Padded positions one length group may hold: `maxTokens / groups`.
    public var groupBudget: Int { maxTokens / groups }

    /// A sampler over samples of `lengths` positions (on their longer side; `shorterLengths`, when given, the other
    /// side's, to order equal `lengths` by), `groups` (at least 1) length groups per batch; throws `SampleOverBudget`
    /// for the first (by index) sample longer than `groupBudget`, or for an empty split (index -1, 0 positions).
    public init(lengths: [Int], shorterLengths: [Int]? = nil, seed: UInt64, maxTokens: Int, groups: Int = 1) throws(SampleOverBudget) {
        precondition(shorterLengths == nil || shorterLengths?.count == lengths.count, "one shorter length per sample")
        precondition(groups >= 1, "at least one length group per batch")
        let groupBudget = maxTokens / groups
        guard !lengths.isEmpty else { throw SampleOverBudget(index: -1, positions: 0, budget: groupBudget, maxTokens: maxTokens, groups: groups) }
        if let index = lengths.firstIndex(where: { $0 > groupBudget }) {
            throw SampleOverBudget(index: index, positions: lengths[index], budget: groupBudget, maxTokens: maxTokens, groups: groups)
        }
        self.seed = seed
        self.maxTokens = maxTokens
        self.groups = groups
        self.lengths = lengths
        self.shorterLengths = shorterLengths ?? [Int](repeating: 0, count: lengths.count)
        var cuts: [Range<Int>] = [], start = 0
        let sorted = lengths.sorted()
        for (position, length) in sorted.enumerated() where (position - start + 1) * length > groupBudget {
            cuts.append(start..<position)
            start = position
        }
        cuts.append(start..<sorted.count)
        self.cuts = cuts
    }

    /// A sampler over sentence pairs of `pairs` stored tokens each: a pair takes source + 1 (EOS) and target + 1 (BOS)
    /// positions, ordered by the longer side, then the shorter.
    public init(pairs: [(source: Int, target: Int)], seed: UInt64, maxTokens: Int, groups: Int = 1) throws(SampleOverBudget) {
        try self.init(lengths: pairs.map { max($0.source, $0.target) + 1 }, shorterLengths: pairs.map { min($0.source, $0.target) + 1 },
                      seed: seed, maxTokens: maxTokens, groups: groups)
    }

    /// Global batches in one epoch: the length groups, `groups` to a batch (the last batch may hold fewer).
    public var batchesPerEpoch: Int { (cuts.count + groups - 1) / groups }

    /// The samples in epoch `epoch`'s length order: by length, then shorter length, equal ones in an order seeded by
    /// (seed, epoch).
    public func lengthOrder(epoch: Int) -> [Int] {
        var random = SplitMix64(seed: seed &* 0xA24B_AED4_963E_E407 ^ UInt64(epoch) &* 0x9FB2_1C65_1E98_DF25 ^ Self.tieDomain)
        let tieBreak = (0..<lengths.count).map { _ in random.next() }
        return lengths.indices.sorted {
            (lengths[$0], shorterLengths[$0], tieBreak[$0], $0) < (lengths[$1], shorterLengths[$1], tieBreak[$1], $1)
        }
    }

    /// Seed domains, so that the orders drawn here differ from the fixed-count sampler's and the masks' draws.
    private static let tieDomain: UInt64 = 0x7E57_0000_7135_0001
    private static let batchDomain: UInt64 = 0xBA7C_0000_0DE2_0002
}

extension TokenBudgetSampler: TrainingSampler {
    /// The epoch's batches: `cuts` of its length order, in an order shuffled by (seed, epoch); with `groups` > 1, one
    /// cut of each stratum joined (strata: `groups` runs of consecutive cuts, the first ones a cut longer when the
    /// count does not divide), the joined batches' order shuffled, each batch in length order (ties in the order they
    /// were joined).
    public func globalBatches(epoch: Int) -> [[Int]] {
        let order = lengthOrder(epoch: epoch)
        var random = SplitMix64(seed: seed &* 0xD6E8_FEB8_6659_FD93 ^ UInt64(epoch) &* 0xC2B2_AE3D_27D4_EB4F ^ Self.batchDomain)
        func shuffle<T>(_ items: inout [T]) {
            for i in stride(from: items.count - 1, to: 0, by: -1) { items.swapAt(i, Int(random.next() % UInt64(i + 1))) }
        }
        var batches = cuts.map { Array(order[$0]) }
        guard groups > 1 else {
            shuffle(&batches)
            return batches
        }
        // Stratified: the groups (in length order) fall into `groups` strata of consecutive groups, each shuffled;
        // batch i joins the i-th group of every stratum, so each update holds one group from each part of the length
        // range. The first strata take one group more when the groups do not divide evenly.
        let count = batchesPerEpoch, full = cuts.count - (count - 1) * groups
        var strata: [[[Int]]] = [], start = 0
        for stratum in 0..<groups {
            let size = cuts.count % groups == 0 || stratum < full ? count : count - 1
            var members = Array(batches[start..<start + size])
            shuffle(&members)
            strata.append(members)
            start += size
        }
        var joined = (0..<count).map { i in strata.filter { i < $0.count }.flatMap { $0[i] } }
        shuffle(&joined)
        return joined.map { batch in
            batch.enumerated().sorted { (lengths[$0.element], shorterLengths[$0.element], $0.offset) < (lengths[$1.element], shorterLengths[$1.element], $1.offset) }
                .map(\.element)
        }
    }

    /// Part `microStep · worldSize + rank` of `Self.split(batch, parts: worldSize · accumulationSteps)`.
    public func share(of batch: [Int], rank: Int, worldSize: Int, microStep: Int, accumulationSteps: Int) -> [Int] {
        split(batch, parts: worldSize * accumulationSteps)[microStep * worldSize + rank]
    }

    /// `batch` (in length order) cut into `parts` contiguous runs (`Self.parts`); parts past the runs are empty.
    public func split(_ batch: [Int], parts: Int) -> [[Int]] {
        let runs = Self.parts(costs: batch.map { lengths[$0] }, count: parts)
        return (0..<parts).map { $0 < runs.count ? Array(batch[runs[$0]]) : [] }
    }

    /// Samples of `costs` positions each (in ascending order) cut into at most `count` contiguous runs whose largest
    /// padded size (samples × longest length) is as small as it can be; the runs are then split further, never
    /// raising that size, until there are `count` of them or every run is one sample.
    public static func parts(costs: [Int], count: Int) -> [Range<Int>] {
        // Greedy runs under a size limit; the smallest limit that needs at most `count` runs is found by bisection.
        func runs(limit: Int) -> [Range<Int>] {
            var result: [Range<Int>] = [], start = 0, longest = 0
            for (position, cost) in costs.enumerated() {
                let candidate = max(longest, cost)
                if position > start && (position - start + 1) * candidate > limit {
                    result.append(start..<position)
                    start = position
                    longest = cost
                } else {
                    longest = candidate
                }
            }
            if !costs.isEmpty { result.append(start..<costs.count) }
            return result
        }
        var low = costs.max() ?? 0, high = max(low, costs.count * low)
        while low < high {
            let middle = (low + high) / 2
            if runs(limit: middle).count <= count { high = middle } else { low = middle + 1 }
        }
        var chosen = runs(limit: low)
        while chosen.count < count, let widest = chosen.indices.max(by: { chosen[$0].count < chosen[$1].count }), chosen[widest].count > 1 {
            let run = chosen[widest], middle = run.lowerBound + run.count / 2
            chosen.replaceSubrange(widest...widest, with: [run.lowerBound..<middle, middle..<run.upperBound])
        }
        return chosen
    }

    /// The distinct sizes of the parts of every batch, (samples, longest length), so that buffers can be sized for
    /// them before training. With one group they are the same every epoch, whatever samples of equal length a part
    /// holds. With more, which groups meet changes each epoch, so a bound is given instead, for `parts` ≥ `groups`
    /// (fewer is refused before training): cutting each of a batch's groups into m = ⌊parts / groups⌋ runs is one way
    /// to cut the batch (the groups are consecutive in its length order), and a group whose longest sample has L
    /// positions holds at most ⌊groupBudget / L⌋ samples, so its runs hold at most ⌈⌊groupBudget / L⌋ / m⌉ · L padded
    /// positions; `parts` finds the smallest largest part, which is therefore at most the largest of these over every
    /// length, B. For each length L the bound is ⌊B / L⌋ samples, and never more than the samples of length ≤ L.
    public func partSizes(parts: Int) -> [PartSize] {
        let sorted = lengths.sorted()
        var sizes = Set<PartSize>()
        if groups > 1 {
            precondition(parts >= groups, "\(parts) parts of a batch of \(groups) length groups")
            let runs = parts / groups, distinct = Array(Set(sorted)).sorted()
            let largest = min(groupBudget, distinct.map { (groupBudget / $0 + runs - 1) / runs * $0 }.max() ?? groupBudget)
            var atMost = 0
            for length in distinct {
                while atMost < sorted.count && sorted[atMost] <= length { atMost += 1 }
                sizes.insert(PartSize(samples: min(largest / length, atMost), longest: length))
            }
            return sizes.sorted { ($0.longest, $0.samples) < ($1.longest, $1.samples) }
        }
        for cut in cuts {
            let costs = sorted[cut]
            for run in Self.parts(costs: Array(costs), count: parts) {
                sizes.insert(PartSize(samples: run.count, longest: costs[cut.lowerBound + run.upperBound - 1]))
            }
        }
        return sizes.sorted { ($0.longest, $0.samples) < ($1.longest, $1.samples) }
    }

    /// A part of a batch: how many samples, and the longest one's positions.
    public struct PartSize: Hashable, Sendable {
        /// Samples in the part.
        public let samples: Int
        /// Positions of its longest sample (its longer side).
        public let longest: Int

        /// A part of `samples` samples, the longest `longest` positions.
        public init(samples: Int, longest: Int) {
            self.samples = samples
            self.longest = longest
        }
    }
}
