import Training
import XCTest

final class BLEUTests: XCTestCase {
    private let hypotheses = ["the cat sat on the mat today", "a quick brown dog jumps over the lazy fox",
                              "hello there general kenobi", "it is raining cats and dogs"]
    private let references = ["the cat sat on the mat", "the quick brown fox jumps over the lazy dog",
                              "hello there general kenobi", "it is raining cats and dogs outside"]

    private func bleu(_ hypotheses: [String], _ references: [String]) -> Double {
        var statistics = BLEUStatistics()
        for (h, r) in zip(hypotheses, references) { statistics.add(hypothesis: h, reference: r) }
        return statistics.score
    }

    /// sacrebleu 2.x, `corpus_bleu(hypotheses, [references], tokenize="none")` on this corpus: 72.19941964678378
    /// (92.3/77.3/66.7/57.1, BP 1.000).
    func testAgreesWithSacrebleu() {
        XCTAssertEqual(bleu(hypotheses, references), 72.199_419_646_783_78, accuracy: 1e-9)
    }

    func testIdenticalAndDisjointCorpora() {
        XCTAssertEqual(bleu(references, references), 100, accuracy: 1e-9)
        XCTAssertEqual(bleu(["x y z w v"], ["a b c d e"]), 0)
        XCTAssertEqual(bleu([""], ["a b c d"]), 0)
    }

    /// Statistics summed across ranks give the corpus score of all sentences together.
    func testStatisticsAddUpAcrossRanks() {
        var first = BLEUStatistics(), second = BLEUStatistics()
        for i in 0..<2 { first.add(hypothesis: hypotheses[i], reference: references[i]) }
        for i in 2..<4 { second.add(hypothesis: hypotheses[i], reference: references[i]) }
        let summed = BLEUStatistics(vector: zip(first.vector, second.vector).map { $0 + $1 })
        XCTAssertEqual(summed.score, bleu(hypotheses, references), accuracy: 1e-9)
    }
}

/// chrF against sacrebleu 2.6's `CHRF().corpus_score(hypotheses, [references]).score` (default settings: character
/// 6-grams, β 2, whitespace removed), values computed once with sacrebleu and kept here.
final class CHRFTests: XCTestCase {
    private func chrF(_ hypotheses: [String], _ references: [String]) -> Double {
        var statistics = CHRFStatistics()
        for (h, r) in zip(hypotheses, references) { statistics.add(hypothesis: h, reference: r) }
        return statistics.score
    }

    func testAgreesWithSacrebleu() {
        XCTAssertEqual(chrF(["the cat sat on the mat today", "a quick brown dog jumps over the lazy fox", "hello there general kenobi",
                             "it is raining cats and dogs"],
                            ["the cat sat on the mat", "the quick brown fox jumps over the lazy dog", "hello there general kenobi",
                             "it is raining cats and dogs outside"]), 82.761_330_729_939_5, accuracy: 1e-9)
        // One-word outputs (the quickstart's reversed strings), an empty hypothesis, accents, CJK, other whitespace.
        XCTAssertEqual(chrF(["olleh", "dlrow", "", "Grüße aus Köln", "日本語のテキスト", "a\u{00A0}b  c\td"],
                            ["olleh", "dlorw", "abc", "Grüsse aus Köln", "日本語テキスト", "abcd"]), 55.572_763_894_617_15, accuracy: 1e-9)
        XCTAssertEqual(chrF(["olleh", "dlrow"], ["olleh", "dlorw"]), 62.5, accuracy: 1e-9)
        XCTAssertEqual(chrF([""], ["abc"]), 0)
        XCTAssertEqual(chrF(["x"], [""]), 0)
    }

    /// Where every hypothesis is one word, BLEU-4 has no 4-grams and is not a number worth printing; chrF still is.
    func testBLEUIsUnavailableWithoutFourWordHypotheses() {
        var bleu = BLEUStatistics()
        bleu.add(hypothesis: "olleh", reference: "olleh")
        bleu.add(hypothesis: "dlrow", reference: "dlorw")
        XCTAssertEqual(bleu.unavailableReason, "no hypothesis has 2 or more words, so BLEU-4 has no 2-grams to count")
        var longer = BLEUStatistics()
        longer.add(hypothesis: "the cat sat on the mat", reference: "the cat sat on a mat")
        XCTAssertNil(longer.unavailableReason)
        XCTAssertNotNil(BLEUStatistics().unavailableReason)
    }

    func testStatisticsAddUpAcrossRanks() {
        var first = CHRFStatistics(), second = CHRFStatistics(), whole = CHRFStatistics()
        let pairs = [("abc def", "abc deg"), ("kenobi", "kenobi!"), ("", "x y"), ("日本", "日本語")]
        for (index, pair) in pairs.enumerated() {
            if index < 2 { first.add(hypothesis: pair.0, reference: pair.1) } else { second.add(hypothesis: pair.0, reference: pair.1) }
            whole.add(hypothesis: pair.0, reference: pair.1)
        }
        XCTAssertEqual(CHRFStatistics(vector: zip(first.vector, second.vector).map { $0 + $1 }).score, whole.score, accuracy: 1e-12)
    }
}
