import Foundation
import Basics
import HDF5
import TestSupport
import XCTest

/// `ddp eval`, `generate`, `inspect` and `export` on checkpoints that real (small) training runs wrote.
final class CheckpointToolsTests: XCTestCase {
    /// Trained on first use, once for all tests of the class: a seq2seq run (reverse strings) and a language-model
    /// run on text.
    private static let runs = PreparedDirectory("ddp-tools") { directory in
        func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
        try runDDPOrThrow(["prepare", "--synthetic", "reverse", "--samples", "600", "--max-length", "8", "--valid-fraction", "0.1",
                           "--output", path("reverse")])
        try """
            model: {kind: encoder-decoder, vocab_size: 260, d_model: 32, heads: 4, encoder_layers: 1, decoder_layers: 1, d_ff: 64,
                    activation: relu, norm: pre, positions: sinusoidal, max_length: 16, dropout: 0.0, tied_embeddings: true}
            data: {directory: \(path("reverse")), source_length: 9, target_length: 9}
            training: {batch_size: 16, steps: 60, seed: 1, threads: 1, log_every: 20}
            optimizer: {lr: 3.0e-3}
            eval: {every: 60, max_batches: 0, decode_samples: 100000}
            checkpoint: {every: 30, keep: 3}
            """.write(toFile: path("reverse.yaml"), atomically: true, encoding: .utf8)
        try runDDPOrThrow(["train", "--config", path("reverse.yaml"), "--run-dir", path("reverse-run")])

        let text = (0..<80).map { "Document \($0): the quick brown fox jumps over the lazy dog, \($0 * 7) times.\n\n" }.joined()
        try text.write(toFile: path("lm.txt"), atomically: true, encoding: .utf8)
        try runDDPOrThrow(["prepare", "--task", "lm", "--input", path("lm.txt"), "--valid-fraction", "0.2", "--output", path("lm")])
        try """
            model: {kind: decoder-only, vocab_size: 260, d_model: 32, heads: 4, encoder_layers: 0, decoder_layers: 2, d_ff: 64,
                    activation: gelu, norm: pre, positions: learned, max_length: 32, dropout: 0.0, tied_embeddings: false}
            data: {directory: \(path("lm")), target_length: 32}
            training: {batch_size: 8, steps: 30, seed: 2, threads: 1, log_every: 10}
            optimizer: {lr: 3.0e-3}
            eval: {every: 30, max_batches: 0}
            """.write(toFile: path("lm.yaml"), atomically: true, encoding: .utf8)
        try runDDPOrThrow(["train", "--config", path("lm.yaml"), "--run-dir", path("lm-run")])
    }
    private var ddp: String { builtProduct("ddp") }

    private static func path(_ name: String) -> String { runs.path(name) }
    private func path(_ name: String) -> String { Self.path(name) }

    override class func tearDown() {
        try? FileManager.default.removeItem(at: runs.directory)
        super.tearDown()
    }

    override func setUpWithError() throws {
        if let failure = Self.runs.failure { XCTFail("training the checkpoints failed: \(failure)") }
        try XCTSkipIf(Self.runs.failure != nil)
    }

    private func json(_ result: ProcessResult, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        XCTAssertEqual(result.status, 0, result.output, file: file, line: line)
        let lastLine = try XCTUnwrap(result.stdout.split(separator: "\n").last, result.output, file: file, line: line)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Foundation.Data(lastLine.utf8)) as? [String: Any], file: file, line: line)
    }

    private func eval(_ arguments: [String], ranks: Int = 1) throws -> [String: Any] {
        let full = ["eval", "--json"] + arguments
        return try json(ranks == 1 ? try runProcess(ddp, full, environment: mpiEnvironment, timeout: 300)
                                   : try runUnderMPI(ranks: ranks, ddp, full, timeout: 300))
    }

    private func assertSameNumbers(_ a: [String: Any], _ b: [String: Any], relative: Double, _ what: String,
                                   file: StaticString = #filePath, line: UInt = #line) {
        for key in ["loss", "perplexity", "token_accuracy", "exact_match", "bleu", "chrf"]
        where (a[key] != nil || b[key] != nil) && !(a[key] is NSNull) {
            guard let x = a[key] as? Double, let y = b[key] as? Double else {
                XCTFail("\(what): \(key) is \(String(describing: a[key])) and \(String(describing: b[key]))", file: file, line: line)
                continue
            }
            XCTAssertEqual(x, y, accuracy: max(abs(y), 1) * relative, "\(what): \(key)", file: file, line: line)
        }
        for key in ["tokens", "sequences", "decoded"] { XCTAssertEqual(a[key] as? Int, b[key] as? Int, "\(what): \(key)", file: file, line: line) }
        for key in ["bleu_signature", "bleu_note", "chrf_signature"] {
            XCTAssertEqual(a[key] as? String, b[key] as? String, "\(what): \(key)", file: file, line: line)
        }
    }

    // MARK: eval

    /// The trainer evaluated the whole valid split at step 60 (eval.max_batches 0, every example decoded): `ddp eval`
    /// of the step-60 checkpoint must say the same.
    func testEvalEqualsTheTrainersOwnEvaluation() throws {
        let metrics = try String(contentsOfFile: path("reverse-run/metrics.jsonl"), encoding: .utf8).split(separator: "\n")
            .compactMap { try JSONSerialization.jsonObject(with: Foundation.Data($0.utf8)) as? [String: Any] }
        let trainer = try XCTUnwrap(metrics.last { $0["valid_loss"] != nil })
        XCTAssertEqual(trainer["step"] as? Int, 60)
        let result = try eval(["--checkpoint", path("reverse-run/checkpoint-00000060.h5"), "--data", path("reverse")])
        XCTAssertEqual(result["step"] as? Int, 60)
        XCTAssertEqual(result["loss"] as! Double, trainer["valid_loss"] as! Double, accuracy: 1e-9 * (trainer["valid_loss"] as! Double))
        XCTAssertEqual(result["token_accuracy"] as! Double, trainer["valid_token_accuracy"] as! Double, accuracy: 1e-12)
        XCTAssertEqual(result["exact_match"] as! Double, trainer["valid_exact_match"] as! Double, accuracy: 1e-12)
        XCTAssertEqual(result["chrf"] as! Double, trainer["valid_chrf"] as! Double, accuracy: 1e-9)
        // One-word outputs: BLEU-4 has no 2-grams to count, so sacrebleu's value is 0 whatever the output, and it says why.
        XCTAssertEqual(result["bleu"] as? Double, 0)
        XCTAssertEqual(trainer["valid_bleu"] as? Double, 0)
        XCTAssertEqual(result["bleu_note"] as? String, trainer["valid_bleu_note"] as? String)
        XCTAssertEqual(result["tokens"] as? Int, trainer["valid_tokens"] as? Int)
        XCTAssertEqual(result["sequences"] as? Int, 60, "every valid example once")
        XCTAssertEqual(result["decoded"] as? Int, 60)
        // A run directory means its latest checkpoint (the same step here), and the table names the numbers.
        let table = try runProcess(ddp, ["eval", "--checkpoint", path("reverse-run")], environment: mpiEnvironment)
        XCTAssertEqual(table.status, 0, table.output)
        for label in ["loss", "perplexity", "token accuracy", "exact match", "BLEU", "chrF", "checkpoint-00000060.h5"] {
            XCTAssertTrue(table.stdout.contains(label), table.stdout)
        }
        // So does the run's `latest` file itself (a trial's eval --checkpoint RUN/latest was told the file was "missing or truncated?").
        let named = try eval(["--checkpoint", path("reverse-run/latest"), "--data", path("reverse")])
        XCTAssertEqual(named["checkpoint"] as? String, path("reverse-run/checkpoint-00000060.h5"))
        XCTAssertEqual(named["loss"] as? Double, result["loss"] as? Double)
        // Every command that takes a checkpoint takes it, a link to it too (the run's directory is the link target's).
        try FileManager.default.createDirectory(atPath: path("elsewhere"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: path("elsewhere/latest"), withDestinationPath: "../reverse-run/latest")
        let linked = try eval(["--checkpoint", path("elsewhere/latest"), "--data", path("reverse")])
        XCTAssertEqual(linked["checkpoint"] as? String, path("elsewhere/../reverse-run/checkpoint-00000060.h5"))
        let inspect = try runProcess(ddp, ["inspect", path("reverse-run/latest")])
        XCTAssertEqual(inspect.status, 0, inspect.output)
        XCTAssertTrue(inspect.stdout.hasPrefix(path("reverse-run/checkpoint-00000060.h5") + "  HDF5 file"), inspect.output)
        try "one line\n".write(toFile: path("tokenize.txt"), atomically: true, encoding: .utf8)
        let prepared = try runProcess(ddp, ["prepare", "--task", "lm", "--input", path("tokenize.txt"), "--valid-fraction", "0",
                                            "--tokenizer-from", path("reverse-run/latest"), "--output", path("tokenized")])
        XCTAssertEqual(prepared.status, 0, prepared.output)
    }

    func testEvalUnderMPIGivesTheSameNumbersAsAlone() throws {
        for (run, extra) in [("reverse-run", [String]()), ("lm-run", []), ("reverse-run", ["--decode", "beam", "--beam-size", "2"])] {
            let alone = try eval(["--checkpoint", path(run), "--batch-size", "7"] + extra)
            let two = try eval(["--checkpoint", path(run), "--batch-size", "7"] + extra, ranks: 2)
            // Ranks hold differently padded batches, so float rounding of the per-token losses differs slightly.
            assertSameNumbers(two, alone, relative: 1e-7, "\(run) \(extra) on 2 ranks")
            let three = try eval(["--checkpoint", path(run), "--batch-size", "7"] + extra, ranks: 3)
            assertSameNumbers(three, alone, relative: 1e-7, "\(run) \(extra) on 3 ranks")
        }
    }

    /// A trial's findings: ranks that read another checkpoint, data or input (node-local paths that differ) had their
    /// sums combined in silence (eval printed a loss no checkpoint has), or, for embed's lines, corrupted memory.
    /// Every rank now compares what it read before anything is combined, and stops with one sentence.
    func testRanksThatReadOtherFilesStopBeforeTheirSumsMeet() throws {
        guard let mpirun = findOnPath("mpirun") else { throw XCTSkip("mpirun is not installed") }
        func job(_ first: [String], _ second: [String]) throws -> ProcessResult {
            let result = try runProcess(mpirun, ["--oversubscribe", "-np", "1", ddp] + first + [":", "-np", "1", ddp] + second,
                                        environment: mpiEnvironment, timeout: 300)
            XCTAssertFalse(result.timedOut || result.signaled, "hung or crashed:\n\(result.output)")
            XCTAssertEqual(result.status, 1, result.output)
            return result
        }
        let checkpoints = try FileManager.default.contentsOfDirectory(atPath: path("reverse-run")).filter { $0.hasPrefix("checkpoint-") }.sorted()
        XCTAssertGreaterThanOrEqual(checkpoints.count, 2)
        let otherCheckpoint = try job(["eval", "--checkpoint", path("reverse-run/" + checkpoints[0])],
                                      ["eval", "--checkpoint", path("reverse-run/" + checkpoints[1])])
        XCTAssertTrue(otherCheckpoint.stderr.contains("Error: ranks disagree on the checkpoint (its config and parameters): rank 1 differs "
                                                      + "from rank 0"), otherCheckpoint.output)
        let otherSplit = try job(["eval", "--checkpoint", path("lm-run")], ["eval", "--checkpoint", path("lm-run"), "--split", "train"])
        XCTAssertTrue(otherSplit.stderr.contains("Error: ranks disagree on the data evaluated"), otherSplit.output)
        let otherDecoding = try job(["eval", "--checkpoint", path("reverse-run")], ["eval", "--checkpoint", path("reverse-run"), "--decode", "beam"])
        XCTAssertTrue(otherDecoding.stderr.contains("Error: ranks disagree on the evaluation options"), otherDecoding.output)
        try "abc\nhgfe\nabc\n".write(toFile: path("three.txt"), atomically: true, encoding: .utf8)
        try "one\n".write(toFile: path("one.txt"), atomically: true, encoding: .utf8)
        let embed = ["embed", "--checkpoint", path("reverse-run"), "--output", path("disagree.h5"), "--input"]
        let otherLines = try job(embed + [path("three.txt")], embed + [path("one.txt")])
        XCTAssertTrue(otherLines.stderr.contains("Error: ranks disagree on the lines of --input (their tokens): rank 1 differs from rank 0"),
                      otherLines.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("disagree.h5")), "nothing written")
    }

    // MARK: sacrebleu's scores and the translations written out

    /// Parallel text with several words per line (spaces, punctuation, digits), at most 8 characters as the run's
    /// source_length allows: the reversing model's outputs then have words for BLEU to count.
    private func writeParallelText() throws -> (source: String, target: String, pairs: [(String, String)]) {
        let sources = ["ab cd", "a b c d", "hi, yo.", "x-y z", "ab 12 c", "abc def", "g h", "1.5 a b", "de f gh", "a&b <c>",
                       "q r s", "no", "a \"b\" c", "ef gh", "cab bad", "a, b, c"]
        let pairs = sources.map { ($0, String($0.reversed())) }
        try pairs.map(\.0).joined(separator: "\n").appending("\n").write(toFile: path("pairs.src"), atomically: true, encoding: .utf8)
        try pairs.map(\.1).joined(separator: "\n").appending("\n").write(toFile: path("pairs.tgt"), atomically: true, encoding: .utf8)
        return (path("pairs.src"), path("pairs.tgt"), pairs)
    }

    private func lines(_ file: String) throws -> [String] {
        try String(contentsOfFile: file, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
    }

    /// --hypotheses, --references and --sources hold one line per example in split order, the same under 1, 2 and 3
    /// ranks; the references and sources are the text's own lines, and `ddp generate` gives the hypotheses line by line.
    func testWrittenTranslationsAreInSplitOrderOnAnyRankCount() throws {
        let text = try writeParallelText()
        var written: [[String]] = []
        for ranks in [1, 2, 3] {
            let files = ["hyp", "ref", "src"].map { path("out-\(ranks).\($0)") }
            let arguments = ["--checkpoint", path("reverse-run"), "--source", text.source, "--target", text.target, "--batch-size", "3",
                             "--hypotheses", files[0], "--references", files[1], "--sources", files[2]]
            let result = try eval(arguments, ranks: ranks)
            XCTAssertEqual(result["decoded"] as? Int, text.pairs.count, "\(ranks) ranks")
            let contents = try files.map(lines)
            XCTAssertEqual(contents[1], text.pairs.map(\.1), "references on \(ranks) ranks")
            XCTAssertEqual(contents[2], text.pairs.map(\.0), "sources on \(ranks) ranks")
            XCTAssertEqual(contents[0].count, text.pairs.count, "hypotheses on \(ranks) ranks")
            if let first = written.first { XCTAssertEqual(contents[0], first, "hypotheses on \(ranks) ranks against 1 rank") }
            written.append(contents[0])
        }
        // A path that is a symbolic link is written through (the link stays).
        try FileManager.default.createSymbolicLink(atPath: path("linked.hyp"), withDestinationPath: path("out-1.src"))
        _ = try eval(["--checkpoint", path("reverse-run"), "--source", text.source, "--target", text.target, "--batch-size", "3",
                      "--hypotheses", path("linked.hyp"), "--references", path("out-1.ref")], ranks: 1)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: path("linked.hyp")), path("out-1.src"))
        XCTAssertEqual(try lines(path("out-1.src")), written[0], "the hypotheses went through the link")
        XCTAssertEqual(try lines(path("out-1.ref")), text.pairs.map(\.1))
        let generated = try runProcess(ddp, ["generate", "--checkpoint", path("reverse-run")],
                                       standardInput: text.pairs.map(\.0).joined(separator: "\n") + "\n")
        XCTAssertEqual(generated.status, 0, generated.output)
        XCTAssertEqual(generated.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init), written[0])
    }

    /// BLEU and chrF of the parallel text under each BLEU tokenizer, with the hypotheses written to `scored-TOK.hyp`;
    /// every JSON report carries sacrebleu's signatures, `tok:` following --bleu-tokenize.
    private func scoresOfParallelText(_ text: (source: String, target: String, pairs: [(String, String)])) throws
        -> [String: (bleu: Double, chrF: Double)] {
        var scores: [String: (bleu: Double, chrF: Double)] = [:]
        for tokenize in ["13a", "none", "char", "intl"] {
            let result = try eval(["--checkpoint", path("reverse-run"), "--source", text.source, "--target", text.target,
                                   "--bleu-tokenize", tokenize, "--hypotheses", path("scored-\(tokenize).hyp")])
            XCTAssertEqual(result["bleu_signature"] as? String, "nrefs:1|case:mixed|eff:no|tok:\(tokenize)|smooth:exp|version:2.6.0")
            XCTAssertEqual(result["chrf_signature"] as? String, "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0")
            scores[tokenize] = (try XCTUnwrap(result["bleu"] as? Double, "\(result)"), try XCTUnwrap(result["chrf"] as? Double))
        }
        return scores
    }

    /// Every BLEU and chrF figure comes with sacrebleu's signature: the table, --json and metrics.jsonl; the
    /// tokenizer follows --bleu-tokenize.
    func testScoresCarrySacrebleusSignatures() throws {
        let text = try writeParallelText()
        let scores = try scoresOfParallelText(text)
        let table = try runProcess(ddp, ["eval", "--checkpoint", path("reverse-run"), "--source", text.source, "--target", text.target])
        XCTAssertEqual(table.status, 0, table.output)
        XCTAssertTrue(table.stdout.contains(String(format: "BLEU            %.2f  BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0",
                                                   scores["13a"]?.bleu ?? -1)), table.stdout)
        XCTAssertTrue(table.stdout.contains("chrF2|nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0"), table.stdout)
        let metrics = try String(contentsOfFile: path("reverse-run/metrics.jsonl"), encoding: .utf8).split(separator: "\n")
            .compactMap { try JSONSerialization.jsonObject(with: Foundation.Data($0.utf8)) as? [String: Any] }
        let evaluation = try XCTUnwrap(metrics.last { $0["valid_loss"] != nil })
        XCTAssertEqual(evaluation["valid_bleu_signature"] as? String, "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0")
        XCTAssertEqual(evaluation["valid_chrf_signature"] as? String, "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0")
    }

    /// sacrebleu's command line, given the files `ddp eval` wrote, prints the numbers `ddp eval` printed, under every
    /// tokenizer (skips, saying so, where sacrebleu is not installed).
    func testSacrebleuScoresTheWrittenFilesAsEvalDid() throws {
        guard let python = pythonWithSacrebleu() else {
            throw XCTSkip("sacrebleu is not installed (set SWIFTDDP_PYTHON to a python with sacrebleu to score the written files with it)")
        }
        let text = try writeParallelText()
        for (tokenize, ours) in try scoresOfParallelText(text) {
            let sacrebleu = try runProcess(python, ["-m", "sacrebleu", text.target, "-i", path("scored-\(tokenize).hyp"), "--tokenize", tokenize,
                                                    "-m", "bleu", "chrf", "-b", "-w", "4"])
            XCTAssertEqual(sacrebleu.status, 0, sacrebleu.output)
            // With -b and two metrics sacrebleu prints a JSON list of the two scores.
            let numbers = sacrebleu.stdout.split(whereSeparator: { "[],\n ".contains($0) }).compactMap { Double($0) }
            XCTAssertEqual(numbers.count, 2, sacrebleu.output)
            // Printed with 4 decimals (-w 4): equal to that rounding.
            XCTAssertEqual(numbers.first ?? -1, ours.bleu, accuracy: 1e-4, "BLEU, tok:\(tokenize)")
            XCTAssertEqual(numbers.last ?? -1, ours.chrF, accuracy: 1e-4, "chrF")
        }
    }

    func testTranslationOutputsRefuseWhatTheyCannotWrite() throws {
        let text = try writeParallelText()
        let base = ["eval", "--checkpoint", path("reverse-run"), "--source", text.source, "--target", text.target]
        let overInput = try runProcess(ddp, base + ["--hypotheses", text.source])
        XCTAssertNotEqual(overInput.status, 0)
        XCTAssertTrue(overInput.stderr.contains(text.source) && overInput.stderr.contains("input"), overInput.output)
        XCTAssertEqual(try lines(text.source).count, text.pairs.count, "the input is intact")
        let same = try runProcess(ddp, base + ["--hypotheses", path("x.txt"), "--references", path("x.txt")])
        XCTAssertNotEqual(same.status, 0)
        XCTAssertTrue(same.stderr.contains("--hypotheses and --references name the same file"), same.output)
        let none = try runProcess(ddp, base + ["--hypotheses", path("y.txt"), "--max-decode", "0"])
        XCTAssertNotEqual(none.status, 0)
        XCTAssertTrue(none.stderr.contains("--max-decode 0"), none.output)
        let lm = try runProcess(ddp, ["eval", "--checkpoint", path("lm-run"), "--hypotheses", path("z.txt")])
        XCTAssertNotEqual(lm.status, 0)
        XCTAssertTrue(lm.stderr.contains("decoder-only") && lm.stderr.contains("seq2seq"), lm.output)
        let tokenize = try runProcess(ddp, base + ["--bleu-tokenize", "14a"])
        XCTAssertNotEqual(tokenize.status, 0)
        XCTAssertTrue(tokenize.stderr.contains("13a") && tokenize.stderr.contains("intl"), tokenize.output)
        let missingDirectory = try runProcess(ddp, base + ["--hypotheses", path("no-such-dir/h.txt")])
        XCTAssertNotEqual(missingDirectory.status, 0)
        XCTAssertTrue(missingDirectory.stderr.contains("no-such-dir") && missingDirectory.stderr.contains("does not exist"), missingDirectory.output)
        // The data directory's shards are inputs (with --data, and the run's own data directory without it).
        for arguments in [["--data", path("reverse"), "--hypotheses", path("reverse/valid-00000.h5")],
                          ["--sources", path("reverse/train-00000.h5")]] {
            let overShard = try runProcess(ddp, ["eval", "--checkpoint", path("reverse-run")] + arguments)
            XCTAssertNotEqual(overShard.status, 0, overShard.output)
            XCTAssertTrue(overShard.stderr.contains("writing it would destroy what is read"), overShard.output)
        }
        // So is a new file named as a shard there (a trial's --hypotheses DATA/valid-00001.h5 broke the dataset).
        for arguments in [["--data", path("reverse"), "--hypotheses", path("reverse/valid-00007.h5")],
                          ["--references", path("reverse") + "/./train-00009.h5"]] {
            let newShard = try runProcess(ddp, ["eval", "--checkpoint", path("reverse-run")] + arguments)
            XCTAssertNotEqual(newShard.status, 0, newShard.output)
            XCTAssertTrue(newShard.stderr.contains("would put a file named as a shard into the data directory"), newShard.output)
        }
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: path("reverse")).contains { $0.hasSuffix("7.h5") || $0.hasSuffix("9.h5") })
        XCTAssertEqual(try eval(["--checkpoint", path("reverse-run"), "--max-decode", "0"])["sequences"] as? Int, 60, "the shards are intact")
        // Two outputs through a link are one file.
        try FileManager.default.createSymbolicLink(atPath: path("link.txt"), withDestinationPath: path("target.txt"))
        try "".write(toFile: path("target.txt"), atomically: true, encoding: .utf8)
        let linked = try runProcess(ddp, base + ["--hypotheses", path("target.txt"), "--references", path("link.txt")])
        XCTAssertNotEqual(linked.status, 0)
        XCTAssertTrue(linked.stderr.contains("--hypotheses and --references name the same file"), linked.output)
        // So are two spellings of one file not there yet (a trial's first run lost the hypotheses to the sources: both
        // renamed onto one path), here through a link to its directory.
        try FileManager.default.createDirectory(atPath: path("outs"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: path("outs-link"), withDestinationPath: path("outs"))
        let spelled = try runProcess(ddp, base + ["--hypotheses", path("outs/new.txt"), "--sources", path("outs-link/new.txt")])
        XCTAssertNotEqual(spelled.status, 0)
        XCTAssertTrue(spelled.stderr.contains("--hypotheses and --sources name the same file"), spelled.output)
        // A path ending in '/' is refused before the work (it failed at the rename, after the other files were written).
        let slash = try runProcess(ddp, base + ["--hypotheses", path("outs/h.txt"), "--sources", path("outs") + "/s/"])
        XCTAssertNotEqual(slash.status, 0)
        XCTAssertTrue(slash.stderr.contains("\(path("outs"))/s/: ends in '/', which names a directory"), slash.output)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: path("outs")), [], "nothing written")
        for file in ["x.txt", "y.txt", "z.txt"] { XCTAssertFalse(FileManager.default.fileExists(atPath: path(file)), file) }
    }

    func testBeamOfOneEqualsGreedyAndWiderBeamsRun() throws {
        let greedy = try eval(["--checkpoint", path("reverse-run")])
        let beamOne = try eval(["--checkpoint", path("reverse-run"), "--decode", "beam", "--beam-size", "1"])
        assertSameNumbers(beamOne, greedy, relative: 0, "beam size 1")
        let beamFour = try eval(["--checkpoint", path("reverse-run"), "--decode", "beam", "--beam-size", "4", "--length-penalty", "0.6"])
        XCTAssertEqual(beamFour["beam_size"] as? Int, 4)
        XCTAssertEqual(beamFour["decoded"] as? Int, 60)
        XCTAssertEqual(beamFour["loss"] as! Double, greedy["loss"] as! Double, "decoding does not change the loss")
        let exact = try XCTUnwrap(beamFour["exact_match"] as? Double)
        XCTAssertTrue((0...1).contains(exact))
        // --max-decode bounds the decoded examples.
        XCTAssertEqual(try eval(["--checkpoint", path("reverse-run"), "--max-decode", "5"])["decoded"] as? Int, 5)
    }

    /// Raw text, tokenized with the checkpoint's tokenizer, gives what the same text prepared into shards gives.
    func testEvalOnTextEqualsEvalOnTheSameTextAsShards() throws {
        let pairs = (0..<25).map { i in
            var generator = LCG(seed: UInt64(i))
            return String("abcdefgh".shuffled(using: &generator).prefix(1 + i % 8))
        }
        try pairs.joined(separator: "\n").write(toFile: path("src.txt"), atomically: true, encoding: .utf8)
        try pairs.map { String($0.reversed()) }.joined(separator: "\n").write(toFile: path("tgt.txt"), atomically: true, encoding: .utf8)
        let prepared = try runProcess(ddp, ["prepare", "--source", path("src.txt"), "--target", path("tgt.txt"), "--valid-fraction", "0",
                                            "--output", path("text-shards")])
        XCTAssertEqual(prepared.status, 0, prepared.output)
        let shards = try eval(["--checkpoint", path("reverse-run"), "--data", path("text-shards"), "--split", "train"])
        let text = try eval(["--checkpoint", path("reverse-run"), "--source", path("src.txt"), "--target", path("tgt.txt")])
        assertSameNumbers(text, shards, relative: 1e-12, "parallel text")
        XCTAssertEqual(text["sequences"] as? Int, 25)
        XCTAssertEqual(text["tokens"] as? Int, pairs.reduce(0) { $0 + $1.count + 1 }, "every target byte and its EOS")

        let lmShards = try eval(["--checkpoint", path("lm-run"), "--data", path("lm"), "--split", "train"])
        let lmText = try eval(["--checkpoint", path("lm-run"), "--text", path("lm.txt")])
        XCTAssertGreaterThan(lmText["tokens"] as! Int, lmShards["tokens"] as! Int, "the whole text holds more than its train split")
        // The same file as shards with no valid split is the same evaluation.
        let all = try runProcess(ddp, ["prepare", "--task", "lm", "--input", path("lm.txt"), "--valid-fraction", "0", "--output", path("lm-all")])
        XCTAssertEqual(all.status, 0, all.output)
        assertSameNumbers(lmText, try eval(["--checkpoint", path("lm-run"), "--data", path("lm-all"), "--split", "train"]),
                          relative: 1e-12, "language-model text")
    }

    // MARK: errors

    private func assertEvalFails(_ arguments: [String], mentioning fragments: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let result = try runProcess(ddp, ["eval"] + arguments, environment: mpiEnvironment)
        XCTAssertNotEqual(result.status, 0, result.output, file: file, line: line)
        for fragment in fragments {
            XCTAssertTrue(result.stderr.contains(fragment), "expected '\(fragment)' in:\n\(result.output)", file: file, line: line)
        }
    }

    /// A copy of the step-60 checkpoint, changed by a Python (h5py) snippet given `path`.
    private func damagedCheckpoint(_ name: String, _ python: String) throws -> String {
        let python3 = try XCTUnwrap(pythonWithH5py(), "h5py is needed to damage checkpoints (Launch/test.sh installs it)")
        let copy = path("\(name).h5")
        try? FileManager.default.removeItem(atPath: copy)
        try FileManager.default.copyItem(atPath: path("reverse-run/checkpoint-00000060.h5"), toPath: copy)
        let result = try runProcess(python3, ["-c", "import h5py, json, sys\npath = sys.argv[1]\n" + python, copy])
        XCTAssertEqual(result.status, 0, result.output)
        return copy
    }

    func testEvalErrorsNameTheFileAndTensor() throws {
        try assertEvalFails(["--checkpoint", path("nowhere.h5")], mentioning: ["nowhere.h5", "does not exist"])
        try assertEvalFails(["--checkpoint", path("reverse")], mentioning: ["reverse", "without a 'latest' checkpoint"])

        let truncated = path("truncated.h5")
        let bytes = try Foundation.Data(contentsOf: URL(fileURLWithPath: path("reverse-run/checkpoint-00000060.h5")))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: truncated))
        try assertEvalFails(["--checkpoint", truncated], mentioning: ["truncated.h5"])

        let missing = try damagedCheckpoint("missing", "with h5py.File(path, 'a') as f: del f['params/decoder.layers.0.ffn.fc1.weight']")
        try assertEvalFails(["--checkpoint", missing], mentioning: ["missing.h5", "missing tensor /params/decoder.layers.0.ffn.fc1.weight"])

        // Flip bytes inside one tensor's stored chunk: its Fletcher-32 checksum fails.
        let flipped = try damagedCheckpoint("flipped", """
            with h5py.File(path, 'r') as f: offset = f['params/encoder.layers.0.ffn.fc2.weight'].id.get_chunk_info(0).byte_offset
            with open(path, 'r+b') as raw:
                raw.seek(offset + 100); data = bytearray(raw.read(8)); raw.seek(offset + 100); raw.write(bytes(b ^ 0xFF for b in data))
            """)
        try assertEvalFails(["--checkpoint", flipped], mentioning: ["flipped.h5", "/params/encoder.layers.0.ffn.fc2.weight", "damaged"])

        // A config changed after writing: its attributes no longer match their digest.
        let edited = try damagedCheckpoint("edited", """
            with h5py.File(path, 'a') as f:
                config = json.loads(f.attrs['config']); config['training']['steps'] = 61; f.attrs['config'] = json.dumps(config)
            """)
        try assertEvalFails(["--checkpoint", edited], mentioning: ["edited.h5", "do not match the digest", "attribute_digest"])

        // A config that does not fit the stored tensors (another d_ff), edited deliberately (digest removed).
        let otherConfig = try damagedCheckpoint("other-config", """
            with h5py.File(path, 'a') as f:
                config = json.loads(f.attrs['config']); config['model']['d_ff'] = 48; f.attrs['config'] = json.dumps(config)
                del f.attrs['attribute_digest']
            """)
        try assertEvalFails(["--checkpoint", otherConfig], mentioning: ["other-config.h5", "ffn.fc1.weight", "[48, 32]"])

        // Data in another tokenizer, and data of another task.
        let bpe = try runProcess(ddp, ["prepare", "--synthetic", "reverse", "--samples", "200", "--max-length", "8", "--tokenizer", "bpe",
                                       "--vocab-size", "270", "--output", path("reverse-bpe")])
        XCTAssertEqual(bpe.status, 0, bpe.output)
        try assertEvalFails(["--checkpoint", path("reverse-run"), "--data", path("reverse-bpe")],
                            mentioning: ["reverse-bpe/valid-00000.h5", "tokenizer (bpe, 270 tokens) differs", "(byte, 260 tokens)"])
        try assertEvalFails(["--checkpoint", path("reverse-run"), "--data", path("lm")], mentioning: ["lm/valid-00000.h5", "lm data"])
        // lm data too short for one window of the checkpoint's length is the other task too, not an empty split.
        try "hi".write(toFile: path("short.txt"), atomically: true, encoding: .utf8)
        try runDDPOrThrow(["prepare", "--task", "lm", "--input", path("short.txt"), "--valid-fraction", "0", "--output", path("short-lm")])
        try assertEvalFails(["--checkpoint", path("reverse-run"), "--data", path("short-lm"), "--split", "train"],
                            mentioning: ["short-lm/train-00000.h5: holds lm data", "which takes seq2seq data"])
        try assertEvalFails(["--checkpoint", path("lm-run"), "--source", path("lm.txt"), "--target", path("lm.txt")],
                            mentioning: ["--source/--target are for seq2seq models"])
        // A checkpoint that stores no data.directory (an imported model) asks for --data or text.
        let noData = try damagedCheckpoint("no-data", """
            with h5py.File(path, 'a') as f:
                config = json.loads(f.attrs['config']); config['data']['directory'] = ''; f.attrs['config'] = json.dumps(config)
                del f.attrs['attribute_digest']
            """)
        try assertEvalFails(["--checkpoint", noData], mentioning: ["no-data.h5 stores no data.directory", "give --data DIR, or text with --source FILE --target FILE"])
        // The run's own data directory gone (or relative to another directory): said to be the run's, with --data the way out.
        try FileManager.default.moveItem(atPath: path("lm"), toPath: path("lm-moved"))
        defer { try? FileManager.default.moveItem(atPath: path("lm-moved"), toPath: path("lm")) }
        try assertEvalFails(["--checkpoint", path("lm-run")],
                            mentioning: ["\(path("lm")): no such data directory: it does not exist (the data.directory", "give the data with --data"])
    }

    // MARK: generate

    func testGenerateSamplesRepeatablyAndStopsAtMaxTokens() throws {
        func generate(_ extra: [String]) throws -> String {
            let result = try runProcess(ddp, ["generate", "--checkpoint", path("lm-run"), "--prompt", "Document 1"] + extra)
            XCTAssertEqual(result.status, 0, result.output)
            return result.stdout
        }
        let greedy = try generate(["--temperature", "0", "--max-tokens", "20"])
        XCTAssertFalse(greedy.isEmpty, "no output")
        XCTAssertEqual(try generate(["--temperature", "0", "--max-tokens", "20"]), greedy)
        XCTAssertLessThanOrEqual(greedy.count, 21, "at most 20 byte tokens and a newline: \(greedy)")
        let sampled = try generate(["--temperature", "1.0", "--top-k", "20", "--top-p", "0.95", "--seed", "3", "--max-tokens", "20"])
        XCTAssertEqual(try generate(["--temperature", "1.0", "--top-k", "20", "--top-p", "0.95", "--seed", "3", "--max-tokens", "20"]), sampled)
        let others = try (4...8).map { try generate(["--temperature", "1.5", "--seed", "\($0)", "--max-tokens", "20"]) }
        XCTAssertGreaterThan(Set(others).count, 1, "five seeds sampled the same text: \(others)")

        let wrong = try runProcess(ddp, ["generate", "--checkpoint", path("lm-run"), "--input", "abc"])
        XCTAssertNotEqual(wrong.status, 0)
        XCTAssertTrue(wrong.stderr.contains("is a language model: give --prompt"), wrong.output)
        let badTopP = try runProcess(ddp, ["generate", "--checkpoint", path("lm-run"), "--prompt", "a", "--top-p", "0"])
        XCTAssertNotEqual(badTopP.status, 0)
        XCTAssertTrue(badTopP.stderr.contains("top-p"), badTopP.output)
    }

    /// A language model continues the text on standard input when --prompt is not given; options a model's kind does
    /// not use (beam search for a language model, sampling for a translation model, beam settings without a beam)
    /// are refused by name, not ignored; numbers out of range (negative ones included) are refused by option.
    func testGenerateTakesItsPromptFromStandardInputAndRefusesOptionsThatDoNothing() throws {
        func generate(_ arguments: [String], standardInput: String? = nil) throws -> ProcessResult {
            try runProcess(ddp, ["generate", "--checkpoint"] + arguments, standardInput: standardInput)
        }
        let given = try generate([path("lm-run"), "--prompt", "Document 1", "--temperature", "0", "--max-tokens", "12"])
        XCTAssertEqual(given.status, 0, given.output)
        let piped = try generate([path("lm-run"), "--prompt", "-", "--temperature", "0", "--max-tokens", "12"], standardInput: "Document 1\n")
        XCTAssertEqual(piped.status, 0, piped.output)
        XCTAssertEqual(piped.stdout, given.stdout, "--prompt - reads the prompt from standard input (its final line end dropped)")
        let empty = try generate([path("lm-run"), "--prompt", "", "--temperature", "0", "--max-tokens", "12"])
        XCTAssertEqual(empty.status, 0, empty.output)
        XCTAssertNotEqual(empty.stdout, given.stdout, "an empty prompt starts a new document")
        // Without --prompt, standard input is not read (a loop's `while read` keeps its lines), and text there is pointed out.
        let unread = try generate([path("lm-run"), "--temperature", "0", "--max-tokens", "12"], standardInput: "Document 1")
        XCTAssertEqual(unread.status, 0, unread.output)
        XCTAssertEqual(unread.stdout, empty.stdout, "a new document")
        XCTAssertTrue(unread.stderr.contains("no --prompt: starting a new document (standard input is not read; give --prompt - to continue its text)"),
                      unread.output)
        // Any --max-tokens: generation ends when the context is full.
        let most = try generate([path("lm-run"), "--prompt", "a", "--temperature", "0", "--max-tokens", "\(Int.max)"])
        XCTAssertEqual(most.status, 0, most.output)
        let tooLong = try generate([path("lm-run"), "--prompt", "-"], standardInput: String(repeating: "a", count: 5000))
        XCTAssertTrue(tooLong.stderr.contains("standard input is 5000 tokens; the model takes at most"), tooLong.output)
        let huge = try generate([path("lm-run"), "--prompt", "-"], standardInput: String(repeating: "a", count: (1 << 20) + 1))
        XCTAssertTrue(huge.stderr.contains("standard input: holds more than the 1048576 bytes read"), huge.output)
        // Output that cannot be written (a full disk) is a sentence; it crashed the language model's streaming.
        let full = try runProcess("/bin/sh", ["-c", "exec \"$0\" generate --checkpoint \"$1\" --prompt a --max-tokens 5 > /dev/full",
                                              ddp, path("lm-run")])
        XCTAssertEqual(full.status, 1, full.output)
        XCTAssertTrue(full.stderr.contains("standard output: cannot be written (No space left on device); the generated text is lost"),
                      full.output)
        // Under an address-space limit that leaves OpenBLAS no room for its work buffer, OpenBLAS retried the map
        // forever (a hang at the first matrix product): now the model is refused first, or it runs.
        for limit in [300_000, 419_430, 600_000] {
            let tight = try runProcess("/bin/sh", ["-c", "ulimit -v \(limit); exec \"$0\" generate --checkpoint \"$1\" --prompt a --max-tokens 3",
                                                   ddp, path("lm-run")], timeout: 60)
            XCTAssertFalse(tight.timedOut, "ulimit -v \(limit): hung\n\(tight.output)")
            XCTAssertTrue(tight.status == 0 || tight.stderr.contains("kept for OpenBLAS) this process can still allocate"),
                          "ulimit -v \(limit): \(tight.output)")
        }
        let fullTranslations = try runProcess("/bin/sh", ["-c", "printf 'abc\\nhgf\\n' | \"$0\" generate --checkpoint \"$1\" > /dev/full",
                                                          ddp, path("reverse-run")])
        XCTAssertEqual(fullTranslations.status, 1, fullTranslations.output)
        XCTAssertTrue(fullTranslations.stderr.contains("standard output: cannot be written (No space left on device); the translations are lost"),
                      fullTranslations.output)
        let refusals: [([String], String)] = [
            ([path("lm-run"), "--prompt", "a", "--decode", "beam"], "--decode does not apply to \(path("lm-run"))"),
            ([path("lm-run"), "--prompt", "a", "--beam-size", "2"], "a decoder-only model, which continues text by sampling"),
            ([path("reverse-run"), "--input", "abc", "--beam-size", "2"], "--beam-size applies to beam search only; add --decode beam"),
            ([path("reverse-run"), "--input", "abc", "--length-penalty", "1"], "--length-penalty applies to beam search only"),
            ([path("reverse-run"), "--input", "abc", "--temperature", "0.5"], "--temperature does not apply to \(path("reverse-run"))"),
            ([path("reverse-run"), "--input", "abc", "--temperature", "0.5"], "an encoder-decoder model, which translates"),
            ([path("reverse-run"), "--input", "abc", "--top-p", "0.9"], "--top-p does not apply"),
            ([path("reverse-run"), "--input", "abc", "--top-k", "3"], "--top-k does not apply"),
            ([path("reverse-run"), "--input", "abc", "--seed", "2"], "--seed does not apply"),
            ([path("lm-run"), "--prompt", "a", "--max-tokens", "0"], "--max-tokens must be 1 or more, got 0."),
            ([path("lm-run"), "--prompt", "a", "--temperature", "0", "--top-k", "3"], "--top-k does nothing with --temperature 0 (greedy"),
            ([path("lm-run"), "--prompt", "a", "--temperature", "0", "--seed", "3"], "--seed does nothing with --temperature 0"),
            ([path("lm-run"), "--prompt", "a", "--temperature", "-1"], "--temperature must be a finite number, 0 (greedy) or more, got -1.0."),
            ([path("lm-run"), "--prompt", "a", "--temperature", "inf"], "--temperature must be a finite number, 0 (greedy) or more, got inf."),
            ([path("reverse-run"), "--input", "abc", "--decode", "beam", "--length-penalty", "nan"],
             "--length-penalty must be a finite number, 0 or more, got nan."),
            ([path("lm-run"), "--prompt", "a", "--top-k", "-3"], "--top-k must be 0 (all) or more, got -3."),
            ([path("lm-run"), "--prompt", "a", "--top-p", "-0.5"], "--top-p must be more than 0 and at most 1, got -0.5."),
            ([path("reverse-run"), "--input", "abc", "--decode", "beam", "--beam-size", "-1"], "--beam-size must be 1 to 256, got -1."),
        ]
        for (arguments, message) in refusals {
            let result = try generate(arguments)
            XCTAssertNotEqual(result.status, 0, "\(arguments): \(result.output)")
            XCTAssertTrue(result.stderr.contains(message), "\(arguments): \(result.output)")
            // A refusal made once the checkpoint is read shows no usage (it would be the root command's, not generate's).
            if message.contains("applies to beam search only") { XCTAssertFalse(result.stderr.contains("Usage: ddp <subcommand>"), result.output) }
        }
        // ddp eval: decoding options on a model that decodes nothing (--max-decode 0, decoding none, is true of it).
        for option in [["--decode", "beam"], ["--max-decode", "3"], ["--bleu-tokenize", "char"]] {
            let result = try runProcess(ddp, ["eval", "--checkpoint", path("lm-run")] + option)
            XCTAssertEqual(result.status, 1, result.output)
            XCTAssertTrue(result.stderr.contains("\(option[0]) is for seq2seq models, which decode translations, and \(path("lm-run"))"),
                          result.output)
        }
        XCTAssertEqual(try runProcess(ddp, ["eval", "--checkpoint", path("lm-run"), "--max-decode", "0"]).status, 0)
        let beamless = try runProcess(ddp, ["eval", "--checkpoint", path("reverse-run"), "--beam-size", "3"])
        XCTAssertTrue(beamless.stderr.contains("--beam-size applies to beam search only; add --decode beam"), beamless.output)
    }

    func testTranslateLinesOfStandardInputAsEachInputAlone() throws {
        let inputs = ["abc", "hgfe", "a", "dcbaefgh"]
        let batch = try runProcess(ddp, ["generate", "--checkpoint", path("reverse-run")], standardInput: inputs.joined(separator: "\n") + "\n")
        XCTAssertEqual(batch.status, 0, batch.output)
        let lines = batch.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
        XCTAssertEqual(lines.count, inputs.count, batch.stdout)
        for (input, line) in zip(inputs, lines) {
            let alone = try runProcess(ddp, ["generate", "--checkpoint", path("reverse-run"), "--input", input])
            XCTAssertEqual(alone.stdout, line + "\n", input)
            let beamOne = try runProcess(ddp, ["generate", "--checkpoint", path("reverse-run"), "--input", input, "--decode", "beam", "--beam-size", "1"])
            XCTAssertEqual(beamOne.stdout, line + "\n", "beam 1 against greedy for \(input)")
        }
        let tooLong = try runProcess(ddp, ["generate", "--checkpoint", path("reverse-run"), "--input", "abcdefghijkl"])
        XCTAssertNotEqual(tooLong.status, 0)
        XCTAssertTrue(tooLong.stderr.contains("at most 8"), tooLong.output)
    }

    /// `ddp embed` of an encoder-decoder checkpoint encodes each line as the model saw sources, followed by EOS: the
    /// tokens written end with it, an empty line is EOS alone, and a line's states are the same in any company.
    func testEmbedOfATranslationModelEncodesSourcesWithTheirEOS() throws {
        try "abc\n\nhgfe\n".write(toFile: path("sources.txt"), atomically: true, encoding: .utf8)
        try "abc\n".write(toFile: path("source.txt"), atomically: true, encoding: .utf8)
        for (input, output) in [("sources.txt", "sources.h5"), ("source.txt", "source.h5")] {
            let result = try runProcess(ddp, ["embed", "--checkpoint", path("reverse-run"), "--input", path(input), "--output", path(output)])
            XCTAssertEqual(result.status, 0, result.output)
        }
        let all = try File.open(path("sources.h5")), one = try File.open(path("source.h5"))
        let eos = SpecialTokens.standard.eos
        XCTAssertEqual(try all.openDataset("offsets").read(as: Int64.self), [0, 4, 5, 10])
        let tokens = try all.openDataset("tokens").read(as: Int32.self)
        XCTAssertEqual([tokens[3], tokens[4], tokens[9]], [eos, eos, eos])
        XCTAssertEqual(try one.openDataset("tokens").read(as: Int32.self), Array(tokens[0..<4]))
        let width = try one.openDataset("hidden").shape[1]
        let alone = try one.openDataset("hidden").read(as: Float.self), together = try all.openDataset("hidden").read(as: Float.self)
        XCTAssertLessThan(zip(alone, together[0..<(4 * width)]).map { abs($0 - $1) }.max()!, 1e-5)
        let long = try runProcess(ddp, ["embed", "--checkpoint", path("reverse-run"), "--input", "/dev/stdin", "--output", path("long.h5")],
                                  standardInput: "abcdefghijkl\n")
        XCTAssertEqual(long.status, 1, long.output)
        XCTAssertTrue(long.stderr.contains("line 1 is 13 tokens with its EOS; the model takes at most"), long.output)
    }

    /// A new-user trial's findings: standard input that cannot be read (a directory, or closed) is a sentence, not a
    /// trap; --beam-size and --batch-size out of range are refused by option, not blamed on the checkpoint.
    func testUnreadableStandardInputAndOutOfRangeSizesAreSentences() throws {
        for redirect in ["< \"$0\"", "<&-"] {
            let result = try runProcess("/bin/sh", ["-c", "exec \"$1\" generate --checkpoint \"$2\" \(redirect)", path(""), ddp, path("reverse-run")])
            XCTAssertEqual(result.status, 1, "\(redirect): \(result.output)")
            XCTAssertTrue(result.stderr.hasPrefix("Error: standard input: cannot be read: "), "\(redirect): \(result.output)")
            XCTAssertFalse(result.output.contains("Fatal error"), result.output)
        }
        let beam = try runProcess(ddp, ["generate", "--checkpoint", path("reverse-run"), "--input", "abc", "--decode", "beam", "--beam-size", "257"])
        XCTAssertNotEqual(beam.status, 0)
        XCTAssertTrue(beam.stderr.contains("--beam-size must be 1 to 256, got 257"), beam.output)
        for command in ["eval", "embed"] {
            let extra = command == "embed" ? ["--input", path("lm.txt"), "--output", path("never.h5")] : []
            let big = try runProcess(ddp, [command, "--checkpoint", path("reverse-run"), "--batch-size", "32769"] + extra)
            XCTAssertNotEqual(big.status, 0)
            XCTAssertTrue(big.stderr.contains("--batch-size must be 1 to 32768, got 32769"), "\(command): \(big.output)")
        }
    }

    // MARK: inspect

    func testInspectShowsTheRunAndEveryTensorWithItsNorm() throws {
        let result = try runProcess(ddp, ["inspect", path("reverse-run")])
        XCTAssertEqual(result.status, 0, result.output)
        for fragment in ["checkpoint-00000060.h5", "step 60", "sampler at epoch", "tokenizer   byte, vocab_size 260",
                         "encoder-decoder, d_model 32", "checksums verified", "\"d_ff\":64"] {
            XCTAssertTrue(result.stdout.contains(fragment), "missing '\(fragment)' in:\n\(result.stdout)")
        }
        let file = try File.open(path("reverse-run/checkpoint-00000060.h5"))
        let names = try file.openGroup("params").members().map(\.name)
        XCTAssertEqual(names.count, 47)
        for name in ["embed.weight", "decoder.layers.0.cross_attn.k_proj.weight", "decoder.norm.bias"] {
            let values = try file.openDataset("params/\(name)").read(as: Float.self)
            let norm = values.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
            let row = try XCTUnwrap(result.stdout.split(separator: "\n").first { $0.split(separator: " ").first.map(String.init) == name }, name)
            let shown = try XCTUnwrap(Double(row.split(separator: " ").last!), String(row))
            XCTAssertEqual(shown, norm, accuracy: norm * 1e-5, name)
        }
    }

    /// "checksums verified" covers what --resume reads: a damaged AdamW moment makes the checkpoint NOT USABLE.
    func testInspectReadsTheOptimizerMomentsToo() throws {
        let damaged = try damagedCheckpoint("damaged-moment", """
            with h5py.File(path, 'r') as f: offset = f['optimizer/exp_avg_sq/embed.weight'].id.get_chunk_info(0).byte_offset
            with open(path, 'r+b') as raw:
                raw.seek(offset + 40); data = bytearray(raw.read(4)); raw.seek(offset + 40); raw.write(bytes(b ^ 0x5A for b in data))
            """)
        let result = try runProcess(ddp, ["inspect", damaged])
        XCTAssertTrue(result.stdout.contains("NOT USABLE") && result.stdout.contains("optimizer/exp_avg_sq/embed.weight"), result.output)
        XCTAssertEqual(result.status, 1, "a checkpoint found damaged: inspect exits 1\n\(result.output)")
        XCTAssertTrue(result.stderr.contains("\(damaged): 1 problem(s) found, printed above"), result.output)
        XCTAssertFalse(result.stdout.contains("checksums verified"), result.output)
    }

    /// Without decoding (--max-decode 0) a seq2seq report still holds every key, null where nothing was computed.
    func testEvalJSONKeepsItsKeysWithoutDecoding() throws {
        let result = try eval(["--checkpoint", path("reverse-run"), "--max-decode", "0"])
        for key in ["exact_match", "bleu", "chrf", "decoding"] { XCTAssertTrue(result[key] is NSNull, "\(key): \(String(describing: result[key]))") }
        XCTAssertEqual(result["decoded"] as? Int, 0)
    }

    // MARK: export

    /// The safetensors layout, read back here byte by byte against the checkpoint.
    func testExportWritesSafetensorsWithEveryTensor() throws {
        let output = path("reverse.safetensors")
        let result = try runProcess(ddp, ["export", "--checkpoint", path("reverse-run"), "--output", output])
        XCTAssertEqual(result.status, 0, result.output)
        let bytes = try Foundation.Data(contentsOf: URL(fileURLWithPath: output))
        let headerSize = Int(bytes.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
        XCTAssertEqual((8 + headerSize) % 8, 0, "data starts 8-byte aligned")
        let header = try XCTUnwrap(try JSONSerialization.jsonObject(with: bytes.subdata(in: 8..<(8 + headerSize))) as? [String: Any])
        let metadata = try XCTUnwrap(header["__metadata__"] as? [String: String])
        XCTAssertEqual(metadata["swiftddp_step"], "60")
        XCTAssertTrue(metadata["swiftddp_model"]?.contains("\"d_model\":32") == true, "\(metadata)")
        XCTAssertNotNil(metadata["swiftddp_tokenizer"])
        let data = bytes.subdata(in: (8 + headerSize)..<bytes.count)
        let file = try File.open(path("reverse-run/checkpoint-00000060.h5"))
        let names = try file.openGroup("params").members().map(\.name)
        XCTAssertEqual(Set(header.keys.filter { $0 != "__metadata__" }), Set(names))
        var covered = 0
        for name in names {
            let entry = try XCTUnwrap(header[name] as? [String: Any], name)
            XCTAssertEqual(entry["dtype"] as? String, "F32")
            let dataset = try file.openDataset("params/\(name)")
            XCTAssertEqual(entry["shape"] as? [Int], dataset.shape, name)
            let offsets = try XCTUnwrap(entry["data_offsets"] as? [Int])
            let expected = try dataset.read(as: Float.self)
            let stored = data.subdata(in: offsets[0]..<offsets[1]).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            XCTAssertEqual(stored, expected, name)
            covered += offsets[1] - offsets[0]
        }
        XCTAssertEqual(covered, data.count, "the tensors cover the data exactly")
    }

    /// README's Python example: the exported file in PyTorch reproduces `ddp eval`'s numbers on the same data.
    func testExportedModelInPyTorchReproducesTheEvalLoss() throws {
        guard let python = pythonWithTorch() else {
            throw XCTSkip("PyTorch is not installed (set SWIFTDDP_TORCH_PYTHON to a python with torch, h5py and numpy to run this)")
        }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Reference/swiftddp_torch.py").path
        for run in ["reverse-run", "lm-run"] {
            let output = path("\(run).safetensors")
            let exported = try runProcess(ddp, ["export", "--checkpoint", path(run), "--output", output])
            XCTAssertEqual(exported.status, 0, exported.output)
            let swift = try eval(["--checkpoint", path(run), "--max-decode", "0"])
            let torch = try json(try runProcess(python, [script, output, swift["data"] as! String, "--split", "valid"], timeout: 300))
            XCTAssertEqual(torch["loss"] as! Double, swift["loss"] as! Double, accuracy: 1e-5 * (swift["loss"] as! Double), run)
            XCTAssertEqual(torch["token_accuracy"] as! Double, swift["token_accuracy"] as! Double, accuracy: 1e-9, run)
            XCTAssertEqual(torch["tokens"] as? Int, swift["tokens"] as? Int, run)
            print("\(run): PyTorch loss \(torch["loss"]!), ddp eval \(swift["loss"]!)")
        }
    }
}

/// A tiny deterministic generator for shuffling test strings.
private struct LCG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 6_364_136_223_846_793_005 &+ 1 }
    mutating func next() -> UInt64 {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return state ^ (state >> 29)
    }
}
