import Basics
import Foundation
import Kernels
import MPI
import Transformer

/// One optimizer update of data-parallel training, the same for `ddp train`, `ddp bench step` and the tests:
///
/// 1. `accumulationSteps` micro-batches, each `forwardBackward` adding its summed-loss gradients; during the last
///    one's backward the gradient buckets are all-reduced as their layers finish (`GradientSynchronizer`);
/// 2. one allreduce of the loss sum, the target-token and correct-prediction counts and the stop-signal flag;
/// 3. the gradient norm of the mean per-token loss, clipping (torch.nn.utils.clip_grad_norm_) and AdamW, the
///    gradients scaled by clip / (global target tokens) inside the update.
///
/// So N ranks x batch b take exactly the update of 1 rank x batch N·b (up to the order of float sums).
public final class TrainingStep {
    /// The model trained (its gradients are the step's working buffer).
    public let model: TransformerModel
    /// The optimizer applied at the end of the step.
    public let optimizer: AdamW
    /// Micro-batches per update (`training.grad_accum`).
    public let accumulationSteps: Int
    /// Label smoothing ε of the loss (0: plain cross-entropy).
    public let labelSmoothing: Float
    /// Global-norm clipping threshold (0: off).
    public let clipNorm: Float
    private let world: Communicator
    /// The bucketed gradient all-reduce; nil on one rank, where there is nothing to sum.
    public let synchronizer: GradientSynchronizer?
    private let watchdog: CollectiveWatchdog?

    /// What one update saw, summed over every rank and micro-batch.
    public struct Outcome: Sendable {
        /// Σ of the token losses (nats).
        public var lossSum: Double
        /// Real target tokens the loss was summed over (what the gradients are divided by).
        public var targetTokens: Int
        /// Target tokens predicted correctly (arg-max).
        public var correct: Int
        /// L2 norm of the mean per-token gradient, before clipping.
        public var gradientNorm: Double
        /// Some rank had received a stop signal (`StopSignals`) by the end of its last backward of this update.
        public var stopRequested: Bool
        /// Seconds from the end of the last backward until the gradients and counts were summed on this rank.
        public var communicationSeconds: Double
        /// Positions computed (rows × (source + decoder positions) of every micro-batch, padding included).
        public var positions: Int
        /// Of those, the real tokens (not PAD).
        public var realPositions: Int

        /// The share of computed positions that were padding, 0...1.
        public var paddingShare: Double { positions > 0 ? 1 - Double(realPositions) / Double(positions) : 0 }

        /// Mean loss per target token (nats).
        public var lossPerToken: Double { lossSum / Double(targetTokens) }
    }

    /// - Parameters:
    ///   - bucketBytes: gradient all-reduce bucket size (`training.bucket_mb`).
    ///   - watchdog: bounds every collective of the step in time (nil: no bound).
    ///   - progressThread: whether a progress thread drives the all-reduce (nil: when MPI's thread level allows it).
    public init(model: TransformerModel, optimizer: AdamW, world: Communicator, accumulationSteps: Int, labelSmoothing: Float,
                clipNorm: Float, bucketBytes: Int, compression: GradientCompression, watchdog: CollectiveWatchdog? = nil,
                progressThread: Bool? = nil) {
        self.model = model
        self.optimizer = optimizer
        self.world = world
        self.accumulationSteps = accumulationSteps
        self.labelSmoothing = labelSmoothing
        self.clipNorm = clipNorm
        self.watchdog = watchdog
        synchronizer = world.size > 1
            ? GradientSynchronizer(gradients: model.gradients, communicator: world, bucketBytes: bucketBytes, compression: compression,
                                   progressThread: progressThread)
            : nil
    }

    /// A step as a run config describes it.
    public convenience init(model: TransformerModel, optimizer: AdamW, world: Communicator, training: RunConfig.TrainingSection,
                            watchdog: CollectiveWatchdog? = nil) {
        self.init(model: model, optimizer: optimizer, world: world, accumulationSteps: training.accumulationSteps,
                  labelSmoothing: training.labelSmoothing, clipNorm: training.clipNorm, bucketBytes: Int(training.bucketMb * 1_048_576),
                  compression: training.gradCompression, watchdog: watchdog)
    }

    /// Update `step` (counted from 0): gradients of `accumulationSteps` batches from `nextBatch`, summed over ranks,
    /// then clipped and applied at `learningRate`. Throws what `nextBatch` throws, an `MPIError`, or a `TrainingError`
    /// when no rank had a target token or the loss or gradient norm is not finite (the parameters are then unchanged).
    public func run(step: Int, dropoutSeed: UInt64, learningRate: Float, stopRequested: @autoclosure () -> Bool,
                    nextBatch: () throws -> TokenBatch) throws -> Outcome {
        let outcome = try computeGradients(step: step, dropoutSeed: dropoutSeed, stopRequested: stopRequested(), nextBatch: nextBatch)
        guard outcome.targetTokens > 0 else { throw TrainingError("step \(step + 1) has no target tokens on any rank") }
        guard outcome.lossPerToken.isFinite, outcome.gradientNorm.isFinite else {
            func shown(_ value: Double) -> String { value.isNaN ? "NaN" : "\(value)" }
            throw TrainingError("non-finite loss (\(shown(Double(outcome.lossPerToken)))) or gradient norm (\(shown(outcome.gradientNorm))) at step \(step + 1)")
        }
        let clip = clippingFactor(norm: outcome.gradientNorm, maxNorm: clipNorm)
        optimizer.update(parameters: model.parameters, gradients: model.gradients, learningRate: learningRate,
                         gradientScale: clip / Float(outcome.targetTokens))
        return outcome
    }

    /// Steps 1 and 2 alone: afterwards `model.gradients` holds the gradient of the loss SUMMED over every rank's
    /// batches (the same on every rank), and the outcome its totals. `stopRequested` is read after the last backward,
    /// just before the totals' allreduce, so a signal that arrives during the step stops the run after this step.
    public func computeGradients(step: Int, dropoutSeed: UInt64, stopRequested: @autoclosure () -> Bool,
                                 nextBatch: () throws -> TokenBatch) throws -> Outcome {
        model.training = true
        model.gradients.zero()
        var totals = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  // loss sum, target tokens, correct, ranks asked to stop, positions, real

        let clock = ContinuousClock()
        var backwardEnded = clock.now
        for micro in 0..<accumulationSteps {
            let batch = try nextBatch()
            model.dropoutSeed = Self.dropoutSeed(dropoutSeed, step: step, microStep: micro, rank: world.rank, worldSize: world.size)
            let isLast = micro == accumulationSteps - 1
            if isLast { synchronizer?.attach(to: model) }
            // A token-budget batch smaller than its parts leaves some empty: such a rank adds nothing, but still
            // joins the all-reduce (finish starts every bucket no backward started).
            if batch.batchSize > 0 {
                let result = model.forwardBackward(batch, labelSmoothing: labelSmoothing)
                totals[0] += result.loss
                totals[1] += Double(result.targetTokens)
                totals[2] += Double(result.correct)
                totals[4] += Double(batch.source.count + batch.decoderInput.count)
                totals[5] += Double(batch.source.count { $0 != batch.pad } + batch.decoderInput.count { $0 != batch.pad })
            }
            backwardEnded = clock.now
            if isLast, let synchronizer { try guarded("gradient allreduce") { try synchronizer.finish(detaching: model) } }
        }
        totals[3] = stopRequested() ? 1 : 0
        // Every rank learns in this one allreduce whether any rank was asked to stop, so all stop at the same boundary.
        if world.size > 1 { try guarded("loss, token-count and stop-signal allreduce") { try world.allreduce(&totals, op: .sum) } }
        // Read before the gradient norm, which is computation, not waiting.
        let communicationSeconds = (clock.now - backwardEnded).seconds
        let tokens = totals[1]
        return Outcome(lossSum: totals[0], targetTokens: Int(tokens), correct: Int(totals[2]),
                       gradientNorm: sumOfSquares(model.gradients.storage).squareRoot() / tokens, stopRequested: totals[3] > 0,
                       communicationSeconds: communicationSeconds, positions: Int(totals[4]), realPositions: Int(totals[5]))
    }

    /// The dropout seed of one micro-batch: distinct for every (step, micro-step, rank), and the same in a resumed run.
    static func dropoutSeed(_ runSeed: UInt64, step: Int, microStep: Int, rank: Int, worldSize: Int) -> UInt64 {
        runSeed &+ UInt64(step) &* 0x9E37_79B9 &+ UInt64(microStep * worldSize + rank) &* 0x85EB_CA6B
    }

    private func guarded<T>(_ phase: String, _ body: () throws -> T) throws -> T {
        guard let watchdog else { return try body() }
        return try watchdog.guarding(phase, body)
    }
}
