import ArgumentParser
import Basics
import Data
import Files
import Foundation
import HDF5
import Kernels
import MPI
import Training
import Transformer

struct Embed: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write the encoder's hidden states of every line of a text file to HDF5 (encoder-only and encoder-decoder checkpoints).",
        discussion: """
            Each line is tokenized with the checkpoint's tokenizer and encoded on its own, with bidirectional \
            attention, as the model saw text in training: an encoder-only model's lines as they are (its training \
            windows have no framing tokens), an encoder-decoder model's followed by EOS (as every source it trained on \
            and translates is). A line longer than the model's context is an error naming it. The output holds \
            `tokens` [N] (int32, every line's tokens one after another), `offsets` [L + 1] (int64: line i is \
            tokens[offsets[i]:offsets[i + 1]]), `hidden` [N, d_model] (float32, the encoder's output, after the final \
            norm of a pre-norm model) and `mean` [L, d_model] (each line's mean over its tokens; zeros for an empty \
            line of an encoder-only model), with the checkpoint, its step and the tokenizer as attributes. Under mpirun the lines are split \
            across ranks and rank 0 writes them in input order (each rank pads its own batches, so values agree with \
            one process to rounding). The output is a file: a directory or one of the inputs is refused.

            Example:
              ddp embed --checkpoint runs/bert-small --input sentences.txt --output embeddings.h5
              python3 -c "import h5py; f = h5py.File('embeddings.h5'); print(f['mean'].shape)"
            """
    )

    @OptionGroup var checkpoint: CheckpointOption

    @Option(help: "A text file, one sequence per line (LF, CRLF or CR).")
    var input: String

    @Option(help: "The HDF5 file to write.")
    var output: String

    @Option(parsing: .unconditional, help: "Lines encoded together (default: the checkpoint's training batch size).")
    var batchSize: Int?

    @OptionGroup var threads: ThreadsOption

    func validate() throws {
        if let batchSize, !(1...RunConfig.largestBatch).contains(batchSize) {
            throw ValidationError("--batch-size must be 1 to \(RunConfig.largestBatch), got \(batchSize).")
        }
    }

    func run() throws {
        let path = try checkpoint.resolve()
        let inputs = [input] + checkpoint.protectedFiles(resolved: path)
        try OutputFile.check(output, inputs: inputs)
        RemoveOnSignal.install()  // an interrupted write leaves no temporary beside the output
        let header = try Checkpoint.readHeader(path)
        guard header.config.model.kind.hasEncoder else {
            throw EmbedInputError(message: "\(path) is a \(header.config.model.kind.rawValue) model, which has no encoder to embed with")
        }
        guard let tokenizer = header.tokenizer else {
            throw EmbedInputError(message: "\(path) holds no tokenizer, so text cannot be tokenized as in training")
        }
        // The text is read whole and tokenized (at most one 4-byte id per byte, plus per-line overhead): check first.
        let fileBytes = (try? FileManager.default.attributesOfItem(atPath: input)[.size] as? Int) ?? 0
        if let shortfall = MemoryBudget.shortfall(Double(fileBytes) * 16, for: "reading and tokenizing \(input) (\(fileBytes) bytes)") {
            throw EmbedInputError(message: shortfall + "; embed the file in parts")
        }
        // Within what memory holds as it is read, many short lines too, and a pipe's (whose size is not known first).
        var lines = TextFile.lines(try Preparer.readText(input, limit: Prepare.textLimit())).map(tokenizer.encode)
        for (number, line) in lines.enumerated() { try tokenizer.refusePadding(in: line, what: "line \(number + 1)", of: input) }
        // An encoder-decoder model's encoder saw every source with its EOS (data shards, `ddp generate`).
        if header.config.model.kind == .encoderDecoder { lines = lines.map { $0 + [tokenizer.specialTokens.eos] } }
        guard !lines.isEmpty else { throw EmbedInputError(message: "\(input) has no lines to embed") }
        try withMPI { runtime in
            let world = runtime.world
            try threads.apply(world: world)
            // The checkpoint, the lines' lengths and this node's memory, checked on every rank: a refusal on any stops
            // every rank with a sentence (a rank short of memory alone would otherwise leave the others in the sum).
            let model = try togetherOnEveryRank(world, "checkpoint and memory checks") {
                // The run's batch_size (derived from a token budget, it can be large) only as far as this rank's lines fill it.
                let (model, _) = try Checkpoint.loadModel(path, maxBatch: batchSize ?? evaluationRows(batchSize: header.config.training.batchSize,
                                                                                                        samples: lines.count, worldSize: world.size))
                if let (number, line) = lines.enumerated().first(where: { $0.element.count > model.maxSourceLength }) {
                    throw EmbedInputError(message: "\(input) line \(number + 1) is \(line.count) tokens"
                                                   + (header.config.model.kind == .encoderDecoder ? " with its EOS" : "") + "; the model takes at most "
                                                   + "\(model.maxSourceLength), the length its run trained at: shorten or split the line")
                }
                // Every line's hidden states are held whole on every rank (and summed across ranks), and rank 0 adds
                // the means, one row per line: check first.
                let tokenCount = lines.reduce(0) { $0 + $1.count }
                if let shortfall = MemoryBudget.shortfall((2 * Double(tokenCount) + Double(lines.count)) * Double(model.config.dModel) * 4,
                                                          for: "holding the hidden states of \(input)'s \(tokenCount) tokens") {
                    throw EmbedInputError(message: shortfall + "; embed the file in parts")
                }
                return model
            }
            // Each rank read its own --input and --checkpoint (node-local paths, say): the sum of hidden states below
            // needs the same lines and model on every rank (other lines made the sum's lengths differ and memory corrupt).
            var linesDigest = ContentDigest(), outputDigest = ContentDigest()
            for line in lines { line.withUnsafeBufferPointer { linesDigest.add($0) } }
            outputDigest.add(output)
            try requireRanksAgree(world, on: [("the checkpoint (its config and parameters)", model.contentDigest),
                                              ("the lines of --input (their tokens)", linesDigest.value),
                                              ("--output (only rank 0 writes it)", outputDigest.value)],
                                  hint: "the same --checkpoint, --input and --output on every rank?")
            let hidden = try encode(lines, model: model, world: world)
            guard world.rank == 0 else { return }
            try write(lines, hidden: hidden, channels: model.config.dModel, checkpoint: path, step: header.state.step,
                      tokenizer: tokenizer, inputs: inputs)
            print("\(output): \(lines.count) lines, \(hidden.count / model.config.dModel) tokens, d_model \(model.config.dModel) (from \(path), step \(header.state.step))")
        }
    }

    /// Every line's hidden states, [N, C] in input order, on every rank: each rank encodes lines rank, rank + size, ...
    /// in batches, and a sum over ranks puts them together (each position is written by exactly one rank).
    private func encode(_ lines: [[Int32]], model: TransformerModel, world: Communicator) throws -> [Float] {
        let c = model.config.dModel
        var offsets = [0]
        for line in lines { offsets.append(offsets.last! + line.count) }
        var hidden = [Float](repeating: 0, count: offsets.last! * c)
        let mine = Array(stride(from: world.rank, to: lines.count, by: world.size)).filter { !lines[$0].isEmpty }
        for start in stride(from: 0, to: mine.count, by: model.maxBatch) {
            let chunk = Array(mine[start..<min(mine.count, start + model.maxBatch)])
            let time = chunk.map { lines[$0].count }.max()!
            let tokens = chunk.flatMap { lines[$0] + [Int32](repeating: model.specialTokens.pad, count: time - lines[$0].count) }
            let states = try model.encoderHiddenStates(tokens, batch: chunk.count, time: time)
            for (row, line) in chunk.enumerated() {
                let count = lines[line].count * c
                hidden.replaceSubrange((offsets[line] * c)..<(offsets[line] * c + count), with: states[(row * time * c)..<(row * time * c + count)])
            }
        }
        if world.size > 1 { try world.allreduce(&hidden, op: .sum) }
        return hidden
    }

    private func write(_ lines: [[Int32]], hidden: [Float], channels c: Int, checkpoint: String, step: Int, tokenizer: Tokenizer,
                       inputs: [String]) throws {
        var offsets: [Int64] = [0], mean = [Float](repeating: 0, count: lines.count * c)
        for (index, line) in lines.enumerated() {
            let start = Int(offsets.last!)
            offsets.append(Int64(start + line.count))
            guard !line.isEmpty else { continue }
            for t in start..<(start + line.count) {
                for k in 0..<c { mean[index * c + k] += hidden[t * c + k] }
            }
            for k in 0..<c { mean[index * c + k] /= Float(line.count) }
        }
        let tokens = lines.flatMap { $0 }
        try OutputFile.write(output, inputs: inputs) { temporary in
            let file = try File.create(temporary)
            try file.setAttribute("format", "swiftddp-embeddings")
            try file.setAttribute("version", 1)
            try file.setAttribute("checkpoint", checkpoint)
            try file.setAttribute("step", step)
            try file.setAttribute("tokenizer", tokenizer.json)
            if !tokens.isEmpty {
                try file.createDataset("tokens", type: .int32, shape: [tokens.count]).write(tokens)
                try file.createDataset("hidden", type: .float32, shape: [tokens.count, c]).write(hidden)
            } else {
                try file.createDataset("tokens", type: .int32, shape: [0])
                try file.createDataset("hidden", type: .float32, shape: [0, c])
            }
            try file.createDataset("offsets", type: .int64, shape: [offsets.count]).write(offsets)
            try file.createDataset("mean", type: .float32, shape: [lines.count, c]).write(mean)
            try file.close()
        }
    }
}

/// Input `ddp embed` cannot use (the same on every rank, so every rank stops with it).
struct EmbedInputError: ErrorOnEveryRank, CustomStringConvertible {
    let message: String
    var description: String { message }
}
