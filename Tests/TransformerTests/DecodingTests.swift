import Basics
import Foundation
import Kernels
import Transformer
import XCTest

/// Incremental decoding with a key/value cache against rerunning the whole model, and beam search against greedy
/// decoding and an exhaustive search.
final class DecodingTests: XCTestCase {
    override func setUp() { setBLASThreads(1) }

    private func model(_ kind: ModelConfig.Kind, norm: ModelConfig.Norm, positions: ModelConfig.Positions, vocabulary: Int = 40,
                       activation: ModelConfig.Activation = .gelu, tied: Bool = true, seed: UInt64 = 5) throws -> TransformerModel {
        let config = ModelConfig(kind: kind, vocabSize: vocabulary, dModel: 16, heads: 4, encoderLayers: kind == .encoderDecoder ? 2 : 0,
                                 decoderLayers: 2, dFF: 32, activation: activation, norm: norm, positions: positions, maxLength: 12,
                                 dropout: 0.1, tiedEmbeddings: tied)
        let model = try TransformerModel(config: config, maxBatch: 3, maxSourceLength: kind == .encoderDecoder ? 6 : 0, maxTargetLength: 12)
        model.initializeParameters(seed: seed)
        // Sharper distributions than a fresh initialisation gives, so near-ties do not decide the comparison.
        let embed = model.parameters["embed.weight"]
        for i in embed.indices { embed[i] *= 4 }
        return model
    }

    /// Three sources of different lengths, framed (source + EOS) and padded.
    private let sources: [Int32] = [5, 6, 7, 8, 9, 2, 10, 11, 2, 0, 0, 0, 12, 13, 14, 2, 0, 0]

    /// Every position's logits from the cache equal those of one forward pass over the teacher-forced sequence.
    func testCachedStepLogitsMatchTheFullForward() throws {
        for (kind, norm, positions) in [(ModelConfig.Kind.encoderDecoder, ModelConfig.Norm.post, ModelConfig.Positions.sinusoidal),
                                        (.encoderDecoder, .pre, .learned), (.decoderOnly, .pre, .learned), (.decoderOnly, .post, .sinusoidal)] {
            let model = try model(kind, norm: norm, positions: positions, tied: norm == .pre)
            let time = 7
            var random = SplitMix64(seed: 9)
            let inputs = (0..<(3 * time)).map { _ in Int32(4 + random.next() % 36) }
            let source = kind == .encoderDecoder ? sources : []
            model.training = false
            model.forward(TokenBatch(batchSize: 3, sourceLength: kind == .encoderDecoder ? 6 : 0, targetLength: time, source: source,
                                decoderInput: inputs, labels: [Int32](repeating: 0, count: 3 * time)))
            let full = model.withLogits { Array($0.prefix(3 * time * 40)) }

            let decoder = try IncrementalDecoder(model: model, rows: 3, capacity: time, maxSourceLength: 6)
            if kind == .encoderDecoder { decoder.encode(source: sources, batch: 3, sourceLength: 6) }
            var worst: Float = 0
            for t in 0..<time {
                decoder.step((0..<3).map { inputs[$0 * time + t] })
                decoder.withLogits { logits in
                    for row in 0..<3 {
                        for j in 0..<40 {
                            let expected = full[(row * time + t) * 40 + j]
                            worst = max(worst, abs(logits[row * 40 + j] - expected) / max(1, abs(expected)))
                        }
                    }
                }
            }
            XCTAssertLessThan(worst, 1e-5, "\(kind) \(norm) \(positions): cached logits differ from the full forward by \(worst)")
        }
    }

    /// A prompt prefilled through one forward pass (the tiled attention over the whole prompt) leaves the cache as
    /// stepping it token by token does: the next logits agree in every row. With buffers shorter than the prompt
    /// (maxTargetLength 4), the rest of the prompt is stepped.
    func testPrefillEqualsSteppingThePrompt() throws {
        let config = ModelConfig(kind: .decoderOnly, vocabSize: 40, dModel: 16, heads: 4, encoderLayers: 0, decoderLayers: 2, dFF: 32,
                                 activation: .gelu, norm: .pre, positions: .learned, maxLength: 12, dropout: 0.1, tiedEmbeddings: true)
        let prompt: [Int32] = [5, 9, 13, 17, 21, 25, 29, 33, 37, 4]
        for maxTargetLength in [12, 4] {
            let model = try TransformerModel(config: config, maxBatch: 1, maxTargetLength: maxTargetLength)
            model.initializeParameters(seed: 3)
            let stepped = try IncrementalDecoder(model: model, rows: 2, capacity: 12)
            for token in prompt { stepped.step([token, token]) }
            let prefilled = try IncrementalDecoder(model: model, rows: 2, capacity: 12)
            prefilled.step([8, 8])  // whatever was in the cache before is discarded
            prefilled.prefill(prompt)
            XCTAssertEqual(prefilled.length, prompt.count)
            for decoder in [stepped, prefilled] { decoder.step([7, 7]) }
            let expected = stepped.withLogits { Array($0) }, actual = prefilled.withLogits { Array($0) }
            XCTAssertTrue(actual.allSatisfy(\.isFinite), "buffers of \(maxTargetLength): logits that are not finite")
            let worst = zip(actual, expected).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? .infinity
            XCTAssertLessThan(worst, 1e-5, "buffers of \(maxTargetLength): prefilled logits differ from stepped ones by \(worst)")
            let rows = zip(actual[..<40], actual[40...]).map { abs($0 - $1) }.max() ?? .infinity
            XCTAssertLessThan(rows, 1e-5, "both rows hold the same prompt")
        }
    }

    func testCachedGreedyTranslationEqualsUncached() throws {
        for (norm, positions) in [(ModelConfig.Norm.post, ModelConfig.Positions.sinusoidal), (.pre, .learned)] {
            for seed in [1, 2, 3] as [UInt64] {
                let model = try model(.encoderDecoder, norm: norm, positions: positions, activation: .relu, seed: seed)
                let cached = try model.decode(source: sources, batchSize: 3, sourceLength: 6, maxTokens: 11)
                let uncached = model.greedyDecodeWithoutCache(source: sources, batchSize: 3, sourceLength: 6, maxTokens: 11)
                XCTAssertEqual(cached, uncached, "\(norm) \(positions) seed \(seed)")
                XCTAssertTrue(cached.allSatisfy { !$0.contains(SpecialTokens.standard.eos) && !$0.contains(SpecialTokens.standard.pad) && $0.count <= 11 })
            }
        }
        // Some output must be non-trivial for the comparison to mean anything.
        let sample = try model(.encoderDecoder, norm: .pre, positions: .learned).decode(source: sources, batchSize: 3, sourceLength: 6, maxTokens: 11)
        XCTAssertTrue(sample.contains { $0.count >= 2 }, "\(sample)")
    }

    func testCachedGenerationEqualsUncached() throws {
        let model = try model(.decoderOnly, norm: .pre, positions: .learned)
        for sampling in [SamplingSettings(temperature: 0), SamplingSettings(temperature: 1, seed: 7),
                         SamplingSettings(temperature: 0.8, topK: 5, seed: 8), SamplingSettings(temperature: 1.2, topP: 0.9, seed: 9)] {
            var streamed: [Int32] = []
            let cached = try model.generate(prompt: [5, 6, 7], maxTokens: 9, sampling: sampling) { streamed.append($0); return true }
            let uncached = try model.generate(prompt: [5, 6, 7], maxTokens: 9, sampling: sampling, cached: false)
            XCTAssertEqual(cached, uncached, "\(sampling)")
            XCTAssertEqual(streamed, cached, "streamed tokens differ from the returned ones")
            XCTAssertLessThanOrEqual(cached.count, 9)
        }
        // The context ends at max_length (12): a 3-token prompt leaves room for 9 more inputs, and the full context
        // predicts one last token. Both ways stop there.
        for cached in [true, false] {
            let long = try model.generate(prompt: [5, 6, 7], maxTokens: 50, sampling: SamplingSettings(temperature: 1, seed: 3), cached: cached)
            XCTAssertLessThanOrEqual(long.count, 10)
        }
        // Different seeds sample differently; the same seed repeats. (Untied: a tied, sharpened model mostly
        // repeats its input token.)
        let untied = try self.model(.decoderOnly, norm: .pre, positions: .learned, tied: false)
        let a = try untied.generate(prompt: [], maxTokens: 9, sampling: SamplingSettings(temperature: 1.5, seed: 1))
        let b = try untied.generate(prompt: [], maxTokens: 9, sampling: SamplingSettings(temperature: 1.5, seed: 1))
        let others = try (2...6).map { try untied.generate(prompt: [], maxTokens: 9, sampling: SamplingSettings(temperature: 1.5, seed: $0)) }
        XCTAssertEqual(a, b)
        XCTAssertTrue(others.contains { $0 != a }, "five other seeds all sampled \(a)")
    }

    func testTopKOneIsGreedy() throws {
        let model = try model(.decoderOnly, norm: .pre, positions: .learned)
        let greedy = try model.generate(prompt: [9, 4], maxTokens: 8, sampling: SamplingSettings(temperature: 0))
        let topOne = try model.generate(prompt: [9, 4], maxTokens: 8, sampling: SamplingSettings(temperature: 1, topK: 1, seed: 4))
        let tinyP = try model.generate(prompt: [9, 4], maxTokens: 8, sampling: SamplingSettings(temperature: 1, topP: 1e-6, seed: 4))
        XCTAssertEqual(topOne, greedy)
        XCTAssertEqual(tinyP, greedy)
    }

    func testBeamOfOneEqualsGreedy() throws {
        for seed in [1, 2, 3, 4] as [UInt64] {
            let model = try model(.encoderDecoder, norm: .post, positions: .sinusoidal, seed: seed)
            let greedy = try model.decode(source: sources, batchSize: 3, sourceLength: 6, maxTokens: 11)
            let beam = try model.decode(source: sources, batchSize: 3, sourceLength: 6, maxTokens: 11, method: .beam(size: 1, lengthPenalty: 0.6))
            XCTAssertEqual(beam, greedy, "seed \(seed)")
        }
    }

    /// With a beam wider than every hypothesis there is, beam search must return the best-scoring sequence of an
    /// exhaustive search (same score: log P / ((5 + |Y|) / 6)^α, |Y| counting EOS; sequences cut at the limit too).
    func testWideBeamFindsTheExhaustiveBest() throws {
        for (seed, alpha) in [(UInt64(1), 0.6), (2, 0.0), (3, 1.0)] {
            let model = try model(.encoderDecoder, norm: .pre, positions: .learned, vocabulary: 7, seed: seed)
            let source: [Int32] = [5, 6, 2, 0]
            let limit = 3
            let beam = try model.decode(source: source, batchSize: 1, sourceLength: 4, maxTokens: limit, method: .beam(size: 200, lengthPenalty: alpha))

            model.training = false
            func logProbabilities(after prefix: [Int32]) -> [Double] {
                let input = [SpecialTokens.standard.bos] + prefix
                model.forward(TokenBatch(batchSize: 1, sourceLength: 4, targetLength: input.count, source: source, decoderInput: input,
                                    labels: [Int32](repeating: 0, count: input.count)))
                return model.withLogits { logits in
                    let row = Array(logits[((input.count - 1) * 7)..<(input.count * 7)]).map(Double.init)
                    let top = row.max()!
                    let total = log(row.map { exp($0 - top) }.reduce(0, +)) + top
                    return row.map { $0 - total }
                }
            }
            var best: (tokens: [Int32], score: Double) = ([], -.infinity)
            func explore(_ prefix: [Int32], _ score: Double) {
                let next = logProbabilities(after: prefix)
                if prefix.count == limit {
                    let normalized = score / pow((5 + Double(limit)) / 6, alpha)
                    if normalized > best.score { best = (prefix, normalized) }
                    return
                }
                let ended = (score + next[Int(SpecialTokens.standard.eos)]) / pow((5 + Double(prefix.count + 1)) / 6, alpha)
                if ended > best.score { best = (prefix, ended) }
                for token in 1..<7 where Int32(token) != SpecialTokens.standard.eos { explore(prefix + [Int32(token)], score + next[token]) }
            }
            explore([], 0)
            XCTAssertEqual(beam, [best.tokens], "seed \(seed), alpha \(alpha)")
        }
    }

    func testGreedyFirstTokenIsTheArgmaxAfterBOS() throws {
        let model = try model(.encoderDecoder, norm: .pre, positions: .sinusoidal)
        let outputs = try model.decode(source: sources, batchSize: 3, sourceLength: 6, maxTokens: 5)
        model.training = false
        model.forward(TokenBatch(batchSize: 3, sourceLength: 6, targetLength: 1, source: sources, decoderInput: [1, 1, 1], labels: [0, 0, 0]))
        let first: [Int32] = model.withLogits { logits in
            (0..<3).map { row in Int32((1..<40).max { logits[row * 40 + $0] < logits[row * 40 + $1] }!) }
        }
        for row in 0..<3 {
            if first[row] == SpecialTokens.standard.eos { XCTAssertEqual(outputs[row], []) } else { XCTAssertEqual(outputs[row].first, first[row]) }
        }
    }

    func testBadDecodingArgumentsNameTheArgument() throws {
        let lm = try model(.decoderOnly, norm: .pre, positions: .learned)
        let translator = try model(.encoderDecoder, norm: .pre, positions: .learned)
        func argument(_ body: () throws -> Void) -> String? {
            do { try body() } catch let error as DecodingArgumentError { return error.argument } catch { return "\(error)" }
            return nil
        }
        XCTAssertEqual(argument { try lm.generate(prompt: [5], maxTokens: 3, sampling: SamplingSettings(temperature: -1)) }, "temperature")
        XCTAssertEqual(argument { try lm.generate(prompt: [5], maxTokens: 3, sampling: SamplingSettings(topP: 0)) }, "top-p")
        XCTAssertEqual(argument { try lm.generate(prompt: [5], maxTokens: 3, sampling: SamplingSettings(topK: -2)) }, "top-k")
        XCTAssertEqual(argument { try lm.generate(prompt: [Int32](repeating: 5, count: 13), maxTokens: 3) }, "prompt")
        XCTAssertEqual(argument { try lm.generate(prompt: [99], maxTokens: 3) }, "prompt")
        XCTAssertEqual(argument { try translator.generate(prompt: [5], maxTokens: 3) }, "model")
        XCTAssertEqual(argument { _ = try lm.decode(source: [5, 2], batchSize: 1, sourceLength: 2, maxTokens: 3) }, "model")
        XCTAssertEqual(argument { _ = try translator.decode(source: [5, 2], batchSize: 1, sourceLength: 2, maxTokens: 3,
                                                            method: .beam(size: 0, lengthPenalty: 0.6)) }, "beam-size")
    }
}
