import Foundation

/// Token-level cross-entropy with label smoothing ε and an ignored (padding) target, summed — the same as
/// torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignored, label_smoothing=ε, reduction="sum"):
///   loss_n = (1−ε)·(−log p[y]) + ε·(1/V)·Σ_v(−log p[v])
/// logits[N,V], targets[N] → returns (Σ loss, counted rows, rows whose argmax is the target).
/// With `dLogits`, also writes dLogits[N,V] = scale · (p − ((1−ε)·onehot(y) + ε/V)) (0 on ignored rows):
/// forward and backward in one pass over the logits, which is the largest activation of a step.
@discardableResult
public func crossEntropy(logits: FloatBuffer, targets: UnsafeBufferPointer<Int32>, vocabulary: Int,
                         smoothing: Float, ignored: Int32, dLogits: FloatBuffer? = nil,
                         scale: Float = 1) -> (loss: Double, targetTokens: Int, correct: Int) {
    let rows = targets.count
    requireCount(logits, rows * vocabulary, "logits")
    if let dLogits { requireCount(dLogits, rows * vocabulary, "dLogits") }
    // Rows in fixed blocks: each block's sums are in row order and the blocks are added in order, so the
    // total is the same for any thread count.
    let blockRows = 64
    let blocks = (rows + blockRows - 1) / blockRows
    return withUnsafeTemporaryAllocation(of: (loss: Double, targetTokens: Int, correct: Int).self, capacity: max(1, blocks)) { partials in
        parallelFor(blocks, tile: 1) { blockRange in
            for block in blockRange {
                var total: Double = 0
                var tokens = 0
                var correct = 0
                for row in (block * blockRows)..<min(rows, (block + 1) * blockRows) {
                    let x = logits.baseAddress! + row * vocabulary, dRow = dLogits.map { $0.baseAddress! + row * vocabulary }
                    let target = targets[row]
                    guard target != ignored else {
                        dRow?.update(repeating: 0, count: vocabulary)
                        continue
                    }
                    precondition(target >= 0 && Int(target) < vocabulary, "target \(target) outside vocabulary \(vocabulary)")
                    let (loss, isCorrect) = crossEntropyRow(x, target: Int(target), vocabulary: vocabulary, smoothing: smoothing,
                                                            dRow: dRow, scale: scale)
                    total += Double(loss)
                    tokens += 1
                    if isCorrect { correct += 1 }
                }
                partials[block] = (total, tokens, correct)
            }
        }
        var result: (loss: Double, targetTokens: Int, correct: Int) = (0, 0, 0)
        for block in 0..<blocks {
            result.loss += partials[block].loss
            result.targetTokens += partials[block].targetTokens
            result.correct += partials[block].correct
        }
        return result
    }
}

/// The largest of `count` floats, found through integer keys ordered as the floats are (the sign bit kept, the other
/// bits flipped for negatives): a loop of integer max vectorizes, one of Float max cannot (NaN makes it depend on the
/// order), and cross-entropy over 50,257 logits ran at about 10 ns per logit, against 2-3 now. A NaN counts as larger
/// than +∞ when its sign bit is clear and smaller than −∞ when it is set (x86's default NaN); either way the row's
/// loss is NaN, through the sum of its logits.
@inline(__always)
private func largest(_ x: UnsafePointer<Float>, count: Int) -> Float {
    @inline(__always) func key(_ bits: Int32) -> Int32 { bits ^ ((bits &>> 31) & 0x7FFF_FFFF) }
    var best = key(Int32(bitPattern: (-Float.infinity).bitPattern))
    for j in 0..<count { best = Swift.max(best, key(Int32(bitPattern: x[j].bitPattern))) }
    return Float(bitPattern: UInt32(bitPattern: key(best)))
}

/// One row of `crossEntropy`: x[V] and its target → (the row's smoothed loss, whether the arg-max is the target);
/// with `dRow`, dRow[V] = scale · (p − smoothed one-hot) (dRow may be x itself).
@inline(__always)
private func crossEntropyRow(_ x: UnsafeMutablePointer<Float>, target: Int, vocabulary: Int, smoothing: Float,
                             dRow: UnsafeMutablePointer<Float>?, scale: Float) -> (loss: Float, correct: Bool) {
    // Pass 1: maximum and sum of the logits (the sum in sixteen lanes, reduced in a fixed order).
    let maximum = largest(x, count: vocabulary)
    var sums = Float32x16()
    forEachChunk(vocabulary) { start, width in sums += load(x + start, width) }
    let sumLogits = sums.sum()
    let targetLogit = x[target]
    var argmax = 0
    // Bounded: with NaN logits (a diverged run) no entry equals the maximum, and the loss reports it.
    while argmax < vocabulary - 1 && x[argmax] != maximum { argmax += 1 }
    // Pass 2: exponentials; when training they are stored as the gradient's numerator.
    var expSums = Float32x16()
    func add(_ values: UnsafePointer<Float>, count: Int) {
        forEachChunk(count) { start, width in expSums += load(values + start, width) }
    }
    if let dRow {
        // In place (a loop from x to a dRow that may be x would vectorize only behind an overlap check that fails).
        if dRow != x { dRow.update(from: x, count: vocabulary) }
        fastExpInPlace(dRow, count: vocabulary, minus: maximum)
        add(dRow, count: vocabulary)
    } else {
        // Evaluation keeps the logits: the exponentials go through a block on the stack (a multiple of 16, so the
        // sum's chunks are the same as training's).
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 1024) { block in
            for start in stride(from: 0, to: vocabulary, by: 1024) {
                let count = min(1024, vocabulary - start)
                block.baseAddress!.update(from: x + start, count: count)
                fastExpInPlace(block.baseAddress!, count: count, minus: maximum)
                add(block.baseAddress!, count: count)
            }
        }
    }
    let sumExp = expSums.sum()
    let logSumExp = maximum + log(sumExp)
    let nll = logSumExp - targetLogit
    let meanNegLogP = logSumExp - sumLogits / Float(vocabulary)
    if let d = dRow {
        // Pass 3: d = scale · (p − smoothed one-hot).
        let factor = scale / sumExp, shift = scale * (smoothing / Float(vocabulary))
        forEachChunk(vocabulary) { start, width in store(load(d + start, width) * factor - shift, d + start, width) }
        d[target] -= scale * (1 - smoothing)
    }
    return ((1 - smoothing) * nll + smoothing * meanNegLogP, argmax == target)
}
