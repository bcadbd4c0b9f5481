import Foundation
import HDF5
import TestSupport
import XCTest

/// `ddp attention` and `ddp plot` on checkpoints and runs that real training wrote, and the TensorBoard event files
/// training writes when asked.
final class PicturesCommandTests: XCTestCase {
    /// Trained on first use, once for all tests of the class: a translation run (reverse strings) trained 30 steps
    /// and resumed to 50, with TensorBoard files; a language model and an encoder-only model on text.
    private static let runs = PreparedDirectory("ddp-pictures") { directory in
        func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
        try runDDPOrThrow(["prepare", "--synthetic", "reverse", "--samples", "400", "--max-length", "8", "--valid-fraction", "0.1",
                           "--output", path("reverse")])
        func reverseConfig(steps: Int) -> String {
            """
            model: {kind: encoder-decoder, vocab_size: 260, d_model: 32, heads: 2, encoder_layers: 2, decoder_layers: 1, d_ff: 64,
                    activation: relu, norm: pre, positions: sinusoidal, max_length: 16, dropout: 0.0, tied_embeddings: true}
            data: {directory: \(path("reverse")), source_length: 9, target_length: 9}
            training: {batch_size: 16, steps: \(steps), seed: 1, threads: 1, log_every: 10, tensorboard: true}
            optimizer: {lr: 3.0e-3}
            eval: {every: 10, max_batches: 0, decode_samples: 20}
            checkpoint: {every: 20, keep: 3}
            """
        }
        try reverseConfig(steps: 30).write(toFile: path("reverse30.yaml"), atomically: true, encoding: .utf8)
        try reverseConfig(steps: 50).write(toFile: path("reverse50.yaml"), atomically: true, encoding: .utf8)
        try runDDPOrThrow(["train", "--config", path("reverse30.yaml"), "--run-dir", path("reverse-run")])
        // Back to step 20 before resuming, so steps 21-30 are written twice (as after a crash between checkpoints).
        try FileManager.default.removeItem(atPath: path("reverse-run/checkpoint-00000030.h5"))
        try "checkpoint-00000020.h5".write(toFile: path("reverse-run/latest"), atomically: true, encoding: .utf8)
        try runDDPOrThrow(["train", "--config", path("reverse50.yaml"), "--run-dir", path("reverse-run"), "--resume"])

        let text = (0..<60).map { "Line \($0): <tags> & \"quotes\" don't break pictures, \($0 * 3) times.\n" }.joined()
        try text.write(toFile: path("lm.txt"), atomically: true, encoding: .utf8)
        try runDDPOrThrow(["prepare", "--task", "lm", "--input", path("lm.txt"), "--valid-fraction", "0.2", "--output", path("lm")])
        // The encoder-only vocabulary holds the mask token past the tokenizer's 260 ids.
        for (kind, vocabulary, layers) in [("decoder-only", 260, "encoder_layers: 0, decoder_layers: 2"),
                                           ("encoder-only", 261, "encoder_layers: 2, decoder_layers: 0")] {
            try """
                model: {kind: \(kind), vocab_size: \(vocabulary), d_model: 32, heads: 2, \(layers), d_ff: 64,
                        activation: gelu, norm: post, positions: learned, max_length: 32, dropout: 0.0, tied_embeddings: true}
                data: {directory: \(path("lm")), target_length: 32}
                training: {batch_size: 8, steps: 20, seed: 2, threads: 1, log_every: 10}
                optimizer: {lr: 3.0e-3}
                eval: {every: 10, max_batches: 0}
                """.write(toFile: path("\(kind).yaml"), atomically: true, encoding: .utf8)
            try runDDPOrThrow(["train", "--config", path("\(kind).yaml"), "--run-dir", path("\(kind)-run")])
        }
    }
    private var ddp: String { builtProduct("ddp") }
    private func path(_ name: String) -> String { Self.runs.path(name) }

    override class func tearDown() {
        try? FileManager.default.removeItem(at: runs.directory)
        super.tearDown()
    }

    override func setUpWithError() throws {
        if let failure = Self.runs.failure { XCTFail("training the runs failed: \(failure)") }
        try XCTSkipIf(Self.runs.failure != nil)
    }

    private func join(_ directory: String, _ name: String) -> String { (directory as NSString).appendingPathComponent(name) }

    @discardableResult
    private func run(_ arguments: [String], expect status: Int32 = 0, file: StaticString = #filePath, line: UInt = #line) throws -> ProcessResult {
        let result = try runProcess(ddp, arguments, environment: mpiEnvironment, timeout: 300)
        XCTAssertEqual(result.status, status, result.output, file: file, line: line)
        return result
    }

    /// Parses `path` as XML (our HTML is XHTML-compatible): its character data and element names.
    private func parseXML(_ path: String, file: StaticString = #filePath, line: UInt = #line) throws -> ParsedMarkup {
        let parsed = ParsedMarkup(try Data(contentsOf: URL(fileURLWithPath: path)))
        XCTAssertTrue(parsed.wellFormed, "\(path) is not well-formed: \(parsed.error ?? "?")", file: file, line: line)
        return parsed
    }

    /// Every layer and head of every attention, as SVG files, in index.html and in attention.h5.
    func testAttentionMapsOfEveryKind() throws {
        let cases: [(run: String, input: [String], attentions: [(String, Int)])] = [
            ("reverse-run", ["--source", "ab<&\"'", "--target", "'\"&<ba"], [("encoder_self_attention", 2), ("decoder_self_attention", 1), ("cross_attention", 1)]),
            ("reverse-run", ["--input", "abc"], [("encoder_self_attention", 2), ("decoder_self_attention", 1), ("cross_attention", 1)]),
            ("decoder-only-run", ["--prompt", "Line 3: <tags> & \"quotes\""], [("decoder_self_attention", 2)]),
            ("encoder-only-run", ["--input", "Line [MASK]: <tags>"], [("encoder_self_attention", 2)]),
        ]
        for (index, item) in cases.enumerated() {
            let output = path("maps-\(index)")
            try run(["attention", "--checkpoint", path(item.run), "--output", output] + item.input)
            let index = try parseXML(join(output, "index.html"))
            for (attention, layers) in item.attentions {
                for layer in 0..<layers {
                    for head in 0..<2 {
                        let svg = join(output, "\(attention)-layer\(layer)-head\(head).svg")
                        let parsed = try parseXML(svg)
                        XCTAssertGreaterThan(parsed.elements.filter { $0 == "rect" }.count, 4, svg)
                        XCTAssertTrue(index.text.contains("layer \(layer), head \(head)"), "index.html names layer \(layer) head \(head)")
                    }
                }
            }
            let pictures = item.attentions.reduce(0) { $0 + $1.1 * 2 }
            XCTAssertEqual(index.elements.filter { $0 == "img" }.count, pictures, "index.html shows every map")
            XCTAssertTrue(index.text.contains("checkpoint"), "index.html names the input")
            if item.input.contains("--source") { XCTAssertTrue(index.text.contains("<") && index.text.contains("&") && index.text.contains("\"")) }
            try checkAttentionFile(join(output, "attention.h5"), attentions: item.attentions)
            try screenshot(join(output, "index.html"))
        }
    }

    /// The HDF5 numbers: one dataset per attention [layers, heads, queries, keys] whose rows sum to 1 (causal ones
    /// with nothing above the diagonal), read by our reader and, when h5py is installed, by h5py.
    private func checkAttentionFile(_ file: String, attentions: [(String, Int)]) throws {
        let h5 = try File.open(file)
        for (name, layers) in attentions {
            let dataset = try h5.openDataset(name)
            XCTAssertEqual(dataset.shape.count, 4)
            XCTAssertEqual(dataset.shape[0], layers)
            let values = try dataset.read(as: Float.self), keys = dataset.shape[3], queries = dataset.shape[2]
            for row in stride(from: 0, to: values.count, by: keys) {
                XCTAssertEqual(values[row..<(row + keys)].reduce(0, +), 1, accuracy: 1e-4, "\(file) \(name): a row sums to 1")
                if name == "decoder_self_attention" {
                    let query = (row / keys) % queries
                    XCTAssertTrue(values[(row + query + 1)..<(row + keys)].allSatisfy { $0 == 0 }, "causal: no weight on later keys")
                }
            }
        }
        guard let python = pythonWithH5py() else { return }
        let result = try runProcess(python, ["-c", """
            import h5py, json, sys
            f = h5py.File(sys.argv[1], "r")
            for name in sys.argv[2:]:
                print(name, f[name].shape, round(float(f[name][0, 0].sum(axis=-1).mean()), 4))
            for key in ("encoder_tokens", "decoder_tokens"):
                if key in f: assert len(json.loads(f.attrs[key + "_texts"])) == f[key].shape[0]
            """, file] + attentions.map(\.0), timeout: 60)
        XCTAssertEqual(result.status, 0, result.output)
        for (name, _) in attentions { XCTAssertTrue(result.stdout.contains("\(name) (") && result.stdout.contains(" 1.0"), result.output) }
    }

    /// Headless Chromium opens the page and takes a screenshot, when Chromium is installed.
    private func screenshot(_ page: String) throws {
        guard let chromium = ["chromium", "chromium-browser", "google-chrome"].lazy.compactMap(findOnPath).first else {
            print("PicturesCommandTests: Chromium is not installed; index.html was checked as XML only (install Debian's chromium to open it)")
            return
        }
        let png = page + ".png"
        let result = try runProcess(chromium, ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,900",
                                               "--screenshot=\(png)", "file://\(page)"], timeout: 120)
        XCTAssertEqual(result.status, 0, result.output)
        let bytes = [UInt8]((try? Data(contentsOf: URL(fileURLWithPath: png))) ?? Data())
        XCTAssertGreaterThan(bytes.count, 5000, "Chromium's screenshot of \(page) is empty")
        XCTAssertEqual(Array(bytes.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A], "a PNG")
    }

    func testAttentionRefusesWhatItCannotDraw() throws {
        let wrongInput = try run(["attention", "--checkpoint", path("decoder-only-run"), "--input", "x", "--output", path("bad")], expect: 1)
        XCTAssertTrue(wrongInput.output.contains("language model: give --prompt"), wrongInput.output)
        let tooLong = try run(["attention", "--checkpoint", path("decoder-only-run"), "--prompt", String(repeating: "x", count: 40),
                               "--output", path("bad")], expect: 1)
        XCTAssertTrue(tooLong.output.contains("40 tokens") && tooLong.output.contains("at most 32"), tooLong.output)
        try "x".write(toFile: path("a-file"), atomically: true, encoding: .utf8)
        let onFile = try run(["attention", "--checkpoint", path("decoder-only-run"), "--prompt", "x", "--output", path("a-file")], expect: 1)
        XCTAssertTrue(onFile.output.contains("a-file is a regular file; give a directory"), onFile.output)
        let onDevice = try run(["attention", "--checkpoint", path("decoder-only-run"), "--prompt", "x", "--output", "/dev/null"], expect: 1)
        XCTAssertTrue(onDevice.output.contains("--output /dev/null is a character device; give a directory"), onDevice.output)
        XCTAssertEqual(try String(contentsOfFile: path("a-file"), encoding: .utf8), "x", "nothing it was not asked to write is touched")
        let under = try run(["attention", "--checkpoint", path("decoder-only-run"), "--prompt", "x", "--output", path("a-file/maps")], expect: 1)
        XCTAssertTrue(under.output.contains("a-file is a regular file"), under.output)
        XCTAssertFalse(wrongInput.output.contains("Usage:"), "a run-time refusal is not a usage error: \(wrongInput.output)")
        let both = try run(["attention", "--checkpoint", path("decoder-only-run"), "--prompt", "x", "--input", "y", "--output", path("bad")],
                           expect: 64)
        XCTAssertTrue(both.output.contains("give one input"), both.output)
        // A trial's finding: a directory holding someone else's files under the names attention writes (a site's
        // index.html) had them replaced. Now refused, with nothing written; an earlier attention output is replaced.
        try FileManager.default.createDirectory(atPath: path("site"), withIntermediateDirectories: true)
        try "<h1>my homepage</h1>\n".write(toFile: path("site/index.html"), atomically: true, encoding: .utf8)
        let site = try run(["attention", "--checkpoint", path("decoder-only-run"), "--prompt", "x", "--output", path("site")], expect: 1)
        XCTAssertTrue(site.output.contains("--output \(path("site")) holds index.html, which this command would replace, and no attention.h5 "
                                           + "of an earlier ddp attention; nothing was written"), site.output)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: path("site")), ["index.html"])
        XCTAssertEqual(try String(contentsOfFile: path("site/index.html"), encoding: .utf8), "<h1>my homepage</h1>\n")
        for _ in 0..<2 { try run(["attention", "--checkpoint", path("decoder-only-run"), "--prompt", "x", "--output", path("again")]) }
    }

    /// Training curves of a resumed run and of two runs: well-formed files, one line per run per chart, each step
    /// drawn once (the resumed run repeats steps 21-30 in metrics.jsonl).
    func testPlotOfAResumedRunAndOfTwoRuns() throws {
        let metrics = try String(contentsOfFile: path("reverse-run/metrics.jsonl"), encoding: .utf8)
        let lossSteps = metrics.split(separator: "\n").compactMap { line -> Int? in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], object["loss"] != nil else { return nil }
            return object["step"] as? Int
        }
        XCTAssertEqual(lossSteps.count, 60, "30 steps, then 21-50 after the resume")
        try run(["plot", path("reverse-run"), "--output", path("resumed.html")])
        let single = try parseXML(path("resumed.html"))
        for title in ["Training loss", "Validation loss", "Learning rate", "Gradient norm", "Throughput", "Validation BLEU"] {
            XCTAssertTrue(single.text.contains(title), "\(title) in the page")
        }
        let html = try String(contentsOfFile: path("resumed.html"), encoding: .utf8)
        let firstLine = try XCTUnwrap(html.range(of: "points=\"").map { html[$0.upperBound...].prefix { $0 != "\"" } })
        XCTAssertEqual(firstLine.split(separator: " ").count, 50, "the training loss has one point per step, 1-50")

        try run(["plot", path("reverse-run"), path("decoder-only-run"), "--output", path("two.svg")])
        let two = try parseXML(path("two.svg"))
        XCTAssertTrue(two.text.contains("reverse-run") && two.text.contains("decoder-only-run"), "the legend names both runs")
        XCTAssertGreaterThanOrEqual(two.elements.filter { $0 == "polyline" }.count, 2 * 4, "both runs in the shared charts")

        let wrong = try run(["plot", path("reverse-run"), "--output", path("curves.png")], expect: 64)
        XCTAssertTrue(wrong.output.contains(".html or .svg"), wrong.output)
        let missing = try run(["plot", path("no-such-run"), "--output", path("x.html")], expect: 1)
        XCTAssertTrue(missing.output.contains("no-such-run"), missing.output)
    }

    /// Damaged metrics files: unreadable lines are skipped and counted, a run without metrics and a metrics.jsonl that
    /// is not a regular file (a FIFO would block a reader) are refused by name.
    func testPlotOfDamagedMetrics() throws {
        let damaged = path("damaged-run"), empty = path("empty-run"), fifo = path("fifo-run")
        for directory in [damaged, empty, fifo] { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        try "{\"step\": 1, \"loss\": 2.5, \"lr\": 0.001}\nnot json\n[1, 2]\n{\"step\": \"two\", \"loss\": 1}\n{\"step\": 2, \"loss\": 2.1, \"lr\"\n"
            .write(toFile: join(damaged, "metrics.jsonl"), atomically: true, encoding: .utf8)
        let skipped = try run(["plot", damaged, "--output", path("damaged.svg")])
        XCTAssertTrue(skipped.output.contains("skipped 4 of 5 lines"), skipped.output)
        XCTAssertTrue(try parseXML(path("damaged.svg")).text.contains("Training loss"))
        try "".write(toFile: join(empty, "metrics.jsonl"), atomically: true, encoding: .utf8)
        let nothing = try run(["plot", empty, "--output", path("empty.html")], expect: 1)
        XCTAssertTrue(nothing.output.contains("no metrics recorded yet"), nothing.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("empty.html")), "nothing written")
        XCTAssertEqual(mkfifo(join(fifo, "metrics.jsonl"), 0o600), 0)
        let pipe = try run(["plot", fifo, "--output", path("fifo.html")], expect: 1)
        XCTAssertTrue(pipe.output.contains("fifo-run/metrics.jsonl: is not a regular file"), pipe.output)
    }

    /// The event files training wrote give, through TensorBoard's own reader, the values of metrics.jsonl.
    func testTensorBoardReadsTheMetrics() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: path("reverse-run")).filter { $0.hasPrefix("events.out.tfevents.") }
        XCTAssertEqual(files.count, 2, "one event file per attempt: \(files)")
        guard let python = pythonWithTensorBoard() else {
            throw XCTSkip("the tensorboard package is not installed (pip install tensorboard, or set SWIFTDDP_PYTHON to a python with it)")
        }
        let result = try runProcess(python, ["-c", """
            import json, sys
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
            run = sys.argv[1]
            acc = EventAccumulator(run, size_guidance={"scalars": 0}); acc.Reload()
            expected = {}
            for line in open(run + "/metrics.jsonl"):
                record = json.loads(line)
                for key, value in record.items():
                    if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                        expected.setdefault(key, {})[record["step"]] = float(value)
            # The resumed attempt's session START drops the first attempt's steps 21-30: each step once.
            assert [e.step for e in acc.Scalars("loss")] == list(range(1, 51)), [e.step for e in acc.Scalars("loss")]
            for tag in ("loss", "lr", "grad_norm", "valid_loss", "valid_bleu"):
                events = {e.step: e.value for e in acc.Scalars(tag)}
                assert set(events) == set(expected[tag]), (tag, sorted(events), sorted(expected[tag]))
                worst = max(abs(events[s] - v) / max(1e-12, abs(v)) for s, v in expected[tag].items())
                assert worst < 1e-6, (tag, worst)
                print(tag, len(events), worst)
            """, path("reverse-run")], timeout: 120)
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.stdout.contains("loss 50"), result.output)
    }
}
