@testable import Kernels
import XCTest

/// The tiled attention kernels' GEMM (`panelGemm`) and its packing against a plain triple loop in Double: both ways of
/// reading A (a row-major matrix and the transpose of one), alpha, overwriting and accumulating, fused and separate
/// multiply-adds, B starting inside its panels, and every shape of the edges (rows past the 6- and 4-row blocks,
/// columns ending inside a panel).
final class PanelGemmTests: XCTestCase {
    /// Row-major values in [-1, 1).
    private func matrix(_ rows: Int, _ columns: Int, seed: UInt64) -> [Float] {
        Tensor(random: rows * columns, seed: seed).array
    }

    /// C = (accumulate ? C : 0) + alpha·A·B, A [m, k] (or its transpose when `transposedA`: stored [k, m]), B [k, n].
    private func expected(m: Int, n: Int, k: Int, alpha: Float, a: [Float], transposedA: Bool, b: [Float], c: [Float],
                          accumulate: Bool) -> [Float] {
        (0..<(m * n)).map { index in
            let i = index / n, j = index % n
            var sum = 0.0
            for p in 0..<k { sum += Double(transposedA ? a[p * m + i] : a[i * k + p]) * Double(b[p * n + j]) }
            return Float((accumulate ? Double(c[index]) : 0) + Double(alpha) * sum)
        }
    }

    func testMatchesTripleLoopForEveryEdge() {
        var seed: UInt64 = 1
        for (m, n, k) in [(1, 1, 1), (5, 16, 3), (6, 17, 8), (10, 33, 16), (13, 40, 7), (4, 15, 64), (23, 64, 29), (64, 70, 64)] {
            for transposedA in [false, true] {
                for (accumulate, alpha, fused) in [(false, 1, true), (false, 0.125, false), (true, 0.125, true), (true, 1, false)] as [(Bool, Float, Bool)] {
                    seed += 3
                    let a = matrix(transposedA ? k : m, transposedA ? m : k, seed: seed)
                    let b = matrix(k, n, seed: seed + 1), c = matrix(m, n, seed: seed + 2)
                    let want = expected(m: m, n: n, k: k, alpha: alpha, a: a, transposedA: transposedA, b: b, c: c,
                                        accumulate: accumulate)
                    // B packed from rows wider than n (as the kernels pack slices of q, k, v), with two rows before
                    // and one after the k used, so the GEMM starts inside its panels (as dV, dK and the forward's
                    // V do: b + p0·16).
                    let ld = n + 3, rows = k + 3, first = 2, panelStride = rows * panelWidth + 16
                    var bRows = [Float](repeating: .nan, count: rows * ld)
                    for p in 0..<rows { for j in 0..<n { bRows[p * ld + j] = p >= first && p < first + k ? b[(p - first) * n + j] : 1e6 } }
                    var packed = [Float](repeating: .nan, count: panelPadded(n) / panelWidth * panelStride)
                    bRows.withUnsafeBufferPointer { src in
                        packed.withUnsafeMutableBufferPointer { dst in
                            packPanels(src.baseAddress!, ld: ld, rows: rows, columns: n, into: dst.baseAddress!, panelStride: panelStride)
                        }
                    }
                    // C wider than n: columns past n must stay as they were.
                    let ldc = n + 5
                    var got = [Float](repeating: 7, count: m * ldc)
                    for i in 0..<m { for j in 0..<n { got[i * ldc + j] = c[i * n + j] } }
                    a.withUnsafeBufferPointer { a in
                        packed.withUnsafeBufferPointer { b in
                            got.withUnsafeMutableBufferPointer { out in
                                panelGemm(m: m, n: n, k: k, alpha: alpha, a: a.baseAddress!, rowStride: transposedA ? 1 : k,
                                          depthStride: transposedA ? m : 1, b: b.baseAddress! + first * panelWidth,
                                          panelStride: panelStride, accumulate: accumulate, c: out.baseAddress!, ldc: ldc,
                                          fused: fused)
                            }
                        }
                    }
                    let label = "m \(m) n \(n) k \(k) \(transposedA ? "Aᵀ" : "A") \(accumulate ? "+=" : "=") alpha \(alpha)"
                        + (fused ? " fused" : " separate")
                    for i in 0..<m {
                        for j in 0..<n {
                            XCTAssertEqual(got[i * ldc + j], want[i * n + j], accuracy: 1e-5 * Float(k + 1), "\(label) [\(i), \(j)]")
                        }
                        for j in n..<ldc { XCTAssertEqual(got[i * ldc + j], 7, "\(label): column \(j) past n was written") }
                    }
                }
            }
        }
    }

    func testGemmWithTransposedPacking() {
        // S = q·kᵀ as the kernels compute scores: k [keys 37, D 20] (row stride 24) packed transposed, q read in place.
        let queries = 9, keys = 37, depth = 20, ld = 24
        let q = matrix(queries, depth, seed: 5), k = matrix(keys, ld, seed: 6)
        let panelStride = depth * panelWidth
        var packed = [Float](repeating: .nan, count: panelPadded(keys) / panelWidth * panelStride)
        k.withUnsafeBufferPointer { src in
            packed.withUnsafeMutableBufferPointer { dst in
                packTransposedPanels(src.baseAddress!, ld: ld, rows: keys, columns: depth, into: dst.baseAddress!, panelStride: panelStride)
            }
        }
        for fused in [true, false] {
            var scores = [Float](repeating: 0, count: queries * keys)
            q.withUnsafeBufferPointer { q in
                packed.withUnsafeBufferPointer { b in
                    scores.withUnsafeMutableBufferPointer { out in
                        panelGemm(m: queries, n: keys, k: depth, alpha: 0.5, a: q.baseAddress!, rowStride: depth, depthStride: 1,
                                  b: b.baseAddress!, panelStride: panelStride, accumulate: false, c: out.baseAddress!, ldc: keys,
                                  fused: fused)
                    }
                }
            }
            for i in 0..<queries {
                for j in 0..<keys {
                    let want = 0.5 * (0..<depth).reduce(0.0) { $0 + Double(q[i * depth + $1]) * Double(k[j * ld + $1]) }
                    XCTAssertEqual(Double(scores[i * keys + j]), want, accuracy: 1e-5, "S[\(i), \(j)] fused \(fused)")
                }
            }
        }
    }

    func testTransposedPackingZeroPadsThePanel() {
        // src [rows 19, columns 3] → B = srcᵀ [3, 19] in two panels of 16 columns; lanes 19 ..< 32 are zero.
        let rows = 19, columns = 3, ld = 5
        let src = matrix(rows, ld, seed: 99)
        var packed = [Float](repeating: .nan, count: 2 * columns * panelWidth)
        src.withUnsafeBufferPointer { s in
            packed.withUnsafeMutableBufferPointer { d in
                packTransposedPanels(s.baseAddress!, ld: ld, rows: rows, columns: columns, into: d.baseAddress!,
                                     panelStride: columns * panelWidth)
            }
        }
        for p in 0..<columns {
            for c in 0..<(2 * panelWidth) {
                let value = packed[(c / panelWidth) * columns * panelWidth + p * panelWidth + c % panelWidth]
                XCTAssertEqual(value, c < rows ? src[c * ld + p] : 0, "B(\(p), \(c))")
            }
        }
    }
}
