import Foundation

/// One AdamW update over a whole arena, in torch.optim.AdamW's operation order (single-tensor path):
///   g = grad·gradientScale;  p *= 1 − lr·wd;  m += (g − m)(1 − β1);  v = β2·v + (1 − β2)·g²
///   p −= (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
/// parameters/gradients/firstMoment/secondMoment: [P], same layout.
public func adamWUpdate(parameters: FloatBuffer, gradients: FloatBuffer, firstMoment: FloatBuffer, secondMoment: FloatBuffer,
                        step: Int, learningRate: Float, beta1: Float, beta2: Float, epsilon: Float, weightDecay: Float,
                        gradientScale: Float) {
    let count = parameters.count
    requireCount(gradients, count, "gradients")
    let biasCorrection1 = 1 - pow(Double(beta1), Double(step))
    let biasCorrection2Sqrt = Float((1 - pow(Double(beta2), Double(step))).squareRoot())
    let stepSize = Float(Double(learningRate) / biasCorrection1)
    let decay = 1 - learningRate * weightDecay
    parallelFor(count, tile: elementTile) { range in
        for i in range {
            let gradient = gradients[i] * gradientScale
            parameters[i] *= decay
            firstMoment[i] += (gradient - firstMoment[i]) * (1 - beta1)
            secondMoment[i] = secondMoment[i] * beta2 + (1 - beta2) * gradient * gradient
            parameters[i] -= stepSize * firstMoment[i] / (secondMoment[i].squareRoot() / biasCorrection2Sqrt + epsilon)
        }
    }
}

/// Σ x² over a buffer in Double, in fixed 4096-element blocks added in order: the same bits for any thread count
/// (for the global gradient norm, which every rank must compute identically).
public func sumOfSquares(_ buffer: FloatBuffer) -> Double {
    let block = 4096
    let blocks = (buffer.count + block - 1) / block
    return withUnsafeTemporaryAllocation(of: Double.self, capacity: max(1, blocks)) { partials in
        parallelFor(blocks, tile: 64) { range in
            for b in range {
                var lanes = SIMD8<Double>()
                var i = b * block
                let end = min(buffer.count, i + block)
                while i + 8 <= end {
                    let p = buffer.baseAddress! + i
                    let v = SIMD8<Double>(Double(p[0]), Double(p[1]), Double(p[2]), Double(p[3]),
                                          Double(p[4]), Double(p[5]), Double(p[6]), Double(p[7]))
                    lanes += v * v
                    i += 8
                }
                var sum = lanes.sum()
                while i < end {
                    sum += Double(buffer[i]) * Double(buffer[i])
                    i += 1
                }
                partials[b] = sum
            }
        }
        var total = 0.0
        for b in 0..<blocks { total += partials[b] }
        return total
    }
}
