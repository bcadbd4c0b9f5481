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

            Example:
              ddp bench data --data data/reverse --config Configs/tiny.yaml --batches 200
            """
    )

    @Option(help: "A dataset directory (train-*.h5).")
    var data: String

    /// Its training.batch_size and data lengths give the batches' shape.
    @OptionGroup var config: ConfigOptions

    @Option(help: "Batches to time.")
    var batches = 200

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    func validate() throws {
        guard batches >= 1 else { throw ValidationError("--batches must be at least 1, got \(batches).") }
    }

    func run() throws {
        let run = try config.load()
        let isLM = run.model.kind.readsTokenStream
        let clock = ContinuousClock()
        let start = clock.now
        let split = try DataSplit(directory: data, split: "train", sequenceLength: isLM ? run.data.targetLength : 0)
        let validation = (clock.now - start).seconds
        let sampler = DistributedSampler(samples: split.samples, seed: run.training.seed, perRankBatch: run.training.batchSize,
                                         worldSize: 1, accumulationSteps: 1)
        guard sampler.batchesPerEpoch >= 1 else {
            throw DataError(file: data, "the train split has \(split.samples) samples, fewer than one batch of \(run.training.batchSize) "
                                        + "(training.batch_size)")
        }
        let plan = RankPlan(sampler: sampler, start: SamplerPosition(), updates: batches, rank: 0, worldSize: 1, accumulationSteps: 1,
                            perRankBatch: run.training.batchSize)
        let loader = BatchLoader(split: split, maxSourceLength: run.data.sourceLength, maxTargetLength: run.data.targetLength,
                                 capacity: 8) { plan.next() }
        defer { loader.stop() }
        var tokens = 0, count = 0
        let readStart = clock.now
        while let batch = try loader.next() {
            tokens += batch.targetTokens
            count += 1
        }
        let seconds = (clock.now - readStart).seconds
        let report = DataReport(data: data, batches: count, batch_size: run.training.batchSize, seconds: seconds,
                                batches_per_s: Double(count) / seconds, tokens_per_s: Double(tokens) / seconds,
                                validation_seconds: validation, samples: split.samples)
        if json {
            print(try jsonLine(report))
        } else {
            print("""
                data        \(data): \(split.samples) samples in \(split.shards.count) shard(s), validated in \(String(format: "%.2f", validation)) s
                loader      \(count) batches of \(run.training.batchSize) in \(String(format: "%.3f", seconds)) s
                throughput  \(String(format: "%.1f", report.batches_per_s)) batches/s, \(String(format: "%.0f", report.tokens_per_s)) target tokens/s
                """)
        }
    }
}

struct DataReport: Encodable {
    let data: String
    let batches: Int
    let batch_size: Int
    let seconds: Double
    let batches_per_s: Double
    let tokens_per_s: Double
    let validation_seconds: Double
    let samples: Int
}
