import Basics

/// BERT's masked-language-model objective (Devlin et al. 2019, §3.1; Hugging Face's
/// `DataCollatorForLanguageModeling`): of the real tokens of each window, each is chosen with probability
/// `probability` (at least one per window); a chosen token becomes the mask token with probability `maskReplace`, a
/// random ordinary token with probability `randomReplace`, and stays otherwise. The loss is taken only at the chosen
/// positions, against the original token.
///
/// Which positions are chosen and what replaces them is a pure function of (seed, epoch, global sample index), so N
/// ranks x batch b choose exactly the masks of 1 rank x N·b, and a resumed run the masks of an uninterrupted one.
public struct MaskedLanguageModeling: Sendable, Equatable {
    /// Share of a window's real tokens chosen for the loss (`mlm.probability`, BERT 0.15).
    public var probability: Double
    /// Of the chosen tokens, the share replaced by the mask token (`mlm.mask_replace_prob`, BERT 0.8).
    public var maskReplace: Double
    /// Of the chosen tokens, the share replaced by a random ordinary token (`mlm.random_replace_prob`, BERT 0.1).
    public var randomReplace: Double
    /// The mask token's id (`Tokenizer.maskToken`).
    public var maskToken: Int32
    /// Ids a random replacement is drawn from, uniformly: the tokenizer's ordinary tokens (not the special ones).
    public var randomTokens: Range<Int32>

    /// A recipe; the defaults are BERT's rates.
    public init(probability: Double = 0.15, maskReplace: Double = 0.8, randomReplace: Double = 0.1, maskToken: Int32,
                randomTokens: Range<Int32>) {
        self.probability = probability
        self.maskReplace = maskReplace
        self.randomReplace = randomReplace
        self.maskToken = maskToken
        self.randomTokens = randomTokens
    }

    /// The recipe for data of `tokenizer`: its mask token, and its ordinary tokens as random replacements.
    public init(probability: Double = 0.15, maskReplace: Double = 0.8, randomReplace: Double = 0.1, tokenizer: Tokenizer) {
        self.init(probability: probability, maskReplace: maskReplace, randomReplace: randomReplace, maskToken: tokenizer.maskToken,
                  randomTokens: tokenizer.ordinaryTokens)
    }

    /// An encoder-only batch from a language-model batch (its `decoderInput` windows [B,T] and `samples`): `source`
    /// the windows with the chosen tokens replaced, `labels` the original token at each chosen position and PAD
    /// elsewhere (so the loss and the token count cover the chosen positions only).
    public func apply(to batch: TokenBatch, seed: UInt64, epoch: Int) -> TokenBatch {
        let b = batch.batchSize, t = batch.targetLength
        precondition(batch.samples.count == b, "masking needs each row's global sample index")
        var input = batch.decoderInput, labels = [Int32](repeating: batch.pad, count: b * t)
        for row in 0..<b {
            let window = (row * t)..<((row + 1) * t)
            let choices = choose(Array(batch.decoderInput[window]), pad: batch.pad, seed: seed, epoch: epoch, sample: batch.samples[row])
            for (offset, choice) in choices {
                let position = window.lowerBound + offset
                labels[position] = batch.decoderInput[position]
                input[position] = choice
            }
        }
        return TokenBatch(batchSize: b, sourceLength: t, targetLength: t, source: input, decoderInput: [], labels: labels,
                          samples: batch.samples, pad: batch.pad)
    }

    /// The chosen positions of one window and the token each gets (the mask, a random token, or itself).
    /// Every position draws the same three numbers whatever is chosen, so a position's fate depends only on
    /// (seed, epoch, sample, position).
    func choose(_ window: [Int32], pad: Int32, seed: UInt64, epoch: Int, sample: Int) -> [(offset: Int, token: Int32)] {
        // The domain constant keeps these streams apart from the sampler's, which mixes seed and epoch the same way.
        var random = SplitMix64(seed: (seed ^ 0x4D41_534B_4D4C_4D00) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(truncatingIfNeeded: epoch) &* 0xD1B5_4A32_D192_ED03
                                ^ UInt64(truncatingIfNeeded: sample) &* 0x94D0_49BB_1331_11EB)
        var chosen: [(offset: Int, token: Int32)] = []
        var fallback: (offset: Int, token: Int32, draw: Double)?
        for (offset, token) in window.enumerated() {
            let (pick, kind, replacement) = (unit(&random), unit(&random), random.next())
            guard token != pad else { continue }
            let width = UInt64(randomTokens.count)
            let replaced: Int32 = kind < maskReplace ? maskToken
                : kind < maskReplace + randomReplace && width > 0 ? randomTokens.lowerBound + Int32(replacement % width) : token
            if pick < probability { chosen.append((offset, replaced)) }
            if fallback == nil || pick < fallback!.draw { fallback = (offset, replaced, pick) }
        }
        // A window with real tokens always has one chosen: the one with the smallest draw.
        if chosen.isEmpty, let fallback { chosen.append((fallback.offset, fallback.token)) }
        return chosen
    }

    private func unit(_ random: inout SplitMix64) -> Double { Double(random.next() >> 11) * (1.0 / 9_007_199_254_740_992.0) }
}
