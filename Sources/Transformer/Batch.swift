/// Special token ids, fixed across data, checkpoints and the model.
public enum SpecialToken {
    public static let pad: Int32 = 0
    public static let bos: Int32 = 1
    public static let eos: Int32 = 2
    public static let unk: Int32 = 3
}

/// One micro-batch, already framed (DESIGN.md): rows padded with PAD to the batch's longest sequence.
public struct Batch: Sendable {
    public var batchSize: Int
    /// Encoder input length S (0 for decoder-only models).
    public var sourceLength: Int
    /// Decoder input and label length T.
    public var targetLength: Int
    /// [B,S] encoder input (source + EOS, PAD after).
    public var source: [Int32]
    /// [B,T] decoder input (BOS + target, or LM window[:-1]).
    public var decoderInput: [Int32]
    /// [B,T] labels (target + EOS, or LM window[1:]); PAD is ignored by the loss.
    public var labels: [Int32]

    public init(batchSize: Int, sourceLength: Int = 0, targetLength: Int, source: [Int32] = [], decoderInput: [Int32], labels: [Int32]) {
        self.batchSize = batchSize
        self.sourceLength = sourceLength
        self.targetLength = targetLength
        self.source = source
        self.decoderInput = decoderInput
        self.labels = labels
    }

    /// Real (non-PAD) label tokens: what the loss is summed over.
    public var labelTokens: Int { labels.reduce(0) { $0 + ($1 == SpecialToken.pad ? 0 : 1) } }
}

/// Summed loss over a batch and what it was summed over.
public struct LossSum: Sendable, Equatable {
    public var loss: Double
    public var tokens: Int
    public var correct: Int

    public init(loss: Double = 0, tokens: Int = 0, correct: Int = 0) {
        self.loss = loss
        self.tokens = tokens
        self.correct = correct
    }
}
