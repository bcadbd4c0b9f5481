import Foundation
import TestSupport
import XCTest

/// `ddp prepare`, `ddp inspect` on data and `ddp bench data`, as users run them.
final class PrepareTests: XCTestCase {
    private var ddp: String { builtProduct("ddp") }
    private var directory: URL!
    private let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    override func setUpWithError() throws { directory = try makeTemporaryDirectory("ddp-prepare") }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    private func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    private func prepare(_ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws -> ProcessResult {
        let result = try runProcess(ddp, ["prepare"] + arguments)
        XCTAssertEqual(result.status, 0, result.output, file: file, line: line)
        return result
    }

    func testSyntheticTasksAreDeterministicByteForByte() throws {
        for task in ["reverse", "copy", "sort", "addition"] {
            let result = try prepare(["--synthetic", task, "--samples", "300", "--output", path("\(task)-a"), "--seed", "7"])
            XCTAssertTrue(result.stdout.contains("train       285 pairs"), result.stdout)
            _ = try prepare(["--synthetic", task, "--samples", "300", "--output", path("\(task)-b"), "--seed", "7"])
            for name in ["train-00000.h5", "valid-00000.h5"] {
                XCTAssertEqual(FileManager.default.contents(atPath: path("\(task)-a/\(name)")),
                               FileManager.default.contents(atPath: path("\(task)-b/\(name)")), "\(task) \(name) differs between runs")
            }
        }
        let inspect = try runProcess(ddp, ["inspect", path("reverse-a/train-00000.h5")])
        XCTAssertTrue(inspect.stdout.contains("data shard  seq2seq, 285 pairs") && inspect.stdout.contains("checksums verified"), inspect.stdout)
        XCTAssertTrue(inspect.stdout.contains("tokenizer   byte, vocab_size 260"), inspect.stdout)
        let example = try XCTUnwrap(inspect.stdout.split(separator: "\n").last { $0.contains("→") })
        let sides = example.split(separator: "→").map { $0.trimmingCharacters(in: .whitespaces) }
        XCTAssertEqual(String(sides[0].reversed()), sides[1], "reverse: the target is the source reversed")
    }

    func testLanguageModellingWithBPEAndShards() throws {
        let text = (0..<60).map { "Paragraph \($0): the quick brown fox jumps over the lazy dog, again and again.\nSecond line." }
            .joined(separator: "\n\n")
        try text.write(toFile: path("corpus.txt"), atomically: true, encoding: .utf8)
        let result = try prepare(["--task", "lm", "--input", path("corpus.txt"), "--output", path("lm"), "--tokenizer", "bpe",
                                  "--vocab-size", "300", "--shards", "3", "--valid-fraction", "0.1"])
        XCTAssertTrue(result.stdout.contains("tokenizer bpe (vocab_size 300)"), result.stdout)
        XCTAssertTrue(result.stdout.contains("train       54 documents"), result.stdout)
        XCTAssertTrue(result.stdout.contains("3 shard(s)"), result.stdout)
        let inspect = try runProcess(ddp, ["inspect", path("lm/train-00001.h5")])
        XCTAssertTrue(inspect.stdout.contains("Paragraph"), "documents decode back to text:\n\(inspect.stdout)")
    }

    /// h5py reads what `ddp prepare` wrote, following the README schema.
    func testH5pyReadsPreparedShards() throws {
        guard let python = pythonWithH5py() else { throw XCTSkip("python3 with h5py is not installed: h5py reading prepared data not checked") }
        try "hallo welt\nguten morgen\n".write(toFile: path("src.txt"), atomically: true, encoding: .utf8)
        try "hello world\ngood morning\n".write(toFile: path("tgt.txt"), atomically: true, encoding: .utf8)
        _ = try prepare(["--source", path("src.txt"), "--target", path("tgt.txt"), "--output", path("pairs"), "--valid-fraction", "0"])
        try """
            import json, sys, h5py
            with h5py.File(sys.argv[1], "r") as f:
                # String attributes are fixed-length UTF-8 (kept in the checksummed object header): h5py gives bytes.
                assert f.attrs["format"].decode() == "swiftddp-tokens" and f.attrs["version"] == 1 and f.attrs["task"].decode() == "seq2seq"
                assert json.loads(f.attrs["tokenizer"])["kind"] == "byte" and f.attrs["vocab_size"] == 260
                dec = lambda ids: bytes(int(i) - 4 for i in ids).decode("utf-8")
                for side in ("source", "target"):
                    tokens, offsets = f[side + "/tokens"][:], f[side + "/offsets"][:]
                    print(side, [dec(tokens[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)])
            """.write(toFile: path("read.py"), atomically: true, encoding: .utf8)
        let result = try runProcess(python, [path("read.py"), path("pairs/train-00000.h5")])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.stdout.contains("source ['hallo welt', 'guten morgen']"), result.stdout)
        XCTAssertTrue(result.stdout.contains("target ['hello world', 'good morning']"), result.stdout)
    }

    func testLongPairsDroppedAndCountedOrRefused() throws {
        try "short\tkurz\na much longer source sentence\tx\n".write(toFile: path("pairs.tsv"), atomically: true, encoding: .utf8)
        let dropped = try prepare(["--tsv", path("pairs.tsv"), "--output", path("tsv"), "--max-length", "10", "--valid-fraction", "0"])
        XCTAssertTrue(dropped.stdout.contains("dropped     1 pairs longer than --max-length"), dropped.stdout)
        XCTAssertTrue(dropped.stdout.contains("train       1 pairs"), dropped.stdout)
        let refused = try runProcess(ddp, ["prepare", "--tsv", path("pairs.tsv"), "--output", path("tsv2"), "--max-length", "10", "--fail-on-long"])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.stderr.contains("pair 2 has 29 source and 1 target tokens, over --max-length 10"), refused.output)
    }

    func testBadInputsNameTheFile() throws {
        func failure(_ arguments: [String], _ expected: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let result = try runProcess(ddp, ["prepare"] + arguments)
            XCTAssertNotEqual(result.status, 0, file: file, line: line)
            XCTAssertTrue(result.stderr.contains(expected), "'\(expected)' missing from:\n\(result.stderr)", file: file, line: line)
        }
        try failure(["--task", "lm", "--input", "/nonexistent/corpus.txt", "--output", path("x")], "/nonexistent/corpus.txt: does not exist")
        // An --output that is a dangling link says so.
        try FileManager.default.createSymbolicLink(atPath: path("dangling"), withDestinationPath: path("gone"))
        try failure(["--synthetic", "reverse", "--samples", "10", "--output", path("dangling")],
                    "\(path("dangling")): cannot be the output directory: it is a link to \(path("gone")), which does not exist")
        // Synthetic pairs are made in memory: a count that would exhaust it is refused, not a crash.
        try failure(["--synthetic", "reverse", "--samples", "1000000000", "--output", path("x")],
                    "--samples 1000000000 is more than the 10000000 pairs --synthetic makes")
        try failure(["--synthetic", "reverse", "--samples", "5000000", "--max-length", "100", "--output", path("x")],
                    "--samples 5000000 x --max-length 100 is more than the 200000000 characters --synthetic makes")
        try "a\nb\nc\n".write(toFile: path("three.txt"), atomically: true, encoding: .utf8)
        try "a\nb\n".write(toFile: path("two.txt"), atomically: true, encoding: .utf8)
        try failure(["--source", path("three.txt"), "--target", path("two.txt"), "--output", path("x")], "has 2 lines but")
        try "no tab here\n".write(toFile: path("bad.tsv"), atomically: true, encoding: .utf8)
        try failure(["--tsv", path("bad.tsv"), "--output", path("x")], "bad.tsv: line 1 has no tab")
        try "a\tb\nc\td\te\n".write(toFile: path("three.tsv"), atomically: true, encoding: .utf8)
        try failure(["--tsv", path("three.tsv"), "--output", path("x")], "three.tsv: line 2 has 2 tabs; a line is source<TAB>target, one tab")
        // Empty sides are kept and counted.
        try "a\tb\nc\t\n\tf\ng\th\n".write(toFile: path("empty.tsv"), atomically: true, encoding: .utf8)
        let empty = try prepare(["--tsv", path("empty.tsv"), "--output", path("empty"), "--valid-fraction", "0"])
        XCTAssertTrue(empty.stdout.contains("empty       2 pairs kept with an empty source or target (the first is pair 2)"), empty.output)
        try Foundation.Data([0xFF, 0xFE, 0x00]).write(to: URL(fileURLWithPath: path("binary.txt")))
        try failure(["--task", "lm", "--input", path("binary.txt"), "--output", path("x")], "binary.txt: is not UTF-8 text")
        try failure(["--output", path("x")], "Give exactly one input")
        try failure(["--synthetic", "reverse", "--tsv", path("bad.tsv"), "--output", path("x")], "Give exactly one input")
        try failure(["--synthetic", "reverse", "--output", path("x"), "--tokenizer", "bpe", "--vocab-size", "100"], "--vocab-size must exceed 260")
        try failure(["--synthetic", "shuffle", "--output", path("x")], "shuffle")
        // Options that would do nothing are refused (a trial found them ignored without a word).
        try "some text\n".write(toFile: path("doc.txt"), atomically: true, encoding: .utf8)
        try failure(["--task", "lm", "--input", path("doc.txt"), "--output", path("x"), "--max-length", "8"], "--max-length is for pairs (seq2seq)")
        try failure(["--tsv", path("empty.tsv"), "--output", path("x"), "--fail-on-long"], "--fail-on-long needs --max-length")
        try failure(["--synthetic", "reverse", "--output", path("x"), "--max-length", "8", "--fail-on-long"], "--fail-on-long is for text pairs")
        try failure(["--synthetic", "reverse", "--output", path("x"), "--fail-on-long"], "--fail-on-long is for text pairs")
        try failure(["--task", "lm", "--input", path("doc.txt"), "--output", path("x"), "--fail-on-long"], "--fail-on-long is for pairs (seq2seq)")
        XCTAssertFalse(empty.stdout.contains("dropped"), "no --max-length, nothing said about dropping: \(empty.output)")
        // A BPE that ends below the --vocab-size asked says so.
        let fewMerges = try prepare(["--tsv", path("empty.tsv"), "--output", path("bpe"), "--tokenizer", "bpe", "--vocab-size", "5000"])
        XCTAssertTrue(fewMerges.stdout.contains("note        --vocab-size 5000 was asked; training stopped at "),
                      fewMerges.output)
        // A FIFO waits for a writer that may never come: refused. A pipe a shell hands over has one: read.
        XCTAssertEqual(mkfifo(path("fifo.txt"), 0o644), 0)
        try failure(["--task", "lm", "--input", path("fifo.txt"), "--output", path("x")], "fifo.txt: is not a regular file (a FIFO, device or socket)")
        try failure(["--task", "lm", "--input", "/dev/zero", "--output", path("x")], "/dev/zero: is not a regular file")
        try "one document\n\nanother one\n".write(toFile: path("corpus.txt"), atomically: true, encoding: .utf8)
        let piped = try runProcess("/bin/sh", ["-c", "cat \"$1\" | \"$0\" prepare --task lm --input /dev/stdin --output \"$2\" --valid-fraction 0",
                                               ddp, path("corpus.txt"), path("piped")])
        XCTAssertEqual(piped.status, 0, piped.output)
        let direct = try prepare(["--task", "lm", "--input", path("corpus.txt"), "--output", path("direct"), "--valid-fraction", "0"])
        XCTAssertEqual(piped.stdout.split(separator: "\n").filter { $0.hasPrefix("train") },
                       direct.stdout.split(separator: "\n").filter { $0.hasPrefix("train") }, "the same text through a pipe")
        // "-" is a path like any other, and its refusal says how to give standard input.
        let dash = try runProcess(ddp, ["prepare", "--task", "lm", "--input", "-", "--output", path("dash")])
        XCTAssertEqual(dash.status, 1, dash.output)
        XCTAssertTrue(dash.stderr.contains("-: does not exist (for standard input, give /dev/stdin)"), dash.output)
        // More text than memory allows (here under ulimit -v) is refused by file before it is read whole, a pipe's too.
        try String(repeating: String(repeating: "x", count: 99) + "\n", count: 400_000).write(toFile: path("big.txt"), atomically: true, encoding: .utf8)
        for input in ["\"$1\"", "/dev/stdin < \"$1\"", "/dev/stdin"] {
            let feed = input == "/dev/stdin" ? "cat \"$1\" | " : ""
            let big = try runProcess("/bin/sh", ["-c", "ulimit -v 600000; \(feed)exec \"$0\" prepare --task lm --input \(input) --output \"$2\"",
                                                 ddp, path("big.txt"), path("big")], timeout: 120)
            XCTAssertEqual(big.status, 1, "\(input): \(big.output)")
            XCTAssertTrue(big.stderr.contains("is more text than fits in memory here: more than")
                          && big.stderr.contains("bytes of memory per byte and") && big.stderr.contains("(ulimit -v"), "\(input): \(big.output)")
        }
        // Many short lines cost more than their bytes: counted once read. A small corpus prepares under the same limit.
        // (3M lines cost 768 MB at 256 bytes each, near the whole 800 MB limit, far more than what the process has left
        // once its libraries, OpenBLAS's buffers and the signal handlers' threads are mapped; their 12 MB at 12 bytes a
        // byte, 144 MB, fits in what is left, so the byte count passes and the line count refuses.)
        try String(repeating: "a\tb\n", count: 3_000_000).write(toFile: path("short.tsv"), atomically: true, encoding: .utf8)
        let short = try runProcess("/bin/sh", ["-c", "ulimit -v 800000; exec \"$0\" prepare --tsv \"$1\" --output \"$2\"", ddp, path("short.tsv"),
                                               path("short")], timeout: 120)
        XCTAssertEqual(short.status, 1, short.output)
        XCTAssertTrue(short.stderr.contains("short.tsv: is more text than fits in memory here: 3000000 lines in 12000000 bytes"), short.output)
        let small = try runProcess("/bin/sh", ["-c", "ulimit -v 800000; exec \"$0\" prepare --task lm --input \"$1\" --output \"$2\"", ddp,
                                               path("corpus.txt"), path("small")], timeout: 120)
        XCTAssertEqual(small.status, 0, small.output)
    }

    func testBenchDataReportsThroughput() throws {
        _ = try prepare(["--synthetic", "copy", "--samples", "200", "--output", path("copy"), "--max-length", "14"])
        let result = try runProcess(ddp, ["bench", "data", "--data", path("copy"), "--config",
                                          repository.appendingPathComponent("Configs/tiny.yaml").path, "--batches", "20", "--json"])
        XCTAssertEqual(result.status, 0, result.output)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Foundation.Data(result.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(json["batches"] as? Int, 20)
        XCTAssertGreaterThan(try XCTUnwrap(json["tokens_per_s"] as? Double), 0)
        // Copies of 1-14 letters: random batches of 4 pad; batches of similar length (a budget of 4 x 16 positions) hardly.
        let fixed = try XCTUnwrap(json["padding_share_batch_size"] as? Double), budget = try XCTUnwrap(json["padding_share_max_tokens"] as? Double)
        XCTAssertEqual(json["max_tokens"] as? Int, 64)
        XCTAssertGreaterThan(fixed, 0.2)
        XCTAssertLessThan(budget, 0.05)
        // Length groups: 4 micro-batches per batch, each of one length group, so the padding stays low.
        let grouped = try runProcess(ddp, ["bench", "data", "--data", path("copy"), "--config", repository.appendingPathComponent("Configs/tiny.yaml").path,
                                           "--set", "training.max_tokens=128", "--set", "training.length_groups=4", "--batches", "5", "--json"])
        XCTAssertEqual(grouped.status, 0, grouped.output)
        let groupedJSON = try XCTUnwrap(try JSONSerialization.jsonObject(with: Foundation.Data(grouped.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(groupedJSON["length_groups"] as? Int, 4)
        XCTAssertEqual(groupedJSON["batches"] as? Int, 5)
        XCTAssertEqual(groupedJSON["micro_batches"] as? Int, 20, "5 batches of 4 micro-batches")
        XCTAssertLessThan(try XCTUnwrap(groupedJSON["padding_share_max_tokens"] as? Double), 0.05)
        let overGroup = try runProcess(ddp, ["bench", "data", "--data", path("copy"), "--config", repository.appendingPathComponent("Configs/tiny.yaml").path,
                                             "--set", "training.max_tokens=40", "--set", "training.length_groups=4"])
        XCTAssertNotEqual(overGroup.status, 0)
        XCTAssertTrue(overGroup.stderr.contains("train-00000.h5") && overGroup.stderr.contains("(training.max_tokens 40 / 4 = 10)")
                      && overGroup.stderr.contains("lower training.length_groups"), overGroup.output)
        // Data of the other task is refused by name (lm data for tiny.yaml's encoder-decoder model).
        try "a few words\n\nand a few more words here".write(toFile: path("corpus.txt"), atomically: true, encoding: .utf8)
        _ = try prepare(["--task", "lm", "--input", path("corpus.txt"), "--output", path("lm"), "--valid-fraction", "0"])
        let wrongTask = try runProcess(ddp, ["bench", "data", "--data", path("lm"), "--config", repository.appendingPathComponent("Configs/tiny.yaml").path])
        XCTAssertEqual(wrongTask.status, 1, wrongTask.output)
        XCTAssertTrue(wrongTask.stderr.contains("\(path("lm")): holds lm data; model.kind encoder-decoder trains on seq2seq data"), wrongTask.output)
        let missing = try runProcess(ddp, ["bench", "data", "--data", path("nope"), "--config",
                                           repository.appendingPathComponent("Configs/tiny.yaml").path])
        XCTAssertTrue(missing.stderr.contains("no such data directory"), missing.output)
    }
}
