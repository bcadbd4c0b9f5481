import Basics
import Foundation
import Kernels
import TestSupport
import Transformer
import XCTest

/// A whole training step (forward with dropout, backward, AdamW) and an evaluation forward give bitwise identical
/// logits, loss, gradients and parameters with 1, 2 and 3 compute threads, for the three model kinds, on batches whose
/// rows are not multiples of any tile size and whose sequences are padded to different lengths.
///
/// OpenBLAS picks its kernels by CPU when it loads, and its AVX2 kernels (Haswell, Zen) are the ones that compute
/// a row differently depending on where a split puts it. So the check runs twice: here with this CPU's kernels,
/// and in a child process with `OPENBLAS_CORETYPE=Haswell`, which every CPU with AVX2 and FMA can run (all of this
/// project's machines): CI covers both kernel families whichever CPU it lands on.
final class ThreadDeterminismTests: XCTestCase {
    override func tearDown() { setComputeThreads(1) }

    private struct Outcome {
        var logits: [Float], evaluationLoss: Double, trainingLoss: Double, gradients: [Float], parameters: [Float]
    }

    private func step(threads: Int, config: ModelConfig, batch: TokenBatch) throws -> Outcome {
        setComputeThreads(threads)
        let model = try TransformerModel(config: config, maxBatch: batch.batchSize, maxSourceLength: batch.sourceLength,
                                         maxTargetLength: batch.targetLength)
        model.initializeParameters(seed: 17)
        model.training = false
        let evaluation = model.forward(batch)
        let logits = model.withLogits { Array($0.prefix(batch.batchSize * batch.targetLength * config.vocabSize)) }
        model.training = true
        model.dropoutSeed = 5
        model.gradients.zero()
        let result = model.forwardBackward(batch, labelSmoothing: 0.1)
        let gradients = Array(model.gradients.storage)
        let optimizer = AdamW(layout: model.layout, settings: AdamWSettings())
        optimizer.update(parameters: model.parameters, gradients: model.gradients, learningRate: 1e-3,
                         gradientScale: 1 / Float(result.targetTokens))
        return Outcome(logits: logits, evaluationLoss: evaluation.loss, trainingLoss: result.loss, gradients: gradients,
                       parameters: Array(model.parameters.storage))
    }

    /// Rows of `lengths.count` x `time` tokens: row r holds lengths[r] real tokens, then PAD.
    private func padded(_ lengths: [Int], time: Int, first: Int32, random: inout SplitMix64) -> [Int32] {
        lengths.flatMap { length in
            (0..<time).map { $0 == 0 ? first : $0 < length ? Int32(4 + random.next() % 296) : SpecialTokens.standard.pad }
        }
    }

    private func assertAgreement(_ kind: String, config: ModelConfig, batch: TokenBatch) throws {
        let one = try step(threads: 1, config: config, batch: batch)
        for threads in [2, 3] {
            let other = try step(threads: threads, config: config, batch: batch)
            let context = "\(kind), 1 and \(threads) threads, OpenBLAS kernels \(blasCoreName)"
            XCTAssertEqual(one.evaluationLoss.bitPattern, other.evaluationLoss.bitPattern, "evaluation loss: \(context)")
            XCTAssertEqual(one.trainingLoss.bitPattern, other.trainingLoss.bitPattern, "training loss: \(context)")
            for (name, a, b) in [("logits", one.logits, other.logits), ("gradients", one.gradients, other.gradients),
                                 ("updated parameters", one.parameters, other.parameters)] {
                XCTAssertEqual(a.count, b.count, "\(name): \(context)")
                let differing = zip(a, b).filter { $0.bitPattern != $1.bitPattern }.count
                XCTAssertEqual(differing, 0, "\(differing) of \(a.count) \(name) differ: \(context)")
            }
        }
    }

    func testOneTwoAndThreeThreadsAgreeBitwise() throws {
        print("ThreadDeterminismTests: OpenBLAS kernels \(blasCoreName), \(blasThreading) build")
        var random = SplitMix64(seed: 4)
        // 5 x 29 = 145 rows (GEMMs cut into two tiles of 80 and 65), vocabulary 300 (the head cut along its columns),
        // feed-forward 200, 4 heads of 12; dropout on.
        let gpt = ModelConfig(kind: .decoderOnly, vocabSize: 300, dModel: 48, heads: 4, encoderLayers: 0, decoderLayers: 2,
                              dFF: 200, activation: .gelu, norm: .pre, positions: .learned, maxLength: 32, dropout: 0.1,
                              tiedEmbeddings: true)
        let lengths = [29, 17, 23, 5, 11]
        let window = padded(lengths.map { $0 + 1 }, time: 30, first: 4 + 7, random: &random)
        let lm = TokenBatch(batchSize: 5, targetLength: 29,
                       decoderInput: (0..<5).flatMap { Array(window[($0 * 30)..<($0 * 30 + 29)]) },
                       labels: (0..<5).flatMap { Array(window[($0 * 30 + 1)..<($0 * 30 + 30)]) })
        try assertAgreement("decoder-only", config: gpt, batch: lm)

        let translation = ModelConfig(kind: .encoderDecoder, vocabSize: 300, dModel: 48, heads: 4, encoderLayers: 2,
                                      decoderLayers: 2, dFF: 200, activation: .relu, norm: .post, positions: .sinusoidal,
                                      maxLength: 32, dropout: 0.1, tiedEmbeddings: false)
        let targets = padded([27, 9, 14, 3, 22], time: 28, first: SpecialTokens.standard.bos, random: &random)
        let seq2seq = TokenBatch(batchSize: 5, sourceLength: 27, targetLength: 27,
                            source: padded([27, 12, 20, 6, 1], time: 27, first: 4 + 9, random: &random),
                            decoderInput: (0..<5).flatMap { Array(targets[($0 * 28)..<($0 * 28 + 27)]) },
                            labels: (0..<5).flatMap { Array(targets[($0 * 28 + 1)..<($0 * 28 + 28)]) })
        try assertAgreement("encoder-decoder", config: translation, batch: seq2seq)

        // Encoder-only: training's head takes only the labelled positions (99 of 145 here; the vocabulary of 300 still
        // cuts its output projection into tiles); evaluation's takes every position.
        let bert = ModelConfig(kind: .encoderOnly, vocabSize: 300, dModel: 48, heads: 4, encoderLayers: 2, decoderLayers: 0,
                               dFF: 200, activation: .gelu, norm: .post, positions: .learned, maxLength: 32, dropout: 0.1,
                               tiedEmbeddings: true)
        let inputs = padded([29, 17, 23, 5, 11].map { $0 + 6 }.map { min($0, 29) }, time: 29, first: 4 + 3, random: &random)
        let labels = inputs.enumerated().map { $0.offset % 10 == 3 || $0.element == SpecialTokens.standard.pad ? SpecialTokens.standard.pad : $0.element }
        let masked = TokenBatch(batchSize: 5, sourceLength: 29, targetLength: 29, source: inputs, decoderInput: [], labels: labels)
        XCTAssertEqual(labels.filter { $0 != SpecialTokens.standard.pad }.count, 99)
        try assertAgreement("encoder-only", config: bert, batch: masked)
    }

    /// The test above in a child process whose OpenBLAS uses its AVX2 (Haswell) kernels, whatever this CPU is.
    func testOneTwoAndThreeThreadsAgreeBitwiseWithHaswellKernels() throws {
        let flags = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?.split(separator: "\n")
            .first { $0.hasPrefix("flags") }?.split(separator: " ").map(String.init) ?? []
        guard flags.contains("avx2") && flags.contains("fma") else {
            throw XCTSkip("this CPU lacks AVX2/FMA, so OpenBLAS's Haswell kernels cannot run here (its own kernels were checked above)")
        }
        try runInChild(["TransformerTests.ThreadDeterminismTests/testOneTwoAndThreeThreadsAgreeBitwise"],
                       tests: 1, environment: ["OPENBLAS_CORETYPE": "Haswell"], kernels: "Haswell")
    }

    /// The test above and the PyTorch fixtures in a child process with `OPENBLAS_CORETYPE` removed from its
    /// environment, so OpenBLAS picks the kernels it would for a user on this CPU. The environment this process runs
    /// in may set the variable (machines of this project's kind set `Haswell`), and the other tests then never see
    /// those kernels: AVX-512 ones (`SkylakeX`, `Cooperlake`) on a CPU that has it.
    func testOneTwoAndThreeThreadsAgreeBitwiseAndMatchPyTorchWithThisCPUsOwnKernels() throws {
        try runInChild(["TransformerTests.ThreadDeterminismTests/testOneTwoAndThreeThreadsAgreeBitwise",
                        "TransformerTests.PyTorchFixtureTests"], tests: 5, unsetting: ["OPENBLAS_CORETYPE"], kernels: nil)
    }

    /// Runs `names` (XCTest filters, `tests` test methods in all) in this test binary with the given environment;
    /// checks the child's kernel family is `kernels` when given, and prints it.
    private func runInChild(_ names: [String], tests: Int, environment: [String: String] = [:], unsetting: [String] = [],
                            kernels: String?) throws {
        let testBinary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let result = try runProcess(testBinary, [names.joined(separator: ",")], environment: environment, unsetting: unsetting,
                                    timeout: 600)
        XCTAssertFalse(result.timedOut, result.output)
        let used = result.output.firstMatch(of: /OpenBLAS kernels (\w+)/)?.1
        print("ThreadDeterminismTests: the child ran OpenBLAS kernels \(used ?? "(none named)")")
        XCTAssertNotNil(used, "the child did not say its kernels:\n\(result.output)")
        if let kernels { XCTAssertEqual(used.map(String.init), kernels, "the child did not run \(kernels) kernels:\n\(result.output)") }
        let tally = "Executed \(tests) test\(tests == 1 ? "" : "s"), with 0 failures"
        XCTAssertTrue(result.output.contains(tally), "expected '\(tally)':\n\(result.output)")
        XCTAssertEqual(result.status, 0, result.output)
    }
}
