import Foundation

/// How queries may look at keys.
public struct AttentionMask {
    /// Query i sees keys 0...i only (decoder self-attention).
    public var causal: Bool
    /// [B,Tk]: true where the key is padding and must not be attended to (torch's key_padding_mask).
    public var keyPadding: UnsafeBufferPointer<Bool>?

    /// A mask; by default none (every query sees every key).
    public init(causal: Bool = false, keyPadding: UnsafeBufferPointer<Bool>? = nil) {
        self.causal = causal
        self.keyPadding = keyPadding
    }
}

/// Multi-head scaled dot-product attention.
///   q[B,Tq,C], k[B,Tk,C], v[B,Tk,C] → out[B,Tq,C]; head h uses columns h·D ..< (h+1)·D; saves probs[B,H,Tq,Tk].
///   probs = softmax(q·kᵀ/√D + mask), out = probs·v
/// A query row whose keys are all masked gets zero weights (PyTorch would give NaN). With a causal mask (Tq = Tk)
/// queries go in 64-row blocks that see keys up to the block's end: probabilities right of a block are not
/// written, and attentionBackward (given `causal: true`) skips the same region.
public func attentionForward(out: FloatBuffer, probs: FloatBuffer, q: FloatBuffer, k: FloatBuffer, v: FloatBuffer,
                             mask: AttentionMask, batch: Int, queryTime: Int, keyTime: Int, channels: Int, heads: Int) {
    precondition(channels % heads == 0, "channels \(channels) not divisible by heads \(heads)")
    let headSize = channels / heads
    requireCount(out, batch * queryTime * channels, "out")
    requireCount(probs, batch * heads * queryTime * keyTime, "probs")
    let scale = 1 / Float(headSize).squareRoot()
    // Heads in parallel, each with single-threaded GEMMs over its own slices and probability block.
    parallelFor(batch * heads, tile: 1) { pairs in
        for pair in pairs {
            let b = pair / heads, h = pair % heads
            let p = probs.baseAddress! + ((b * heads + h) * queryTime) * keyTime
            let qHead = q.baseAddress! + b * queryTime * channels + h * headSize
            let kHead = k.baseAddress! + b * keyTime * channels + h * headSize
            let vHead = v.baseAddress! + b * keyTime * channels + h * headSize
            // Causal: query block [i0, i1) sees keys < i1 only, so the masked upper triangle is never computed.
            let block = mask.causal ? causalBlock : queryTime
            for i0 in stride(from: 0, to: queryTime, by: block) {
                let i1 = min(i0 + block, queryTime)
                let keys = mask.causal ? min(i1, keyTime) : keyTime
                serialGemm(transA: false, transB: true, m: i1 - i0, n: keys, k: headSize, alpha: scale,
                           a: qHead + i0 * channels, lda: channels, b: kHead, ldb: channels, beta: 0, c: p + i0 * keyTime, ldc: keyTime)
                for i in i0..<i1 {
                    maskedSoftmaxRow(p + i * keyTime, count: keys, visible: mask.causal ? min(i + 1, keyTime) : keyTime,
                                     padding: mask.keyPadding.map { UnsafeBufferPointer(rebasing: $0[(b * keyTime)..<((b + 1) * keyTime)]) })
                }
                serialGemm(transA: false, transB: false, m: i1 - i0, n: headSize, k: keys,
                           a: p + i0 * keyTime, lda: keyTime, b: vHead, ldb: channels,
                           beta: 0, c: out.baseAddress! + b * queryTime * channels + h * headSize + i0 * channels, ldc: channels)
            }
        }
    }
}

/// Query rows per block in causal attention (keys beyond a block's last query are skipped).
let causalBlock = 64

/// In place: row[j] = softmax over the visible, unpadded keys; 0 elsewhere.
@inline(__always)
func maskedSoftmaxRow(_ row: UnsafeMutablePointer<Float>, count: Int, visible: Int, padding: UnsafeBufferPointer<Bool>?) {
    if let padding {
        for j in 0..<visible where padding[j] { row[j] = -.infinity }
    }
    var maximum = -Float.infinity
    for j in 0..<visible { maximum = max(maximum, row[j]) }
    guard maximum > -Float.infinity else {
        row.update(repeating: 0, count: count)
        return
    }
    let inverse = 1 / exponentiate(row, visible: visible, maximum: maximum, padding: padding)
    forEachChunk(visible) { start, width in store(load(row + start, width) * inverse, row + start, width) }
    if visible < count { (row + visible).update(repeating: 0, count: count - visible) }
}

/// row[j] = exp(row[j] − maximum) for j < visible, 0 where `padding` marks the key; returns their sum, made of sixteen
/// partial sums added in a fixed order (vectorised and still deterministic).
@inline(__always)
func exponentiate(_ row: UnsafeMutablePointer<Float>, visible: Int, maximum: Float, padding: UnsafeBufferPointer<Bool>?) -> Float {
    fastExpInPlace(row, count: visible, minus: maximum, padding: padding)
    var sums = Float32x16()
    forEachChunk(visible) { start, width in sums += load(row + start, width) }
    return sums.sum()
}

/// Backward of attentionForward, accumulating into dQ, dK, dV (each shaped like q, k, v).
///   dV += probsᵀ·dOut;  dS = probs ⊙ (dP − rowsum(dP ⊙ probs)) with dP = dOut·vᵀ;  dQ += dS·k/√D;  dK += dSᵀ·q/√D
/// `scratch` is shaped like probs, [B,H,Tq,Tk]: each (batch, head) works in its own block, so heads run in parallel.
public func attentionBackward(dQ: FloatBuffer, dK: FloatBuffer, dV: FloatBuffer, scratch: FloatBuffer, dOut: FloatBuffer,
                              q: FloatBuffer, k: FloatBuffer, v: FloatBuffer, probs: FloatBuffer, causal: Bool,
                              batch: Int, queryTime: Int, keyTime: Int, channels: Int, heads: Int) {
    let headSize = channels / heads
    requireCount(scratch, batch * heads * queryTime * keyTime, "scratch")
    let scale = 1 / Float(headSize).squareRoot()
    // Heads in parallel, each with single-threaded GEMMs over its own slices and probability block.
    parallelFor(batch * heads, tile: 1) { pairs in
        for pair in pairs {
            let b = pair / heads, h = pair % heads
            let p = probs.baseAddress! + ((b * heads + h) * queryTime) * keyTime
            let dP = scratch.baseAddress! + ((b * heads + h) * queryTime) * keyTime
            let queryOffset = b * queryTime * channels + h * headSize
            let keyOffset = b * keyTime * channels + h * headSize
            let block = causal ? causalBlock : queryTime
            for i0 in stride(from: 0, to: queryTime, by: block) {
                let i1 = min(i0 + block, queryTime), rows = i1 - i0
                let keys = causal ? min(i1, keyTime) : keyTime
                let pBlock = p + i0 * keyTime, dPBlock = dP + i0 * keyTime
                let dOutBlock = dOut.baseAddress! + queryOffset + i0 * channels
                serialGemm(transA: false, transB: true, m: rows, n: keys, k: headSize,
                           a: dOutBlock, lda: channels, b: v.baseAddress! + keyOffset, ldb: channels, beta: 0, c: dPBlock, ldc: keyTime)
                serialGemm(transA: true, transB: false, m: keys, n: headSize, k: rows,
                           a: pBlock, lda: keyTime, b: dOutBlock, ldb: channels, beta: 1, c: dV.baseAddress! + keyOffset, ldc: channels)
                for i in 0..<rows {
                    let pRow = pBlock + i * keyTime
                    let dRow = dPBlock + i * keyTime
                    var dots = Float32x16()
                    forEachChunk(keys) { start, width in dots += load(pRow + start, width) * load(dRow + start, width) }
                    let dot = dots.sum()
                    forEachChunk(keys) { start, width in
                        store(load(pRow + start, width) * (load(dRow + start, width) - dot), dRow + start, width)
                    }
                }
                serialGemm(transA: false, transB: false, m: rows, n: headSize, k: keys, alpha: scale,
                           a: dPBlock, lda: keyTime, b: k.baseAddress! + keyOffset, ldb: channels,
                           beta: 1, c: dQ.baseAddress! + queryOffset + i0 * channels, ldc: channels)
                serialGemm(transA: true, transB: false, m: keys, n: headSize, k: rows, alpha: scale,
                           a: dPBlock, lda: keyTime, b: q.baseAddress! + queryOffset + i0 * channels, ldb: channels,
                           beta: 1, c: dK.baseAddress! + keyOffset, ldc: channels)
            }
        }
    }
}

// MARK: Incremental decoding (inference only: no backward)

/// One new query per sequence against that sequence's cached keys and values.
///   q[R,C], keys/values [R,capacity,C] (positions 0..<length filled) → out[R,C]; scratch [R,H,capacity]
///   keyPadding [R,capacity]: true where a key must not be attended to (padded sources in cross-attention).
/// The same scaled, masked softmax as attentionForward; the cache makes a decoding step O(length), not O(length²).
public func cachedAttentionForward(out: FloatBuffer, scratch: FloatBuffer, q: FloatBuffer, keys: FloatBuffer, values: FloatBuffer,
                                   keyPadding: UnsafeBufferPointer<Bool>?, rows: Int, length: Int, capacity: Int,
                                   channels: Int, heads: Int) {
    precondition(channels % heads == 0, "channels \(channels) not divisible by heads \(heads)")
    precondition(length >= 1 && length <= capacity, "cache length \(length) outside 1...\(capacity)")
    let headSize = channels / heads
    requireCount(out, rows * channels, "out")
    requireCount(q, rows * channels, "q")
    requireCount(keys, rows * capacity * channels, "keys")
    requireCount(values, rows * capacity * channels, "values")
    requireCount(scratch, rows * heads * capacity, "scratch")
    let scale = 1 / Float(headSize).squareRoot()
    parallelFor(rows * heads, tile: 4) { pairs in
        for pair in pairs {
            let r = pair / heads, h = pair % heads
            let p = scratch.baseAddress! + pair * capacity
            let cacheOffset = r * capacity * channels + h * headSize
            serialGemm(transA: false, transB: true, m: 1, n: length, k: headSize, alpha: scale,
                       a: q.baseAddress! + r * channels + h * headSize, lda: channels, b: keys.baseAddress! + cacheOffset, ldb: channels,
                       beta: 0, c: p, ldc: capacity)
            maskedSoftmaxRow(p, count: length, visible: length,
                             padding: keyPadding.map { UnsafeBufferPointer(rebasing: $0[(r * capacity)..<(r * capacity + length)]) })
            serialGemm(transA: false, transB: false, m: 1, n: headSize, k: length, a: p, lda: capacity,
                       b: values.baseAddress! + cacheOffset, ldb: channels, beta: 0,
                       c: out.baseAddress! + r * channels + h * headSize, ldc: channels)
        }
    }
}

/// buffer[r] = old buffer[order[r]] for rows of `rowWidth` floats, of which the first `used` are copied
/// (beam search: each surviving hypothesis takes its parent's cache). `scratch` holds rows x used floats.
public func gatherRows(_ buffer: FloatBuffer, order: [Int], rowWidth: Int, used: Int, scratch: FloatBuffer) {
    let rows = order.count
    requireCount(buffer, rows * rowWidth, "buffer")
    requireCount(scratch, rows * used, "scratch")
    for r in 0..<rows {
        precondition(order[r] >= 0 && order[r] < rows, "row \(order[r]) outside 0..<\(rows)")
        (scratch.baseAddress! + r * used).update(from: buffer.baseAddress! + order[r] * rowWidth, count: used)
    }
    for r in 0..<rows { (buffer.baseAddress! + r * rowWidth).update(from: scratch.baseAddress! + r * used, count: used) }
}
