import Foundation

/// Corpus chrF (Popović 2015) as sacrebleu's `CHRF()` computes it by default: character n-grams of orders 1-6 over
/// the text with whitespace removed, β = 2, no word n-grams, case-sensitive; per order the hypothesis, reference
/// and matched n-gram counts are summed over the corpus, precision and recall are averaged over the orders where both
/// sides have n-grams (sacrebleu's effective order), and F_β of the averages is the score, 0...100. Characters are
/// Unicode scalars, as Python's strings count them. The statistics sum across ranks.
public struct CHRFStatistics: Equatable, Sendable {
    /// The highest character n-gram order (sacrebleu's `char_order`, 6).
    public static let order = 6
    /// β of F_β: recall weighs β² = 4 times as much as precision (sacrebleu's default, 2).
    public static let beta = 2.0

    /// Per order n = 1...6: hypothesis n-grams (0 when the reference has none of that order), reference n-grams,
    /// matched n-grams.
    public var hypothesisGrams = [Double](repeating: 0, count: order)
    /// Reference character n-grams per order.
    public var referenceGrams = [Double](repeating: 0, count: order)
    /// Hypothesis n-grams per order that the reference holds, clipped by the reference's counts.
    public var matches = [Double](repeating: 0, count: order)

    /// Empty statistics, to which `add` adds sentences.
    public init() {}

    /// Adds one sentence pair's character n-gram counts for every order, whitespace removed as sacrebleu does.
    public mutating func add(hypothesis: String, reference: String) {
        let hypothesisScalars = Self.withoutWhitespace(hypothesis), referenceScalars = Self.withoutWhitespace(reference)
        for n in 1...Self.order {
            let hypothesisCounts = Self.ngrams(hypothesisScalars, n), referenceCounts = Self.ngrams(referenceScalars, n)
            let referenceTotal = referenceCounts.values.reduce(0, +)
            var hypothesisTotal = 0, matched = 0
            for (gram, count) in hypothesisCounts {
                hypothesisTotal += count
                matched += min(count, referenceCounts[gram] ?? 0)
            }
            hypothesisGrams[n - 1] += Double(referenceCounts.isEmpty ? 0 : hypothesisTotal)
            referenceGrams[n - 1] += Double(referenceTotal)
            matches[n - 1] += Double(matched)
        }
    }

    /// The text's Unicode scalars with every whitespace character removed (Python's `"".join(s.split())`).
    private static func withoutWhitespace(_ text: String) -> [Unicode.Scalar] {
        text.unicodeScalars.filter { !SacreBLEU.isWhitespace($0) }
    }

    private static func ngrams(_ scalars: [Unicode.Scalar], _ n: Int) -> [ArraySlice<Unicode.Scalar>: Int] {
        var counts: [ArraySlice<Unicode.Scalar>: Int] = [:]
        if scalars.count >= n { for i in 0...(scalars.count - n) { counts[scalars[i..<(i + n)], default: 0] += 1 } }
        return counts
    }

    /// sacrebleu's signature of this score: `nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0`.
    public static var signature: String { "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:\(SacreBLEU.version)" }

    /// The statistics as one flat vector (to all-reduce) and back.
    public var vector: [Double] { hypothesisGrams + referenceGrams + matches }
    /// Statistics from a vector in `vector`'s layout: 6 hypothesis counts, 6 reference counts, 6 matches.
    public init(vector: [Double]) {
        hypothesisGrams = Array(vector[0..<Self.order])
        referenceGrams = Array(vector[Self.order..<(2 * Self.order)])
        matches = Array(vector[(2 * Self.order)..<(3 * Self.order)])
    }

    /// chrF in 0...100.
    public var score: Double {
        var precision = 0.0, recall = 0.0, effectiveOrder = 0.0
        for n in 0..<Self.order where hypothesisGrams[n] > 0 && referenceGrams[n] > 0 {
            precision += matches[n] / hypothesisGrams[n]
            recall += matches[n] / referenceGrams[n]
            effectiveOrder += 1
        }
        guard effectiveOrder > 0 else { return 0 }
        precision /= effectiveOrder
        recall /= effectiveOrder
        guard precision + recall > 0 else { return 0 }
        let factor = Self.beta * Self.beta
        return 100 * (1 + factor) * precision * recall / (factor * precision + recall)
    }
}
