import Kernels

/// torch.optim.AdamW, in one loop over the parameter arena (same operation order as torch's single-tensor path).
public struct AdamWSettings: Codable, Equatable, Sendable {
    public var beta1: Float
    public var beta2: Float
    public var epsilon: Float
    public var weightDecay: Float

    public init(beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0.01) {
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
    }

    /// The paper's Adam settings (β 0.9/0.98, ε 1e-9), no weight decay.
    public static let paper = AdamWSettings(beta1: 0.9, beta2: 0.98, epsilon: 1e-9, weightDecay: 0)
}

public final class AdamW {
    public let settings: AdamWSettings
    /// First and second moments (torch's exp_avg, exp_avg_sq), same layout as the parameters.
    public let firstMoment: Arena
    public let secondMoment: Arena
    /// Updates taken so far (torch's `step`).
    public private(set) var step = 0

    public init(layout: ParameterLayout, settings: AdamWSettings) {
        self.settings = settings
        firstMoment = Arena(layout: layout)
        secondMoment = Arena(layout: layout)
    }

    /// Restores the step count (with the moments, from a checkpoint).
    public func restore(step: Int) { self.step = step }

    /// One update. `gradientScale` multiplies every gradient first (1 / global token count, and clipping).
    public func update(parameters: Arena, gradients: Arena, learningRate: Float, gradientScale: Float = 1) {
        step += 1
        adamWUpdate(parameters: parameters.storage, gradients: gradients.storage, firstMoment: firstMoment.storage,
                    secondMoment: secondMoment.storage, step: step, learningRate: learningRate, beta1: settings.beta1,
                    beta2: settings.beta2, epsilon: settings.epsilon, weightDecay: settings.weightDecay, gradientScale: gradientScale)
    }
}
