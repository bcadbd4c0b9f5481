import Data
import Foundation
import HDF5
import TestSupport
import XCTest

/// `ddp train` under real mpirun on real files: data-parallel equivalence and exact resume.
final class TrainTests: XCTestCase {
    private var ddp: String { builtProduct("ddp") }
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try makeTemporaryDirectory("ddp-train")
        // Strings of 1-12 letters: batches on different ranks pad to different lengths.
        let prepare = try runProcess(ddp, ["prepare", "--synthetic", "reverse", "--samples", "400", "--max-length", "12",
                                           "--valid-fraction", "0", "--output", path("data")])
        XCTAssertEqual(prepare.status, 0, prepare.output)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    private func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    private func config(batch: Int, accumulation: Int = 1, steps: Int, extra: String = "", lr: String = "3.0e-3",
                        clip: String = "1.0", threads: Int = 1) throws -> String {
        let file = path("b\(batch)-a\(accumulation)-s\(steps)-\(abs(extra.hashValue))-\(lr)-\(clip)-t\(threads).yaml")
        try """
            model: {kind: encoder-decoder, vocab_size: 260, d_model: 32, heads: 4, encoder_layers: 1, decoder_layers: 1, d_ff: 64,
                    activation: gelu, norm: pre, positions: sinusoidal, max_length: 16, dropout: 0.0, tied_embeddings: true}
            data: {directory: \(path("data")), source_length: 13, target_length: 13}
            training: {batch_size: \(batch), grad_accum: \(accumulation), steps: \(steps), label_smoothing: 0.1, seed: 3, threads: \(threads),
                       clip_norm: \(clip), bucket_mb: 0.01, log_every: 5\(extra)}
            optimizer: {lr: \(lr)}
            checkpoint: {keep: 5}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }

    @discardableResult
    private func train(ranks: Int, config: String, run: String, resume: Bool = false, environment: [String: String] = [:],
                       unsetting: [String] = [], file: StaticString = #filePath, line: UInt = #line) throws -> ProcessResult {
        let arguments = ["train", "--config", config, "--run-dir", path(run)] + (resume ? ["--resume"] : [])
        let result = ranks == 1 ? try runProcess(ddp, arguments, environment: mpiEnvironment.merging(environment) { _, new in new },
                                                 unsetting: unsetting, timeout: 300)
                                : try runUnderMPI(ranks: ranks, ddp, arguments, timeout: 300)
        XCTAssertFalse(result.timedOut, result.output, file: file, line: line)
        XCTAssertEqual(result.status, 0, result.output, file: file, line: line)
        return result
    }

    private func losses(_ run: String) throws -> [Double] { try trainingLosses(inRun: path(run)) }

    /// Every parameter tensor of a checkpoint by name.
    private func tensors(_ run: String, step: Int) throws -> [String: [Float]] {
        let file = try File.open(path(String(format: "\(run)/checkpoint-%08d.h5", step)))
        var result: [String: [Float]] = [:]
        for member in try file.openGroup("params").members() {
            result[member.name] = try file.openDataset("params/\(member.name)").read(as: Float.self)
        }
        return result
    }

    private func parameters(_ run: String, step: Int) throws -> [Float] {
        try tensors(run, step: step).sorted { $0.key < $1.key }.flatMap(\.value)
    }

    private func assertClose(_ a: [Double], _ b: [Double], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        for (step, (x, y)) in zip(a, b).enumerated() {
            XCTAssertEqual(x, y, accuracy: abs(y) * 1e-5, "\(what): step \(step + 1)", file: file, line: line)
        }
    }

    /// 2 ranks x 4 == 1 rank x 8 == 1 rank x 4 x accumulation 2: same losses (1e-5) and parameters (1e-5).
    func testDataParallelEquivalence() throws {
        try train(ranks: 1, config: try config(batch: 8, steps: 20), run: "one")
        try train(ranks: 2, config: try config(batch: 4, steps: 20), run: "two")
        try train(ranks: 1, config: try config(batch: 4, accumulation: 2, steps: 20), run: "accumulated")
        let reference = try losses("one")
        XCTAssertEqual(reference.count, 20)
        assertClose(try losses("two"), reference, "2 ranks x 4")
        assertClose(try losses("accumulated"), reference, "1 rank x 4 x 2")
        try assertSameParameters(["two", "accumulated"], as: "one", step: 20)
    }

    /// Final parameters of `runs` against `reference`'s (`parameterMismatches`: each tensor within 1e-5 of its norm,
    /// key-projection biases, whose gradient is exactly zero, within 2 lr (3e-3) per step).
    private func assertSameParameters(_ runs: [String], as reference: String, step: Int, file: StaticString = #filePath,
                                      line: UInt = #line) throws {
        let final = try tensors(reference, step: step)
        for run in runs {
            let mismatches = parameterMismatches(try tensors(run, step: step), reference: final, steps: step, lr: 3e-3)
            XCTAssertTrue(mismatches.isEmpty, "\(run): " + mismatches.joined(separator: "; "), file: file, line: line)
        }
    }

    /// Token-budget batches (training.max_tokens 24 over pairs of 2-13 positions, so many batches of a few samples
    /// and every 13-position pair alone): 2 ranks and 1 rank x grad_accum 2 take the updates of 1 rank, also where a
    /// batch has one sample and a rank none; 150 updates run past the first epoch.
    func testTokenBudgetDataParallelEquivalence() throws {
        let budget = ", max_tokens: 24"
        let one = try train(ranks: 1, config: try config(batch: 8, steps: 150, extra: budget), run: "one")
        try train(ranks: 2, config: try config(batch: 8, steps: 150, extra: budget), run: "two")
        try train(ranks: 1, config: try config(batch: 8, accumulation: 2, steps: 150, extra: budget), run: "accumulated")
        XCTAssertTrue(one.stdout.contains("token-budget batches of at most 24 positions"), one.stdout)
        let perEpoch = try XCTUnwrap(one.stdout.firstMatch(of: /positions \(training.max_tokens\), (\d+) updates per epoch/).flatMap { Int($0.1) })
        XCTAssertLessThan(perEpoch, 150, "the run crosses an epoch boundary")
        XCTAssertTrue(one.stdout.contains("(padding "), one.stdout)
        let reference = try losses("one")
        XCTAssertEqual(reference.count, 150)
        assertClose(try losses("two"), reference, "2 ranks, token budget")
        assertClose(try losses("accumulated"), reference, "1 rank x 2 micro-steps, token budget")
        try assertSameParameters(["two", "accumulated"], as: "one", step: 150)
        // metrics.jsonl has each update's padding share, and the batches are of similar length: little padding.
        let metrics = try String(contentsOfFile: path("one/metrics.jsonl"), encoding: .utf8).split(separator: "\n")
            .compactMap { try JSONSerialization.jsonObject(with: Foundation.Data($0.utf8)) as? [String: Any] }
            .compactMap { $0["padding_share"] as? Double }
        XCTAssertEqual(metrics.count, 150)
        XCTAssertLessThan(metrics.reduce(0, +) / 150, 0.15)
    }

    /// training.length_groups 2 (batches of two length groups of at most 24 positions): 2 ranks equal 1 rank x
    /// grad_accum 2, a resume on 1 rank continues the 2-rank run; 1 rank without accumulation, a changed group count on
    /// resume, a pair over one group's budget and length_groups without max_tokens are refused by name.
    func testTokenBudgetLengthGroups() throws {
        let grouped = ", max_tokens: 48, length_groups: 2"
        let one = try train(ranks: 1, config: try config(batch: 8, accumulation: 2, steps: 60, extra: grouped), run: "accumulated")
        XCTAssertTrue(one.stdout.contains("token-budget batches of up to 2 length groups of at most 24 positions (training.max_tokens 48 / training.length_groups 2)"), one.stdout)
        try train(ranks: 2, config: try config(batch: 8, steps: 60, extra: grouped), run: "two")
        let reference = try losses("accumulated")
        XCTAssertEqual(reference.count, 60)
        assertClose(try losses("two"), reference, "2 ranks, two length groups")
        try assertSameParameters(["two"], as: "accumulated", step: 60)
        try train(ranks: 2, config: try config(batch: 8, steps: 30, extra: grouped), run: "moved")
        try train(ranks: 1, config: try config(batch: 8, accumulation: 2, steps: 60, extra: grouped), run: "moved", resume: true)
        assertClose(try losses("moved"), reference, "resumed on 1 rank x grad_accum 2")
        // A checkpoint written inside an epoch by a build that joined the groups by chance (sampler version 1), or by
        // a later build whose order this one does not know, is refused: its epoch would go on in another order,
        // repeating some samples and skipping others.
        try train(ranks: 1, config: try config(batch: 8, accumulation: 2, steps: 30, extra: grouped), run: "earlier")
        XCTAssertEqual(try File.open(path("earlier/checkpoint-00000030.h5")).int64Attribute("sampler_version"), 2)
        for (version, words) in [(1, "checkpoint-00000030.h5: cannot resume: it was written inside epoch 0 (at batch 30) by an earlier "
                                     + "SwiftDDP, which joined training.length_groups by chance"),
                                 (3, "by a later SwiftDDP (sampler version 3; this one's is 2)")] {
            let file = try File.open(path("earlier/checkpoint-00000030.h5"), mode: .readWrite)
            try file.setAttribute("sampler_version", Int64(version))
            try file.sealAttributes()
            try file.close()
            let resumed = try runProcess(ddp, ["train", "--config", try config(batch: 8, accumulation: 2, steps: 60, extra: grouped),
                                               "--run-dir", path("earlier"), "--resume"], environment: mpiEnvironment)
            XCTAssertNotEqual(resumed.status, 0, resumed.output)
            XCTAssertTrue(resumed.stderr.contains(words), "sampler version \(version): \(resumed.output)")
        }

        func refused(_ extra: String, accumulation: Int = 1, resume: String? = nil) throws -> String {
            let result = try runProcess(ddp, ["train", "--config", try config(batch: 8, accumulation: accumulation, steps: 70, extra: extra),
                                              "--run-dir", resume.map(path) ?? path("refused")] + (resume == nil ? [] : ["--resume"]),
                                        environment: mpiEnvironment)
            XCTAssertNotEqual(result.status, 0, result.output)
            XCTAssertFalse(result.stdout.contains("step "), "refused before training: \(result.output)")
            return result.stderr
        }
        let unaccumulated = try refused(grouped)
        XCTAssertTrue(unaccumulated.contains("training.length_groups 2 needs at least as many micro-batches per update")
                      && unaccumulated.contains("1 x 1 here") && unaccumulated.contains("raise training.grad_accum to 2"), unaccumulated)
        let changed = try refused(", max_tokens: 48, length_groups: 1", accumulation: 2, resume: "accumulated")
        XCTAssertTrue(changed.contains("training.length_groups: 2 in the checkpoint, 1 now"), changed)
        let overGroup = try refused(", max_tokens: 24, length_groups: 2", accumulation: 2)
        XCTAssertTrue(overGroup.contains("train-00000.h5: pair ") && overGroup.contains("training.length_groups 2")
                      && overGroup.contains("(training.max_tokens 24 / 2 = 12)"), overGroup)
        let withoutBudget = try refused(", length_groups: 2", accumulation: 2)
        XCTAssertTrue(withoutBudget.contains("training.length_groups") && withoutBudget.contains("needs training.max_tokens"), withoutBudget)
    }

    /// A budget far above the data: evaluation's rows (max_tokens / the longest lengths by default) are allocated only
    /// as far as a rank's share of the validation split can fill them, so under a 3 GB address-space cap a run with
    /// max_tokens 400000 over 40 pairs trains and evaluates. Before, it needed 5.3 GiB for 30769 evaluation rows, and
    /// was refused.
    func testABudgetFarAboveASmallValidationSplitAllocatesOnlyWhatItFills() throws {
        let prepare = try runProcess(ddp, ["prepare", "--synthetic", "reverse", "--samples", "40", "--max-length", "12",
                                           "--valid-fraction", "0.1", "--output", path("small")])
        XCTAssertEqual(prepare.status, 0, prepare.output)
        try """
            model: {kind: encoder-decoder, vocab_size: 260, d_model: 64, heads: 2, encoder_layers: 1, decoder_layers: 1, d_ff: 128,
                    activation: relu, norm: pre, positions: sinusoidal, max_length: 16}
            data: {directory: \(path("small")), source_length: 13, target_length: 13}
            training: {max_tokens: 400000, steps: 2, threads: 1}
            """.write(toFile: path("budget.yaml"), atomically: true, encoding: .utf8)
        let capped = try runProcess("/bin/sh", ["-c", "ulimit -v 3000000; exec \"$0\" \"$@\"", ddp, "train", "--config",
                                                path("budget.yaml"), "--run-dir", path("capped")], environment: mpiEnvironment, timeout: 300)
        XCTAssertEqual(capped.status, 0, capped.output)
        XCTAssertTrue(capped.stdout.contains("final validation: loss"), capped.output)
        // ddp eval of that checkpoint too (its stored batch_size is the derived 30769).
        let evaluated = try runProcess("/bin/sh", ["-c", "ulimit -v 3000000; exec \"$0\" \"$@\"", ddp, "eval", "--checkpoint", path("capped")],
                                       environment: mpiEnvironment, timeout: 300)
        XCTAssertEqual(evaluated.status, 0, evaluated.output)
    }

    /// A token-budget run resumed is the uninterrupted run, bitwise on 1 rank and within 1e-5 on 2; changing the
    /// budget on resume is refused by name; a pair longer than the budget is named with its file.
    func testTokenBudgetResumeAndErrors() throws {
        let budget = ", max_tokens: 40"
        try train(ranks: 1, config: try config(batch: 8, steps: 30, extra: budget), run: "straight")
        try train(ranks: 1, config: try config(batch: 8, steps: 15, extra: budget), run: "resumed")
        try train(ranks: 1, config: try config(batch: 8, steps: 30, extra: budget), run: "resumed", resume: true)
        let straight = try losses("straight")
        XCTAssertEqual(try losses("resumed").map(\.bitPattern), straight.map(\.bitPattern))
        XCTAssertEqual(try parameters("resumed", step: 30).map(\.bitPattern), try parameters("straight", step: 30).map(\.bitPattern))
        try train(ranks: 1, config: try config(batch: 8, steps: 15, extra: budget), run: "moved")
        try train(ranks: 2, config: try config(batch: 8, steps: 30, extra: budget), run: "moved", resume: true)
        assertClose(try losses("moved"), straight, "resumed on 2 ranks")

        let changed = try runProcess(ddp, ["train", "--config", try config(batch: 8, steps: 40, extra: ", max_tokens: 48"),
                                           "--run-dir", path("straight"), "--resume"], environment: mpiEnvironment)
        XCTAssertNotEqual(changed.status, 0)
        XCTAssertTrue(changed.stderr.contains("training.max_tokens: 40 in the checkpoint, 48 now"), changed.output)
        let fixed = try runProcess(ddp, ["train", "--config", try config(batch: 8, steps: 40), "--run-dir", path("straight"), "--resume"],
                                   environment: mpiEnvironment)
        XCTAssertNotEqual(fixed.status, 0)
        XCTAssertTrue(fixed.stderr.contains("training.max_tokens: 40 in the checkpoint, none (training.batch_size) now"), fixed.output)

        let tooSmall = try runProcess(ddp, ["train", "--config", try config(batch: 8, steps: 5, extra: ", max_tokens: 10"),
                                            "--run-dir", path("small")], environment: mpiEnvironment)
        XCTAssertNotEqual(tooSmall.status, 0)
        XCTAssertTrue(tooSmall.stderr.contains("train-00000.h5: pair ") && tooSmall.stderr.contains("more than training.max_tokens 10"),
                      tooSmall.output)
        // A pair longer than the model takes is named before training starts, not when the loader reaches it.
        let long = try runProcess(ddp, ["train", "--config", try config(batch: 8, steps: 5, extra: ", max_tokens: 40"), "--run-dir", path("long"),
                                        "--set", "data.source_length=8", "--set", "data.target_length=8"])
        XCTAssertNotEqual(long.status, 0)
        let takes8 = "the model takes 8 and 8 (data.source_length and data.target_length)"
        XCTAssertTrue(long.stderr.contains("train-00000.h5: pair ") && long.stderr.contains(takes8), long.output)
        XCTAssertFalse(long.stdout.contains("training "), "refused before the start-up line: \(long.output)")
        // So it is with training.batch_size, whose batches are built one step at a time.
        let longFixed = try runProcess(ddp, ["train", "--config", try config(batch: 8, steps: 5), "--run-dir", path("long-fixed"),
                                             "--set", "data.source_length=8", "--set", "data.target_length=8"])
        XCTAssertNotEqual(longFixed.status, 0)
        XCTAssertTrue(longFixed.stderr.contains("train-00000.h5: pair ") && longFixed.stderr.contains(takes8), longFixed.output)
        XCTAssertFalse(longFixed.stdout.contains("training "), "refused before the start-up line: \(longFixed.output)")
        // And with a valid split whose pairs are longer than the train split's: evaluation would meet them mid-run.
        let prepare = try runProcess(ddp, ["prepare", "--synthetic", "reverse", "--samples", "100", "--max-length", "30",
                                           "--valid-fraction", "0.5", "--output", path("long-data")])
        XCTAssertEqual(prepare.status, 0, prepare.output)
        try FileManager.default.createDirectory(atPath: path("mixed"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: path("data/train-00000.h5"), toPath: path("mixed/train-00000.h5"))
        try FileManager.default.copyItem(atPath: path("long-data/valid-00000.h5"), toPath: path("mixed/valid-00000.h5"))
        for extra in ["", ", max_tokens: 40"] {
            let longValid = try runProcess(ddp, ["train", "--config", try config(batch: 8, steps: 5, extra: extra), "--run-dir", path("long-valid"),
                                                 "--set", "data.directory=\(path("mixed"))"])
            XCTAssertNotEqual(longValid.status, 0)
            XCTAssertTrue(longValid.stderr.contains("mixed/valid-00000.h5: pair ")
                          && longValid.stderr.contains("the model takes 13 and 13 (data.source_length and data.target_length)"), longValid.output)
            XCTAssertFalse(longValid.stdout.contains("training "), "refused before the start-up line: \(longValid.output)")
        }
        // ddp eval checks the whole split before evaluating, and names the first such pair in index order (its
        // batches go by length, so the loader alone would meet the longest one last).
        let firstLong = try SampleReader(split: try DataSplit(directory: path("mixed"), split: "valid")).allLengths()
            .firstIndex { $0.source + 1 > 13 || $0.target + 1 > 13 }
        let evaluated = try runProcess(ddp, ["eval", "--checkpoint", path("straight"), "--data", path("mixed"), "--threads", "1"])
        XCTAssertNotEqual(evaluated.status, 0)
        XCTAssertTrue(evaluated.stderr.contains("mixed/valid-00000.h5: pair \(try XCTUnwrap(firstLong)) has "), evaluated.output)
        XCTAssertFalse(evaluated.stdout.contains("loss"), "no partial result: \(evaluated.output)")
        // So does bench data, whatever --batches it is given.
        let benched = try runProcess(ddp, ["bench", "data", "--data", path("long-data"), "--config", try config(batch: 8, steps: 5),
                                           "--batches", "1"])
        XCTAssertNotEqual(benched.status, 0)
        XCTAssertTrue(benched.stderr.contains("long-data/train-00000.h5: pair ") && benched.stderr.contains("(data.source_length and data.target_length)"),
                      benched.output)
        // Text given to eval is held to the checkpoint's own lengths, by their config keys (eval has no --max-length).
        try "a short one\n\(String(repeating: "z", count: 40))\n".write(toFile: path("long.src"), atomically: true, encoding: .utf8)
        try "x\ny\n".write(toFile: path("long.tgt"), atomically: true, encoding: .utf8)
        let onText = try runProcess(ddp, ["eval", "--checkpoint", path("straight"), "--source", path("long.src"), "--target", path("long.tgt")])
        XCTAssertNotEqual(onText.status, 0)
        XCTAssertTrue(onText.stderr.contains("pair 2 has 40 source and 1 target tokens, over the 12 tokens a side the checkpoint's model takes "
                                             + "(data.source_length 13 and data.target_length 13"), onText.output)
        let zero = try runProcess(ddp, ["train", "--config", try config(batch: 8, steps: 5, extra: ", max_tokens: 0"), "--run-dir", path("zero")])
        XCTAssertNotEqual(zero.status, 0)
        XCTAssertTrue(zero.stderr.contains("training.max_tokens") && zero.stderr.contains("got 0"), zero.output)
    }

    /// A valid split written with another tokenizer than the train split is refused before training, naming both
    /// files (its ids would otherwise reach the embedding at the first evaluation, past the vocabulary).
    func testValidSplitWithAnotherTokenizerIsRefused() throws {
        let lines = (0..<60).map { "line \($0) with some words \($0 * 7)" }
        try lines.joined(separator: "\n").write(toFile: path("bpe.src"), atomically: true, encoding: .utf8)
        try lines.map { String($0.reversed()) }.joined(separator: "\n").write(toFile: path("bpe.tgt"), atomically: true, encoding: .utf8)
        let prepare = try runProcess(ddp, ["prepare", "--source", path("bpe.src"), "--target", path("bpe.tgt"), "--tokenizer", "bpe",
                                           "--vocab-size", "300", "--valid-fraction", "0.5", "--output", path("bpe-data")])
        XCTAssertEqual(prepare.status, 0, prepare.output)
        try FileManager.default.createDirectory(atPath: path("two-tokenizers"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: path("data/train-00000.h5"), toPath: path("two-tokenizers/train-00000.h5"))
        try FileManager.default.copyItem(atPath: path("bpe-data/valid-00000.h5"), toPath: path("two-tokenizers/valid-00000.h5"))
        let result = try runProcess(ddp, ["train", "--config", try config(batch: 8, steps: 5), "--run-dir", path("two"),
                                          "--set", "data.directory=\(path("two-tokenizers"))"])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.stderr.contains("two-tokenizers/valid-00000.h5: its tokenizer differs from ")
                      && result.stderr.contains("two-tokenizers/train-00000.h5's"), result.output)
        XCTAssertFalse(result.stdout.contains("training "), "refused before the start-up line: \(result.output)")
    }

    /// Data the model cannot use is named for what it is: lm data for an encoder-decoder model is the other task (it
    /// used to be "an lm dataset needs a sequence length"), also when it is too short for one window; a data directory
    /// without a valid split is said at start-up, not found out from a metrics.jsonl without evaluations.
    func testDataOfTheOtherTaskIsRefusedAndAMissingValidSplitIsSaid() throws {
        let text = (0..<40).map { "document \($0) has a few words in it" }.joined(separator: "\n\n")
        try text.write(toFile: path("corpus.txt"), atomically: true, encoding: .utf8)
        try "hi".write(toFile: path("short.txt"), atomically: true, encoding: .utf8)
        for (input, output) in [("corpus.txt", "lm"), ("short.txt", "short-lm")] {
            let prepare = try runProcess(ddp, ["prepare", "--task", "lm", "--input", path(input), "--output", path(output), "--valid-fraction", "0"])
            XCTAssertEqual(prepare.status, 0, prepare.output)
            let wrongTask = try runProcess(ddp, ["train", "--config", try config(batch: 4, steps: 2), "--run-dir", path("lm-run"),
                                                 "--set", "data.directory=\(path(output))"])
            XCTAssertEqual(wrongTask.status, 1, wrongTask.output)
            XCTAssertTrue(wrongTask.stderr.contains("\(path(output)): holds lm data; model.kind encoder-decoder trains on seq2seq data "
                                                    + "(ddp prepare --task seq2seq)"), wrongTask.output)
        }
        // setUp's data has no valid split (--valid-fraction 0).
        let noValid = try train(ranks: 1, config: try config(batch: 4, steps: 2), run: "no-valid")
        XCTAssertTrue(noValid.stdout.contains("no valid split in \(path("data")) (no valid-*.h5 file): the run is not evaluated"), noValid.output)
        let metrics = try String(contentsOfFile: path("no-valid/metrics.jsonl"), encoding: .utf8)
        XCTAssertTrue(metrics.contains("\"loss\"") && !metrics.contains("valid_"), metrics)
    }

    /// A start-up refusal under mpirun ends the job without an MPI abort, its sentence printed once: on one rank only
    /// (its --set names lm data) with that rank's number; on every rank without; in the data checks and in the
    /// batching checks after the ranks' agreement on the config; and ranks that run different commands.
    func testAStartUpRefusalOnAnyRankStopsEveryRankWithItsSentence() throws {
        guard let mpirun = findOnPath("mpirun") else { throw XCTSkip("mpirun is not installed") }
        try "a few words\n\nand a few more words here, enough for windows".write(toFile: path("corpus.txt"), atomically: true, encoding: .utf8)
        let prepare = try runProcess(ddp, ["prepare", "--task", "lm", "--input", path("corpus.txt"), "--output", path("lm"), "--valid-fraction", "0"])
        XCTAssertEqual(prepare.status, 0, prepare.output)
        let good = try config(batch: 4, steps: 2)
        func job(_ first: [String], _ second: [String]) throws -> ProcessResult {
            let result = try runProcess(mpirun, ["-np", "1", ddp, "train", "--config", good, "--run-dir", path("refused")] + first + [":",
                                                 "-np", "1", ddp, "train", "--config", good, "--run-dir", path("refused")] + second,
                                        environment: mpiEnvironment, timeout: 120)
            XCTAssertFalse(result.timedOut, "the job hung:\n\(result.output)")
            XCTAssertNotEqual(result.status, 0, result.output)
            XCTAssertFalse(result.output.contains("MPI_ABORT"), result.output)
            return result
        }
        let lm = ["--set", "data.directory=\(path("lm"))"]
        let oneRank = try job([], lm)
        // Rank 1's sentence, printed once by rank 0 (rank 0 only relays it).
        XCTAssertTrue(oneRank.stderr.contains("Error: rank 1: \(path("lm")): holds lm data"), oneRank.output)
        XCTAssertEqual(oneRank.stderr.components(separatedBy: "holds lm data").count - 1, 1, oneRank.output)
        let bothRanks = try job(lm, lm)
        XCTAssertTrue(bothRanks.stderr.contains("Error: \(path("lm")): holds lm data"), "the same sentence, once: \(bothRanks.output)")
        XCTAssertEqual(bothRanks.stderr.components(separatedBy: "holds lm data").count - 1, 1, bothRanks.output)
        // The batching checks (after the ranks agreed on the config): a budget smaller than the longest pair.
        let small = ["--set", "training.max_tokens=3"]
        let budget = try job(small, small)
        XCTAssertTrue(budget.stderr.contains("Error: ") && budget.stderr.contains("training.max_tokens"), budget.output)
        // Ranks that run different commands (mpirun's 'A : B' with train and eval) stop at once, said once; before,
        // each waited in collectives the other never made.
        let mixed = try runProcess(mpirun, ["-np", "1", ddp, "train", "--config", good, "--run-dir", path("mixed"), ":",
                                            "-np", "1", ddp, "bench", "step", "--config", good], environment: mpiEnvironment, timeout: 120)
        XCTAssertFalse(mixed.timedOut, "the job hung:\n\(mixed.output)")
        XCTAssertNotEqual(mixed.status, 0, mixed.output)
        XCTAssertEqual(mixed.stderr.components(separatedBy: "Error: the ranks of this job run different commands (rank 0 ddp train, "
                                                             + "rank 1 ddp bench step)").count - 1, 1, mixed.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("mixed")), "nothing written")

        // A rank that stops before MPI (an argument error, --help, a check before the command starts MPI) takes part
        // in the job's first exchange: the others stop with its sentence, said once by rank 0. Before, a rank printing
        // its help left the other waiting forever, and an error every rank raised was printed by each.
        // The same for a one-process command's help beside a multi-rank command (the train rank waited in MPI_Init).
        for helped in ["train", "inspect"] {
            let help = try runProcess(mpirun, ["-np", "1", ddp, "train", "--config", good, "--run-dir", path("helped"), ":",
                                               "-np", "1", ddp, helped, "--help"], environment: mpiEnvironment, timeout: 120)
            XCTAssertFalse(help.timedOut, "the job hung:\n\(help.output)")
            XCTAssertNotEqual(help.status, 0, help.output)
            XCTAssertTrue(help.stderr.contains("Error: rank 1: printed what ddp \(helped) was asked for (--help, --version) instead of running it"),
                          help.output)
            XCTAssertFalse(help.output.contains("MPI_ABORT") || help.output.contains("OVERVIEW"), help.output)
            XCTAssertFalse(FileManager.default.fileExists(atPath: path("helped")), "nothing written")
        }
        let bothHelp = try runProcess(mpirun, ["-np", "2", "--oversubscribe", ddp, "eval", "--help"], environment: mpiEnvironment, timeout: 120)
        XCTAssertEqual(bothHelp.status, 0, bothHelp.output)
        XCTAssertEqual(bothHelp.stdout.components(separatedBy: "OVERVIEW: ").count - 1, 1, "the help, once: \(bothHelp.output)")
        for (arguments, sentence) in [(["eval", "--checkpoint", path("absent.h5")], "Error: checkpoint \(path("absent.h5")): does not exist"),
                                      (["train", "--confg", good], "Error: Missing expected argument '--config <config>'"),
                                      (["prepare", "--synthetic", "reverse", "--output", path("twice")], "Error: ddp prepare runs as one process")] {
            let both = try runProcess(mpirun, ["-np", "2", "--oversubscribe", ddp] + arguments, environment: mpiEnvironment, timeout: 120)
            XCTAssertFalse(both.timedOut, "the job hung:\n\(both.output)")
            XCTAssertNotEqual(both.status, 0, both.output)
            // (A one-process command's error does not start MPI, so that a script each rank runs may go on to a
            // multi-rank command: each rank says it, and mpirun ends the job at the first non-zero exit.)
            let count = both.stderr.components(separatedBy: sentence).count - 1
            if arguments[0] == "prepare" { XCTAssertTrue((1...2).contains(count), both.output) } else { XCTAssertEqual(count, 1, "once: \(both.output)") }
        }
        let oneEval = try runProcess(mpirun, ["-np", "1", ddp, "eval", "--checkpoint", path("absent.h5"), ":",
                                              "-np", "1", ddp, "eval", "--checkpoint", path("other.h5")], environment: mpiEnvironment, timeout: 120)
        XCTAssertFalse(oneEval.timedOut, "the job hung:\n\(oneEval.output)")
        XCTAssertTrue(oneEval.stderr.contains("Error: rank 0: checkpoint \(path("absent.h5")): does not exist")
                      && oneEval.stderr.contains("Error: rank 1: checkpoint \(path("other.h5")): does not exist"), oneEval.output)
        // A compute-thread setting refused on one rank only (inside the command): the same, said once.
        let bench = ["bench", "step", "--config", good, "--steps", "1", "--warmup", "0"]
        let badThreads = try runProcess(mpirun, ["-np", "1", "-x", "SWIFTDDP_THREADS=1", ddp] + bench + [":", "-np", "1", "-x", "SWIFTDDP_THREADS=abc", ddp]
                                        + bench, environment: mpiEnvironment.filter { $0.key != "SWIFTDDP_THREADS" }, timeout: 120)
        XCTAssertFalse(badThreads.timedOut, "the job hung:\n\(badThreads.output)")
        XCTAssertNotEqual(badThreads.status, 0, badThreads.output)
        XCTAssertEqual(badThreads.stderr.components(separatedBy: "Error: rank 1: SWIFTDDP_THREADS=abc: expected a whole number").count - 1, 1,
                       badThreads.output)
        XCTAssertFalse(badThreads.output.contains("MPI_ABORT"), badThreads.output)
    }

    /// grad_compression bf16: 2 ranks x 4 follow 1 rank x 8 (float32) within bfloat16's rounding. The loss tolerance
    /// widens from 1e-5 to 3e-4 (measured here: 6.3e-5 over 20 steps, against 2e-8 without compression) and the
    /// parameters' from 1e-5 to 1e-2; the test also checks compression changed something.
    func testBFloat16CompressionStaysCloseToFloat32() throws {
        try train(ranks: 1, config: try config(batch: 8, steps: 20), run: "one")
        try train(ranks: 2, config: try config(batch: 4, steps: 20, extra: ", grad_compression: bf16"), run: "bf16")
        try train(ranks: 2, config: try config(batch: 4, steps: 20), run: "fp32")
        let reference = try losses("one"), compressed = try losses("bf16"), exact = try losses("fp32")
        XCTAssertEqual(compressed.count, 20)
        var worst = 0.0, worstExact = 0.0
        for (step, (a, b)) in zip(reference, compressed).enumerated() {
            XCTAssertEqual(b, a, accuracy: abs(a) * 3e-4, "bf16: step \(step + 1)")
            worst = max(worst, abs(a - b) / abs(a))
        }
        for (a, b) in zip(reference, exact) { worstExact = max(worstExact, abs(a - b) / abs(a)) }
        XCTAssertGreaterThan(worst, worstExact, "bf16 compression left the losses as exact as float32")
        print("bf16 compression: largest relative loss difference over 20 steps \(worst) (float32: \(worstExact))")
        let final = try tensors("one", step: 20)
        for (name, other) in try tensors("bf16", step: 20) where !name.hasSuffix("k_proj.bias") {
            let reference = try XCTUnwrap(final[name])
            let difference = zip(reference, other).map { ($0 - $1) * ($0 - $1) }.reduce(0, +).squareRoot()
            let norm = reference.map { $0 * $0 }.reduce(0, +).squareRoot()
            XCTAssertLessThan(difference / max(norm, 1e-12), 1e-2, "bf16: final \(name)")
        }
    }

    /// 10 steps, stop, resume to 20 == 20 uninterrupted: bitwise on the same world size; on 2 ranks the run
    /// continues the same global data order (equal within 1e-5).
    func testResumeIsExact() throws {
        try train(ranks: 1, config: try config(batch: 8, steps: 20), run: "straight")
        try train(ranks: 1, config: try config(batch: 8, steps: 10), run: "resumed")
        try train(ranks: 1, config: try config(batch: 8, steps: 20), run: "resumed", resume: true)
        let straight = try losses("straight"), resumed = try losses("resumed")
        XCTAssertEqual(resumed.count, 20)
        XCTAssertEqual(resumed.map(\.bitPattern), straight.map(\.bitPattern), "losses bitwise equal")
        XCTAssertEqual(try parameters("resumed", step: 20).map(\.bitPattern), try parameters("straight", step: 20).map(\.bitPattern))

        try train(ranks: 1, config: try config(batch: 8, steps: 10), run: "moved")
        try train(ranks: 2, config: try config(batch: 4, steps: 20), run: "moved", resume: true)
        assertClose(try losses("moved"), straight, "resumed on 2 ranks")
    }

    /// `threads: 1` and `threads: 3` write bitwise identical checkpoints (parameters, both AdamW moments, step and
    /// sampler position) and losses: with the kernels OpenBLAS picks for this CPU (`OPENBLAS_CORETYPE` removed from
    /// the environment, which may set it: AVX-512 ones where the CPU has it) and with its AVX2 (Haswell) kernels,
    /// which compute a row differently by where a split puts it. 16 x 13 = 208 rows and a vocabulary of 260 cut the
    /// forward GEMMs into two tiles each.
    func testCheckpointsAreBitwiseTheSameForAnyThreadCount() throws {
        for (label, environment) in [("default", [String: String]()), ("haswell", ["OPENBLAS_CORETYPE": "Haswell"])] {
            for threads in [1, 3] {
                let result = try train(ranks: 1, config: try config(batch: 16, steps: 8, threads: threads), run: "\(label)-t\(threads)",
                                       environment: environment, unsetting: label == "default" ? ["OPENBLAS_CORETYPE"] : [])
                let kernels = result.stdout.firstMatch(of: /OpenBLAS (\w+) kernels/)?.1 ?? "none"
                print("TrainTests: \(label), \(threads) thread(s): OpenBLAS \(kernels) kernels")
                if label == "haswell" { XCTAssertEqual(kernels, "Haswell", result.output) }
            }
            let one = try File.open(path("\(label)-t1/checkpoint-00000008.h5"))
            let three = try File.open(path("\(label)-t3/checkpoint-00000008.h5"))
            for attribute in ["step", "epoch", "batch", "optimizer_step", "dropout_seed"] {
                XCTAssertEqual(try one.int64Attribute(attribute), try three.int64Attribute(attribute),
                               "\(label): \(attribute)")
            }
            var compared = 0
            for group in ["params", "optimizer/exp_avg", "optimizer/exp_avg_sq"] {
                for member in try one.openGroup(group).members() {
                    let a = try one.openDataset("\(group)/\(member.name)").read(as: Float.self)
                    let b = try three.openDataset("\(group)/\(member.name)").read(as: Float.self)
                    XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern), "\(label): \(group)/\(member.name)")
                    compared += 1
                }
            }
            XCTAssertGreaterThan(compared, 30, "\(label): the checkpoint holds the model's tensors")
            XCTAssertEqual(try losses("\(label)-t1").map(\.bitPattern), try losses("\(label)-t3").map(\.bitPattern), "\(label): losses")
        }
    }

    /// Ranks started with different configs all stop with the same clear message, and the job never hangs.
    func testConfigMismatchStopsEveryRankWithTheSameMessage() throws {
        guard let mpirun = findOnPath("mpirun") else { throw XCTSkip("mpirun is not installed") }
        let a = try config(batch: 4, steps: 5), b = try config(batch: 4, steps: 6)
        let result = try runProcess(mpirun, ["-np", "1", ddp, "train", "--config", a, "--run-dir", path("mismatch"), ":",
                                             "-np", "1", ddp, "train", "--config", b, "--run-dir", path("mismatch")],
                                    environment: mpiEnvironment, timeout: 120)
        XCTAssertFalse(result.timedOut, "the job hung:\n\(result.output)")
        XCTAssertNotEqual(result.status, 0)
        let message = "ranks disagree on the config: rank 1 differs from rank 0"
        XCTAssertEqual(result.stderr.components(separatedBy: message).count - 1, 1, "printed once, by rank 0:\n\(result.output)")

        // A trial's finding: the same relative data.directory holding data of the same shards and counts but other
        // tokens on each rank (node-local copies that differ) trained in silence. The ranks compare content too.
        let same = try String(contentsOfFile: a, encoding: .utf8).replacingOccurrences(of: path("data"), with: "local")
        try same.write(toFile: path("relative.yaml"), atomically: true, encoding: .utf8)
        let text = (0..<200).map { "line \($0) ab" }.joined(separator: "\n")
        for (node, shift) in [("node-a", 0), ("node-b", 1)] {
            try FileManager.default.createDirectory(atPath: path(node), withIntermediateDirectories: true)
            // (Every letter moved on by `shift`: the same bytes per line, so the same counts.)
            let moved = String(text.unicodeScalars.map { $0.properties.isLowercase && $0 != "z" ? Character(Unicode.Scalar($0.value + UInt32(shift))!)
                                                                                              : Character($0) })
            try moved.write(toFile: path("\(node)/source.txt"), atomically: true, encoding: .utf8)
            let prepared = try runProcess(ddp, ["prepare", "--source", path("\(node)/source.txt"), "--target", path("\(node)/source.txt"),
                                                "--max-length", "12", "--output", path("\(node)/local")])
            XCTAssertEqual(prepared.status, 0, prepared.output)
        }
        let local = try runProcess(mpirun, ["-np", "1", "-wdir", path("node-a"), ddp, "train", "--config", path("relative.yaml"), "--run-dir",
                                            path("local-run"), ":", "-np", "1", "-wdir", path("node-b"), ddp, "train", "--config",
                                            path("relative.yaml"), "--run-dir", path("local-run")], environment: mpiEnvironment, timeout: 120)
        XCTAssertFalse(local.timedOut, "the job hung:\n\(local.output)")
        XCTAssertNotEqual(local.status, 0, local.output)
        let dataMessage = "ranks disagree on the training data (its shards' names and content, and the tokenizer): rank 1 differs from rank 0"
        XCTAssertEqual(local.stderr.components(separatedBy: dataMessage).count - 1, 1, "printed once, by rank 0:\n\(local.output)")

        // The same training data and other validation data (a cold review: only the train split was compared, and each
        // rank's share of the evaluation summed samples of other texts).
        try FileManager.default.createDirectory(atPath: path("node-c"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: path("node-a/local"), toPath: path("node-c/local"))
        do {
            let file = try File.open(path("node-c/local/valid-00000.h5"), mode: .readWrite)
            let tokens = try file.openDataset("target/tokens")
            let values: [Int32] = try tokens.read()
            try tokens.write(Array(values.dropFirst()) + [values[0]])  // the same tokens, each one place on
        }
        let valid = try runProcess(mpirun, ["-np", "1", "-wdir", path("node-a"), ddp, "train", "--config", path("relative.yaml"), "--run-dir",
                                            path("valid-run"), ":", "-np", "1", "-wdir", path("node-c"), ddp, "train", "--config",
                                            path("relative.yaml"), "--run-dir", path("valid-run")], environment: mpiEnvironment, timeout: 120)
        XCTAssertFalse(valid.timedOut, "the job hung:\n\(valid.output)")
        XCTAssertNotEqual(valid.status, 0, valid.output)
        XCTAssertEqual(valid.stderr.components(separatedBy: "ranks disagree on the validation data").count - 1, 1, valid.output)
    }

    /// A data directory emptied by --set is blamed on that --set, not on the config file, which names one.
    func testAnEmptiedDataDirectoryNamesItsSource() throws {
        let good = try config(batch: 4, steps: 2)
        let emptied = try runProcess(ddp, ["train", "--config", good, "--run-dir", path("emptied"), "--set", "data.directory=\"\""])
        XCTAssertEqual(emptied.status, 1, emptied.output)
        XCTAssertTrue(emptied.stderr.contains("--set data.directory=\"\": config key 'data.directory': is not set"), emptied.output)
        XCTAssertFalse(emptied.stderr.contains(good), emptied.output)
        let noValue = try runProcess(ddp, ["train", "--config", good, "--run-dir", path("emptied"), "--set", "data.directory="])
        XCTAssertEqual(noValue.status, 1, noValue.output)
        XCTAssertTrue(noValue.stderr.contains("--set data.directory=: config key 'data.directory': has no value after '='"), noValue.output)
    }

    /// A config every rank refuses is said once under mpirun, by rank 0, without an MPI abort.
    func testAConfigRefusedUnderMPIIsSaidOnce() throws {
        guard findOnPath("mpirun") != nil else { throw XCTSkip("mpirun is not installed") }
        let bad = path("bad.yaml")
        try (try String(contentsOfFile: try config(batch: 4, steps: 2), encoding: .utf8)).replacingOccurrences(of: "d_ff: 64", with: "d_ff: 64, d_ff: 32")
            .write(toFile: bad, atomically: true, encoding: .utf8)
        let result = try runUnderMPI(ranks: 2, ddp, ["train", "--config", bad, "--run-dir", path("bad-run")], environment: mpiEnvironment, timeout: 120)
        XCTAssertFalse(result.timedOut, result.output)
        XCTAssertNotEqual(result.status, 0)
        let message = "\(bad): not valid YAML: 'd_ff' is given more than once in one mapping"
        XCTAssertEqual(result.stderr.components(separatedBy: message).count - 1, 1, "printed once:\n\(result.output)")
        XCTAssertFalse(result.output.contains("MPI_ABORT"), result.output)
    }

    /// SIGTERM to the training processes (as a scheduler sends it): every rank stops at the same step boundary,
    /// rank 0 writes a checkpoint that `latest` names, and the job exits 0 — alone and on 2 ranks.
    func testSIGTERMCheckpointsAndExitsZero() throws {
        // Evaluated every 2 updates (data with a valid split): a stopped run has had evaluations, but no final one.
        let prepare = try runProcess(ddp, ["prepare", "--synthetic", "reverse", "--samples", "200", "--max-length", "12",
                                           "--valid-fraction", "0.1", "--output", path("evaluated")])
        XCTAssertEqual(prepare.status, 0, prepare.output)
        let long = path("long.yaml")
        try (try String(contentsOfFile: try config(batch: 4, steps: 1_000_000), encoding: .utf8))
            .replacingOccurrences(of: "directory: \(path("data"))", with: "directory: \(path("evaluated"))")
            .appending("\neval: {every: 2, max_batches: 1, decode_samples: 2}\n").write(toFile: long, atomically: true, encoding: .utf8)
        for ranks in [1, 2] {
            let run = path("signal-\(ranks)")
            let (process, output) = try startTraining(ranks: ranks, config: long, run: "signal-\(ranks)")
            // Signal the ranks (not mpirun), as a scheduler does.
            let kill = try runProcess(try XCTUnwrap(findOnPath("pkill")), ["-TERM", "-f", "^\(ddp) train --config \(long) --run-dir \(run)"])
            XCTAssertEqual(kill.status, 0, "no process matched")
            _ = waitForExit(process, within: 60)
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            XCTAssertEqual(process.terminationStatus, 0, "\(ranks) rank(s):\n\(text)")
            XCTAssertTrue(text.contains("stopped by a signal at step"), text)
            XCTAssertTrue(text.contains("eval at step 2"), text)
            XCTAssertFalse(text.contains("final validation"), "an earlier evaluation is not the stopped run's final one:\n\(text)")
            let latest = try String(contentsOfFile: run + "/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            let inspect = try runProcess(ddp, ["inspect", run + "/" + latest])
            XCTAssertEqual(inspect.status, 0, inspect.output)
            XCTAssertTrue(inspect.stdout.contains("checksums verified"), inspect.stdout)
        }
    }

    /// One run at a time in a run directory: while a run (alone, or rank 0 under mpirun) holds the directory, a second
    /// `ddp train` there is refused with the holder's process named, whatever its flags (resume or overwrite), and
    /// leaves the first run's files alone; a run killed outright (SIGKILL) leaves no lock behind.
    func testASecondRunInABusyRunDirectoryIsRefused() throws {
        let long = try config(batch: 4, steps: 1_000_000)
        let short = try config(batch: 4, steps: 2)
        for ranks in [1, 2] {
            let run = "busy-\(ranks)"
            let (process, output) = try startTraining(ranks: ranks, config: long, run: run)
            let holder = try String(contentsOfFile: path(run) + "/.ddp-train.lock", encoding: .utf8)
            for flags in [[], ["--resume-if-present"], ["--resume"], ["--overwrite"]] {
                let second = try runProcess(ddp, ["train", "--config", short, "--run-dir", path(run)] + flags, environment: mpiEnvironment)
                XCTAssertEqual(second.status, 1, "\(flags): \(second.output)")
                XCTAssertTrue(second.stderr.contains("\(path(run)) is in use by another run: its lock file \(path(run))/.ddp-train.lock is locked by "
                                                     + "ddp train, process "), second.output)
                XCTAssertTrue(holder.hasPrefix("ddp train, process ") && second.stderr.contains(holder.trimmingCharacters(in: .newlines)),
                              "the holder is named: \(holder)\n\(second.output)")
            }
            XCTAssertTrue(process.isRunning, "the first run goes on")
            XCTAssertTrue(FileManager.default.fileExists(atPath: path(run) + "/metrics.jsonl"), "the first run's metrics stay")
            // Killed outright: the kernel drops the lock with the process.
            _ = try runProcess(try XCTUnwrap(findOnPath("pkill")), ["-KILL", "-f", "^\(ddp) train --config \(long) --run-dir \(path(run))"])
            if ranks == 1 { kill(process.processIdentifier, SIGKILL) }
            _ = waitForExit(process, within: 60)
            _ = output.fileHandleForReading.readDataToEndOfFile()
            let after = try runProcess(ddp, ["train", "--config", short, "--run-dir", path(run), "--resume-if-present"], environment: mpiEnvironment)
            XCTAssertEqual(after.status, 0, after.output)
        }
    }

    /// A closed terminal or ssh session (SIGHUP) stops a run as SIGTERM does, with a checkpoint; so does a log pipe
    /// whose reader has gone (`ddp train | head`), which then exits 1 saying its output could not be written, and where
    /// to go on from on standard error.
    func testHangUpAndALostLogReaderCheckpoint() throws {
        let long = try config(batch: 4, steps: 1_000_000)
        let (process, output) = try startTraining(ranks: 1, config: long, run: "hangup")
        kill(process.processIdentifier, SIGHUP)
        _ = waitForExit(process, within: 60)
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(process.terminationStatus, 0, text)
        XCTAssertTrue(text.contains("stopped by a signal at step"), text)
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("hangup/latest")), text)

        // Started with SIGHUP ignored (nohup): a hangup changes nothing, and SIGTERM still stops it with a checkpoint.
        let (nohup, nohupOutput) = try startTraining(ranks: 1, config: long, run: "nohup", ignoringHangUp: true)
        kill(nohup.processIdentifier, SIGHUP)
        Thread.sleep(forTimeInterval: 2)
        XCTAssertTrue(nohup.isRunning, "a run started under nohup goes on after SIGHUP")
        kill(nohup.processIdentifier, SIGTERM)
        _ = waitForExit(nohup, within: 60)
        let nohupText = String(decoding: nohupOutput.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(nohup.terminationStatus, 0, nohupText)
        XCTAssertTrue(nohupText.contains("stopped by a signal at step"), nohupText)

        let piped = try runProcess("/bin/sh", ["-c", "\"$0\" train --config \"$1\" --run-dir \"$2\" | head -n 2", ddp, long, path("piped")],
                                   environment: mpiEnvironment, timeout: 120)
        XCTAssertFalse(piped.timedOut, piped.output)
        // Where to go on from is not lost with the log: it goes to standard error.
        XCTAssertTrue(piped.stderr.contains("standard output: cannot be written (its reader has gone); the run stopped at step ")
                      && piped.stderr.contains("(continue with --resume)"), piped.output)
        let latest = try String(contentsOfFile: path("piped/latest"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(try runProcess(ddp, ["inspect", path("piped/" + latest)]).status, 0)
    }

    /// Local mode with standard output to a pipe (a job log): every line is there as it is printed, so a job killed
    /// outright (SIGKILL, which no buffer survives) keeps its log up to then.
    func testTheLogOfAKilledLocalRunIsKept() throws {
        let (process, output) = try startTraining(ranks: 1, config: try config(batch: 4, steps: 1_000_000), run: "killed")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(text.contains("parameters on 1 rank(s) x 1 thread(s)"), "the start-up line was lost with the process:\n\(text)")
    }

    /// Starts `ddp train` (alone, or on several ranks under mpirun) in the background and waits until it has
    /// taken a few steps; `ignoringHangUp` starts it alone with SIGHUP ignored, as `nohup` does.
    private func startTraining(ranks: Int, config: String, run: String, ignoringHangUp: Bool = false) throws -> (Process, Pipe) {
        let process = Process()
        let arguments = ["train", "--config", config, "--run-dir", path(run)]
        if ignoringHangUp {
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", "trap '' HUP; exec \"$0\" \"$@\"", ddp] + arguments
        } else if ranks == 1 {
            process.executableURL = URL(fileURLWithPath: ddp)
            process.arguments = arguments
        } else {
            process.executableURL = URL(fileURLWithPath: try XCTUnwrap(findOnPath("mpirun")))
            process.arguments = ["-np", String(ranks), ddp] + arguments
        }
        process.environment = ProcessInfo.processInfo.environment.merging(mpiEnvironment) { _, new in new }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while ((try? String(contentsOfFile: path(run) + "/metrics.jsonl", encoding: .utf8))?.split(separator: "\n").count ?? 0) < 3 {
            if !process.isRunning || Date() > deadline {
                // A trainer that never gets going is a failure of the tests that need it running, not a reason to skip them.
                if process.isRunning { process.terminate() }
                process.waitUntilExit()
                let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                XCTFail("training never reached its third step (exit status \(process.terminationStatus)):\n\(text)")
                throw TrainingNeverStarted()
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
        return (process, output)
    }

    private func rankProcessIDs(_ config: String) throws -> [Int32] {
        let result = try runProcess(try XCTUnwrap(findOnPath("pgrep")), ["-f", "^\(ddp) train --config \(config)"])
        return result.stdout.split(separator: "\n").compactMap { Int32($0) }
    }

    /// A rank that stops answering (SIGSTOP: it neither dies nor communicates) ends the job within
    /// collective_timeout plus a little, non-zero, with a message naming the collective phase — never a hang.
    func testStalledRankHitsTheCollectiveTimeout() throws {
        let long = try config(batch: 4, steps: 1_000_000, extra: ", collective_timeout: 3")
        let (process, output) = try startTraining(ranks: 2, config: long, run: "stall")
        let ranks = try rankProcessIDs(long)
        XCTAssertEqual(ranks.count, 2)
        kill(try XCTUnwrap(ranks.last), SIGSTOP)
        let (finished, elapsed) = waitForExit(process, within: 33)
        for pid in ranks { kill(pid, SIGKILL) }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(finished, "the job hung:\n\(text)")
        XCTAssertNotEqual(process.terminationStatus, 0)
        XCTAssertTrue(text.contains("did not complete within 3"), text)
        XCTAssertTrue(text.contains("collective '"), text)
        XCTAssertLessThan(elapsed, 33)
    }

    /// The whole job stopped for longer than collective_timeout (a suspended batch job, Ctrl-Z then fg) goes on when
    /// it continues: no rank waited for another meanwhile. Before, every rank ended the job at once.
    func testASuspendedJobGoesOnWhenItContinues() throws {
        let long = try config(batch: 4, steps: 1_000_000, extra: ", collective_timeout: 2")
        let (process, output) = try startTraining(ranks: 2, config: long, run: "suspended")
        let ranks = try rankProcessIDs(long)
        XCTAssertEqual(ranks.count, 2)
        // One rank first, so that the other is waiting for it in a timed collective when it is stopped too.
        kill(ranks[0], SIGSTOP)
        Thread.sleep(forTimeInterval: 0.5)
        kill(ranks[1], SIGSTOP)
        Thread.sleep(forTimeInterval: 6)
        for pid in ranks { kill(pid, SIGCONT) }
        Thread.sleep(forTimeInterval: 4)
        let going = process.isRunning
        for pid in ranks { kill(pid, SIGTERM) }
        let (finished, _) = waitForExit(process, within: 60)
        for pid in ranks { kill(pid, SIGKILL) }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(going, "the job ended after it continued:\n\(text)")
        XCTAssertTrue(finished, text)
        XCTAssertFalse(text.contains("did not complete within"), text)
        XCTAssertTrue(text.contains("stopped by a signal at step"), text)
    }

    /// kill -9 of one rank ends the job within 30 s with a non-zero status.
    func testKilledRankEndsTheJob() throws {
        let long = try config(batch: 4, steps: 1_000_000, extra: ", collective_timeout: 60")
        let (process, output) = try startTraining(ranks: 2, config: long, run: "killed")
        let ranks = try rankProcessIDs(long)
        kill(try XCTUnwrap(ranks.last), SIGKILL)
        let (finished, elapsed) = waitForExit(process, within: 30)
        for pid in ranks { kill(pid, SIGKILL) }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(finished, "the job hung:\n\(text)")
        XCTAssertNotEqual(process.terminationStatus, 0)
        XCTAssertLessThan(elapsed, 30)
    }

    /// A diverging run (no clipping, an absurd learning rate) stops with a message at the first non-finite value
    /// and writes no checkpoint of the broken state.
    func testNonFiniteLossStopsTheRun() throws {
        let exploding = try config(batch: 4, steps: 500, lr: "1.0e+12", clip: "0")
        let result = try runProcess(ddp, ["train", "--config", exploding, "--run-dir", path("nan")], environment: mpiEnvironment, timeout: 300)
        XCTAssertNotEqual(result.status, 0, result.output)
        XCTAssertTrue(result.stderr.contains("non-finite loss"), result.output)
        XCTAssertTrue(result.stderr.contains("stopping without a checkpoint: none was written yet, so start over (with --overwrite"), result.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("nan") + "/latest"), "no checkpoint of a diverged run")
    }

    /// A full disk at the second checkpoint (a tmpfs run directory with room for one): every rank stops with
    /// rank 0's message (printed once), non-zero; `latest` still names the first checkpoint, no partial file is left behind,
    /// and the run resumes from it elsewhere. Needs root and a tmpfs mount; skips, saying so, without them.
    func testFullDiskStopsEveryRankAndKeepsThePreviousCheckpoint() throws {
        let fiveSteps = try config(batch: 4, steps: 10, extra: "")
        let yaml = try String(contentsOfFile: fiveSteps, encoding: .utf8).replacingOccurrences(of: "checkpoint: {keep: 5}", with: "checkpoint: {every: 5, keep: 5}")
        try yaml.write(toFile: fiveSteps, atomically: true, encoding: .utf8)
        // The size of one checkpoint, from a run on the ordinary disk.
        try train(ranks: 1, config: fiveSteps, run: "roomy")
        let checkpointBytes = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: path("roomy/checkpoint-00000005.h5"))[.size] as? Int)

        let full = path("full")
        try FileManager.default.createDirectory(atPath: full, withIntermediateDirectories: true)
        let mount = try runProcess(try XCTUnwrap(findOnPath("mount")), ["-t", "tmpfs", "-o", "size=\(checkpointBytes * 3 / 2)", "tmpfs", full])
        guard mount.status == 0 else { throw XCTSkip("cannot mount a small tmpfs to fill (needs root): \(mount.output)") }
        defer { _ = try? runProcess(findOnPath("umount") ?? "umount", [full]) }

        let result = try runUnderMPI(ranks: 2, ddp, ["train", "--config", fiveSteps, "--run-dir", full], timeout: 300)
        XCTAssertFalse(result.timedOut, result.output)
        XCTAssertNotEqual(result.status, 0, result.output)
        // Both ranks stop with rank 0's sentence, which rank 0 prints once.
        XCTAssertTrue(result.output.contains("Error: stopping at step 10: checkpoint"), result.output)
        XCTAssertEqual(result.output.components(separatedBy: "stopping at step 10").count - 1, 1, result.output)
        XCTAssertTrue(result.output.contains("No space left on device"), result.output)
        XCTAssertFalse(result.output.contains("crashed") || result.output.contains("exited on signal"), "a rank crashed:\n\(result.output)")
        XCTAssertTrue(result.output.contains("the run's latest checkpoint, \(full)/checkpoint-00000005.h5, is untouched"), result.output)
        let latest = try String(contentsOfFile: full + "/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(latest, "checkpoint-00000005.h5")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: full).filter { $0.hasSuffix(".tmp") }, [], "a partial file was left")

        // The run continues elsewhere from what the full disk kept.
        let moved = path("moved")
        try FileManager.default.copyItem(atPath: full, toPath: moved)
        // One rank takes both ranks' share (the same global batch, so the same data order).
        let resumed = try runProcess(ddp, ["train", "--config", fiveSteps, "--run-dir", moved, "--resume", "--set", "training.batch_size=8"],
                                     environment: mpiEnvironment, timeout: 120)
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertTrue(FileManager.default.fileExists(atPath: moved + "/checkpoint-00000010.h5"), resumed.output)
    }

    /// kill -9 while checkpoints are being written (one every step): whenever it lands, `latest` names a
    /// checkpoint that loads.
    func testKillDuringCheckpointingLeavesALoadableLatest() throws {
        let everyStep = try config(batch: 4, steps: 1_000_000, extra: "")
        let yaml = try String(contentsOfFile: everyStep, encoding: .utf8).replacingOccurrences(of: "checkpoint: {keep: 5}", with: "checkpoint: {every: 1, keep: 2}")
        try yaml.write(toFile: everyStep, atomically: true, encoding: .utf8)
        for (attempt, delay) in [0.05, 0.37, 0.71].enumerated() {
            let run = "killed-write-\(attempt)"
            let (process, _) = try startTraining(ranks: 1, config: everyStep, run: run)
            Thread.sleep(forTimeInterval: delay)
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            let latest = try String(contentsOfFile: path(run) + "/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            let inspect = try runProcess(ddp, ["inspect", path(run) + "/" + latest])
            XCTAssertEqual(inspect.status, 0, "attempt \(attempt): \(inspect.output)")
            XCTAssertTrue(inspect.stdout.contains("checksums verified"), inspect.stdout)
            let resumed = try runProcess(ddp, ["train", "--config", everyStep, "--run-dir", path(run), "--resume",
                                               "--set", "training.steps=\(Int(latest.dropFirst(11).prefix(8))! + 1)"],
                                         environment: mpiEnvironment, timeout: 120)
            XCTAssertEqual(resumed.status, 0, "attempt \(attempt): resuming from \(latest) failed:\n\(resumed.output)")
        }
    }
}

/// Training that never started: reported by `XCTFail` where it was found, thrown to end the test.
private struct TrainingNeverStarted: Error {}
