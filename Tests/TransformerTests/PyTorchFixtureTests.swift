import Basics
import Foundation
import HDF5
import Kernels
import Transformer
import XCTest

/// The Swift transformer against PyTorch golden files (Tests/Reference/make_fixtures.py): logits, loss, every
/// parameter gradient, and 10 AdamW steps. Prints the largest differences it saw.
final class PyTorchFixtureTests: XCTestCase {
    override func setUp() { setBLASThreads(1) }

    private struct Fixture {
        let file: File
        let config: ModelConfig
        let batch: TokenBatch
        let smoothing: Float

        init(_ name: String) throws {
            let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/\(name).h5")
            file = try File.open(url.path)
            XCTAssertEqual(try file.stringAttribute("format"), "swiftddp-fixture")
            XCTAssertEqual(try file.int64Attribute("version"), 1)
            config = try JSONDecoder().decode(ModelConfig.self, from: Data(try file.stringAttribute("config").utf8))
            smoothing = Float(try file.doubleAttribute("label_smoothing"))
            let source = try file.openDataset("batch/source"), decoderInput = try file.openDataset("batch/decoder_input")
            // Labels are [B,T] for a decoder, [B,S] for an encoder-only model (whose decoder input is empty).
            let b = decoderInput.shape[0], t = try file.openDataset("batch/labels").shape[1], s = source.shape[1]
            batch = TokenBatch(batchSize: b, sourceLength: s, targetLength: t, source: try source.read(as: Int32.self),
                          decoderInput: try decoderInput.read(as: Int32.self), labels: try file.openDataset("batch/labels").read(as: Int32.self))
        }

        func makeModel() throws -> TransformerModel {
            let model = try TransformerModel(config: config, maxBatch: batch.batchSize, maxSourceLength: batch.sourceLength,
                                             maxTargetLength: batch.targetLength)
            try loadParameters(into: model)
            return model
        }

        func loadParameters(into model: TransformerModel) throws {
            let stored = Set(try file.openGroup("params").members().map(\.name))
            XCTAssertEqual(stored, Set(model.layout.views.map(\.name)), "PyTorch and Swift name the same parameters")
            for view in model.layout.views {
                let dataset = try file.openDataset("params/\(view.name)")
                XCTAssertEqual(dataset.shape, view.shape, view.name)
                try dataset.read(into: model.parameters[view])
            }
        }
    }

    private func relativeDifference(_ a: [Float], _ b: [Float]) -> (max: Float, scale: Float) {
        let scale = b.map { abs($0) }.max() ?? 0
        let worst = zip(a, b).map { abs($0 - $1) }.max() ?? 0
        return (worst / max(scale, 1e-12), scale)
    }

    private func check(_ name: String) throws {
        let fixture = try Fixture(name)
        let model = try fixture.makeModel()
        model.training = false

        // Logits and loss.
        let smoothedLoss = model.forward(fixture.batch, labelSmoothing: fixture.smoothing)
        let logits = model.withLogits { Array($0.prefix(fixture.batch.batchSize * fixture.batch.targetLength * fixture.config.vocabSize)) }
        let expectedLogits = try fixture.file.openDataset("expected/logits").read(as: Float.self)
        let logitDifference = relativeDifference(logits, expectedLogits).max
        XCTAssertLessThan(logitDifference, 1e-4, "\(name): logits")
        let expectedLoss = try fixture.file.openDataset("expected/loss").read(as: Double.self)[0]
        let lossDifference = abs(smoothedLoss.loss - expectedLoss) / expectedLoss
        XCTAssertLessThan(lossDifference, 1e-4, "\(name): loss \(smoothedLoss.loss) vs \(expectedLoss)")
        XCTAssertEqual(smoothedLoss.targetTokens, fixture.batch.targetTokens)

        // Every parameter gradient, each within 1e-3 of its norm. Key-projection biases have an exactly zero
        // gradient (adding q·b to every score of a query leaves the softmax unchanged), so both sides hold rounding
        // noise there; a tensor whose norm is below 1e-4 of the whole gradient's is measured against that instead.
        model.gradients.zero()
        model.forwardBackward(fixture.batch, labelSmoothing: fixture.smoothing)
        func norm(_ values: [Float]) -> Float { values.reduce(Float(0)) { $0 + $1 * $1 }.squareRoot() }
        var expectedGradients: [String: [Float]] = [:]
        for view in model.layout.views {
            expectedGradients[view.name] = try fixture.file.openDataset("grads/\(view.name)").read(as: Float.self)
        }
        let totalNorm = norm(expectedGradients.values.flatMap { $0 })
        var worstGradient: (name: String, error: Float) = ("", 0)
        for view in model.layout.views {
            let expected = expectedGradients[view.name]!
            let difference = norm(zip(Array(model.gradients[view]), expected).map { $0 - $1 })
            let error = difference / max(norm(expected), 1e-4 * totalNorm)
            XCTAssertLessThan(error, 1e-3, "\(name): gradient of \(view.name) (norm \(norm(expected)), difference \(difference))")
            if error > worstGradient.error { worstGradient = (view.name, error) }
        }

        // 10 AdamW steps from the same weights, gradients divided by the token count.
        try fixture.loadParameters(into: model)
        let settings = AdamWSettings(beta1: Float(try fixture.file.doubleAttribute("beta1")), beta2: Float(try fixture.file.doubleAttribute("beta2")),
                                     epsilon: Float(try fixture.file.doubleAttribute("eps")),
                                     weightDecay: Float(try fixture.file.doubleAttribute("weight_decay")))
        let optimizer = AdamW(layout: model.layout, settings: settings)
        let learningRate = Float(try fixture.file.doubleAttribute("lr"))
        let expectedSteps = try fixture.file.openDataset("expected/step_losses").read(as: Double.self)
        var worstStep = 0.0
        for (step, expected) in expectedSteps.enumerated() {
            model.gradients.zero()
            let result = model.forwardBackward(fixture.batch, labelSmoothing: fixture.smoothing)
            let difference = abs(result.loss - expected) / expected
            worstStep = max(worstStep, difference)
            XCTAssertLessThan(difference, 1e-4, "\(name): step \(step) loss \(result.loss) vs \(expected)")
            optimizer.update(parameters: model.parameters, gradients: model.gradients, learningRate: learningRate,
                             gradientScale: 1 / Float(result.targetTokens))
        }
        print("""
            \(name): largest relative differences to PyTorch — logits \(logitDifference), loss \(lossDifference), \
            gradient \(worstGradient.error) (\(worstGradient.name)), AdamW step losses \(worstStep)
            """)
    }

    /// Every attention's probabilities, recomputed from the training kernel's forward (`attentionMaps`), equal the
    /// per-head weights of PyTorch's softmax, padded rows and masked keys included.
    func testAttentionProbabilitiesMatchPyTorch() throws {
        for name in ["encdec_post_sinusoidal", "gpt_pre_learned", "bert_post_learned"] {
            let fixture = try Fixture(name)
            let maps = try fixture.makeModel().attentionMaps(fixture.batch)
            let stored = Set(try fixture.file.openGroup("expected/attention").members().map(\.name))
            XCTAssertEqual(Set(maps.map(\.module)), stored, "\(name): every attention of the model, as PyTorch has them")
            for map in maps {
                let dataset = try fixture.file.openDataset("expected/attention/\(map.module)")
                XCTAssertEqual(dataset.shape, [map.batch, map.heads, map.queryTime, map.keyTime], "\(name) \(map.module)")
                let expected = try dataset.read(as: Float.self)
                XCTAssertTrue(map.probabilities.allSatisfy(\.isFinite), "\(name) \(map.module): values that are not finite")
                let worst = zip(map.probabilities, expected).map { abs($0 - $1) }.max() ?? .infinity
                XCTAssertLessThan(worst, 1e-5, "\(name) \(map.module): probabilities differ from PyTorch's by \(worst)")
                XCTAssertTrue(expected.contains { $0 > 0.2 }, "\(name) \(map.module): the weights are not all tiny")
            }
        }
    }

    func testEncoderDecoderPostNormSinusoidal() throws { try check("encdec_post_sinusoidal") }
    func testDecoderOnlyPreNormLearned() throws { try check("gpt_pre_learned") }
    func testEncoderOnlyMaskedLMPostNormLearned() throws { try check("bert_post_learned") }
}
