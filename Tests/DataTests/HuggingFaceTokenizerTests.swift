import Basics
@testable import Data
import Foundation
import TestSupport
import XCTest

/// The Hugging Face byte-level BPE tokenizer against the `tokenizers` package, and what it refuses.
final class HuggingFaceTokenizerTests: XCTestCase {
    /// A byte-level BPE trained by `tokenizers` on ≥ 1 MB of mixed text (accents, CJK, emoji, combining marks, code,
    /// whitespace runs, contractions): our ids equal the package's on the whole text and line by line, decoding gives
    /// the text back exactly, and the stored form reads back equal.
    func testIdsEqualTheTokenizersPackageOnAMegabyteOfMixedText() throws {
        guard let python = pythonWithTokenizers() else {
            throw XCTSkip("the tokenizers package is not installed (Launch/test.sh installs it; or set SWIFTDDP_PYTHON)")
        }
        let directory = try makeTemporaryDirectory("hf-tokenizer")
        defer { try? FileManager.default.removeItem(at: directory) }
        func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
        let script = referenceScript("hf_gpt2.py")
        for arguments in [["corpus", path("corpus.txt")], ["tokenizer", path("corpus.txt"), path("tokenizer.json"), "--vocab", "2000"],
                          ["encode", path("tokenizer.json"), path("corpus.txt"), path("ids.json")]] {
            let result = try runProcess(python, [script] + arguments, timeout: 300)
            XCTAssertEqual(result.status, 0, result.output)
        }
        let text = try String(contentsOfFile: path("corpus.txt"), encoding: .utf8)
        XCTAssertGreaterThanOrEqual(text.utf8.count, 1_000_000)
        let expected = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("ids.json")))) as? [String: Any])
        let hf = try HuggingFaceTokenizer(text: String(contentsOfFile: path("tokenizer.json"), encoding: .utf8))
        let tokenizer = Tokenizer.huggingFace(hf)
        XCTAssertEqual(hf.specialTokens, SpecialTokens(pad: SpecialTokens.none, bos: 0, eos: 0), "<|endoftext|> (id 0) ends and begins")

        let whole = tokenizer.encode(text)
        let reference = try XCTUnwrap(expected["whole"] as? [Int]).map(Int32.init)
        XCTAssertGreaterThan(reference.count, 200_000)
        if whole != reference {
            let first = (0..<min(whole.count, reference.count)).first { whole[$0] != reference[$0] } ?? min(whole.count, reference.count)
            XCTFail("ids differ from tokenizers' first at \(first): ours \(whole[first..<min(whole.count, first + 8)]), "
                    + "theirs \(reference[first..<min(reference.count, first + 8)]) (\(whole.count) vs \(reference.count) ids)")
        }
        // Split on the byte 0x0A as Python does (a Swift Character "\r\n" would not split).
        let lines = Array(text.utf8).split(separator: 0x0A, omittingEmptySubsequences: false).prefix(2000).map { String(decoding: $0, as: UTF8.self) }
        let referenceLines = try XCTUnwrap(expected["lines"] as? [[Int]])
        XCTAssertEqual(lines.count, referenceLines.count)
        for (line, ids) in zip(lines, referenceLines) where tokenizer.encode(line) != ids.map(Int32.init) {
            XCTFail("line \(line.debugDescription): ours \(tokenizer.encode(line)), theirs \(ids)")
            break
        }
        XCTAssertEqual(tokenizer.decode(whole), text, "decoding restores the text")
        XCTAssertEqual(expected["decoded_whole"] as? Bool, true, "and tokenizers' own decoding does too")
        XCTAssertEqual(try Tokenizer(json: tokenizer.json), tokenizer, "the stored form reads back equal")
        // Added tokens in the text (special, not normalized, normalized and overlapping, one in the byte table's
        // characters): the package's ids, and its decoding (special tokens skipped, "Ġfoo" through the byte table).
        let marked = try XCTUnwrap(expected["marked_text"] as? String)
        XCTAssertEqual(tokenizer.encode(marked), try XCTUnwrap(expected["marked"] as? [Int]).map(Int32.init))
        XCTAssertEqual(tokenizer.decode(tokenizer.encode(marked)), try XCTUnwrap(expected["marked_decoded"] as? String))
    }

    /// GPT-2's pre-tokenisation pattern on cases written out by hand (what the regular expression matches).
    func testGPT2PreTokenisationPattern() {
        func pieces(_ text: String) -> [String] { HuggingFaceTokenizer.pieces(Array(text.utf8)[...]).map { String(decoding: $0, as: UTF8.self) } }
        XCTAssertEqual(pieces("Hello world"), ["Hello", " world"])
        XCTAssertEqual(pieces("don't it's we'll THEY'RE"), ["don", "'t", " it", "'s", " we", "'ll", " THEY", "'", "RE"])
        XCTAssertEqual(pieces("a   b"), ["a", "  ", " b"], "a whitespace run leaves its last space to the next word")
        XCTAssertEqual(pieces("a \n b"), ["a", " \n", " b"])
        XCTAssertEqual(pieces("x  "), ["x", "  "], "trailing whitespace is one piece")
        XCTAssertEqual(pieces("\n\nx"), ["\n", "\n", "x"], "a single whitespace before a word stands alone unless it is a space")
        XCTAssertEqual(pieces("3.14 ½x²"), ["3", ".", "14", " ½", "x", "²"])
        XCTAssertEqual(pieces("café 中文 👍🏽!!"), ["café", " 中文", " 👍🏽!!"])
        XCTAssertEqual(pieces("e\u{301}"), ["e", "\u{301}"], "a combining mark is not a letter")
        XCTAssertEqual(pieces(" .x"), [" .", "x"])
    }

    private func tokenizerJSON(_ changes: (inout [String: Any]) -> Void) throws -> String {
        var root = minimalByteLevelTokenizer()
        changes(&root)
        return String(decoding: try JSONSerialization.data(withJSONObject: root), as: UTF8.self)
    }

    /// A minimal file works (merges as "a b" strings); every unsupported setting and every damaged part is refused
    /// with a sentence naming the key.
    func testUnsupportedOrDamagedTokenizerFilesAreRefusedByName() throws {
        let tokenizer = try HuggingFaceTokenizer(text: try tokenizerJSON { _ in })
        XCTAssertEqual(tokenizer.encode("abc"), [256, Int32(HuggingFaceTokenizer.byteToUnicode.firstIndex(of: "c")!)])
        XCTAssertEqual(tokenizer.vocabularySize, 258)
        XCTAssertEqual(tokenizer.ordinaryTokens, 0..<257)
        let cases: [(String, (inout [String: Any]) -> Void)] = [
            ("normalizer", { $0["normalizer"] = ["type": "NFC"] }),
            ("add_prefix_space", { $0["pre_tokenizer"] = ["type": "ByteLevel", "add_prefix_space": true] }),
            ("pre_tokenizer \"Whitespace\"", { $0["pre_tokenizer"] = ["type": "Whitespace"] }),
            ("model type \"WordPiece\"", { $0["model"] = ["type": "WordPiece", "vocab": [:]] }),
            ("post_processor \"TemplateProcessing\"", { $0["post_processor"] = ["type": "TemplateProcessing"] }),
            ("model.dropout", { var model = $0["model"] as! [String: Any]; model["dropout"] = 0.1; $0["model"] = model }),
            ("merge 0", { var model = $0["model"] as! [String: Any]; model["merges"] = ["a zz"]; $0["model"] = model }),
            ("lacks the token of byte 97", { var model = $0["model"] as! [String: Any]; var vocab = model["vocab"] as! [String: Any]
                vocab["a"] = nil; model["vocab"] = vocab; $0["model"] = model }),
            ("outside 0 ..< 16777216", { var model = $0["model"] as! [String: Any]; var vocab = model["vocab"] as! [String: Any]
                vocab["ab"] = 1 << 30; model["vocab"] = vocab; $0["model"] = model }),
            // One id for two tokens: which one it decoded to depended on the order the JSON object's keys were visited in.
            ("model.vocab entry \"ab\" and model.vocab entry \"cd\" both have id 256", { var model = $0["model"] as! [String: Any]
                var vocab = model["vocab"] as! [String: Any]; vocab["cd"] = 256; model["vocab"] = vocab; $0["model"] = model }),
            ("lstrip", { $0["added_tokens"] = [["id": 257, "content": "<|endoftext|>", "special": true, "lstrip": true]] }),
            ("no special added token", { $0["added_tokens"] = [] }),
        ]
        for (expected, change) in cases {
            XCTAssertThrowsError(try HuggingFaceTokenizer(text: try tokenizerJSON(change)), expected) { error in
                XCTAssertTrue("\(error)".contains(expected), "\(expected): \(error)")
            }
        }
        XCTAssertThrowsError(try HuggingFaceTokenizer(text: "{\"model\": ")) { XCTAssertTrue("\($0)".contains("not a Hugging Face tokenizer.json"), "\($0)") }
        XCTAssertThrowsError(try HuggingFaceTokenizer(text: try tokenizerJSON { _ in }, specialTokens: SpecialTokens(pad: -1, bos: 0, eos: 900))) {
            XCTAssertTrue("\($0)".contains("eos_token id 900 is outside the tokenizer's 258 ids"), "\($0)")
        }
        // Ids a model's config.json gives: an EOS needs no special added token; a pad that is the EOS (as many GPT-2
        // fine-tunes set) would hide every EOS from the loss, so padding uses -1 and the note says why.
        let unmarked = try HuggingFaceTokenizer(text: try tokenizerJSON { $0["added_tokens"] = [] }, eos: 256, bos: 256)
        XCTAssertEqual(unmarked.specialTokens, SpecialTokens(pad: SpecialTokens.none, bos: 256, eos: 256))
        let padIsEOS = try HuggingFaceTokenizer(text: try tokenizerJSON { _ in }, eos: 257, pad: 257)
        XCTAssertEqual(padIsEOS.specialTokens.pad, SpecialTokens.none)
        XCTAssertEqual(padIsEOS.notes, ["pad_token_id 257 is the EOS token, which padding would hide from the loss: padded positions hold -1 instead"])
        let padIsOrdinary = try HuggingFaceTokenizer(text: try tokenizerJSON { _ in }, pad: 97)
        XCTAssertEqual(padIsOrdinary.specialTokens.pad, SpecialTokens.none)
        XCTAssertTrue(padIsOrdinary.notes.first?.contains("not a special token") == true)
        // A merge listed twice takes its last rank (tokenizers' map keeps the last): "a b" after "b c" loses to it.
        let repeated = try HuggingFaceTokenizer(text: try tokenizerJSON {
            var model = $0["model"] as! [String: Any]; var vocab = model["vocab"] as! [String: Any]
            vocab["bc"] = 258; model["vocab"] = vocab; model["merges"] = ["a b", "b c", "a b"]; $0["model"] = model
            $0["added_tokens"] = [["id": 259, "content": "<|endoftext|>", "special": true]]
        })
        XCTAssertEqual(repeated.encode("abc"), [Int32(HuggingFaceTokenizer.byteToUnicode.firstIndex(of: "a")!), 258])
        XCTAssertThrowsError(try Tokenizer(json: #"{"kind":"huggingface","pad":0}"#)) { XCTAssertTrue("\($0)".contains("tokenizer_json"), "\($0)") }
        // Stored roles (a shard's tokenizer attribute written by hand) with the pad also EOS: refused as a tokenizer,
        // not found later as a PAD id in the data at every EOS.
        XCTAssertThrowsError(try HuggingFaceTokenizer(text: try tokenizerJSON { _ in }, specialTokens: SpecialTokens(pad: 257, bos: 257, eos: 257))) {
            XCTAssertTrue("\($0)".contains("the pad id 257 is also the eos id"), "\($0)")
        }
    }
}

extension HuggingFaceTokenizerTests {
    /// Text that holds a tokenizer's `<pad>` encodes to the PAD id, which padding alone may hold (attention and the loss
    /// skip it): `ddp prepare` refuses it, naming the input and the document or pair, and leaves no shard behind.
    func testTextThatEncodesToPaddingIsRefused() throws {
        let tokenizer = try HuggingFaceTokenizer(text: try tokenizerJSON {
            $0["added_tokens"] = [["id": 257, "content": "<|endoftext|>", "special": true], ["id": 258, "content": "<pad>", "special": true]]
        })
        XCTAssertEqual(tokenizer.specialTokens.pad, 258)
        let directory = try makeTemporaryDirectory("hf-pad")
        defer { try? FileManager.default.removeItem(at: directory) }
        let input = directory.appendingPathComponent("corpus.txt").path
        // Eight documents in eight shards, the fifth with a <pad>: shards written before it are removed again.
        let documents = (0..<8).map { $0 == 4 ? "document <pad> four" : "document \($0)" }
        try documents.joined(separator: "\n\n").write(toFile: input, atomically: true, encoding: .utf8)
        var options = PrepareOptions(output: directory.appendingPathComponent("out").path)
        options.fixedTokenizer = .huggingFace(tokenizer)
        options.validFraction = 0
        options.shards = 8
        XCTAssertThrowsError(try Preparer.prepareLM(inputs: [input], options: options)) {
            XCTAssertEqual("\($0)", "\(input): document 5 encodes to the tokenizer's PAD token (id 258), which only padding "
                           + "may hold; remove that token's text")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: options.output), "no shard of a refused dataset, nor the directory made for it, is left")
        // Over an earlier dataset (--overwrite): refused part-way, the earlier shards stay, every one as it was.
        let clean = directory.appendingPathComponent("clean.txt").path
        try (0..<8).map { "earlier document \($0)" }.joined(separator: "\n\n").write(toFile: clean, atomically: true, encoding: .utf8)
        _ = try Preparer.prepareLM(inputs: [clean], options: options)
        func contents() throws -> [String: Foundation.Data] {
            let names = try FileManager.default.contentsOfDirectory(atPath: options.output)
            return try Dictionary(uniqueKeysWithValues: names.map { ($0, try Foundation.Data(contentsOf: URL(fileURLWithPath: options.output + "/" + $0))) })
        }
        let earlier = try contents()
        XCTAssertEqual(earlier.count, 8)
        options.overwrite = true
        XCTAssertThrowsError(try Preparer.prepareLM(inputs: [clean, input], options: options)) {
            XCTAssertTrue("\($0)".hasPrefix("\(input): document 5 encodes to the tokenizer's PAD token"), "the document is numbered in its own file: \($0)")
        }
        XCTAssertEqual(try contents(), earlier, "the earlier dataset is whole and unchanged")
        options.inputs = [input]
        XCTAssertThrowsError(try Preparer.prepareSeq2Seq(pairs: [("a b", "c"), ("a", "<pad>")], options: options)) {
            XCTAssertTrue("\($0)".contains("pair 2 encodes to the tokenizer's PAD token (id 258)"), "\($0)")
        }
    }

    /// A tokenizer of GPT-2's size (50,257 ids: 256 bytes, 50,000 merges, one added token; about 1 MB of JSON) is stored
    /// in a shard's attribute and read back equal, encoding the same.
    func testAGPT2SizedTokenizerIsStoredInAShardAndReadBack() throws {
        let table = HuggingFaceTokenizer.byteToUnicode.map { String(Character($0)) }
        var vocab = Dictionary(uniqueKeysWithValues: table.enumerated().map { ($1, $0) })
        var merges: [String] = []
        for i in 0..<50_000 {
            let (a, b) = (table[i % 256], table[(i / 256 + i) % 256])
            guard vocab[a + b] == nil else { continue }
            vocab[a + b] = vocab.count
            merges.append("\(a) \(b)")
        }
        vocab["<|endoftext|>"] = vocab.count
        let root: [String: Any] = [
            "added_tokens": [["id": vocab.count - 1, "content": "<|endoftext|>", "special": true]],
            "pre_tokenizer": ["type": "ByteLevel", "add_prefix_space": false, "use_regex": true],
            "model": ["type": "BPE", "vocab": vocab, "merges": merges],
        ]
        let text = String(decoding: try JSONSerialization.data(withJSONObject: root), as: UTF8.self)
        XCTAssertGreaterThan(text.utf8.count, 900_000)
        let tokenizer = Tokenizer.huggingFace(try HuggingFaceTokenizer(text: text))
        XCTAssertGreaterThan(tokenizer.vocabularySize, 40_000)
        let directory = try makeTemporaryDirectory("hf-shard")
        defer { try? FileManager.default.removeItem(at: directory) }
        let document = tokenizer.encode("the quick brown fox, 中文 and 🎉")
        try ShardWriter.writeLM(directory.appendingPathComponent("train-00000.h5").path, documents: [document, document], tokenizer: tokenizer)
        let split = try DataSplit(directory: directory.path, split: "train", sequenceLength: 4)
        XCTAssertEqual(split.tokenizer, tokenizer)
        XCTAssertEqual(split.tokenizer.encode("the quick brown fox, 中文 and 🎉"), document)
        XCTAssertEqual(split.tokenizer.decode(document), "the quick brown fox, 中文 and 🎉")
    }
}
