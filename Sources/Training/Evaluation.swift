import Data
import Foundation
import MPI
import Transformer

/// Loss, perplexity and token accuracy over a split (plain cross-entropy over real target tokens, DESIGN.md);
/// seq2seq adds exact match and corpus BLEU of decoded examples.
public struct Evaluation: Sendable, Equatable, Codable {
    public var loss: Double
    public var perplexity: Double
    public var tokenAccuracy: Double
    public var tokens: Int
    public var sequences: Int
    /// seq2seq: the share of decoded examples equal to their target, and corpus BLEU over them.
    public var exactMatch: Double?
    public var bleu: Double?
    /// seq2seq: how many examples were decoded for exactMatch and bleu.
    public var decoded: Int?
}

/// What an evaluation covers and how it decodes.
public struct EvaluationPlan: Sendable {
    public var batchSize: Int
    public var sourceLength: Int
    public var targetLength: Int
    /// Batches per rank for the loss (0: the whole split).
    public var maxBatches: Int
    /// seq2seq: the first N examples are decoded and scored (Int.max: all).
    public var decodeSamples: Int
    public var decoding: DecodingMethod

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
public func evaluate(_ model: TransformerModel, on split: DataSplit, plan: EvaluationPlan, world: Communicator) throws -> Evaluation {
    let wasTraining = model.training
    model.training = false
    defer { model.training = wasTraining }
    let indices = DistributedSampler.evaluationIndices(samples: split.samples, rank: world.rank, worldSize: world.size)
    var batches = stride(from: 0, to: indices.count, by: plan.batchSize).map {
        Array(indices[$0..<min(indices.count, $0 + plan.batchSize)])
    }
    if plan.maxBatches > 0 { batches = Array(batches.prefix(plan.maxBatches)) }
    let list = ListPlan(batches)
    let loader = BatchLoader(split: split, maxSourceLength: plan.sourceLength, maxTargetLength: plan.targetLength) { list.next() }
    defer { loader.stop() }
    var sums = [0.0, 0.0, 0.0, 0.0]  // loss, tokens, correct, sequences
    while let tokenBatch = try loader.next() {
        let result = model.forward(Batch(tokenBatch))
        sums[0] += result.loss
        sums[1] += Double(result.tokens)
        sums[2] += Double(result.correct)
        sums[3] += Double(tokenBatch.batchSize)
    }
    try world.allreduce(&sums, op: .sum)
    let loss = sums[1] > 0 ? sums[0] / sums[1] : 0
    var result = Evaluation(loss: loss, perplexity: exp(loss), tokenAccuracy: sums[1] > 0 ? sums[2] / sums[1] : 0,
                            tokens: Int(sums[1]), sequences: Int(sums[3]))
    if split.task == .seq2seq && plan.decodeSamples > 0 {
        (result.exactMatch, result.bleu, result.decoded) = try decodingScores(model, on: split, plan: plan, world: world)
    }
    return result
}

/// Decodes the first `plan.decodeSamples` examples (split across ranks) and scores them against their targets:
/// exact match on token ids, corpus BLEU on the decoded text.
private func decodingScores(_ model: TransformerModel, on split: DataSplit, plan: EvaluationPlan,
                            world: Communicator) throws -> (exactMatch: Double, bleu: Double, decoded: Int) {
    let reader = try SampleReader(split: split)
    let mine = DistributedSampler.evaluationIndices(samples: min(split.samples, plan.decodeSamples), rank: world.rank, worldSize: world.size)
    var counts = [0.0, 0.0]  // exact, decoded
    var bleu = BLEUStatistics()
    for start in stride(from: 0, to: mine.count, by: plan.batchSize) {
        let chunk = Array(mine[start..<min(mine.count, start + plan.batchSize)])
        let batch = try reader.batch(chunk, maxSourceLength: plan.sourceLength, maxTargetLength: plan.targetLength)
        let outputs = try model.decode(source: batch.source, batchSize: batch.batchSize, sourceLength: batch.sourceLength,
                                       maxLength: plan.targetLength - 1, method: plan.decoding)
        for row in chunk.indices {
            // The batch's labels are target + EOS, padded: the target needs no second read.
            let labels = batch.labels[(row * batch.targetLength)..<((row + 1) * batch.targetLength)]
            let target = Array(labels.prefix { $0 != Transformer.SpecialToken.eos })
            counts[0] += outputs[row] == target ? 1 : 0
            counts[1] += 1
            bleu.add(hypothesis: split.tokenizer.decode(outputs[row]), reference: split.tokenizer.decode(target))
        }
    }
    var totals = counts + bleu.vector
    try world.allreduce(&totals, op: .sum)
    return (totals[1] > 0 ? totals[0] / totals[1] : 0, BLEUStatistics(vector: Array(totals[2...])).score, Int(totals[1]))
}
