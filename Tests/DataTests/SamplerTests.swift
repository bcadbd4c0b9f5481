import Basics
import Data
import XCTest

/// The sampler's promises (README.md, "Data files").
final class SamplerTests: XCTestCase {
    /// Everything rank r reads in an epoch, in order.
    private func epoch(_ sampler: DistributedSampler, epoch: Int, rank: Int, world: Int, batch: Int, accumulation: Int) -> [Int] {
        let order = sampler.permutation(epoch: epoch)
        var taken: [Int] = []
        for k in 0..<sampler.batchesPerEpoch {
            let global = sampler.globalBatch(at: SamplerPosition(epoch: epoch, batch: k), order: order)
            for micro in 0..<accumulation {
                taken += sampler.share(of: global, rank: rank, worldSize: world, microStep: micro, perRankBatch: batch)
            }
        }
        return taken
    }

    func testEveryExampleOncePerEpochAcrossRanks() {
        for world in [1, 2, 3, 4] {
            let sampler = DistributedSampler(samples: 103, seed: 9, perRankBatch: 4, worldSize: world, accumulationSteps: 2)
            let taken = (0..<world).flatMap { epoch(sampler, epoch: 0, rank: $0, world: world, batch: 4, accumulation: 2) }
            XCTAssertEqual(Set(taken).count, taken.count, "no example twice (world \(world))")
            XCTAssertEqual(taken.count + sampler.droppedPerEpoch, 103, "used + dropped = all (world \(world))")
            XCTAssertLessThan(sampler.droppedPerEpoch, sampler.globalBatch)
        }
        let sampler = DistributedSampler(samples: 50, seed: 1, perRankBatch: 5, worldSize: 1, accumulationSteps: 1)
        XCTAssertNotEqual(sampler.permutation(epoch: 0), sampler.permutation(epoch: 1), "each epoch reshuffles")
        XCTAssertEqual(sampler.permutation(epoch: 3), sampler.permutation(epoch: 3))
    }

    func testOneRankOfEightEqualsTwoRanksOfFour() {
        let single = DistributedSampler(samples: 200, seed: 5, perRankBatch: 8, worldSize: 1, accumulationSteps: 1)
        let pair = DistributedSampler(samples: 200, seed: 5, perRankBatch: 4, worldSize: 2, accumulationSteps: 1)
        XCTAssertEqual(single.batchesPerEpoch, pair.batchesPerEpoch)
        let order = single.permutation(epoch: 2)
        for k in 0..<single.batchesPerEpoch {
            let position = SamplerPosition(epoch: 2, batch: k)
            let one = single.share(of: single.globalBatch(at: position, order: order), rank: 0, worldSize: 1, microStep: 0, perRankBatch: 8)
            let global = pair.globalBatch(at: position, order: pair.permutation(epoch: 2))
            let two = pair.share(of: global, rank: 0, worldSize: 2, microStep: 0, perRankBatch: 4)
                + pair.share(of: global, rank: 1, worldSize: 2, microStep: 0, perRankBatch: 4)
            XCTAssertEqual(Array(one), Array(two), "global batch \(k)")
        }
    }

    func testResumeGivesTheSameRemainingSequenceAlsoOnAnotherWorldSize() throws {
        let samples = 90
        func globalSequence(from start: SamplerPosition, count: Int, world: Int) throws -> [Int] {
            let sampler = DistributedSampler(samples: samples, seed: 3, perRankBatch: 8 / world, worldSize: world, accumulationSteps: 1)
            var position = start
            var sequence: [Int] = []
            for _ in 0..<count {
                let global = sampler.globalBatch(at: position, order: sampler.permutation(epoch: position.epoch))
                sequence += (0..<world).flatMap { sampler.share(of: global, rank: $0, worldSize: world, microStep: 0, perRankBatch: 8 / world) }
                position = sampler.advance(position)
            }
            return sequence
        }
        // 11 global batches per epoch; stop after 7, resume (through a JSON round trip, as a checkpoint stores it).
        let uninterrupted = try globalSequence(from: SamplerPosition(), count: 20, world: 1)
        let sampler = DistributedSampler(samples: samples, seed: 3, perRankBatch: 8, worldSize: 1, accumulationSteps: 1)
        var position = SamplerPosition()
        for _ in 0..<7 { position = sampler.advance(position) }
        let saved = try JSONDecoder().decode(SamplerPosition.self, from: JSONEncoder().encode(position))
        for world in [1, 2, 4] {
            let resumed = try globalSequence(from: saved, count: 13, world: world)
            XCTAssertEqual(Array(uninterrupted[(7 * 8)...]), resumed, "resumed on \(world) rank(s)")
        }
        XCTAssertEqual(sampler.advance(SamplerPosition(epoch: 0, batch: 10)), SamplerPosition(epoch: 1, batch: 0))
    }

    func testEvaluationVisitsEveryExampleExactlyOnce() {
        for world in [1, 2, 3, 7] {
            let all = (0..<world).flatMap { DistributedSampler.evaluationIndices(samples: 10, rank: $0, worldSize: world) }
            XCTAssertEqual(all.sorted(), Array(0..<10), "world \(world): no duplicates, nothing missing")
        }
    }
}

/// Token-budget batches (`training.max_tokens`): every sample once per epoch, within the budget, equal lengths
/// shuffled by seed, the same global batches on any number of ranks, and parts as even as the samples allow.
final class TokenBudgetSamplerTests: XCTestCase {
    /// 600 samples of 1...96 positions, most short (as real sentence pairs are), some the same length.
    private let lengths: [Int] = {
        var random = SplitMix64(seed: 11)
        return (0..<600).map { _ in 1 + Int(random.next() % 24) + (random.next() % 5 == 0 ? Int(random.next() % 72) : 0) }
    }()

    func testEverySampleOncePerEpochWithinTheBudget() throws {
        let sampler = try TokenBudgetSampler(lengths: lengths, seed: 4, maxTokens: 500)
        for epoch in 0..<3 {
            let batches = sampler.globalBatches(epoch: epoch)
            XCTAssertEqual(batches.count, sampler.batchesPerEpoch, "the same number of batches every epoch")
            XCTAssertEqual(batches.flatMap { $0 }.sorted(), Array(0..<lengths.count), "epoch \(epoch): every sample exactly once")
            for batch in batches {
                XCTAssertFalse(batch.isEmpty)
                XCTAssertLessThanOrEqual(batch.count * batch.map { lengths[$0] }.max()!, 500, "within the budget")
            }
        }
        // Batches of similar length: little padding on the longer side, against random batches of the same mean size.
        let batches = sampler.globalBatches(epoch: 0)
        let padded = batches.reduce(0) { $0 + $1.count * $1.map { lengths[$0] }.max()! }
        XCTAssertLessThan(1 - Double(lengths.reduce(0, +)) / Double(padded), 0.1)
    }

    func testEqualLengthsAndBatchOrderAreShuffledBySeedAndEpoch() throws {
        let a = try TokenBudgetSampler(lengths: lengths, seed: 4, maxTokens: 500)
        let b = try TokenBudgetSampler(lengths: lengths, seed: 5, maxTokens: 500)
        XCTAssertEqual(a.globalBatches(epoch: 1), try TokenBudgetSampler(lengths: lengths, seed: 4, maxTokens: 500).globalBatches(epoch: 1),
                       "a pure function of (seed, epoch)")
        XCTAssertNotEqual(a.globalBatches(epoch: 0), a.globalBatches(epoch: 1))
        XCTAssertNotEqual(a.globalBatches(epoch: 0), b.globalBatches(epoch: 0))
        // The length order only reorders samples of equal length, and does that differently per seed and epoch.
        for order in [a.lengthOrder(epoch: 0), a.lengthOrder(epoch: 1), b.lengthOrder(epoch: 0)] {
            XCTAssertEqual(order.map { lengths[$0] }, lengths.sorted())
        }
        XCTAssertNotEqual(a.lengthOrder(epoch: 0), a.lengthOrder(epoch: 1))
        XCTAssertNotEqual(a.lengthOrder(epoch: 0), b.lengthOrder(epoch: 0))
        XCTAssertEqual(a.cuts, b.cuts, "the cuts depend on the sorted lengths only")
    }

    /// The union of every (rank, micro-step) share is the global batch, for any world size and accumulation; a
    /// resumed position sees the batches an uninterrupted run would.
    func testSharesCoverTheGlobalBatchOnAnyRankCount() throws {
        let sampler = try TokenBudgetSampler(lengths: lengths, seed: 9, maxTokens: 300)
        let batches = sampler.globalBatches(epoch: 2)
        for (world, accumulation) in [(1, 1), (2, 1), (3, 2), (4, 1), (8, 4)] {
            for batch in batches {
                var union: [Int] = []
                for micro in 0..<accumulation {
                    for rank in 0..<world {
                        union += sampler.share(of: batch, rank: rank, worldSize: world, microStep: micro, accumulationSteps: accumulation)
                    }
                }
                XCTAssertEqual(union, batch, "world \(world) x accumulation \(accumulation): shares in order make the batch")
            }
        }
        let plan = RankPlan(sampler: sampler, start: SamplerPosition(epoch: 2, batch: 3), updates: 2, rank: 0, worldSize: 1, accumulationSteps: 1)
        XCTAssertEqual(plan.next(), batches[3])
        XCTAssertEqual(plan.next(), batches[4])
        XCTAssertNil(plan.next())
    }

    /// Parts are contiguous runs whose largest padded size is the smallest possible (checked against every cut of a
    /// small batch), and only a batch with fewer samples than parts leaves parts empty.
    func testPartsAreAsEvenAsPossible() {
        let costs = [2, 3, 3, 5, 8, 8, 9, 20]
        for count in 1...10 {
            let parts = TokenBudgetSampler.parts(costs: costs, count: count)
            XCTAssertEqual(parts.flatMap { Array($0) }, Array(costs.indices), "\(count) parts: contiguous, in order, everything")
            XCTAssertEqual(parts.count, min(count, costs.count), "\(count) parts")
            let largest = parts.map { $0.count * costs[$0].max()! }.max()!
            XCTAssertEqual(largest, bestLargestPart(costs, count), "\(count) parts: the smallest largest part")
        }
        XCTAssertEqual(TokenBudgetSampler.parts(costs: [], count: 3), [])
        let sampler = try? TokenBudgetSampler(lengths: [4, 90], seed: 0, maxTokens: 100)
        XCTAssertEqual(sampler?.split([0, 1], parts: 4), [[0], [1], [], []])
    }

    /// Random cost vectors: the parts' largest padded size is the exhaustive search's, and the part sizes the sampler
    /// announces before training (for the model's buffers) are exactly those of the shares it hands out.
    func testPartsFuzzedAndAnnouncedSizesAreTheSharesSizes() throws {
        var random = SplitMix64(seed: 5)
        for _ in 0..<300 {
            let costs = (0..<(1 + Int(random.next() % 9))).map { _ in 1 + Int(random.next() % 12) }.sorted()
            let count = 1 + Int(random.next() % 5)
            let parts = TokenBudgetSampler.parts(costs: costs, count: count)
            XCTAssertEqual(parts.map { $0.count * costs[$0].max()! }.max()!, bestLargestPart(costs, count), "\(costs) in \(count)")
        }
        let sampler = try TokenBudgetSampler(lengths: lengths, seed: 1, maxTokens: 300)
        for (world, accumulation) in [(1, 1), (2, 1), (3, 2)] {
            var seen = Set<TokenBudgetSampler.PartSize>()
            for epoch in 0..<2 {
                for batch in sampler.globalBatches(epoch: epoch) {
                    for micro in 0..<accumulation {
                        for rank in 0..<world {
                            let share = sampler.share(of: batch, rank: rank, worldSize: world, microStep: micro, accumulationSteps: accumulation)
                            if !share.isEmpty { seen.insert(.init(samples: share.count, longest: share.map { lengths[$0] }.max()!)) }
                        }
                    }
                }
            }
            XCTAssertEqual(seen, Set(sampler.partSizes(parts: world * accumulation)), "\(world) ranks x \(accumulation)")
        }
    }

    /// training.length_groups: each batch joins `groups` length groups from across the length order, every sample
    /// once per epoch; cut into `groups` parts or more, every part stays within max_tokens / groups (so with `groups`
    /// parts the batch stays within max_tokens); batches mix lengths (as fixed-count batches do) where one-group batches do not; one group is
    /// the paper's batching, unchanged.
    func testLengthGroupsMixLengthsWithinTheBudget() throws {
        let one = try TokenBudgetSampler(lengths: lengths, seed: 4, maxTokens: 500)
        XCTAssertEqual(try TokenBudgetSampler(lengths: lengths, seed: 4, maxTokens: 500, groups: 1).globalBatches(epoch: 2),
                       one.globalBatches(epoch: 2))
        let grouped = try TokenBudgetSampler(lengths: lengths, seed: 4, maxTokens: 2000, groups: 4)
        XCTAssertEqual(grouped.groupBudget, 500)
        XCTAssertEqual(grouped.cuts, one.cuts, "groups are cut under max_tokens / groups")
        XCTAssertEqual(grouped.batchesPerEpoch, (one.cuts.count + 3) / 4)
        func spread(_ batches: [[Int]]) -> Double {
            Double(batches.reduce(0) { $0 + $1.map { lengths[$0] }.max()! - $1.map { lengths[$0] }.min()! }) / Double(batches.count)
        }
        for epoch in 0..<3 {
            let batches = grouped.globalBatches(epoch: epoch)
            XCTAssertEqual(batches.count, grouped.batchesPerEpoch)
            XCTAssertEqual(batches.flatMap { $0 }.sorted(), Array(0..<lengths.count), "epoch \(epoch): every sample exactly once")
            for batch in batches {
                XCTAssertEqual(batch.map { lengths[$0] }, batch.map { lengths[$0] }.sorted(), "a batch is in length order")
                for parts in [4, 6, 8] {
                    let padded = grouped.split(batch, parts: parts).filter { !$0.isEmpty }.map { $0.count * $0.map { lengths[$0] }.max()! }
                    XCTAssertLessThanOrEqual(padded.max()!, 500, "\(parts) parts: each within max_tokens / groups")
                    if parts == 4 { XCTAssertLessThanOrEqual(padded.reduce(0, +), 2000, "one part per group: the batch within max_tokens") }
                }
            }
            XCTAssertGreaterThan(spread(batches), 4 * spread(one.globalBatches(epoch: epoch)), "epoch \(epoch): lengths mixed")
        }
        XCTAssertNotEqual(grouped.globalBatches(epoch: 0), grouped.globalBatches(epoch: 1), "which groups meet changes per epoch")
        // Stratified: the groups, in length order, fall into `groups` runs (strata) of nearly equal counts, and a batch
        // joins one group of each (the last batch of the first strata only, when the counts differ).
        let count = grouped.batchesPerEpoch, groupCount = grouped.cuts.count
        let larger = groupCount - (count - 1) * 4
        let strata = (0..<4).map { $0 < larger ? count : count - 1 }
        let stratumOfGroup = strata.enumerated().flatMap { stratum, size in [Int](repeating: stratum, count: size) }
        XCTAssertEqual(stratumOfGroup.count, groupCount)
        for epoch in 0..<3 {
            let order = grouped.lengthOrder(epoch: epoch)
            var groupOfSample = [Int](repeating: -1, count: lengths.count)
            for (group, cut) in grouped.cuts.enumerated() { for position in cut { groupOfSample[order[position]] = group } }
            var fewer = 0
            for batch in grouped.globalBatches(epoch: epoch) {
                let groups = Set(batch.map { groupOfSample[$0] })
                let stratumList = groups.map { stratumOfGroup[$0] }.sorted()
                XCTAssertEqual(Set(stratumList).count, stratumList.count, "epoch \(epoch): one group per stratum")
                if stratumList.count < 4 {
                    fewer += 1
                    XCTAssertEqual(stratumList, Array(0..<stratumList.count), "the short batch joins the first strata")
                }
            }
            XCTAssertLessThanOrEqual(fewer, 1, "epoch \(epoch): only the last batch joins fewer groups")
        }
        // The part sizes announced before training bound every share (in samples, for its longest length).
        for (world, accumulation) in [(1, 4), (2, 2), (4, 1), (3, 2), (2, 4)] {
            let announced = Dictionary(grouping: grouped.partSizes(parts: world * accumulation), by: \.longest).mapValues { $0.map(\.samples).max()! }
            for epoch in 0..<3 {
                for batch in grouped.globalBatches(epoch: epoch) {
                    for micro in 0..<accumulation {
                        for rank in 0..<world {
                            let share = grouped.share(of: batch, rank: rank, worldSize: world, microStep: micro, accumulationSteps: accumulation)
                            guard let longest = share.map({ lengths[$0] }).max() else { continue }
                            XCTAssertLessThanOrEqual(share.count, announced[longest] ?? 0, "\(world) x \(accumulation): a share of \(share.count) x \(longest)")
                        }
                    }
                }
            }
        }
        // A sample must fit one group's budget.
        XCTAssertThrowsError(try TokenBudgetSampler(lengths: [3, 30, 7], seed: 0, maxTokens: 100, groups: 4)) { error in
            XCTAssertEqual((error as? SampleOverBudget)?.index, 1)
            XCTAssertEqual((error as? SampleOverBudget)?.budget, 25)
        }
    }

    /// The bound `partSizes` announces for length groups holds for every share of random data (many equal lengths,
    /// budgets not divisible by the group count, any number of parts from the group count to three times it), and it
    /// shrinks with more parts, as the buffers should.
    func testLengthGroupPartSizesBoundEveryShareFuzzed() throws {
        var random = SplitMix64(seed: 23)
        for trial in 0..<60 {
            let count = 20 + Int(random.next() % 200), longest = 2 + Int(random.next() % 30)
            let lengths = (0..<count).map { _ in random.next() % 3 == 0 ? longest : 1 + Int(random.next() % UInt64(longest)) }
            let groups = 2 + Int(random.next() % 5)
            let maxTokens = groups * longest + Int(random.next() % UInt64(groups * longest * 4))
            let sampler = try TokenBudgetSampler(lengths: lengths, seed: random.next(), maxTokens: maxTokens, groups: groups)
            for parts in groups...(3 * groups) {
                let announced = Dictionary(grouping: sampler.partSizes(parts: parts), by: \.longest).mapValues { $0.map(\.samples).max()! }
                for epoch in 0..<3 {
                    for batch in sampler.globalBatches(epoch: epoch) {
                        for part in sampler.split(batch, parts: parts) where !part.isEmpty {
                            let partLongest = part.map { lengths[$0] }.max()!
                            XCTAssertLessThanOrEqual(part.count * partLongest, sampler.groupBudget, "trial \(trial)")
                            XCTAssertLessThanOrEqual(part.count, announced[partLongest] ?? 0,
                                                     "trial \(trial), \(parts) parts: \(part.count) x \(partLongest) not announced")
                        }
                    }
                }
            }
            XCTAssertLessThanOrEqual(sampler.partSizes(parts: groups).map(\.samples).max()!, count, "never more rows than samples")
            let rows = { (parts: Int) in sampler.partSizes(parts: parts).map { $0.samples * $0.longest }.max()! }
            XCTAssertLessThanOrEqual(rows(3 * groups), rows(groups), "trial \(trial): more parts, smaller buffers")
        }
    }

    /// The shorter side orders samples whose longer sides are equal.
    func testShorterSideIsTheSecondKey() throws {
        let sampler = try TokenBudgetSampler(lengths: [5, 5, 5, 3, 5], shorterLengths: [4, 2, 3, 1, 2], seed: 7, maxTokens: 100)
        let order = sampler.lengthOrder(epoch: 0)
        XCTAssertEqual(order.map { sampler.lengths[$0] }, [3, 5, 5, 5, 5])
        XCTAssertEqual(order.map { sampler.shorterLengths[$0] }, [1, 2, 2, 3, 4])
        XCTAssertEqual(Set(order[1...2]), [1, 4], "equal on both sides: seeded order")
    }

    /// By exhaustive search: the smallest possible largest part over every cut of `costs` into at most `count` runs.
    private func bestLargestPart(_ costs: [Int], _ count: Int) -> Int {
        func best(_ start: Int, _ left: Int) -> Int {
            if start == costs.count { return 0 }
            if left == 0 { return .max }
            var result = Int.max
            for end in (start + 1)...costs.count {
                let part = (end - start) * costs[start..<end].max()!
                result = min(result, max(part, best(end, left - 1)))
            }
            return result
        }
        return best(0, count)
    }

    func testASampleLongerThanTheBudgetIsNamed() {
        XCTAssertThrowsError(try TokenBudgetSampler(lengths: [3, 4, 120, 7, 200], seed: 0, maxTokens: 100)) { error in
            let over = error as? SampleOverBudget
            XCTAssertEqual(over?.index, 2)
            XCTAssertEqual(over?.positions, 120)
            XCTAssertEqual(over?.budget, 100)
        }
        XCTAssertThrowsError(try TokenBudgetSampler(lengths: [], seed: 0, maxTokens: 100))
        // A sample exactly the budget is a batch of its own.
        XCTAssertEqual(try TokenBudgetSampler(lengths: [100, 1], seed: 0, maxTokens: 100).batchesPerEpoch, 2)
    }
}
