import Basics
import XCTest

/// The shared types are contracts with files on disk: token ids in every shard and checkpoint, and the random
/// sequence every sampler permutation and initialisation is drawn from (a resumed run must draw the same).
final class BasicsTests: XCTestCase {
    func testSpecialTokenIdsAreTheOnesStoredInFiles() {
        XCTAssertEqual([SpecialTokens.standard.pad, SpecialTokens.standard.bos, SpecialTokens.standard.eos, SpecialTokens.standard.unk], [0, 1, 2, 3])
        XCTAssertEqual(SpecialTokens.standardCount, 4)
    }

    func testSplitMix64GivesThePublishedSequence() {
        // splitmix64.c (Vigna) seeded with 0.
        var random = SplitMix64(seed: 0)
        XCTAssertEqual((0..<3).map { _ in random.next() }, [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F])
        var unit = SplitMix64(seed: 7)
        for _ in 0..<1000 {
            let value = unit.nextUnitFloat()
            XCTAssertTrue(value >= 0 && value < 1, "\(value)")
        }
    }

    func testTokenBatchCountsRealTargets() {
        let batch = TokenBatch(batchSize: 2, targetLength: 3, decoderInput: [1, 5, 6, 1, 7, 0], labels: [5, 6, 2, 7, 2, 0])
        XCTAssertEqual(batch.targetTokens, 5)
        XCTAssertEqual(batch.sourceLength, 0)
        XCTAssertEqual(batch.samples, [])
    }

    func testBFloat16RoundsToNearestEvenAndKeepsNaN() {
        XCTAssertEqual(BFloat16.bits(rounding: 1), 0x3F80)
        XCTAssertEqual(BFloat16.float(BFloat16.bits(rounding: 1 + 0x1p-8)), 1, "a tie goes to the even neighbour")
        XCTAssertEqual(BFloat16.float(BFloat16.bits(rounding: 1 + 0x1p-7 + 0x1p-8)), 1 + 0x1p-6, "a tie goes to the even neighbour")
        XCTAssertEqual(BFloat16.float(BFloat16.bits(rounding: 1 + 0x1p-8 + 0x1p-20)), 1 + 0x1p-7, "past the tie rounds up")
        XCTAssertEqual(BFloat16.float(BFloat16.bits(rounding: .greatestFiniteMagnitude)), .infinity)
        XCTAssertTrue(BFloat16.float(BFloat16.bits(rounding: Float(bitPattern: 0x7F80_0001))).isNaN, "a NaN that would round to infinity")
        XCTAssertEqual(BFloat16.float(BFloat16.bits(rounding: -0.0)).sign, .minus)
    }
}
