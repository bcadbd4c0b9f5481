import ArgumentParser
import Basics
import Data
import Files
import Foundation
import HDF5
import Kernels
import Pictures
import Training
import Transformer

struct AttentionMaps: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attention",
        abstract: "Draw the attention probabilities of every layer and head of a checkpoint on one input.",
        discussion: """
            Runs the checkpoint's model on one input and writes into --output DIR: one SVG heatmap per layer and \
            head of each attention — encoder self-attention, decoder (masked) self-attention, encoder-decoder \
            cross-attention — with the tokens on both axes (queries down, keys across; spaces, tabs and line breaks \
            shown as ␣ ⇥ ⏎), named <attention>-layer<L>-head<H>.svg; index.html, every map in a grid with the \
            input, layer and head named (it shows the SVG files beside it); and attention.h5, the numbers: a dataset [layers, heads, queries, keys] \
            per attention (encoder_self_attention, decoder_self_attention, cross_attention), the token ids \
            (encoder_tokens, decoder_tokens) and their texts as JSON attributes. The probabilities are those of the \
            kernels that train (recomputed from their forward pass).

            The input, by model kind:
              language model (decoder-only):   --prompt TEXT
              encoder-only:                    --input TEXT ([MASK] stands for the mask token)
              translation (encoder-decoder):   --source TEXT --target TEXT, or --input TEXT (the target is then \
            the model's greedy translation)
            At most 256 tokens on a side.

            Examples:
              ddp attention --checkpoint runs/quickstart --input "hello world" --output maps
              ddp attention --checkpoint runs/gpt-small --prompt "ROMEO:" --output maps
            """
    )

    /// Tokens on an axis at most: a heatmap of 256 x 256 cells is 4,600 pixels across and a few MB of SVG.
    static let maximumTokens = 256

    @OptionGroup var checkpoint: CheckpointOption

    @Option(help: "Language model: the text whose attention is drawn.")
    var prompt: String?

    @Option(help: "Encoder-only: the text; translation: the source, translated greedily for the target.")
    var input: String?

    @Option(help: "Translation: the source text (with --target).")
    var source: String?

    @Option(help: "Translation: the target text the decoder reads (with --source).")
    var target: String?

    @Option(help: "The directory to write (created when missing).")
    var output: String

    func validate() throws {
        let given = [prompt != nil, input != nil, source != nil || target != nil].filter { $0 }.count
        guard given == 1 else { throw ValidationError("give one input: --prompt, --input, or --source with --target.") }
        guard (source == nil) == (target == nil) else { throw ValidationError("--source and --target go together.") }
    }

    func run() throws {
        try requireOneProcess("ddp attention")
        let path = try checkpoint.resolve()
        let header = try Checkpoint.readHeader(path)
        guard let tokenizer = header.tokenizer else {
            throw PicturesInputError("\(path) holds no tokenizer, so text cannot be turned into tokens as in training")
        }
        let (model, _) = try Checkpoint.loadModel(path, maxBatch: 1)
        let kind = model.config.kind
        let (encoderTokens, decoderTokens) = try tokens(model: model, tokenizer: tokenizer, path: path)
        let batch = TokenBatch(batchSize: 1, sourceLength: encoderTokens.count, targetLength: decoderTokens.count, source: encoderTokens,
                               decoderInput: decoderTokens,
                               labels: [Int32](repeating: model.specialTokens.pad, count: kind == .encoderOnly ? encoderTokens.count : decoderTokens.count),
                               pad: model.specialTokens.pad)
        try checkSize(model.config, sourceLength: encoderTokens.count, targetLength: decoderTokens.count)
        let maps = model.attentionMaps(batch)
        let encoderLabels = encoderTokens.map { Self.label($0, tokenizer: tokenizer) }
        let decoderLabels = decoderTokens.map { Self.label($0, tokenizer: tokenizer) }
        try write(maps, encoderTokens: encoderTokens, decoderTokens: decoderTokens, encoderLabels: encoderLabels,
                  decoderLabels: decoderLabels, checkpoint: path, step: header.state.step,
                  inputs: checkpoint.protectedFiles(resolved: path))
    }

    /// The encoder's and the decoder's tokens for this model kind, checked against the model's lengths.
    private func tokens(model: TransformerModel, tokenizer: Tokenizer, path: String) throws -> (encoder: [Int32], decoder: [Int32]) {
        /// `key`: the config key the model's buffers were sized by.
        func check(_ tokens: [Int32], limit: Int, key: String, _ what: String) throws -> [Int32] {
            guard !tokens.isEmpty else { throw PicturesInputError("\(what) is empty: there is nothing to attend to") }
            guard tokens.count <= limit else {
                throw PicturesInputError("\(what) is \(tokens.count) tokens; the model (\(path)) takes at most \(limit) (its \(key))")
            }
            do { try tokenizer.refusePadding(in: tokens, what: "the text", of: what) } catch { throw PicturesInputError("\(error)") }
            guard tokens.count <= Self.maximumTokens else {
                throw PicturesInputError("\(what) is \(tokens.count) tokens; attention pictures show at most \(Self.maximumTokens) "
                                      + "tokens on a side (a heatmap of more cannot be read): give a shorter text")
            }
            return tokens
        }
        switch model.config.kind {
        case .decoderOnly:
            guard let prompt else { throw PicturesInputError("\(path) is a language model: give --prompt") }
            return ([], try check(tokenizer.encode(prompt), limit: model.maxTargetLength, key: "data.target_length", "--prompt"))
        case .encoderOnly:
            guard let input else { throw PicturesInputError("\(path) is an encoder-only model: give --input") }
            return (try check(tokenizer.encodeMarkingMasks(input), limit: model.maxSourceLength, key: "data.target_length", "--input"), [])
        case .encoderDecoder:
            guard let text = input ?? source else { throw PicturesInputError("\(path) is a translation model: give --source and --target, or --input") }
            let encoder = try check(tokenizer.encode(text) + [tokenizer.specialTokens.eos], limit: model.maxSourceLength, key: "data.source_length, with EOS",
                                    input == nil ? "--source" : "--input")
            guard let target else {
                // The model's greedy translation, as long as a picture and the model's buffers take (BOS first).
                let limit = min(model.maxTargetLength, Self.maximumTokens) - 1
                let translation = try model.decode(source: encoder, batchSize: 1, sourceLength: encoder.count, maxTokens: limit)[0]
                return (encoder, [tokenizer.specialTokens.bos] + translation)
            }
            return (encoder, try check([tokenizer.specialTokens.bos] + tokenizer.encode(target), limit: model.maxTargetLength, key: "data.target_length",
                                        "--target (with BOS)"))
        }
    }

    /// Heatmap cells drawn at most, over every layer and head: 4 million cells are about 700 MB of SVG.
    static let maximumCells = 4_000_000

    /// Refuses an input whose maps would not fit in memory or would make more than `maximumCells` cells, before any
    /// probability is computed.
    private func checkSize(_ config: ModelConfig, sourceLength s: Int, targetLength t: Int) throws {
        let encoder = config.kind.hasEncoder ? config.encoderLayers * s * s : 0
        let decoder = config.kind.hasDecoder ? config.decoderLayers * (t * t + (config.kind == .encoderDecoder ? t * s : 0)) : 0
        let cells = Double(config.heads) * Double(encoder + decoder)
        guard cells <= Double(Self.maximumCells) else {
            throw PicturesInputError("the maps of this input would have \(Int(cells)) cells (\(config.heads) heads in every layer), more than "
                                  + "the \(Self.maximumCells) drawn at most: give a shorter text")
        }
        if let shortfall = MemoryBudget.shortfall(cells * 4 * 2, for: "the attention probabilities of every layer and head") {
            throw PicturesInputError(shortfall + "; give a shorter text")
        }
    }

    /// A token's text for the axes: special tokens by name, the mask token as [MASK], other ids as their text
    /// (`Tokenizer.displayText`: bytes that are not UTF-8 as <0xNN>).
    static func label(_ id: Int32, tokenizer: Tokenizer) -> String {
        let special = tokenizer.specialTokens
        switch id {
        case special.pad: return "<pad>"
        case special.eos: return "<eos>"  // before BOS: GPT-2's one token for both ends documents
        case special.bos: return "<bos>"
        case special.unk: return "<unk>"
        case tokenizer.maskToken: return "[MASK]"
        default: return tokenizer.displayText(id)
        }
    }

    /// The file one head's heatmap is written to ("decoder_self_attention-layer0-head1.svg", say).
    static func pictureName(_ map: AttentionMap, head: Int) -> String { "\(map.kind.identifier)-layer\(map.layer)-head\(head).svg" }

    /// Whether `directory` holds the pictures of an earlier `ddp attention` (its attention.h5, format swiftddp-attention).
    static func holdsEarlierPictures(_ directory: String) -> Bool {
        let path = Paths.join(directory, "attention.h5")
        guard Paths.entryType(path) == .typeRegular, File.isHDF5(path), let file = try? File.open(path) else { return false }
        return (try? file.stringAttribute("format")) == "swiftddp-attention"
    }

    private func write(_ maps: [AttentionMap], encoderTokens: [Int32], decoderTokens: [Int32], encoderLabels: [String],
                       decoderLabels: [String], checkpoint: String, step: Int, inputs: [String]) throws {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: output, isDirectory: &isDirectory), !isDirectory.boolValue {
            throw PicturesInputError("--output \(output) is \(Paths.kindInWords(output)); give a directory to write the pictures into")
        }
        // Files are replaced only where an earlier `ddp attention` wrote its pictures (its attention.h5 there says so):
        // anything else under those names (a site's index.html, say) is someone else's.
        let names = maps.flatMap { map in (0..<map.heads).map { Self.pictureName(map, head: $0) } }
            + ["index.html", "attention.h5"]
        let taken = names.filter { FileManager.default.fileExists(atPath: Paths.join(output, $0)) }
        if !taken.isEmpty && !Self.holdsEarlierPictures(output) {
            throw PicturesInputError("--output \(output) holds \(taken.prefix(5).joined(separator: ", "))\(taken.count > 5 ? " and \(taken.count - 5) more" : ""), "
                                     + "which this command would replace, and no attention.h5 of an earlier ddp attention; nothing was "
                                     + "written: give another --output (a new or empty directory)")
        }
        do {
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        } catch {
            // Name the part of the path that is in the way, when one is not a directory.
            var parent = Paths.parent(output)
            while parent != "." && parent != "/" && !FileManager.default.fileExists(atPath: parent) {
                parent = Paths.parent(parent)
            }
            if FileManager.default.fileExists(atPath: parent, isDirectory: &isDirectory), !isDirectory.boolValue {
                throw PicturesInputError("--output \(output): cannot create the directory: \(parent) is \(Paths.kindInWords(parent))")
            }
            throw PicturesInputError("--output \(output): cannot create the directory: \(describe(error))")
        }
        RemoveOnSignal.install()
        var sections: [FigurePage.Section] = []
        let inputLines = (encoderTokens.isEmpty ? [] : ["encoder: " + encoderLabels.map { readableToken($0, limit: 40) }.joined(separator: " ")])
            + (decoderTokens.isEmpty ? [] : ["decoder: " + decoderLabels.map { readableToken($0, limit: 40) }.joined(separator: " ")])
        sections.append(FigurePage.Section(heading: "Input", notes: inputLines + ["checkpoint \(checkpoint), step \(step)"], figures: []))
        var files = 0
        for map in maps {
            let rows = map.kind == .encoderSelfAttention ? encoderLabels : decoderLabels
            let columns = map.kind == .decoderSelfAttention ? decoderLabels : encoderLabels
            var figures: [FigurePage.Figure] = []
            for head in 0..<map.heads {
                let start = head * map.queryTime * map.keyTime
                let title = "\(map.kind.rawValue), layer \(map.layer), head \(head)"
                let svg = Heatmap(title: title, rowLabels: rows, columnLabels: columns,
                                  values: Array(map.probabilities[start..<(start + map.queryTime * map.keyTime)])).svg()
                let name = Self.pictureName(map, head: head)
                try OutputFile.write(Paths.join(output, name), data: Data(svg.utf8), inputs: inputs)
                files += 1
                figures.append(FigurePage.Figure(caption: "layer \(map.layer), head \(head)", file: name))
            }
            sections.append(FigurePage.Section(heading: "\(map.kind.rawValue), layer \(map.layer) (\(map.module))", figures: figures))
        }
        let page = FigurePage(title: "Attention of \(checkpoint)", sections: sections).html()
        try OutputFile.write(Paths.join(output, "index.html"), data: Data(page.utf8), inputs: inputs)
        try OutputFile.write(Paths.join(output, "attention.h5"), inputs: inputs) { temporary in
            let file = try File.create(temporary)
            try file.setAttribute("format", "swiftddp-attention")
            try file.setAttribute("version", 1)
            try file.setAttribute("checkpoint", checkpoint)
            try file.setAttribute("step", step)
            for (name, tokens, labels) in [("encoder_tokens", encoderTokens, encoderLabels), ("decoder_tokens", decoderTokens, decoderLabels)]
            where !tokens.isEmpty {
                try file.createDataset(name, type: .int32, shape: [tokens.count]).write(tokens)
                let texts = String(decoding: try JSONEncoder().encode(labels), as: UTF8.self)
                try file.setAttribute("\(name)_texts", texts)
            }
            for kind in AttentionMap.Kind.allCases {
                let layers = maps.filter { $0.kind == kind }
                guard let first = layers.first else { continue }
                let dataset = try file.createDataset(kind.identifier, type: .float32,
                                                     shape: [layers.count, first.heads, first.queryTime, first.keyTime])
                for (index, layer) in layers.enumerated() {
                    try dataset.write(layer.probabilities, offset: [index, 0, 0, 0], count: [1, first.heads, first.queryTime, first.keyTime])
                }
            }
            try file.close()
        }
        print("wrote \(output): \(files) heatmaps (\(maps.count) attention layers), index.html, attention.h5")
    }
}

/// An input `ddp attention` or `ddp plot` cannot draw, found while running (exit status 1, no usage text).
struct PicturesInputError: Error, CustomStringConvertible {
    let message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}
