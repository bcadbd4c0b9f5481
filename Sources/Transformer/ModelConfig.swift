/// What a model is; the keys are the ones config files and checkpoints use.
public struct ModelConfig: Codable, Equatable, Sendable {
    /// `model.kind`: `encoder-decoder` (the paper's translation model), `decoder-only` (the GPT family) or
    /// `encoder-only` (the BERT family: bidirectional encoder and a masked-language-model head).
    public enum Kind: String, Codable, Sendable, CaseIterable {
        case encoderDecoder = "encoder-decoder", decoderOnly = "decoder-only", encoderOnly = "encoder-only"

        /// Whether the model has an encoder stack.
        public var hasEncoder: Bool { self != .decoderOnly }
        /// Whether the model has a decoder stack.
        public var hasDecoder: Bool { self != .encoderOnly }
        /// Whether it trains on the `lm` task's token stream (decoder-only: next token; encoder-only: masked tokens)
        /// rather than on seq2seq pairs.
        public var readsTokenStream: Bool { self != .encoderDecoder }
        /// The kind with its article, for sentences: "a decoder-only", "an encoder-decoder".
        public var withArticle: String { (self == .decoderOnly ? "a " : "an ") + rawValue }
    }
    /// `model.activation` of the feed-forward network: `relu` (the paper), `gelu` (torch.nn.functional.gelu, the exact
    /// erf form) or `gelu_tanh` (gelu(approximate="tanh"), GPT-2's "gelu_new").
    public enum Activation: String, Codable, Sendable, CaseIterable {
        case relu, gelu
        case geluTanh = "gelu_tanh"
    }
    /// `post`: LayerNorm after each residual add (the paper). `pre`: before each sublayer, plus a final norm per stack.
    public enum Norm: String, Codable, Sendable, CaseIterable { case post, pre }
    /// `model.positions`: the paper's fixed sinusoids (§3.5) or a learned table `pos_embed.weight` [max_length, C].
    public enum Positions: String, Codable, Sendable, CaseIterable { case sinusoidal, learned }

    /// `kind`: which of the two model forms.
    public var kind: Kind
    /// `vocab_size`: token ids 0 ..< vocabSize (the special tokens among them are the tokenizer's).
    public var vocabSize: Int
    /// `d_model`: the width C of every hidden state (even; a multiple of `heads`).
    public var dModel: Int
    /// `heads`: attention heads, each of width d_model / heads.
    public var heads: Int
    /// `encoder_layers`: encoder layers (0 for a decoder-only model).
    public var encoderLayers: Int
    /// `decoder_layers`: decoder layers (0 for an encoder-only model).
    public var decoderLayers: Int
    /// `d_ff`: the feed-forward network's inner width F.
    public var dFF: Int
    /// `activation`: the feed-forward network's nonlinearity.
    public var activation: Activation
    /// `norm`: where each residual block's LayerNorm sits.
    public var norm: Norm
    /// `positions`: sinusoidal or learned.
    public var positions: Positions
    /// `max_length`: the longest sequence, source or target, in tokens, that the positions cover.
    public var maxLength: Int
    /// `dropout`: the probability of zeroing an element of the embeddings and of every sublayer's output while
    /// training (0: off).
    public var dropout: Float
    /// The output projection is the input embedding (no `lm_head.weight`).
    public var tiedEmbeddings: Bool
    /// Multiply token embeddings by √d_model (the paper does; GPT-style models usually do not).
    public var scaleEmbedding: Bool

    /// A config with the given keys; `encoderLayers` is 0 for a decoder-only model and `decoderLayers` 0 for an
    /// encoder-only one whatever is passed, and `scaleEmbedding` nil means the kind's default (true for
    /// encoder-decoder). Not validated: see `validate()`.
    public init(kind: Kind, vocabSize: Int, dModel: Int, heads: Int, encoderLayers: Int, decoderLayers: Int, dFF: Int,
                activation: Activation, norm: Norm, positions: Positions, maxLength: Int, dropout: Float,
                tiedEmbeddings: Bool, scaleEmbedding: Bool? = nil) {
        self.kind = kind
        self.vocabSize = vocabSize
        self.dModel = dModel
        self.heads = heads
        self.encoderLayers = kind.hasEncoder ? encoderLayers : 0
        self.decoderLayers = kind.hasDecoder ? decoderLayers : 0
        self.dFF = dFF
        self.activation = activation
        self.norm = norm
        self.positions = positions
        self.maxLength = maxLength
        self.dropout = dropout
        self.tiedEmbeddings = tiedEmbeddings
        self.scaleEmbedding = scaleEmbedding ?? (kind == .encoderDecoder)
    }

    enum CodingKeys: String, CodingKey {
        case kind, heads, activation, norm, positions, dropout
        case vocabSize = "vocab_size", dModel = "d_model", encoderLayers = "encoder_layers", decoderLayers = "decoder_layers"
        case dFF = "d_ff", maxLength = "max_length", tiedEmbeddings = "tied_embeddings", scaleEmbedding = "scale_embedding"
    }

    /// The `userInfo` key of a decoder whose `ModelConfig` takes every key it lacks from the given config (`ddp train
    /// --init`: the checkpoint's model, so a run config may leave out its `model` section or set only `dropout`).
    public static let baseUserInfoKey = CodingUserInfoKey(rawValue: "swiftddp.model.base")!

    /// Decodes the keys of a config file or a checkpoint's stored config (`encoder_layers` or `decoder_layers` of a
    /// stack the kind lacks 0 when missing, `dropout` 0, `tied_embeddings` true, `scale_embedding` the kind's default;
    /// with a base config in `userInfo`, the base's values); throws `DecodingError` for a missing key (the layers of a
    /// stack the kind has among them) or a value of the wrong type.
    public init(from decoder: Decoder) throws {
        let values = try decoder.container(keyedBy: CodingKeys.self)
        let base = decoder.userInfo[Self.baseUserInfoKey] as? ModelConfig
        func value<T: Decodable>(_ key: CodingKeys, _ fallback: T?) throws -> T {
            if let fallback, !values.contains(key) { return fallback }
            return try values.decode(T.self, forKey: key)
        }
        let kind = try value(.kind, base?.kind)
        let encoderLayers: Int = try value(.encoderLayers, base?.encoderLayers ?? (kind.hasEncoder ? nil : 0))
        let decoderLayers: Int = try value(.decoderLayers, base?.decoderLayers ?? (kind.hasDecoder ? nil : 0))
        self.init(kind: kind, vocabSize: try value(.vocabSize, base?.vocabSize), dModel: try value(.dModel, base?.dModel),
                  heads: try value(.heads, base?.heads), encoderLayers: encoderLayers,
                  decoderLayers: decoderLayers, dFF: try value(.dFF, base?.dFF),
                  activation: try value(.activation, base?.activation), norm: try value(.norm, base?.norm),
                  positions: try value(.positions, base?.positions), maxLength: try value(.maxLength, base?.maxLength),
                  dropout: try value(.dropout, base?.dropout ?? 0), tiedEmbeddings: try value(.tiedEmbeddings, base?.tiedEmbeddings ?? true),
                  scaleEmbedding: try values.decodeIfPresent(Bool.self, forKey: .scaleEmbedding) ?? base?.scaleEmbedding)
    }

    /// Largest values the keys may take: far beyond any model a CPU trains, and small enough that no size computed
    /// from them overflows (a config read from a file cannot make the model's arithmetic trap).
    public static let limits = (vocabSize: 1 << 24, dModel: 1 << 16, dFF: 1 << 20, layers: 1 << 10, maxLength: 1 << 15)

    /// Throws `ModelConfigError` naming the first key whose value cannot work.
    public func validate() throws(ModelConfigError) {
        func check(_ condition: Bool, _ key: String, _ message: String) throws(ModelConfigError) {
            if !condition { throw ModelConfigError(key: key, message: message) }
        }
        let limits = Self.limits
        try check(vocabSize >= 5, "vocab_size", "must be at least 5 (4 special tokens + 1), got \(vocabSize)")
        try check(vocabSize <= limits.vocabSize, "vocab_size", "must be at most \(limits.vocabSize), got \(vocabSize)")
        try check(dModel >= 2 && dModel % 2 == 0, "d_model", "must be even and at least 2, got \(dModel)")
        try check(dModel <= limits.dModel, "d_model", "must be at most \(limits.dModel), got \(dModel)")
        try check(heads >= 1, "heads", "must be at least 1, got \(heads)")
        try check(dModel % heads == 0, "heads", "d_model \(dModel) is not divisible by heads \(heads)")
        try check(!kind.hasDecoder || decoderLayers >= 1, "decoder_layers", "\(kind.withArticle) model needs at least 1, got \(decoderLayers)")
        try check(decoderLayers <= limits.layers, "decoder_layers", "must be at most \(limits.layers), got \(decoderLayers)")
        try check(!kind.hasEncoder || encoderLayers >= 1, "encoder_layers", "an \(kind.rawValue) model needs at least 1, got \(encoderLayers)")
        try check(encoderLayers >= 0 && encoderLayers <= limits.layers, "encoder_layers", "must be 0 to \(limits.layers), got \(encoderLayers)")
        try check(dFF >= 1 && dFF <= limits.dFF, "d_ff", "must be 1 to \(limits.dFF), got \(dFF)")
        try check(maxLength >= 1 && maxLength <= limits.maxLength, "max_length", "must be 1 to \(limits.maxLength), got \(maxLength)")
        try check(dropout >= 0 && dropout < 1, "dropout", "must be in [0, 1), got \(dropout)")
    }
}

/// A model config (or a model's buffers) that cannot work, naming the config key.
public struct ModelConfigError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The config key at fault (`d_model`, `max_length`, ...).
    public let key: String
    /// What is wrong with it, as a sentence fragment.
    public let message: String
    /// Whether the config is fine but the model does not fit in the memory left (`TransformerModel`'s check).
    public var isMemoryShortfall = false
    /// "model config key 'KEY': MESSAGE".
    public var description: String { "model config key '\(key)': \(message)" }
}
