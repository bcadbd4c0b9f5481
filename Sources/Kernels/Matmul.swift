import CBLAS

/// C[M,N] = alpha * op(A) * op(B) + beta * C, row-major, through OpenBLAS. `lda`/`ldb`/`ldc` are row strides, so
/// a head's slice of a [B,T,C] buffer is read in place (stride C) without copying.
///
/// With several compute threads the M rows of C are split across them, each calling single-threaded OpenBLAS on
/// its block: one pool of threads for everything (OpenBLAS's own workers would spin against ours), and every
/// element of C is computed exactly as with one thread.
public func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                 a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                 beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    parallelFor(m, minimumPerThread: 64) { rows in
        // Row block of op(A): rows of A, or columns of A when it is transposed.
        let aBlock = transA ? a + rows.lowerBound : a + rows.lowerBound * lda
        serialGemm(transA: transA, transB: transB, m: rows.count, n: n, k: k, alpha: alpha, a: aBlock, lda: lda,
                   b: b, ldb: ldb, beta: beta, c: c + rows.lowerBound * ldc, ldc: ldc)
    }
}

/// One OpenBLAS call on the calling thread (used inside kernels that already run in parallel).
@inline(__always)
func serialGemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    guard m > 0 else { return }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// Sets the number of threads OpenBLAS uses inside each call (the kernels keep it at 1 and split GEMMs themselves).
public func setBLASThreads(_ count: Int) {
    openblas_set_num_threads(Int32(max(1, count)))
}

// MARK: Linear (torch.nn.Linear: weight is [out, in])

/// out[N,O] = inp[N,I] · weight[O,I]ᵀ + bias[O]
public func linearForward(out: FloatBuffer, inp: FloatBuffer, weight: FloatBuffer, bias: FloatBuffer?,
                          rows: Int, inFeatures: Int, outFeatures: Int) {
    requireCount(out, rows * outFeatures, "out")
    requireCount(inp, rows * inFeatures, "inp")
    requireCount(weight, outFeatures * inFeatures, "weight")
    var beta: Float = 0
    if let bias {
        requireCount(bias, outFeatures, "bias")
        parallelFor(rows, minimumPerThread: 64) { rowRange in
            for row in rowRange { (out.baseAddress! + row * outFeatures).update(from: bias.baseAddress!, count: outFeatures) }
        }
        beta = 1
    }
    gemm(transA: false, transB: true, m: rows, n: outFeatures, k: inFeatures,
         a: inp.baseAddress!, lda: inFeatures, b: weight.baseAddress!, ldb: inFeatures,
         beta: beta, c: out.baseAddress!, ldc: outFeatures)
}

/// dInp[N,I] += dOut[N,O] · weight[O,I];  dWeight[O,I] += dOut[N,O]ᵀ · inp[N,I];  dBias[O] += Σₙ dOut[n,:]
public func linearBackward(dInp: FloatBuffer?, dWeight: FloatBuffer, dBias: FloatBuffer?, dOut: FloatBuffer,
                           inp: FloatBuffer, weight: FloatBuffer, rows: Int, inFeatures: Int, outFeatures: Int) {
    requireCount(dOut, rows * outFeatures, "dOut")
    requireCount(dWeight, outFeatures * inFeatures, "dWeight")
    if let dInp {
        requireCount(dInp, rows * inFeatures, "dInp")
        gemm(transA: false, transB: false, m: rows, n: inFeatures, k: outFeatures,
             a: dOut.baseAddress!, lda: outFeatures, b: weight.baseAddress!, ldb: inFeatures,
             beta: 1, c: dInp.baseAddress!, ldc: inFeatures)
    }
    gemm(transA: true, transB: false, m: outFeatures, n: inFeatures, k: rows,
         a: dOut.baseAddress!, lda: outFeatures, b: inp.baseAddress!, ldb: inFeatures,
         beta: 1, c: dWeight.baseAddress!, ldc: inFeatures)
    if let dBias {
        requireCount(dBias, outFeatures, "dBias")
        // Split by feature, rows in order: the same summation order for any thread count.
        parallelFor(outFeatures, minimumPerThread: 16) { features in
            for row in 0..<rows {
                let gradient = dOut.baseAddress! + row * outFeatures
                for o in features { dBias[o] += gradient[o] }
            }
        }
    }
}
