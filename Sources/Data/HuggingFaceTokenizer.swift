import Basics
import Foundation

/// A Hugging Face `tokenizer.json` of the byte-level BPE kind: GPT-2's, and what the `tokenizers` package's
/// `ByteLevelBPETokenizer` trains. Encoding follows the `tokenizers` pipeline step by step, so the ids are that
/// package's: added tokens are cut out first (leftmost, longest), the rest is split by GPT-2's pre-tokenisation
/// pattern (`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, written out by hand
/// over Unicode scalars), each piece's UTF-8 bytes become the byte-to-unicode characters of GPT-2's table, and merges
/// are applied lowest rank first. Decoding maps the characters back to bytes: every text round-trips exactly.
///
/// Supported: model `BPE` (no dropout, no subword prefix or suffix, no byte fallback), pre-tokenizer `ByteLevel`
/// with `use_regex` and without `add_prefix_space`, no normalizer, post-processor and decoder `ByteLevel` or none,
/// added tokens without `single_word`, `lstrip` or `rstrip`. Anything else is refused by name. As in `tokenizers`, a
/// merge listed twice takes its last rank, added tokens that are not `normalized` are cut out before the others, and
/// a token decodes through the byte table when every character of it is in the table, else as its own UTF-8.
public struct HuggingFaceTokenizer: Equatable, Sendable {
    /// The `tokenizer.json` text as it was read; written back unchanged by `ddp export --format hf`.
    public let text: String
    /// The special roles (`<|endoftext|>` both BOS and EOS for GPT-2; no pad token unless the file has a special
    /// `<pad>`).
    public let specialTokens: SpecialTokens
    /// What reading made of roles it was given but could not use (a pad id that is also BOS or EOS, or not a special
    /// token: padding then uses `SpecialTokens.none`), as sentences for the user; not part of equality.
    public private(set) var notes: [String] = []
    /// The largest id in the vocabulary or the added tokens, plus one.
    public let vocabularySize: Int
    /// Every id's bytes (nil: no token has that id); special added tokens are in `specialIDs`.
    private let expansions: [[UInt8]?]
    private let specialIDs: Set<Int32>
    /// The id of each byte's one-character token.
    private let byteIDs: [Int32]
    /// Merge (a, b): its rank and the id of the joined token.
    private let merges: [BPE.Pair: (rank: Int32, id: Int32)]
    /// Added tokens by their first byte, as UTF-8, longest first (the match `tokenizers` makes is leftmost-longest):
    /// those not `normalized` are cut out of the text first, then the others from what remains.
    private let addedTokens: (first: AddedTokens, then: AddedTokens)
    typealias AddedTokens = [UInt8: [(bytes: [UInt8], id: Int32)]]
    /// `model.ignore_merges`: a piece that is itself in the vocabulary is that token.
    private let ignoreMerges: Bool
    private let vocabulary: [[UInt8]: Int32]

    /// Ids a vocabulary may have (the model's `vocab_size` limit).
    public static let largestVocabulary = 1 << 24
    /// Largest `tokenizer.json` read (Llama 3's is 9 MB).
    public static let largestFile = 64 << 20

    /// Two tokenizers are equal when they were read from the same text with the same special roles.
    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.text == rhs.text && lhs.specialTokens == rhs.specialTokens }

    /// Reads a `tokenizer.json` text with the special roles `specialTokens` (the stored form), or, when it is nil, the
    /// roles `eos`, `bos` and `pad` (a model's `config.json` ids) and for those not given the file's special added tokens:
    /// EOS `<|endoftext|>`, `</s>` or `<eos>`; BOS `<s>` or `<bos>`, else the EOS; pad `<pad>` or none; unk the model's
    /// `unk_token`. A given pad that is BOS, EOS or not a special token is not used (see `notes`). Throws
    /// `Tokenizer.JSONError` naming the key that is unsupported or wrong, an id outside the vocabulary, and sizes past
    /// `BPE`'s limits.
    public init(text: String, specialTokens: SpecialTokens? = nil, eos: Int32? = nil, bos: Int32? = nil, pad: Int32? = nil) throws {
        typealias JSONError = Tokenizer.JSONError
        guard text.utf8.count <= Self.largestFile else {
            throw JSONError(message: "tokenizer.json of \(text.utf8.count) bytes, more than the \(Self.largestFile) SwiftDDP reads")
        }
        guard let root = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw JSONError(message: "not a Hugging Face tokenizer.json (expected a JSON object)")
        }
        guard let model = root["model"] as? [String: Any] else { throw JSONError(message: "tokenizer.json has no \"model\" object") }
        guard (model["type"] as? String) == "BPE" else {
            throw JSONError(message: "tokenizer.json model type \(Self.describe(model["type"])) is not supported (only byte-level BPE is)")
        }
        func isUnset(_ value: Any?) -> Bool {
            value == nil || value is NSNull || (value as? String) == "" || (value as? NSNumber).map { $0 == 0 } == true
        }
        for key in ["dropout", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback"] where !isUnset(model[key]) {
            throw JSONError(message: "tokenizer.json model.\(key) \(Self.describe(model[key])) is not supported")
        }
        guard isUnset(root["normalizer"]) else {
            throw JSONError(message: "tokenizer.json normalizer \(Self.describe((root["normalizer"] as? [String: Any])?["type"])) is not supported (only none)")
        }
        guard let pre = root["pre_tokenizer"] as? [String: Any], (pre["type"] as? String) == "ByteLevel" else {
            throw JSONError(message: "tokenizer.json pre_tokenizer \(Self.describe((root["pre_tokenizer"] as? [String: Any])?["type"] ?? root["pre_tokenizer"])) "
                                     + "is not supported (only ByteLevel)")
        }
        guard (pre["add_prefix_space"] as? Bool) != true else {
            throw JSONError(message: "tokenizer.json pre_tokenizer.add_prefix_space true is not supported")
        }
        guard (pre["use_regex"] as? Bool) != false else {
            throw JSONError(message: "tokenizer.json pre_tokenizer.use_regex false is not supported")
        }
        for key in ["post_processor", "decoder"] {
            if let object = root[key] as? [String: Any], (object["type"] as? String) != "ByteLevel" {
                throw JSONError(message: "tokenizer.json \(key) \(Self.describe(object["type"])) is not supported (only ByteLevel or none)")
            }
        }

        // The vocabulary: token text (GPT-2's byte-to-unicode characters) to id.
        guard let vocab = model["vocab"] as? [String: Any] else { throw JSONError(message: "tokenizer.json has no model.vocab object") }
        let limit = Self.largestVocabulary
        var expansions: [[UInt8]?] = []
        var vocabulary: [[UInt8]: Int32] = [:]
        var textToID: [String: Int32] = [:]
        // What gave each id its bytes: two vocabulary entries with one id are refused (which one the id decodes to would
        // depend on the order a JSON object's keys are visited in). An added token takes its id over, as in Hugging
        // Face's tokenizers (it is placed after the vocabulary, in list order); the same token again (<|endoftext|> in
        // GPT-2's vocabulary and added tokens) is one token.
        var givenBy: [Int: String] = [:]
        func place(_ id: Int, _ bytes: [UInt8], _ what: String, replacing: Bool = false) throws {
            guard id >= 0 && id < limit else { throw JSONError(message: "tokenizer.json \(what) has id \(id), outside 0 ..< \(limit)") }
            guard bytes.count <= BPE.longestToken else {
                throw JSONError(message: "tokenizer.json \(what) stands for \(bytes.count) bytes, more than the \(BPE.longestToken) SwiftDDP allows")
            }
            if id >= expansions.count { expansions += [[UInt8]?](repeating: nil, count: id + 1 - expansions.count) }
            if !replacing, let earlier = expansions[id], earlier != bytes, let other = givenBy[id] {
                let both = [other, what].sorted()  // (the same sentence whatever order the keys were visited in)
                throw JSONError(message: "tokenizer.json \(both[0]) and \(both[1]) both have id \(id); an id stands for one token")
            }
            expansions[id] = bytes
            givenBy[id] = what
        }
        var tableBytes = 0
        for (token, value) in vocab {
            guard let id = value as? Int else { throw JSONError(message: "tokenizer.json model.vocab entry \(Self.describe(token)) is not an integer id") }
            let bytes = Self.bytes(of: token)
            try place(id, bytes, "model.vocab entry \(Self.describe(token))")
            tableBytes += bytes.count
            guard tableBytes <= BPE.largestTable else {
                throw JSONError(message: "tokenizer.json vocabulary stands for more than the \(BPE.largestTable) bytes SwiftDDP allows")
            }
            vocabulary[bytes] = Int32(id)
            textToID[token] = Int32(id)
        }
        var byteIDs: [Int32] = []
        for byte in 0...255 {
            guard let id = textToID[String(Self.byteToUnicode[byte])] else {
                throw JSONError(message: "tokenizer.json vocabulary lacks the token of byte \(byte) (\(Self.describe(String(Self.byteToUnicode[byte])))): not a byte-level BPE")
            }
            byteIDs.append(id)
        }

        // Merges: "a b" strings (older files) or ["a", "b"] pairs, in rank order.
        guard let mergeList = model["merges"] as? [Any] else { throw JSONError(message: "tokenizer.json has no model.merges list") }
        guard mergeList.count <= BPE.largestMergeCount else {
            throw JSONError(message: "tokenizer.json has \(mergeList.count) merges, more than the \(BPE.largestMergeCount) SwiftDDP reads")
        }
        var merges: [BPE.Pair: (rank: Int32, id: Int32)] = [:]
        for (rank, entry) in mergeList.enumerated() {
            let parts: [String]
            if let string = entry as? String {
                parts = string.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            } else {
                parts = (entry as? [Any])?.compactMap { $0 as? String } ?? []
            }
            guard parts.count == 2, let a = textToID[parts[0]], let b = textToID[parts[1]], let joined = textToID[parts[0] + parts[1]] else {
                throw JSONError(message: "tokenizer.json merge \(rank) \(Self.describe(entry)) does not join two vocabulary tokens into a third")
            }
            merges[BPE.Pair(a: a, b: b)] = (Int32(rank), joined)  // a repeated merge takes its last rank, as in tokenizers
        }

        // Added tokens (`<|endoftext|>`): matched in the text before anything else.
        var added: [(bytes: [UInt8], id: Int32, normalized: Bool)] = []
        var specialIDs = Set<Int32>()
        var specialByContent: [String: Int32] = [:]
        for (index, value) in ((root["added_tokens"] as? [Any]) ?? []).enumerated() {
            guard let token = value as? [String: Any], let id = token["id"] as? Int, let content = token["content"] as? String, !content.isEmpty else {
                throw JSONError(message: "tokenizer.json added_tokens[\(index)] lacks an integer \"id\" or a non-empty \"content\"")
            }
            for flag in ["single_word", "lstrip", "rstrip"] where (token[flag] as? Bool) == true {
                throw JSONError(message: "tokenizer.json added token \(Self.describe(content)) has \(flag) true, which is not supported")
            }
            try place(id, Self.bytes(of: content), "added token \(Self.describe(content))", replacing: true)
            let special = (token["special"] as? Bool) == true
            added.append((Array(content.utf8), Int32(id), (token["normalized"] as? Bool) ?? !special))
            if special {
                specialIDs.insert(Int32(id))
                specialByContent[content] = Int32(id)
            }
        }
        added.sort { $0.bytes.count > $1.bytes.count }
        var notes: [String] = []

        let size = expansions.count
        func check(_ id: Int32, _ role: String) throws {
            guard id >= 0 && Int(id) < size else { throw JSONError(message: "the \(role) id \(id) is outside the tokenizer's \(size) ids") }
        }
        if let specialTokens {
            try check(specialTokens.eos, "eos_token")
            try check(specialTokens.bos, "bos_token")
            if specialTokens.pad != SpecialTokens.none {
                try check(specialTokens.pad, "pad_token")
                // Stored roles (a shard's or checkpoint's tokenizer): padding is hidden from attention and the loss, so
                // a pad that is also BOS or EOS would hide every real one (the reading below never makes such roles).
                guard specialTokens.pad != specialTokens.eos && specialTokens.pad != specialTokens.bos else {
                    throw JSONError(message: "the pad id \(specialTokens.pad) is also the " + (specialTokens.pad == specialTokens.eos ? "eos" : "bos")
                                             + " id; padding is hidden from the loss, so it needs an id of its own (or -1, none)")
                }
            }
            self.specialTokens = specialTokens
        } else {
            if let eos { try check(eos, "eos_token") }
            if let bos { try check(bos, "bos_token") }
            if let pad { try check(pad, "pad_token") }
            guard let eos = eos ?? ["<|endoftext|>", "</s>", "<eos>"].lazy.compactMap({ specialByContent[$0] }).first else {
                throw JSONError(message: "tokenizer.json has no special added token <|endoftext|>, </s> or <eos> to end sequences with "
                                         + "(give eos_token_id in the model's config.json)")
            }
            let bos = bos ?? ["<s>", "<bos>"].lazy.compactMap { specialByContent[$0] }.first ?? eos
            let unk = (model["unk_token"] as? String).flatMap { textToID[$0] ?? specialByContent[$0] }
            // A special `<pad>` added token, unless it is also BOS or EOS.
            let named = specialByContent["<pad>"].flatMap { $0 == eos || $0 == bos ? nil : $0 }
            var padding = named ?? SpecialTokens.none
            if let pad {
                // Padding is ignored by the loss and masked: a pad that is also EOS (what many GPT-2 fine-tunes set) would
                // drop every real EOS label, and an ordinary token every occurrence of it.
                if pad == eos || pad == bos || !specialIDs.contains(pad) {
                    notes.append("pad_token_id \(pad) is " + (pad == eos ? "the EOS token" : pad == bos ? "the BOS token" : "not a special token")
                                 + ", which padding would hide from the loss: padded positions hold "
                                 + (named.map { "the special token <pad> (\($0))" } ?? "-1") + " instead")
                } else {
                    padding = pad
                }
            }
            self.specialTokens = SpecialTokens(pad: padding, bos: bos, eos: eos, unk: unk)
        }
        specialIDs.formUnion(self.specialTokens.ids)
        self.text = text
        self.vocabularySize = size
        self.expansions = expansions
        self.specialIDs = specialIDs
        self.byteIDs = byteIDs
        self.merges = merges
        func byFirstByte(_ tokens: [(bytes: [UInt8], id: Int32, normalized: Bool)]) -> AddedTokens {
            Dictionary(grouping: tokens.map { (bytes: $0.bytes, id: $0.id) }, by: { $0.bytes[0] })
        }
        self.addedTokens = (byFirstByte(added.filter { !$0.normalized }), byFirstByte(added.filter(\.normalized)))
        self.notes = notes
        self.ignoreMerges = (model["ignore_merges"] as? Bool) == true
        self.vocabulary = vocabulary
    }

    private static func describe(_ value: Any?) -> String {
        switch value {
        case nil, is NSNull: return "null"
        case let string as String: return "\"\(string.count > 40 ? String(string.prefix(40)) + "..." : string)\""
        default: return String(describing: value!).prefix(60).description
        }
    }

    // MARK: GPT-2's byte-to-unicode table

    /// Byte b's character: printable Latin-1 bytes (! ... ~, ¡ ... ¬, ® ... ÿ) stand for themselves, the other 68 for
    /// U+0100 onwards in byte order (space is Ġ, U+0120).
    static let byteToUnicode: [Unicode.Scalar] = {
        var next: UInt32 = 256
        return (0...255).map { (byte: Int) -> Unicode.Scalar in
            if (33...126).contains(byte) || (161...172).contains(byte) || (174...255).contains(byte) { return Unicode.Scalar(UInt8(byte)) }
            defer { next += 1 }
            return Unicode.Scalar(next)!
        }
    }()
    static let unicodeToByte: [Unicode.Scalar: UInt8] = Dictionary(uniqueKeysWithValues: byteToUnicode.enumerated().map { ($1, UInt8($0)) })

    /// The bytes a token's text stands for, as the `ByteLevel` decoder gives them: through the byte table when every
    /// character is in it, else the text's own UTF-8.
    static func bytes(of token: String) -> [UInt8] {
        var bytes: [UInt8] = []
        for scalar in token.unicodeScalars {
            guard let byte = unicodeToByte[scalar] else { return Array(token.utf8) }
            bytes.append(byte)
        }
        return bytes
    }

    /// The ids of the ordinary tokens: all but the special ones at either end of the id range (GPT-2: 0 ..< 50256).
    public var ordinaryTokens: Range<Int32> {
        var lower: Int32 = 0, upper = Int32(vocabularySize)
        while lower < upper && specialIDs.contains(lower) { lower += 1 }
        while upper > lower && specialIDs.contains(upper - 1) { upper -= 1 }
        return lower..<upper
    }

    // MARK: Encoding

    /// The ids `tokenizers` gives `text` (`Tokenizer.encode(text).ids`); nothing is added before or after.
    public func encode(_ text: String) -> [Int32] {
        var output: [Int32] = []
        var cache: [ArraySlice<UInt8>: [Int32]] = [:]
        let bytes = Array(text.utf8)
        func encodeText(_ range: Range<Int>) {
            for piece in Self.pieces(bytes[range]) {
                if let cached = cache[piece] { output += cached; continue }
                let ids = encodePiece(piece)
                cache[piece] = ids
                output += ids
            }
        }
        // Added tokens that are not normalized are cut out first, then the others from what is left.
        splitting(bytes, 0..<bytes.count, by: addedTokens.first, token: { output.append($0) }) { range in
            splitting(bytes, range, by: addedTokens.then, token: { output.append($0) }, text: encodeText)
        }
        return output
    }

    /// Walks `range` of `bytes`, calling `token` for each leftmost-longest occurrence of one of `tokens` and `text` for
    /// the runs between them.
    private func splitting(_ bytes: [UInt8], _ range: Range<Int>, by tokens: AddedTokens, token: (Int32) -> Void,
                           text: (Range<Int>) -> Void) {
        var start = range.lowerBound, i = range.lowerBound
        while i < range.upperBound {
            if let match = tokens[bytes[i]]?.first(where: { i + $0.bytes.count <= range.upperBound && bytes[i..<(i + $0.bytes.count)].elementsEqual($0.bytes) }) {
                if start < i { text(start..<i) }
                token(match.id)
                i += match.bytes.count
                start = i
            } else {
                i += 1
            }
        }
        if start < range.upperBound { text(start..<range.upperBound) }
    }

    private func encodePiece(_ piece: ArraySlice<UInt8>) -> [Int32] {
        if ignoreMerges, let id = vocabulary[Array(piece)] { return [id] }
        return BPE.merging(piece.map { byteIDs[Int($0)] }) { merges[$0] }
    }

    /// GPT-2's pre-tokenisation of UTF-8 `bytes` (no added tokens inside) into pieces, the pattern's alternatives tried in
    /// order at each position as the regular expression does.
    static func pieces(_ bytes: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
        // Scalars with their byte offsets.
        var scalars: [Unicode.Scalar] = [], offsets: [Int] = []
        var iterator = bytes.makeIterator()
        var decoder = UTF8()
        var offset = bytes.startIndex
        loop: while true {
            switch decoder.decode(&iterator) {
            case .scalarValue(let scalar):
                scalars.append(scalar)
                offsets.append(offset)
                offset += UTF8.width(scalar)
            case .emptyInput: break loop
            case .error:  // not from a Swift String; never reached
                scalars.append("\u{FFFD}")
                offsets.append(offset)
                offset += 1
            }
        }
        offsets.append(bytes.endIndex)
        enum Class { case letter, number, space, other }
        func kind(_ s: Unicode.Scalar) -> Class {
            if s.properties.isWhitespace { return .space }
            switch s.properties.generalCategory {
            case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
            case .decimalNumber, .letterNumber, .otherNumber: return .number
            default: return .other
            }
        }
        let classes = scalars.map(kind)
        let n = scalars.count
        func length(at i: Int) -> Int {
            // 's|'t|'re|'ve|'m|'ll|'d
            if scalars[i] == "'" && i + 1 < n {
                let next = scalars[i + 1]
                if next == "s" || next == "t" || next == "m" || next == "d" { return 2 }
                if i + 2 < n {
                    let third = scalars[i + 2]
                    if (next == "r" && third == "e") || (next == "v" && third == "e") || (next == "l" && third == "l") { return 3 }
                }
            }
            // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
            let first = scalars[i] == " " && i + 1 < n && classes[i + 1] != .space ? i + 1 : i
            let run = classes[first]
            if run != .space {
                var j = first
                while j < n && classes[j] == run { j += 1 }
                return j - i
            }
            // `\s+(?!\S)`: a whitespace run, less its last character when a non-space follows; else `\s+`.
            var j = i
            while j < n && classes[j] == .space { j += 1 }
            return j == n || j - i == 1 ? j - i : j - i - 1
        }
        var pieces: [ArraySlice<UInt8>] = []
        var i = 0
        while i < n {
            let count = length(at: i)
            pieces.append(bytes[offsets[i]..<offsets[i + count]])
            i += count
        }
        return pieces
    }

    // MARK: Decoding

    /// Appends the bytes `id` stands for; special tokens and unknown ids add nothing.
    func appendBytes(of id: Int32, to bytes: inout [UInt8]) {
        guard id >= 0, Int(id) < expansions.count, !specialIDs.contains(id), let expansion = expansions[Int(id)] else { return }
        bytes.append(contentsOf: expansion)
    }

    /// Whether `id` is a special token (skipped by decoding).
    public func isSpecial(_ id: Int32) -> Bool { specialIDs.contains(id) }
}
