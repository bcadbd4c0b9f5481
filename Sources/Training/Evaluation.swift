import Basics
import Data
import Foundation
import MPI
import Transformer

/// Loss, perplexity and token accuracy over a split (plain cross-entropy over real target tokens, no label
/// smoothing); seq2seq adds exact match, corpus BLEU and chrF of decoded examples, as sacrebleu computes them.
public struct Evaluation: Sendable, Equatable {
    /// Mean cross-entropy per real target token (nats).
    public var loss: Double
    /// exp(loss); infinite for a diverged model.
    public var perplexity: Double
    /// Share of real target tokens whose most likely prediction is the target.
    public var tokenAccuracy: Double
    /// Real (non-PAD) target tokens the loss and accuracy are averaged over, summed over all ranks.
    public var targetTokens: Int
    /// Samples evaluated for the loss, summed over all ranks.
    public var sequences: Int
    /// seq2seq: the share of decoded examples equal to their target.
    public var exactMatch: Double?
    /// seq2seq: corpus BLEU-4 over the decoded examples, 0...100, as sacrebleu computes it (`bleuSignature`).
    public var bleu: Double?
    /// seq2seq: why BLEU is 0 whatever the output, when it is (for example, no hypothesis has four words).
    public var bleuNote: String?
    /// seq2seq: sacrebleu's signature of `bleu`, for example `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`.
    public var bleuSignature: String?
    /// seq2seq: corpus chrF (sacrebleu's defaults) over the decoded examples, 0...100.
    public var chrF: Double?
    /// seq2seq: sacrebleu's signature of `chrF`.
    public var chrFSignature: String?
    /// seq2seq: how many examples were decoded for the scores above.
    public var decoded: Int?
    /// seq2seq with `EvaluationPlan.gatherTexts`, on rank 0: the decoded examples' text in split order.
    public var texts: DecodedTexts?

    /// "BLEU 27.31 (tok:13a)", with the reason when it is 0 whatever the output.
    public var bleuText: String {
        guard let bleu else { return "BLEU not computed" }
        let tokenization = bleuSignature.flatMap { $0.split(separator: "|").first { $0.hasPrefix("tok:") } } ?? ""
        return String(format: "BLEU %.2f", bleu) + " (\(tokenization)" + (bleuNote.map { "; \($0)" } ?? "") + ")"
    }
}

/// The text of decoded seq2seq examples, one entry per example in split order: what `ddp eval --hypotheses`,
/// `--references` and `--sources` write, and exactly the strings BLEU and chrF scored (a line break of any kind
/// inside a decoded text is a space, so that every example stays one line of a file for any reader).
public struct DecodedTexts: Sendable, Equatable {
    /// The model's outputs, decoded.
    public var hypotheses: [String] = []
    /// The targets.
    public var references: [String] = []
    /// The sources (without EOS).
    public var sources: [String] = []

    /// No examples.
    public init() {}

    /// `text` as one line: every character Python's `str.splitlines` breaks at (LF, CR, VT, FF, U+001C-U+001E,
    /// NEL, U+2028, U+2029) becomes a space. All are whitespace to every BLEU tokenizer and to chrF, so the scores
    /// do not change.
    public static func line(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: isLineBreak) else { return text }
        return String(String.UnicodeScalarView(text.unicodeScalars.map { isLineBreak($0) ? " " : $0 }))
    }

    private static func isLineBreak(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x0A...0x0D, 0x1C...0x1E, 0x85, 0x2028, 0x2029: true
        default: false
        }
    }
}

/// An evaluation that failed on at least one rank: every rank raises it together, with the first failing rank's
/// message, so the trainer can report it and go on (evaluation never costs trained state).
public struct EvaluationFailed: ErrorOnEveryRank, CustomStringConvertible, Sendable {
    /// The first failing rank's error, prefixed with "rank N: " when there is more than one rank.
    public let message: String
    /// The message as it stands (it already names the failing rank when there are several).
    public var description: String { message }
}

/// What an evaluation covers and how it decodes.
public struct EvaluationPlan: Sendable {
    /// Sequences per rank per batch, for the loss and for decoding.
    public var batchSize: Int
    /// Longest encoder input in tokens, EOS included (`data.source_length`); a longer source is an error, not cut.
    public var sourceLength: Int
    /// Longest decoder input in tokens, BOS included (`data.target_length`); decoding generates at most one fewer.
    public var targetLength: Int
    /// Batches per rank for the loss (0: the whole split).
    public var maxBatches: Int
    /// seq2seq: the first N examples are decoded and scored (Int.max: all).
    public var decodeSamples: Int
    /// How seq2seq examples are decoded for exact match, BLEU and chrF (greedy by default).
    public var decoding: DecodingMethod
    /// How BLEU cuts text into words (sacrebleu's `tokenize`; 13a, its default, unless asked otherwise).
    public var bleuTokenization = BLEUTokenization.mteval13a
    /// seq2seq: gather the decoded examples' text to rank 0 (`Evaluation.texts`).
    public var gatherTexts = false
    /// Encoder-only models: the masked-LM recipe and the seed of the evaluation's fixed masks (epoch 0): the loss,
    /// perplexity and accuracy are then over the chosen positions.
    public var masking: (recipe: MaskedLanguageModeling, seed: UInt64)?

    /// A plan; by default the whole split for the loss, every example decoded, greedily.
    public init(batchSize: Int, sourceLength: Int, targetLength: Int, maxBatches: Int = 0, decodeSamples: Int = .max,
                decoding: DecodingMethod = .greedy) {
        self.batchSize = batchSize
        self.sourceLength = sourceLength
        self.targetLength = targetLength
        self.maxBatches = maxBatches
        self.decodeSamples = decodeSamples
        self.decoding = decoding
    }
}

/// Evaluates `model` on `split`, every example once across the ranks of `world` (alone: world size 1); sums are
/// all-reduced, so every rank returns the same numbers, and they do not depend on the number of ranks.
///
/// A rank whose share fails (an unreadable shard, say) still joins the sums, so no rank is left waiting: then every
/// rank throws `EvaluationFailed` with that rank's message. With a `watchdog`, each rank's share runs as local work
/// and the sums wait on the others' word, so a long evaluation is not taken for a stall.
public func evaluate(_ model: TransformerModel, on split: DataSplit, plan: EvaluationPlan, world: Communicator,
                     watchdog: CollectiveWatchdog? = nil) throws -> Evaluation {
    let wasTraining = model.training
    model.training = false
    defer { model.training = wasTraining }
    let sumAcrossRanks = { (values: inout [Double], phase: String) throws in
        if let watchdog { try watchdog.allreduce(&values, phase: phase) } else { try world.allreduce(&values, op: .sum) }
    }

    var sums = [0.0, 0.0, 0.0, 0.0]  // loss, target tokens, correct, sequences
    let lossFailure = attempt(watchdog) { try lossSums(model, on: split, plan: plan, world: world, into: &sums) }
    try agree(on: lossFailure, sums: &sums, world: world, sumAcrossRanks: sumAcrossRanks, phase: "evaluation loss")
    let loss = sums[1] > 0 ? sums[0] / sums[1] : 0
    var result = Evaluation(loss: loss, perplexity: exp(loss), tokenAccuracy: sums[1] > 0 ? sums[2] / sums[1] : 0,
                            targetTokens: Int(sums[1]), sequences: Int(sums[3]))
    guard split.task == .seq2seq && plan.decodeSamples > 0 else { return result }

    var bleu = BLEUStatistics(tokenization: plan.bleuTokenization), chrF = CHRFStatistics()
    var counts = [0.0, 0.0]  // exact, decoded
    var texts = DecodedTexts()
    let decodingFailure = attempt(watchdog) {
        try decodeAndScore(model, on: split, plan: plan, world: world, counts: &counts, bleu: &bleu, chrF: &chrF, texts: &texts)
    }
    var totals = counts + bleu.vector + chrF.vector
    try agree(on: decodingFailure, sums: &totals, world: world, sumAcrossRanks: sumAcrossRanks, phase: "evaluation decoding")
    let corpusBLEU = BLEUStatistics(vector: Array(totals[2..<(2 + bleu.vector.count)]), tokenization: plan.bleuTokenization)
    result.exactMatch = totals[1] > 0 ? totals[0] / totals[1] : 0
    result.bleu = corpusBLEU.score
    result.bleuNote = corpusBLEU.zeroReason
    result.bleuSignature = corpusBLEU.signature
    result.chrF = CHRFStatistics(vector: Array(totals[(2 + bleu.vector.count)...])).score
    result.chrFSignature = CHRFStatistics.signature
    result.decoded = Int(totals[1])
    if plan.gatherTexts { result.texts = try gather(texts, world: world) }
    return result
}

/// Every rank's decoded texts on rank 0, in split order (rank r decoded examples r, r + W, ...); nil elsewhere.
private func gather(_ texts: DecodedTexts, world: Communicator) throws -> DecodedTexts? {
    let mine = try JSONEncoder().encode([texts.hypotheses, texts.references, texts.sources])
    let shares = try world.gather(bytes: Array(mine), root: 0)
    guard world.rank == 0 else { return nil }
    let perRank = try shares.map { try JSONDecoder().decode([[String]].self, from: Data($0)) }
    var gathered = DecodedTexts()
    let total = perRank.reduce(0) { $0 + $1[0].count }
    for index in 0..<total {
        let share = perRank[index % world.size], position = index / world.size
        gathered.hypotheses.append(share[0][position])
        gathered.references.append(share[1][position])
        gathered.sources.append(share[2][position])
    }
    return gathered
}

/// `indices` ordered by the positions of their longer side (or, for decoding, whose cost the source and the output
/// decide, of their source; equal lengths by index), so that batches cut from them pad little: every number an
/// evaluation reports is a sum over samples, the same in any order (up to rounding).
private func byLength(_ indices: [Int], reader: SampleReader, sourceOnly: Bool = false) -> [Int] {
    let longer = indices.map { index in
        let lengths = reader.lengths(index)
        return sourceOnly ? lengths.source : max(lengths.source, lengths.target)
    }
    return indices.indices.sorted { (longer[$0], indices[$0]) < (longer[$1], indices[$1]) }.map { indices[$0] }
}

/// Runs a rank's share of an evaluation (as local work when there is a watchdog) and returns its error, if any.
private func attempt(_ watchdog: CollectiveWatchdog?, _ body: () throws -> Void) -> Error? {
    do {
        if let watchdog { try watchdog.working(body) } else { try body() }
        return nil
    } catch {
        return error
    }
}

/// Sums `sums` with a failure count over every rank; if any rank failed, every rank throws the first failing
/// rank's message.
private func agree(on failure: Error?, sums: inout [Double], world: Communicator,
                   sumAcrossRanks: (inout [Double], String) throws -> Void, phase: String) throws {
    var failed = [Double](repeating: 0, count: world.size)
    if failure != nil { failed[world.rank] = 1 }
    var values = sums + failed
    try sumAcrossRanks(&values, phase)
    sums = Array(values.prefix(sums.count))
    guard let first = values[sums.count...].firstIndex(where: { $0 > 0 }).map({ $0 - sums.count }) else { return }
    let message = try world.broadcast(failure.map { "\($0)" } ?? "", root: first)
    throw EvaluationFailed(message: world.size > 1 ? "on rank \(first), \(message)" : message)
}

/// Rows to allocate for evaluating `samples` items split over `worldSize` ranks in batches of `batchSize`: no more
/// than a rank's share can fill (a batch size derived from a token budget can be far larger than a small split).
public func evaluationRows(batchSize: Int, samples: Int, worldSize: Int) -> Int {
    max(1, min(batchSize, (samples + worldSize - 1) / worldSize))
}

/// This rank's loss, token, correct-token and sequence counts.
private func lossSums(_ model: TransformerModel, on split: DataSplit, plan: EvaluationPlan, world: Communicator,
                      into sums: inout [Double]) throws {
    var mine = DistributedSampler.evaluationIndices(samples: split.samples, rank: world.rank, worldSize: world.size)
    // eval.max_batches takes the first samples of the split (then ordered by length), not the shortest ones.
    if plan.maxBatches > 0 { mine = Array(mine.prefix(plan.maxBatches * plan.batchSize)) }
    let reader = try SampleReader(split: split)
    // The whole split first, from its offsets: a pair too long for the model is named (in index order) before any
    // of the evaluation runs, not when its length-ordered batch comes last.
    try reader.checkFits(maxSourceLength: plan.sourceLength, maxTargetLength: plan.targetLength)
    let indices = byLength(mine, reader: reader)
    let batches = stride(from: 0, to: indices.count, by: plan.batchSize).map {
        Array(indices[$0..<min(indices.count, $0 + plan.batchSize)])
    }
    let list = ListPlan(batches)
    let loader = BatchLoader(split: split, maxSourceLength: plan.sourceLength, maxTargetLength: plan.targetLength) { list.next() }
    defer { loader.stop() }
    while let read = try loader.next() {
        let batch = plan.masking.map { $0.recipe.apply(to: read, seed: $0.seed, epoch: 0) } ?? read
        let result = model.forward(batch)
        sums[0] += result.loss
        sums[1] += Double(result.targetTokens)
        sums[2] += Double(result.correct)
        sums[3] += Double(batch.batchSize)
    }
}

/// Decodes this rank's share of the first `plan.decodeSamples` examples and scores them against their targets:
/// exact match on token ids, BLEU and chrF on the decoded text.
private func decodeAndScore(_ model: TransformerModel, on split: DataSplit, plan: EvaluationPlan, world: Communicator,
                            counts: inout [Double], bleu: inout BLEUStatistics, chrF: inout CHRFStatistics,
                            texts: inout DecodedTexts) throws {
    let reader = try SampleReader(split: split)
    let mine = byLength(DistributedSampler.evaluationIndices(samples: min(split.samples, plan.decodeSamples), rank: world.rank,
                                                             worldSize: world.size), reader: reader, sourceOnly: true)
    var textsByIndex: [(index: Int, hypothesis: String, reference: String, source: String)] = []
    for start in stride(from: 0, to: mine.count, by: plan.batchSize) {
        let chunk = Array(mine[start..<min(mine.count, start + plan.batchSize)])
        let batch = try reader.batch(chunk, maxSourceLength: plan.sourceLength, maxTargetLength: plan.targetLength)
        let outputs = try model.decode(source: batch.source, batchSize: batch.batchSize, sourceLength: batch.sourceLength,
                                       maxTokens: plan.targetLength - 1, method: plan.decoding)
        for row in chunk.indices {
            // The batch's labels are target + EOS, padded: the target needs no second read.
            let labels = batch.labels[(row * batch.targetLength)..<((row + 1) * batch.targetLength)]
            let target = Array(labels.prefix { $0 != split.tokenizer.specialTokens.eos })
            counts[0] += outputs[row] == target ? 1 : 0
            counts[1] += 1
            let hypothesis = DecodedTexts.line(split.tokenizer.decode(outputs[row]))
            let reference = DecodedTexts.line(split.tokenizer.decode(target))
            bleu.add(hypothesis: hypothesis, reference: reference)
            chrF.add(hypothesis: hypothesis, reference: reference)
            if plan.gatherTexts {
                let source = batch.source[(row * batch.sourceLength)..<((row + 1) * batch.sourceLength)]
                textsByIndex.append((chunk[row], hypothesis, reference,
                                     DecodedTexts.line(split.tokenizer.decode(Array(source.prefix { $0 != split.tokenizer.specialTokens.eos })))))
            }
        }
    }
    // Decoded by length; kept in split order.
    for entry in textsByIndex.sorted(by: { $0.index < $1.index }) {
        texts.hypotheses.append(entry.hypothesis)
        texts.references.append(entry.reference)
        texts.sources.append(entry.source)
    }
}
