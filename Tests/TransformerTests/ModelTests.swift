import Basics
import Foundation
import Kernels
import Transformer
import XCTest

final class ModelTests: XCTestCase {
    override func setUp() { setBLASThreads(1) }

    /// A small model of `kind`; stacks of `layers` layers (none where the kind has no such stack).
    private func config(_ kind: ModelConfig.Kind = .encoderDecoder, norm: ModelConfig.Norm = .pre, positions: ModelConfig.Positions = .learned,
                        tied: Bool = false, dropout: Float = 0, layers: Int = 1) -> ModelConfig {
        ModelConfig(kind: kind, vocabSize: 11, dModel: 8, heads: 2, encoderLayers: layers, decoderLayers: layers, dFF: 12, activation: .gelu,
                    norm: norm, positions: positions, maxLength: 8, dropout: dropout, tiedEmbeddings: tied)
    }

    /// Three rows of different lengths; PAD (0) after each.
    private let seq2seq = TokenBatch(batchSize: 3, sourceLength: 4, targetLength: 4,
                                source: [5, 6, 7, 2, 8, 2, 0, 0, 9, 10, 2, 0],
                                decoderInput: [1, 4, 5, 6, 1, 7, 0, 0, 1, 9, 8, 0],
                                labels: [4, 5, 6, 2, 7, 2, 0, 0, 9, 8, 2, 0])

    /// An encoder-only batch: masked inputs [B,S] (10, the last id, the mask token), labels only at the chosen positions; the second
    /// row padded.
    private let masked = TokenBatch(batchSize: 2, sourceLength: 4, targetLength: 4, source: [5, 10, 10, 7, 9, 10, 0, 0], decoderInput: [],
                                    labels: [0, 6, 8, 0, 0, 4, 0, 0])

    /// The encoder-only path the fixture does not take (pre-norm, untied projection, dropout, label smoothing)
    /// against finite differences, through the masked-LM head.
    func testEncoderOnlyGradientsThroughTheMaskedLMHead() throws {
        let c = config(.encoderOnly, norm: .pre, tied: false, dropout: 0.2)
        let model = try TransformerModel(config: c, maxBatch: 2, maxTargetLength: 4)
        XCTAssertEqual(model.layout.views.suffix(6).map(\.name), ["mlm_head.dense.weight", "mlm_head.dense.bias", "mlm_head.norm.weight",
                                                                  "mlm_head.norm.bias", "mlm_head.bias", "lm_head.weight"])
        XCTAssertNil(model.layout.view("decoder.norm.weight"))
        model.initializeParameters(seed: 6)
        model.dropoutSeed = 17
        model.gradients.zero()
        let sum = model.forwardBackward(masked, labelSmoothing: 0.1)
        XCTAssertEqual(sum.targetTokens, 3, "the loss covers the chosen positions only")
        let worst = assertGradientsMatchFiniteDifferences(model, masked, samplesPerTensor: 4)
        print("encoder-only finite differences (untied, pre-norm, dropout 0.2): largest error \(worst)")
    }

    /// Training sends only the positions with a label through the masked-LM head: the loss equals evaluation's over
    /// every position (which keeps all logits), and a micro-batch without any chosen position (a short rank's share)
    /// adds nothing to any gradient.
    func testTrainingHeadTakesOnlyTheChosenPositions() throws {
        let model = try TransformerModel(config: config(.encoderOnly, norm: .post, tied: true), maxBatch: 2, maxTargetLength: 4)
        model.initializeParameters(seed: 3)
        model.gradients.zero()
        let evaluated = model.forward(masked, labelSmoothing: 0.1)
        let trained = model.forwardBackward(masked, labelSmoothing: 0.1)
        XCTAssertEqual(trained.targetTokens, evaluated.targetTokens)
        XCTAssertEqual(trained.correct, evaluated.correct)
        XCTAssertEqual(trained.loss, evaluated.loss, accuracy: abs(evaluated.loss) * 1e-6)
        XCTAssertGreaterThan(model.gradients.storage.map { abs($0) }.max() ?? 0, 0)
        model.gradients.zero()
        let unlabelled = TokenBatch(batchSize: 2, sourceLength: 4, targetLength: 4, source: masked.source, decoderInput: [],
                                    labels: [Int32](repeating: 0, count: 8))
        XCTAssertEqual(model.forwardBackward(unlabelled), LossSum())
        XCTAssertEqual(model.gradients.storage.filter { $0 != 0 }.count, 0, "no chosen position, no gradient")
    }

    func testConfigErrorsNameTheKey() {
        var bad = config()
        bad.heads = 3
        XCTAssertThrowsError(try bad.validate()) { error in
            XCTAssertEqual((error as? ModelConfigError)?.key, "heads")
            XCTAssertTrue("\(error)".contains("d_model 8 is not divisible by heads 3"), "\(error)")
        }
        for (key, change) in [("vocab_size", { (c: inout ModelConfig) in c.vocabSize = 2 }), ("dropout", { $0.dropout = 1 }),
                              ("d_ff", { $0.dFF = 0 }), ("decoder_layers", { $0.decoderLayers = 0 }), ("encoder_layers", { $0.encoderLayers = 0 })] {
            var c = config()
            change(&c)
            XCTAssertThrowsError(try c.validate()) { XCTAssertEqual(($0 as? ModelConfigError)?.key, key) }
        }
        XCTAssertThrowsError(try TransformerModel(config: config(), maxBatch: 2, maxSourceLength: 9, maxTargetLength: 4)) {
            XCTAssertEqual(($0 as? ModelConfigError)?.key, "max_length")
        }
    }

    func testConfigDecodesFromSnakeCaseJSON() throws {
        let json = """
            {"kind": "decoder-only", "vocab_size": 256, "d_model": 384, "heads": 6, "decoder_layers": 6, "d_ff": 1536,
             "activation": "gelu", "norm": "pre", "positions": "learned", "max_length": 256, "tied_embeddings": true}
            """
        let decoded = try JSONDecoder().decode(ModelConfig.self, from: Data(json.utf8))
        XCTAssertEqual(decoded.kind, .decoderOnly)
        XCTAssertEqual(decoded.encoderLayers, 0)
        XCTAssertFalse(decoded.scaleEmbedding, "GPT-style models do not scale embeddings unless asked")
        XCTAssertEqual(try JSONDecoder().decode(ModelConfig.self, from: try JSONEncoder().encode(decoded)), decoded)
    }

    func testLayoutNamesShapesAndOrder() {
        let untied = TransformerModel.parameterLayout(for: config())
        let names = untied.views.map(\.name)
        XCTAssertEqual(names.first, "embed.weight")
        XCTAssertEqual(names[1], "pos_embed.weight")
        XCTAssertEqual(names.last, "lm_head.weight")
        XCTAssertEqual(untied.view("encoder.layers.0.ffn.fc1.weight")?.shape, [12, 8], "torch Linear: [out, in]")
        XCTAssertNotNil(untied.view("encoder.norm.weight"))
        XCTAssertNotNil(untied.view("decoder.layers.0.cross_attn.q_proj.bias"))
        XCTAssertNotNil(untied.view("decoder.layers.0.norm3.bias"))
        // Contiguous, in forward order: every view starts where the previous ended.
        for (previous, next) in zip(untied.views, untied.views.dropFirst()) { XCTAssertEqual(previous.offset + previous.count, next.offset) }
        let gpt = TransformerModel.parameterLayout(for: config(.decoderOnly, norm: .post, positions: .sinusoidal, tied: true))
        XCTAssertNil(gpt.view("lm_head.weight"))
        XCTAssertNil(gpt.view("pos_embed.weight"))
        XCTAssertNil(gpt.view("decoder.norm.weight"), "post-norm has no final norm")
        XCTAssertNil(gpt.view("decoder.layers.0.cross_attn.q_proj.weight"))
        XCTAssertNotNil(gpt.view("decoder.layers.0.norm2.weight"))
    }

    /// The paths the PyTorch fixtures do not take (untied output, encoder-decoder pre-norm, dropout) against
    /// finite differences of the whole model's loss, on a sample of every tensor's elements.
    func testWholeModelGradientsUntiedPreNormWithDropout() throws {
        let model = try TransformerModel(config: config(dropout: 0.2), maxBatch: 3, maxSourceLength: 4, maxTargetLength: 4)
        model.initializeParameters(seed: 3)
        model.dropoutSeed = 99
        model.gradients.zero()
        model.forwardBackward(seq2seq, labelSmoothing: 0.1)
        let worst = assertGradientsMatchFiniteDifferences(model, seq2seq, samplesPerTensor: 5)
        print("whole-model finite differences (untied, pre-norm, dropout 0.2): largest error \(worst)")
    }

    /// Checks the gradients `model` holds for `batch` (label smoothing 0.1) against central differences of its loss
    /// on about `samplesPerTensor` elements of every tensor (2e-2 relative); returns the largest error.
    @discardableResult
    private func assertGradientsMatchFiniteDifferences(_ model: TransformerModel, _ batch: TokenBatch, samplesPerTensor: Int,
                                                       file: StaticString = #filePath, line: UInt = #line) -> Double {
        var worst: Double = 0
        for view in model.layout.views {
            let tensor = model.parameters[view], gradient = model.gradients[view]
            for index in Swift.stride(from: 0, to: view.count, by: max(1, view.count / samplesPerTensor)) {
                let saved = tensor[index], epsilon: Float = 1e-2
                tensor[index] = saved + epsilon
                let plus = model.forward(batch, labelSmoothing: 0.1).loss
                tensor[index] = saved - epsilon
                let minus = model.forward(batch, labelSmoothing: 0.1).loss
                tensor[index] = saved
                let numeric = (plus - minus) / Double(2 * epsilon)
                let error = abs(numeric - Double(gradient[index])) / max(1, abs(numeric))
                worst = max(worst, error)
                XCTAssertLessThan(error, 2e-2, "\(view.name)[\(index)]: numeric \(numeric), analytic \(gradient[index])", file: file, line: line)
            }
        }
        return worst
    }

    /// The gradient-ready hook's contract, which the overlapped all-reduce relies on: the reported ranges tile the
    /// whole arena exactly once, and a range's gradients never change after it is reported. Every model kind, both
    /// norm placements, tied and untied output, two layers per stack, dropout on.
    func testReportedGradientRangesTileTheArenaAndAreFinal() throws {
        let lm = TokenBatch(batchSize: 2, sourceLength: 0, targetLength: 4, source: [],
                            decoderInput: [1, 4, 5, 6, 1, 7, 0, 0], labels: [4, 5, 6, 2, 7, 2, 0, 0])
        for kind in ModelConfig.Kind.allCases {
            for norm in [ModelConfig.Norm.pre, .post] {
                for tied in [false, true] {
                    let c = config(kind, norm: norm, tied: tied, dropout: 0.2, layers: 2)
                    let label = "\(kind) \(norm)-norm \(tied ? "tied" : "untied")"
                    let model = try TransformerModel(config: c, maxBatch: 3, maxSourceLength: kind == .encoderDecoder ? 4 : 0, maxTargetLength: 4)
                    model.initializeParameters(seed: 4)
                    model.dropoutSeed = 7
                    model.gradients.zero()
                    var reported: [(range: Range<Int>, values: [Float])] = []
                    model.onGradientsFinal = { range in reported.append((range, Array(model.gradients.storage[range]))) }
                    model.forwardBackward(kind == .encoderDecoder ? seq2seq : kind == .encoderOnly ? masked : lm, labelSmoothing: 0.1)
                    model.onGradientsFinal = nil
                    var covered = [Int](repeating: 0, count: model.layout.count)
                    for (range, values) in reported {
                        for i in range { covered[i] += 1 }
                        XCTAssertTrue(Array(model.gradients.storage[range]) == values,
                                      "\(label): gradients in \(range) changed after they were reported final")
                    }
                    XCTAssertEqual(covered.firstIndex { $0 != 1 }, nil,
                                   "\(label): every parameter is reported exactly once (ranges \(reported.map(\.range)))")
                    XCTAssertGreaterThan(reported.count, 4, "\(label): blocks report one by one")
                }
            }
        }
    }

    /// Two micro-batches accumulated give the gradient of one batch holding both — even though each half is
    /// padded to its own length. This is what makes N ranks x batch b equal 1 rank x batch N·b.
    func testAccumulatedHalvesEqualTheWholeBatch() throws {
        let model = try TransformerModel(config: config(norm: .post, positions: .sinusoidal, tied: true), maxBatch: 3,
                                         maxSourceLength: 4, maxTargetLength: 4)
        model.initializeParameters(seed: 5)
        model.gradients.zero()
        let whole = model.forwardBackward(seq2seq, labelSmoothing: 0.1)
        let reference = Array(model.gradients.storage)

        let first = TokenBatch(batchSize: 1, sourceLength: 4, targetLength: 4, source: Array(seq2seq.source[0..<4]),
                          decoderInput: Array(seq2seq.decoderInput[0..<4]), labels: Array(seq2seq.labels[0..<4]))
        // Rows 2 and 3 padded only to their own longest (3 tokens), as a rank's own batch would be.
        let rest = TokenBatch(batchSize: 2, sourceLength: 3, targetLength: 3, source: [8, 2, 0, 9, 10, 2],
                         decoderInput: [1, 7, 0, 1, 9, 8], labels: [7, 2, 0, 9, 8, 2])
        model.gradients.zero()
        let a = model.forwardBackward(first, labelSmoothing: 0.1)
        let b = model.forwardBackward(rest, labelSmoothing: 0.1)
        XCTAssertEqual(a.targetTokens + b.targetTokens, whole.targetTokens)
        XCTAssertEqual(a.loss + b.loss, whole.loss, accuracy: whole.loss * 1e-5)
        let accumulated = Array(model.gradients.storage)
        let scale = reference.map { abs($0) }.max()!
        let difference = zip(accumulated, reference).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(difference / scale, 1e-5, "accumulated gradient differs by \(difference) (scale \(scale))")
    }

    /// A model sized for a list of batch shapes (token-budget batches: many short rows or few long ones) computes
    /// bitwise what a model sized for the largest rows and lengths computes, on batches of every listed shape in any
    /// order (its buffers re-carved in between), in a smaller arena; decoding encodes in chunks that fit it.
    func testModelSizedForShapesEqualsTheBoxModel() throws {
        let short = TokenBatch(batchSize: 6, sourceLength: 2, targetLength: 2, source: [5, 2, 6, 2, 7, 2, 8, 2, 9, 2, 10, 2],
                               decoderInput: [1, 4, 1, 5, 1, 6, 1, 7, 1, 8, 1, 9], labels: [4, 2, 5, 2, 6, 2, 7, 2, 8, 2, 9, 2])
        let long = TokenBatch(batchSize: 1, sourceLength: 8, targetLength: 8, source: [5, 6, 7, 8, 9, 10, 5, 2],
                              decoderInput: [1, 4, 5, 6, 7, 8, 9, 10], labels: [4, 5, 6, 7, 8, 9, 10, 2])
        for kind in [ModelConfig.Kind.encoderDecoder, .decoderOnly] {
            let c = config(kind, positions: .sinusoidal)
            let source = kind == .encoderDecoder ? 8 : 0
            let box = try TransformerModel(config: c, maxBatch: 6, maxSourceLength: source, maxTargetLength: 8)
            let shaped = try TransformerModel(config: c, maxBatch: 6, maxSourceLength: source, maxTargetLength: 8,
                                              shapes: [.init(batch: 6, sourceLength: 2, targetLength: 2), .init(batch: 1, sourceLength: 8, targetLength: 8),
                                                       .init(batch: 3, sourceLength: 4, targetLength: 4)])
            XCTAssertLessThan(shaped.activationFloats, box.activationFloats / 2, "\(kind): sized for the listed shapes, not 6 x 8")
            for model in [box, shaped] { model.initializeParameters(seed: 21) }
            for batch in [short, long, seq2seq, short, long] {
                let batch = kind == .encoderDecoder ? batch : TokenBatch(batchSize: batch.batchSize, targetLength: batch.targetLength,
                                                                         decoderInput: batch.decoderInput, labels: batch.labels)
                for model in [box, shaped] { model.gradients.zero() }
                let expected = box.forwardBackward(batch), got = shaped.forwardBackward(batch)
                XCTAssertEqual(got.loss.bitPattern, expected.loss.bitPattern, "\(kind) \(batch.batchSize)x\(batch.targetLength)")
                XCTAssertEqual(Array(shaped.gradients.storage), Array(box.gradients.storage), "\(kind) \(batch.batchSize)x\(batch.targetLength)")
                XCTAssertEqual(shaped.withLogits { Array($0.prefix(batch.batchSize * batch.targetLength * 11)) },
                               box.withLogits { Array($0.prefix(batch.batchSize * batch.targetLength * 11)) })
            }
            if kind == .encoderDecoder {
                for model in [box, shaped] { model.training = false }
                let sources = [Int32](repeating: 5, count: 6 * 7).enumerated().map { $0.offset % 7 == 6 ? 2 : $0.element + Int32($0.offset % 3) }
                XCTAssertEqual(try shaped.decode(source: sources, batchSize: 6, sourceLength: 7, maxTokens: 5, method: .greedy),
                               try box.decode(source: sources, batchSize: 6, sourceLength: 7, maxTokens: 5, method: .greedy),
                               "6 sources of 7 positions decode alike (the shaped model encodes them in chunks)")
            }
        }
    }

    /// A batch's loss, gradients and logits do not depend on what the model computed before: after batches of other
    /// shapes (token-budget training switches shapes every step), with dropout and label smoothing, they equal bitwise
    /// those of a fresh model with the same parameters.
    func testABatchsResultDoesNotDependOnEarlierBatches() throws {
        let short = TokenBatch(batchSize: 6, sourceLength: 2, targetLength: 2, source: [5, 2, 6, 2, 7, 2, 8, 2, 9, 2, 10, 2],
                               decoderInput: [1, 4, 1, 5, 1, 6, 1, 7, 1, 8, 1, 9], labels: [4, 2, 5, 2, 6, 2, 7, 2, 8, 2, 9, 2])
        let long = TokenBatch(batchSize: 1, sourceLength: 8, targetLength: 7, source: [5, 6, 7, 8, 9, 10, 5, 2],
                              decoderInput: [1, 4, 5, 6, 7, 8, 9], labels: [4, 5, 6, 7, 8, 9, 2])
        for kind in [ModelConfig.Kind.encoderDecoder, .decoderOnly, .encoderOnly] {
            let c = config(kind, positions: .sinusoidal, dropout: 0.1, layers: 2)
            let batches = kind == .encoderOnly ? [masked, TokenBatch(batchSize: 1, sourceLength: 3, targetLength: 3, source: [10, 6, 10],
                                                                     decoderInput: [], labels: [4, 0, 9])]
                : [short, long, seq2seq].map { batch in
                    kind == .encoderDecoder ? batch : TokenBatch(batchSize: batch.batchSize, targetLength: batch.targetLength,
                                                                 decoderInput: batch.decoderInput, labels: batch.labels)
                }
            func model() throws -> TransformerModel {
                let model = try TransformerModel(config: c, maxBatch: 6, maxSourceLength: kind == .decoderOnly ? 0 : 8, maxTargetLength: 8)
                model.initializeParameters(seed: 5)
                model.dropoutSeed = 77
                return model
            }
            let used = try model()
            for (index, batch) in (batches + batches.reversed() + batches).enumerated() {
                let fresh = try model()
                used.gradients.zero()
                let expected = fresh.forwardBackward(batch, labelSmoothing: 0.1), got = used.forwardBackward(batch, labelSmoothing: 0.1)
                let what = "\(kind), batch \(index) (\(batch.batchSize)x\(batch.targetLength))"
                XCTAssertEqual(got.loss.bitPattern, expected.loss.bitPattern, what)
                XCTAssertEqual(Array(used.gradients.storage), Array(fresh.gradients.storage), what)
                // The masked-LM head computes logits at the chosen positions only.
                let logits = (kind == .encoderOnly ? batch.labels.count { $0 != 0 } : batch.batchSize * batch.targetLength) * 11
                XCTAssertEqual(used.withLogits { Array($0.prefix(logits)) }, fresh.withLogits { Array($0.prefix(logits)) }, what)
            }
        }
    }

    /// Every listed shape fits the arena, in any order of listing and of use: the arena holds the largest shape's
    /// aligned buffers (shapes whose sizes differ only in alignment once made a listed shape trap).
    func testEveryListedShapeFitsInAnyOrder() throws {
        let c = config(.encoderDecoder, positions: .sinusoidal)
        let shapes = (1...8).map { TransformerModel.BatchShape(batch: max(1, 40 / $0), sourceLength: $0, targetLength: $0) }
        for listing in [shapes, shapes.reversed(), shapes.shuffled()] {
            let model = try TransformerModel(config: c, maxBatch: 40, maxSourceLength: 8, maxTargetLength: 8, shapes: listing)
            model.initializeParameters(seed: 2)
            for shape in listing + listing.reversed() {
                let b = shape.batch, t = shape.targetLength
                let tokens = (0..<(b * t)).map { Int32(4 + $0 % 7) }
                let batch = TokenBatch(batchSize: b, sourceLength: t, targetLength: t, source: tokens, decoderInput: tokens, labels: tokens)
                XCTAssertGreaterThan(model.forward(batch).targetTokens, 0, "\(shape)")
            }
        }
    }

    func testForwardIsDeterministicAndEvaluationDropsNothing() throws {
        let model = try TransformerModel(config: config(dropout: 0.3), maxBatch: 3, maxSourceLength: 4, maxTargetLength: 4)
        model.initializeParameters(seed: 8)
        model.training = false
        let first = model.forward(seq2seq)
        let firstLogits = model.withLogits { Array($0) }
        let second = model.forward(seq2seq)
        XCTAssertEqual(first, second)
        XCTAssertEqual(model.withLogits { Array($0) }, firstLogits, "bitwise identical")
        model.training = true
        model.dropoutSeed = 1
        XCTAssertNotEqual(model.forward(seq2seq).loss, first.loss, "dropout changes the training loss")
    }
}
