import Foundation

/// The per-step losses a run wrote to `metrics.jsonl` in its run directory, in order (lines without a `loss`, such as
/// evaluations, skipped).
public func trainingLosses(inRun runDirectory: String) throws -> [Double] {
    let text = try String(contentsOfFile: runDirectory + "/metrics.jsonl", encoding: .utf8)
    return try text.split(separator: "\n").compactMap { line in
        (try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["loss"] as? Double
    }
}

/// Where the parameters `other` differ from `reference` (both by name) more than data-parallel equivalence allows: each
/// tensor within 1e-5 of its norm, except key-projection biases. Their gradient is exactly zero (a key bias adds the
/// same q·b to every score of a query), so what reaches AdamW is rounding noise, which it normalises into steps of
/// about lr: they may have moved up to 2 x lr per step apart, and cannot change any output. Returns one line per tensor
/// that differs more (or is missing).
public func parameterMismatches(_ other: [String: [Float]], reference: [String: [Float]], steps: Int, lr: Float) -> [String] {
    var mismatches: [String] = []
    for (name, values) in reference.sorted(by: { $0.key < $1.key }) {
        guard let mine = other[name], mine.count == values.count else {
            mismatches.append("\(name): missing or of another size")
            continue
        }
        if name.hasSuffix("k_proj.bias") {
            let largest = zip(values, mine).map { abs($0 - $1) }.max() ?? 0
            if largest >= 2 * lr * Float(steps) { mismatches.append("\(name): moved \(largest) apart") }
        } else {
            let difference = zip(values, mine).map { ($0 - $1) * ($0 - $1) }.reduce(0, +).squareRoot()
            let norm = values.map { $0 * $0 }.reduce(0, +).squareRoot()
            if difference / max(norm, 1e-12) >= 1e-5 { mismatches.append("\(name): relative difference \(difference / max(norm, 1e-12))") }
        }
    }
    return mismatches
}

/// The root object of a minimal Hugging Face byte-level BPE `tokenizer.json`: GPT-2's 256 byte-to-unicode tokens (ids
/// 0-255 in byte order), one merge ("a b" into "ab", 256) and the special added token `<|endoftext|>` (257).
public func minimalByteLevelTokenizer() -> [String: Any] {
    var table: [String] = []
    var next: UInt32 = 256
    for byte in 0..<256 {
        if (33...126).contains(byte) || (161...172).contains(byte) || (174...255).contains(byte) {
            table.append(String(Character(Unicode.Scalar(UInt8(byte)))))
        } else {
            table.append(String(Character(Unicode.Scalar(next)!)))
            next += 1
        }
    }
    var vocab = Dictionary(uniqueKeysWithValues: table.enumerated().map { ($1, $0) })
    vocab["ab"] = 256
    vocab["<|endoftext|>"] = 257
    return [
        "version": "1.0", "normalizer": NSNull(), "added_tokens": [["id": 257, "content": "<|endoftext|>", "special": true]],
        "pre_tokenizer": ["type": "ByteLevel", "add_prefix_space": false, "use_regex": true],
        "post_processor": ["type": "ByteLevel"], "decoder": ["type": "ByteLevel"],
        "model": ["type": "BPE", "dropout": NSNull(), "unk_token": NSNull(), "vocab": vocab, "merges": ["a b"]],
    ]
}
