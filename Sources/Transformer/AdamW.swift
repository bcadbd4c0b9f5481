import Kernels

/// torch.optim.AdamW's hyperparameters (the config's `optimizer` section; the learning rate comes from the schedule).
public struct AdamWSettings: Codable, Equatable, Sendable {
    /// β₁, the first moment's decay (`optimizer.beta1`).
    public var beta1: Float
    /// β₂, the second moment's decay (`optimizer.beta2`).
    public var beta2: Float
    /// ε, added to √v̂ (`optimizer.eps`).
    public var epsilon: Float
    /// Decoupled weight decay λ: each update first multiplies every parameter by 1 − lr·λ (`optimizer.weight_decay`).
    public var weightDecay: Float

    /// torch.optim.AdamW's defaults unless given.
    public init(beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0.01) {
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
    }

    /// The paper's Adam settings (β 0.9/0.98, ε 1e-9), no weight decay.
    public static let paper = AdamWSettings(beta1: 0.9, beta2: 0.98, epsilon: 1e-9, weightDecay: 0)
}

/// torch.optim.AdamW (Loshchilov and Hutter 2019), in one loop over the parameter arena, with the same operation order as
/// torch's single-tensor path.
public final class AdamW {
    /// β₁, β₂, ε and the weight decay.
    public let settings: AdamWSettings
    /// The first moment m (torch's `exp_avg`), the parameters' layout.
    public let firstMoment: Arena
    /// The second moment v (torch's `exp_avg_sq`), the parameters' layout.
    public let secondMoment: Arena
    /// Updates taken so far (torch's `step`).
    public private(set) var step = 0

    /// An optimizer at step 0 with zero moments for parameters of `layout`.
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
