import Basics

/// Byte-level byte-pair encoding: merges learned from text, applied greedily by rank.
///
/// Text is first cut into pieces (a run of letters/digits/other with the spaces before it, GPT-2 style) so that
/// merges never cross piece boundaries; cutting keeps every byte, so decoding restores the text exactly.
public struct BPE: Equatable, Sendable {
    /// Merge i joins (a, b) into id 260 + i.
    public let merges: [(Int32, Int32)]

    /// Limits on a BPE read from a file (GPT-2's 50,000 merges make tokens of at most 128 bytes, 300 KB in all).
    public static let largestMergeCount = 1 << 20
    /// Bytes one token may stand for.
    public static let longestToken = 1024
    /// Bytes all tokens together may stand for (the size of the decoding table).
    public static let largestTable = 1 << 26
    private let rank: [Pair: Int32]
    /// The bytes each id stands for (index id − 4).
    private let expansions: [[UInt8]]

    struct Pair: Hashable {
        let a: Int32, b: Int32
    }

    /// A BPE with `merges` in rank order, each joining two ids below its own (260 + its index); builds the merge ranks
    /// and each id's byte expansion. Unchecked: `Tokenizer(json:)` validates merges read from a file.
    public init(merges: [(Int32, Int32)]) {
        self.merges = merges
        var rank: [Pair: Int32] = [:]
        var expansions = (0..<256).map { [UInt8($0)] }
        for (index, (a, b)) in merges.enumerated() {
            rank[Pair(a: a, b: b)] = Int32(index)
            expansions.append(expansions[Int(a - Tokenizer.firstByteID)] + expansions[Int(b - Tokenizer.firstByteID)])
        }
        self.rank = rank
        self.expansions = expansions
    }

    /// Two BPEs are equal when they have the same merges in the same order.
    public static func == (lhs: BPE, rhs: BPE) -> Bool {
        lhs.merges.count == rhs.merges.count && zip(lhs.merges, rhs.merges).allSatisfy { $0 == $1 }
    }

    func appendBytes(of id: Int32, to bytes: inout [UInt8]) {
        let index = Int(id - Tokenizer.firstByteID)
        if index >= 0 && index < expansions.count { bytes.append(contentsOf: expansions[index]) }
    }

    // MARK: Encoding

    /// The token ids of `text`'s UTF-8 bytes: each piece is encoded separately by repeatedly applying its lowest-ranked
    /// merge; no BOS or EOS is added.
    public func encode(_ text: String) -> [Int32] {
        var output: [Int32] = []
        var cache: [ArraySlice<UInt8>: [Int32]] = [:]
        let bytes = Array(text.utf8)
        for piece in BPE.pieces(bytes) {
            if let cached = cache[piece] {
                output += cached
                continue
            }
            let ids = encodePiece(piece)
            cache[piece] = ids
            output += ids
        }
        return output
    }

    /// Repeatedly applies the lowest-ranked merge present in the piece.
    func encodePiece(_ piece: ArraySlice<UInt8>) -> [Int32] {
        Self.merging(piece.map { Int32($0) + Tokenizer.firstByteID }) { pair in
            rank[pair].map { ($0, Tokenizer.firstByteID + 256 + $0) }
        }
    }

    /// `ids` with merges applied lowest rank first until none applies: `merge` gives a pair's rank and the id it
    /// becomes, or nil. Each round replaces every occurrence of the lowest-ranked pair, left to right (what applying
    /// them one at a time, leftmost first, gives). Shared by SwiftDDP's BPE and Hugging Face's.
    static func merging(_ ids: [Int32], _ merge: (Pair) -> (rank: Int32, id: Int32)?) -> [Int32] {
        var ids = ids
        while ids.count > 1 {
            var best: (rank: Int32, pair: Pair, id: Int32)?
            for i in 0..<(ids.count - 1) {
                let pair = Pair(a: ids[i], b: ids[i + 1])
                if let found = merge(pair), found.rank < (best?.rank ?? .max) { best = (found.rank, pair, found.id) }
            }
            guard let best else { break }
            ids = replacing(best.pair, with: best.id, in: ids)
        }
        return ids
    }

    /// `ids` with every occurrence of `pair`, left to right and not overlapping, replaced by `id`.
    static func replacing(_ pair: Pair, with id: Int32, in ids: [Int32]) -> [Int32] {
        var result: [Int32] = []
        result.reserveCapacity(ids.count)
        var i = 0
        while i < ids.count {
            if i < ids.count - 1 && ids[i] == pair.a && ids[i + 1] == pair.b {
                result.append(id)
                i += 2
            } else {
                result.append(ids[i])
                i += 1
            }
        }
        return result
    }

    /// Cuts bytes into pieces: spaces attach to the following run; a run is letters/digits (ASCII or any
    /// non-ASCII byte, which keeps multi-byte characters together) or a single other character.
    static func pieces(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        func isWord(_ byte: UInt8) -> Bool {
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || byte >= 0x80
        }
        var pieces: [ArraySlice<UInt8>] = []
        var start = 0
        var i = 0
        while i < bytes.count {
            while i < bytes.count && bytes[i] == 0x20 { i += 1 }
            if i < bytes.count {
                if isWord(bytes[i]) {
                    while i < bytes.count && isWord(bytes[i]) { i += 1 }
                } else {
                    i += 1
                }
            }
            pieces.append(bytes[start..<i])
            start = i
        }
        return pieces
    }

    // MARK: Training

    /// Learns merges until the vocabulary reaches `vocabularySize` (or no pair occurs twice). Deterministic: the
    /// most frequent pair wins, ties go to the smaller (a, b). No token grows past `longestToken` bytes, nor the table
    /// past `largestTable`, so every tokenizer trained here is one a reader accepts.
    public static func train(texts: [String], vocabularySize: Int) -> BPE {
        let target = max(0, vocabularySize - SpecialTokens.standardCount - 256)
        // Unique pieces with their counts: training works on these, not on the raw text.
        var counts: [ArraySlice<UInt8>: Int] = [:]
        for text in texts {
            for piece in pieces(Array(text.utf8)) { counts[piece, default: 0] += 1 }
        }
        let sortedPieces = counts.keys.sorted { $0.lexicographicallyPrecedes($1) }  // fixed order: determinism
        var statistics = PairStatistics(words: sortedPieces.map { $0.map { Int32($0) + Tokenizer.firstByteID } },
                                        frequency: sortedPieces.map { counts[$0]! })
        var merges: [(Int32, Int32)] = []
        // Bytes per token id (index id − 4), so no merge makes a token longer than a reader accepts.
        var lengths = [Int](repeating: 1, count: 256)
        func length(_ id: Int32) -> Int { lengths[Int(id - Tokenizer.firstByteID)] }
        var total = 256
        while merges.count < target {
            let best = statistics.mostFrequentPair { length($0.a) + length($0.b) <= longestToken }
            guard let chosen = best, chosen.count >= 2, total + length(chosen.pair.a) + length(chosen.pair.b) <= largestTable else { break }
            merges.append((chosen.pair.a, chosen.pair.b))
            lengths.append(length(chosen.pair.a) + length(chosen.pair.b))
            total += lengths.last!
            statistics.merge(chosen.pair, into: Tokenizer.firstByteID + 256 + Int32(merges.count - 1))
        }
        return BPE(merges: merges)
    }

    /// The training corpus as unique words (pieces) of ids with their frequencies, and how often each adjacent pair
    /// occurs, kept up to date as merges are applied.
    struct PairStatistics {
        private var words: [[Int32]]
        private let frequency: [Int]
        private var pairCounts: [Pair: Int] = [:]
        private var wordsWithPair: [Pair: Set<Int>] = [:]

        init(words: [[Int32]], frequency: [Int]) {
            self.words = words
            self.frequency = frequency
            for w in words.indices { count(w, by: 1) }
        }

        /// Adds the pairs of word `w`, `sign` times its frequency.
        private mutating func count(_ w: Int, by sign: Int) {
            let word = words[w]
            for i in 0..<max(0, word.count - 1) {
                let pair = Pair(a: word[i], b: word[i + 1])
                pairCounts[pair, default: 0] += sign * frequency[w]
                if sign > 0 { wordsWithPair[pair, default: []].insert(w) }
            }
        }

        /// The most frequent pair that `allowed` accepts, ties going to the smaller (a, b); nil when none occurs.
        func mostFrequentPair(allowed: (Pair) -> Bool) -> (pair: Pair, count: Int)? {
            var best: (pair: Pair, count: Int)?
            for (pair, count) in pairCounts where count > 0 && allowed(pair) {
                if let current = best {
                    if count > current.count || (count == current.count && (pair.a, pair.b) < (current.pair.a, current.pair.b)) {
                        best = (pair, count)
                    }
                } else {
                    best = (pair, count)
                }
            }
            return best
        }

        /// Replaces `pair` by `id` in every word holding it, updating the counts.
        mutating func merge(_ pair: Pair, into id: Int32) {
            for w in (wordsWithPair[pair] ?? []).sorted() {
                count(w, by: -1)
                words[w] = BPE.replacing(pair, with: id, in: words[w])
                count(w, by: 1)
            }
            pairCounts[pair] = nil
            wordsWithPair[pair] = nil
        }
    }
}
