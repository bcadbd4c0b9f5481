import Kernels
import XCTest

/// Every kernel's backward against finite differences of its forward, on small shapes.
final class GradientTests: XCTestCase {
    override func setUp() { setBLASThreads(1) }

    func testGemmAllTransposeCases() {
        let m = 3, n = 4, k = 5
        let a = Tensor(random: m * k, seed: 1), b = Tensor(random: k * n, seed: 2)
        for transA in [false, true] {
            for transB in [false, true] {
                let c = Tensor(random: m * n, seed: 3)
                let start = c.array
                // op(A) is [m,k]; stored as [k,m] when transposed.
                gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.5, a: a.buffer.baseAddress!, lda: transA ? m : k,
                     b: b.buffer.baseAddress!, ldb: transB ? k : n, beta: 2, c: c.buffer.baseAddress!, ldc: n)
                for i in 0..<m {
                    for j in 0..<n {
                        var dot: Float = 0
                        for p in 0..<k { dot += (transA ? a[p * m + i] : a[i * k + p]) * (transB ? b[j * k + p] : b[p * n + j]) }
                        XCTAssertEqual(c[i * n + j], 0.5 * dot + 2 * start[i * n + j], accuracy: 1e-5, "transA \(transA) transB \(transB)")
                    }
                }
            }
        }
    }

    func testLinear() {
        let rows = 3, inFeatures = 4, outFeatures = 5
        let inp = Tensor(random: rows * inFeatures, seed: 1), weight = Tensor(random: outFeatures * inFeatures, seed: 2)
        let bias = Tensor(random: outFeatures, seed: 3), out = Tensor(zeros: rows * outFeatures)
        let dOut = Tensor(random: rows * outFeatures, seed: 4)
        let dInp = Tensor(zeros: inp.count), dWeight = Tensor(zeros: weight.count), dBias = Tensor(zeros: bias.count)
        func loss() -> Double {
            linearForward(out: out.buffer, inp: inp.buffer, weight: weight.buffer, bias: bias.buffer,
                          rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
            return weightedSum(out, dOut)
        }
        _ = loss()
        linearBackward(dInp: dInp.buffer, dWeight: dWeight.buffer, dBias: dBias.buffer, dOut: dOut.buffer, inp: inp.buffer,
                       weight: weight.buffer, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
        assertGradient("linear dInp", of: inp, analytic: dInp, loss: loss)
        assertGradient("linear dWeight", of: weight, analytic: dWeight, loss: loss)
        assertGradient("linear dBias", of: bias, analytic: dBias, loss: loss)
    }

    /// Rows of 6 channels (one partial chunk of the kernels' 16 lanes) and of 37 (two whole chunks and a partial one).
    func testLayerNorm() {
        for channels in [6, 37] { checkLayerNorm(channels: channels) }
    }

    private func checkLayerNorm(channels: Int) {
        let rows = 3
        let inp = Tensor(random: rows * channels, seed: 5, scale: 2), weight = Tensor(random: channels, seed: 6)
        let bias = Tensor(random: channels, seed: 7), out = Tensor(zeros: rows * channels)
        let mean = Tensor(zeros: rows), rstd = Tensor(zeros: rows), dOut = Tensor(random: rows * channels, seed: 8)
        let dInp = Tensor(zeros: inp.count), dWeight = Tensor(zeros: channels), dBias = Tensor(zeros: channels)
        func loss() -> Double {
            layerNormForward(out: out.buffer, mean: mean.buffer, rstd: rstd.buffer, inp: inp.buffer, weight: weight.buffer,
                             bias: bias.buffer, rows: rows, channels: channels)
            return weightedSum(out, dOut)
        }
        _ = loss()
        layerNormBackward(dInp: dInp.buffer, dWeight: dWeight.buffer, dBias: dBias.buffer, dOut: dOut.buffer, inp: inp.buffer,
                          weight: weight.buffer, mean: mean.buffer, rstd: rstd.buffer, rows: rows, channels: channels)
        assertGradient("layernorm dInp", of: inp, analytic: dInp, epsilon: 1e-3, loss: loss)
        assertGradient("layernorm dWeight", of: weight, analytic: dWeight, loss: loss)
        assertGradient("layernorm dBias", of: bias, analytic: dBias, loss: loss)
        // Saved statistics are each row's mean and 1/sqrt(variance + eps), as torch computes them.
        for r in 0..<rows {
            let row = (0..<channels).map { Double(inp[r * channels + $0]) }
            let rowMean = row.reduce(0, +) / Double(channels)
            let variance = row.map { ($0 - rowMean) * ($0 - rowMean) }.reduce(0, +) / Double(channels)
            XCTAssertEqual(Double(mean[r]), rowMean, accuracy: 1e-6, "\(channels) channels, row \(r)")
            XCTAssertEqual(Double(rstd[r]), 1 / (variance + 1e-5).squareRoot(), accuracy: 1e-4, "\(channels) channels, row \(r)")
        }
    }

    func testActivationsAndResidual() {
        let count = 40
        // Keep inputs away from ReLU's kink so finite differences are valid.
        let inp = Tensor((0..<count).map { Float($0 - count / 2) * 0.13 + 0.05 })
        let out = Tensor(zeros: count), dOut = Tensor(random: count, seed: 9)
        for (name, forward, backward) in [
            ("relu", reluForward, reluBackward),
            ("gelu", { geluForward(out: $0, inp: $1, count: $2) }, geluBackward),
            ("gelu_tanh", { geluTanhForward(out: $0, inp: $1, count: $2) }, geluTanhBackward),
        ] as [(String, (FloatBuffer, FloatBuffer, Int) -> Void, (FloatBuffer, FloatBuffer, FloatBuffer, Int) -> Void)] {
            let dInp = Tensor(zeros: count)
            func loss() -> Double {
                forward(out.buffer, inp.buffer, count)
                return weightedSum(out, dOut)
            }
            _ = loss()
            backward(dInp.buffer, dOut.buffer, inp.buffer, count)
            assertGradient(name, of: inp, analytic: dInp, epsilon: 1e-3, loss: loss)
        }
        // The training path: GELU keeps its derivative in place of the input, and backward only scales by it.
        let kept = Tensor(inp.array), dKept = Tensor(zeros: count)
        geluForward(out: out.buffer, inp: kept.buffer, count: count, derivative: kept.buffer)
        scaleByDerivativeBackward(dInp: dKept.buffer, dOut: dOut.buffer, derivative: kept.buffer, count: count)
        let dReference = Tensor(zeros: count)
        geluBackward(dInp: dReference.buffer, dOut: dOut.buffer, inp: inp.buffer, count: count)
        for i in 0..<count { XCTAssertEqual(dKept[i], dReference[i], accuracy: 1e-6) }
        let keptTanh = Tensor(inp.array), dKeptTanh = Tensor(zeros: count), dTanh = Tensor(zeros: count)
        geluTanhForward(out: out.buffer, inp: keptTanh.buffer, count: count, derivative: keptTanh.buffer)
        scaleByDerivativeBackward(dInp: dKeptTanh.buffer, dOut: dOut.buffer, derivative: keptTanh.buffer, count: count)
        geluTanhBackward(dInp: dTanh.buffer, dOut: dOut.buffer, inp: inp.buffer, count: count)
        for i in 0..<count { XCTAssertEqual(dKeptTanh[i], dTanh[i], accuracy: 1e-6) }

        // GELU values against erf's definition at a few points (PyTorch: gelu(1) = 0.8413447).
        let points = Tensor([-3, -1, 0, 1, 2.5]), values = Tensor(zeros: 5)
        geluForward(out: values.buffer, inp: points.buffer, count: 5)
        for (value, expected) in zip(values.array, [-0.0040496, -0.1586553, 0, 0.8413447, 2.4844766] as [Float]) {
            XCTAssertEqual(value, expected, accuracy: 1e-6)
        }
        // The tanh form against PyTorch's gelu(x, approximate="tanh") (float64), saturation included.
        let tanhPoints = Tensor([-3, -1, 0, 1, 2.5, -12, 12]), tanhValues = Tensor(zeros: 7)
        geluTanhForward(out: tanhValues.buffer, inp: tanhPoints.buffer, count: 7)
        for (value, expected) in zip(tanhValues.array, [-0.0036373921, -0.1588080094, 0, 0.8411919906, 2.4849157339, 0, 12] as [Float]) {
            XCTAssertEqual(value, expected, accuracy: 1e-6)
        }

        let a = Tensor(random: count, seed: 10), b = Tensor(random: count, seed: 11)
        let dA = Tensor(zeros: count), dB = Tensor(zeros: count)
        func residualLoss() -> Double {
            residualForward(out: out.buffer, a: a.buffer, b: b.buffer, count: count)
            return weightedSum(out, dOut)
        }
        residualBackward(dA: dA.buffer, dB: dB.buffer, dOut: dOut.buffer, count: count)
        assertGradient("residual dA", of: a, analytic: dA, loss: residualLoss)
        assertGradient("residual dB", of: b, analytic: dB, loss: residualLoss)
    }

    func testDropout() {
        let count = 100_000, probability: Float = 0.3, seed: UInt64 = 42
        let inp = Tensor([Float](repeating: 1, count: count)), out = Tensor(zeros: count)
        dropoutForward(out: out.buffer, inp: inp.buffer, count: count, probability: probability, seed: seed)
        let kept = out.array.filter { $0 != 0 }
        XCTAssertEqual(Double(kept.count) / Double(count), 0.7, accuracy: 0.01)
        XCTAssertTrue(kept.allSatisfy { abs($0 - 1 / 0.7) < 1e-6 }, "kept values are scaled by 1/(1-p)")
        let again = Tensor(zeros: count)
        dropoutForward(out: again.buffer, inp: inp.buffer, count: count, probability: probability, seed: seed)
        XCTAssertEqual(out.array, again.array, "same seed, same mask")
        dropoutForward(out: again.buffer, inp: inp.buffer, count: count, probability: probability, seed: seed + 1)
        XCTAssertNotEqual(out.array, again.array, "another seed, another mask")

        let small = 50
        let x = Tensor(random: small, seed: 12), y = Tensor(zeros: small), dOut = Tensor(random: small, seed: 13)
        let dX = Tensor(zeros: small)
        func loss() -> Double {
            dropoutForward(out: y.buffer, inp: x.buffer, count: small, probability: probability, seed: seed)
            return weightedSum(y, dOut)
        }
        dropoutBackward(dInp: dX.buffer, dOut: dOut.buffer, count: small, probability: probability, seed: seed)
        assertGradient("dropout", of: x, analytic: dX, loss: loss)
    }

    func testEmbeddingAndPositions() {
        let vocabulary = 7, channels = 4, batch = 2, time = 3
        let tokens: [Int32] = [1, 5, 1, 6, 0, 5]  // repeats accumulate
        let table = Tensor(random: vocabulary * channels, seed: 14), positions = Tensor(random: time * channels, seed: 15)
        let out = Tensor(zeros: batch * time * channels), dOut = Tensor(random: out.count, seed: 16)
        let dTable = Tensor(zeros: table.count), dPositions = Tensor(zeros: positions.count)
        let scale = Float(channels).squareRoot()
        tokens.withUnsafeBufferPointer { ids in
            func loss() -> Double {
                embeddingForward(out: out.buffer, tokens: ids, table: table.buffer, vocabulary: vocabulary, channels: channels, scale: scale)
                addPositionsForward(out: out.buffer, positions: positions.buffer, batch: batch, time: time, channels: channels)
                return weightedSum(out, dOut)
            }
            _ = loss()
            embeddingBackward(dTable: dTable.buffer, dOut: dOut.buffer, tokens: ids, channels: channels, scale: scale)
            addPositionsBackward(dPositions: dPositions.buffer, dOut: dOut.buffer, batch: batch, time: time, channels: channels)
            assertGradient("embedding dTable", of: table, analytic: dTable, loss: loss)
            assertGradient("positions dPositions", of: positions, analytic: dPositions, loss: loss)
        }
        XCTAssertEqual(Array(dTable.array[(2 * channels)..<(5 * channels)]), [Float](repeating: 0, count: 3 * channels),
                       "unused rows get no gradient")
    }

    func testSinusoidalPositions() {
        let length = 50, channels = 8
        let table = Tensor(zeros: length * channels)
        sinusoidalPositions(into: table.buffer, length: length, channels: channels)
        XCTAssertEqual(Array(table.array[0..<channels]), [0, 1, 0, 1, 0, 1, 0, 1])
        for (t, i) in [(1, 0), (7, 2), (49, 6)] {
            let angle = Double(t) / pow(10_000, Double(i) / Double(channels))
            XCTAssertEqual(table[t * channels + i], Float(sin(angle)), accuracy: 1e-6)
            XCTAssertEqual(table[t * channels + i + 1], Float(cos(angle)), accuracy: 1e-6)
        }
    }

    private func checkAttention(causal: Bool, padded: Bool, queryTime: Int, keyTime: Int, batch: Int = 2, channels: Int = 6, heads: Int = 2) {
        let q = Tensor(random: batch * queryTime * channels, seed: 17), k = Tensor(random: batch * keyTime * channels, seed: 18)
        let v = Tensor(random: batch * keyTime * channels, seed: 19)
        let out = Tensor(zeros: q.count), probs = Tensor(zeros: batch * heads * queryTime * keyTime)
        let dOut = Tensor(random: q.count, seed: 20)
        let dQ = Tensor(zeros: q.count), dK = Tensor(zeros: k.count), dV = Tensor(zeros: v.count)
        let scratch = Tensor(zeros: batch * heads * queryTime * keyTime)
        // Batch 1 has its last key padded.
        let padding: [Bool] = (0..<(batch * keyTime)).map { padded && $0 == batch * keyTime - 1 }
        padding.withUnsafeBufferPointer { padding in
            let mask = AttentionMask(causal: causal, keyPadding: padded ? padding : nil)
            func loss() -> Double {
                attentionForward(out: out.buffer, probs: probs.buffer, q: q.buffer, k: k.buffer, v: v.buffer, mask: mask,
                                 batch: batch, queryTime: queryTime, keyTime: keyTime, channels: channels, heads: heads)
                return weightedSum(out, dOut)
            }
            _ = loss()
            attentionBackward(dQ: dQ.buffer, dK: dK.buffer, dV: dV.buffer, scratch: scratch.buffer, dOut: dOut.buffer,
                              q: q.buffer, k: k.buffer, v: v.buffer, probs: probs.buffer, causal: causal, batch: batch, queryTime: queryTime,
                              keyTime: keyTime, channels: channels, heads: heads)
            let label = "attention causal \(causal) padded \(padded)"
            assertGradient("\(label) dQ", of: q, analytic: dQ, epsilon: 1e-3, loss: loss)
            assertGradient("\(label) dK", of: k, analytic: dK, epsilon: 1e-3, loss: loss)
            assertGradient("\(label) dV", of: v, analytic: dV, epsilon: 1e-3, loss: loss)
        }
        // Masked weights are exactly zero; rows sum to one.
        for b in 0..<batch {
            for h in 0..<heads {
                for i in 0..<queryTime {
                    let row = ((b * heads + h) * queryTime + i) * keyTime
                    let weights = (0..<keyTime).map { probs[row + $0] }
                    XCTAssertEqual(Double(weights.reduce(0, +)), 1, accuracy: 1e-5)
                    if causal { XCTAssertTrue(weights[(i + 1)...].allSatisfy { $0 == 0 }) }
                    if padded && b == batch - 1 { XCTAssertEqual(weights[keyTime - 1], 0) }
                }
            }
        }
    }

    func testSelfAttentionWithPaddingMask() { checkAttention(causal: false, padded: true, queryTime: 4, keyTime: 4) }
    func testCausalSelfAttention() { checkAttention(causal: true, padded: false, queryTime: 4, keyTime: 4) }
    func testCrossAttentionDifferentLengths() { checkAttention(causal: false, padded: true, queryTime: 3, keyTime: 5) }
    /// Longer than one 64-row causal block: the blocked path that skips the masked triangle.
    func testCausalSelfAttentionAcrossBlocks() {
        checkAttention(causal: true, padded: false, queryTime: 70, keyTime: 70, batch: 1, channels: 4, heads: 2)
    }

    func testCrossEntropyWithSmoothingAndIgnoredTargets() {
        let vocabulary = 7, smoothing: Float = 0.1
        let targets: [Int32] = [3, 0, 6, 1]  // 0 is padding
        let logits = Tensor(random: targets.count * vocabulary, seed: 21, scale: 3)
        let dLogits = Tensor(zeros: logits.count)
        targets.withUnsafeBufferPointer { targets in
            let result = crossEntropy(logits: logits.buffer, targets: targets, vocabulary: vocabulary, smoothing: smoothing,
                                      ignored: 0, dLogits: dLogits.buffer)
            XCTAssertEqual(result.targetTokens, 3)
            // The definition, in Double.
            var expected = 0.0
            for (row, target) in targets.enumerated() where target != 0 {
                let x = (0..<vocabulary).map { Double(logits[row * vocabulary + $0]) }
                let logSumExp = log(x.map { exp($0) }.reduce(0, +))
                let logP = x.map { $0 - logSumExp }
                expected += (1 - Double(smoothing)) * -logP[Int(target)] + Double(smoothing) * -logP.reduce(0, +) / Double(vocabulary)
            }
            XCTAssertEqual(result.loss, expected, accuracy: 1e-5)
            XCTAssertEqual(Array(dLogits.array[vocabulary..<(2 * vocabulary)]), [Float](repeating: 0, count: vocabulary),
                           "ignored rows have no gradient")
            assertGradient("cross-entropy dLogits", of: logits, analytic: dLogits, epsilon: 1e-2) {
                crossEntropy(logits: logits.buffer, targets: targets, vocabulary: vocabulary, smoothing: smoothing, ignored: 0).loss
            }
        }
    }
}
