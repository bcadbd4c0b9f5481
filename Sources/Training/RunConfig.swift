import Data
import Files
import Foundation
import Transformer
import Yams

/// A run's configuration file (YAML). Strict: an unknown key, a wrong type or an impossible value is an error
/// that names the key. Sections: `model` (ModelConfig keys), `data`, `training`, `optimizer`.
public struct RunConfig: Codable, Equatable, Sendable {
    /// The `data` section: where the dataset is and how long its sequences may be. Required, with `data.target_length`.
    public struct DataSection: Codable, Equatable, Sendable {
        /// The dataset directory (train-*.h5, valid-*.h5), relative to the working directory.
        public var directory: String = ""
        /// Longest encoder input (encoder-decoder) in tokens, EOS included; 0 for decoder-only models.
        public var sourceLength: Int = 0
        /// Longest decoder input: the target length plus BOS, or the LM context.
        public var targetLength: Int

        enum CodingKeys: String, CodingKey { case directory, sourceLength = "source_length", targetLength = "target_length" }

        /// Reads the section: `target_length` is required; `directory` defaults to "" and `source_length` to 0.
        public init(from decoder: Decoder) throws {
            let values = try decoder.container(keyedBy: CodingKeys.self)
            directory = try values.decodeIfPresent(String.self, forKey: .directory) ?? ""
            sourceLength = try values.decodeIfPresent(Int.self, forKey: .sourceLength) ?? 0
            targetLength = try values.decode(Int.self, forKey: .targetLength)
        }
    }

    /// The `training` section: batch, length of the run, seeds, gradient clipping and communication. Required, with
    /// `training.batch_size` or `training.max_tokens`.
    public struct TrainingSection: Codable, Equatable, Sendable {
        /// Sequences per rank per micro-step; with `maxTokens`, only the evaluation's sequences per rank per batch
        /// (default: max_tokens / the longer of data.source_length and data.target_length).
        public var batchSize: Int
        /// Token-budget batches ("Attention Is All You Need", 5.1; fairseq's `--max-tokens`): each global batch holds
        /// samples of similar length, at most this many positions on its longer side, padding included
        /// (`TokenBudgetSampler`); nil: `batchSize` sequences per rank.
        public var maxTokens: Int?
        /// With `maxTokens`: how many length groups, each within max_tokens / length_groups, one global batch joins
        /// (`training.length_groups`, default 1: the paper's batches of one length). More mix short and long samples in
        /// every update, as fixed-count batches do, while each rank's micro-batch keeps samples of similar length;
        /// ranks x grad_accum must be at least this.
        public var lengthGroups = 1
        /// Label smoothing ε of the cross-entropy loss, as in torch.nn.functional.cross_entropy's `label_smoothing`
        /// (`training.label_smoothing`, default 0, in [0, 1)).
        public var labelSmoothing: Float = 0
        /// Seeds parameter initialisation, dropout and the sampler's epoch permutations (`training.seed`, default 0).
        public var seed: UInt64 = 0
        /// Updates to take.
        public var steps = 1000
        /// Micro-steps per update (only the last one communicates).
        public var accumulationSteps = 1
        /// Global-norm clipping; 0 turns it off.
        public var clipNorm: Float = 1
        /// Gradient all-reduce bucket size in MiB.
        public var bucketMb: Double = 4
        /// How gradients cross the network: `none` (float32) or `bf16` (half the bytes).
        public var gradCompression: GradientCompression = .none
        /// Compute threads per rank; 0: this node's cores / ranks on this node.
        public var threads = 0
        /// Progress line every this many updates.
        public var logEvery = 10
        /// Seconds a collective may take before the job is ended (0: no limit).
        public var collectiveTimeout: Double = 300
        /// Also write the metrics as TensorBoard event files in the run directory (`training.tensorboard`, default false).
        public var tensorboard = false

        enum CodingKeys: String, CodingKey {
            case seed, steps
            case batchSize = "batch_size", labelSmoothing = "label_smoothing", accumulationSteps = "grad_accum", clipNorm = "clip_norm"
            case bucketMb = "bucket_mb", threads, logEvery = "log_every", collectiveTimeout = "collective_timeout"
            case gradCompression = "grad_compression", maxTokens = "max_tokens", tensorboard
            case lengthGroups = "length_groups"
        }

        /// `batchSize` until `RunConfig` derives it from `max_tokens` and the data lengths (a given `batch_size` is
        /// never this).
        static let derivedBatchSize = Int.min

        /// Reads the section: `batch_size` or `max_tokens` is required (without `batch_size`, it is `derivedBatchSize`
        /// until `RunConfig` derives it from the data lengths); every other key takes the default shown on its property.
        public init(from decoder: Decoder) throws {
            let values = try decoder.container(keyedBy: CodingKeys.self)
            maxTokens = try values.decodeIfPresent(Int.self, forKey: .maxTokens)
            batchSize = maxTokens == nil ? try values.decode(Int.self, forKey: .batchSize)
                                         : try values.decodeIfPresent(Int.self, forKey: .batchSize) ?? Self.derivedBatchSize
            lengthGroups = try values.decodeIfPresent(Int.self, forKey: .lengthGroups) ?? 1
            labelSmoothing = try values.decodeIfPresent(Float.self, forKey: .labelSmoothing) ?? 0
            seed = try values.decodeIfPresent(UInt64.self, forKey: .seed) ?? 0
            steps = try values.decodeIfPresent(Int.self, forKey: .steps) ?? 1000
            accumulationSteps = try values.decodeIfPresent(Int.self, forKey: .accumulationSteps) ?? 1
            clipNorm = try values.decodeIfPresent(Float.self, forKey: .clipNorm) ?? 1
            bucketMb = try values.decodeIfPresent(Double.self, forKey: .bucketMb) ?? 4
            gradCompression = try values.decodeIfPresent(GradientCompression.self, forKey: .gradCompression) ?? .none
            threads = try values.decodeIfPresent(Int.self, forKey: .threads) ?? 0
            logEvery = try values.decodeIfPresent(Int.self, forKey: .logEvery) ?? 10
            collectiveTimeout = try values.decodeIfPresent(Double.self, forKey: .collectiveTimeout) ?? 300
            tensorboard = try values.decodeIfPresent(Bool.self, forKey: .tensorboard) ?? false
        }
    }

    /// The `eval` section: when and how much of the valid split to evaluate. Optional; all keys default.
    public struct EvalSection: Codable, Equatable, Sendable {
        /// Evaluate on the valid split every this many updates (and at the end); 0: only at the end.
        public var every = 0
        /// At most this many validation batches per rank (0: the whole split).
        public var maxBatches = 0
        /// seq2seq: greedy-decode this many validation examples for exact match and BLEU (0: off).
        public var decodeSamples = 200
        /// seq2seq: how BLEU cuts text into words, as sacrebleu's `tokenize` option: `13a` (its default), `none`,
        /// `char` or `intl`.
        public var bleuTokenize = BLEUTokenization.mteval13a

        enum CodingKeys: String, CodingKey {
            case every, maxBatches = "max_batches", decodeSamples = "decode_samples", bleuTokenize = "bleu_tokenize"
        }
        /// The defaults: evaluate only at the end, on the whole split, greedy-decoding 200 examples, BLEU with 13a words.
        public init() {}
        /// Reads the section; a missing key takes its default (`every` 0, `max_batches` 0, `decode_samples` 200,
        /// `bleu_tokenize` 13a).
        public init(from decoder: Decoder) throws {
            let values = try decoder.container(keyedBy: CodingKeys.self)
            every = try values.decodeIfPresent(Int.self, forKey: .every) ?? 0
            maxBatches = try values.decodeIfPresent(Int.self, forKey: .maxBatches) ?? 0
            decodeSamples = try values.decodeIfPresent(Int.self, forKey: .decodeSamples) ?? 200
            bleuTokenize = try values.decodeIfPresent(BLEUTokenization.self, forKey: .bleuTokenize) ?? .mteval13a
        }
    }

    /// The `mlm` section: the masked-language-model recipe of encoder-only models (`MaskedLanguageModeling`).
    /// Optional; all keys default to BERT's.
    public struct MLMSection: Codable, Equatable, Sendable {
        /// Share of each window's real tokens chosen for the loss (BERT 0.15).
        public var probability = 0.15
        /// Of the chosen tokens, the share replaced by the mask token (BERT 0.8).
        public var maskReplaceProb = 0.8
        /// Of the chosen tokens, the share replaced by a random token (BERT 0.1); the rest stay.
        public var randomReplaceProb = 0.1
        /// Seeds the evaluation's masks (fixed, so numbers compare across runs and rank counts).
        public var evalSeed: UInt64 = 0

        enum CodingKeys: String, CodingKey {
            case probability, maskReplaceProb = "mask_replace_prob", randomReplaceProb = "random_replace_prob", evalSeed = "eval_seed"
        }
        /// BERT's recipe.
        public init() {}
        /// Reads the section; a missing key takes BERT's value (`eval_seed` 0).
        public init(from decoder: Decoder) throws {
            let values = try decoder.container(keyedBy: CodingKeys.self)
            probability = try values.decodeIfPresent(Double.self, forKey: .probability) ?? 0.15
            maskReplaceProb = try values.decodeIfPresent(Double.self, forKey: .maskReplaceProb) ?? 0.8
            randomReplaceProb = try values.decodeIfPresent(Double.self, forKey: .randomReplaceProb) ?? 0.1
            evalSeed = try values.decodeIfPresent(UInt64.self, forKey: .evalSeed) ?? 0
        }

        /// The recipe for data of `tokenizer`.
        public func recipe(for tokenizer: Tokenizer) -> MaskedLanguageModeling {
            MaskedLanguageModeling(probability: probability, maskReplace: maskReplaceProb, randomReplace: randomReplaceProb, tokenizer: tokenizer)
        }
    }

    /// The `checkpoint` section: how often to write checkpoints and how many to keep. Optional; all keys default.
    public struct CheckpointSection: Codable, Equatable, Sendable {
        /// Checkpoint every this many updates (and at the end); 0: only at the end.
        public var every = 0
        /// Checkpoints kept in the run directory.
        public var keep = 3

        /// The defaults: a checkpoint only at the end, the last 3 kept.
        public init() {}
        /// Reads the section; a missing key takes its default (`every` 0, `keep` 3).
        public init(from decoder: Decoder) throws {
            let values = try decoder.container(keyedBy: CodingKeys.self)
            every = try values.decodeIfPresent(Int.self, forKey: .every) ?? 0
            keep = try values.decodeIfPresent(Int.self, forKey: .keep) ?? 3
        }
    }

    /// The `optimizer` section: AdamW's hyperparameters (torch.optim.AdamW), all optional.
    public struct OptimizerSection: Codable, Equatable, Sendable {
        /// The learning rate (`optimizer.lr`, default 1e-4; torch's is 1e-3): the constant rate, or cosine's peak; a
        /// config with the noam schedule, which sets its own rate, may not give it. Must be positive.
        public var lr: Float = 1e-4
        /// AdamW's decay rate of the first-moment estimate (`optimizer.beta1`, default 0.9, in [0, 1)).
        public var beta1: Float = 0.9
        /// AdamW's decay rate of the second-moment estimate (`optimizer.beta2`, default 0.999, in [0, 1)).
        public var beta2: Float = 0.999
        /// AdamW's ε, added to the bias-corrected √v̂ in the denominator (`optimizer.eps`, default 1e-8).
        public var eps: Float = 1e-8
        /// Decoupled weight decay λ as in torch.optim.AdamW: each update first multiplies every parameter by 1 − lr·λ
        /// (`optimizer.weight_decay`, default 0.01).
        public var weightDecay: Float = 0.01

        enum CodingKeys: String, CodingKey { case lr, beta1, beta2, eps, weightDecay = "weight_decay" }

        /// Reads the section; a missing key takes torch.optim.AdamW's default (lr 1e-4 here).
        public init(from decoder: Decoder) throws {
            let values = try decoder.container(keyedBy: CodingKeys.self)
            lr = try values.decodeIfPresent(Float.self, forKey: .lr) ?? 1e-4
            beta1 = try values.decodeIfPresent(Float.self, forKey: .beta1) ?? 0.9
            beta2 = try values.decodeIfPresent(Float.self, forKey: .beta2) ?? 0.999
            eps = try values.decodeIfPresent(Float.self, forKey: .eps) ?? 1e-8
            weightDecay = try values.decodeIfPresent(Float.self, forKey: .weightDecay) ?? 0.01
        }

        /// The section as the optimizer's settings (betas, epsilon, weight decay; the learning rate comes from the
        /// schedule).
        public var settings: AdamWSettings { AdamWSettings(beta1: beta1, beta2: beta2, epsilon: eps, weightDecay: weightDecay) }

        /// torch.optim.AdamW's defaults, with lr 1e-4.
        public init() {}
    }

    /// Learning-rate schedule; `optimizer.lr` is the peak (cosine) or the rate (constant).
    public struct ScheduleSection: Codable, Equatable, Sendable {
        /// The schedule (`schedule.kind`, default constant): `constant` keeps `optimizer.lr` (after the warm-up); `noam` is Attention Is
        /// All You Need's warm-up and inverse-square-root decay; `cosine` warms up linearly to `optimizer.lr`, then
        /// follows half a cosine down to `schedule.min_lr`.
        public enum Kind: String, Codable, Sendable, CaseIterable { case constant, noam, cosine }
        /// Which schedule (`schedule.kind`, default constant).
        public var kind: Kind = .constant
        /// Updates of linear warm-up (`schedule.warmup_steps`, default 0; noam needs at least 1).
        public var warmupSteps = 0
        /// noam's multiplier (1 in the paper).
        public var factor: Float = 1
        /// cosine's floor.
        public var minLr: Float = 0
        /// cosine's length in updates (default: training.steps).
        public var totalSteps: Int?

        enum CodingKeys: String, CodingKey {
            case kind, factor, warmupSteps = "warmup_steps", minLr = "min_lr", totalSteps = "total_steps"
        }

        /// The default: a constant rate of `optimizer.lr`.
        public init() {}

        /// Writes the keys the schedule's kind uses (`RunConfig.checkKeysApply` refuses the others): kind and
        /// warmup_steps, noam's factor, cosine's min_lr and total_steps (when set).
        public func encode(to encoder: Encoder) throws {
            var values = encoder.container(keyedBy: CodingKeys.self)
            try values.encode(kind, forKey: .kind)
            try values.encode(warmupSteps, forKey: .warmupSteps)
            if kind == .noam { try values.encode(factor, forKey: .factor) }
            if kind == .cosine {
                try values.encode(minLr, forKey: .minLr)
                try values.encodeIfPresent(totalSteps, forKey: .totalSteps)
            }
        }

        /// The keys only some kinds use, with those kinds (for the refusal of the others).
        static let keysOfKinds: [(key: String, kinds: [Kind])] = [("factor", [.noam]), ("min_lr", [.cosine]), ("total_steps", [.cosine])]

        /// Reads the section; a missing key takes its default (constant, no warm-up, factor 1, min_lr 0, total_steps
        /// unset).
        public init(from decoder: Decoder) throws {
            let values = try decoder.container(keyedBy: CodingKeys.self)
            kind = try values.decodeIfPresent(Kind.self, forKey: .kind) ?? .constant
            warmupSteps = try values.decodeIfPresent(Int.self, forKey: .warmupSteps) ?? 0
            factor = try values.decodeIfPresent(Float.self, forKey: .factor) ?? 1
            minLr = try values.decodeIfPresent(Float.self, forKey: .minLr) ?? 0
            totalSteps = try values.decodeIfPresent(Int.self, forKey: .totalSteps)
        }
    }

    /// The `model` section: the architecture (required).
    public var model: ModelConfig
    /// The `data` section (required).
    public var data: DataSection
    /// The `training` section (required).
    public var training: TrainingSection
    /// Optional: torch.optim.AdamW's defaults (lr 1e-4 here).
    public var optimizer: OptimizerSection
    /// Optional: constant `optimizer.lr`.
    public var schedule: ScheduleSection
    /// Optional: evaluate only at the end of training.
    public var eval: EvalSection
    /// Optional: one checkpoint at the end, the last 3 kept.
    public var checkpoint: CheckpointSection
    /// Optional: BERT's masking rates (encoder-only models).
    public var mlm: MLMSection

    /// The schedule as a function of the update step.
    public var learningRateSchedule: LearningRateSchedule {
        switch schedule.kind {
        case .constant: return .constant(rate: optimizer.lr, warmupSteps: schedule.warmupSteps)
        case .noam: return .noam(dModel: model.dModel, warmupSteps: schedule.warmupSteps, factor: schedule.factor)
        case .cosine: return .cosine(peak: optimizer.lr, warmupSteps: schedule.warmupSteps,
                                     totalSteps: schedule.totalSteps ?? training.steps, minimum: schedule.minLr)
        }
    }

    enum CodingKeys: String, CodingKey { case model, data, training, optimizer, schedule, eval, checkpoint, mlm }

    /// Reads a config: `model` (unless the decoder's `userInfo` holds a base model, `ModelConfig.baseUserInfoKey`), `data`
    /// and `training` are required; `optimizer`, `schedule`, `eval`, `checkpoint` and
    /// `mlm` take their defaults when absent.
    public init(from decoder: Decoder) throws {
        let values = try decoder.container(keyedBy: CodingKeys.self)
        let base = decoder.userInfo[ModelConfig.baseUserInfoKey] as? ModelConfig
        if let base, !values.contains(.model) {
            model = base
        } else {
            model = try values.decode(ModelConfig.self, forKey: .model)
        }
        data = try values.decode(DataSection.self, forKey: .data)
        training = try values.decode(TrainingSection.self, forKey: .training)
        if let maxTokens = training.maxTokens, training.batchSize == TrainingSection.derivedBatchSize {
            // Evaluation batches of the longest samples then hold about as many positions as the budget.
            training.batchSize = min(RunConfig.largestBatch, max(1, maxTokens / max(1, data.sourceLength, data.targetLength)))
        }
        optimizer = try values.decodeIfPresent(OptimizerSection.self, forKey: .optimizer) ?? OptimizerSection()
        schedule = try values.decodeIfPresent(ScheduleSection.self, forKey: .schedule) ?? ScheduleSection()
        eval = try values.decodeIfPresent(EvalSection.self, forKey: .eval) ?? EvalSection()
        checkpoint = try values.decodeIfPresent(CheckpointSection.self, forKey: .checkpoint) ?? CheckpointSection()
        mlm = try values.decodeIfPresent(MLMSection.self, forKey: .mlm) ?? MLMSection()
    }

    /// Writes the config as a config file would give it: every key, but those the model's kind has no use for
    /// (`checkKeysApply` refuses them), so the JSON a checkpoint stores and `ddp inspect` prints loads again as a
    /// config (`--config`): `data.source_length`, `eval.decode_samples` and `eval.bleu_tokenize` only for an
    /// encoder-decoder model, the `mlm` section only for an encoder-only one.
    public func encode(to encoder: Encoder) throws {
        var values = encoder.container(keyedBy: CodingKeys.self)
        try values.encode(model, forKey: .model)
        var dataValues = values.nestedContainer(keyedBy: DataSection.CodingKeys.self, forKey: .data)
        try dataValues.encode(data.directory, forKey: .directory)
        if model.kind == .encoderDecoder { try dataValues.encode(data.sourceLength, forKey: .sourceLength) }
        try dataValues.encode(data.targetLength, forKey: .targetLength)
        try values.encode(training, forKey: .training)
        // (noam's rate is its own: optimizer.lr is left out, as checkKeysApply refuses it.)
        var optimizerValues = values.nestedContainer(keyedBy: OptimizerSection.CodingKeys.self, forKey: .optimizer)
        if schedule.kind != .noam { try optimizerValues.encode(optimizer.lr, forKey: .lr) }
        try optimizerValues.encode(optimizer.beta1, forKey: .beta1)
        try optimizerValues.encode(optimizer.beta2, forKey: .beta2)
        try optimizerValues.encode(optimizer.eps, forKey: .eps)
        try optimizerValues.encode(optimizer.weightDecay, forKey: .weightDecay)
        try values.encode(schedule, forKey: .schedule)
        var evalValues = values.nestedContainer(keyedBy: EvalSection.CodingKeys.self, forKey: .eval)
        try evalValues.encode(eval.every, forKey: .every)
        try evalValues.encode(eval.maxBatches, forKey: .maxBatches)
        if model.kind == .encoderDecoder {
            try evalValues.encode(eval.decodeSamples, forKey: .decodeSamples)
            try evalValues.encode(eval.bleuTokenize, forKey: .bleuTokenize)
        }
        try values.encode(checkpoint, forKey: .checkpoint)
        if model.kind == .encoderOnly { try values.encode(mlm, forKey: .mlm) }
    }

    /// Every key a config may hold, for the unknown-key check.
    public static let knownKeys: [String: Set<String>] = [
        "": ["model", "data", "training", "optimizer", "schedule", "eval", "checkpoint", "mlm"],
        "model": ["kind", "vocab_size", "d_model", "heads", "encoder_layers", "decoder_layers", "d_ff", "activation", "norm",
                  "positions", "max_length", "dropout", "tied_embeddings", "scale_embedding"],
        "data": ["directory", "source_length", "target_length"],
        "training": ["batch_size", "max_tokens", "length_groups", "label_smoothing", "seed", "steps", "grad_accum", "clip_norm", "bucket_mb", "grad_compression",
                     "threads", "log_every", "collective_timeout", "tensorboard"],
        "eval": ["every", "max_batches", "decode_samples", "bleu_tokenize"],
        "checkpoint": ["every", "keep"],
        "mlm": ["probability", "mask_replace_prob", "random_replace_prob", "eval_seed"],
        "optimizer": ["lr", "beta1", "beta2", "eps", "weight_decay"],
        "schedule": ["kind", "warmup_steps", "factor", "min_lr", "total_steps"],
    ]

    /// Sequences per rank per micro-step at most (with `ModelConfig.limits`, no buffer size overflows).
    public static let largestBatch = 1 << 15
    /// The most micro-steps an update may take (`training.grad_accum`).
    public static let largestAccumulation = 1 << 16

    /// Every key on which two configs differ ("section.key"), with both values as text.
    public static func differences(_ stored: RunConfig, _ current: RunConfig) -> [(key: String, stored: String, current: String)] {
        func flatten(_ config: RunConfig) -> [String: String] {
            guard let data = try? JSONEncoder.sortedKeys.encode(config),
                  let root = try? JSONDecoder().decode([String: [String: ConfigValue]].self, from: data) else { return [:] }
            var flat: [String: String] = [:]
            for (section, mapping) in root {
                for (key, inner) in mapping { flat["\(section).\(key)"] = inner.description }
            }
            return flat
        }
        let a = flatten(stored), b = flatten(current)
        return Set(a.keys).union(b.keys).sorted().compactMap { key in
            let (old, new) = (a[key] ?? "(unset)", b[key] ?? "(unset)")
            return old == new ? nil : (key, old, new)
        }
    }

    /// The largest config file read, in bytes: a run config is a few kilobytes; a bigger file is not one (and is
    /// refused before it is read).
    public static let largestFile = 1 << 20

    /// Loads a config file, then applies `--set key.path=value` overrides (checked like the file's own keys). With
    /// `baseModel` (`ddp train --init`), the `model` section may be left out or give only some keys: the others are the
    /// base's.
    public static func load(_ path: String, overrides: [String] = [], baseModel: ModelConfig? = nil) throws -> RunConfig {
        let text: String
        do { text = try TextFile.read(path, largest: largestFile) } catch { throw ConfigError(file: path, key: nil, message: error.message) }
        return try parse(text, file: path, overrides: overrides, baseModel: baseModel)
    }

    /// Parses YAML text, applies `--set` overrides, and checks it: unknown keys (with a suggestion of the closest known
    /// one), types and values (`validate(file:)`). Throws `ConfigError` naming `file` (or the `--set` that gave a bad
    /// value) and the key.
    public static func parse(_ text: String, file: String, overrides: [String] = [], baseModel: ModelConfig? = nil) throws -> RunConfig {
        // An alias can stand for a whole tree, and aliases of aliases for exponentially many (YAML's "billion laughs"):
        // the YAML library expands them all when one is a key. A run config has no use for them (`refuseAliases`).
        do { try refuseAliases(in: text) } catch let problem as YAMLProblem {
            throw ConfigError(file: file, key: nil, message: problem.message)
        }
        var root: Node
        do {
            guard let node = try Yams.compose(yaml: text) else {
                let blank = text.allSatisfy(\.isWhitespace)
                throw ConfigError(file: file, key: nil, message: blank ? "the file is empty" : "holds no keys, only comments or blank lines")
            }
            root = node
        } catch let error as ConfigError {
            throw error
        } catch {
            throw ConfigError(file: file, key: nil, message: "not valid YAML: \(yamlProblem(error, in: text))")
        }
        for override in overrides { root = try apply(override, to: root, file: file) }
        // A key set on the command line is blamed on its --set, not on the file: its type and its value.
        // Another key's error may come of an override too (`--set model.kind=encoder-decoder` and the file's
        // encoder_layers 0): then it names the file with the overrides.
        func blamingOverride(_ error: ConfigError) -> ConfigError {
            guard let key = error.key, let override = overrides.last(where: { $0.hasPrefix(key + "=") }) else {
                guard !overrides.isEmpty else { return error }
                return error.blaming("\(file) with " + overrides.map { "--set \($0)" }.joined(separator: " "))
            }
            return error.blaming("--set \(override)")
        }
        let config: RunConfig
        do {
            try checkKeys(root, section: "", file: file)
            config = try YAMLDecoder().decode(RunConfig.self, from: root,
                                              userInfo: baseModel.map { [ModelConfig.baseUserInfoKey: $0] } ?? [:])
            try config.validate(file: file)
            try checkKeysApply(root, kind: config.model.kind, file: file)
        } catch let error as DecodingError {
            throw blamingOverride(ConfigError(decoding: error, file: file, root: root))
        } catch let error as ConfigError {
            throw blamingOverride(error)
        }
        return config
    }

    /// Why a YAML text is refused before it is composed: its sentence (`refuseAliases`).
    struct YAMLProblem: Error { let message: String }

    /// Throws `YAMLProblem` when `text` is not YAML or uses an alias (`*name`), which the YAML library would expand
    /// however many times it is nested. Which `*` is an alias is the YAML parser's to say, not a pattern's (a `*` in a
    /// comment, a quoted or block scalar or inside a word is none): every `*` is first replaced by a character YAML
    /// gives no meaning to, so the text composes without aliases (in time linear in its size), and a plain scalar that
    /// then starts with that character was an alias.
    static func refuseAliases(in text: String) throws {
        let sentinel: Character = "\u{E000}"
        let masked = String(text.map { $0 == "*" ? sentinel : $0 })
        let node: Node?
        do { node = try Yams.compose(yaml: masked) } catch {
            throw YAMLProblem(message: "not valid YAML: \(yamlProblem(error, in: masked))")
        }
        func find(_ node: Node) -> Node.Scalar? {
            switch node {
            case .scalar(let scalar): return scalar.style == .plain && scalar.string.first == sentinel ? scalar : nil
            case .mapping(let mapping):
                for (key, value) in mapping { if let found = find(key) ?? find(value) { return found } }
                return nil
            case .sequence(let sequence): return sequence.lazy.compactMap(find).first
            case .alias: return Node.Scalar("\(sentinel)alias")
            }
        }
        guard let node else { return }
        if let alias = find(node) {
            let name = alias.string.dropFirst().prefix { !$0.isWhitespace }
            throw YAMLProblem(message: "uses the YAML alias *\(name.prefix(40))" + (alias.mark.map { " (line \($0.line))" } ?? "")
                              + "; run configs do not support anchors and aliases (write the values out)")
        }
        // A tag (`!!str 3`, `!custom 3`) would be ignored by the decoding, which reads the value as written: refused, as
        // a value that does not say what it means. A tag passes when it is what the node is without one: none; once
        // resolved, a plain scalar's type from its text, a quoted one's str, map, seq; and the non-specific "!" where
        // it means that too (on quoted scalars, plain ones that read as strings, mappings and sequences).
        func tagged(_ node: Node) -> (tag: String, mark: Mark?)? {
            func shown(_ tag: Tag) -> String {
                let text = tag.description
                return text.hasPrefix("tag:yaml.org,2002:") ? "!!" + text.dropFirst("tag:yaml.org,2002:".count) : text
            }
            switch node {
            case .scalar(let scalar):
                // (The non-specific "!" makes even a plain scalar a string: `! 3` is "3", which the decoding would read as 3.)
                let untagged = scalar.style == .plain ? Resolver.default.resolveTag(of: .scalar(Node.Scalar(scalar.string))).rawValue
                                                      : Tag.Name.str.rawValue
                let passing = untagged == Tag.Name.str.rawValue ? ["", "!", untagged] : ["", untagged]
                return passing.contains(scalar.tag.description) ? nil : (shown(scalar.tag), scalar.mark)
            case .mapping(let mapping):
                if !["", "!", Tag.Name.map.rawValue].contains(mapping.tag.description) { return (shown(mapping.tag), mapping.mark) }
                for (key, value) in mapping { if let found = tagged(key) ?? tagged(value) { return found } }
                return nil
            case .sequence(let sequence):
                if !["", "!", Tag.Name.seq.rawValue].contains(sequence.tag.description) { return (shown(sequence.tag), sequence.mark) }
                return sequence.lazy.compactMap(tagged).first
            case .alias:
                return nil
            }
        }
        if let (tag, mark) = tagged(node) {
            throw YAMLProblem(message: "uses the YAML tag \(tag.prefix(40))" + (mark.map { " (line \($0.line))" } ?? "")
                              + "; run configs do not read tags (write the value without it)")
        }
    }

    /// The YAML library's error about `text` as one line: where, and what is wrong (its own text appends the file, or a
    /// part of it).
    static func yamlProblem(_ error: Error, in text: String) -> String {
        switch error as? YamlError {
        case let .duplicatedKeysInMapping(duplicates, context):
            let keys = duplicates.sorted().map { "'\($0)'" }.joined(separator: ", ")
            return "\(keys) \(duplicates.count == 1 ? "is" : "are") given more than once in one mapping (first at line "
                + "\(context.mark.line)); give each key once"
        case let .scanner(context, problem, mark, _), let .parser(context, problem, mark, _), let .composer(context, problem, mark, _):
            if problem.hasPrefix("Maximum nesting level reached") {
                // libyaml's text names its own setting; a run config is two levels deep (sections and their keys).
                return "line \(mark.line), column \(mark.column): nested too deeply (a run config holds sections of keys)"
            }
            return "line \(mark.line), column \(mark.column): \(problem)" + (context.map { " (\($0.text) at line \($0.mark.line))" } ?? "")
        case let .reader(problem, offset, _, _):
            // The reader counts characters from 0; lines as the scanner does, from 1 (a CRLF is one character).
            guard let offset, offset >= 0 else { return problem }
            let before = text.prefix(offset)
            let line = before.reduce(1) { $1.isNewline ? $0 + 1 : $0 }
            let column = before.count - (before.lastIndex(where: \.isNewline).map { before.distance(from: before.startIndex, to: $0) + 1 } ?? 0) + 1
            return "line \(line), column \(column): \(problem)"
        default:
            return "\(error)"
        }
    }

    /// `section.key=value`: sets (or adds) one key; the value is read as YAML (`3`, `1.0e-3`, `true`, `gelu`).
    private static func apply(_ override: String, to root: Node, file: String) throws -> Node {
        let parts = override.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        // (Empty parts kept: "training..steps" and ".training.steps" are no key.)
        let path = parts.first?.split(separator: ".", omittingEmptySubsequences: false).map(String.init) ?? []
        guard parts.count == 2, path.count == 2, !path.contains(where: \.isEmpty) else {
            throw ConfigError(file: "--set \(override)", key: nil, message: "expected section.key=value (for example training.steps=100)")
        }
        let (section, key) = (path[0], path[1])
        // The command line's bytes that are not UTF-8 arrive as U+FFFD: a value (a path, say) that no longer says what was typed.
        guard !override.contains("\u{FFFD}") else {
            throw ConfigError(file: "--set \(override)", key: nil, message: "holds bytes that are not UTF-8 text (shown as \u{FFFD})")
        }
        guard let allowed = knownKeys[section], allowed.contains(key) else {
            let known = knownKeys[section].flatMap { closest(to: key, in: $0) }.map { " (did you mean '\(section).\($0)'?)" } ?? ""
            throw ConfigError(file: "--set \(override)", key: "\(section).\(key)", message: "unknown key\(known)")
        }
        guard !parts[1].isEmpty else {
            throw ConfigError(file: "--set \(override)", key: "\(section).\(key)",
                              message: "has no value after '=' (give one, or leave this --set out for the config's value)")
        }
        guard var mapping = root.mapping else { throw ConfigError(file: file, key: nil, message: "expected a mapping of keys to values") }
        let value: Node
        do {
            try refuseAliases(in: parts[1])
            value = try Yams.compose(yaml: parts[1]) ?? Node(parts[1])
        } catch let problem as YAMLProblem where problem.message.hasPrefix("uses") {
            throw ConfigError(file: "--set \(override)", key: "\(section).\(key)", message: problem.message)
        } catch {
            throw ConfigError(file: "--set \(override)", key: "\(section).\(key)", message: "'\(parts[1])' is not a YAML value")
        }
        var inner = mapping[Node(section)]?.mapping ?? Node.Mapping([])
        inner[Node(key)] = value
        mapping[Node(section)] = .mapping(inner)
        return .mapping(mapping)
    }

    /// Keys the file gives that the model's kind (or the schedule's) has no use for are refused, not dropped: a decoder-only model's
    /// `model.encoder_layers` (but 0), `training.length_groups` (but 1), `data.source_length`, `eval.decode_samples` and `eval.bleu_tokenize` (decoding
    /// is seq2seq's), and the `mlm` section of any model but an encoder-only one.
    private static func checkKeysApply(_ root: Node, kind: ModelConfig.Kind, file: String) throws {
        func given(_ section: String, _ key: String) -> Node? { root.mapping?[Node(section)]?.mapping?[Node(key)] }
        func refuse(_ key: String, _ why: String) throws {
            throw ConfigError(file: file, key: key, message: "\(kind == .decoderOnly ? "a" : "an") \(kind.rawValue) model \(why); leave the key out")
        }
        if !kind.hasEncoder, let layers = given("model", "encoder_layers"), layers.int != 0 { try refuse("model.encoder_layers", "has no encoder") }
        if !kind.hasDecoder, let layers = given("model", "decoder_layers"), layers.int != 0 { try refuse("model.decoder_layers", "has no decoder") }
        if kind != .encoderDecoder {
            if let groups = given("training", "length_groups"), groups.int != 1 {
                try refuse("training.length_groups", "has windows of one length (data.target_length): length groups have nothing to mix")
            }
            if given("data", "source_length") != nil { try refuse("data.source_length", "has no source side (its context is data.target_length)") }
            for key in ["decode_samples", "bleu_tokenize"] where given("eval", key) != nil {
                try refuse("eval.\(key)", "decodes no translations to score")
            }
        }
        // A schedule's keys that its kind does not use (`schedule.factor` of a cosine schedule) would change nothing.
        let schedule = root.mapping?[Node("schedule")]?.mapping?[Node("kind")]?.string.flatMap(ScheduleSection.Kind.init(rawValue:)) ?? .constant
        // Null sets such a key aside (`--set schedule.min_lr=null` when switching kinds), and is no value for a kind
        // that uses it (total_steps aside, whose null means training.steps). Every key set aside is named at once.
        let uses = ScheduleSection.keysOfKinds.map { ("schedule", $0.key, $0.kinds) } + [("optimizer", "lr", [.constant, .cosine])]
        var unused: [String] = []
        for (section, key, kinds) in uses {
            guard let value = given(section, key) else { continue }
            let isNull = value.tag.rawValue == Tag.Name.null.rawValue
            if !kinds.contains(schedule) {
                if !isNull { unused.append("\(section).\(key)") }
            } else if isNull && key != "total_steps" {
                throw ConfigError(file: file, key: "\(section).\(key)", message: "has no value (give one; a key that has a default may be left out instead)")
            }
        }
        if let first = unused.first {
            let noam = schedule == .noam && unused.contains("optimizer.lr")
                ? " (noam sets the rate itself: factor · d_model^-0.5 · min(step^-0.5, step · warmup_steps^-1.5); schedule.factor scales it)" : ""
            throw ConfigError(file: file, key: first, message: "the \(schedule.rawValue) schedule has no use for it"
                              + (unused.count > 1 ? ", nor for " + unused.dropFirst().joined(separator: ", ") : "") + noam + "; leave "
                              + (unused.count > 1 ? "these keys" : "the key") + " out, or on the command line "
                              + unused.map { "--set \($0)=null" }.joined(separator: " "))
        }
        if kind != .encoderOnly, let mlm = root.mapping?[Node("mlm")] {
            let key = mlm.mapping?.keys.first?.string.map { "mlm.\($0)" } ?? "mlm"
            try refuse(key, "masks no tokens (the mlm section is for encoder-only models)")
        }
    }

    /// Keys whose null means "not set" (its own setting, not a default): `--set training.max_tokens=null` returns a
    /// config that sets max_tokens to batch_size batching, `--set schedule.total_steps=null` to training.steps;
    /// `schedule.factor`, `schedule.min_lr` and `optimizer.lr` null take their defaults (a file's keys set aside for
    /// another schedule kind).
    static let unsettableKeys: Set<String> = ["training.max_tokens", "schedule.total_steps", "schedule.factor", "schedule.min_lr", "optimizer.lr"]

    private static func checkKeys(_ node: Node, section: String, file: String) throws {
        guard let mapping = node.mapping else {
            throw ConfigError(file: file, key: section.isEmpty ? nil : section, message: "expected a mapping of keys to values")
        }
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else {
                throw ConfigError(file: file, key: section.isEmpty ? nil : section, message: "has a key that is a list or a mapping, not a name")
            }
            guard key.count <= 64 else {
                throw ConfigError(file: file, key: section.isEmpty ? nil : section, message: "unknown key '\(key.prefix(40))...' (\(key.count) characters)")
            }
            let path = section.isEmpty ? key : "\(section).\(key)"
            guard let allowed = knownKeys[section], allowed.contains(key) else {
                // Named in full, as the key itself is ("did you mean 'training.steps'?", as for --set).
                let suggestion = knownKeys[section].flatMap { closest(to: key, in: $0) }
                    .map { " (did you mean '\(section.isEmpty ? $0 : "\(section).\($0)")'?)" } ?? ""
                throw ConfigError(file: file, key: path, message: "unknown key\(suggestion)")
            }
            if section.isEmpty {
                try checkKeys(value, section: key, file: file)
            } else if path != "data.directory", ConfigError.choices[path] == nil, let scalar = value.scalar, scalar.style == .plain,
                      let form = unclearNumberForm(scalar.string) {
                // (Only numeric keys: a directory named 007 is read as written.)
                throw ConfigError(file: file, key: path, message: "\(scalar.string.prefix(40)) is \(form) in YAML 1.1, which this "
                                  + "config is read by; write the number in decimal")
            } else if path != "data.directory", let scalar = value.scalar, scalar.style == .plain,
                      !scalar.string.lowercased().contains("inf"), Double(scalar.string)?.isInfinite == true {
                // 1e400 reads as infinity, which a range check would then report as "inf", not as what was written.
                throw ConfigError(file: file, key: path, message: "\(scalar.string.prefix(40)) is beyond the largest number a float holds "
                                  + "(about 1.8e308)")
            } else if value.tag.rawValue == Tag.Name.null.rawValue && !unsettableKeys.contains(path) {
                // `label_smoothing:` with nothing after it: YAML's null, which the decoder would take for a key left out.
                throw ConfigError(file: file, key: path, message: "has no value (give one; a key that has a default may be left out instead)")
            }
        }
    }

    /// What YAML 1.1 (the YAML library's resolver) reads a plain scalar as when that is another number than the one a
    /// reader of YAML 1.2 or JSON sees: "010" is octal 8 (10 in YAML 1.2), "1:00" base 60, 60, "0b11" binary 3, "4_0"
    /// 40 and "-0x10" -16 (all three text in YAML 1.2). Nil for decimal numbers (`10`, `-3`, `1.0e-3`, `0.5`, `0`), for
    /// forms that mean the same to both (`0x10`), and for text.
    static func unclearNumberForm(_ text: String) -> String? {
        if text.wholeMatch(of: /[-+]?0[0-7_]+/) != nil { return "an octal number" }
        if text.wholeMatch(of: /[-+]?0b[01_]+/) != nil { return "a binary number" }
        // YAML 1.2 writes hexadecimal without a sign or separators.
        if text.wholeMatch(of: /[-+]0x[0-9a-fA-F_]+|0x[0-9a-fA-F_]*_[0-9a-fA-F_]*/) != nil { return "a hexadecimal number" }
        if text.contains("_"), text.wholeMatch(of: /[-+]?[0-9][0-9_]*(\.[0-9_]*)?([eE][-+]?[0-9]+)?|[-+]?\.[0-9][0-9_]*([eE][-+]?[0-9]+)?/) != nil {
            return "a number with digit separators ('_')"
        }
        // Base-60 integers start with 1-9; base-60 floats have a fraction.
        if text.wholeMatch(of: /[-+]?[1-9][0-9_]*(:[0-5]?[0-9])+/) != nil || text.wholeMatch(of: /[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*/) != nil {
            return "a base-60 number"
        }
        return nil
    }

    private static func closest(to key: String, in candidates: Set<String>) -> String? {
        func distance(_ a: [Character], _ b: [Character]) -> Int {
            var row = Array(0...b.count)
            for i in 1...max(1, a.count) where !a.isEmpty {
                var previous = row[0]
                row[0] = i
                for j in 1...max(1, b.count) where !b.isEmpty {
                    let current = row[j]
                    row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                    previous = current
                }
            }
            return row[b.count]
        }
        let scored = candidates.map { ($0, distance(Array(key), Array($0))) }.min { $0.1 < $1.1 }
        // (Fewer edits than the key has characters: "x" is 3 edits from "mlm", as it is from anything that short.)
        return scored.flatMap { $0.1 <= 3 && $0.1 < key.count ? $0.0 : nil }
    }

    /// Checks every value against its allowed range (the model's through `ModelConfig.validate()`, the lengths against
    /// `model.max_length`); throws `ConfigError` naming `file` and the first offending key.
    public func validate(file: String) throws {
        do {
            try model.validate()
        } catch {
            throw ConfigError(file: file, key: "model.\(error.key)", message: error.message)
        }
        func check(_ condition: Bool, _ key: String, _ message: String) throws {
            if !condition { throw ConfigError(file: file, key: key, message: message) }
        }
        try check(training.batchSize >= 1 && training.batchSize <= RunConfig.largestBatch, "training.batch_size",
                  "must be 1 to \(RunConfig.largestBatch), got \(training.batchSize)")
        if let maxTokens = training.maxTokens {
            try check(maxTokens >= 1 && maxTokens <= 1 << 30, "training.max_tokens",
                      "must be 1 to \(1 << 30) positions per global batch, got \(maxTokens)")
            try check(training.lengthGroups >= 1 && training.lengthGroups <= maxTokens, "training.length_groups",
                      "must be 1 to training.max_tokens (\(maxTokens)) groups per global batch, got \(training.lengthGroups)")
        } else {
            try check(training.lengthGroups == 1, "training.length_groups",
                      "joins length groups of token-budget batches; it needs training.max_tokens (got \(training.lengthGroups) without it)")
        }
        try check(training.steps >= 1 && training.steps <= Int(Int32.max), "training.steps", "must be 1 to \(Int32.max), got \(training.steps)")
        try check(training.accumulationSteps >= 1 && training.accumulationSteps <= RunConfig.largestAccumulation, "training.grad_accum",
                  "must be 1 to \(RunConfig.largestAccumulation), got \(training.accumulationSteps)")
        try check(training.clipNorm >= 0 && training.clipNorm.isFinite, "training.clip_norm", "must be 0 (off) or positive and finite, got \(training.clipNorm)")
        try check(training.bucketMb > 0 && training.bucketMb <= 1_048_576, "training.bucket_mb", "must be positive and at most 1048576, got \(training.bucketMb)")
        try check(training.threads >= 0 && training.threads <= largestThreadCount, "training.threads",
                  "must be 0 (automatic) to \(largestThreadCount), got \(training.threads)")
        try check(training.logEvery >= 1, "training.log_every", "must be at least 1, got \(training.logEvery)")
        // (Under a second, a step's ordinary wait for the slowest rank would end the job.)
        try check(training.collectiveTimeout == 0 || (1...1e7).contains(training.collectiveTimeout), "training.collective_timeout",
                  "must be 0 (no limit) or 1 to 1e7 seconds, got \(training.collectiveTimeout)")
        try check(eval.every >= 0, "eval.every", "must be 0 (only at the end) or more, got \(eval.every)")
        try check(eval.maxBatches >= 0, "eval.max_batches", "must be 0 (the whole split) or more, got \(eval.maxBatches)")
        try check(eval.decodeSamples >= 0, "eval.decode_samples", "must be 0 (off) or more, got \(eval.decodeSamples)")
        try check(checkpoint.every >= 0, "checkpoint.every", "must be 0 or more, got \(checkpoint.every)")
        try check(checkpoint.keep >= 1, "checkpoint.keep", "must be at least 1, got \(checkpoint.keep)")
        // A block scalar (`directory: |`) ends in a line end: a path no directory has, and an error message that breaks.
        try check(!data.directory.unicodeScalars.contains { $0.properties.generalCategory == .control }, "data.directory",
                  "holds a line end or another control character (a YAML block scalar, `|` or `>`, adds one): write the path on the key's line")
        try check(data.targetLength >= 1 && data.targetLength <= model.maxLength, "data.target_length",
                  "must be in 1...model.max_length (\(model.maxLength)), got \(data.targetLength)")
        if model.kind == .encoderDecoder {
            // Left out, it reads as 0: say it is needed rather than "got 0".
            try check(data.sourceLength != 0, "data.source_length", "is missing (or 0): an encoder-decoder model needs the longest source "
                      + "it reads, in tokens with EOS, in 1...model.max_length (\(model.maxLength))")
            try check(data.sourceLength >= 1 && data.sourceLength <= model.maxLength, "data.source_length",
                      "must be in 1...model.max_length (\(model.maxLength)) for an encoder-decoder model, got \(data.sourceLength)")
        }
        try check(training.labelSmoothing >= 0 && training.labelSmoothing < 1, "training.label_smoothing", "must be in [0, 1)")
        try check(optimizer.lr > 0 && optimizer.lr.isFinite, "optimizer.lr", "must be positive and finite, got \(optimizer.lr)")
        try check((0..<1).contains(optimizer.beta1), "optimizer.beta1", "must be in [0, 1), got \(optimizer.beta1)")
        try check((0..<1).contains(optimizer.beta2), "optimizer.beta2", "must be in [0, 1), got \(optimizer.beta2)")
        try check(optimizer.eps > 0 && optimizer.eps.isFinite, "optimizer.eps", "must be positive and finite, got \(optimizer.eps)")
        try check(optimizer.weightDecay >= 0 && optimizer.weightDecay.isFinite, "optimizer.weight_decay",
                  "must be 0 (off) or positive and finite, got \(optimizer.weightDecay)")
        try check(schedule.factor > 0 && schedule.factor.isFinite, "schedule.factor", "must be positive and finite, got \(schedule.factor)")
        try check(schedule.warmupSteps >= 0, "schedule.warmup_steps", "must be 0 or more, got \(schedule.warmupSteps)")
        try check(schedule.kind != .noam || schedule.warmupSteps >= 1, "schedule.warmup_steps", "noam needs a warm-up of at least 1 step")
        let cosineSteps = schedule.totalSteps ?? training.steps
        try check(schedule.kind != .cosine || cosineSteps > schedule.warmupSteps, "schedule.total_steps",
                  "must exceed schedule.warmup_steps (\(schedule.warmupSteps)) for cosine, got \(cosineSteps)"
                  + (schedule.totalSteps == nil ? " (training.steps, its default)" : ""))
        // (Only cosine has a floor: another kind's min_lr is refused as unused, and noam's optimizer.lr is not its rate.)
        try check(schedule.kind != .cosine || (schedule.minLr >= 0 && schedule.minLr <= optimizer.lr), "schedule.min_lr", "must be in [0, optimizer.lr]")
        try check(mlm.probability > 0 && mlm.probability <= 1, "mlm.probability", "must be in (0, 1], got \(mlm.probability)")
        try check(mlm.maskReplaceProb >= 0 && mlm.maskReplaceProb <= 1, "mlm.mask_replace_prob", "must be in [0, 1], got \(mlm.maskReplaceProb)")
        try check(mlm.randomReplaceProb >= 0 && mlm.maskReplaceProb + mlm.randomReplaceProb <= 1, "mlm.random_replace_prob",
                  "must be in [0, 1 - mlm.mask_replace_prob], got \(mlm.randomReplaceProb)")
    }
}

/// A config that cannot be used: which file (or `--set` override), which key, and what is wrong with it.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    /// The config file, or "--set key=value" when a command-line override gave the bad value.
    public let file: String
    /// The offending key as "section.key" ("training.batch_size"), or nil for a problem with the file as a whole.
    public let key: String?
    /// What is wrong, as a clause that follows the key ("is missing", "must be at least 1, got 0").
    public let message: String
    /// Whether the key is left out (not given a wrong value): what a resumed fine-tune's own model may fill in.
    public var isMissingKey = false

    /// An error about `key` in `file`.
    public init(file: String, key: String?, message: String) {
        self.file = file
        self.key = key
        self.message = message
    }

    /// The same error, said of `file` (an override, or the file with its overrides).
    func blaming(_ file: String) -> ConfigError {
        var error = ConfigError(file: file, key: key, message: message)
        error.isMissingKey = isMissingKey
        return error
    }

    /// The scalar at `keys` of a composed config, if there is one.
    private static func scalarNode(at keys: [String], in root: Node?) -> Node.Scalar? {
        var node = root
        for key in keys { node = node?.mapping?[Node(key)] }
        return node?.scalar
    }

    /// The scalar text at `keys` of a composed config, if there is one.
    static func scalar(at keys: [String], in root: Node?) -> String? { scalarNode(at: keys, in: root)?.string }

    /// Whether the scalar at `keys` of a composed config is written in quotes.
    static func isQuoted(at keys: [String], in root: Node?) -> Bool {
        guard let style = scalarNode(at: keys, in: root)?.style else { return false }
        return style == .singleQuoted || style == .doubleQuoted
    }

    init(decoding error: DecodingError, file: String, root: Node? = nil) {
        func path(_ context: DecodingError.Context) -> String {
            context.codingPath.map(\.stringValue).joined(separator: ".")
        }
        switch error {
        case .keyNotFound(let key, let context):
            let parent = path(context)
            let name = parent.isEmpty ? key.stringValue : "\(parent).\(key.stringValue)"
            // training.batch_size is optional only next to training.max_tokens: say so where it is missing.
            self.init(file: file, key: name, message: name == "training.batch_size"
                      ? "is missing (give batch_size, sequences per rank, or max_tokens, positions per global batch)" : "is missing")
            isMissingKey = true
        case .typeMismatch(let type, let context):
            // A whole number the key's type cannot hold is out of range, not "not an integer" (a seed of -5, 2^63 steps).
            var message = "expected \(describeType(type))"
            let keys = context.codingPath.map(\.stringValue)
            let isInteger = type == UInt64.self || type == Int.self || type == Int32.self
            if Self.isQuoted(at: keys, in: root), let text = Self.scalar(at: keys, in: root),
               isInteger ? Int(text) != nil : Double(text) != nil {
                // "20" in quotes is a string to YAML, whatever it looks like.
                message += ", not the quoted string \"\(text.prefix(40))\" (write it without quotes)"
            } else if let text = Self.scalar(at: keys, in: root), isInteger, text.wholeMatch(of: /[-+]?0[0-9_]*[89][0-9_]*/) != nil {
                message += " (\(text.prefix(40)): a leading zero makes YAML 1.1 read an octal number, with no 8 or 9; write it without the zero)"
            } else if let text = Self.scalar(at: keys, in: root), text.wholeMatch(of: /[-+]?[0-9][0-9_]*/) != nil,
               type == UInt64.self || type == Int.self || type == Int32.self {
                let range = type == UInt64.self ? "0 to \(UInt64.max)" : type == Int32.self ? "\(Int32.min) to \(Int32.max)" : "\(Int.min) to \(Int.max)"
                message = "\(text) is out of range (an integer from \(range))"
            }
            self.init(file: file, key: path(context), message: message)
        case .valueNotFound(let type, let context):
            self.init(file: file, key: path(context), message: "expected \(describeType(type)), found nothing")
        case .dataCorrupted(let context):
            let key = path(context)
            if let allowed = Self.choices[key] {
                self.init(file: file, key: key, message: "must be one of \(allowed.joined(separator: ", "))")
            } else {
                self.init(file: file, key: key, message: context.debugDescription)
            }
        @unknown default:
            self.init(file: file, key: nil, message: "\(error)")
        }
    }

    /// "file: config key 'section.key': message", or "file: message" without a key.
    public var description: String {
        if let key { return "\(file): config key '\(key)': \(message)" }
        return "\(file): \(message)"
    }

    /// The values keys that name one of several choices accept (for "must be one of ...").
    static let choices: [String: [String]] = [
        "model.kind": ModelConfig.Kind.allCases.map(\.rawValue), "model.activation": ModelConfig.Activation.allCases.map(\.rawValue),
        "model.norm": ModelConfig.Norm.allCases.map(\.rawValue), "model.positions": ModelConfig.Positions.allCases.map(\.rawValue),
        "schedule.kind": RunConfig.ScheduleSection.Kind.allCases.map(\.rawValue),
        "training.grad_compression": GradientCompression.allCases.map(\.rawValue),
        "eval.bleu_tokenize": BLEUTokenization.allCases.map(\.rawValue),
    ]
}

extension ModelConfig.Kind {
    /// The data a model of this kind trains and evaluates on: the `lm` task's token stream (decoder-only: next token;
    /// encoder-only: masked tokens) or `seq2seq` pairs.
    public var dataTask: DatasetTask { readsTokenStream ? .lm : .seq2seq }

    /// Refuses data of the other task, naming `place` (a data directory or file): "holds lm data; model.kind
    /// encoder-decoder trains on seq2seq data (ddp prepare --task seq2seq)". nil (no file yet) passes.
    public func requireData(_ task: DatasetTask?, in place: String) throws {
        guard let task, task != dataTask else { return }
        throw DataError(file: place, "holds \(task.rawValue) data; model.kind \(rawValue) trains on \(dataTask.rawValue) data "
                                     + "(ddp prepare --task \(dataTask.rawValue))")
    }
}

extension RunConfig {
    /// Encoder-only runs: BERT's recipe for data of `tokenizer` with the evaluation's fixed seed (`mlm.eval_seed`),
    /// as `EvaluationPlan.masking` takes it; nil for the other kinds.
    public func evaluationMasking(tokenizer: Tokenizer) -> (recipe: MaskedLanguageModeling, seed: UInt64)? {
        model.kind == .encoderOnly ? (mlm.recipe(for: tokenizer), mlm.evalSeed) : nil
    }
}

/// One value of an encoded config, written as a config file writes it: `true`, `4`, `0.001`, `gelu` (not `1` for true,
/// as a number read back from JSON prints).
enum ConfigValue: Decodable, CustomStringConvertible {
    case flag(Bool), integer(Int), unsigned(UInt64), number(Double), text(String), other

    init(from decoder: Decoder) throws {
        let value = try decoder.singleValueContainer()
        if let flag = try? value.decode(Bool.self) { self = .flag(flag) }
        else if let integer = try? value.decode(Int.self) { self = .integer(integer) }
        else if let unsigned = try? value.decode(UInt64.self) { self = .unsigned(unsigned) }  // a seed above Int.max
        else if let number = try? value.decode(Double.self) { self = .number(number) }
        else if let text = try? value.decode(String.self) { self = .text(text) }
        else { self = .other }
    }

    var description: String {
        switch self {
        case let .flag(flag): return "\(flag)"
        case let .integer(integer): return "\(integer)"
        case let .unsigned(unsigned): return "\(unsigned)"
        case let .number(number): return "\(number)"
        case let .text(text): return text
        case .other: return "(not a value)"
        }
    }
}
