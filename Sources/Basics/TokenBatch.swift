/// One micro-batch, framed and padded with `pad` to the batch's longest sequence:
///   seq2seq: source = tokens + EOS; decoder input = BOS + target; labels = target + EOS.
///   lm: decoder input = window[:-1]; labels = window[1:] (no source).
public struct TokenBatch: Sendable, Equatable {
    /// Sequences B.
    public let batchSize: Int
    /// Encoder input length S (0 for decoder-only models).
    public let sourceLength: Int
    /// Decoder input and label length T.
    public let targetLength: Int
    /// [B,S] encoder input (source + EOS, PAD after).
    public let source: [Int32]
    /// [B,T] decoder input (BOS + target, or a language-model window without its last token).
    public let decoderInput: [Int32]
    /// [B,T] labels (target + EOS, or the window without its first token); `pad` is ignored by the loss.
    public let labels: [Int32]
    /// Real (non-pad) labels: what the loss is summed over, and what training divides by.
    public let targetTokens: Int
    /// Which global samples the batch holds (empty when it was not read from data).
    public let samples: [Int]
    /// The id padded positions hold (the tokenizer's `SpecialTokens.pad`, possibly `SpecialTokens.none`).
    public let pad: Int32

    /// A batch of the given rows, flattened row-major, padded with `pad`; `targetTokens` is counted from `labels`.
    public init(batchSize: Int, sourceLength: Int = 0, targetLength: Int, source: [Int32] = [], decoderInput: [Int32],
                labels: [Int32], samples: [Int] = [], pad: Int32 = SpecialTokens.standard.pad) {
        self.batchSize = batchSize
        self.sourceLength = sourceLength
        self.targetLength = targetLength
        self.source = source
        self.decoderInput = decoderInput
        self.labels = labels
        self.samples = samples
        self.pad = pad
        targetTokens = labels.reduce(0) { $0 + ($1 == pad ? 0 : 1) }
    }
}
