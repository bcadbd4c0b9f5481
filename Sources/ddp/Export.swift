import ArgumentParser
import Files
import Foundation
import Training

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Export a checkpoint's parameters to safetensors, for PyTorch and other tools.",
        discussion: """
            Tensors are F32 under the parameter names README.md lists (torch [out, in] weights), so they load by name into an \
            equivalent PyTorch module; the metadata holds the run config (JSON), the model config, the step and the \
            tokenizer. README.md shows loading it in Python (Tests/Reference/swiftddp_torch.py). The output is a file: \
            a directory or the checkpoint itself is refused.

            Example:
              ddp export --checkpoint runs/reverse --output reverse.safetensors
            """
    )

    @OptionGroup var checkpoint: CheckpointOption

    @Option(help: "The safetensors file to write.")
    var output: String

    func run() throws {
        let path = try checkpoint.resolve()
        let inputs = [path, checkpoint.checkpoint, Paths.join(checkpoint.checkpoint, Checkpoint.latestName)]
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
}
