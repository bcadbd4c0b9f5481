import Basics
import ArgumentParser
import Foundation
import Kernels
import Training
import Transformer

struct BenchDecode: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decode",
        abstract: "Time token-by-token decoding of a config's model: with the key/value cache, and rerunning the model without it.",
        discussion: """
            One sequence (batch 1) is decoded from position 0 to --context (default: the model's max_length), taking the \
            most likely token at each step and never stopping at EOS, so both ways decode the same number of tokens. \
            Cached decoding costs O(context) per token; without the cache each token reruns the decoder over the whole \
            prefix. An encoder-decoder model first encodes a random source of data.source_length tokens (not timed). \
            Reports the median of --rounds rounds of each, in tokens/s, and their ratio.

            Example:
              ddp bench decode --config Configs/bench-w2.yaml --threads 1
            """
    )

    /// Its model and data lengths define the workload.
    @OptionGroup var config: ConfigOptions

    @Option(parsing: .unconditional, help: "Positions to decode (default: the model's max_length).")
    var context: Int?

    @OptionGroup var threads: ThreadsOption

    @Option(parsing: .unconditional, help: "Timed rounds of each way (median reported).")
    var rounds = 3

    @Flag(help: "Skip decoding without the cache (it takes O(context²)).")
    var cachedOnly = false

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    func validate() throws {
        guard (1...largestBenchCount).contains(rounds) else { throw ValidationError("--rounds must be 1 to \(largestBenchCount), got \(rounds).") }
        if let context, context < 1 { throw ValidationError("--context must be at least 1, got \(context).") }
    }

    func run() throws {
        try requireOneProcess("ddp bench decode")
        let run = try config.load()
        let config = run.model
        let positions = context ?? config.maxLength
        guard positions <= config.maxLength else {
            throw RunError("--context \(positions) exceeds the model's max_length \(config.maxLength)")
        }
        guard config.kind.hasDecoder else {
            throw RunError("\(self.config.config) is an encoder-only model, which does not decode token by token")
        }
        let threadCount = try threads.apply()
        let isEncoderDecoder = config.kind == .encoderDecoder
        let sourceLength = isEncoderDecoder ? max(1, run.data.sourceLength) : 0
        let model = try TransformerModel(config: config, maxBatch: 1, maxSourceLength: sourceLength, maxTargetLength: positions)
        model.initializeParameters(seed: run.training.seed)
        model.training = false
        var random = SplitMix64(seed: 3)
        let source = (0..<sourceLength).map { $0 == sourceLength - 1 ? SpecialTokens.standard.eos : Int32.random(in: 4..<Int32(config.vocabSize), using: &random) }
        let start: Int32 = isEncoderDecoder ? SpecialTokens.standard.bos : SpecialTokens.standard.eos
        let clock = ContinuousClock()

        let decoder = try IncrementalDecoder(model: model, rows: 1, capacity: positions, maxSourceLength: sourceLength)
        var cachedTimes: [Double] = []
        var cachedTokens: [Int32] = []
        for _ in 0..<rounds {
            if isEncoderDecoder { decoder.encode(source: source, batch: 1, sourceLength: sourceLength) } else { decoder.reset() }
            var tokens = [start]
            let began = clock.now
            while tokens.count <= positions {
                decoder.step([tokens[tokens.count - 1]])
                tokens.append(decoder.withLogits { mostLikelyToken(UnsafeBufferPointer($0)) })
            }
            cachedTimes.append((clock.now - began).seconds)
            cachedTokens = tokens
        }

        var uncachedTimes: [Double] = []
        var agree: Bool?
        if !cachedOnly {
            for _ in 0..<rounds {
                var tokens = [start]
                let began = clock.now
                while tokens.count <= positions {
                    let length = tokens.count
                    model.forward(TokenBatch(batchSize: 1, sourceLength: sourceLength, targetLength: length, source: source,
                                        decoderInput: tokens, labels: [Int32](repeating: SpecialTokens.standard.pad, count: length)))
                    let last = (length - 1) * config.vocabSize
                    tokens.append(model.withLogits { mostLikelyToken(UnsafeBufferPointer(rebasing: $0[last..<(last + config.vocabSize)])) })
                }
                uncachedTimes.append((clock.now - began).seconds)
                agree = tokens == cachedTokens
            }
        }
        let cachedRate = Double(positions) / median(cachedTimes)
        let uncachedRate = uncachedTimes.isEmpty ? nil : Double(positions) / median(uncachedTimes)
        let report = DecodeReport(workload: self.config.config, threads: threadCount, context: positions, rounds: rounds,
                                  cached_tokens_per_s: cachedRate, uncached_tokens_per_s: uncachedRate,
                                  speedup: uncachedRate.map { cachedRate / $0 }, same_tokens: agree)
        print(json ? try jsonLine(report) : report.table())
    }
}

struct DecodeReport: Encodable {
    let workload: String
    let threads: Int
    let context: Int
    let rounds: Int
    let cached_tokens_per_s: Double
    let uncached_tokens_per_s: Double?
    let speedup: Double?
    /// Whether both ways chose the same tokens (they must).
    let same_tokens: Bool?

    func table() -> String {
        var lines = ["workload  \(workload), batch 1, \(context) positions, \(threads) thread(s), median of \(rounds) rounds",
                     String(format: "cached    %.1f tokens/s (key/value cache)", cached_tokens_per_s)]
        if let uncached_tokens_per_s, let speedup {
            lines.append(String(format: "uncached  %.1f tokens/s (whole prefix rerun per token); cache speedup %.1fx", uncached_tokens_per_s, speedup))
        }
        if let same_tokens { lines.append("tokens    " + (same_tokens ? "identical both ways" : "DIFFER between the two ways")) }
        return lines.joined(separator: "\n")
    }
}
