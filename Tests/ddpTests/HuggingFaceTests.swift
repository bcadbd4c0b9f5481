import Basics
import Data
import Foundation
import HDF5
import TestSupport
import Training
import Transformer
import XCTest

/// `ddp import --hf`, fine-tuning with `ddp train --init` under real mpirun, and `ddp export --format hf`, against
/// transformers' GPT2LMHeadModel when torch and transformers are installed.
final class HuggingFaceTests: XCTestCase {
    private var ddp: String { builtProduct("ddp") }
    private var directory: URL!

    override func setUpWithError() throws { directory = try makeTemporaryDirectory("ddp-hf") }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    private func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
    private func joined(_ directory: String, _ name: String) -> String { URL(fileURLWithPath: directory).appendingPathComponent(name).path }

    private func ddpRun(_ arguments: [String], expectSuccess: Bool = true, file: StaticString = #filePath, line: UInt = #line) throws -> ProcessResult {
        let result = try runProcess(ddp, arguments, environment: mpiEnvironment, timeout: 300)
        XCTAssertFalse(result.timedOut, result.output, file: file, line: line)
        XCTAssertFalse(result.signaled, "crashed: " + result.output, file: file, line: line)
        if expectSuccess { XCTAssertEqual(result.status, 0, result.output, file: file, line: line) }
        return result
    }

    /// A random GPT2LMHeadModel directory made by transformers (n_embd 32, 2 layers, 4 heads, 64 positions, a byte-level
    /// BPE of 500 ids trained by tokenizers, LayerNorms and biases perturbed), with the corpus it was trained on.
    private func makeTransformersModel(_ python: String) throws -> String {
        let script = referenceScript("hf_gpt2.py"), model = path("gpt2")
        for arguments in [["corpus", path("corpus.txt"), "--megabytes", "0.05"],
                          ["tokenizer", path("corpus.txt"), path("tokenizer.json"), "--vocab", "500"],
                          ["model", path("tokenizer.json"), model]] {
            let result = try runProcess(python, [script] + arguments, timeout: 300)
            XCTAssertEqual(result.status, 0, result.output)
        }
        return model
    }

    /// Our logits [B, T, V] (T = tokens per row − 1) and the mean next-token loss of `rows` from a checkpoint.
    private func ourLogits(_ checkpoint: String, rows: [[Int32]]) throws -> (logits: [Float], loss: Double) {
        let (model, _) = try Checkpoint.loadModel(try Checkpoint.resolve(checkpoint), maxBatch: rows.count)
        let t = rows[0].count - 1
        let batch = TokenBatch(batchSize: rows.count, targetLength: t, decoderInput: rows.flatMap { $0.dropLast() },
                               labels: rows.flatMap { $0.dropFirst() }, pad: model.specialTokens.pad)
        let sum = model.forward(batch)
        return (model.withLogits { Array($0.prefix(rows.count * t * model.config.vocabSize)) }, sum.loss / Double(sum.targetTokens))
    }

    /// transformers' logits of the first T positions of each row (the last input position has no label) and its loss.
    private func transformersLogits(_ python: String, model: String, rows: [[Int32]]) throws -> (logits: [Float], loss: Double) {
        try JSONSerialization.data(withJSONObject: rows.map { $0.map(Int.init) }).write(to: URL(fileURLWithPath: path("tokens.json")))
        let result = try runProcess(python, [referenceScript("hf_gpt2.py"), "logits", model, path("tokens.json"), path("logits.json")], timeout: 300)
        XCTAssertEqual(result.status, 0, result.output)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("logits.json")))) as? [String: Any])
        let all = try XCTUnwrap(object["logits"] as? [Double]).map(Float.init)
        let t = rows[0].count, v = all.count / (rows.count * t)
        var kept: [Float] = []
        for row in 0..<rows.count {
            let start = row * t * v, end = (row * t + t - 1) * v
            kept += all[start..<end]
        }
        return (kept, try XCTUnwrap(object["loss"] as? Double))
    }

    private func assertLogitsClose(_ ours: [Float], _ theirs: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(ours.count, theirs.count, what, file: file, line: line)
        let scale = theirs.map(abs).max() ?? 1
        let worst = zip(ours, theirs).map { abs($0 - $1) }.max() ?? .infinity
        XCTAssertLessThan(worst / scale, 1e-4, "\(what): largest difference \(worst) against logits up to \(scale)", file: file, line: line)
    }

    private func rows(vocabulary: Int) -> [[Int32]] {
        var random = SplitMix64(seed: 7)
        return (0..<2).map { _ in (0..<24).map { _ in Int32(random.next() % UInt64(vocabulary)) } }
    }

    /// A transformers GPT-2 imported: logits and loss on a batch equal transformers' (1e-4 relative).
    func testImportedModelGivesTransformersLogitsAndLoss() throws {
        guard let python = pythonWithTransformers() else {
            throw XCTSkip("torch and transformers are not installed (set SWIFTDDP_TORCH_PYTHON to a python with torch, transformers and tokenizers)")
        }
        let model = try makeTransformersModel(python)
        let imported = try ddpRun(["import", "--hf", model, "--output", path("gpt2.h5")])
        XCTAssertTrue(imported.stdout.contains("gelu_tanh"), imported.output)
        let batch = rows(vocabulary: 500)
        let ours = try ourLogits(path("gpt2.h5"), rows: batch), theirs = try transformersLogits(python, model: model, rows: batch)
        assertLogitsClose(ours.logits, theirs.logits, "imported logits")
        XCTAssertEqual(ours.loss, theirs.loss, accuracy: theirs.loss * 1e-4, "loss")
        // The tokenizer came along, with <|endoftext|> (id 0 in this vocabulary) as BOS and EOS and no pad token.
        let header = try Checkpoint.readHeader(path("gpt2.h5"))
        XCTAssertEqual(header.tokenizer?.kind, "huggingface")
        XCTAssertEqual(header.tokenizer?.specialTokens, SpecialTokens(pad: SpecialTokens.none, bos: 0, eos: 0))
    }

    /// Fine-tuning an imported GPT-2 (`--init`, data prepared with its tokenizer): 20 steps on 2 ranks x 4 equal 1 rank
    /// x 8 (losses and parameters within 1e-5); the result exported with --format hf loads in transformers and gives
    /// our logits. Without transformers the model directory is written by our own exporter and the comparison with
    /// transformers is left out (it says so).
    func testFineTuningOnTwoRanksEqualsOneAndExportsBackToTransformers() throws {
        let python = pythonWithTransformers()
        let model: String
        if let python {
            model = try makeTransformersModel(python)
        } else {
            print("HuggingFaceTests: transformers is not installed; fine-tuning a GPT-2 directory written by ddp export, not by transformers")
            model = try writeOwnGPT2Directory()
        }
        try ddpRun(["import", "--hf", model, "--output", path("gpt2.h5")])
        // Data in the model's own tokenizer: the corpus (or, without Python, a text of our own) as LM shards.
        if !FileManager.default.fileExists(atPath: path("corpus.txt")) {
            try String(repeating: "the model don't café 中文 x² 12345\n\nab ab abc\n", count: 300).write(toFile: path("corpus.txt"), atomically: true, encoding: .utf8)
        }
        try ddpRun(["prepare", "--task", "lm", "--input", path("corpus.txt"), "--tokenizer-from", path("gpt2.h5"), "--output", path("data"),
                    "--valid-fraction", "0.1"])
        func config(batch: Int, steps: Int = 20, lr: String = "1.0e-3") throws -> String {
            let file = path("finetune-\(batch)-\(steps)-\(lr).yaml")
            // No model section: --init takes the checkpoint's.
            try """
                data: {directory: \(path("data")), target_length: 32}
                training: {batch_size: \(batch), steps: \(steps), seed: 5, threads: 1, log_every: 5, bucket_mb: 0.01}
                optimizer: {lr: \(lr)}
                eval: {every: 0}
                """.write(toFile: file, atomically: true, encoding: .utf8)
            return file
        }
        // A step at learning rate 1e-30 leaves the imported parameters (to 1e-20): the run started from them, not from the
        // seed's initialisation, which differs by about 0.01.
        try ddpRun(["train", "--config", try config(batch: 8, steps: 1, lr: "1.0e-30"), "--run-dir", path("frozen"), "--init", path("gpt2.h5")])
        let imported = try Checkpoint.loadModel(path("gpt2.h5"), maxBatch: 1).model
        let frozen = try Checkpoint.loadModel(try Checkpoint.resolve(path("frozen")), maxBatch: 1).model
        let moved = zip(frozen.parameters.storage, imported.parameters.storage).map { abs($0 - $1) }.max() ?? .infinity
        XCTAssertLessThan(moved, 1e-20, "--init starts from the checkpoint's parameters")
        let one = try ddpRun(["train", "--config", try config(batch: 8), "--run-dir", path("one"), "--init", path("gpt2.h5")])
        XCTAssertTrue(one.stdout.contains("starting from the parameters of"), one.output)
        let two = try runUnderMPI(ranks: 2, ddp, ["train", "--config", try config(batch: 4), "--run-dir", path("two"), "--init", path("gpt2.h5")],
                                  timeout: 300)
        XCTAssertEqual(two.status, 0, two.output)
        let reference = try trainingLosses(inRun: path("one")), losses = try trainingLosses(inRun: path("two"))
        XCTAssertEqual(reference.count, 20)
        XCTAssertEqual(losses.count, 20)
        for (step, (a, b)) in zip(losses, reference).enumerated() { XCTAssertEqual(a, b, accuracy: abs(b) * 1e-5, "step \(step + 1)") }
        let (oneModel, _) = try Checkpoint.loadModel(try Checkpoint.resolve(path("one")), maxBatch: 1)
        let (twoModel, _) = try Checkpoint.loadModel(try Checkpoint.resolve(path("two")), maxBatch: 1)
        func parameters(_ model: TransformerModel) -> [String: [Float]] {
            Dictionary(uniqueKeysWithValues: model.layout.views.map { ($0.name, Array(model.parameters[$0])) })
        }
        let mismatches = parameterMismatches(parameters(twoModel), reference: parameters(oneModel), steps: 20, lr: 1e-3)
        XCTAssertTrue(mismatches.isEmpty, mismatches.joined(separator: "; "))

        // Back to Hugging Face.
        try ddpRun(["export", "--checkpoint", path("one"), "--format", "hf", "--output", path("exported")])
        for file in ["config.json", "model.safetensors", "tokenizer.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: path("exported/\(file)")), file)
        }
        XCTAssertEqual(try String(contentsOfFile: path("exported/tokenizer.json"), encoding: .utf8),
                       try String(contentsOfFile: joined(model, "tokenizer.json"), encoding: .utf8), "the tokenizer.json as it came in")
        // Imported again, the exported directory is the same model.
        try ddpRun(["import", "--hf", path("exported"), "--output", path("again.h5")])
        let again = try Checkpoint.loadModel(path("again.h5"), maxBatch: 1).model
        XCTAssertEqual(parameters(again), parameters(oneModel), "export then import gives back every parameter bit for bit")
        guard let python else {
            print("HuggingFaceTests: transformers is not installed; the exported directory was not loaded by transformers")
            return
        }
        let batch = rows(vocabulary: 500)
        let ours = try ourLogits(path("one"), rows: batch), theirs = try transformersLogits(python, model: path("exported"), rows: batch)
        assertLogitsClose(ours.logits, theirs.logits, "exported logits")
        XCTAssertEqual(ours.loss, theirs.loss, accuracy: theirs.loss * 1e-4, "exported loss")
    }

    /// A GPT-2 directory written by SwiftDDP itself (seeded random parameters, the minimal byte-level tokenizer of
    /// `minimalByteLevelTokenizer()`), for when transformers is absent.
    private func writeOwnGPT2Directory(vocabulary: Int = 258) throws -> String {
        let config = ModelConfig(kind: .decoderOnly, vocabSize: vocabulary, dModel: 32, heads: 4, encoderLayers: 0, decoderLayers: 2, dFF: 128,
                                 activation: .geluTanh, norm: .pre, positions: .learned, maxLength: 64, dropout: 0, tiedEmbeddings: true,
                                 scaleEmbedding: false)
        let model = try TransformerModel(config: config, maxBatch: 1, maxTargetLength: 64)
        model.initializeParameters(seed: 11)
        let directory = path("own-gpt2-\(vocabulary)")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Safetensors.write(HuggingFaceGPT2.tensors(of: model), metadata: ["format": "pt"], to: joined(directory, "model.safetensors"))
        try HuggingFaceGPT2.configJSON(config, special: SpecialTokens(pad: SpecialTokens.none, bos: 257, eos: 257))
            .write(to: URL(fileURLWithPath: joined(directory, "config.json")))
        try Self.minimalTokenizerJSON.write(toFile: joined(directory, "tokenizer.json"), atomically: true, encoding: .utf8)
        return directory
    }

    /// `minimalByteLevelTokenizer()` as text.
    static let minimalTokenizerJSON = String(decoding: try! JSONSerialization.data(withJSONObject: minimalByteLevelTokenizer(), options: [.sortedKeys]),
                                             as: UTF8.self)

    /// GPT-2's dropout rates are training settings the checkpoint does not take (model.dropout 0): import says so.
    func testImportSaysWhichDropoutItDoesNotTake() throws {
        let directory = try writeOwnGPT2Directory()
        let configPath = joined(directory, "config.json")
        var config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: configPath))) as? [String: Any])
        config["resid_pdrop"] = 0.1
        config["embd_pdrop"] = 0.1
        config["attn_pdrop"] = 0.1
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: configPath))
        let imported = try ddpRun(["import", "--hf", directory, "--output", path("dropout.h5")])
        XCTAssertTrue(imported.stderr.contains("resid_pdrop 0.1, embd_pdrop 0.1, attn_pdrop 0.1 is not imported: the checkpoint has model.dropout 0"),
                      imported.output)
    }

    /// A model whose vocabulary is larger than its tokenizer's (GPT-2 checkpoints often pad it) samples ids that have no
    /// text, and special tokens: generation prints nothing for them and goes on.
    func testGenerateSamplesTokensWithoutText() throws {
        try ddpRun(["import", "--hf", try writeOwnGPT2Directory(vocabulary: 320), "--output", path("padded.h5")])
        for seed in 1...3 {
            let result = try ddpRun(["generate", "--checkpoint", path("padded.h5"), "--prompt", "ab", "--max-tokens", "40", "--seed", "\(seed)"])
            XCTAssertFalse(result.stdout.isEmpty, result.output)
        }
    }

    /// A tokenizer with a `<pad>` token: a prompt that spells it out would put PAD, which attention and the loss skip,
    /// into the model's input; generate and attention refuse it by name.
    func testPromptsThatEncodeToPaddingAreRefused() throws {
        let directory = try writeOwnGPT2Directory(vocabulary: 320)
        var tokenizer = minimalByteLevelTokenizer()
        tokenizer["added_tokens"] = [["id": 257, "content": "<|endoftext|>", "special": true], ["id": 258, "content": "<pad>", "special": true]]
        try JSONSerialization.data(withJSONObject: tokenizer).write(to: URL(fileURLWithPath: joined(directory, "tokenizer.json")))
        try ddpRun(["import", "--hf", directory, "--output", path("with-pad.h5")])
        XCTAssertEqual(try Checkpoint.readHeader(path("with-pad.h5")).tokenizer?.specialTokens.pad, 258)
        let generate = try ddpRun(["generate", "--checkpoint", path("with-pad.h5"), "--prompt", "ab<pad>ab"], expectSuccess: false)
        XCTAssertEqual(generate.status, 1, generate.output)
        XCTAssertTrue(generate.stderr.contains("--prompt: the text encodes to the tokenizer's PAD token (id 258), which only padding may hold"),
                      generate.output)
        let attention = try ddpRun(["attention", "--checkpoint", path("with-pad.h5"), "--prompt", "<pad>", "--output", path("maps")],
                                   expectSuccess: false)
        XCTAssertEqual(attention.status, 1, attention.output)
        XCTAssertTrue(attention.stderr.contains("--prompt: the text encodes to the tokenizer's PAD token (id 258)"), attention.output)
        XCTAssertEqual(try ddpRun(["generate", "--checkpoint", path("with-pad.h5"), "--prompt", "ab", "--max-tokens", "3"]).status, 0)
    }

    /// Everything a user can get wrong is a sentence naming the file, key or tensor, and writes nothing.
    func testUnsupportedModelsAndFilesAreRefusedByName() throws {
        let model = try writeOwnGPT2Directory()
        func refused(_ arguments: [String], _ expected: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let result = try ddpRun(arguments, expectSuccess: false, file: file, line: line)
            XCTAssertNotEqual(result.status, 0, result.output, file: file, line: line)
            XCTAssertTrue(result.stderr.contains(expected), "expected '\(expected)' in: \(result.output)", file: file, line: line)
            // A refusal found while running is its sentence alone, not followed by the usage of `ddp` itself.
            XCTAssertFalse(result.stderr.contains("Usage: ddp <subcommand>"), result.output, file: file, line: line)
        }
        func variant(_ name: String, config change: (inout [String: Any]) -> Void = { _ in }, removing: String? = nil) throws -> String {
            let target = path(name)
            try FileManager.default.copyItem(atPath: model, toPath: target)
            var json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: joined(target, "config.json")))) as? [String: Any])
            change(&json)
            try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: joined(target, "config.json")))
            if let removing { try FileManager.default.removeItem(atPath: joined(target, removing)) }
            return target
        }
        // A file of the directory given in its place is named as such (it was looked for as config.json/config.json).
        try refused(["import", "--hf", joined(model, "config.json"), "--output", path("x.h5")],
                    "--hf \(joined(model, "config.json")) is a regular file; give the model directory that holds config.json")
        try refused(["import", "--hf", try variant("llama") { $0["model_type"] = "llama" }, "--output", path("x.h5")], "model_type llama is not supported")
        try refused(["import", "--hf", try variant("cross") { $0["add_cross_attention"] = true }, "--output", path("x.h5")], "add_cross_attention")
        try refused(["import", "--hf", try variant("scaled") { $0["scale_attn_by_inverse_layer_idx"] = true }, "--output", path("x.h5")],
                    "scale_attn_by_inverse_layer_idx")
        try refused(["import", "--hf", try variant("swish") { $0["activation_function"] = "swish" }, "--output", path("x.h5")], "activation_function swish")
        try refused(["import", "--hf", try variant("wide") { $0["n_embd"] = 64 }, "--output", path("x.h5")],
                    "tensor 'transformer.wte.weight' has shape [258, 32], expected [258, 64]")
        try refused(["import", "--hf", try variant("deeper") { $0["n_layer"] = 3 }, "--output", path("x.h5")], "has no tensor 'transformer.h.2.ln_1.weight'")
        try refused(["import", "--hf", try variant("shallower") { $0["n_layer"] = 1 }, "--output", path("x.h5")], "has no place for: transformer.h.1.")
        try refused(["import", "--hf", try variant("notokenizer", removing: "tokenizer.json"), "--output", path("x.h5")], "tokenizer.json: missing")
        try refused(["import", "--hf", try variant("stringly") { $0["n_layer"] = "2" }, "--output", path("x.h5")],
                    "key 'n_layer' is \"2\" (a string), not an integer")
        try refused(["import", "--hf", try variant("untie") { $0["tie_word_embeddings"] = "false" }, "--output", path("x.h5")],
                    "key 'tie_word_embeddings' is \"false\" (a string), not true or false")
        try refused(["import", "--hf", try variant("eos-list") { $0["eos_token_id"] = [257, 1] }, "--output", path("x.h5")],
                    "key 'eos_token_id' is")
        try refused(["import", "--hf", try variant("eos-bool") { $0["eos_token_id"] = true }, "--output", path("x.h5")],
                    "key 'eos_token_id' is true, not a token id")
        try refused(["import", "--hf", try variant("layers-bool") { $0["n_layer"] = true }, "--output", path("x.h5")],
                    "key 'n_layer' is true, not an integer")
        try refused(["import", "--hf", try variant("tie-number") { $0["tie_word_embeddings"] = 1 }, "--output", path("x.h5")],
                    "key 'tie_word_embeddings' is 1, not true or false")
        try refused(["import", "--hf", try variant("eos-outside") { $0["eos_token_id"] = 9000 }, "--output", path("x.h5")],
                    "eos_token id 9000 is outside the tokenizer's 258 ids")
        try refused(["import", "--hf", try variant("huge") { $0["n_embd"] = Int.max; $0["n_inner"] = nil }, "--output", path("x.h5")],
                    "config.json: does not describe a model SwiftDDP builds")
        let sharded = try variant("sharded", removing: "model.safetensors")
        try Data("{}".utf8).write(to: URL(fileURLWithPath: joined(sharded, "model.safetensors.index.json")))
        try refused(["import", "--hf", sharded, "--output", path("x.h5")], "sharded over several files is not supported")
        // Two tensors sharing bytes: a small file must not stand for a large model.
        let overlapping = try variant("overlapping")
        var header: [String: Any] = ["__metadata__": ["format": "pt"]]
        for name in ["transformer.wte.weight", "transformer.wpe.weight"] {
            header[name] = ["dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]] as [String: Any]
        }
        var bytes = try JSONSerialization.data(withJSONObject: header)
        var length = UInt64(bytes.count).littleEndian
        bytes = Data(bytes: &length, count: 8) + bytes + Data(count: 16)
        try bytes.write(to: URL(fileURLWithPath: joined(overlapping, "model.safetensors")))
        try refused(["import", "--hf", overlapping, "--output", path("x.h5")], "overlap in the file")
        // A pad id that is the EOS token is not used as padding, and import says so.
        let padded = try ddpRun(["import", "--hf", try variant("pad-eos") { $0["pad_token_id"] = 257 }, "--output", path("pad-eos.h5")])
        XCTAssertTrue(padded.stderr.contains("pad_token_id 257 is the EOS token"), padded.output)
        XCTAssertEqual(try Checkpoint.readHeader(path("pad-eos.h5")).tokenizer?.specialTokens.pad, SpecialTokens.none)
        let damaged = try variant("damaged")
        try Data("not safetensors".utf8).write(to: URL(fileURLWithPath: joined(damaged, "model.safetensors")))
        try refused(["import", "--hf", damaged, "--output", path("x.h5")], "not a safetensors file")
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("x.h5")), "nothing written")

        // Export: other model forms are refused saying what is supported; a directory with files in it is not written into.
        try ddpRun(["import", "--hf", model, "--output", path("gpt2.h5")])
        try FileManager.default.createDirectory(atPath: path("full"), withIntermediateDirectories: true)
        try Data("mine".utf8).write(to: URL(fileURLWithPath: path("full/notes.txt")))
        try refused(["export", "--checkpoint", path("gpt2.h5"), "--format", "hf", "--output", path("full")], "not empty")
        XCTAssertEqual(try String(contentsOfFile: path("full/notes.txt"), encoding: .utf8), "mine")
        try ddpRun(["prepare", "--synthetic", "reverse", "--samples", "40", "--max-length", "12", "--output", path("reverse")])
        try """
            model: {kind: encoder-decoder, vocab_size: 260, d_model: 16, heads: 2, encoder_layers: 1, decoder_layers: 1, d_ff: 32,
                    activation: relu, norm: post, positions: sinusoidal, max_length: 16}
            data: {directory: \(path("reverse")), source_length: 13, target_length: 13}
            training: {batch_size: 4, steps: 1, threads: 1}
            """.write(toFile: path("reverse.yaml"), atomically: true, encoding: .utf8)
        try ddpRun(["train", "--config", path("reverse.yaml"), "--run-dir", path("reverse-run")])
        try refused(["export", "--checkpoint", path("reverse-run"), "--format", "hf", "--output", path("out")],
                    "a GPT2LMHeadModel is a decoder-only model with pre-norm, learned positions and unscaled embeddings; this one's model.kind is encoder-decoder, model.norm is post, model.positions is sinusoidal")

        // --init: data in another tokenizer, and a model section that describes another network, are refused.
        try """
            data: {directory: \(path("reverse")), target_length: 13}
            training: {batch_size: 4, steps: 1, threads: 1}
            """.write(toFile: path("init.yaml"), atomically: true, encoding: .utf8)
        try refused(["train", "--config", path("init.yaml"), "--run-dir", path("init-run"), "--init", path("gpt2.h5")], "holds seq2seq data")
        try String(repeating: "ab abc\n", count: 200).write(toFile: path("text.txt"), atomically: true, encoding: .utf8)
        try ddpRun(["prepare", "--task", "lm", "--input", path("text.txt"), "--output", path("bytes")])
        try """
            data: {directory: \(path("bytes")), target_length: 13}
            training: {batch_size: 4, steps: 1, threads: 1}
            """.write(toFile: path("init-bytes.yaml"), atomically: true, encoding: .utf8)
        try refused(["train", "--config", path("init-bytes.yaml"), "--run-dir", path("init-run"), "--init", path("gpt2.h5")],
                    "prepare it with ddp prepare --tokenizer-from")
        // Another Hugging Face tokenizer of the same size ("b a" merged instead of "a b").
        var other = minimalByteLevelTokenizer()
        var otherModel = other["model"] as! [String: Any]
        var otherVocab = otherModel["vocab"] as! [String: Any]
        otherVocab["ab"] = nil
        otherVocab["ba"] = 256
        otherModel["vocab"] = otherVocab
        otherModel["merges"] = ["b a"]
        other["model"] = otherModel
        try JSONSerialization.data(withJSONObject: other).write(to: URL(fileURLWithPath: path("other-tokenizer.json")))
        try ddpRun(["prepare", "--task", "lm", "--input", path("text.txt"), "--tokenizer-from", path("other-tokenizer.json"), "--output", path("other-data")])
        try """
            data: {directory: \(path("other-data")), target_length: 13}
            training: {batch_size: 4, steps: 1, threads: 1}
            """.write(toFile: path("init-other.yaml"), atomically: true, encoding: .utf8)
        try refused(["train", "--config", path("init-other.yaml"), "--run-dir", path("init-run"), "--init", path("gpt2.h5")],
                    "not the huggingface tokenizer of")
        try ddpRun(["prepare", "--task", "lm", "--input", path("text.txt"), "--tokenizer-from", model, "--output", path("gpt2-data")])
        try """
            model: {d_model: 64}
            data: {directory: \(path("gpt2-data")), target_length: 13}
            training: {batch_size: 4, steps: 1, threads: 1}
            """.write(toFile: path("init-wide.yaml"), atomically: true, encoding: .utf8)
        try refused(["train", "--config", path("init-wide.yaml"), "--run-dir", path("init-run"), "--init", path("gpt2.h5")], "model.d_model: checkpoint 32, expected 64")
        // --overwrite of the run directory that holds the --init checkpoint would delete it first: refused, nothing deleted.
        try FileManager.default.createDirectory(atPath: path("kept"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: path("gpt2.h5"), toPath: path("kept/checkpoint-00000000.h5"))
        try refused(["train", "--config", path("init-bytes.yaml"), "--run-dir", path("kept"), "--init", path("kept/checkpoint-00000000.h5"),
                     "--overwrite"], "which --overwrite would delete first")
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("kept/checkpoint-00000000.h5")))
        try FileManager.default.createSymbolicLink(atPath: path("link.h5"), withDestinationPath: path("kept/checkpoint-00000000.h5"))
        try refused(["train", "--config", path("init-bytes.yaml"), "--run-dir", path("kept"), "--init", path("link.h5"), "--overwrite"],
                    "which --overwrite would delete first")
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("kept/checkpoint-00000000.h5")), "a link to it does not get through")
        // A missing --init, and a link to a checkpoint that has gone, are named as --init's.
        try refused(["train", "--config", path("init-bytes.yaml"), "--run-dir", path("init-run"), "--init", path("gone.h5")],
                    "--init \(path("gone.h5")): does not exist")
        try FileManager.default.createSymbolicLink(atPath: path("dangling.h5"), withDestinationPath: path("gone.h5"))
        try refused(["train", "--config", path("init-bytes.yaml"), "--run-dir", path("init-run"), "--init", path("dangling.h5")],
                    "--init \(path("dangling.h5")): is a link to \(path("gone.h5")), which does not exist")
        // A FIFO is refused before it is opened (reading it would wait for a writer).
        XCTAssertEqual(mkfifo(path("fifo.h5"), 0o644), 0)
        try refused(["train", "--config", path("init-bytes.yaml"), "--run-dir", path("init-run"), "--init", path("fifo.h5")],
                    "--init \(path("fifo.h5")): is not a regular file (a FIFO, device or socket), so it is not read")
    }
}
