import Kernels
import XCTest

/// The tiled attention kernels against the reference kernels (attentionForward/attentionBackward, which store every
/// probability): outputs and every gradient within 1e-5 relative, on shapes that leave partial tiles; finite
/// differences; and the same bits for any thread count.
final class FlashAttentionTests: XCTestCase {
    override func tearDown() { setComputeThreads(1) }

    private struct Case {
        var batch = 2, queryTime: Int, keyTime: Int, channels = 8, heads = 2, causal = false
        /// Padded keys per batch row, counted from the end (row b pads `padded[b]` keys).
        var padded: [Int] = []
        /// Padded keys per batch row at the start (whole key tiles of padding before the first visible key).
        var paddedFront: [Int] = []
        var isPadded: Bool { !padded.isEmpty || !paddedFront.isEmpty }
        /// Both passes' tiles; nil takes the kernels' own (`.forward`, `.backward`).
        var tiles: AttentionTiles? = nil
    }

    private struct Result {
        var out: [Float], dQ: [Float], dK: [Float], dV: [Float]
        var all: [Float] { out + dQ + dK + dV }
    }

    private func inputs(_ c: Case) -> (q: Tensor, k: Tensor, v: Tensor, dOut: Tensor, padding: [Bool]) {
        let q = Tensor(random: c.batch * c.queryTime * c.channels, seed: 31, scale: 2)
        let k = Tensor(random: c.batch * c.keyTime * c.channels, seed: 32, scale: 2)
        let v = Tensor(random: c.batch * c.keyTime * c.channels, seed: 33)
        let dOut = Tensor(random: q.count, seed: 34)
        let padding = (0..<(c.batch * c.keyTime)).map { index in
            let b = index / c.keyTime, t = index % c.keyTime
            return (b < c.padded.count && t >= c.keyTime - c.padded[b]) || (b < c.paddedFront.count && t < c.paddedFront[b])
        }
        return (q, k, v, dOut, padding)
    }

    private func reference(_ c: Case) -> Result {
        let (q, k, v, dOut, padding) = inputs(c)
        let out = Tensor(zeros: q.count), probs = Tensor(zeros: c.batch * c.heads * c.queryTime * c.keyTime)
        let scratch = Tensor(zeros: probs.count), dQ = Tensor(zeros: q.count), dK = Tensor(zeros: k.count), dV = Tensor(zeros: v.count)
        padding.withUnsafeBufferPointer { padding in
            attentionForward(out: out.buffer, probs: probs.buffer, q: q.buffer, k: k.buffer, v: v.buffer,
                             mask: AttentionMask(causal: c.causal, keyPadding: c.isPadded ? padding : nil), batch: c.batch,
                             queryTime: c.queryTime, keyTime: c.keyTime, channels: c.channels, heads: c.heads)
        }
        attentionBackward(dQ: dQ.buffer, dK: dK.buffer, dV: dV.buffer, scratch: scratch.buffer, dOut: dOut.buffer, q: q.buffer,
                          k: k.buffer, v: v.buffer, probs: probs.buffer, causal: c.causal, batch: c.batch, queryTime: c.queryTime,
                          keyTime: c.keyTime, channels: c.channels, heads: c.heads)
        return Result(out: out.array, dQ: dQ.array, dK: dK.array, dV: dV.array)
    }

    private func tiled(_ c: Case) -> Result {
        let (q, k, v, dOut, padding) = inputs(c)
        let out = Tensor(zeros: q.count), logSumExp = Tensor(zeros: c.batch * c.heads * c.queryTime)
        let dQ = Tensor(zeros: q.count), dK = Tensor(zeros: k.count), dV = Tensor(zeros: v.count)
        padding.withUnsafeBufferPointer { padding in
            let mask = AttentionMask(causal: c.causal, keyPadding: c.isPadded ? padding : nil)
            flashAttentionForward(out: out.buffer, logSumExp: logSumExp.buffer, q: q.buffer, k: k.buffer, v: v.buffer, mask: mask,
                                  batch: c.batch, queryTime: c.queryTime, keyTime: c.keyTime, channels: c.channels, heads: c.heads,
                                  tiles: c.tiles ?? .forward)
            flashAttentionBackward(dQ: dQ.buffer, dK: dK.buffer, dV: dV.buffer, dOut: dOut.buffer, q: q.buffer, k: k.buffer,
                                   v: v.buffer, out: out.buffer, logSumExp: logSumExp.buffer, mask: mask, batch: c.batch,
                                   queryTime: c.queryTime, keyTime: c.keyTime, channels: c.channels, heads: c.heads,
                                   tiles: c.tiles ?? .backward)
        }
        return Result(out: out.array, dQ: dQ.array, dK: dK.array, dV: dV.array)
    }

    /// Largest |a − b| relative to the largest |b| of the tensor (values near zero are compared at the tensor's scale).
    private func assertClose(_ actual: [Float], _ expected: [Float], _ what: String, tolerance: Float = 1e-5,
                             file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(actual.count, expected.count, what, file: file, line: line)
        XCTAssertTrue(actual.allSatisfy(\.isFinite), "\(what): values that are not finite", file: file, line: line)
        let largest = expected.map(abs).max() ?? 0
        XCTAssertGreaterThan(largest, 0, "\(what): all zero, nothing compared", file: file, line: line)
        let worst = zip(actual, expected).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThan(worst / largest, tolerance, "\(what): differs from the reference kernel by \(worst) (largest \(largest))",
                          file: file, line: line)
    }

    private func assertMatchesReference(_ c: Case, _ label: String, file: StaticString = #filePath, line: UInt = #line) {
        let expected = reference(c), actual = tiled(c)
        assertClose(actual.out, expected.out, "\(label) out", file: file, line: line)
        assertClose(actual.dQ, expected.dQ, "\(label) dQ", file: file, line: line)
        assertClose(actual.dK, expected.dK, "\(label) dK", file: file, line: line)
        assertClose(actual.dV, expected.dV, "\(label) dV", file: file, line: line)
    }

    func testCausalSelfAttentionAcrossPartialTiles() {
        // The kernels' own tiles. 150: forward, two full 64-query tiles and a partial one, all keys in one tile;
        // backward, two full 64-key tiles and a partial one. 600: forward, a full 512-key tile and a partial one (the
        // online softmax rescales); backward, query tiles from each key tile's first key, partial at the end.
        assertMatchesReference(Case(batch: 1, queryTime: 150, keyTime: 150, channels: 16, heads: 2, causal: true), "causal T 150")
        assertMatchesReference(Case(batch: 1, queryTime: 600, keyTime: 600, channels: 8, heads: 2, causal: true), "causal T 600")
        // Small tiles of unequal sides: many diagonal tiles, queries and keys cut at different places.
        assertMatchesReference(Case(queryTime: 37, keyTime: 37, causal: true, tiles: AttentionTiles(queries: 8, keys: 5)),
                               "causal T 37, tiles 8x5")
        assertMatchesReference(Case(queryTime: 37, keyTime: 37, causal: true, tiles: AttentionTiles(queries: 5, keys: 16)),
                               "causal T 37, tiles 5x16")
    }

    func testHeadsWiderThanOnePanel() {
        // Heads of 40 and 64 columns: the GEMMs' operands span several 16-column panels, 40 ending in a partial one
        // (the other cases have heads of 3 to 8 columns, inside one panel).
        assertMatchesReference(Case(batch: 1, queryTime: 70, keyTime: 70, channels: 80, heads: 2, causal: true), "causal, head 40")
        assertMatchesReference(Case(batch: 2, queryTime: 21, keyTime: 33, channels: 128, heads: 2, padded: [5, 0],
                                    tiles: AttentionTiles(queries: 7, keys: 19)), "cross, padded, head 64, tiles 7x19")
        assertMatchesReference(Case(batch: 2, queryTime: 45, keyTime: 45, channels: 120, heads: 3, padded: [0, 30],
                                    tiles: AttentionTiles(queries: 16, keys: 32)), "encoder, padded, head 40, tiles 16x32")
        assertMatchesReference(Case(batch: 2, queryTime: 190, keyTime: 33, channels: 80, heads: 2, padded: [0, 9]),
                               "cross, more queries than keys, head 40")
    }

    func testEncoderSelfAttentionWithPaddedBatch() {
        assertMatchesReference(Case(batch: 3, queryTime: 133, keyTime: 133, padded: [0, 1, 70]), "padded T 133")
        assertMatchesReference(Case(batch: 3, queryTime: 29, keyTime: 29, padded: [3, 0, 17], tiles: AttentionTiles(queries: 4, keys: 6)),
                               "padded T 29, tiles 4x6")
    }

    /// Keys padded at the start: the first key tiles of a row are all padding, so the online softmax starts from a
    /// tile with nothing visible and rescales from nothing when the first visible key comes.
    func testPaddingAtTheStartOfARow() {
        assertMatchesReference(Case(queryTime: 11, keyTime: 23, paddedFront: [9, 0], tiles: AttentionTiles(queries: 4, keys: 4)),
                               "cross 11 x 23, 9 leading keys padded, tiles 4x4")
        assertMatchesReference(Case(batch: 2, queryTime: 21, keyTime: 21, padded: [2, 0], paddedFront: [0, 13],
                                    tiles: AttentionTiles(queries: 5, keys: 6)), "self 21, padded at both ends, tiles 5x6")
    }

    func testCrossAttentionWithDifferentLengths() {
        assertMatchesReference(Case(queryTime: 70, keyTime: 200, padded: [0, 90]), "cross 70 x 200")
        assertMatchesReference(Case(queryTime: 190, keyTime: 33, padded: [5, 0]), "cross 190 x 33")
        assertMatchesReference(Case(queryTime: 13, keyTime: 21, padded: [20, 2], tiles: AttentionTiles(queries: 3, keys: 4)),
                               "cross 13 x 21, tiles 3x4")
    }

    /// A batch row whose keys are all padding: zero output and zero gradients, where the reference gives the same
    /// (PyTorch would give NaN).
    func testRowWithEveryKeyPadded() {
        let c = Case(queryTime: 9, keyTime: 11, padded: [11, 0], tiles: AttentionTiles(queries: 4, keys: 4))
        let actual = tiled(c), rowFloats = c.queryTime * c.channels, keyFloats = c.keyTime * c.channels
        XCTAssertTrue(actual.out[..<rowFloats].allSatisfy { $0 == 0 }, "no key to attend to: zero output")
        XCTAssertTrue(actual.dQ[..<rowFloats].allSatisfy { $0 == 0 })
        XCTAssertTrue(actual.dK[..<keyFloats].allSatisfy { $0 == 0 } && actual.dV[..<keyFloats].allSatisfy { $0 == 0 })
        XCTAssertFalse(actual.all.contains { !$0.isFinite })
        assertMatchesReference(c, "one row all padding")
    }

    /// Central differences of Σ out·dOut through the tiled forward; gradients from the tiled backward.
    func testFiniteDifferences() {
        for c in [Case(batch: 2, queryTime: 7, keyTime: 7, channels: 6, heads: 2, causal: true, tiles: AttentionTiles(queries: 3, keys: 2)),
                  Case(batch: 2, queryTime: 5, keyTime: 9, channels: 6, heads: 2, padded: [0, 3], tiles: AttentionTiles(queries: 2, keys: 4))] {
            let (q, k, v, dOut, padding) = inputs(c)
            let out = Tensor(zeros: q.count), logSumExp = Tensor(zeros: c.batch * c.heads * c.queryTime)
            let dQ = Tensor(zeros: q.count), dK = Tensor(zeros: k.count), dV = Tensor(zeros: v.count)
            padding.withUnsafeBufferPointer { padding in
                let mask = AttentionMask(causal: c.causal, keyPadding: c.isPadded ? padding : nil)
                func loss() -> Double {
                    flashAttentionForward(out: out.buffer, logSumExp: logSumExp.buffer, q: q.buffer, k: k.buffer, v: v.buffer,
                                          mask: mask, batch: c.batch, queryTime: c.queryTime, keyTime: c.keyTime, channels: c.channels,
                                          heads: c.heads, tiles: c.tiles!)
                    return weightedSum(out, dOut)
                }
                _ = loss()
                flashAttentionBackward(dQ: dQ.buffer, dK: dK.buffer, dV: dV.buffer, dOut: dOut.buffer, q: q.buffer, k: k.buffer,
                                       v: v.buffer, out: out.buffer, logSumExp: logSumExp.buffer, mask: mask, batch: c.batch,
                                       queryTime: c.queryTime, keyTime: c.keyTime, channels: c.channels, heads: c.heads, tiles: c.tiles!)
                let label = "tiled attention causal \(c.causal) padded \(c.isPadded)"
                assertGradient("\(label) dQ", of: q, analytic: dQ, epsilon: 1e-3, loss: loss)
                assertGradient("\(label) dK", of: k, analytic: dK, epsilon: 1e-3, loss: loss)
                assertGradient("\(label) dV", of: v, analytic: dV, epsilon: 1e-3, loss: loss)
            }
        }
    }

    /// The log-sum-exp the forward keeps is the softmax's normaliser: Σⱼ exp(scoreᵢⱼ − lseᵢ) = 1 over the visible keys.
    func testLogSumExpNormalisesTheProbabilities() {
        let c = Case(batch: 1, queryTime: 20, keyTime: 20, channels: 4, heads: 1, causal: true, tiles: AttentionTiles(queries: 6, keys: 7))
        let (q, k, v, _, _) = inputs(c)
        let out = Tensor(zeros: q.count), logSumExp = Tensor(zeros: c.queryTime)
        flashAttentionForward(out: out.buffer, logSumExp: logSumExp.buffer, q: q.buffer, k: k.buffer, v: v.buffer,
                              mask: AttentionMask(causal: true), batch: 1, queryTime: c.queryTime, keyTime: c.keyTime,
                              channels: c.channels, heads: 1, tiles: c.tiles!)
        for i in 0..<c.queryTime {
            var total = 0.0
            for j in 0...i {
                let score = (0..<c.channels).reduce(0.0) { $0 + Double(q[i * c.channels + $1]) * Double(k[j * c.channels + $1]) } / 2
                total += exp(score - Double(logSumExp[i]))
            }
            XCTAssertEqual(total, 1, accuracy: 1e-5, "query \(i)")
        }
    }

    /// Forward and backward give the same bits with 1, 2 and 3 threads (3 splits the units unevenly).
    func testSameBitsForAnyThreadCount() {
        for c in [Case(batch: 3, queryTime: 70, keyTime: 70, channels: 12, heads: 3, causal: true, tiles: AttentionTiles(queries: 16, keys: 24)),
                  Case(batch: 3, queryTime: 19, keyTime: 45, channels: 12, heads: 3, padded: [0, 5, 44], tiles: AttentionTiles(queries: 8, keys: 8))] {
            setComputeThreads(1)
            let one = tiled(c).all
            for threads in [2, 3] {
                setComputeThreads(threads)
                let other = tiled(c).all
                let differing = zip(one, other).filter { $0.bitPattern != $1.bitPattern }.count
                XCTAssertEqual(differing, 0, "causal \(c.causal): \(differing) values differ between 1 and \(threads) threads")
            }
        }
    }
}
