/// Special token ids, the same in data files, checkpoints and the model: stored sequences carry no BOS/EOS of their
/// own; framing adds them (see `TokenBatch`). Byte and BPE tokens start at `count`.
public enum SpecialToken {
    /// Padding: ignored by the loss and masked as a key.
    public static let pad: Int32 = 0
    /// Begin of sequence: the decoder's first input.
    public static let bos: Int32 = 1
    /// End of sequence: the encoder's last input, the decoder's last label, and the separator of language-model
    /// documents.
    public static let eos: Int32 = 2
    /// Unknown: reserved.
    public static let unk: Int32 = 3
    /// How many ids the special tokens take.
    public static let count = 4
}
