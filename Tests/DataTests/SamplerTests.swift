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
