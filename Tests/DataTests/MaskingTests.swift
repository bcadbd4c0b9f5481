import Basics
import Data
import XCTest

/// BERT's masking recipe: its rates, and that it is a pure function of (seed, epoch, sample).
final class MaskingTests: XCTestCase {
    private let recipe = MaskedLanguageModeling(maskToken: 300, randomTokens: 4..<300)

    /// A language-model batch of windows [B,T] for global samples `samples` (tokens drawn from the sample index).
    private func windows(_ samples: [Int], length: Int, padFrom: Int? = nil) -> TokenBatch {
        var rows: [Int32] = []
        for sample in samples {
            var random = SplitMix64(seed: UInt64(sample) &+ 99)
            rows += (0..<length).map { position in
                if let padFrom, position >= padFrom { return SpecialTokens.standard.pad }
                return Int32(4 + random.next() % 296)
            }
        }
        return TokenBatch(batchSize: samples.count, targetLength: length, decoderInput: rows,
                          labels: [Int32](repeating: 5, count: rows.count), samples: samples)
    }

    /// 15% chosen, of those 80% masked, 10% random, 10% kept, each within 5 standard deviations of the binomial
    /// count on 256,000 tokens; PAD is never chosen; labels hold the original token exactly where chosen.
    func testRatesAreBERTsWithinBinomialBounds() {
        let batch = windows(Array(0..<2000), length: 128)
        let masked = recipe.apply(to: batch, seed: 7, epoch: 0)
        XCTAssertEqual(masked.sourceLength, 128)
        XCTAssertEqual(masked.source.count, batch.decoderInput.count)
        var chosen = 0, maskedCount = 0, kept = 0, replaced = 0
        for i in 0..<masked.source.count where masked.labels[i] != SpecialTokens.standard.pad {
            chosen += 1
            XCTAssertEqual(masked.labels[i], batch.decoderInput[i])
            if masked.source[i] == 300 { maskedCount += 1 } else if masked.source[i] == batch.decoderInput[i] { kept += 1 } else { replaced += 1 }
        }
        for i in 0..<masked.source.count where masked.labels[i] == SpecialTokens.standard.pad {
            XCTAssertEqual(masked.source[i], batch.decoderInput[i], "a position not chosen keeps its token")
        }
        func assertBinomial(_ count: Int, trials: Int, probability p: Double, _ what: String) {
            let mean = Double(trials) * p, deviation = (Double(trials) * p * (1 - p)).squareRoot()
            XCTAssertLessThan(abs(Double(count) - mean), 5 * deviation, "\(what): \(count) of \(trials), expected \(mean) ± \(deviation)")
        }
        assertBinomial(chosen, trials: masked.source.count, probability: 0.15, "chosen")
        assertBinomial(maskedCount, trials: chosen, probability: 0.8, "masked")
        // A random replacement equal to the original token counts as kept (1 in 296 of them).
        assertBinomial(replaced, trials: chosen, probability: 0.1 * 295 / 296, "replaced by a random token")
        assertBinomial(kept, trials: chosen, probability: 0.1 + 0.1 / 296, "kept")
        XCTAssertEqual(masked.targetTokens, chosen)

        let padded = recipe.apply(to: windows(Array(0..<200), length: 16, padFrom: 5), seed: 7, epoch: 0)
        for i in 0..<padded.source.count where i % 16 >= 5 {
            XCTAssertEqual(padded.labels[i], SpecialTokens.standard.pad, "PAD is never chosen")
            XCTAssertEqual(padded.source[i], SpecialTokens.standard.pad)
        }
        for row in 0..<200 {
            XCTAssertTrue(padded.labels[(row * 16)..<(row * 16 + 5)].contains { $0 != SpecialTokens.standard.pad }, "every window has a chosen token")
        }
    }

    /// The masks of a sample depend on (seed, epoch, sample) alone: split over two ranks' batches, in another order,
    /// or recomputed after a resume, a sample gets the same masks; another epoch or seed gets others.
    func testMasksArePureInSeedEpochAndSample() {
        let whole = recipe.apply(to: windows([3, 8, 1, 5], length: 12), seed: 1, epoch: 2)
        let rank0 = recipe.apply(to: windows([3, 8], length: 12), seed: 1, epoch: 2)
        let rank1 = recipe.apply(to: windows([5, 1], length: 12), seed: 1, epoch: 2)
        XCTAssertEqual(Array(whole.source[0..<24]), rank0.source)
        XCTAssertEqual(Array(whole.labels[0..<24]), rank0.labels)
        XCTAssertEqual(Array(whole.source[24..<36]), Array(rank1.source[12..<24]), "sample 1, whatever its row")
        XCTAssertEqual(Array(whole.source[36..<48]), Array(rank1.source[0..<12]), "sample 5, whatever its row")
        XCTAssertEqual(recipe.apply(to: windows([3, 8, 1, 5], length: 12), seed: 1, epoch: 2), whole, "the same after a resume")
        XCTAssertNotEqual(recipe.apply(to: windows([3, 8, 1, 5], length: 12), seed: 1, epoch: 3).labels, whole.labels)
        XCTAssertNotEqual(recipe.apply(to: windows([3, 8, 1, 5], length: 12), seed: 2, epoch: 2).labels, whole.labels)
    }

    func testTheMaskTokenFollowsTheTokenizersVocabulary() throws {
        XCTAssertEqual(Tokenizer.byte.maskToken, 260)
        XCTAssertFalse(Tokenizer.byte.encode("any text [MASK]").contains(260))
        let recipe = MaskedLanguageModeling(tokenizer: .byte)
        XCTAssertEqual(recipe.maskToken, 260)
        XCTAssertEqual(recipe.randomTokens, 4..<260, "random replacements are ordinary tokens")
    }
}
