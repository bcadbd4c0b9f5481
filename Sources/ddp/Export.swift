import ArgumentParser
import Basics
import Data
import Files
import Foundation
import Training

extension Export.Format: ExpressibleByArgument {}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Export a checkpoint's parameters to safetensors, for PyTorch and other tools, or as a Hugging Face GPT-2.",
        discussion: """
            --format safetensors (the default): tensors are F32 under the parameter names README.md lists (torch [out, in] \
            weights), so they load by name into an equivalent PyTorch module; the metadata holds the run config (JSON), \
            the model config, the step and the tokenizer. README.md shows loading it in Python \
            (Tests/Reference/swiftddp_torch.py). The output is a file: a directory or the checkpoint itself is refused.

            --format hf: a decoder-only, pre-norm model with learned positions becomes a GPT2LMHeadModel directory \
            (config.json, model.safetensors, and tokenizer.json when the checkpoint's tokenizer came from Hugging Face) \
            that transformers loads with from_pretrained. Other models are refused, saying why. The output directory must \
            not exist or be empty.

            Examples:
              ddp export --checkpoint runs/reverse --output reverse.safetensors
              ddp export --checkpoint runs/gpt2-finetune --format hf --output gpt2-finetuned
            """
    )

    /// What `--format` writes.
    enum Format: String, CaseIterable {
        case safetensors, hf
    }

    @Option(help: "safetensors (one file, SwiftDDP's names) or hf (a Hugging Face GPT2LMHeadModel directory).")
    var format: Format = .safetensors

    @OptionGroup var checkpoint: CheckpointOption

    @Option(help: "The safetensors file to write.")
    var output: String

    func run() throws {
        let path = try checkpoint.resolve()
        let inputs = [path, checkpoint.checkpoint, Paths.join(checkpoint.checkpoint, Checkpoint.latestName)]
        if format == .hf { return try exportGPT2(path, inputs: inputs) }
        try OutputFile.check(output, inputs: inputs)
        RemoveOnSignal.install()  // an interrupted write leaves no temporary beside the output
        let (model, header) = try Checkpoint.loadModel(path, maxBatch: 1)
        let encoder = JSONEncoder.sortedKeys
        var metadata = ["format": "pt", "swiftddp_step": String(header.state.step),
                        "swiftddp_config": String(decoding: try encoder.encode(header.config), as: UTF8.self),
                        "swiftddp_model": String(decoding: try encoder.encode(header.config.model), as: UTF8.self)]
        if let tokenizer = header.tokenizer { metadata["swiftddp_tokenizer"] = tokenizer.json }
        let bytes = try Safetensors.write(model, metadata: metadata, to: output, inputs: inputs)
        print("\(output): \(model.layout.views.count) tensors, \(model.layout.count) parameters, \(formatBytes(bytes)) (from \(path), step \(header.state.step))")
    }

    /// `--format hf`: the checkpoint as a GPT2LMHeadModel directory.
    private func exportGPT2(_ path: String, inputs: [String]) throws {
        let header = try Checkpoint.readHeader(path)
        if let reason = HuggingFaceGPT2.unsupportedReason(header.config.model) {
            throw ValidationError("\(path) cannot be exported as a Hugging Face GPT-2: \(reason). --format safetensors exports any model.")
        }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: output, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw ValidationError("--output \(output) is a file; --format hf writes a directory.") }
            let contents = (try? FileManager.default.contentsOfDirectory(atPath: output)) ?? []
            guard contents.isEmpty else {
                throw ValidationError("--output \(output) is a directory that is not empty (it holds \(contents.sorted().prefix(3).joined(separator: ", ")))"
                                      + "; give a new or empty directory.")
            }
        }
        let (model, _) = try Checkpoint.loadModel(path, maxBatch: 1)
        let special = header.tokenizer?.specialTokens ?? .standard
        let files = ["config.json", "model.safetensors", "tokenizer.json"].map { Paths.join(output, $0) }
        let created = !FileManager.default.fileExists(atPath: output)
        do { try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true) } catch {
            throw ValidationError("--output \(output) cannot be created: \(error.localizedDescription)")
        }
        var written: [String] = []
        do {
            // A failure leaves the output as it was: the directory removed when this command made it, else emptied again.
            defer { if written.count < 2 { for file in files { try? FileManager.default.removeItem(atPath: file) } } }
            for file in files { try OutputFile.check(file, inputs: inputs) }
            let bytes = try Safetensors.write(HuggingFaceGPT2.tensors(of: model), metadata: ["format": "pt"], to: files[1], inputs: inputs)
            try OutputFile.write(files[0], data: try HuggingFaceGPT2.configJSON(model.config, special: special), inputs: inputs)
            written = ["config.json", "model.safetensors (\(formatBytes(bytes)))"]
            if case .huggingFace(let tokenizer) = header.tokenizer {
                try OutputFile.write(files[2], data: Foundation.Data(tokenizer.text.utf8), inputs: inputs)
                written.append("tokenizer.json")
            }
        } catch {
            if created { try? FileManager.default.removeItem(atPath: output) }
            throw error
        }
        print("\(output): a GPT2LMHeadModel (\(written.joined(separator: ", "))) from \(path), step \(header.state.step)"
              + (written.count < 3 ? "; no tokenizer.json: the checkpoint's \(header.tokenizer?.kind ?? "missing") tokenizer has no Hugging Face form" : ""))
    }
}
