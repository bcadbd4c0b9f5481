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

    @Option(help: "The safetensors file to write (--format hf: the directory, new or empty).")
    var output: String

    func run() throws {
        try requireOneProcess("ddp export")
        RemoveOnSignal.install()  // an interrupted write leaves no temporary beside the output
        let path = try checkpoint.resolve()
        let inputs = checkpoint.protectedFiles(resolved: path)
        if format == .hf { return try exportGPT2(path, inputs: inputs) }
        try OutputFile.check(output, inputs: inputs)
        let (model, header) = try Checkpoint.loadModel(path, maxBatch: 1)
        let encoder = JSONEncoder.sortedKeys
        var metadata = ["format": "pt", "swiftddp_step": String(header.state.step),
                        "swiftddp_config": String(decoding: try encoder.encode(header.config), as: UTF8.self),
                        "swiftddp_model": String(decoding: try encoder.encode(header.config.model), as: UTF8.self)]
        if let tokenizer = header.tokenizer { metadata["swiftddp_tokenizer"] = tokenizer.json }
        let bytes = try Safetensors.write(model, metadata: metadata, to: output, inputs: inputs)
        print("\(output): \(model.layout.views.count) tensors, \(model.layout.count) parameters, \(formatBytes(bytes)) (from \(path), step \(header.state.step))")
    }

    /// `--format hf`: the checkpoint as a GPT2LMHeadModel directory, written into a temporary directory beside the
    /// output and renamed onto it when complete (onto an empty directory too), so an interrupted or failed export
    /// leaves nothing behind.
    private func exportGPT2(_ path: String, inputs: [String]) throws {
        let header = try Checkpoint.readHeader(path)
        if let reason = HuggingFaceGPT2.unsupportedReason(header.config.model) {
            throw RunError("\(path) cannot be exported as a Hugging Face GPT-2: \(reason). --format safetensors exports any model.")
        }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: output, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw RunError("--output \(output) is \(Paths.kindInWords(output)); --format hf writes a directory") }
            let contents = (try? FileManager.default.contentsOfDirectory(atPath: output)) ?? []
            guard contents.isEmpty else {
                throw RunError("--output \(output) is a directory that is not empty (it holds "
                                            + "\(contents.sorted().prefix(3).joined(separator: ", "))); give a new or empty directory")
            }
        }
        let parent = Paths.parent(output)
        guard FileManager.default.fileExists(atPath: parent, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw RunError("--output \(output): its directory \(parent) does not exist")
        }
        let (model, _) = try Checkpoint.loadModel(path, maxBatch: 1)
        let special = header.tokenizer?.specialTokens ?? .standard
        OutputFile.removeLeftovers(of: output)
        let temporary = OutputFile.temporaryPath(for: output)
        RemoveOnSignal.install(removing: temporary, for: output)
        do {
            try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: false)
        } catch {
            throw RunError("--output \(output): cannot create a directory beside it (\(describe(error)))")
        }
        var written = ["config.json"]
        do {
            let bytes = try Safetensors.write(HuggingFaceGPT2.tensors(of: model), metadata: ["format": "pt"],
                                              to: Paths.join(temporary, "model.safetensors"), inputs: inputs)
            try OutputFile.write(Paths.join(temporary, "config.json"), data: try HuggingFaceGPT2.configJSON(model.config, special: special), inputs: inputs)
            written.append("model.safetensors (\(formatBytes(bytes)))")
            if case .huggingFace(let tokenizer) = header.tokenizer {
                try OutputFile.write(Paths.join(temporary, "tokenizer.json"), data: Foundation.Data(tokenizer.text.utf8), inputs: inputs)
                written.append("tokenizer.json")
            }
            // rename(2) replaces an empty directory and refuses one that is not (it may have filled meanwhile).
            try OutputFile.placing(output) {
                guard rename(temporary, output) == 0 else {
                    throw RunError("--output \(output) cannot be written: \(String(cString: strerror(errno)))")
                }
            }
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
        print("\(output): a GPT2LMHeadModel (\(written.joined(separator: ", "))) from \(path), step \(header.state.step)"
              + (written.count < 3 ? "; no tokenizer.json: the checkpoint's \(header.tokenizer?.kind ?? "missing") tokenizer has no Hugging Face form" : ""))
    }
}
