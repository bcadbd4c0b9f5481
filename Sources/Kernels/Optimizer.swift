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
    parallelFor(count, minimumPerThread: 1 << 14) { range in
        for i in range {
            let gradient = gradients[i] * gradientScale
            parameters[i] *= decay
            firstMoment[i] += (gradient - firstMoment[i]) * (1 - beta1)
            secondMoment[i] = secondMoment[i] * beta2 + (1 - beta2) * gradient * gradient
            parameters[i] -= stepSize * firstMoment[i] / (secondMoment[i].squareRoot() / biasCorrection2Sqrt + epsilon)
        }
    }
}
