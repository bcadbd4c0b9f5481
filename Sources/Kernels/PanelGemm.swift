// The small GEMMs inside the tiled attention kernels (FlashAttention.swift): a register-blocked micro-kernel over a
// B operand packed in 16-column panels, as BLIS and OpenBLAS build theirs (Goto and van de Geijn, "Anatomy of
// High-Performance Matrix Multiplication", 2008). Attention's tiles are small (k is the head size, 64 in the
// benchmarks), so a BLAS call spends much of its time packing both operands and clearing C; here each operand is
// packed once per head or key tile and reused by every tile that needs it, and A is read in place.

/// Columns per panel of a packed B operand (one Float32x16 of C per row and panel).
let panelWidth = 16

/// `count` rounded up to whole panels.
@inline(__always)
func panelPadded(_ count: Int) -> Int { (count + panelWidth - 1) / panelWidth * panelWidth }

/// Copies src [rows, columns] (row stride `ld`) into 16-column panels, B(p, c) = src[p, c]:
///   dst[s·panelStride + p·16 + x] = src[p·ld + 16s + x], 0 past `columns`; panelStride ≥ rows·16
/// Rows stay whole, so B of rows p0 ..< p0 + r is the same panels read from dst + p0·16.
@inline(__always)
func packPanels(_ src: UnsafePointer<Float>, ld: Int, rows: Int, columns: Int, into dst: UnsafeMutablePointer<Float>,
                panelStride: Int) {
    for s0 in stride(from: 0, to: columns, by: panelWidth) {
        let width = min(panelWidth, columns - s0), panel = dst + (s0 / panelWidth) * panelStride
        for p in 0..<rows { store(load(src + p * ld + s0, width), panel + p * panelWidth, panelWidth) }
    }
}

/// Packs the transpose of src [rows, columns] (row stride `ld`) in 16-column panels, B(p, c) = src[c, p]:
///   dst[s·panelStride + p·16 + x] = src[(16s + x)·ld + p], 0 past `rows`; panelStride ≥ columns·16
@inline(__always)
func packTransposedPanels(_ src: UnsafePointer<Float>, ld: Int, rows: Int, columns: Int, into dst: UnsafeMutablePointer<Float>,
                          panelStride: Int) {
    for s0 in stride(from: 0, to: rows, by: panelWidth) {
        let width = min(panelWidth, rows - s0), panel = dst + (s0 / panelWidth) * panelStride, first = src + s0 * ld
        // One panel row at a time: sixteen loads down a column of src, one vector store.
        for p in 0..<columns {
            var lanes = Float32x16()
            if width == panelWidth {
                for x in 0..<panelWidth { lanes[x] = first[x &* ld &+ p] }
            } else {
                for x in 0..<width { lanes[x] = first[x &* ld &+ p] }
            }
            store(lanes, panel + p * panelWidth, panelWidth)
        }
    }
}

/// Whether `panelGemm` fuses its multiply-adds: only in builds for a CPU with FMA instructions (Launch/setup.sh
/// passes `-DSWIFTDDP_FMA` when its target CPU has them). Elsewhere a fused multiply-add of SIMD lanes compiles to a
/// library call per lane, some 30x slower than a multiply and an add.
#if SWIFTDDP_FMA
let fusedMultiplyAdd = true
#else
let fusedMultiplyAdd = false
#endif

/// How the GEMM's inner loop adds a product: `acc + a·b` rounded once (fused) or twice.
protocol MultiplyAdd {
    static func apply(_ accumulator: Float32x16, _ a: Float32x16, _ b: Float32x16) -> Float32x16
}

/// acc + a·b with one rounding (one FMA instruction per 8 or 16 lanes where the CPU has them).
enum FusedMultiplyAdd: MultiplyAdd {
    @inline(__always)
    static func apply(_ accumulator: Float32x16, _ a: Float32x16, _ b: Float32x16) -> Float32x16 {
        accumulator.addingProduct(a, b)
    }
}

/// acc + a·b rounded after the multiply and after the add.
enum SeparateMultiplyAdd: MultiplyAdd {
    @inline(__always)
    static func apply(_ accumulator: Float32x16, _ a: Float32x16, _ b: Float32x16) -> Float32x16 {
        accumulator + a * b
    }
}

/// C (=, or += when `accumulate`) alpha·A·B, for A [m, k] read in place and B [k, n] packed in 16-column panels:
///   A(i, p) = a[i·rowStride + p·depthStride]   (A row-major: lda, 1; the transpose of a row-major matrix: 1, lda)
///   B(p, c) = b[(c / 16)·panelStride + p·16 + c % 16]   (`packPanels`, `packTransposedPanels`; all 16 lanes of
///             every panel row are read, so the last panel must be allocated whole)
///   C row-major with row stride ldc; only columns < n are written
/// Each element is one chain of multiply-adds over p in order, then multiplied by alpha (or, accumulating, added to
/// C by one more multiply-add), fused when `fused` (by default `fusedMultiplyAdd`): the arithmetic of every element is
/// fixed by the build, whatever the caller's thread or the block of rows the element falls in.
func panelGemm(m: Int, n: Int, k: Int, alpha: Float = 1, a: UnsafePointer<Float>, rowStride: Int, depthStride: Int,
               b: UnsafePointer<Float>, panelStride: Int, accumulate: Bool, c: UnsafeMutablePointer<Float>, ldc: Int,
               fused: Bool = fusedMultiplyAdd) {
    if fused {
        panelGemm(FusedMultiplyAdd.self, m: m, n: n, k: k, alpha: alpha, a: a, rowStride: rowStride, depthStride: depthStride,
                  b: b, panelStride: panelStride, accumulate: accumulate, c: c, ldc: ldc)
    } else {
        panelGemm(SeparateMultiplyAdd.self, m: m, n: n, k: k, alpha: alpha, a: a, rowStride: rowStride, depthStride: depthStride,
                  b: b, panelStride: panelStride, accumulate: accumulate, c: c, ldc: ldc)
    }
}

/// `panelGemm` with its multiply-add chosen at compile time (one specialised copy per kind).
@inline(__always)
private func panelGemm<Op: MultiplyAdd>(_: Op.Type, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, rowStride: Int,
                                        depthStride: Int, b: UnsafePointer<Float>, panelStride: Int, accumulate: Bool,
                                        c: UnsafeMutablePointer<Float>, ldc: Int) {
    let scale = Float32x16(repeating: alpha)
    @inline(__always)
    func finish(_ sum: Float32x16, _ row: UnsafeMutablePointer<Float>, _ width: Int) {
        store(accumulate ? Op.apply(load(row, width), scale, sum) : sum * scale, row, width)
    }
    for c0 in stride(from: 0, to: n, by: panelWidth) {
        let width = min(panelWidth, n - c0), panel = b + (c0 / panelWidth) * panelStride
        var i = 0
        // Six rows at a time: 6 accumulators of 16 lanes (12 AVX2 registers), one B row and one broadcast A value.
        while i + 6 <= m {
            var s0 = Float32x16(), s1 = Float32x16(), s2 = Float32x16(), s3 = Float32x16(), s4 = Float32x16(), s5 = Float32x16()
            var ap = a + i * rowStride, bp = panel
            for _ in 0..<k {
                let bv = UnsafeRawPointer(bp).loadUnaligned(as: Float32x16.self)
                s0 = Op.apply(s0, Float32x16(repeating: ap[0]), bv)
                s1 = Op.apply(s1, Float32x16(repeating: ap[rowStride]), bv)
                s2 = Op.apply(s2, Float32x16(repeating: ap[2 * rowStride]), bv)
                s3 = Op.apply(s3, Float32x16(repeating: ap[3 * rowStride]), bv)
                s4 = Op.apply(s4, Float32x16(repeating: ap[4 * rowStride]), bv)
                s5 = Op.apply(s5, Float32x16(repeating: ap[5 * rowStride]), bv)
                ap += depthStride
                bp += panelWidth
            }
            let cp = c + i * ldc + c0
            finish(s0, cp, width)
            finish(s1, cp + ldc, width)
            finish(s2, cp + 2 * ldc, width)
            finish(s3, cp + 3 * ldc, width)
            finish(s4, cp + 4 * ldc, width)
            finish(s5, cp + 5 * ldc, width)
            i += 6
        }
        // Then four rows: the same loop with four accumulators (written out, as above, so they stay in registers).
        if i + 4 <= m {
            var s0 = Float32x16(), s1 = Float32x16(), s2 = Float32x16(), s3 = Float32x16()
            var ap = a + i * rowStride, bp = panel
            for _ in 0..<k {
                let bv = UnsafeRawPointer(bp).loadUnaligned(as: Float32x16.self)
                s0 = Op.apply(s0, Float32x16(repeating: ap[0]), bv)
                s1 = Op.apply(s1, Float32x16(repeating: ap[rowStride]), bv)
                s2 = Op.apply(s2, Float32x16(repeating: ap[2 * rowStride]), bv)
                s3 = Op.apply(s3, Float32x16(repeating: ap[3 * rowStride]), bv)
                ap += depthStride
                bp += panelWidth
            }
            let cp = c + i * ldc + c0
            finish(s0, cp, width)
            finish(s1, cp + ldc, width)
            finish(s2, cp + 2 * ldc, width)
            finish(s3, cp + 3 * ldc, width)
            i += 4
        }
        while i < m {
            var s0 = Float32x16()
            var ap = a + i * rowStride, bp = panel
            for _ in 0..<k {
                s0 = Op.apply(s0, Float32x16(repeating: ap[0]), UnsafeRawPointer(bp).loadUnaligned(as: Float32x16.self))
                ap += depthStride
                bp += panelWidth
            }
            finish(s0, c + i * ldc + c0, width)
            i += 1
        }
    }
}
