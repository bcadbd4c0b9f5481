import ArgumentParser
import Basics
import Data
import Files
import Foundation
import Training
import Transformer

struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Turn a Hugging Face GPT-2 model directory into a SwiftDDP checkpoint.",
        discussion: """
            --hf DIR is a GPT2LMHeadModel directory as transformers' save_pretrained writes it (config.json, \
            model.safetensors, tokenizer.json). The output is one checkpoint file: a decoder-only, pre-norm model with \
            learned positions, GPT-2's tied embeddings (or its untied lm_head) and activation, its parameters converted as README.md \
            "Hugging Face models" lists, the tokenizer stored with it, step 0 and fresh AdamW moments. Fine-tune it \
            with ddp train --init CHECKPOINT on data prepared with --tokenizer-from DIR. Other architectures and \
            configs SwiftDDP cannot build are refused by name. The output must not be a directory or an input.

            Example:
              ddp import --hf gpt2 --output gpt2.h5
            """
    )

    @Option(help: "A Hugging Face GPT-2 model directory (config.json, model.safetensors, tokenizer.json).")
    var hf: String

    @Option(help: "The checkpoint file to write.")
    var output: String

    func run() throws {
        try requireOneProcess("ddp import")
        // A file of the directory given in its place (hf/config.json) would be looked for as hf/config.json/config.json.
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: hf, isDirectory: &isDirectory), !isDirectory.boolValue {
            throw RunError("--hf \(hf) is \(Paths.kindInWords(hf)); give the model directory that holds config.json, model.safetensors and tokenizer.json"
                           + " (\(Paths.parent(hf)), say)")
        }
        let inputs = ["config.json", "model.safetensors", "tokenizer.json"].map { Paths.join(hf, $0) }
        try OutputFile.check(output, inputs: inputs)
        RemoveOnSignal.install()
        let imported = try HuggingFaceGPT2.read(directory: hf)
        for note in imported.notes { printToStandardError("import: \(note)") }
        let config = imported.config
        // The run config stored with it: the model, and data lengths that fit its positions (a fine-tuning run's own
        // config replaces everything but the model).
        let yaml = """
            model: {kind: decoder-only, vocab_size: \(config.vocabSize), d_model: \(config.dModel), heads: \(config.heads), \
            decoder_layers: \(config.decoderLayers), d_ff: \(config.dFF), activation: \(config.activation.rawValue), norm: pre, \
            positions: learned, max_length: \(config.maxLength), tied_embeddings: \(config.tiedEmbeddings), scale_embedding: false}
            data: {target_length: \(config.maxLength)}
            training: {batch_size: 1}
            """
        let run = try RunConfig.parse(yaml, file: "ddp import")
        // (With the AdamW moments the checkpoint is written with.)
        let model = try TransformerModel(config: config, maxBatch: 1, maxTargetLength: config.maxLength, optimizerState: true)
        for view in model.layout.views {
            // Every parameter of the layout was converted, with its shape checked (`HuggingFaceGPT2.read`).
            let values = imported.parameters[view.name] ?? []
            precondition(values.count == view.count, "no converted tensor for \(view.name)")
            _ = model.parameters[view].update(fromContentsOf: values)
        }
        model.specialTokens = imported.tokenizer.specialTokens
        let optimizer = AdamW(layout: model.layout, settings: run.optimizer.settings)
        try Checkpoint.write(to: output, model: model, optimizer: optimizer, state: TrainingState(step: 0, position: SamplerPosition(), dropoutSeed: 0),
                             config: run, tokenizer: imported.tokenizer, inputs: inputs)
        let special = imported.tokenizer.specialTokens
        print("\(output): GPT-2 from \(hf), \(model.layout.count) parameters (\(config.decoderLayers) layers, d_model \(config.dModel), "
              + "\(config.heads) heads, context \(config.maxLength), vocab \(config.vocabSize), \(config.activation.rawValue)); tokenizer "
              + "\(imported.tokenizer.kind) (EOS \(special.eos), BOS \(special.bos), " + (special.pad == SpecialTokens.none ? "no pad token)" : "pad \(special.pad))"))
    }
}

/// What stops a command while it runs (a model, tokenizer, export target or `--init` checkpoint it cannot use, a
/// one-process command under mpirun, a failed check): its sentence, exit 1, and no usage text (a `ValidationError`
/// thrown from `run` prints the usage of `ddp` itself).
struct RunError: Error, CustomStringConvertible {
    /// The sentence.
    let description: String

    init(_ description: String) { self.description = description }

    /// Standard output failed to take what a command printed (a full disk, a reader that has gone): `cause` is the
    /// system's reason, `consequence` what that costs ("the translations are lost").
    static func standardOutputFailed(_ cause: String, _ consequence: String) -> RunError {
        RunError("standard output: cannot be written (\(cause)); \(consequence)")
    }
}
