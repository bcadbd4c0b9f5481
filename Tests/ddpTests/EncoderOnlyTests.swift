import Data
import Foundation
import HDF5
import TestSupport
import Training
import Transformer
import XCTest

/// Encoder-only (BERT-style) models through the binary: masked-LM training under mpirun on real HDF5 shards,
/// resume, evaluation, fill-mask and `ddp embed`.
final class EncoderOnlyTests: XCTestCase {
    private var ddp: String { builtProduct("ddp") }
    private var directory: URL!

    /// "Twinkle, Twinkle, Little Star" (Jane Taylor, 1806), the first two stanzas: a small real text.
    private static let poem = """
        Twinkle, twinkle, little star,
        How I wonder what you are!
        Up above the world so high,
        Like a diamond in the sky.
        When the blazing sun is gone,
        When he nothing shines upon,
        Then you show your little light,
        Twinkle, twinkle, all the night.

        """

    override func setUpWithError() throws { directory = try makeTemporaryDirectory("ddp-bert") }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    private func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// Shards of the poem repeated `copies` times (one document each), byte tokenizer.
    private func prepare(copies: Int, into name: String, validFraction: String = "0") throws {
        try String(repeating: Self.poem + "\n", count: copies).write(toFile: path("\(name).txt"), atomically: true, encoding: .utf8)
        let result = try runProcess(ddp, ["prepare", "--task", "lm", "--input", path("\(name).txt"), "--output", path(name),
                                          "--valid-fraction", validFraction])
        XCTAssertEqual(result.status, 0, result.output)
    }

    /// A small post-norm (BERT) model's run config; no dropout, whose masks follow the ranks, not the samples.
    private func config(_ name: String, data: String, batch: Int, accumulation: Int = 1, steps: Int, lr: String = "3.0e-3",
                        extra: String = "", vocab: Int = 261, context: Int = 16) throws -> String {
        let file = path("\(name).yaml")
        try """
            model: {kind: encoder-only, vocab_size: \(vocab), d_model: 32, heads: 4, encoder_layers: 2, d_ff: 64, activation: gelu,
                    norm: post, positions: learned, max_length: \(context), dropout: 0.0, tied_embeddings: true}
            data: {directory: \(path(data)), target_length: \(context)}
            training: {batch_size: \(batch), grad_accum: \(accumulation), steps: \(steps), seed: 5, threads: 1, bucket_mb: 0.01,
                       log_every: 5}
            optimizer: {lr: \(lr)}
            checkpoint: {keep: 5}
            \(extra)
            """.write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }

    @discardableResult
    private func run(_ arguments: [String], ranks: Int = 1, program: String? = nil, expect status: Int32 = 0,
                     file: StaticString = #filePath, line: UInt = #line) throws -> ProcessResult {
        let program = program ?? ddp
        let result = ranks == 1 ? try runProcess(program, arguments, environment: mpiEnvironment, timeout: 600)
                                : try runUnderMPI(ranks: ranks, program, arguments, timeout: 600)
        XCTAssertFalse(result.timedOut, result.output, file: file, line: line)
        XCTAssertEqual(result.status, status, result.output, file: file, line: line)
        return result
    }

    private func losses(_ run: String) throws -> [Double] { try trainingLosses(inRun: path(run)) }

    private func parameters(_ run: String, step: Int) throws -> [String: [Float]] {
        let file = try File.open(path(String(format: "\(run)/checkpoint-%08d.h5", step)))
        var result: [String: [Float]] = [:]
        for member in try file.openGroup("params").members() {
            result[member.name] = try file.openDataset("params/\(member.name)").read(as: Float.self)
        }
        return result
    }

    /// 2 ranks x 4 == 1 rank x 8 == 1 rank x 4 x accumulation 2 over three epochs (the masks follow the samples, not
    /// the ranks); a run stopped at step 10 and resumed equals an uninterrupted one
    /// bitwise, and resumed on 2 ranks within 1e-5; evaluation gives the same numbers on 1 and 2 ranks.
    func testMaskedLMDataParallelEquivalenceResumeAndEvaluation() throws {
        try prepare(copies: 4, into: "data", validFraction: "0.25")
        try run(["train", "--config", try config("one", data: "data", batch: 8, steps: 20), "--run-dir", path("one")])
        try run(["train", "--config", try config("two", data: "data", batch: 4, steps: 20), "--run-dir", path("two")], ranks: 2)
        try run(["train", "--config", try config("acc", data: "data", batch: 4, accumulation: 2, steps: 20), "--run-dir", path("acc")])
        let reference = try losses("one")
        XCTAssertEqual(reference.count, 20)
        let log = try String(contentsOfFile: path("one/metrics.jsonl"), encoding: .utf8)
        XCTAssertTrue(log.contains("\"epoch\":2"), "the run crosses two epoch boundaries: \(log.suffix(300))")
        for other in ["two", "acc"] {
            for (step, (a, b)) in zip(reference, try losses(other)).enumerated() {
                XCTAssertEqual(b, a, accuracy: abs(a) * 1e-5, "\(other): step \(step + 1)")
            }
            let final = try parameters("one", step: 20)
            for (name, values) in try parameters(other, step: 20) where !name.hasSuffix("k_proj.bias") {
                let expected = try XCTUnwrap(final[name])
                let difference = zip(values, expected).map { ($0 - $1) * ($0 - $1) }.reduce(0, +).squareRoot()
                let norm = expected.map { $0 * $0 }.reduce(0, +).squareRoot()
                XCTAssertLessThan(difference / max(norm, 1e-12), 1e-5, "\(other): \(name)")
            }
        }

        try run(["train", "--config", try config("first", data: "data", batch: 8, steps: 10), "--run-dir", path("resumed")])
        try run(["train", "--config", try config("one", data: "data", batch: 8, steps: 20), "--run-dir", path("resumed"), "--resume"])
        XCTAssertEqual(try losses("resumed").map(\.bitPattern), reference.map(\.bitPattern), "resumed losses bitwise equal")
        XCTAssertEqual(try parameters("resumed", step: 20).mapValues { $0.map(\.bitPattern) },
                       try parameters("one", step: 20).mapValues { $0.map(\.bitPattern) })
        try run(["train", "--config", try config("first", data: "data", batch: 8, steps: 10), "--run-dir", path("moved")])
        try run(["train", "--config", try config("two", data: "data", batch: 4, steps: 20), "--run-dir", path("moved"), "--resume"], ranks: 2)
        for (step, (a, b)) in zip(reference, try losses("moved")).enumerated() {
            XCTAssertEqual(b, a, accuracy: abs(a) * 1e-5, "resumed on 2 ranks: step \(step + 1)")
        }

        func evaluation(ranks: Int) throws -> [String: Any] {
            let output = try run(["eval", "--checkpoint", path("one"), "--json", "--batch-size", "3"], ranks: ranks).output
            let line = try XCTUnwrap(output.split(separator: "\n").last { $0.hasPrefix("{") })
            return try XCTUnwrap(try JSONSerialization.jsonObject(with: Foundation.Data(line.utf8)) as? [String: Any])
        }
        let alone = try evaluation(ranks: 1), split = try evaluation(ranks: 2)
        XCTAssertEqual(alone["tokens"] as? Int, split["tokens"] as? Int, "the same positions are masked on any number of ranks")
        XCTAssertGreaterThan(alone["tokens"] as? Int ?? 0, 0)
        XCTAssertEqual(try XCTUnwrap(alone["loss"] as? Double), try XCTUnwrap(split["loss"] as? Double), accuracy: 1e-6)
        XCTAssertEqual(try XCTUnwrap(alone["token_accuracy"] as? Double), try XCTUnwrap(split["token_accuracy"] as? Double))
    }

    /// Trained on the poem, the model fills "Twinkle, twinkle, little st[MASK]r," with "a" and "Like a diamond in the
    /// s[MASK]y." with "k" (neither is the text's most frequent byte, so they come from the context). The 2000 steps
    /// run on the release build when Launch/setup.sh has made one (about 30 s; a debug build takes minutes).
    func testFillMaskRecoversObviousTokens() throws {
        try prepare(copies: 40, into: "poem")
        let release = URL(fileURLWithPath: ddp).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("release/ddp").path
        try """
            model: {kind: encoder-only, vocab_size: 261, d_model: 64, heads: 4, encoder_layers: 2, d_ff: 128, activation: gelu,
                    norm: pre, positions: learned, max_length: 32, dropout: 0.0, tied_embeddings: true}
            data: {directory: \(path("poem")), target_length: 32}
            training: {batch_size: 16, steps: 2000, seed: 5, log_every: 500, threads: 1}
            optimizer: {lr: 3.0e-3}
            schedule: {kind: cosine, warmup_steps: 100, min_lr: 3.0e-4}
            """.write(toFile: path("poem.yaml"), atomically: true, encoding: .utf8)
        try run(["train", "--config", path("poem.yaml"), "--run-dir", path("poem-run")],
                program: FileManager.default.isExecutableFile(atPath: release) ? release : ddp)

        for (prompt, position, expected, filled) in [("Twinkle, twinkle, little st[MASK]r,", 28, "a", "Twinkle, twinkle, little star,"),
                                                     ("Like a diamond in the s[MASK]y.", 24, "k", "Like a diamond in the sky.")] {
            let output = try run(["generate", "--checkpoint", path("poem-run"), "--prompt", prompt]).output
            let lines = output.split(separator: "\n").map(String.init)
            XCTAssertEqual(lines.first, "[MASK] 1 of 1 (token \(position)):", output)
            XCTAssertEqual(lines.count, 7, "five candidates and the filled text: \(output)")
            XCTAssertTrue(lines.count > 1 && lines[1].contains("\"\(expected)\"  (id \(Int(expected.utf8.first!) + 4))"),
                          "the most likely token is \"\(expected)\": \(output)")
            XCTAssertEqual(lines.last, "filled: \(filled)", output)
            let probabilities = lines.dropFirst().prefix(5).compactMap { Double($0.split(separator: " ").first ?? "") }
            XCTAssertEqual(probabilities.count, 5, output)
            XCTAssertEqual(probabilities, probabilities.sorted(by: >), "most likely first")
            XCTAssertGreaterThan(probabilities.first ?? 0, 0.5, output)
        }
        // --top-k 0 lists every ordinary token of the tokenizer (the 256 bytes). Their printed probabilities (4 decimals
        // each, so the sum is off by up to 256 x 0.00005) add up to about 1: the mask token and the specials keep little.
        let all = try run(["generate", "--checkpoint", path("poem-run"), "--prompt", "st[MASK]r", "--top-k", "0"]).output
            .split(separator: "\n").dropFirst().dropLast()
        XCTAssertEqual(all.count, 256)
        let total = all.compactMap { Double($0.split(separator: " ").first ?? "") }.reduce(0, +)
        XCTAssertLessThanOrEqual(total, 1.0 + 256 * 0.00005)
        XCTAssertGreaterThan(total, 0.95)
    }

    /// SIGTERM while `ddp embed` encodes (matrix products running on its threads): the process ends with the signal's
    /// status and its sentence, never a crash. A trial's SIGTERM ended in a segmentation fault: the handler's exit() ran
    /// OpenBLAS's destructor, which freed the buffers a product on another thread was using (6 times in 6 with a
    /// release build, at 1.1-1.6 s into 40,000 lines). The crash shows in release builds only (the debug build this
    /// test runs spends too little of its time inside OpenBLAS): here the status, the sentence and the files are checked.
    func testASignalWhileEmbeddingEndsTheProcessWithoutACrash() throws {
        try prepare(copies: 2, into: "data")
        try run(["train", "--config", try config("small", data: "data", batch: 4, steps: 1, context: 32), "--run-dir", path("small")])
        try String(repeating: "Twinkle, twinkle, little star\n", count: 20_000).write(toFile: path("lines.txt"), atomically: true, encoding: .utf8)
        // Start-up (reading the checkpoint, tokenizing) takes under a second here; encoding the lines takes minutes.
        for delay in [1.5, 2.5, 3.5] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: ddp)
            process.arguments = ["embed", "--checkpoint", path("small"), "--input", path("lines.txt"), "--output", path("lines.h5")]
            process.standardOutput = FileHandle.nullDevice
            let standardError = Pipe()
            process.standardError = standardError
            try process.run()
            Thread.sleep(forTimeInterval: delay)
            XCTAssertTrue(process.isRunning, "embed ended before the signal: give it more lines")
            kill(process.processIdentifier, SIGTERM)
            let said = String(decoding: standardError.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            XCTAssertEqual(process.terminationReason, .exit, "ended by a signal of its own after \(delay) s: \(said)")
            XCTAssertEqual(process.terminationStatus, 128 + SIGTERM, said)
            XCTAssertTrue(said.hasSuffix("ddp: stopped by signal \(SIGTERM) (Terminated) before it wrote any file\n"), said)
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasPrefix(".lines.h5") || $0 == "lines.h5" }, [])
        }
    }

    /// `ddp embed` under 1 and 2 ranks: h5py reads tokens, offsets, hidden states and means; the ranks' file agrees
    /// with the single process's (to rounding: ranks batch the lines differently), lines in input order.
    func testEmbedWritesHiddenStatesThatH5pyReads() throws {
        try prepare(copies: 2, into: "data")
        try run(["train", "--config", try config("small", data: "data", batch: 4, steps: 3, context: 32), "--run-dir", path("small")])
        try "Twinkle, twinkle\n\nlittle star,\nHow I wonder what you are!\nUp above\n".write(toFile: path("lines.txt"), atomically: true, encoding: .utf8)
        try run(["embed", "--checkpoint", path("small"), "--input", path("lines.txt"), "--output", path("one.h5"), "--batch-size", "2"])
        try run(["embed", "--checkpoint", path("small"), "--input", path("lines.txt"), "--output", path("two.h5"), "--batch-size", "2"], ranks: 2)
        let one = try File.open(path("one.h5")), two = try File.open(path("two.h5"))
        XCTAssertEqual(try one.openDataset("offsets").read(as: Int64.self), [0, 16, 16, 28, 54, 62])
        XCTAssertEqual(try two.openDataset("offsets").read(as: Int64.self), try one.openDataset("offsets").read(as: Int64.self))
        XCTAssertEqual(try two.openDataset("tokens").read(as: Int32.self), try one.openDataset("tokens").read(as: Int32.self))
        XCTAssertEqual(try one.openDataset("hidden").shape, [62, 32])
        let a = try one.openDataset("hidden").read(as: Float.self), b = try two.openDataset("hidden").read(as: Float.self)
        XCTAssertLessThan(zip(a, b).map { abs($0 - $1) }.max()!, 1e-4)
        XCTAssertTrue(a.contains { $0 != 0 })

        guard let python = pythonWithH5py() else { throw XCTSkip("python3 with h5py is not installed; skipping the h5py read-back") }
        let check = try runProcess(python, ["-c", """
            import h5py, numpy as np
            f = h5py.File('\(path("one.h5"))', 'r')
            h, o, m = f['hidden'][:], f['offsets'][:], f['mean'][:]
            assert h.shape == (62, 32) and m.shape == (5, 32) and f['tokens'].shape == (62,), (h.shape, m.shape)
            for i in range(5):
                expected = h[o[i]:o[i + 1]].mean(0) if o[i + 1] > o[i] else np.zeros(32)
                assert np.allclose(m[i], expected, atol=1e-5), i
            assert f.attrs['format'] in (b'swiftddp-embeddings', 'swiftddp-embeddings')
            print('h5py read', h.shape)
            """])
        XCTAssertEqual(check.status, 0, check.output)
    }

    /// What a user can get wrong: no [MASK] in the prompt, a vocabulary without room for the mask token, embedding
    /// with a model that has no encoder, and a line longer than the context; each a sentence naming what is wrong.
    func testMistakesAreSentences() throws {
        try prepare(copies: 2, into: "data")
        let small = try run(["train", "--config", try config("v260", data: "data", batch: 4, steps: 2, vocab: 260), "--run-dir", path("v")],
                            expect: 1)
        XCTAssertTrue(small.output.contains("model.vocab_size") && small.output.contains("mask token 260"), small.output)
        // Short of the data's own tokens too: the first sentence already asks for room for the mask token (it asked
        // for the data's count, which the next attempt then refused).
        let smaller = try run(["train", "--config", try config("v250", data: "data", batch: 4, steps: 2, vocab: 250), "--run-dir", path("v")],
                              expect: 1)
        XCTAssertTrue(smaller.output.contains("250 is smaller than the tokenizer of the data") && smaller.output.contains("(260 tokens, and the "
                      + "mask token 260 after them); set it to at least 261"), smaller.output)
        // Data of the other task is refused by name before the run directory is touched; an attempt that stopped
        // before its first step (an empty metrics.jsonl) does not block the next one.
        let pairs = try runProcess(ddp, ["prepare", "--synthetic", "reverse", "--samples", "50", "--output", path("rev")])
        XCTAssertEqual(pairs.status, 0, pairs.output)
        let wrongTask = try run(["train", "--config", try config("rev", data: "rev", batch: 4, steps: 2), "--run-dir", path("ok")], expect: 1)
        XCTAssertTrue(wrongTask.output.contains("holds seq2seq data; model.kind encoder-only trains on lm data"), wrongTask.output)
        try FileManager.default.createDirectory(atPath: path("ok"), withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: path("ok/metrics.jsonl"), contents: nil)
        try run(["train", "--config", try config("ok", data: "data", batch: 4, steps: 2), "--run-dir", path("ok")])
        // A checkpoint whose vocabulary has no room for the mask token (written by hand, not by train) is refused.
        try FileManager.default.copyItem(atPath: path("ok/checkpoint-00000002.h5"), toPath: path("tight.h5"))
        do {
            let file = try File.open(path("tight.h5"), mode: .readWrite)
            let stored = try file.stringAttribute("config")
            try file.setAttribute("config", stored.replacingOccurrences(of: "\"vocab_size\":261", with: "\"vocab_size\":260"))
            try file.sealAttributes()
            try file.close()
        }
        for command in [["eval", "--checkpoint", path("tight.h5"), "--data", path("data"), "--split", "train"],
                        ["generate", "--checkpoint", path("tight.h5"), "--prompt", "a[MASK]"]] {
            let tight = try run(command, expect: 1)
            XCTAssertTrue(tight.output.contains("tight.h5") && tight.output.contains("needs 261 token ids"), tight.output)
        }
        // As --init: refused with the checkpoint's own tokenizer; one stored without a tokenizer, whose model has room for
        // the data's tokens and not the mask token, is refused for that (it was told to prepare the data with the
        // checkpoint's tokenizer: the same one).
        let tightConfig = try config("tight", data: "data", batch: 4, steps: 2, vocab: 260)
        let tightInit = try run(["train", "--config", tightConfig, "--run-dir", path("tight-run"), "--init", path("tight.h5")], expect: 1)
        XCTAssertTrue(tightInit.output.contains("tight.h5: its tokenizer needs 261 token ids (the mask token included"), tightInit.output)
        let untokenized: String
        do {
            let run = try RunConfig.parse(try String(contentsOfFile: tightConfig, encoding: .utf8), file: tightConfig)
            let model = try TransformerModel(config: run.model, maxBatch: 1, maxTargetLength: 16)
            model.initializeParameters(seed: 3)
            untokenized = try Checkpoint.save(directory: path("untokenized"), model: model, optimizer: AdamW(layout: model.layout, settings: run.optimizer.settings),
                                              state: TrainingState(step: 1, position: SamplerPosition(), dropoutSeed: 1), config: run,
                                              tokenizer: nil, keep: 1)
        }
        let noRoom = try run(["train", "--config", tightConfig, "--run-dir", path("tight-run"), "--init", untokenized], expect: 1)
        XCTAssertTrue(noRoom.output.contains("\(untokenized)'s model has 260 token ids: the 260 of the tokenizer of the data in")
                      && noRoom.output.contains("no room for the mask token 260"), noRoom.output)
        let noMask = try run(["generate", "--checkpoint", path("ok"), "--prompt", "no mask here"], expect: 1)
        XCTAssertTrue(noMask.output.contains("[MASK]"), noMask.output)
        // Fill-mask samples nothing and decodes nothing: such options are refused, not ignored.
        for option in [["--temperature", "0.5"], ["--max-tokens", "3"], ["--seed", "1"], ["--decode", "beam"], ["--temperature", "0", "--top-k", "3"]] {
            let unused = try run(["generate", "--checkpoint", path("ok"), "--prompt", "a[MASK]"] + option, expect: 1)
            XCTAssertTrue(unused.output.contains("\(option[0]) does not apply to \(path("ok"))"), unused.output)
        }
        // --prompt - reads the text with its masks from standard input, as --prompt gives it.
        let given = try run(["generate", "--checkpoint", path("ok"), "--prompt", "a[MASK]c"])
        let piped = try runProcess(ddp, ["generate", "--checkpoint", path("ok"), "--prompt", "-"], standardInput: "a[MASK]c\n")
        XCTAssertEqual(piped.status, 0, piped.output)
        XCTAssertEqual(piped.stdout, given.stdout)
        // A file of the run is never an output, not only its checkpoints.
        try "a b\n".write(toFile: path("short.txt"), atomically: true, encoding: .utf8)
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("ok/metrics.jsonl")))
        let metrics = try run(["embed", "--checkpoint", path("ok"), "--input", path("short.txt"), "--output", path("ok/metrics.jsonl")], expect: 1)
        XCTAssertTrue(metrics.output.contains("metrics.jsonl") && metrics.output.contains("writing it would destroy what is read"), metrics.output)
        // Many short lines through a pipe, more than memory holds (here under ulimit -v): a sentence, not a crash.
        let many = try runProcess("/bin/sh", ["-c", "yes ab | head -c 30000000 | (ulimit -v 1000000; exec \"$0\" embed --checkpoint \"$1\" "
                                              + "--input /dev/stdin --output \"$2\")", ddp, path("ok"), path("many.h5")], timeout: 120)
        XCTAssertEqual(many.status, 1, many.output)
        XCTAssertTrue(many.stderr.contains("/dev/stdin: is more text than fits in memory here"), many.output)
        // A FIFO (no writer) or a device as embed's input is refused at once, not waited on.
        XCTAssertEqual(mkfifo(path("fifo.txt"), 0o644), 0)
        for input in [path("fifo.txt"), "/dev/zero"] {
            let special = try run(["embed", "--checkpoint", path("ok"), "--input", input, "--output", path("special.h5")], expect: 1)
            XCTAssertTrue(special.output.contains("\(input): is not a regular file"), special.output)
        }
        try String(repeating: "x", count: 40).write(toFile: path("long.txt"), atomically: true, encoding: .utf8)
        let long = try run(["embed", "--checkpoint", path("ok"), "--input", path("long.txt"), "--output", path("long.h5")], expect: 1)
        XCTAssertTrue(long.output.contains("long.txt line 1 is 40 tokens"), long.output)
        // More hidden states than the process may allocate: refused before anything is encoded.
        try String(repeating: "the cat sat\n", count: 400_000).write(toFile: path("big.txt"), atomically: true, encoding: .utf8)
        let big = try runProcess("/bin/sh", ["-c", "ulimit -v 1000000; exec \"$0\" \"$@\"", ddp, "embed", "--checkpoint", path("ok"),
                                             "--input", path("big.txt"), "--output", path("big.h5")], environment: mpiEnvironment, timeout: 120)
        XCTAssertEqual(big.status, 1, big.output)
        XCTAssertTrue(big.output.contains("holding the hidden states of") && big.output.contains("big.txt"), big.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("long.h5")))
        let overwrite = try run(["embed", "--checkpoint", path("ok"), "--input", path("long.txt"), "--output", path("long.txt")], expect: 1)
        XCTAssertTrue(overwrite.output.contains("long.txt"), overwrite.output)
        XCTAssertEqual(try String(contentsOfFile: path("long.txt"), encoding: .utf8).count, 40, "the input is untouched")
    }
}
