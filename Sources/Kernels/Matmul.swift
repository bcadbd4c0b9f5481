import CBLAS

/// One product C[M,N] = alpha · op(A) · op(B) + beta · C, row-major (OpenBLAS's sgemm arguments). `lda`/`ldb`/`ldc` are
/// row strides, so a head's slice of a [B,T,C] buffer is read in place (stride C) without copying.
public struct GEMM {
    /// Whether op(A) is Aᵀ and op(B) is Bᵀ (OpenBLAS's CblasTrans).
    public var transA: Bool, transB: Bool
    /// The shapes: op(A) is [M,K], op(B) is [K,N], C is [M,N].
    public var m: Int, n: Int, k: Int
    /// The factor on op(A) · op(B).
    public var alpha: Float
    /// A (row-major, [M,K], or [K,M] when transposed) and its row stride in elements.
    public var a: UnsafePointer<Float>, lda: Int
    /// B (row-major, [K,N], or [N,K] when transposed) and its row stride in elements.
    public var b: UnsafePointer<Float>, ldb: Int
    /// The factor on C's previous contents: 0 overwrites C, 1 accumulates into it.
    public var beta: Float
    /// C (row-major [M,N]), written in place, and its row stride in elements.
    public var c: UnsafeMutablePointer<Float>, ldc: Int

    /// A product with its arguments as cblas_sgemm takes them (row-major); `alpha` defaults to 1.
    public init(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        (self.transA, self.transB, self.m, self.n, self.k, self.alpha) = (transA, transB, m, n, k, alpha)
        (self.a, self.lda, self.b, self.ldb, self.beta, self.c, self.ldc) = (a, lda, b, ldb, beta, c, ldc)
    }

    /// Computes tile `index` of `tiling` with one single-threaded OpenBLAS call.
    func compute(tile index: Int, of tiling: GEMMTiling) {
        let range = tiling.range(index, m: m, n: n)
        if tiling.alongRows {
            // Rows of op(A): rows of A, or columns of A when it is transposed.
            serialGemm(transA: transA, transB: transB, m: range.count, n: n, k: k, alpha: alpha,
                       a: transA ? a + range.lowerBound : a + range.lowerBound * lda, lda: lda, b: b, ldb: ldb,
                       beta: beta, c: c + range.lowerBound * ldc, ldc: ldc)
        } else {
            // Columns of op(B): columns of B, or rows of B when it is transposed.
            serialGemm(transA: transA, transB: transB, m: m, n: range.count, k: k, alpha: alpha, a: a, lda: lda,
                       b: transB ? b + range.lowerBound * ldb : b + range.lowerBound, ldb: ldb,
                       beta: beta, c: c + range.lowerBound, ldc: ldc)
        }
    }
}

/// Computes `first` and, when given, `second` — two independent products (neither writes what the other reads or
/// writes) — through OpenBLAS. Each is cut into the fixed tiles of `GEMMTiling`, a function of the shapes alone, and
/// the compute threads share the tiles of both out, each tile one single-threaded OpenBLAS call: one pool of threads
/// for everything (OpenBLAS's own workers would spin against ours), and no OpenBLAS call changes with the thread
/// count, so C is bitwise the same for any thread count.
public func gemm(_ first: GEMM, _ second: GEMM? = nil) {
    let count = second.map { max(GEMMTiling.sideBySideCount(m: first.m, n: first.n), GEMMTiling.sideBySideCount(m: $0.m, n: $0.n)) }
        ?? GEMMTiling.aloneCount(m: first.m, n: first.n)
    let firstTiling = GEMMTiling(m: first.m, n: first.n, count: count)
    let secondTiling = second.map { GEMMTiling(m: $0.m, n: $0.n, count: count) }
    parallelFor(firstTiling.count + (secondTiling?.count ?? 0), tile: 1) { units in
        for unit in units {
            if unit < firstTiling.count {
                first.compute(tile: unit, of: firstTiling)
            } else if let second, let secondTiling {
                second.compute(tile: unit - firstTiling.count, of: secondTiling)
            }
        }
    }
}

/// C[M,N] = alpha · op(A) · op(B) + beta · C (see `GEMM` and `gemm(_:_:)`).
public func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                 a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                 beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    gemm(GEMM(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc))
}

/// How `gemm` cuts C[M,N] into tiles: a function of the shapes, never of the thread count. OpenBLAS's AVX2 kernels
/// compute a row of C differently depending on where it falls in their blocks, so the calls themselves must not
/// change with the thread count.
///
/// Each extra tile repacks the operand it does not cut (cut along M, all of op(B): K x N floats): at one thread,
/// cutting a 384 x 384 weight gradient (K = 2048) in two costs it 5-9%. So C is cut along its longer side into as
/// few tiles as keep two threads busy: two for a product computed alone (from 128 rows or columns up), none when two
/// products of equal work go side by side (a linear layer's input and weight gradients), and more only past
/// `maximumTile`; products side by side get the same count, so two threads get equal shares.
public struct GEMMTiling: Equatable, Sendable {
    /// Cut along M (rows of C) when true, along N (columns of C) otherwise.
    public let alongRows: Bool
    /// Rows (or columns) per tile, a multiple of 16 unless the product is one tile; the last tile may be shorter.
    public let tile: Int
    /// Number of tiles.
    public let count: Int

    /// The longest side a tile has along the cut.
    public static let maximumTile = 4096

    /// Tiles for a product computed side by side with another: one, more past `maximumTile`.
    public static func sideBySideCount(m: Int, n: Int) -> Int { max(1, (max(m, n) + maximumTile - 1) / maximumTile) }

    /// Tiles for a product computed alone: at least two from 128 rows or columns up, so two threads share it.
    public static func aloneCount(m: Int, n: Int) -> Int { max(m, n) >= 128 ? max(2, sideBySideCount(m: m, n: n)) : 1 }

    /// About `count` equal tiles (multiples of 16) along the longer side of C[M,N].
    public init(m: Int, n: Int, count: Int) {
        alongRows = m >= n
        let extent = max(m, n)
        tile = count <= 1 ? max(1, extent) : max(16, ((extent + count - 1) / count + 15) / 16 * 16)
        self.count = (extent + tile - 1) / tile
    }

    /// Rows (or columns) of tile `index`.
    func range(_ index: Int, m: Int, n: Int) -> Range<Int> {
        tileRange(index, tile: tile, count: alongRows ? m : n)
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

/// The CPU kernel family OpenBLAS chose when it loaded (`Haswell`, `Zen`, `SkylakeX`, `Cooperlake`, ...; the
/// environment variable `OPENBLAS_CORETYPE` overrides the choice). Results may differ in the last bits between
/// families, never between thread counts.
public var blasCoreName: String {
    guard let name = openblas_get_corename() else { return "unknown" }
    return String(cString: name)
}

/// How this OpenBLAS was built to thread: "sequential", "pthreads" or "OpenMP". ddp calls it from its own threads,
/// one tile per call; an OpenMP build also follows `OMP_NUM_THREADS` in each calling thread, so it must be 1 there.
public var blasThreading: String {
    switch openblas_get_parallel() {
    case 0: return "sequential"
    case 1: return "pthreads"
    default: return "OpenMP"
    }
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
        parallelFor(rows, tile: 64) { rowRange in
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
    // The weight and input gradients are independent products of equal work: computed side by side.
    let weightGradient = GEMM(transA: true, transB: false, m: outFeatures, n: inFeatures, k: rows,
                              a: dOut.baseAddress!, lda: outFeatures, b: inp.baseAddress!, ldb: inFeatures,
                              beta: 1, c: dWeight.baseAddress!, ldc: inFeatures)
    if let dInp {
        requireCount(dInp, rows * inFeatures, "dInp")
        gemm(weightGradient, GEMM(transA: false, transB: false, m: rows, n: inFeatures, k: outFeatures,
                                  a: dOut.baseAddress!, lda: outFeatures, b: weight.baseAddress!, ldb: inFeatures,
                                  beta: 1, c: dInp.baseAddress!, ldc: inFeatures))
    } else {
        gemm(weightGradient)
    }
    if let dBias {
        requireCount(dBias, outFeatures, "dBias")
        // Split by feature, rows in order: the same summation order for any thread count.
        parallelFor(outFeatures, tile: 64) { features in
            for row in 0..<rows {
                let gradient = dOut.baseAddress! + row * outFeatures
                for o in features { dBias[o] += gradient[o] }
            }
        }
    }
}
