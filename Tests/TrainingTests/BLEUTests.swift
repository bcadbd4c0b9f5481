import Foundation
import Training
import XCTest

/// BLEU and chrF against values sacrebleu 2.6 computed once (`Tests/Reference/make_sacrebleu_cases.py` wrote
/// `Fixtures/sacrebleu_cases.json`): corpora of punctuation, numbers, hyphens, Unicode, odd whitespace, empty
/// hypotheses and one-word sentences, plus random text of those characters, under each BLEU tokenizer; and the words
/// each tokenizer makes of every segment.
final class SacreBLEUTests: XCTestCase {
    private struct Cases: Decodable {
        struct Corpus: Decodable {
            let hypotheses: [String]
            let references: [String]
            let bleu: [String: Double]
            let bleu_signature: [String: String]
            let chrf: Double
            let chrf_signature: String
        }
        let sacrebleu_version: String
        let corpora: [String: Corpus]
        let segments: [String]
        let words: [String: [[String]]]
    }

    private var cases: Cases {
        get throws {
            let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/sacrebleu_cases.json")
            return try JSONDecoder().decode(Cases.self, from: Data(contentsOf: url))
        }
    }

    func testFixturesCoverEveryTokenizer() throws {
        let cases = try self.cases
        XCTAssertEqual(cases.sacrebleu_version, SacreBLEU.version)
        XCTAssertEqual(Set(cases.words.keys), Set(BLEUTokenization.allCases.map(\.rawValue)))
        XCTAssertGreaterThanOrEqual(cases.corpora.count, 10)
    }

    /// Every segment's words, compared as scalars (as Python compares strings), under every tokenizer.
    func testWordsEqualSacrebleus() throws {
        let cases = try self.cases
        for tokenization in BLEUTokenization.allCases {
            let expected = try XCTUnwrap(cases.words[tokenization.rawValue])
            XCTAssertEqual(expected.count, cases.segments.count)
            for (segment, words) in zip(cases.segments, expected) {
                let ours = tokenization.words(segment).map { $0.map(\.value) }
                XCTAssertEqual(ours, words.map { $0.unicodeScalars.map(\.value) },
                               "tok:\(tokenization.rawValue) on \(segment.debugDescription)")
            }
        }
    }

    func testCorpusBLEUAndSignatureEqualSacrebleus() throws {
        for (name, corpus) in try cases.corpora {
            for tokenization in BLEUTokenization.allCases {
                var statistics = BLEUStatistics(tokenization: tokenization)
                for (h, r) in zip(corpus.hypotheses, corpus.references) { statistics.add(hypothesis: h, reference: r) }
                let expected = try XCTUnwrap(corpus.bleu[tokenization.rawValue])
                XCTAssertEqual(statistics.score, expected, accuracy: 1e-9 * max(1, expected), "\(name), tok:\(tokenization.rawValue)")
                XCTAssertEqual(statistics.signature, corpus.bleu_signature[tokenization.rawValue])
            }
        }
    }

    func testCorpusChrFAndSignatureEqualSacrebleus() throws {
        for (name, corpus) in try cases.corpora {
            var statistics = CHRFStatistics()
            for (h, r) in zip(corpus.hypotheses, corpus.references) { statistics.add(hypothesis: h, reference: r) }
            XCTAssertEqual(statistics.score, corpus.chrf, accuracy: 1e-9 * max(1, corpus.chrf), name)
            XCTAssertEqual(CHRFStatistics.signature, corpus.chrf_signature)
        }
    }

    /// Statistics summed across ranks give the corpus score of all sentences together.
    func testStatisticsAddUpAcrossRanks() throws {
        let corpus = try XCTUnwrap(try cases.corpora["punctuation"])
        var first = BLEUStatistics(), second = BLEUStatistics(), whole = BLEUStatistics()
        for (index, (h, r)) in zip(corpus.hypotheses, corpus.references).enumerated() {
            if index % 2 == 0 { first.add(hypothesis: h, reference: r) } else { second.add(hypothesis: h, reference: r) }
            whole.add(hypothesis: h, reference: r)
        }
        let summed = BLEUStatistics(vector: zip(first.vector, second.vector).map { $0 + $1 }, tokenization: .mteval13a)
        XCTAssertEqual(summed, whole)
        XCTAssertEqual(summed.score, corpus.bleu["13a"] ?? -1, accuracy: 1e-9)
    }

    /// Decoded text becomes one line for any reader: every line break Python's `splitlines` knows is a space, which
    /// changes no score.
    func testDecodedTextIsOneLineWithTheSameScores() {
        let text = "a\nb\rc\r\nd\u{0B}e\u{0C}f\u{1C}g\u{85}h\u{2028}i\u{2029}j k-\nl"
        let line = DecodedTexts.line(text)
        XCTAssertEqual(line, "a b c  d e f g h i j k- l")
        XCTAssertEqual(line.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).count, 1)
        XCTAssertEqual(DecodedTexts.line("plain text"), "plain text")
        // A line feed followed by a combining mark is one Character, but still a line break.
        XCTAssertEqual(DecodedTexts.line("e\n\u{301}x"), "e \u{301}x")
        XCTAssertEqual(DecodedTexts.line("x\n\u{FE0F}"), "x \u{FE0F}")
        let reference = "a b c d e f g h i j k-l"
        for tokenization in BLEUTokenization.allCases where tokenization != .mteval13a {
            var original = BLEUStatistics(tokenization: tokenization), oneLine = BLEUStatistics(tokenization: tokenization)
            original.add(hypothesis: text, reference: reference)
            oneLine.add(hypothesis: line, reference: reference)
            XCTAssertEqual(original, oneLine, "tok:\(tokenization.rawValue)")
        }
        var chrF = CHRFStatistics(), chrFLine = CHRFStatistics()
        chrF.add(hypothesis: text, reference: reference)
        chrFLine.add(hypothesis: line, reference: reference)
        XCTAssertEqual(chrF, chrFLine)
    }

    /// Where no hypothesis has enough words for some order, BLEU-4 is 0 whatever the output (sacrebleu's value), and
    /// the reason is said.
    func testZeroReason() {
        var bleu = BLEUStatistics()
        bleu.add(hypothesis: "olleh", reference: "olleh")
        bleu.add(hypothesis: "dlrow", reference: "dlorw")
        XCTAssertEqual(bleu.score, 0)
        XCTAssertEqual(bleu.zeroReason, "no hypothesis has 2 or more words (tok:13a), so BLEU-4 has no 2-grams to count")
        var longer = BLEUStatistics()
        longer.add(hypothesis: "the cat sat on the mat", reference: "the cat sat on a mat")
        XCTAssertNil(longer.zeroReason)
        XCTAssertEqual(BLEUStatistics().zeroReason, "the hypotheses are empty")
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
