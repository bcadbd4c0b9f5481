import Foundation

// Attention in tiles with an online softmax (FlashAttention-2: Dao, "FlashAttention-2: Faster Attention with Better
// Parallelism and Work Partitioning", 2023, algorithms 1 and 2). The probabilities are never stored: forward keeps
// one log-sum-exp per query, backward recomputes each tile's probabilities from it. Memory for attention grows with
// B·H·T instead of B·H·Tq·Tk; `attentionForward`/`attentionBackward` stay as the reference the tests compare with.

/// Query rows and key columns per tile of the tiled attention kernels. Each compute thread holds a score tile (two in
/// backward) of queries x (keys rounded up to 16, plus 16) floats, whatever T is (`flashAttentionScratchFloats`
/// counts all the kernels allocate).
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

    /// The forward pass's tiles: 64 queries (the unit of parallel work with batch and head) x 512 keys. Up to 512 keys
    /// the online softmax is one pass; with `panelGemm` the forward is within 5% of its best for 48-128 queries and
    /// 256-1024 keys at T 256 to 4096 (measured on Zen3, AVX2).
    public static let forward = AttentionTiles(queries: 64, keys: 512)
    /// The backward pass's tiles: 64 keys (whose dK and dV accumulate in place) x 128 queries. Measured at T 256 to
    /// 4096 on Zen3 (AVX2), best of 3 rounds: 1-15% faster than 128 keys x 256 queries (the tiles chosen when the
    /// GEMMs were OpenBLAS calls), whose score tiles and operands overflow the 512 KiB L2 cache.
    public static let backward = AttentionTiles(queries: 128, keys: 64)
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
/// a causal mask (Tq = Tk) key tiles right of a query tile are skipped. Kᵀ and V of every (batch, head) are first packed
/// for `panelGemm` (a copy, made once for all the head's query tiles: 2·B·Tk·C floats when D and Tk are multiples of
/// 16, a little more otherwise, freed on return).
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
    let layout = ForwardPacks(tiles: tiles, keyTime: keyTime, headSize: headSize)
    let ldS = scoreStride(tiles)
    // Kᵀ and V of every (batch, head), packed once for all of its query tiles (copies: no arithmetic).
    let packs = UnsafeMutablePointer<Float>.allocate(capacity: batch * heads * layout.pairFloats)
    defer { packs.deallocate() }
    parallelFor(batch * heads, tile: 1) { pairs in
        for pair in pairs {
            let b = pair / heads, h = pair % heads
            let kHead = k.baseAddress! + b * keyTime * channels + h * headSize
            let pack = packs + pair * layout.pairFloats
            for j0 in stride(from: 0, to: keyTime, by: tiles.keys) {
                packTransposedPanels(kHead + j0 * channels, ld: channels, rows: min(tiles.keys, keyTime - j0), columns: headSize,
                                     into: pack + (j0 / tiles.keys) * layout.keyTileFloats, panelStride: headSize * panelWidth)
            }
            packPanels(v.baseAddress! + b * keyTime * channels + h * headSize, ld: channels, rows: keyTime, columns: headSize,
                       into: pack + layout.valueOffset, panelStride: keyTime * panelWidth)
        }
    }
    parallelFor(batch * heads * queryTiles, tile: 1) { units in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: tiles.queries * ldS + 2 * tiles.queries) { scratch in
            let scores = scratch.baseAddress!                           // [queries, ldS] scores, then probabilities
            let runningMax = scores + tiles.queries * ldS               // [queries]
            let runningSum = runningMax + tiles.queries                 // [queries]
            for unit in units {
                let pair = unit / queryTiles, b = pair / heads, h = pair % heads
                let i0 = (unit % queryTiles) * tiles.queries, i1 = min(i0 + tiles.queries, queryTime), rows = i1 - i0
                let qTile = q.baseAddress! + (b * queryTime + i0) * channels + h * headSize
                let pack = packs + pair * layout.pairFloats
                let outTile = out.baseAddress! + (b * queryTime + i0) * channels + h * headSize
                let padding = mask.keyPadding.map { UnsafeBufferPointer(rebasing: $0[(b * keyTime)..<((b + 1) * keyTime)]) }
                for r in 0..<rows { (outTile + r * channels).update(repeating: 0, count: headSize) }
                runningMax.update(repeating: -.infinity, count: rows)
                runningSum.update(repeating: 0, count: rows)
                let keyEnd = mask.causal ? i1 : keyTime
                for j0 in stride(from: 0, to: keyEnd, by: tiles.keys) {
                    let columns = min(j0 + tiles.keys, keyEnd) - j0
                    panelGemm(m: rows, n: columns, k: headSize, alpha: scale, a: qTile, rowStride: channels, depthStride: 1,
                              b: pack + (j0 / tiles.keys) * layout.keyTileFloats, panelStride: headSize * panelWidth,
                              accumulate: false, c: scores, ldc: ldS)
                    let tilePadding = padding.map { UnsafeBufferPointer(rebasing: $0[j0...]) }
                    for r in 0..<rows {
                        let row = scores + r * ldS
                        let visible = mask.causal ? min(columns, i0 + r + 1 - j0) : columns
                        let rescale = onlineSoftmaxRow(row, count: columns, visible: visible, padding: tilePadding,
                                                       runningMax: &runningMax[r], runningSum: &runningSum[r])
                        if rescale != 1 { scaleRow(outTile + r * channels, count: headSize, by: rescale) }
                    }
                    panelGemm(m: rows, n: headSize, k: columns, a: scores, rowStride: ldS, depthStride: 1,
                              b: pack + layout.valueOffset + j0 * panelWidth, panelStride: keyTime * panelWidth,
                              accumulate: true, c: outTile, ldc: channels)
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

/// Row stride of a score tile: the key tile in whole panels, plus one panel so that rows do not fall a power of two
/// apart (rows 4 KiB apart share cache sets, and the backward reads its tiles down the columns).
private func scoreStride(_ tiles: AttentionTiles) -> Int { panelPadded(tiles.keys) + panelWidth }

/// Where the forward pass keeps one (batch, head)'s packed operands: Kᵀ of each key tile in 16-key panels
/// ([D, 16] each), then V in 16-column panels ([Tk, 16] each).
private struct ForwardPacks {
    let keyTileFloats: Int, valueOffset: Int, pairFloats: Int

    init(tiles: AttentionTiles, keyTime: Int, headSize: Int) {
        keyTileFloats = panelPadded(tiles.keys) * headSize
        // Whole key tiles, then the last partial one in as many panels as it needs.
        valueOffset = keyTime / tiles.keys * keyTileFloats + panelPadded(keyTime % tiles.keys) * headSize
        pairFloats = valueOffset + keyTime * panelPadded(headSize)
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

/// Floats the tiled kernels allocate while one attention of these shapes runs on `threads` compute threads, at most:
/// the forward's packed Kᵀ and V of every (batch, head) (2·B·Tk·C when D and Tk are multiples of 16) and a score tile
/// per thread, or the backward's scratch per thread (`BackwardTileScratch`: two score tiles, q and dOut of one head, a
/// key tile's operands). Nothing of it outlives the call, and none of it grows with Tq·Tk.
public func flashAttentionScratchFloats(batch: Int, queryTime: Int, keyTime: Int, channels: Int, heads: Int, threads: Int) -> Int {
    let headSize = channels / heads, forward = AttentionTiles.forward
    let forwardFloats = batch * heads * ForwardPacks(tiles: forward, keyTime: keyTime, headSize: headSize).pairFloats
        + threads * (forward.queries * scoreStride(forward) + 2 * forward.queries)
    let backwardFloats = threads * BackwardTileScratch(tiles: .backward, queryTime: queryTime, headSize: headSize).floats
    return max(forwardFloats, backwardFloats)
}

/// Backward of flashAttentionForward, accumulating into dQ, dK, dV (each shaped like q, k, v), given the forward's
/// `out` and `logSumExp` and the same mask:
///   P = exp(q·kᵀ/√D − logSumExp) per tile;  dV += Pᵀ·dOut;  dS = P ⊙ (dOut·vᵀ − rowsum(dOut ⊙ out));
///   dQ += dS·k/√D;  dK += dSᵀ·q/√D
/// Work goes to threads by (batch, head): within one, key tiles go in order, and query tiles in order within each,
/// so every sum is made in the same order for any thread count. Each thread uses two score tiles of its own, and
/// packs q and dOut of its head and K and V of one key tile for the GEMMs (`panelGemm`).
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
    let scratch = BackwardTileScratch(tiles: tiles, queryTime: queryTime, headSize: headSize)
    let ldS = scoreStride(tiles), keyPanelStride = headSize * panelWidth, queryPanelStride = queryTime * panelWidth
    parallelFor(batch * heads, tile: 1) { pairs in
        // On the heap: q and dOut of a head grow with Tq (2 MiB per thread at T 4096, D 64).
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: scratch.floats)
        defer { buffer.deallocate() }
        let probabilities = buffer                                  // [queries, ldS]
        let dScores = probabilities + tiles.queries * ldS           // [queries, ldS] dP, then dS
        let rowDots = dScores + tiles.queries * ldS                 // [Tq] rowsum(dOut ⊙ out)
        let queryPanels = rowDots + queryTime                       // q of the head, [Tq, 16] panels
        let dOutPanels = queryPanels + scratch.headPanelFloats      // dOut of the head, [Tq, 16] panels
        let keyT = dOutPanels + scratch.headPanelFloats             // Kᵀ of the key tile, [D, 16] panels
        let valueT = keyT + scratch.keyTileFloats                   // Vᵀ of the key tile, [D, 16] panels
        let keyPanels = valueT + scratch.keyTileFloats              // K of the key tile, [keys, 16] panels
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
            packPanels(q.baseAddress! + queryOffset, ld: channels, rows: queryTime, columns: headSize,
                       into: queryPanels, panelStride: queryPanelStride)
            packPanels(dOut.baseAddress! + queryOffset, ld: channels, rows: queryTime, columns: headSize,
                       into: dOutPanels, panelStride: queryPanelStride)
            for j0 in stride(from: 0, to: keyTime, by: tiles.keys) {
                let columns = min(j0 + tiles.keys, keyTime) - j0
                let kTile = k.baseAddress! + keyOffset + j0 * channels, vTile = v.baseAddress! + keyOffset + j0 * channels
                let dKTile = dK.baseAddress! + keyOffset + j0 * channels, dVTile = dV.baseAddress! + keyOffset + j0 * channels
                packTransposedPanels(kTile, ld: channels, rows: columns, columns: headSize, into: keyT, panelStride: keyPanelStride)
                packTransposedPanels(vTile, ld: channels, rows: columns, columns: headSize, into: valueT, panelStride: keyPanelStride)
                packPanels(kTile, ld: channels, rows: columns, columns: headSize, into: keyPanels, panelStride: tiles.keys * panelWidth)
                let tilePadding = padding.map { UnsafeBufferPointer(rebasing: $0[j0...]) }
                // Causal: the first query that sees key j0 is j0 itself; query tiles start there, off the grid of
                // the forward's tiles, so only the triangle inside the diagonal tile is computed in vain.
                let firstQuery = mask.causal ? j0 : 0
                for i0 in stride(from: firstQuery, to: queryTime, by: tiles.queries) {
                    let rows = min(i0 + tiles.queries, queryTime) - i0
                    let qTile = q.baseAddress! + queryOffset + i0 * channels
                    let dOutTile = dOut.baseAddress! + queryOffset + i0 * channels
                    // P = exp(q·kᵀ/√D − logSumExp)
                    panelGemm(m: rows, n: columns, k: headSize, alpha: scale, a: qTile, rowStride: channels, depthStride: 1,
                              b: keyT, panelStride: keyPanelStride, accumulate: false, c: probabilities, ldc: ldS)
                    for r in 0..<rows {
                        let visible = mask.causal ? max(0, min(columns, i0 + r + 1 - j0)) : columns
                        recomputeProbabilities(probabilities + r * ldS, count: columns, visible: visible,
                                               padding: tilePadding, logSumExp: lse[i0 + r])
                    }
                    // dV += Pᵀ·dOut
                    panelGemm(m: columns, n: headSize, k: rows, a: probabilities, rowStride: 1, depthStride: ldS,
                              b: dOutPanels + i0 * panelWidth, panelStride: queryPanelStride, accumulate: true, c: dVTile, ldc: channels)
                    // dS = P ⊙ (dOut·vᵀ − rowsum(dOut ⊙ out))
                    panelGemm(m: rows, n: columns, k: headSize, a: dOutTile, rowStride: channels, depthStride: 1,
                              b: valueT, panelStride: keyPanelStride, accumulate: false, c: dScores, ldc: ldS)
                    for r in 0..<rows {
                        let pRow = probabilities + r * ldS, dRow = dScores + r * ldS, dot = rowDots[i0 + r]
                        forEachChunk(columns) { start, width in
                            store(load(pRow + start, width) * (load(dRow + start, width) - dot), dRow + start, width)
                        }
                    }
                    // dQ += dS·k/√D;  dK += dSᵀ·q/√D
                    panelGemm(m: rows, n: headSize, k: columns, alpha: scale, a: dScores, rowStride: ldS, depthStride: 1,
                              b: keyPanels, panelStride: tiles.keys * panelWidth, accumulate: true,
                              c: dQ.baseAddress! + queryOffset + i0 * channels, ldc: channels)
                    panelGemm(m: columns, n: headSize, k: rows, alpha: scale, a: dScores, rowStride: 1, depthStride: ldS,
                              b: queryPanels + i0 * panelWidth, panelStride: queryPanelStride, accumulate: true, c: dKTile, ldc: channels)
                }
            }
        }
    }
}

/// One compute thread's scratch in the tiled backward: two score tiles, a row statistic per query, q and dOut of the
/// head in panels, and Kᵀ, Vᵀ and K of one key tile in panels.
private struct BackwardTileScratch {
    let headPanelFloats: Int, keyTileFloats: Int, floats: Int

    init(tiles: AttentionTiles, queryTime: Int, headSize: Int) {
        headPanelFloats = queryTime * panelPadded(headSize)
        keyTileFloats = panelPadded(tiles.keys) * headSize
        floats = 2 * tiles.queries * scoreStride(tiles) + queryTime + 2 * headPanelFloats + 2 * keyTileFloats
            + tiles.keys * panelPadded(headSize)
    }
}

/// One row of a score tile back to probabilities: exp(score − logSumExp) for the first `visible` keys not marked in
/// `padding`, 0 elsewhere (and everywhere when logSumExp is +∞, a query that saw no key).
/// Kept out of line, a loop of its own for the vectorizer (inlined into the backward's large loop, an earlier form of it
/// lost the inlining of its clamps, and those calls cost more than the rest of the backward).
@inline(never)
private func recomputeProbabilities(_ row: UnsafeMutablePointer<Float>, count: Int, visible: Int, padding: UnsafeBufferPointer<Bool>?,
                                    logSumExp: Float) {
    guard logSumExp < .infinity else {
        row.update(repeating: 0, count: count)
        return
    }
    fastExpInPlace(row, count: visible, minus: logSumExp, padding: padding)
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
