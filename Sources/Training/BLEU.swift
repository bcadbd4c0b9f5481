import Foundation

/// What BLEU and chrF scores here reproduce: sacrebleu's metrics (Post 2018, "A Call for Clarity in Reporting BLEU
/// Scores") with their default settings, reported with sacrebleu's signature strings so that a reader knows exactly
/// which numbers they are.
public enum SacreBLEU {
    /// The sacrebleu release whose scores these reproduce (checked against values it computed), as its signatures
    /// name it.
    public static let version = "2.6.0"

    /// Whether Python's `str.split()` and `str.rstrip()` treat `scalar` as whitespace, as sacrebleu's tokenizers do:
    /// Unicode White_Space plus the information separators U+001C-U+001F.
    static func isWhitespace(_ scalar: Unicode.Scalar) -> Bool {
        scalar.properties.isWhitespace || (0x1C...0x1F).contains(scalar.value)
    }

    /// Python's `text.split()`: the runs of non-whitespace scalars.
    static func words(_ scalars: [Unicode.Scalar]) -> [ArraySlice<Unicode.Scalar>] {
        scalars.split(whereSeparator: isWhitespace)
    }
}

/// How BLEU cuts text into words before counting n-grams: sacrebleu's `tokenize` options of the same names. Every
/// option first strips trailing whitespace and finally splits on whitespace, as Python's `str.split()` does; text is
/// handled as Unicode scalars (Python's characters).
public enum BLEUTokenization: String, Codable, Sendable, CaseIterable {
    /// sacrebleu's default and the WMT standard (`tok:13a`): the mteval-v13a rules. `<skipped>` removed, a hyphen
    /// before a line break joins, line breaks become spaces, `&quot;` `&amp;` `&lt;` `&gt;` unescaped; then ASCII
    /// punctuation and symbols except `'` `-` `.` `,` become words of their own, a period or comma does unless it is
    /// between digits, and a hyphen after a digit does.
    case mteval13a = "13a"
    /// Whitespace only (`tok:none`): the words as written.
    case none
    /// Every non-whitespace character a word (`tok:char`), for languages written without spaces.
    case char
    /// The mteval-v14 international rules (`tok:intl`): Unicode punctuation (`\p{P}`) becomes a word of its own unless
    /// a number (`\p{N}`) is on both sides (a number before a final period keeps it, as in mteval-v14), and every
    /// Unicode symbol (`\p{S}`) does.
    case international = "intl"

    /// The words of one segment under these rules.
    public func words(_ text: String) -> [ArraySlice<Unicode.Scalar>] {
        var scalars = Array(text.unicodeScalars)
        while let last = scalars.last, SacreBLEU.isWhitespace(last) { scalars.removeLast() }
        switch self {
        case .none, .char:
            let words = SacreBLEU.words(scalars)
            return self == .none ? words : words.flatMap { word in word.indices.map { word[$0...$0] } }
        case .mteval13a:
            return SacreBLEU.words(Self.thirteenA(scalars))
        case .international:
            var line = Self.separatePairs(scalars, first: { !$0.isNumber }, second: \.isPunctuation, spaceBefore: false)
            line = Self.separatePairs(line, first: \.isPunctuation, second: { !$0.isNumber }, spaceBefore: true)
            line = Self.separate(line, where: \.isSymbol)
            return SacreBLEU.words(line)
        }
    }

    private static func thirteenA(_ input: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var line = replacing(input, "<skipped>", with: "")
        line = replacing(line, "-\n", with: "")
        line = replacing(line, "\n", with: " ")
        if line.contains("&") {
            for (entity, character) in [("&quot;", "\""), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")] {
                line = replacing(line, entity, with: character)
            }
        }
        line = [" "] + line + [" "]
        line = separate(line, where: isThirteenAPunctuation)
        line = separatePairs(line, first: { !isASCIIDigit($0) }, second: isPeriodOrComma, spaceBefore: false)
        line = separatePairs(line, first: isPeriodOrComma, second: { !isASCIIDigit($0) }, spaceBefore: true)
        return separatePairs(line, first: isASCIIDigit, second: { $0 == "-" }, spaceBefore: false)
    }

    /// mteval-v13a's class `[{-~[-\` -&(-+:-@/]`: ASCII punctuation, symbols and space, except `'` `-` `.` `,`.
    private static func isThirteenAPunctuation(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x7B...0x7E, 0x5B...0x60, 0x20...0x26, 0x28...0x2B, 0x3A...0x40, 0x2F: true
        default: false
        }
    }
    private static func isASCIIDigit(_ s: Unicode.Scalar) -> Bool { (0x30...0x39).contains(s.value) }
    private static func isPeriodOrComma(_ s: Unicode.Scalar) -> Bool { s == "." || s == "," }

    /// Every occurrence of `pattern`, left to right and not overlapping, replaced (Python's `str.replace`).
    private static func replacing(_ scalars: [Unicode.Scalar], _ pattern: String, with replacement: String) -> [Unicode.Scalar] {
        let pattern = Array(pattern.unicodeScalars), replacement = Array(replacement.unicodeScalars)
        var result: [Unicode.Scalar] = [], i = 0
        result.reserveCapacity(scalars.count)
        while i < scalars.count {
            if i + pattern.count <= scalars.count && scalars[i..<(i + pattern.count)].elementsEqual(pattern) {
                result += replacement
                i += pattern.count
            } else {
                result.append(scalars[i])
                i += 1
            }
        }
        return result
    }

    /// Spaces around every scalar that `matches` (the regular expression `(X)` replaced by ` \1 `).
    private static func separate(_ scalars: [Unicode.Scalar], where matches: (Unicode.Scalar) -> Bool) -> [Unicode.Scalar] {
        var result: [Unicode.Scalar] = []
        result.reserveCapacity(scalars.count)
        for s in scalars { if matches(s) { result += [" ", s, " "] } else { result.append(s) } }
        return result
    }

    /// Python's `re.sub` of the two-scalar pattern `(A)(B)`, scanning left to right without overlaps, by `\1 \2 `
    /// (`spaceBefore` false) or ` \1 \2` (true).
    private static func separatePairs(_ scalars: [Unicode.Scalar], first: (Unicode.Scalar) -> Bool, second: (Unicode.Scalar) -> Bool,
                                      spaceBefore: Bool) -> [Unicode.Scalar] {
        var result: [Unicode.Scalar] = [], i = 0
        result.reserveCapacity(scalars.count + scalars.count / 2)
        while i < scalars.count {
            if i + 1 < scalars.count && first(scalars[i]) && second(scalars[i + 1]) {
                result += spaceBefore ? [" ", scalars[i], " ", scalars[i + 1]] : [scalars[i], " ", scalars[i + 1], " "]
                i += 2
            } else {
                result.append(scalars[i])
                i += 1
            }
        }
        return result
    }
}

private extension Unicode.Scalar {
    /// Unicode general category N (`\p{N}`: Nd, Nl, No).
    var isNumber: Bool {
        switch properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: true
        default: false
        }
    }
    /// Unicode general category P (`\p{P}`: Pc, Pd, Ps, Pe, Pi, Pf, Po).
    var isPunctuation: Bool {
        switch properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation, .initialPunctuation,
             .finalPunctuation, .otherPunctuation: true
        default: false
        }
    }
    /// Unicode general category S (`\p{S}`: Sm, Sc, Sk, So).
    var isSymbol: Bool {
        switch properties.generalCategory {
        case .mathSymbol, .currencySymbol, .modifierSymbol, .otherSymbol: true
        default: false
        }
    }
}

/// Corpus BLEU-4 (Papineni et al. 2002) as sacrebleu's `BLEU()` computes it by default: words from `tokenization`
/// (13a unless asked otherwise), case-sensitive, one reference per hypothesis, uniform weights over n = 1...4,
/// the brevity penalty, and the "exp" smoothing of mteval-v13a (an order with no match counts as 1 / 2^k of its
/// n-grams for the k-th such order). It is kept as sufficient statistics that sum across ranks.
public struct BLEUStatistics: Equatable, Sendable {
    /// How hypotheses and references are cut into words.
    public let tokenization: BLEUTokenization
    /// Hypothesis n-grams for n = 1...4 that the reference holds, clipped by the reference's counts.
    public var matches = [Double](repeating: 0, count: 4)
    /// Hypothesis n-grams for n = 1...4 (the clipped precision's denominators).
    public var totals = [Double](repeating: 0, count: 4)
    /// Words in all hypotheses.
    public var hypothesisLength = 0.0
    /// Words in all references (the brevity penalty's r).
    public var referenceLength = 0.0

    /// Empty statistics, to which `add` adds sentences.
    public init(tokenization: BLEUTokenization = .mteval13a) {
        self.tokenization = tokenization
    }

    /// Adds one sentence pair: its lengths, its hypothesis n-gram counts and its matches clipped by the reference's
    /// counts.
    public mutating func add(hypothesis: String, reference: String) {
        let hypothesisWords = tokenization.words(hypothesis), referenceWords = tokenization.words(reference)
        hypothesisLength += Double(hypothesisWords.count)
        referenceLength += Double(referenceWords.count)
        for n in 1...4 {
            let hypothesisGrams = ngrams(hypothesisWords, n), referenceGrams = ngrams(referenceWords, n)
            totals[n - 1] += Double(max(0, hypothesisWords.count - n + 1))
            for (gram, count) in hypothesisGrams { matches[n - 1] += Double(min(count, referenceGrams[gram] ?? 0)) }
        }
    }

    /// The n-grams of `words` with their counts, keyed by their scalars (with a separator that no scalar has between
    /// words): code points compared as Python compares them, not Swift's canonically equivalent `String`s.
    private func ngrams(_ words: [ArraySlice<Unicode.Scalar>], _ n: Int) -> [[UInt32]: Int] {
        var counts: [[UInt32]: Int] = [:]
        guard words.count >= n else { return counts }
        for i in 0...(words.count - n) {
            var key: [UInt32] = []
            for word in words[i..<(i + n)] { key += word.map(\.value) + [UInt32.max] }
            counts[key, default: 0] += 1
        }
        return counts
    }

    /// The statistics as one flat vector (to all-reduce) and back.
    public var vector: [Double] { matches + totals + [hypothesisLength, referenceLength] }
    /// Statistics from a vector in `vector`'s layout: 4 matches, 4 totals, hypothesis length, reference length.
    public init(vector: [Double], tokenization: BLEUTokenization) {
        self.tokenization = tokenization
        matches = Array(vector[0..<4])
        totals = Array(vector[4..<8])
        hypothesisLength = vector[8]
        referenceLength = vector[9]
    }

    /// Why BLEU-4 is 0 whatever the output, or nil: with no n-gram of some order among the hypotheses (no
    /// hypothesis has four words, say) the geometric mean has a zero factor, so the 0 says only that the outputs are
    /// short.
    public var zeroReason: String? {
        guard hypothesisLength > 0 else { return "the hypotheses are empty" }
        guard let n = totals.firstIndex(of: 0) else { return nil }
        return "no hypothesis has \(n + 1) or more words (tok:\(tokenization.rawValue)), so BLEU-4 has no \(n + 1)-grams to count"
    }

    /// BLEU in 0...100, as sacrebleu computes it (`BLEU.compute_bleu` with `smooth_method="exp"`).
    public var score: Double {
        guard matches.contains(where: { $0 > 0 }) else { return 0 }
        let brevity = hypothesisLength < referenceLength ? (hypothesisLength > 0 ? exp(1 - referenceLength / hypothesisLength) : 0) : 1
        var logPrecisions = 0.0, smoothing = 1.0
        for n in 0..<4 {
            guard totals[n] > 0 else {
                // sacrebleu stops here and takes the log of each remaining zero precision as -9999999999.
                logPrecisions += -9_999_999_999 * Double(4 - n)
                break
            }
            if matches[n] > 0 {
                logPrecisions += log(100 * matches[n] / totals[n])
            } else {
                smoothing *= 2
                logPrecisions += log(100 / (smoothing * totals[n]))
            }
        }
        return brevity * exp(logPrecisions / 4)
    }

    /// sacrebleu's signature of this score, for example `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`.
    public var signature: String {
        "nrefs:1|case:mixed|eff:no|tok:\(tokenization.rawValue)|smooth:exp|version:\(SacreBLEU.version)"
    }
}
