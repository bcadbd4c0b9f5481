import CBLAS

/// C[M,N] = alpha * op(A) * op(B) + beta * C, row-major, through OpenBLAS. `lda`/`ldb`/`ldc` are row strides, so
/// a head's slice of a [B,T,C] buffer is read in place (stride C) without copying.
@inline(__always)
public func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                 a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                 beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// Sets the number of threads OpenBLAS uses inside each GEMM.
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
        for row in 0..<rows {
            (out.baseAddress! + row * outFeatures).update(from: bias.baseAddress!, count: outFeatures)
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
        for row in 0..<rows {
            let gradient = dOut.baseAddress! + row * outFeatures
            for o in 0..<outFeatures { dBias[o] += gradient[o] }
        }
    }
}

/// Threads for the compute kernels and BLAS together (one rank's share of the cores).
public func setComputeThreads(_ count: Int) {
    setBLASThreads(count)
}
