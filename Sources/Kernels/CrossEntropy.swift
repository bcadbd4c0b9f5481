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
                         scale: Float = 1) -> (loss: Double, tokens: Int, correct: Int) {
    let rows = targets.count
    requireCount(logits, rows * vocabulary, "logits")
    if let dLogits { requireCount(dLogits, rows * vocabulary, "dLogits") }
    var total: Double = 0
    var tokens = 0
    var correct = 0
    let uniform = smoothing / Float(vocabulary)
    for row in 0..<rows {
        let x = logits.baseAddress! + row * vocabulary
        let target = targets[row]
        if target == ignored {
            dLogits.map { ($0.baseAddress! + row * vocabulary).update(repeating: 0, count: vocabulary) }
            continue
        }
        precondition(target >= 0 && Int(target) < vocabulary, "target \(target) outside vocabulary \(vocabulary)")
        var maximum = x[0]
        var argmax = 0
        var sumLogits: Float = 0
        for v in 0..<vocabulary {
            if x[v] > maximum { maximum = x[v]; argmax = v }
            sumLogits += x[v]
        }
        var sumExp: Float = 0
        for v in 0..<vocabulary { sumExp += exp(x[v] - maximum) }
        let logSumExp = maximum + log(sumExp)
        let nll = logSumExp - x[Int(target)]
        let meanNegLogP = logSumExp - sumLogits / Float(vocabulary)
        total += Double((1 - smoothing) * nll + smoothing * meanNegLogP)
        tokens += 1
        if argmax == Int(target) { correct += 1 }
        if let dLogits {
            let d = dLogits.baseAddress! + row * vocabulary
            let inverse = 1 / sumExp
            for v in 0..<vocabulary { d[v] = scale * (exp(x[v] - maximum) * inverse - uniform) }
            d[Int(target)] -= scale * (1 - smoothing)
        }
    }
    return (total, tokens, correct)
}
