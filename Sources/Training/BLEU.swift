import Foundation

/// Corpus BLEU-4 (Papineni et al.; sacrebleu's definition with `tokenize=none`: whitespace tokens, uniform
/// weights, brevity penalty, no smoothing) from sufficient statistics that can be summed across ranks.
public struct BLEUStatistics: Equatable, Sendable {
    /// Matched and total n-grams for n = 1...4.
    public var matches = [Double](repeating: 0, count: 4)
    /// Hypothesis n-grams for n = 1...4 (the clipped precision's denominators).
    public var totals = [Double](repeating: 0, count: 4)
    /// Whitespace tokens in all hypotheses.
    public var hypothesisLength = 0.0
    /// Whitespace tokens in all references (the brevity penalty's r).
    public var referenceLength = 0.0

    /// Empty statistics, to which `add` adds sentences.
    public init() {}

    /// Adds one sentence pair: its lengths, its hypothesis n-gram counts and its matches clipped by the reference's
    /// counts (one reference per hypothesis).
    public mutating func add(hypothesis: String, reference: String) {
        let hypothesisTokens = hypothesis.split(whereSeparator: \.isWhitespace).map(String.init)
        let referenceTokens = reference.split(whereSeparator: \.isWhitespace).map(String.init)
        hypothesisLength += Double(hypothesisTokens.count)
        referenceLength += Double(referenceTokens.count)
        for n in 1...4 {
            let hypothesisGrams = ngrams(hypothesisTokens, n), referenceGrams = ngrams(referenceTokens, n)
            totals[n - 1] += Double(max(0, hypothesisTokens.count - n + 1))
            for (gram, count) in hypothesisGrams { matches[n - 1] += Double(min(count, referenceGrams[gram] ?? 0)) }
        }
    }

    private func ngrams(_ tokens: [String], _ n: Int) -> [ArraySlice<String>: Int] {
        var counts: [ArraySlice<String>: Int] = [:]
        if tokens.count >= n { for i in 0...(tokens.count - n) { counts[tokens[i..<(i + n)], default: 0] += 1 } }
        return counts
    }

    /// The statistics as one flat vector (to all-reduce) and back.
    public var vector: [Double] { matches + totals + [hypothesisLength, referenceLength] }
    /// Statistics from a vector in `vector`'s layout: 4 matches, 4 totals, hypothesis length, reference length.
    public init(vector: [Double]) {
        matches = Array(vector[0..<4])
        totals = Array(vector[4..<8])
        hypothesisLength = vector[8]
        referenceLength = vector[9]
    }

    /// Why BLEU-4 is undefined for this corpus, or nil: with no n-gram of some order among the hypotheses (no
    /// hypothesis has four words, say) the geometric mean has a zero factor whatever the output, so a 0 would only
    /// say that the sentences are short.
    public var unavailableReason: String? {
        guard hypothesisLength > 0 else { return "the hypotheses are empty" }
        guard let n = totals.firstIndex(of: 0) else { return nil }
        return "no hypothesis has \(n + 1) or more words, so BLEU-4 has no \(n + 1)-grams to count"
    }

    /// BLEU in 0...100.
    public var score: Double {
        guard hypothesisLength > 0, !matches.contains(0) else { return 0 }
        let logPrecision = (0..<4).map { log(matches[$0] / totals[$0]) }.reduce(0, +) / 4
        let brevity = hypothesisLength < referenceLength ? exp(1 - referenceLength / hypothesisLength) : 1
        return 100 * brevity * exp(logPrecision)
    }
}
