import Basics
import Foundation

/// Text to token ids and back. Byte-level: every UTF-8 text round-trips exactly.
public enum Tokenizer: Equatable, Sendable {
    /// ids 4 ..< 260 are the bytes 0 ..< 256.
    case byte
    /// Byte-level BPE: byte ids as above, then one id per merge in training order (260, 261, ...).
    case bpe(BPE)
    /// A Hugging Face `tokenizer.json` (byte-level BPE, GPT-2's kind), with its own ids and special tokens.
    case huggingFace(HuggingFaceTokenizer)

    /// The id of byte 0 (4) in SwiftDDP's own tokenizers: ids below it are the standard special tokens.
    public static let firstByteID: Int32 = Int32(SpecialTokens.standardCount)

    /// Which ids are PAD, BOS, EOS (and UNK): `SpecialTokens.standard` for byte and BPE, the file's for Hugging Face.
    public var specialTokens: SpecialTokens {
        switch self {
        case .byte, .bpe: return .standard
        case .huggingFace(let tokenizer): return tokenizer.specialTokens
        }
    }

    /// Ids in the vocabulary: 4 special tokens, 256 bytes, and one per BPE merge (260 for `.byte`); a Hugging Face
    /// tokenizer's largest id plus one.
    public var vocabularySize: Int {
        switch self {
        case .byte: return SpecialTokens.standardCount + 256
        case .bpe(let bpe): return SpecialTokens.standardCount + 256 + bpe.merges.count
        case .huggingFace(let tokenizer): return tokenizer.vocabularySize
        }
    }

    /// The mask token of masked-language-model training (`[MASK]` in text given to `ddp generate`): the first id
    /// after the tokenizer's vocabulary (260 for bytes; 260 + merges for BPE). It is not stored: the tokenizer JSON
    /// fixes it through its vocabulary, so existing shards and checkpoints keep every id, and an encoder-only model
    /// needs `model.vocab_size` of at least `vocabularySize + 1`. `encode` never produces it.
    public var maskToken: Int32 { Int32(vocabularySize) }

    /// The ids of ordinary tokens (bytes and merges), everything but the special tokens: what a masked-LM's random
    /// replacements and fill-mask candidates are drawn from (Hugging Face: all ids but special ones at either end).
    public var ordinaryTokens: Range<Int32> {
        switch self {
        case .byte, .bpe: return Self.firstByteID..<Int32(vocabularySize)
        case .huggingFace(let tokenizer): return tokenizer.ordinaryTokens
        }
    }

    /// "byte", "bpe" or "huggingface", the "kind" of the stored JSON form.
    public var kind: String {
        switch self {
        case .byte: return "byte"
        case .bpe: return "bpe"
        case .huggingFace: return "huggingface"
        }
    }

    /// The token ids of `text` (bytes, merged by BPE when there is one), without BOS or EOS.
    public func encode(_ text: String) -> [Int32] {
        switch self {
        case .byte: return text.utf8.map { Int32($0) + Self.firstByteID }
        case .bpe(let bpe): return bpe.encode(text)
        case .huggingFace(let tokenizer): return tokenizer.encode(text)
        }
    }

    /// How a fill-mask prompt writes the mask token in text.
    public static let maskMarker = "[MASK]"

    /// The ids of `text` with each `maskMarker` as `maskToken` and the pieces between encoded as `encode` does (the
    /// prompts of `ddp generate` and `ddp attention` for encoder-only models).
    public func encodeMarkingMasks(_ text: String) -> [Int32] {
        text.components(separatedBy: Self.maskMarker).enumerated().flatMap { index, piece in
            (index > 0 ? [maskToken] : []) + encode(piece)
        }
    }

    /// Ids back to text; special tokens are skipped, bytes that do not form UTF-8 become U+FFFD.
    public func decode(_ ids: [Int32]) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 2)
        for id in ids { appendBytes(of: id, to: &bytes) }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// One token's text for people to read (fill-mask's candidates, attention pictures' axes): its bytes as UTF-8
    /// text, or, where they are not UTF-8 (a byte-level token holding part of a character), each byte as <0xNN>, as
    /// Hugging Face tokenizers show byte fallback tokens; special tokens give "".
    public func displayText(_ id: Int32) -> String {
        let bytes = bytes([id])
        return String(validating: bytes, as: UTF8.self) ?? bytes.map { String(format: "<0x%02X>", $0) }.joined()
    }

    /// The bytes of `ids` (special tokens skipped): what `decode` turns into text, for streaming output.
    public func bytes(_ ids: [Int32]) -> [UInt8] {
        var bytes: [UInt8] = []
        for id in ids { appendBytes(of: id, to: &bytes) }
        return bytes
    }

    func appendBytes(of id: Int32, to bytes: inout [UInt8]) {
        if case .huggingFace(let tokenizer) = self { return tokenizer.appendBytes(of: id, to: &bytes) }
        guard id >= Self.firstByteID else { return }
        switch self {
        case .byte:
            if id < Self.firstByteID + 256 { bytes.append(UInt8(id - Self.firstByteID)) }
        case .bpe(let bpe):
            bpe.appendBytes(of: id, to: &bytes)
        case .huggingFace:
            break
        }
    }

    // MARK: Stored form (a JSON text attribute in every data file and checkpoint)

    /// The stored form, a JSON object: {"kind": "byte" or "bpe", "vocab_size": N, "merges": [[a, b], ...] for BPE},
    /// or {"kind": "huggingface", "vocab_size": N, "pad": P, "bos": B, "eos": E, "unk": U or null, "tokenizer_json":
    /// the whole tokenizer.json text}; kept as a string attribute in every data file and checkpoint.
    public var json: String {
        switch self {
        case .byte:
            return #"{"kind":"byte","vocab_size":260}"#
        case .bpe(let bpe):
            let merges = bpe.merges.map { "[\($0.0),\($0.1)]" }.joined(separator: ",")
            return #"{"kind":"bpe","vocab_size":\#(vocabularySize),"merges":[\#(merges)]}"#
        case .huggingFace(let tokenizer):
            let special = tokenizer.specialTokens
            let object: [String: Any] = ["kind": "huggingface", "vocab_size": vocabularySize, "pad": special.pad, "bos": special.bos,
                                         "eos": special.eos, "unk": special.unk.map { $0 as Any } ?? NSNull(), "tokenizer_json": tokenizer.text]
            // Strings, integers and null only: serialisation cannot fail.
            let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
            return String(decoding: data ?? Data(), as: UTF8.self)
        }
    }

    /// A stored tokenizer description that cannot be read, thrown by `init(json:)`.
    public struct JSONError: Error, CustomStringConvertible {
        /// What is wrong with the description.
        public let message: String
        /// "tokenizer: " and the message.
        public var description: String { "tokenizer: \(message)" }
    }

    /// Reads the stored form written by `json`. Throws `JSONError` for text that is not a JSON object with "kind",
    /// an unknown kind, BPE merges that do not join two earlier ids or exceed `BPE.largestMergeCount`,
    /// `BPE.longestToken` or `BPE.largestTable`, or a "vocab_size" that differs from the tokenizer's.
    public init(json: String) throws {
        guard let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
              let kind = object["kind"] as? String else {
            throw JSONError(message: "not a tokenizer description (expected a JSON object with \"kind\")")
        }
        switch kind {
        case "byte":
            self = .byte
        case "bpe":
            guard let pairs = object["merges"] as? [[Int]] else { throw JSONError(message: "bpe tokenizer without \"merges\"") }
            guard pairs.count <= BPE.largestMergeCount else {
                throw JSONError(message: "bpe tokenizer with \(pairs.count) merges, more than the \(BPE.largestMergeCount) SwiftDDP reads")
            }
            // Each token's length in bytes, checked as the table grows: merges that join a token with itself again and
            // again double it each time, and would build an enormous table from a few hundred bytes of JSON.
            var lengths = [Int](repeating: 1, count: 256)
            var total = 256
            var merges: [(Int32, Int32)] = []
            for (index, pair) in pairs.enumerated() {
                let newID = Int(Self.firstByteID) + 256 + index
                guard pair.count == 2, pair.allSatisfy({ $0 >= Int(Self.firstByteID) && $0 < newID }) else {
                    throw JSONError(message: "bpe merge \(index) \(pair) does not join two earlier tokens")
                }
                let length = lengths[pair[0] - Int(Self.firstByteID)] + lengths[pair[1] - Int(Self.firstByteID)]
                guard length <= BPE.longestToken else {
                    throw JSONError(message: "bpe merge \(index) \(pair) makes a token of \(length) bytes, longer than the "
                                                 + "\(BPE.longestToken) SwiftDDP allows")
                }
                total += length
                guard total <= BPE.largestTable else {
                    throw JSONError(message: "bpe merges up to \(index) expand to \(total) bytes in all, more than the "
                                                 + "\(BPE.largestTable) SwiftDDP allows")
                }
                lengths.append(length)
                merges.append((Int32(pair[0]), Int32(pair[1])))
            }
            self = .bpe(BPE(merges: merges))
        case "huggingface":
            guard let text = object["tokenizer_json"] as? String, let pad = object["pad"] as? Int, let bos = object["bos"] as? Int,
                  let eos = object["eos"] as? Int, [pad, bos, eos].allSatisfy({ (-1...Int(Int32.max)).contains($0) }) else {
                throw JSONError(message: "huggingface tokenizer without \"tokenizer_json\" text and integer \"pad\", \"bos\" and \"eos\"")
            }
            let unk = (object["unk"] as? Int).flatMap { Int32(exactly: $0) }
            self = .huggingFace(try HuggingFaceTokenizer(text: text, specialTokens: SpecialTokens(pad: Int32(pad), bos: Int32(bos), eos: Int32(eos), unk: unk)))
        default:
            throw JSONError(message: "unknown tokenizer kind \"\(kind)\" (expected byte, bpe or huggingface)")
        }
        if let size = object["vocab_size"] as? Int, size != vocabularySize {
            throw JSONError(message: "vocab_size \(size) does not match the \(self.kind) tokenizer's \(vocabularySize)")
        }
    }
}

extension Tokenizer {
    /// Refuses the ids of text that spells out the tokenizer's PAD token (its `<pad>` written in the text): padding is
    /// hidden from attention and the loss, so that position would silently drop out. `what` names the text ("document
    /// 3", "--prompt") and `file` where it came from, as the error's subject.
    public func refusePadding(in ids: [Int32], what: String, of file: String) throws {
        let pad = specialTokens.pad
        guard ids.contains(pad) else { return }
        throw DataError(file: file, "\(what) encodes to the tokenizer's PAD token (id \(pad)), which only padding may hold; "
                                    + "remove that token's text")
    }
}
