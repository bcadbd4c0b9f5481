import ArgumentParser
import Data
import Training
import Foundation

struct BenchData: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "data",
        abstract: "Measure the data loader alone: batches/s and tokens/s for a config's batch shape.",
        discussion: """
            Reads the train split of --data with the config's training.batch_size and data lengths, through the same \
            background loader training uses (validation first, then hyperslab reads and batching), in a fresh \
            random order. Compare the tokens/s with `ddp bench step`: the loader must never be what a step waits for.

            It also reports the share of computed positions (source and decoder, padding included) that are padding \
            over one epoch, under both batchings: training.batch_size random sequences per batch, and token-budget \
            batches of similar length (training.max_tokens; when the config has none, batch_size x the longer of the \
            data lengths, the most positions a fixed-count batch can hold). With training.length_groups, each \
            token-budget batch counts as that many micro-batches, each padded to its own longest sample, as training \
            computes it on ranks x grad_accum = length_groups. The loader is timed with the config's own batching (on one \
            rank, length_groups micro-batches per batch).

            Example:
              ddp bench data --data data/reverse --config Configs/tiny.yaml --batches 200
            """
    )

    @Option(help: "A dataset directory (train-*.h5).")
    var data: String

    /// Its training.batch_size and data lengths give the batches' shape.
    @OptionGroup var config: ConfigOptions

    @Option(parsing: .unconditional, help: "Batches to time (global batches; with training.length_groups, each loads as that many micro-batches).")
    var batches = 200

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    func validate() throws {
        guard (1...largestBenchCount).contains(batches) else { throw ValidationError("--batches must be 1 to \(largestBenchCount), got \(batches).") }
    }

    func run() throws {
        try requireOneProcess("ddp bench data")
        let run = try config.load()
        let isLM = run.model.kind.readsTokenStream
        let clock = ContinuousClock()
        let start = clock.now
        try run.model.kind.requireData(try DataSplit.firstShard(directory: data, split: "train")?.task, in: data)
        let split = try DataSplit(directory: data, split: "train", sequenceLength: run.data.targetLength)
        let validation = (clock.now - start).seconds
        let fixed = DistributedSampler(samples: split.samples, seed: run.training.seed, perRankBatch: run.training.batchSize,
                                       worldSize: 1, accumulationSteps: 1)
        guard fixed.batchesPerEpoch >= 1 else {
            throw DataError(file: data, "the train split has \(split.samples) samples, fewer than one batch of \(run.training.batchSize) "
                                        + "(training.batch_size)")
        }
        // Positions per sample on each side: source + EOS and BOS + target (a language model's windows: the context).
        let reader = try SampleReader(split: split)
        // As `ddp train` does: a pair the model cannot take is named now, whatever --batches reaches.
        try reader.checkFits(maxSourceLength: run.data.sourceLength, maxTargetLength: run.data.targetLength)
        let stored = isLM ? [] : reader.allLengths()
        let lengths = isLM ? [(source: Int, target: Int)](repeating: (0, run.data.targetLength), count: split.samples)
                           : stored.map { (source: $0.source + 1, target: $0.target + 1) }
        // Without max_tokens in the config: the most positions a fixed-count batch can hold (and at least the longest sample).
        let longest = lengths.map { max($0.source, $0.target) }.max() ?? 0
        let maxTokens = run.training.maxTokens ?? max(longest, run.training.batchSize * max(run.data.sourceLength, run.data.targetLength))
        let groups = run.training.lengthGroups
        let budget: TokenBudgetSampler
        do {
            budget = isLM ? try TokenBudgetSampler(lengths: lengths.map(\.target), seed: run.training.seed, maxTokens: maxTokens, groups: groups)
                          : try TokenBudgetSampler(pairs: stored, seed: run.training.seed, maxTokens: maxTokens, groups: groups)
        } catch {
            throw DataError(file: split.locate(error.index)?.shard.path ?? data,
                            "\(isLM ? "window" : "pair") \(split.locate(error.index)?.local ?? error.index) takes \(error.positions) positions, "
                            + error.exceeded)
        }
        let sampler: any TrainingSampler = run.training.maxTokens == nil ? fixed : budget
        // One rank takes a budget batch as one micro-batch per group, as ranks x grad_accum = length_groups would.
        let microBatches = run.training.maxTokens == nil ? 1 : groups
        let plan = RankPlan(sampler: sampler, start: SamplerPosition(), updates: batches, rank: 0, worldSize: 1,
                            accumulationSteps: microBatches)
        let loader = BatchLoader(split: split, maxSourceLength: run.data.sourceLength, maxTargetLength: run.data.targetLength,
                                 capacity: 8) { plan.next() }
        defer { loader.stop() }
        var tokens = 0, count = 0  // `count` micro-batches
        let readStart = clock.now
        while let batch = try loader.next() {
            tokens += batch.targetTokens
            count += 1
        }
        let seconds = (clock.now - readStart).seconds
        let report = DataReport(data: data, batches: count / microBatches, micro_batches: count, batch_size: run.training.batchSize, seconds: seconds,
                                batches_per_s: Double(count) / seconds, tokens_per_s: Double(tokens) / seconds,
                                validation_seconds: validation, samples: split.samples,
                                padding_share_batch_size: paddingShare(fixed.globalBatches(epoch: 0), lengths),
                                padding_share_max_tokens: paddingShare(budget.globalBatches(epoch: 0).flatMap { budget.split($0, parts: groups) }, lengths),
                                max_tokens: maxTokens, length_groups: groups, max_tokens_batches: budget.batchesPerEpoch)
        if json {
            print(try jsonLine(report))
        } else {
            print("""
                data        \(data): \(split.samples) samples in \(split.shards.count) shard(s), validated in \(String(format: "%.2f", validation)) s
                loader      \(report.batches) batches (\(run.training.maxTokens.map { "max_tokens \($0)" + (groups > 1 ? ", each \(groups) micro-batches of one length group" : "") } ?? "batch_size \(run.training.batchSize)")) in \(String(format: "%.3f", seconds)) s
                throughput  \(String(format: "%.1f", report.batches_per_s)) batches/s, \(String(format: "%.0f", report.tokens_per_s)) target tokens/s
                padding     \(String(format: "%.1f", 100 * report.padding_share_batch_size))% of computed positions with batch_size \(run.training.batchSize) (\(fixed.batchesPerEpoch) batches per epoch), \
                \(String(format: "%.1f", 100 * report.padding_share_max_tokens))% with max_tokens \(maxTokens)\(groups > 1 ? " in \(groups) length groups" : "") (\(budget.batchesPerEpoch) batches per epoch)
                """)
        }
    }

    /// The share of positions computed over `batches` (rows x (longest source + longest decoder side)) that are padding.
    private func paddingShare(_ batches: [[Int]], _ lengths: [(source: Int, target: Int)]) -> Double {
        var computed = 0, real = 0
        for batch in batches {
            let rows = batch.map { lengths[$0] }
            computed += rows.count * ((rows.map(\.source).max() ?? 0) + (rows.map(\.target).max() ?? 0))
            real += rows.reduce(0) { $0 + $1.source + $1.target }
        }
        return computed > 0 ? 1 - Double(real) / Double(computed) : 0
    }
}

struct DataReport: Encodable {
    let data: String
    /// Global batches loaded.
    let batches: Int
    /// Micro-batches loaded: `batches` x training.length_groups with max_tokens, else `batches`.
    let micro_batches: Int
    let batch_size: Int
    let seconds: Double
    let batches_per_s: Double
    let tokens_per_s: Double
    let validation_seconds: Double
    let samples: Int
    /// Over one epoch: the share of computed positions that are padding with `batch_size` random sequences per batch.
    let padding_share_batch_size: Double
    /// The same with token-budget batches of at most `max_tokens` positions, each cut into its `length_groups` micro-batches.
    let padding_share_max_tokens: Double
    let max_tokens: Int
    let length_groups: Int
    let max_tokens_batches: Int
}
