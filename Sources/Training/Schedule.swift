import Foundation

/// Learning rate as a function of the update step (1-based, as torch's schedulers count after the first step).
public enum LearningRateSchedule: Equatable, Sendable {
    /// The same rate throughout, after a linear warm-up over `warmupSteps` updates (none at 0): Hugging Face's
    /// `get_constant_schedule_with_warmup`, but counting updates from 1 as cosine does (update 1 has rate / warmup,
    /// where Hugging Face's first has 0).
    case constant(rate: Float, warmupSteps: Int = 0)
    /// The paper's: factor · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5).
    case noam(dModel: Int, warmupSteps: Int, factor: Float)
    /// Linear warm-up to `peak`, then half a cosine down to `minimum` at `totalSteps` (and `minimum` after).
    case cosine(peak: Float, warmupSteps: Int, totalSteps: Int, minimum: Float)

    /// The last step the schedule still changes the rate at (cosine's total steps), or nil when it has no end.
    public var end: Int? {
        if case .cosine(_, _, let total, _) = self { return total }
        return nil
    }

    /// The learning rate for update `step` (1-based; values below 1 count as 1). Constant warms up linearly to its rate
    /// at `warmupSteps` and stays there; cosine warms up linearly to `peak` at `warmupSteps`, reaches `minimum` at `totalSteps` and stays there; noam rises linearly for `warmupSteps` updates
    /// and then decays as step^-0.5.
    public func rate(step: Int) -> Float {
        let s = Double(max(1, step))
        switch self {
        case .constant(let rate, let warmup):
            return step < warmup ? rate * Float(s / Double(warmup)) : rate
        case .noam(let dModel, let warmup, let factor):
            return Float(Double(factor) * pow(Double(dModel), -0.5) * min(pow(s, -0.5), s * pow(Double(max(1, warmup)), -1.5)))
        case .cosine(let peak, let warmup, let total, let minimum):
            if step <= warmup { return peak * Float(s / Double(max(1, warmup))) }
            let progress = min(1, (s - Double(warmup)) / Double(max(1, total - warmup)))
            return minimum + (peak - minimum) * Float(0.5 * (1 + cos(Double.pi * progress)))
        }
    }
}

/// Global-norm clipping (torch.nn.utils.clip_grad_norm_): the factor that brings the norm down to `maxNorm`,
/// or 1 when it is already within (or clipping is off, maxNorm ≤ 0).
public func clippingFactor(norm: Double, maxNorm: Float) -> Float {
    guard maxNorm > 0, norm.isFinite, norm > Double(maxNorm) else { return 1 }
    return Float(Double(maxNorm) / (norm + 1e-6))
}
