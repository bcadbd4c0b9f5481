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
