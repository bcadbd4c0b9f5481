import Kernels
import XCTest

/// Every parallel kernel gives bitwise the same result with 1, 2 and 3 compute threads (3 splits work into parts
/// that are not halves), on shapes that are not multiples of any tile size.
final class ThreadCountTests: XCTestCase {
    override func tearDown() { setComputeThreads(1) }

    /// Runs `compute` with 1, 2 and 3 threads and checks the three results are bitwise equal.
    private func assertSameForAnyThreadCount(_ what: String, file: StaticString = #filePath, line: UInt = #line,
                                             _ compute: () -> [Float]) {
        setComputeThreads(1)
        let one = compute()
        for threads in [2, 3] {
            setComputeThreads(threads)
            let other = compute()
            XCTAssertEqual(one.count, other.count, "\(what): results of different lengths", file: file, line: line)
            let differing = zip(one, other).filter { $0.bitPattern != $1.bitPattern }.count
            XCTAssertEqual(differing, 0, "\(what): \(differing) of \(one.count) values differ between 1 and \(threads) threads",
                           file: file, line: line)
        }
    }

    func testGEMMTilesDependOnTheShapeOnly() {
        XCTAssertEqual(GEMMTiling.aloneCount(m: 100, n: 127), 1, "small products are one tile")
        XCTAssertEqual(GEMMTiling.aloneCount(m: 2048, n: 384), 2, "two tiles keep two threads busy")
        XCTAssertEqual(GEMMTiling.aloneCount(m: 2048, n: 9000), 3, "more past the largest tile")
        XCTAssertEqual(GEMMTiling.sideBySideCount(m: 384, n: 384), 1, "a product beside another is not cut")
        let tall = GEMMTiling(m: 2048, n: 384, count: 2)
        XCTAssertTrue(tall.alongRows)
        XCTAssertEqual(tall.tile, 1024)
        let wide = GEMMTiling(m: 150, n: 301, count: 2)
        XCTAssertFalse(wide.alongRows, "cut along the longer side")
        XCTAssertEqual([wide.tile, wide.count], [160, 2], "multiples of 16, the last tile shorter")
    }

    /// Two products side by side (a linear layer's input and weight gradients), one of them cut past the largest tile,
    /// so both are: the same bits for any thread count, and the right products.
    func testGEMMsSideBySide() {
        let (m, n, k) = (40, 4200, 9)
        let a = Tensor(random: m * k, seed: 1), b = Tensor(random: k * n, seed: 2), d = Tensor(random: k * 133, seed: 4)
        let (startC, startE) = (Tensor(random: m * n, seed: 3).array, Tensor(random: m * 133, seed: 5).array)
        XCTAssertEqual(GEMMTiling.sideBySideCount(m: m, n: n), 2)
        var result: [Float] = []
        assertSameForAnyThreadCount("two products side by side") {
            let c = Tensor(startC), e = Tensor(startE)
            gemm(GEMM(transA: false, transB: false, m: m, n: n, k: k, a: a.buffer.baseAddress!, lda: k, b: b.buffer.baseAddress!,
                      ldb: n, beta: 1, c: c.buffer.baseAddress!, ldc: n),
                 GEMM(transA: false, transB: false, m: m, n: 133, k: k, a: a.buffer.baseAddress!, lda: k, b: d.buffer.baseAddress!,
                      ldb: 133, beta: 1, c: e.buffer.baseAddress!, ldc: 133))
            result = c.array + e.array
            return result
        }
        assertClose(result, naiveGEMM(transA: false, transB: false, m: m, n: n, k: k, alpha: 1, a: a, b: b, beta: 1, c: startC)
                        + naiveGEMM(transA: false, transB: false, m: m, n: 133, k: k, alpha: 1, a: a, b: d, beta: 1, c: startE),
                    "two products side by side")
    }

    /// C = alpha·op(A)·op(B) + beta·C in Double, with the row-major layouts `gemm` takes.
    private func naiveGEMM(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: Tensor, b: Tensor, beta: Float,
                           c: [Float]) -> [Float] {
        (0..<(m * n)).map { index in
            let (i, j) = (index / n, index % n)
            var dot = 0.0
            for p in 0..<k { dot += Double(transA ? a[p * m + i] : a[i * k + p]) * Double(transB ? b[j * k + p] : b[p * n + j]) }
            return Float(Double(alpha) * dot + Double(beta) * Double(c[index]))
        }
    }

    private func assertClose(_ actual: [Float], _ expected: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(actual.count, expected.count, what, file: file, line: line)
        let worst = zip(actual, expected).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? 0
        XCTAssertLessThan(worst, 1e-4, "\(what): the tiled product differs from the plain one by \(worst)", file: file, line: line)
    }

    /// All four transpose cases, products cut along rows and along columns, with lengths that leave partial tiles:
    /// the same bits for any thread count, and the right product.
    func testGEMM() {
        let shapes = [(m: 1, n: 7, k: 5), (m: 150, n: 33, k: 17), (m: 37, n: 301, k: 29), (m: 300, n: 131, k: 64),
                      (m: 129, n: 129, k: 3), (m: 1000, n: 20, k: 70), (m: 5000, n: 3, k: 4), (m: 2, n: 4500, k: 3)]
        for (m, n, k) in shapes {
            let a = Tensor(random: m * k, seed: 1), b = Tensor(random: k * n, seed: 2), start = Tensor(random: m * n, seed: 3).array
            for transA in [false, true] {
                for transB in [false, true] {
                    let what = "gemm \(m)x\(n)x\(k) transA \(transA) transB \(transB)"
                    var result: [Float] = []
                    assertSameForAnyThreadCount(what) {
                        let c = Tensor(start)
                        gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.7, a: a.buffer.baseAddress!,
                             lda: transA ? m : k, b: b.buffer.baseAddress!, ldb: transB ? k : n, beta: 1.5,
                             c: c.buffer.baseAddress!, ldc: n)
                        result = c.array
                        return result
                    }
                    assertClose(result, naiveGEMM(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.7, a: a, b: b,
                                                  beta: 1.5, c: start), what)
                }
            }
        }
    }

    func testLinearForwardAndBackward() {
        let rows = 203, inFeatures = 45, outFeatures = 301
        let inp = Tensor(random: rows * inFeatures, seed: 1), weight = Tensor(random: outFeatures * inFeatures, seed: 2)
        let bias = Tensor(random: outFeatures, seed: 3), dOut = Tensor(random: rows * outFeatures, seed: 4)
        assertSameForAnyThreadCount("linear") {
            let out = Tensor(zeros: rows * outFeatures), dInp = Tensor(random: inp.count, seed: 5)
            let dWeight = Tensor(random: weight.count, seed: 6), dBias = Tensor(random: outFeatures, seed: 7)
            linearForward(out: out.buffer, inp: inp.buffer, weight: weight.buffer, bias: bias.buffer, rows: rows,
                          inFeatures: inFeatures, outFeatures: outFeatures)
            linearBackward(dInp: dInp.buffer, dWeight: dWeight.buffer, dBias: dBias.buffer, dOut: dOut.buffer, inp: inp.buffer,
                           weight: weight.buffer, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
            return out.array + dInp.array + dWeight.array + dBias.array
        }
    }

    func testElementWiseAndRowWiseKernels() {
        let rows = 171, channels = 301, count = rows * channels  // 51,471 elements: four element tiles, the last partial
        let x = Tensor(random: count, seed: 1, scale: 3), dOut = Tensor(random: count, seed: 2)
        let weight = Tensor(random: channels, seed: 3), bias = Tensor(random: channels, seed: 4)
        let targets = (0..<rows).map { Int32($0 % 7 == 0 ? 0 : ($0 * 37) % channels) }
        assertSameForAnyThreadCount("GELU, layer norm, cross-entropy, AdamW, sum of squares") {
            let gelu = Tensor(zeros: count), derivative = Tensor(zeros: count), dGelu = Tensor(random: count, seed: 5)
            geluForward(out: gelu.buffer, inp: x.buffer, count: count, derivative: derivative.buffer)
            geluBackward(dInp: dGelu.buffer, dOut: dOut.buffer, inp: x.buffer, count: count)
            let normed = Tensor(zeros: count), mean = Tensor(zeros: rows), rstd = Tensor(zeros: rows)
            let dInp = Tensor(zeros: count), dWeight = Tensor(zeros: channels), dBias = Tensor(zeros: channels)
            layerNormForward(out: normed.buffer, mean: mean.buffer, rstd: rstd.buffer, inp: x.buffer, weight: weight.buffer,
                             bias: bias.buffer, rows: rows, channels: channels)
            layerNormBackward(dInp: dInp.buffer, dWeight: dWeight.buffer, dBias: dBias.buffer, dOut: dOut.buffer, inp: x.buffer,
                              weight: weight.buffer, mean: mean.buffer, rstd: rstd.buffer, rows: rows, channels: channels)
            let dLogits = Tensor(zeros: count)
            let loss = targets.withUnsafeBufferPointer {
                crossEntropy(logits: x.buffer, targets: $0, vocabulary: channels, smoothing: 0.1, ignored: 0,
                             dLogits: dLogits.buffer, scale: 0.5).loss
            }
            let parameters = Tensor(random: count, seed: 6), first = Tensor(random: count, seed: 7)
            let second = Tensor(random: count, seed: 8, scale: 0.5)
            for i in 0..<count { second[i] = abs(second[i]) }
            adamWUpdate(parameters: parameters.buffer, gradients: dOut.buffer, firstMoment: first.buffer, secondMoment: second.buffer,
                        step: 3, learningRate: 1e-3, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: 0.01, gradientScale: 0.25)
            let norm = sumOfSquares(dOut.buffer)
            return gelu.array + derivative.array + dGelu.array + normed.array + dInp.array + dWeight.array + dBias.array
                + dLogits.array + parameters.array + first.array + second.array
                + [Float(bitPattern: UInt32(truncatingIfNeeded: loss.bitPattern)), Float(bitPattern: UInt32(truncatingIfNeeded: norm.bitPattern))]
        }
    }

    /// Attention over (batch, head) pairs, causal with a query length that leaves a partial 64-row block, and
    /// cross-attention with padded keys.
    func testAttention() {
        let batch = 3, heads = 4, channels = 24
        for (queryTime, keyTime, causal) in [(70, 70, true), (19, 23, false)] {
            let q = Tensor(random: batch * queryTime * channels, seed: 1), k = Tensor(random: batch * keyTime * channels, seed: 2)
            let v = Tensor(random: batch * keyTime * channels, seed: 3), dOut = Tensor(random: q.count, seed: 4)
            let padding = (0..<(batch * keyTime)).map { !causal && $0 % keyTime >= keyTime - $0 / keyTime * 5 }
            assertSameForAnyThreadCount("attention Tq \(queryTime) Tk \(keyTime) causal \(causal)") {
                let out = Tensor(zeros: q.count), probs = Tensor(zeros: batch * heads * queryTime * keyTime)
                let scratch = Tensor(zeros: probs.count)
                let dQ = Tensor(zeros: q.count), dK = Tensor(zeros: k.count), dV = Tensor(zeros: v.count)
                padding.withUnsafeBufferPointer { padding in
                    attentionForward(out: out.buffer, probs: probs.buffer, q: q.buffer, k: k.buffer, v: v.buffer,
                                     mask: AttentionMask(causal: causal, keyPadding: causal ? nil : padding), batch: batch,
                                     queryTime: queryTime, keyTime: keyTime, channels: channels, heads: heads)
                }
                attentionBackward(dQ: dQ.buffer, dK: dK.buffer, dV: dV.buffer, scratch: scratch.buffer, dOut: dOut.buffer,
                                  q: q.buffer, k: k.buffer, v: v.buffer, probs: probs.buffer, causal: causal, batch: batch,
                                  queryTime: queryTime, keyTime: keyTime, channels: channels, heads: heads)
                return out.array + probs.array + dQ.array + dK.array + dV.array
            }
        }
    }
}
