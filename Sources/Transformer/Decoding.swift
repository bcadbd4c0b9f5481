import Basics
import Foundation

/// How a translation is chosen from the model's next-token distributions.
public enum DecodingMethod: Equatable, Sendable {
    /// The most likely token at every step.
    case greedy
    /// Beam search (the paper's: beam 4, α 0.6): `size` hypotheses per source; a finished hypothesis scores
    /// log P / ((5 + |Y|) / 6)^α (Wu et al. 2016), |Y| counting its EOS. Stops once `size` hypotheses have finished.
    case beam(size: Int, lengthPenalty: Double)
}

/// Sampling settings for open-ended generation (decoder-only models).
public struct SamplingSettings: Equatable, Sendable {
    /// Divides the logits; 0 means greedy (always the most likely token).
    public var temperature: Double
    /// Keep only the k most likely tokens (0: all).
    public var topK: Int
    /// Keep the smallest set of most likely tokens whose probability reaches p (1: all).
    public var topP: Double
    /// Seeds the draws: the same seed, prompt and model give the same text.
    public var seed: UInt64

    /// Plain sampling from the whole distribution at temperature 1 unless given.
    public init(temperature: Double = 1, topK: Int = 0, topP: Double = 1, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.seed = seed
    }
}

/// Decoding arguments that cannot work, naming the argument.
public struct DecodingArgumentError: Error, CustomStringConvertible, Sendable {
    /// The argument at fault, as the command line names it (`beam-size`, `prompt`, ...).
    public let argument: String
    /// What is wrong with it.
    public let message: String
    /// "ARGUMENT: MESSAGE".
    public var description: String { "\(argument): \(message)" }
}

/// The index of the largest logit among every token but PAD (the first on ties): greedy decoding's choice.
public func mostLikelyToken(_ row: UnsafeBufferPointer<Float>) -> Int32 {
    var best = 1
    for token in 2..<row.count where row[token] > row[best] { best = token }
    return Int32(best)
}

extension TransformerModel {
    // MARK: Encoder-decoder

    /// Decodes framed, padded sources [B,S] (source + EOS, then PAD) into at most `maxTokens` tokens each (EOS not
    /// included), with a key/value cache: every step feeds one new token per sequence.
    public func decode(source: [Int32], batchSize: Int, sourceLength: Int, maxTokens: Int,
                       method: DecodingMethod = .greedy) throws(DecodingArgumentError) -> [[Int32]] {
        guard config.kind == .encoderDecoder else {
            throw DecodingArgumentError(argument: "model", message: "translation needs an encoder-decoder model; use generation for a decoder-only model")
        }
        guard sourceLength >= 1, sourceLength <= config.maxLength else {
            throw DecodingArgumentError(argument: "source", message: "\(sourceLength) positions (with EOS) exceed the model's max_length \(config.maxLength)")
        }
        let limit = min(maxTokens, config.maxLength)
        guard limit >= 1 else { return [[Int32]](repeating: [], count: batchSize) }
        switch method {
        case .greedy:
            let decoder = try makeDecoder(rows: batchSize, capacity: limit, sourceLength: sourceLength)
            decoder.encode(source: source, batch: batchSize, sourceLength: sourceLength)
            return greedy(decoder, limit: limit)
        case .beam(let size, let alpha):
            guard size >= 1 else { throw DecodingArgumentError(argument: "beam-size", message: "must be at least 1, got \(size)") }
            guard alpha >= 0, alpha.isFinite else { throw DecodingArgumentError(argument: "length-penalty", message: "must be 0 or more, got \(alpha)") }
            let decoder = try makeDecoder(rows: batchSize * size, capacity: limit, sourceLength: sourceLength)
            decoder.encode(source: source, batch: batchSize, sourceLength: sourceLength)
            return beamSearch(decoder, batch: batchSize, beams: size, limit: limit, lengthPenalty: alpha)
        }
    }

    private func makeDecoder(rows: Int, capacity: Int, sourceLength: Int) throws(DecodingArgumentError) -> IncrementalDecoder {
        do {
            return try IncrementalDecoder(model: self, rows: rows, capacity: capacity, maxSourceLength: sourceLength)
        } catch {
            throw DecodingArgumentError(argument: error.key, message: error.message)
        }
    }

    private func greedy(_ decoder: IncrementalDecoder, limit: Int) -> [[Int32]] {
        let rows = decoder.rows, v = config.vocabSize
        var outputs = [[Int32]](repeating: [], count: rows)
        var finished = [Bool](repeating: false, count: rows)
        var last = [Int32](repeating: specialTokens.bos, count: rows)
        for _ in 0..<limit where finished.contains(false) {
            decoder.step(last)
            decoder.withLogits { logits in
                for row in 0..<rows where !finished[row] {
                    let best = mostLikelyToken(UnsafeBufferPointer(rebasing: logits[(row * v)..<((row + 1) * v)]))
                    if best == specialTokens.eos {
                        finished[row] = true
                    } else {
                        outputs[row].append(best)
                        last[row] = best
                    }
                }
            }
        }
        return outputs
    }

    private func beamSearch(_ decoder: IncrementalDecoder, batch: Int, beams: Int, limit: Int, lengthPenalty: Double) -> [[Int32]] {
        var search = BeamSearch(batch: batch, beams: beams, vocabulary: config.vocabSize, lengthPenalty: lengthPenalty, special: specialTokens)
        for length in 0...limit {
            let live = search.liveSources
            if live.isEmpty { break }
            if length == limit {
                search.endLiveHypotheses(of: live, length: length)
                break
            }
            decoder.step(search.lastTokens)
            var order = Array(0..<(batch * beams))
            decoder.withLogits { logits in
                for b in live { search.advance(source: b, logits: UnsafeBufferPointer(logits), length: length, order: &order) }
            }
            decoder.reorder(order)
        }
        return search.best()
    }

    /// The reference for `decode`: greedy decoding that reruns the whole decoder over the prefix at every step
    /// (no cache, O(maxTokens²)); limited by the model's own buffers.
    public func greedyDecodeWithoutCache(source: [Int32], batchSize: Int, sourceLength: Int, maxTokens: Int) -> [[Int32]] {
        let limit = min(maxTokens, maxTargetLength)
        var outputs = [[Int32]](repeating: [], count: batchSize)
        var finished = [Bool](repeating: false, count: batchSize)
        for length in 1...max(1, limit) where finished.contains(false) && limit >= 1 {
            var decoderInput: [Int32] = []
            decoderInput.reserveCapacity(batchSize * length)
            for row in 0..<batchSize {
                let prefix = [specialTokens.bos] + outputs[row]
                decoderInput += prefix + [Int32](repeating: specialTokens.pad, count: length - prefix.count)
            }
            forwardWithoutTraining(TokenBatch(batchSize: batchSize, sourceLength: sourceLength, targetLength: length, source: source,
                                         decoderInput: decoderInput, labels: [Int32](repeating: specialTokens.pad, count: batchSize * length), pad: specialTokens.pad))
            withLogits { logits in
                let v = config.vocabSize
                for row in 0..<batchSize where !finished[row] {
                    let offset = (row * length + outputs[row].count) * v  // the last real input position of this row
                    let best = mostLikelyToken(UnsafeBufferPointer(rebasing: logits[offset..<(offset + v)]))
                    if best == specialTokens.eos { finished[row] = true } else { outputs[row].append(best) }
                }
            }
        }
        return outputs
    }

    func forwardWithoutTraining(_ batch: TokenBatch) {
        withoutTraining { _ = forward(batch) }
    }

    /// Runs `body` with training off (no dropout), then restores the mode.
    func withoutTraining(_ body: () -> Void) {
        let wasTraining = training
        training = false
        defer { training = wasTraining }
        body()
    }

    // MARK: Decoder-only

    /// Continues `prompt` by sampling up to `maxTokens` tokens (stopping at EOS, which is not returned, or once the
    /// context has reached max_length and predicted one last token), calling `onToken` with each as it comes; it returns false to stop early.
    /// An empty prompt starts from EOS, the document separator. `cached: false` reruns the model over the whole
    /// context for every token (the reference the cache must agree with).
    @discardableResult
    public func generate(prompt: [Int32], maxTokens: Int, sampling: SamplingSettings = SamplingSettings(), cached: Bool = true,
                         onToken: (Int32) -> Bool = { _ in true }) throws(DecodingArgumentError) -> [Int32] {
        guard config.kind == .decoderOnly else {
            throw DecodingArgumentError(argument: "model", message: "open-ended generation needs a decoder-only model; translate with an encoder-decoder model")
        }
        guard maxTokens >= 0 else { throw DecodingArgumentError(argument: "max-tokens", message: "must be 0 or more, got \(maxTokens)") }
        guard sampling.temperature >= 0, sampling.temperature.isFinite else {
            throw DecodingArgumentError(argument: "temperature", message: "must be 0 or more, got \(sampling.temperature)")
        }
        guard sampling.topK >= 0 else { throw DecodingArgumentError(argument: "top-k", message: "must be 0 or more, got \(sampling.topK)") }
        guard sampling.topP > 0, sampling.topP <= 1 else { throw DecodingArgumentError(argument: "top-p", message: "must be in (0, 1], got \(sampling.topP)") }
        let context = prompt.isEmpty ? [specialTokens.eos] : prompt
        guard context.count <= config.maxLength else {
            throw DecodingArgumentError(argument: "prompt", message: "\(context.count) tokens exceed the model's max_length \(config.maxLength)")
        }
        if let outside = context.first(where: { $0 < 0 || Int($0) >= config.vocabSize }) {
            throw DecodingArgumentError(argument: "prompt", message: "token id \(outside) is outside the vocabulary of \(config.vocabSize)")
        }
        return try sample(context: context, maxTokens: maxTokens, sampling: sampling, cached: cached, onToken: onToken)
    }

    private func sample(context: [Int32], maxTokens: Int, sampling: SamplingSettings, cached: Bool,
                        onToken: (Int32) -> Bool) throws(DecodingArgumentError) -> [Int32] {
        let positions = min(config.maxLength, context.count + min(maxTokens, config.maxLength))  // (no overflow for any maxTokens)
        var sampler = TokenSampler(settings: sampling, vocabulary: config.vocabSize)
        var generated: [Int32] = []
        var sequence = context
        if cached {
            let decoder = try makeDecoder(rows: 1, capacity: positions, sourceLength: 0)
            decoder.prefill(Array(context.dropLast()))
            var next = context[context.count - 1]
            while generated.count < maxTokens {
                decoder.step([next])
                next = decoder.withLogits { sampler.next(UnsafeBufferPointer($0)) }
                if next == specialTokens.eos { break }
                generated.append(next)
                if !onToken(next) || decoder.length == decoder.capacity { break }
            }
        } else {
            guard maxBatch >= 1, maxTargetLength >= positions else {
                throw DecodingArgumentError(argument: "max-tokens", message: "the model's buffers hold \(maxTargetLength) positions, \(positions) needed")
            }
            while generated.count < maxTokens {
                forwardWithoutTraining(TokenBatch(batchSize: 1, sourceLength: 0, targetLength: sequence.count, source: [], decoderInput: sequence,
                                             labels: [Int32](repeating: specialTokens.pad, count: sequence.count), pad: specialTokens.pad))
                let offset = (sequence.count - 1) * config.vocabSize
                let next = withLogits { sampler.next(UnsafeBufferPointer(rebasing: $0[offset..<(offset + config.vocabSize)])) }
                if next == specialTokens.eos { break }
                generated.append(next)
                sequence.append(next)
                // The last token may come from a full context; it is not fed back.
                if !onToken(next) || sequence.count > positions { break }
            }
        }
        return generated
    }
}

/// Beam search over `batch` sources with `beams` hypotheses each, rows b·beams ..< (b+1)·beams of the decoder
/// belonging to source b.
private struct BeamSearch {
    let batch: Int, beams: Int, vocabulary: Int, lengthPenalty: Double
    /// BOS starts every hypothesis; EOS ends one.
    let special: SpecialTokens
    /// Each row's hypothesis so far (without BOS).
    var hypotheses: [[Int32]]
    /// Each row's summed log-probability; -∞ for an empty slot.
    var scores: [Double]
    /// Each source's finished hypotheses with their normalised scores.
    var finished: [[(tokens: [Int32], score: Double)]]
    /// The token each row feeds next.
    var lastTokens: [Int32]
    private var logProbabilities: [Double]

    init(batch: Int, beams: Int, vocabulary: Int, lengthPenalty: Double, special: SpecialTokens) {
        (self.batch, self.beams, self.vocabulary, self.lengthPenalty, self.special) = (batch, beams, vocabulary, lengthPenalty, special)
        hypotheses = [[Int32]](repeating: [], count: batch * beams)
        // Every beam of a source starts as the same empty hypothesis: only the first may expand at the first step.
        scores = (0..<(batch * beams)).map { $0 % beams == 0 ? 0.0 : -Double.infinity }
        finished = [[(tokens: [Int32], score: Double)]](repeating: [], count: batch)
        lastTokens = [Int32](repeating: special.bos, count: batch * beams)
        logProbabilities = [Double](repeating: 0, count: vocabulary)
    }

    /// Sources with fewer than `beams` finished hypotheses.
    var liveSources: [Int] { (0..<batch).filter { finished[$0].count < beams } }

    /// log P / ((5 + |Y|) / 6)^α (Wu et al. 2016).
    func normalized(_ score: Double, length: Int) -> Double { score / pow((5 + Double(length)) / 6, lengthPenalty) }

    /// Out of room: the live hypotheses of `sources` end here, without EOS.
    mutating func endLiveHypotheses(of sources: [Int], length: Int) {
        for b in sources {
            for j in 0..<beams where scores[b * beams + j] > -.infinity {
                finished[b].append((hypotheses[b * beams + j], normalized(scores[b * beams + j], length: length)))
            }
        }
    }

    /// The 2·beams best continuations over all of source b's hypotheses, best first: enough to keep `beams` alive
    /// even if up to `beams` of them end with EOS.
    private mutating func bestContinuations(of b: Int, logits: UnsafeBufferPointer<Float>) -> [(score: Double, parent: Int, token: Int32)] {
        let v = vocabulary
        var candidates: [(score: Double, parent: Int, token: Int32)] = []
        for j in 0..<beams where scores[b * beams + j] > -.infinity {
            let row = b * beams + j
            logSoftmax(UnsafeBufferPointer(rebasing: logits[(row * v)..<((row + 1) * v)]), into: &logProbabilities)
            for token in 1..<v {
                let score = scores[row] + logProbabilities[token]
                if candidates.count == 2 * beams, score <= candidates[candidates.count - 1].score { continue }
                let at = candidates.firstIndex { $0.score < score } ?? candidates.count
                candidates.insert((score: score, parent: j, token: Int32(token)), at: at)
                if candidates.count > 2 * beams { candidates.removeLast() }
            }
        }
        return candidates
    }

    /// One step for source b given every row's next-token logits [rows, V]: hypotheses ending in EOS among the top
    /// `beams` finish (as fairseq does), the best `beams` others continue; `order[row]` receives the row each
    /// continuing hypothesis came from.
    mutating func advance(source b: Int, logits: UnsafeBufferPointer<Float>, length: Int, order: inout [Int]) {
        var next: [(parent: Int, token: Int32, score: Double)] = []
        for (rank, candidate) in bestContinuations(of: b, logits: logits).enumerated() where next.count < beams {
            if candidate.token == special.eos {
                if rank < beams {
                    finished[b].append((hypotheses[b * beams + candidate.parent], normalized(candidate.score, length: length + 1)))
                }
            } else {
                next.append((candidate.parent, candidate.token, candidate.score))
            }
        }
        var extended = [[Int32]]()
        for j in 0..<beams {
            let row = b * beams + j
            if j < next.count {
                order[row] = b * beams + next[j].parent
                extended.append(hypotheses[order[row]] + [next[j].token])
                scores[row] = next[j].score
                lastTokens[row] = next[j].token
            } else {
                extended.append([])
                scores[row] = -.infinity
            }
        }
        for j in 0..<beams { hypotheses[b * beams + j] = extended[j] }
    }

    /// Each source's best finished hypothesis (the first on ties; empty if none finished).
    func best() -> [[Int32]] {
        finished.map { list in
            var best = list.first
            for entry in list.dropFirst() where entry.score > best!.score { best = entry }
            return best?.tokens ?? []
        }
    }
}

/// Draws next tokens from logits by temperature, top-k and top-p, deterministic in the seed. PAD is never drawn.
struct TokenSampler {
    let settings: SamplingSettings
    var random: SplitMix64
    private var weights: [Double]

    init(settings: SamplingSettings, vocabulary: Int) {
        self.settings = settings
        random = SplitMix64(seed: settings.seed)
        weights = [Double](repeating: 0, count: vocabulary)
    }

    mutating func next(_ logits: UnsafeBufferPointer<Float>) -> Int32 {
        if settings.temperature == 0 { return mostLikelyToken(logits) }
        var order = Array(1..<logits.count)
        order.sort { logits[$0] != logits[$1] ? logits[$0] > logits[$1] : $0 < $1 }
        var kept = settings.topK > 0 ? min(settings.topK, order.count) : order.count
        let top = Double(logits[order[0]])
        var total = 0.0
        for i in 0..<kept {
            weights[i] = exp((Double(logits[order[i]]) - top) / settings.temperature)
            total += weights[i]
        }
        if settings.topP < 1 {
            // The smallest prefix of the sorted tokens whose probability reaches top_p.
            var cumulative = 0.0
            for i in 0..<kept {
                cumulative += weights[i] / total
                if cumulative >= settings.topP {
                    kept = i + 1
                    break
                }
            }
            total = weights[0..<kept].reduce(0, +)
        }
        var draw = Double(random.next() >> 11) * 0x1p-53 * total
        for i in 0..<kept {
            draw -= weights[i]
            if draw < 0 { return Int32(order[i]) }
        }
        return Int32(order[kept - 1])
    }
}

/// out[j] = log softmax(row)[j], in Double.
func logSoftmax(_ row: UnsafeBufferPointer<Float>, into out: inout [Double]) {
    var maximum = -Float.infinity
    for value in row { maximum = max(maximum, value) }
    var total = 0.0
    for value in row { total += exp(Double(value - maximum)) }
    let logTotal = log(total) + Double(maximum)
    for j in 0..<row.count { out[j] = Double(row[j]) - logTotal }
}
