import Foundation

/// Special token ids, the same in data files, checkpoints and the model (DESIGN.md). Stored sequences carry no
/// BOS/EOS of their own; framing adds them.
public enum SpecialToken {
    public static let pad: Int32 = 0
    public static let bos: Int32 = 1
    public static let eos: Int32 = 2
    public static let unk: Int32 = 3
    public static let count = 4
}

/// Text to token ids and back. Byte-level: every UTF-8 text round-trips exactly.
public enum Tokenizer: Equatable, Sendable {
    /// ids 4 ..< 260 are the bytes 0 ..< 256.
    case byte
    /// Byte-level BPE: byte ids as above, then one id per merge in training order (260, 261, ...).
    case bpe(BPE)

    public static let firstByteID: Int32 = Int32(SpecialToken.count)

    public var vocabularySize: Int {
        switch self {
        case .byte: return SpecialToken.count + 256
        case .bpe(let bpe): return SpecialToken.count + 256 + bpe.merges.count
        }
    }

    public var kind: String {
        switch self {
        case .byte: return "byte"
        case .bpe: return "bpe"
        }
    }

    public func encode(_ text: String) -> [Int32] {
        switch self {
        case .byte: return text.utf8.map { Int32($0) + Self.firstByteID }
        case .bpe(let bpe): return bpe.encode(text)
        }
    }

    /// Ids back to text; special tokens are skipped, bytes that do not form UTF-8 become U+FFFD.
    public func decode(_ ids: [Int32]) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 2)
        for id in ids { appendBytes(of: id, to: &bytes) }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The bytes of `ids` (special tokens skipped): what `decode` turns into text, for streaming output.
    public func bytes(_ ids: [Int32]) -> [UInt8] {
        var bytes: [UInt8] = []
        for id in ids { appendBytes(of: id, to: &bytes) }
        return bytes
    }

    func appendBytes(of id: Int32, to bytes: inout [UInt8]) {
        guard id >= Self.firstByteID else { return }
        switch self {
        case .byte:
            if id < Self.firstByteID + 256 { bytes.append(UInt8(id - Self.firstByteID)) }
        case .bpe(let bpe):
            bpe.appendBytes(of: id, to: &bytes)
        }
    }

    // MARK: Stored form (a JSON text attribute in every data file and checkpoint)

    public var json: String {
        switch self {
        case .byte:
            return #"{"kind":"byte","vocab_size":260}"#
        case .bpe(let bpe):
            let merges = bpe.merges.map { "[\($0.0),\($0.1)]" }.joined(separator: ",")
            return #"{"kind":"bpe","vocab_size":\#(vocabularySize),"merges":[\#(merges)]}"#
        }
    }

    public struct DecodingError: Error, CustomStringConvertible {
        public let message: String
        public var description: String { "tokenizer: \(message)" }
    }

    public init(json: String) throws {
        guard let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
              let kind = object["kind"] as? String else {
            throw DecodingError(message: "not a tokenizer description (expected a JSON object with \"kind\")")
        }
        switch kind {
        case "byte":
            self = .byte
        case "bpe":
            guard let pairs = object["merges"] as? [[Int]] else { throw DecodingError(message: "bpe tokenizer without \"merges\"") }
            guard pairs.count <= BPE.largestMergeCount else {
                throw DecodingError(message: "bpe tokenizer with \(pairs.count) merges, more than the \(BPE.largestMergeCount) SwiftDDP reads")
            }
            // Each token's length in bytes, checked as the table grows: merges that join a token with itself again and
            // again double it each time, and would build an enormous table from a few hundred bytes of JSON.
            var lengths = [Int](repeating: 1, count: 256)
            var total = 256
            var merges: [(Int32, Int32)] = []
            for (index, pair) in pairs.enumerated() {
                let newID = Int(Self.firstByteID) + 256 + index
                guard pair.count == 2, pair.allSatisfy({ $0 >= Int(Self.firstByteID) && $0 < newID }) else {
                    throw DecodingError(message: "bpe merge \(index) \(pair) does not join two earlier tokens")
                }
                let length = lengths[pair[0] - Int(Self.firstByteID)] + lengths[pair[1] - Int(Self.firstByteID)]
                guard length <= BPE.longestToken else {
                    throw DecodingError(message: "bpe merge \(index) \(pair) makes a token of \(length) bytes, longer than the "
                                                 + "\(BPE.longestToken) SwiftDDP allows")
                }
                total += length
                guard total <= BPE.largestTable else {
                    throw DecodingError(message: "bpe merges up to \(index) expand to \(total) bytes in all, more than the "
                                                 + "\(BPE.largestTable) SwiftDDP allows")
                }
                lengths.append(length)
                merges.append((Int32(pair[0]), Int32(pair[1])))
            }
            self = .bpe(BPE(merges: merges))
        default:
            throw DecodingError(message: "unknown tokenizer kind \"\(kind)\" (expected byte or bpe)")
        }
        if let size = object["vocab_size"] as? Int, size != vocabularySize {
            throw DecodingError(message: "vocab_size \(size) does not match the \(self.kind) tokenizer's \(vocabularySize)")
        }
    }
}
