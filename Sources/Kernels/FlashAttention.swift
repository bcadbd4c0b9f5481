import Foundation

// Attention in tiles with an online softmax (FlashAttention-2: Dao, "FlashAttention-2: Faster Attention with Better
// Parallelism and Work Partitioning", 2023, algorithms 1 and 2). The probabilities are never stored: forward keeps
// one log-sum-exp per query, backward recomputes each tile's probabilities from it. Memory for attention grows with
// B·H·T instead of B·H·Tq·Tk; `attentionForward`/`attentionBackward` stay as the reference the tests compare with.

/// Query rows and key columns per tile of the tiled attention kernels. Each compute thread holds a score tile (two in
/// backward) of queries x keys floats, whatever T is.
public struct AttentionTiles: Equatable, Sendable {
    /// Queries per tile (the forward pass's unit of parallel work, with batch and head).
    public var queries: Int
    /// Keys per tile (the unit streamed through the online softmax).
    public var keys: Int

    /// Tiles of `queries` x `keys`; both must be at least 1.
    public init(queries: Int, keys: Int) {
        precondition(queries >= 1 && keys >= 1, "attention tiles must be at least 1x1, got \(queries)x\(keys)")
        (self.queries, self.keys) = (queries, keys)
    }

    /// The forward pass's tiles: 64 queries (the unit of parallel work with batch and head) x 512 keys. Long key tiles
    /// make few, efficient GEMM calls; up to 512 keys the online softmax is one pass.
    public static let forward = AttentionTiles(queries: 64, keys: 512)
    /// The backward pass's tiles: 128 keys (whose dK and dV accumulate in place) x 256 queries. Measured at T 256 and
    /// 2048 on Zen3 (AVX2): 64-key tiles lose at 2048, 512-query tiles at 256, and 64x128 tiles are 1.3-1.8x slower.
    public static let backward = AttentionTiles(queries: 256, keys: 128)
}

/// D = C / H, after checking what every tiled kernel requires of its shapes (a causal mask needs Tq = Tk).
private func headSizeChecked(mask: AttentionMask, queryTime: Int, keyTime: Int, channels: Int, heads: Int) -> Int {
    precondition(channels % heads == 0, "channels \(channels) not divisible by heads \(heads)")
    precondition(!mask.causal || queryTime == keyTime, "causal attention needs Tq = Tk, got \(queryTime) and \(keyTime)")
    return channels / heads
}

/// Tiled multi-head scaled dot-product attention, forward.
///   q[B,Tq,C], k[B,Tk,C], v[B,Tk,C] → out[B,Tq,C], logSumExp[B,H,Tq]; head h uses columns h·D ..< (h+1)·D
///   out = softmax(q·kᵀ/√D + mask)·v, logSumExp[b,h,i] = log Σⱼ exp(scoreᵢⱼ) over the keys query i sees
/// The same function as `attentionForward` (torch.nn.functional.scaled_dot_product_attention) up to rounding. A query
/// whose keys are all masked gets a zero output and logSumExp +∞ (its probabilities are 0 in backward). Work goes to
/// threads by (batch, head, query tile), each tile computed alone, so results do not depend on the thread count; with
/// a causal mask (Tq = Tk) key tiles right of a query tile are skipped.
public func flashAttentionForward(out: FloatBuffer, logSumExp: FloatBuffer, q: FloatBuffer, k: FloatBuffer, v: FloatBuffer,
                                  mask: AttentionMask, batch: Int, queryTime: Int, keyTime: Int, channels: Int, heads: Int,
                                  tiles: AttentionTiles = .forward) {
    let headSize = headSizeChecked(mask: mask, queryTime: queryTime, keyTime: keyTime, channels: channels, heads: heads)
    requireCount(out, batch * queryTime * channels, "out")
    requireCount(logSumExp, batch * heads * queryTime, "logSumExp")
    requireCount(q, batch * queryTime * channels, "q")
    requireCount(k, batch * keyTime * channels, "k")
    requireCount(v, batch * keyTime * channels, "v")
    let scale = 1 / Float(headSize).squareRoot()
    let queryTiles = (queryTime + tiles.queries - 1) / tiles.queries
    parallelFor(batch * heads * queryTiles, tile: 1) { units in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: tiles.queries * tiles.keys + 2 * tiles.queries) { scratch in
            let scores = scratch.baseAddress!                           // [queries, keys] scores, then probabilities
            let runningMax = scores + tiles.queries * tiles.keys        // [queries]
            let runningSum = runningMax + tiles.queries                 // [queries]
            for unit in units {
                let pair = unit / queryTiles, b = pair / heads, h = pair % heads
                let i0 = (unit % queryTiles) * tiles.queries, i1 = min(i0 + tiles.queries, queryTime), rows = i1 - i0
                let qTile = q.baseAddress! + (b * queryTime + i0) * channels + h * headSize
                let kHead = k.baseAddress! + b * keyTime * channels + h * headSize
                let vHead = v.baseAddress! + b * keyTime * channels + h * headSize
                let outTile = out.baseAddress! + (b * queryTime + i0) * channels + h * headSize
                let padding = mask.keyPadding.map { UnsafeBufferPointer(rebasing: $0[(b * keyTime)..<((b + 1) * keyTime)]) }
                for r in 0..<rows { (outTile + r * channels).update(repeating: 0, count: headSize) }
                runningMax.update(repeating: -.infinity, count: rows)
                runningSum.update(repeating: 0, count: rows)
                let keyEnd = mask.causal ? i1 : keyTime
                for j0 in stride(from: 0, to: keyEnd, by: tiles.keys) {
                    let columns = min(j0 + tiles.keys, keyEnd) - j0
                    serialGemm(transA: false, transB: true, m: rows, n: columns, k: headSize, alpha: scale,
                               a: qTile, lda: channels, b: kHead + j0 * channels, ldb: channels, beta: 0, c: scores, ldc: tiles.keys)
                    let tilePadding = padding.map { UnsafeBufferPointer(rebasing: $0[j0...]) }
                    for r in 0..<rows {
                        let row = scores + r * tiles.keys
                        let visible = mask.causal ? min(columns, i0 + r + 1 - j0) : columns
                        let rescale = onlineSoftmaxRow(row, count: columns, visible: visible, padding: tilePadding,
                                                       runningMax: &runningMax[r], runningSum: &runningSum[r])
                        if rescale != 1 { scaleRow(outTile + r * channels, count: headSize, by: rescale) }
                    }
                    serialGemm(transA: false, transB: false, m: rows, n: headSize, k: columns, a: scores, lda: tiles.keys,
                               b: vHead + j0 * channels, ldb: channels, beta: 1, c: outTile, ldc: channels)
                }
                let lse = logSumExp.baseAddress! + pair * queryTime + i0
                for r in 0..<rows {
                    if runningSum[r] > 0 {
                        scaleRow(outTile + r * channels, count: headSize, by: 1 / runningSum[r])
                        lse[r] = runningMax[r] + log(runningSum[r])
                    } else {
                        lse[r] = .infinity
                    }
                }
            }
        }
    }
}

/// One row of a score tile through the online softmax: the first `visible` scores (those not marked in `padding`)
/// become exp(score − new max), the rest 0; the running max and sum move on, and the return value is the factor
/// exp(old max − new max) the row's accumulated output must be multiplied by (1 when nothing changes).
@inline(__always)
private func onlineSoftmaxRow(_ row: UnsafeMutablePointer<Float>, count: Int, visible: Int, padding: UnsafeBufferPointer<Bool>?,
                              runningMax: inout Float, runningSum: inout Float) -> Float {
    let visible = max(0, visible)
    if let padding {
        for j in 0..<visible where padding[j] { row[j] = -.infinity }
    }
    var tileMax = -Float.infinity
    for j in 0..<visible { tileMax = max(tileMax, row[j]) }
    let newMax = max(runningMax, tileMax)
    guard newMax > -.infinity else {
        row.update(repeating: 0, count: count)
        return 1
    }
    let tileSum = exponentiate(row, visible: visible, maximum: newMax, padding: padding)
    if visible < count { (row + visible).update(repeating: 0, count: count - visible) }
    let rescale: Float = runningMax == -.infinity ? 0 : (runningMax == newMax ? 1 : exp(runningMax - newMax))
    runningSum = runningSum * rescale + tileSum
    runningMax = newMax
    return rescale
}

@inline(__always)
private func scaleRow(_ row: UnsafeMutablePointer<Float>, count: Int, by factor: Float) {
    forEachChunk(count) { start, width in store(load(row + start, width) * factor, row + start, width) }
}

/// Backward of flashAttentionForward, accumulating into dQ, dK, dV (each shaped like q, k, v), given the forward's
/// `out` and `logSumExp` and the same mask:
///   P = exp(q·kᵀ/√D − logSumExp) per tile;  dV += Pᵀ·dOut;  dS = P ⊙ (dOut·vᵀ − rowsum(dOut ⊙ out));
///   dQ += dS·k/√D;  dK += dSᵀ·q/√D
/// Work goes to threads by (batch, head): within one, key tiles go in order, and query tiles in order within each,
/// so every sum is made in the same order for any thread count. Each thread uses two score tiles of its own.
public func flashAttentionBackward(dQ: FloatBuffer, dK: FloatBuffer, dV: FloatBuffer, dOut: FloatBuffer,
                                   q: FloatBuffer, k: FloatBuffer, v: FloatBuffer, out: FloatBuffer, logSumExp: FloatBuffer,
                                   mask: AttentionMask, batch: Int, queryTime: Int, keyTime: Int, channels: Int, heads: Int,
                                   tiles: AttentionTiles = .backward) {
    let headSize = headSizeChecked(mask: mask, queryTime: queryTime, keyTime: keyTime, channels: channels, heads: heads)
    for (buffer, name) in [(dQ, "dQ"), (dOut, "dOut"), (q, "q"), (out, "out")] as [(FloatBuffer, StaticString)] {
        requireCount(buffer, batch * queryTime * channels, name)
    }
    for (buffer, name) in [(dK, "dK"), (dV, "dV"), (k, "k"), (v, "v")] as [(FloatBuffer, StaticString)] {
        requireCount(buffer, batch * keyTime * channels, name)
    }
    requireCount(logSumExp, batch * heads * queryTime, "logSumExp")
    let scale = 1 / Float(headSize).squareRoot()
    let tileFloats = tiles.queries * tiles.keys
    parallelFor(batch * heads, tile: 1) { pairs in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * tileFloats + queryTime) { scratch in
            let probabilities = scratch.baseAddress!          // [queries, keys]
            let dScores = probabilities + tileFloats          // [queries, keys] dP, then dS
            let rowDots = dScores + tileFloats                // [Tq] rowsum(dOut ⊙ out)
            for pair in pairs {
                let b = pair / heads, h = pair % heads
                let queryOffset = b * queryTime * channels + h * headSize, keyOffset = b * keyTime * channels + h * headSize
                let lse = logSumExp.baseAddress! + pair * queryTime
                let padding = mask.keyPadding.map { UnsafeBufferPointer(rebasing: $0[(b * keyTime)..<((b + 1) * keyTime)]) }
                for i in 0..<queryTime {
                    var dots = Float32x16()
                    let dRow = dOut.baseAddress! + queryOffset + i * channels, oRow = out.baseAddress! + queryOffset + i * channels
                    forEachChunk(headSize) { start, width in dots += load(dRow + start, width) * load(oRow + start, width) }
                    rowDots[i] = dots.sum()
                }
                for j0 in stride(from: 0, to: keyTime, by: tiles.keys) {
                    let columns = min(j0 + tiles.keys, keyTime) - j0
                    let kTile = k.baseAddress! + keyOffset + j0 * channels, vTile = v.baseAddress! + keyOffset + j0 * channels
                    let dKTile = dK.baseAddress! + keyOffset + j0 * channels, dVTile = dV.baseAddress! + keyOffset + j0 * channels
                    let tilePadding = padding.map { UnsafeBufferPointer(rebasing: $0[j0...]) }
                    // Causal: the first query that sees key j0 is j0 itself; query tiles start there, off the grid of
                    // the forward's tiles, so only the triangle inside the diagonal tile is computed in vain.
                    let firstQuery = mask.causal ? j0 : 0
                    for i0 in stride(from: firstQuery, to: queryTime, by: tiles.queries) {
                        let rows = min(i0 + tiles.queries, queryTime) - i0
                        let qTile = q.baseAddress! + queryOffset + i0 * channels
                        let dOutTile = dOut.baseAddress! + queryOffset + i0 * channels
                        serialGemm(transA: false, transB: true, m: rows, n: columns, k: headSize, alpha: scale, a: qTile, lda: channels,
                                   b: kTile, ldb: channels, beta: 0, c: probabilities, ldc: tiles.keys)
                        for r in 0..<rows {
                            let visible = mask.causal ? max(0, min(columns, i0 + r + 1 - j0)) : columns
                            recomputeProbabilities(probabilities + r * tiles.keys, count: columns, visible: visible,
                                                   padding: tilePadding, logSumExp: lse[i0 + r])
                        }
                        serialGemm(transA: true, transB: false, m: columns, n: headSize, k: rows, a: probabilities, lda: tiles.keys,
                                   b: dOutTile, ldb: channels, beta: 1, c: dVTile, ldc: channels)
                        serialGemm(transA: false, transB: true, m: rows, n: columns, k: headSize, a: dOutTile, lda: channels,
                                   b: vTile, ldb: channels, beta: 0, c: dScores, ldc: tiles.keys)
                        for r in 0..<rows {
                            let pRow = probabilities + r * tiles.keys, dRow = dScores + r * tiles.keys, dot = rowDots[i0 + r]
                            forEachChunk(columns) { start, width in
                                store(load(pRow + start, width) * (load(dRow + start, width) - dot), dRow + start, width)
                            }
                        }
                        serialGemm(transA: false, transB: false, m: rows, n: headSize, k: columns, alpha: scale, a: dScores, lda: tiles.keys,
                                   b: kTile, ldb: channels, beta: 1, c: dQ.baseAddress! + queryOffset + i0 * channels, ldc: channels)
                        serialGemm(transA: true, transB: false, m: columns, n: headSize, k: rows, alpha: scale, a: dScores, lda: tiles.keys,
                                   b: qTile, ldb: channels, beta: 1, c: dKTile, ldc: channels)
                    }
                }
            }
        }
    }
}

/// One row of a score tile back to probabilities: exp(score − logSumExp) for the first `visible` keys not marked in
/// `padding`, 0 elsewhere (and everywhere when logSumExp is +∞, a query that saw no key).
@inline(__always)
private func recomputeProbabilities(_ row: UnsafeMutablePointer<Float>, count: Int, visible: Int, padding: UnsafeBufferPointer<Bool>?,
                                    logSumExp: Float) {
    guard logSumExp < .infinity else {
        row.update(repeating: 0, count: count)
        return
    }
    forEachChunk(visible) { start, width in
        var e = fastExp(load(row + start, width) - logSumExp)
        if let padding { for i in 0..<width where padding[start + i] { e[i] = 0 } }
        store(e, row + start, width)
    }
    if visible < count { (row + visible).update(repeating: 0, count: count - visible) }
}

/// The attention probabilities of a tiled forward, recomputed as its backward recomputes them (for pictures of
/// attention, not for training):
///   probs[B,H,Tq,Tk] = exp(q·kᵀ/√D − logSumExp) over the keys each query sees, 0 elsewhere
/// given the forward's q [B,Tq,C], k [B,Tk,C], `logSumExp` [B,H,Tq] and mask. Each row sums to 1 (0 for a query that
/// saw no key). The same function as torch.nn.MultiheadAttention's per-head weights (average_attn_weights=False).
public func flashAttentionProbabilities(probs: FloatBuffer, q: FloatBuffer, k: FloatBuffer, logSumExp: FloatBuffer, mask: AttentionMask,
                                        batch: Int, queryTime: Int, keyTime: Int, channels: Int, heads: Int) {
    let headSize = headSizeChecked(mask: mask, queryTime: queryTime, keyTime: keyTime, channels: channels, heads: heads)
    requireCount(probs, batch * heads * queryTime * keyTime, "probs")
    requireCount(q, batch * queryTime * channels, "q")
    requireCount(k, batch * keyTime * channels, "k")
    requireCount(logSumExp, batch * heads * queryTime, "logSumExp")
    let scale = 1 / Float(headSize).squareRoot()
    parallelFor(batch * heads, tile: 1) { pairs in
        for pair in pairs {
            let b = pair / heads, h = pair % heads
            let p = probs.baseAddress! + pair * queryTime * keyTime
            serialGemm(transA: false, transB: true, m: queryTime, n: keyTime, k: headSize, alpha: scale,
                       a: q.baseAddress! + b * queryTime * channels + h * headSize, lda: channels,
                       b: k.baseAddress! + b * keyTime * channels + h * headSize, ldb: channels, beta: 0, c: p, ldc: keyTime)
            let padding = mask.keyPadding.map { UnsafeBufferPointer(rebasing: $0[(b * keyTime)..<((b + 1) * keyTime)]) }
            for i in 0..<queryTime {
                recomputeProbabilities(p + i * keyTime, count: keyTime, visible: mask.causal ? i + 1 : keyTime, padding: padding,
                                       logSumExp: logSumExp[pair * queryTime + i])
            }
        }
    }
}
