/// Which token ids play the special roles, a property of the tokenizer (`Tokenizer.specialTokens`). SwiftDDP's own
/// tokenizers (byte, bpe) reserve ids 0-3 (`standard`); a Hugging Face tokenizer names its own (GPT-2's
/// `<|endoftext|>`, 50256, is both BOS and EOS, and GPT-2 has no pad token). Stored sequences carry no BOS/EOS of
/// their own; framing adds them (see `TokenBatch`).
public struct SpecialTokens: Codable, Hashable, Sendable {
    /// Padding: ignored by the loss and masked as a key; `none` (-1) when the tokenizer has no pad token, and then a
    /// padded position embeds as zeros (as PyTorch's `ignore_index` and an attention mask would treat it).
    public var pad: Int32
    /// Begin of sequence: the first input of a translation model's decoder.
    public var bos: Int32
    /// End of sequence: the encoder's last input, the decoder's last label, the separator of language-model documents,
    /// and so a language model's context when the prompt is empty.
    public var eos: Int32
    /// Unknown, when the tokenizer has one (reserved: SwiftDDP's tokenizers never produce it).
    public var unk: Int32?

    /// The given ids; `pad` may be `none`.
    public init(pad: Int32, bos: Int32, eos: Int32, unk: Int32? = nil) {
        self.pad = pad
        self.bos = bos
        self.eos = eos
        self.unk = unk
    }

    /// The pad id of a tokenizer without a pad token.
    public static let none: Int32 = -1

    /// SwiftDDP's byte and BPE tokenizers: PAD 0, BOS 1, EOS 2, UNK 3; their bytes start at id 4 (`standardCount`).
    public static let standard = SpecialTokens(pad: 0, bos: 1, eos: 2, unk: 3)
    /// How many ids the standard special tokens take.
    public static let standardCount = 4

    /// The ids that are special (pad only when there is one), ascending, without repeats.
    public var ids: [Int32] { Array(Set([pad, bos, eos] + (unk.map { [$0] } ?? [])).filter { $0 >= 0 }).sorted() }
}
