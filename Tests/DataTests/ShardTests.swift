import Basics
import Data
import Foundation
import HDF5
import TestSupport
import XCTest

final class ShardTests: XCTestCase {
    private var directory: URL!
    private var path: String { directory.path }

    override func setUpWithError() throws { directory = try makeTemporaryDirectory("ddp-data") }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    private func file(_ name: String) -> String { directory.appendingPathComponent(name).path }

    private func writeSeq2Seq(_ name: String = "train-00000.h5", pairs: [(String, String)], tokenizer: Tokenizer = .byte) throws {
        try ShardWriter.writeSeq2Seq(file(name), pairs: pairs.map { (tokenizer.encode($0.0), tokenizer.encode($0.1)) }, tokenizer: tokenizer)
    }

    /// The root attributes of README's data schema, with the byte tokenizer.
    private func writeSchemaAttributes(_ file: File, task: String) throws {
        try file.setAttribute("format", "swiftddp-tokens")
        try file.setAttribute("version", 1)
        try file.setAttribute("task", task)
        try file.setAttribute("vocab_size", 260)
        try file.setAttribute("tokenizer", Tokenizer.byte.json)
    }

    private func assertDataError(_ fragments: [String], file: StaticString = #filePath, line: UInt = #line,
                                 _ body: () throws -> Void) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            guard let error = error as? DataError else { return XCTFail("not a DataError: \(error)", file: file, line: line) }
            for fragment in fragments {
                XCTAssertTrue(error.description.contains(fragment), "'\(fragment)' missing from: \(error)", file: file, line: line)
            }
        }
    }

    func testSeq2SeqFramingPaddingAndLoader() throws {
        try writeSeq2Seq(pairs: [("abc", "xy"), ("a", "wxyz"), ("hello", "")])
        try writeSeq2Seq("train-00001.h5", pairs: [("q", "r")])
        let split = try DataSplit(directory: path, split: "train")
        XCTAssertEqual(split.task, .seq2seq)
        XCTAssertEqual(split.samples, 4)
        let reader = try SampleReader(split: split)
        let batch = try reader.batch([1, 3], maxSourceLength: 16, maxTargetLength: 16)
        let byte = { (text: String) in Tokenizer.byte.encode(text) }
        let (eos, bos, pad) = (SpecialTokens.standard.eos, SpecialTokens.standard.bos, SpecialTokens.standard.pad)
        XCTAssertEqual(batch.sourceLength, 2)
        XCTAssertEqual(batch.targetLength, 5)
        XCTAssertEqual(batch.source, byte("a") + [eos] + byte("q") + [eos], "source + EOS; sample 3 is in the second file")
        XCTAssertEqual(batch.decoderInput, [bos] + byte("wxyz") + [bos] + byte("r") + [pad, pad, pad])
        XCTAssertEqual(batch.labels, byte("wxyz") + [eos] + byte("r") + [eos, pad, pad, pad])
        XCTAssertEqual(batch.targetTokens, 7)

        // The loader gives the plan's batches in order from its own thread, then nil.
        let plan = ListPlan([[0, 1], [2], [3, 0]])
        let loader = BatchLoader(split: split, maxSourceLength: 16, maxTargetLength: 16, capacity: 1) { plan.next() }
        var seen: [[Int]] = []
        while let next = try loader.next() { seen.append(next.samples) }
        XCTAssertEqual(seen, [[0, 1], [2], [3, 0]])
        loader.stop()
    }

    func testLMWindows() throws {
        let documents = [Array(repeating: Int32(10), count: 7), Array(repeating: Int32(11), count: 5)]
        try ShardWriter.writeLM(file("train-00000.h5"), documents: documents, tokenizer: .byte)
        let split = try DataSplit(directory: path, split: "train", sequenceLength: 4)
        // Stream: 7 tokens + EOS + 5 tokens + EOS = 14 tokens; windows of 5 at stride 4: 0, 4, 8 (a 4th would need 17).
        XCTAssertEqual(split.samples, 3)
        let batch = try SampleReader(split: split).batch([1, 2], maxSourceLength: 0, maxTargetLength: 4)
        XCTAssertEqual(batch.decoderInput, [10, 10, 10, 2, 11, 11, 11, 11])
        XCTAssertEqual(batch.labels, [10, 10, 2, 11, 11, 11, 11, 11])
        XCTAssertEqual(batch.targetTokens, 8)
        assertDataError(["needs 4 decoder positions; the model takes 3"]) {
            _ = try SampleReader(split: split).batch([0], maxSourceLength: 0, maxTargetLength: 3)
        }
    }

    /// Dropping a loader mid-stream (without stop) ends its thread cleanly.
    func testDroppingALoaderStopsItsThread() throws {
        try writeSeq2Seq(pairs: [("ab", "cd"), ("ef", "gh")])
        let split = try DataSplit(directory: path, split: "train")
        let plan = ListPlan((0..<1000).map { [$0 % 2] })
        /// Held by the plan closure, which only the loader's thread keeps: it goes when the thread has ended.
        final class Witness: Sendable {}
        weak var witness: Witness?
        do {
            let token = Witness()
            witness = token
            let loader = BatchLoader(split: split, maxSourceLength: 8, maxTargetLength: 8, capacity: 2) { [token] in
                withExtendedLifetime(token) { plan.next() }
            }
            XCTAssertNotNil(try loader.next())
        }
        // The thread is blocked on a full queue by now; only the loader's deinit can wake it and let it end.
        let deadline = Date().addingTimeInterval(10)
        while witness != nil && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        XCTAssertNil(witness, "10 s after the loader was released its thread still holds the plan: the thread did not end")
        let left = (0..<1000).compactMap { _ in plan.next() }.count
        XCTAssertGreaterThan(left, 900, "the thread kept reading after the loader was released")
    }

    /// A trial's finding: a shard prepared again after its split was checked (while a run trains on it) was read
    /// unchecked at the next evaluation, and its new token ids trapped in the embedding. A reader opens only the
    /// version that was checked.
    func testAShardReplacedAfterItWasCheckedIsRefused() throws {
        try writeSeq2Seq(pairs: [("abc", "xy"), ("a", "wxyz")])
        let split = try DataSplit(directory: path, split: "train")
        XCTAssertNoThrow(try SampleReader(split: split))
        try writeSeq2Seq(pairs: [("other", "pairs"), ("of", "text"), ("now", "")])
        assertDataError([file("train-00000.h5"), "has changed since it was checked (prepared again?)"]) { _ = try SampleReader(split: split) }
        let loader = BatchLoader(split: split, maxSourceLength: 16, maxTargetLength: 16) { ListPlan([[0]]).next() }
        XCTAssertThrowsError(try loader.next()) { XCTAssertTrue("\($0)".contains("has changed since it was checked"), "\($0)") }
        loader.stop()
        XCTAssertEqual(try SampleReader(split: try DataSplit(directory: path, split: "train")).sample(2).source, Tokenizer.byte.encode("now"),
                       "checked again, the new data is read")
    }

    func testLoaderRethrowsReadErrors() throws {
        try writeSeq2Seq(pairs: [("abcdef", "x")])
        let split = try DataSplit(directory: path, split: "train")
        let plan = ListPlan([[0]])
        let loader = BatchLoader(split: split, maxSourceLength: 4, maxTargetLength: 8) { plan.next() }
        XCTAssertThrowsError(try loader.next()) {
            XCTAssertTrue("\($0)".contains("train-00000.h5: pair 0 has 6 source and 1 target tokens, 7 and 2 positions with EOS and BOS; the model takes 4 and 8"), "\($0)")
        }
        loader.stop()
    }

    /// checkFits names the first pair too long on either side, from the offsets, and passes a split that fits.
    func testCheckFitsNamesTheFirstPairTooLong() throws {
        try writeSeq2Seq(pairs: [("ab", "cd"), ("abc", "defgh"), ("abcdef", "x")])
        let reader = try SampleReader(split: try DataSplit(directory: path, split: "train"))
        XCTAssertNoThrow(try reader.checkFits(maxSourceLength: 7, maxTargetLength: 6))
        assertDataError(["train-00000.h5: pair 1 has 3 source and 5 target tokens, 4 and 6 positions with EOS and BOS; the model takes 7 and 5",
                         "(data.source_length and data.target_length)"]) {
            try reader.checkFits(maxSourceLength: 7, maxTargetLength: 5)
        }
        assertDataError(["train-00000.h5: pair 1 has 3 source and 5 target tokens", "(data.source_length and data.target_length); 1 more pair of the split is too long as well"]) {
            try reader.checkFits(maxSourceLength: 4, maxTargetLength: 5)
        }
        assertDataError(["train-00000.h5: pair 2 has 6 source and 1 target tokens, 7 and 2 positions with EOS and BOS; the model takes 6 and 6"]) {
            try reader.checkFits(maxSourceLength: 6, maxTargetLength: 6)
        }
    }

    // MARK: Bad input: each gives an error naming the file and what is wrong.

    func testMissingDirectoryAndEmptySplit() throws {
        assertDataError(["/nonexistent/data", "no such data directory"]) { _ = try DataSplit(directory: "/nonexistent/data", split: "train") }
        try FileManager.default.createSymbolicLink(atPath: file("moved"), withDestinationPath: file("elsewhere"))
        assertDataError(["moved: no such data directory: it is a link to \(file("elsewhere")), which does not exist"]) {
            _ = try DataSplit(directory: file("moved"), split: "train")
        }
        try Data("not a directory".utf8).write(to: URL(fileURLWithPath: file("plain")))
        assertDataError(["plain: is a regular file, not a data directory"]) { _ = try DataSplit(directory: file("plain"), split: "train") }
        assertDataError(["/dev/null: is a character device, not a data directory"]) { _ = try DataSplit(directory: "/dev/null", split: "train") }
        // A shard whose name is not UTF-8 (its byte 0xFF arrives as U+FFFD, naming no file) is said as such.
        try FileManager.default.createDirectory(atPath: file("odd"), withIntermediateDirectories: true)
        let odd = Array(file("odd/train-").utf8) + [0xFF] + Array(".h5".utf8) + [0]
        let descriptor = odd.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { creat($0.baseAddress!, 0o644) } }
        XCTAssertGreaterThanOrEqual(descriptor, 0)
        close(descriptor)
        assertDataError(["odd/train-\u{FFFD}.h5: its name is not UTF-8"]) { _ = try DataSplit(directory: file("odd"), split: "train") }
        assertDataError(["no valid-*.h5 files"]) { _ = try DataSplit(directory: path, split: "valid") }
        try ShardWriter.writeLM(file("valid-00000.h5"), documents: [[5, 6]], tokenizer: .byte)
        assertDataError(["the valid split is empty", "no window of 9 tokens"]) {
            _ = try DataSplit(directory: path, split: "valid", sequenceLength: 8)
        }
    }

    /// A shard changed by `body`; resealed (as a program that writes our format consistently would) unless not.
    private func tamper(resealing: Bool = true, _ body: (File) throws -> Void) throws -> String {
        try writeSeq2Seq(pairs: [("ab", "cd"), ("e", "f")])
        let name = file("train-00000.h5")
        let handle = try File.open(name, mode: .readWrite)
        try body(handle)
        if resealing { try handle.sealAttributes() }
        return name
    }

    func testWrongSchema() throws {
        let edited = try tamper(resealing: false) { try $0.setAttribute("task", "lm") }
        assertDataError([edited, "do not match the digest stored with them"]) { _ = try DataSplit(directory: path, split: "train") }
        let name = try tamper { try $0.setAttribute("format", "something-else") }
        assertDataError([name, "format is 'something-else', expected 'swiftddp-tokens'"]) { _ = try DataSplit(directory: path, split: "train") }
        _ = try tamper { try $0.setAttribute("version", 99) }
        assertDataError(["format version 99 is not supported"]) { _ = try DataSplit(directory: path, split: "train") }
        _ = try tamper { try $0.setAttribute("task", "classification") }
        assertDataError(["task 'classification' is not lm or seq2seq"]) { _ = try DataSplit(directory: path, split: "train") }
        _ = try tamper { try $0.setAttribute("vocab_size", 1000) }
        assertDataError(["vocab_size 1000 differs from the tokenizer's 260"]) { _ = try DataSplit(directory: path, split: "train") }
    }

    func testWrongDtypeAndTokensOutsideTheVocabulary() throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let name = file("train-00000.h5")
        do {
            let handle = try File.create(name)
            try writeSchemaAttributes(handle, task: "lm")
            try handle.createDataset("tokens", type: .float32, shape: [20]).write([Float](repeating: 5, count: 20))
        }
        assertDataError([name, "/tokens must be 1-D int32, found float32"]) { _ = try DataSplit(directory: path, split: "train", sequenceLength: 4) }
        do {
            let handle = try File.create(name)
            for (key, value) in [("format", "swiftddp-tokens"), ("task", "lm"), ("tokenizer", Tokenizer.byte.json)] { try handle.setAttribute(key, value) }
            try handle.setAttribute("version", 1)
            try handle.setAttribute("vocab_size", 260)
            try handle.createDataset("tokens", type: .int32, shape: [6]).write([Int32(5), 6, 260, 7, 8, 9])
        }
        assertDataError(["/tokens[2] = 260 is outside the vocabulary (vocab_size 260)"]) {
            _ = try DataSplit(directory: path, split: "train", sequenceLength: 2)
        }
        // PAD (0 for the byte tokenizer) inside the data: attention and the loss would silently skip that position.
        try File.open(name, mode: .readWrite).openDataset("tokens").write([Int32(5), 6, 7, 0, 8, 9])
        assertDataError([name, "/tokens[3] = 0 is the tokenizer's PAD id, which only padding may hold"]) {
            _ = try DataSplit(directory: path, split: "train", sequenceLength: 2)
        }
    }

    func testPaddingInsideAPairIsRefused() throws {
        _ = try tamper { try $0.openDataset("target/tokens").write([Int32(6), 0, 8]) }
        assertDataError(["train-00000.h5", "/target/tokens[1] = 0 is the tokenizer's PAD id"]) { _ = try DataSplit(directory: path, split: "train") }
    }

    func testBadOffsets() throws {
        _ = try tamper { try $0.openDataset("source/offsets").write([Int64(0), 2, 1]) }
        assertDataError(["/source/offsets is not monotonic at 2"]) { _ = try DataSplit(directory: path, split: "train") }
        _ = try tamper { try $0.openDataset("target/offsets").write([Int64(0), 2, 9]) }
        assertDataError(["/target/offsets ends at 9 but there are 3 tokens"]) { _ = try DataSplit(directory: path, split: "train") }
    }

    func testShardsWithDifferentTokenizers() throws {
        try writeSeq2Seq(pairs: [("ab", "cd")])
        let bpe = Tokenizer.bpe(BPE.train(texts: ["ab ab ab ab", "cd cd cd"], vocabularySize: 262))
        try writeSeq2Seq("train-00001.h5", pairs: [("ab", "cd")], tokenizer: bpe)
        assertDataError(["train-00001.h5", "tokenizer differs from train-00000.h5's"]) { _ = try DataSplit(directory: path, split: "train") }
    }

    /// A prepare --overwrite killed while renaming its files (a trial: kill -9 at the 11th rename) left two new train
    /// files beside two old ones, and training read the mix in silence. Each file says which prepare wrote it and how
    /// many files its split has: a split holding part of one prepare's files is refused; whole datasets are not.
    func testASplitMixingTwoPreparesIsRefused() throws {
        let documents: [[Int32]] = [[5, 6, 7, 8, 9, 10]]
        let old = ShardMembership(datasetID: "old", splitShards: 2), new = ShardMembership(datasetID: "new", splitShards: 2)
        try ShardWriter.writeLM(file("train-00000.h5"), documents: documents, tokenizer: .byte, membership: new)
        try ShardWriter.writeLM(file("train-00001.h5"), documents: documents, tokenizer: .byte, membership: old)
        assertDataError([path, "holds train files of 2 ddp prepares, not all of every one: 1 of the 2 files of dataset_id new (train-00000.h5); "
                         + "1 of the 2 files of dataset_id old (train-00001.h5)", "a prepare --overwrite stopped part-way",
                         "or files copied in from another dataset"]) {
            _ = try DataSplit(directory: path, split: "train", sequenceLength: 2)
        }
        try ShardWriter.writeLM(file("train-00001.h5"), documents: documents, tokenizer: .byte, membership: new)
        let whole = try DataSplit(directory: path, split: "train", sequenceLength: 2)
        XCTAssertEqual(whole.datasetIDs, ["new"])
        XCTAssertTrue(whole.partialPrepares.isEmpty)
        // Some of one dataset's files alone (a subset someone chose), and whole datasets put together, are read.
        try FileManager.default.removeItem(atPath: file("train-00001.h5"))
        let subset = try DataSplit(directory: path, split: "train", sequenceLength: 2)
        XCTAssertEqual(subset.shards.count, 1)
        XCTAssertEqual(subset.partialPrepares.map { "\($0.datasetID) \($0.present)/\($0.written)" }, ["new 1/2"], "noted by the trainer")
        try ShardWriter.writeLM(file("train-00001.h5"), documents: documents, tokenizer: .byte, membership: new)
        try ShardWriter.writeLM(file("train-00002.h5"), documents: documents, tokenizer: .byte, membership: ShardMembership(datasetID: "other", splitShards: 1))
        XCTAssertEqual(try DataSplit(directory: path, split: "train", sequenceLength: 2).datasetIDs, ["new", "other"])
        // Files without the attributes (written before them, or by hand) are not counted.
        try ShardWriter.writeLM(file("train-00003.h5"), documents: documents, tokenizer: .byte)
        XCTAssertEqual(try DataSplit(directory: path, split: "train", sequenceLength: 2).shards.count, 4)
    }

    /// Bytes changed on disk after writing: validation fails (Fletcher-32) instead of training on garbage.
    func testCorruptedShardIsDetected() throws {
        let tokens = (0..<5000).map { Int32(4 + ($0 * 7919) % 256) }
        try ShardWriter.writeLM(file("train-00000.h5"), documents: [tokens], tokenizer: .byte)
        let chunk = try XCTUnwrap(try File.open(file("train-00000.h5")).openDataset("tokens").storedChunks().first)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file("train-00000.h5"))))
        bytes[chunk.offset + chunk.size / 2] ^= 0x5A  // inside the stored (compressed, checksummed) chunk
        try Data(bytes).write(to: URL(fileURLWithPath: file("train-00000.h5")))
        assertDataError(["train-00000.h5", "cannot be read (damaged?)"]) { _ = try DataSplit(directory: path, split: "train", sequenceLength: 16) }
    }

    /// A dataset written by h5py from the README's schema reads, validates and batches in Swift.
    /// `ddp inspect` says "checksums verified" only for shards whose datasets carry Fletcher-32 checksums: ddp's own,
    /// not a file written to the README's schema without them (as h5py writes by default).
    func testPreviewSaysWhetherTheShardHasChecksums() throws {
        try writeSeq2Seq(pairs: [("ab", "ba"), ("cde", "edc")])
        XCTAssertEqual(try ShardPreview.read(file("train-00000.h5"))?.checksummed, true)
        let bare = file("bare.h5")
        do {
            let shard = try File.create(bare)
            try writeSchemaAttributes(shard, task: "seq2seq")
            for side in ["source", "target"] {
                try shard.createDataset("\(side)/tokens", type: .int32, shape: [3]).write([Int32(101), 102, 103])
                try shard.createDataset("\(side)/offsets", type: .int64, shape: [3]).write([Int64(0), 1, 3])
            }
        }
        let preview = try XCTUnwrap(try ShardPreview.read(bare))
        XCTAssertEqual(preview.count, 2)
        XCTAssertFalse(preview.checksummed)
    }

    func testDatasetWrittenByH5pyFromTheReadmeSchema() throws {
        guard let python = pythonWithH5py() else { throw XCTSkip("python3 with h5py is not installed: h5py-written data not checked") }
        let script = directory.appendingPathComponent("write.py").path
        try """
            import json, sys, h5py, numpy as np
            enc = lambda s: [b + 4 for b in s.encode("utf-8")]          # the byte tokenizer: id = byte + 4
            pairs = [("hello", "olleh"), ("abc", "cba"), ("ünï", "ïnü")]
            with h5py.File(sys.argv[1], "w") as f:
                f.attrs["format"] = "swiftddp-tokens"; f.attrs["version"] = 1; f.attrs["task"] = "seq2seq"
                f.attrs["vocab_size"] = 260; f.attrs["tokenizer"] = json.dumps({"kind": "byte"})
                for side, k in (("source", 0), ("target", 1)):
                    seqs = [enc(p[k]) for p in pairs]
                    f[f"{side}/tokens"] = np.array(sum(seqs, []), dtype=np.int32)
                    f[f"{side}/offsets"] = np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)
            """.write(toFile: script, atomically: true, encoding: .utf8)
        let result = try runProcess(python, [script, file("train-00000.h5")])
        XCTAssertEqual(result.status, 0, result.output)
        let split = try DataSplit(directory: path, split: "train")
        XCTAssertEqual(split.samples, 3)
        let (source, target) = try SampleReader(split: split).sample(2)
        XCTAssertEqual(split.tokenizer.decode(source), "ünï")
        XCTAssertEqual(split.tokenizer.decode(target), "ïnü")
    }
}
