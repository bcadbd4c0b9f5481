import Basics
import Data
import Files
import Foundation
import Kernels
import Transformer

/// Hugging Face `transformers`' GPT-2 (`GPT2LMHeadModel`) in and out: a model directory (`config.json`,
/// `model.safetensors`, `tokenizer.json`) becomes a SwiftDDP decoder-only model and back.
///
/// GPT-2 is SwiftDDP's decoder-only form with pre-norm, learned positions, unscaled and tied embeddings, and
/// `gelu_tanh` ("gelu_new"). Its linear layers are `Conv1D`s, whose weights are `[in, out]` (torch's transpose), and
/// its attention projects q, k and v with one fused `c_attn` of `[C, 3C]`:
///
/// | transformers                          | SwiftDDP                                            |
/// |---------------------------------------|-----------------------------------------------------|
/// | `wte.weight` [V, C]                   | `embed.weight` (and the tied output projection)     |
/// | `wpe.weight` [P, C]                   | `pos_embed.weight` (`max_length` P)                 |
/// | `h.i.ln_1`, `h.i.ln_2`                | `decoder.layers.i.norm1`, `.norm2`                  |
/// | `h.i.attn.c_attn` [C, 3C], [3C]        | `.self_attn.{q,k,v}_proj`, columns 0-C, C-2C, 2C-3C, transposed |
/// | `h.i.attn.c_proj` [C, C]              | `.self_attn.o_proj`, transposed                     |
/// | `h.i.mlp.c_fc` [C, F], `c_proj` [F, C] | `.ffn.fc1`, `.ffn.fc2`, transposed                  |
/// | `ln_f`                                | `decoder.norm`                                      |
/// | `lm_head.weight` (when untied)        | `lm_head.weight`                                    |
///
/// Names may carry the `transformer.` prefix `save_pretrained` writes, or not (the original GPT-2 files).
public enum HuggingFaceGPT2 {
    /// A model directory or checkpoint that cannot be converted: the file (or directory) and why.
    public struct ConversionError: Error, CustomStringConvertible, Sendable {
        /// The file at fault.
        public let file: String
        /// What is wrong or unsupported.
        public let message: String
        /// "FILE: MESSAGE".
        public var description: String { "\(file): \(message)" }
    }

    /// A GPT-2 read from a directory: the model's config, its parameters under SwiftDDP's names, and the tokenizer.
    public struct Imported {
        /// What reading decided that the user should know (an unusable pad id), as sentences.
        public let notes: [String]
        /// The decoder-only config GPT-2's `config.json` describes.
        public let config: ModelConfig
        /// Every SwiftDDP parameter, by name, in SwiftDDP's shape.
        public let parameters: [String: [Float]]
        /// The `tokenizer.json` (byte-level BPE), with the special tokens `config.json` names.
        public let tokenizer: Tokenizer
    }

    /// `activation_function` values and the SwiftDDP activation each is.
    static let activations: [String: ModelConfig.Activation] = ["gelu_new": .geluTanh, "gelu_pytorch_tanh": .geluTanh, "gelu": .gelu, "relu": .relu]

    /// Largest `config.json` read.
    public static let largestConfig = 1 << 20

    /// Reads `directory`'s `config.json`, `model.safetensors` and `tokenizer.json`. Throws `ConversionError` naming
    /// the file and key for another architecture (`model_type` other than gpt2, cross-attention, scaled attention
    /// variants, another LayerNorm epsilon or activation), missing, misshapen or non-finite tensors, or tensors
    /// SwiftDDP has no place for. (`reorder_and_upcast_attn` only changes float16 rounding: accepted.)
    public static func read(directory: String) throws -> Imported {
        let configPath = Paths.join(directory, "config.json")
        func fail(_ file: String, _ message: String) -> ConversionError { ConversionError(file: file, message: message) }
        let json = try readConfig(configPath)
        guard let type = json["model_type"] as? String, type == "gpt2" else {
            throw fail(configPath, "model_type \(json["model_type"].map { "\($0)" } ?? "(missing)") is not supported: only gpt2 (GPT2LMHeadModel) is")
        }
        /// The key's value as `T`, `fallback` when absent or null (nil: required), or an error naming the key.
        func value<T>(_ key: String, _ fallback: T?, _ kind: String) throws -> T {
            guard let raw = json[key], !(raw is NSNull) else {
                if let fallback { return fallback }
                throw fail(configPath, "key '\(key)' is missing")
            }
            // JSON's true and false read as numbers and numbers as booleans through NSNumber: tell them apart first.
            if isBoolean(raw) == (T.self == Bool.self) {
                if let typed = raw as? T { return typed }
                if T.self == Double.self, let whole = raw as? Int { return Double(whole) as! T }
            }
            throw fail(configPath, "key '\(key)' is \(describe(json: raw)), not \(kind)")
        }
        func integer(_ key: String, _ fallback: Int? = nil) throws -> Int { try value(key, fallback, "an integer") }
        func flag(_ key: String, _ fallback: Bool) throws -> Bool { try value(key, fallback, "true or false") }
        if try flag("add_cross_attention", false) { throw fail(configPath, "add_cross_attention true (cross-attention) is not supported") }
        if try !flag("scale_attn_weights", true) { throw fail(configPath, "scale_attn_weights false (unscaled attention) is not supported") }
        if try flag("scale_attn_by_inverse_layer_idx", false) {
            throw fail(configPath, "scale_attn_by_inverse_layer_idx true (attention scaled by layer) is not supported")
        }
        let epsilon: Double = try value("layer_norm_epsilon", 1e-5, "a number")
        guard abs(epsilon - Double(layerNormEpsilon)) <= 1e-12 else {
            throw fail(configPath, "layer_norm_epsilon \(epsilon) is not supported: SwiftDDP's LayerNorm uses \(layerNormEpsilon)")
        }
        let activationName: String = try value("activation_function", "gelu_new", "a string")
        guard let activation = activations[activationName] else {
            throw fail(configPath, "activation_function \(activationName) is not supported (\(activations.keys.sorted().joined(separator: ", ")) are)")
        }
        let c = try integer("n_embd"), vocabulary = try integer("vocab_size")
        let positions = json["n_positions"] != nil ? try integer("n_positions") : try integer("n_ctx", 1024)
        let tied = try flag("tie_word_embeddings", true)
        // n_inner null means 4 x n_embd, computed only for an n_embd the model can have (no overflow).
        let inner = try integer("n_inner", (1...ModelConfig.limits.dModel).contains(c) ? 4 * c : 0)
        let config = ModelConfig(kind: .decoderOnly, vocabSize: vocabulary, dModel: c, heads: try integer("n_head"), encoderLayers: 0,
                                 decoderLayers: try integer("n_layer"), dFF: inner, activation: activation, norm: .pre,
                                 positions: .learned, maxLength: positions,
                                 dropout: 0, tiedEmbeddings: tied, scaleEmbedding: false)
        do { try config.validate() } catch {
            throw fail(configPath, "does not describe a model SwiftDDP builds: \(error)")
        }

        // The tokenizer, with the special tokens config.json names (when they are inside the vocabulary).
        let tokenizerPath = Paths.join(directory, "tokenizer.json")
        guard FileManager.default.fileExists(atPath: tokenizerPath) else {
            throw fail(tokenizerPath, "missing: the model's tokenizer is needed to train and evaluate on text")
        }
        var (tokenizer, notes) = try readTokenizer(tokenizerPath, modelConfig: json, configPath: configPath)
        // Dropout is a training setting, not the network: the checkpoint has none, which a fine-tune's config gives.
        let dropouts = ["resid_pdrop", "embd_pdrop", "attn_pdrop"].compactMap { key in (json[key] as? Double).flatMap { $0 > 0 ? "\(key) \($0)" : nil } }
        if !dropouts.isEmpty {
            notes.append("\(configPath): \(dropouts.joined(separator: ", ")) is not imported: the checkpoint has model.dropout 0, so a fine-tune "
                         + "with --init trains without dropout unless its config gives model.dropout (Hugging Face's Trainer would use "
                         + "these; SwiftDDP's one rate applies to embeddings and residual branches, not to attention weights)")
        }
        guard tokenizer.vocabularySize <= vocabulary else {
            throw fail(tokenizerPath, "has \(tokenizer.vocabularySize) token ids, more than the model's vocab_size \(vocabulary)")
        }

        // Memory for the converted tensors, the model's parameters and gradients and AdamW's two moments, before any is read.
        let parameterCount = TransformerModel.parameterLayout(for: config).count
        // Measured: an import peaks at about 9 copies of the parameters (the mapped file, tensors read and converted, the
        // model's parameters and gradients, AdamW's moments, the checkpoint being written).
        if let shortfall = MemoryBudget.shortfall(Double(parameterCount) * 4 * 9, for: "importing a model of \(parameterCount) parameters") {
            throw fail(configPath, shortfall)
        }

        // The tensors.
        let weightsPath = Paths.join(directory, "model.safetensors")
        if !FileManager.default.fileExists(atPath: weightsPath) && FileManager.default.fileExists(atPath: weightsPath + ".index.json") {
            throw fail(weightsPath + ".index.json", "a checkpoint sharded over several files is not supported: save it as one model.safetensors "
                                                    + "(save_pretrained(..., max_shard_size=\"100GB\"))")
        }
        let file: Safetensors.File
        do { file = try Safetensors.File(weightsPath) } catch { throw fail(weightsPath, "\(error)".replacingOccurrences(of: weightsPath + ": ", with: "")) }
        let prefix = file.entries["transformer.wte.weight"] != nil ? "transformer." : ""
        var used = Set<String>()
        func tensor(_ name: String, _ shape: [Int]) throws -> [Float] {
            let full = (name == "lm_head.weight" ? "" : prefix) + name
            guard let entry = file.entries[full] else { throw fail(weightsPath, "has no tensor '\(full)'") }
            guard entry.shape == shape else { throw fail(weightsPath, "tensor '\(full)' has shape \(entry.shape), expected \(shape) from config.json") }
            used.insert(full)
            return file.tensor(full)!.values
        }
        var parameters: [String: [Float]] = [:]
        for entry in correspondences(config) {
            for (name, values) in zip(entry.ours, split(try tensor(entry.name, entry.shape), entry)) { parameters[name] = values }
        }
        // The causal-mask buffers older files hold, and a tied head written out anyway, carry nothing of their own.
        let ignorable = file.entries.keys.filter { $0.hasSuffix(".attn.bias") || $0.hasSuffix(".attn.masked_bias") || ($0 == "lm_head.weight" && tied) }
        let unknown = Set(file.entries.keys).subtracting(used).subtracting(ignorable).sorted()
        guard unknown.isEmpty else {
            throw fail(weightsPath, "holds tensors a GPT2LMHeadModel of this config.json has no place for: "
                                    + unknown.prefix(5).joined(separator: ", ") + (unknown.count > 5 ? " and \(unknown.count - 5) more" : ""))
        }
        let nonFinite = parameters.filter { $0.value.contains { !$0.isFinite } }.keys.sorted()
        guard nonFinite.isEmpty else {
            throw fail(weightsPath, "holds values that are not finite (NaN or infinity) in the tensors that become " + nonFinite.joined(separator: ", "))
        }
        return Imported(notes: notes, config: config, parameters: parameters, tokenizer: tokenizer)
    }

    /// Whether a value `JSONSerialization` read is `true` or `false` (an NSNumber of type "c"), not a number.
    static func isBoolean(_ value: Any) -> Bool {
        (value as? NSNumber).map { String(cString: $0.objCType) == "c" } ?? false
    }

    /// A JSON value as a config.json error shows it: strings quoted and called strings, booleans as true and false.
    static func describe(json value: Any) -> String {
        if let string = value as? String { return "\"\(string)\" (a string)" }
        if isBoolean(value) { return (value as? Bool) == true ? "true" : "false" }
        return "\(value)"
    }

    /// A model directory's `config.json` as a JSON object: a regular file of at most `largestConfig` bytes.
    static func readConfig(_ path: String) throws -> [String: Any] {
        let text: String
        do { text = try TextFile.read(path, largest: largestConfig) } catch {
            throw ConversionError(file: path, message: "\(error.message): a Hugging Face model directory has a config.json")
        }
        guard let json = try? JSONSerialization.jsonObject(with: Foundation.Data(text.utf8)) as? [String: Any] else {
            throw ConversionError(file: path, message: "is not a JSON object")
        }
        return json
    }

    /// The `tokenizer.json` at `file` with the special tokens a model's `config.json` (`modelConfig`, read from
    /// `configPath`) names: `eos_token_id`, `bos_token_id` and `pad_token_id` (integers of the vocabulary, or null),
    /// else those the tokenizer's added tokens imply (`HuggingFaceTokenizer.init`); with what the user should know of
    /// them. Throws `ConversionError` naming the file or key.
    public static func readTokenizer(_ file: String, modelConfig: [String: Any]?, configPath: String?) throws -> (Tokenizer, notes: [String]) {
        let text: String
        do { text = try TextFile.read(file, largest: HuggingFaceTokenizer.largestFile) } catch {
            throw ConversionError(file: file, message: error.message)
        }
        var ids: [String: Int32] = [:]
        for key in ["eos_token_id", "bos_token_id", "pad_token_id"] {
            guard let value = modelConfig?[key], !(value is NSNull) else { continue }
            guard !isBoolean(value), !(value is String), let id = value as? Int, let small = Int32(exactly: id), small >= 0 else {
                throw ConversionError(file: configPath ?? file, message: "key '\(key)' is \(describe(json: value)), not a token id (a non-negative integer; "
                                                                    + "lists of ids are not supported)")
            }
            ids[key] = small
        }
        do {
            let tokenizer = try HuggingFaceTokenizer(text: text, eos: ids["eos_token_id"], bos: ids["bos_token_id"], pad: ids["pad_token_id"])
            return (.huggingFace(tokenizer), tokenizer.notes.map { "\(configPath ?? file): \($0)" })
        } catch {
            throw ConversionError(file: file, message: "\(error)" + (ids.isEmpty ? "" : " (with the special token ids of \(configPath ?? "config.json"))"))
        }
    }

    /// Reads a tokenizer from `path`: a `tokenizer.json`, or a model directory holding one (and a `config.json` whose
    /// special token ids are used). Throws `ConversionError` naming the file.
    public static func readTokenizer(at path: String) throws -> (Tokenizer, notes: [String]) {
        var isDirectory: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
        guard isDirectory.boolValue else { return try readTokenizer(path, modelConfig: nil, configPath: nil) }
        let configPath = Paths.join(path, "config.json")
        let config = FileManager.default.fileExists(atPath: configPath) ? try readConfig(configPath) : nil
        return try readTokenizer(Paths.join(path, "tokenizer.json"), modelConfig: config, configPath: config == nil ? nil : configPath)
    }

    /// One GPT-2 tensor and the SwiftDDP parameters it holds.
    struct Correspondence {
        /// GPT-2's name, without the `transformer.` prefix `save_pretrained` writes (`lm_head.weight` never has it).
        let name: String
        /// GPT-2's shape: [rows, columns], or [columns] for a vector.
        let shape: [Int]
        /// The SwiftDDP parameters side by side along GPT-2's columns, in order: one, or q, k and v for `c_attn`.
        let ours: [String]
        /// Whether GPT-2 stores each block transposed (Conv1D weights are [in, out], torch's are [out, in]).
        let transposed: Bool
    }

    /// Every tensor of a GPT2LMHeadModel with `config`'s shape and where it goes: the table of the type's comment.
    static func correspondences(_ config: ModelConfig) -> [Correspondence] {
        let c = config.dModel, f = config.dFF
        var table = [Correspondence(name: "wte.weight", shape: [config.vocabSize, c], ours: ["embed.weight"], transposed: false),
                     Correspondence(name: "wpe.weight", shape: [config.maxLength, c], ours: ["pos_embed.weight"], transposed: false)]
        for i in 0..<config.decoderLayers {
            func add(_ name: String, _ shape: [Int], _ ours: [String], transposed: Bool = false) {
                table.append(Correspondence(name: "h.\(i).\(name)", shape: shape, ours: ours.map { "decoder.layers.\(i).\($0)" }, transposed: transposed))
            }
            for (norm, ours) in [("ln_1", "norm1"), ("ln_2", "norm2")] {
                add("\(norm).weight", [c], ["\(ours).weight"])
                add("\(norm).bias", [c], ["\(ours).bias"])
            }
            let projections = ["q_proj", "k_proj", "v_proj"].map { "self_attn.\($0)" }
            add("attn.c_attn.weight", [c, 3 * c], projections.map { "\($0).weight" }, transposed: true)
            add("attn.c_attn.bias", [3 * c], projections.map { "\($0).bias" })
            add("attn.c_proj.weight", [c, c], ["self_attn.o_proj.weight"], transposed: true)
            add("attn.c_proj.bias", [c], ["self_attn.o_proj.bias"])
            add("mlp.c_fc.weight", [c, f], ["ffn.fc1.weight"], transposed: true)
            add("mlp.c_fc.bias", [f], ["ffn.fc1.bias"])
            add("mlp.c_proj.weight", [f, c], ["ffn.fc2.weight"], transposed: true)
            add("mlp.c_proj.bias", [c], ["ffn.fc2.bias"])
        }
        table.append(Correspondence(name: "ln_f.weight", shape: [c], ours: ["decoder.norm.weight"], transposed: false))
        table.append(Correspondence(name: "ln_f.bias", shape: [c], ours: ["decoder.norm.bias"], transposed: false))
        if !config.tiedEmbeddings {
            table.append(Correspondence(name: "lm_head.weight", shape: [config.vocabSize, c], ours: ["lm_head.weight"], transposed: false))
        }
        return table
    }

    /// GPT-2's tensor `values` cut into `entry.ours`' blocks of columns, each as SwiftDDP stores it.
    static func split(_ values: [Float], _ entry: Correspondence) -> [[Float]] {
        if entry.ours.count == 1 && !entry.transposed { return [values] }
        let rows = entry.shape.count == 2 ? entry.shape[0] : 1, columns = entry.shape.last!, width = columns / entry.ours.count
        return (0..<entry.ours.count).map { block in
            var part = [Float](repeating: 0, count: rows * width)
            for row in 0..<rows {
                for k in 0..<width {
                    let value = values[row * columns + block * width + k]
                    if entry.transposed { part[k * rows + row] = value } else { part[row * width + k] = value }
                }
            }
            return part
        }
    }

    /// `split`'s inverse: SwiftDDP's `parts` side by side as GPT-2's tensor of `entry.shape`.
    static func joined(_ parts: [[Float]], _ entry: Correspondence) -> [Float] {
        if parts.count == 1 && !entry.transposed { return parts[0] }
        let rows = entry.shape.count == 2 ? entry.shape[0] : 1, columns = entry.shape.last!, width = columns / parts.count
        var values = [Float](repeating: 0, count: rows * columns)
        for (block, part) in parts.enumerated() {
            for row in 0..<rows {
                for k in 0..<width {
                    values[row * columns + block * width + k] = entry.transposed ? part[k * rows + row] : part[row * width + k]
                }
            }
        }
        return values
    }

    // MARK: Export

    /// Why `config` has no GPT-2 form, or nil when it has one.
    public static func unsupportedReason(_ config: ModelConfig) -> String? {
        var reasons: [String] = []
        if config.kind != .decoderOnly { reasons.append("model.kind is \(config.kind.rawValue)") }
        if config.norm != .pre { reasons.append("model.norm is \(config.norm.rawValue)") }
        if config.positions != .learned { reasons.append("model.positions is \(config.positions.rawValue)") }
        if config.scaleEmbedding { reasons.append("model.scale_embedding is true") }
        guard !reasons.isEmpty else { return nil }
        return "a GPT2LMHeadModel is a decoder-only model with pre-norm, learned positions and unscaled embeddings; this one's "
            + reasons.joined(separator: ", ")
    }

    /// The `config.json` of `config` as a GPT2LMHeadModel, with `special`'s ids.
    public static func configJSON(_ config: ModelConfig, special: SpecialTokens) throws -> Foundation.Data {
        let activation = activations.first { $0.value == config.activation && $0.key != "gelu_pytorch_tanh" }!.key
        var object: [String: Any] = [
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocabSize, "n_positions": config.maxLength,
            "n_embd": config.dModel, "n_layer": config.decoderLayers, "n_head": config.heads, "n_inner": config.dFF,
            "activation_function": activation, "layer_norm_epsilon": 1e-5, "resid_pdrop": Double(config.dropout),
            "embd_pdrop": Double(config.dropout), "attn_pdrop": 0.0, "scale_attn_weights": true, "tie_word_embeddings": config.tiedEmbeddings,
            "bos_token_id": special.bos, "eos_token_id": special.eos, "torch_dtype": "float32",
        ]
        if special.pad != SpecialTokens.none { object["pad_token_id"] = special.pad }
        return try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
    }

    /// `model`'s parameters under GPT2LMHeadModel's names (`transformer.` prefix, Conv1D `[in, out]` weights, q/k/v
    /// fused into `c_attn`); `lm_head.weight` only when untied (transformers ties it on loading).
    public static func tensors(of model: TransformerModel) -> [Safetensors.Tensor] {
        correspondences(model.config).map { entry in
            Safetensors.Tensor(name: (entry.name == "lm_head.weight" ? "" : "transformer.") + entry.name, shape: entry.shape,
                               values: joined(entry.ours.map { Array(model.parameters[$0]) }, entry))
        }
    }
}
