import Files
import Foundation
import TensorBoard

/// What rank 0 tells the user and `metrics.jsonl` about a run: one metrics line per update and per evaluation, and
/// a progress line every `training.log_every` updates.
final class ProgressReport {
    private let config: RunConfig
    private let metrics: MetricsLog
    private let log: (String) -> Void
    private let clock = ContinuousClock()
    private let started: ContinuousClock.Instant
    private var tokensSinceStart = 0.0
    /// Positions computed and real (not PAD) tokens among them since this run (or attempt) started.
    private var positionsSinceStart = 0.0, realSinceStart = 0.0
    /// Updates this run (or attempt) has taken: a resumed attempt's ETA is timed by its own updates, not the run's.
    private var updatesSinceStart = 0
    private var saidPastSchedule = false
    /// The first seq2seq evaluation line also gives sacrebleu's signatures of its BLEU and chrF (metrics.jsonl has
    /// them on every line).
    private var saidSignatures = false

    init(config: RunConfig, runDirectory: String, log: @escaping (String) -> Void) throws {
        self.config = config
        self.log = log
        metrics = try MetricsLog(directory: runDirectory, tensorboard: config.training.tensorboard, log: log)
        started = clock.now
        // A warm-up longer than the run never reaches the rate the config gives (cosine refuses it; noam's rate is its own).
        let (warmup, steps) = (config.schedule.warmupSteps, config.training.steps)
        if config.schedule.kind == .constant && warmup > steps {
            log("note: schedule.warmup_steps \(warmup) is longer than the run's \(steps) updates: the learning rate reaches only "
                + String(format: "%.3g, %.0f%% of optimizer.lr", config.learningRateSchedule.rate(step: steps), 100 * Double(steps) / Double(warmup)))
        }
    }

    /// One update, `state` being where training is after it.
    func record(_ result: TrainingStep.Outcome, state: TrainingState, learningRate: Float) {
        let elapsed = (clock.now - started).seconds
        tokensSinceStart += Double(result.targetTokens)
        updatesSinceStart += 1
        positionsSinceStart += Double(result.positions)
        realSinceStart += Double(result.realPositions)
        let rate = tokensSinceStart / max(elapsed, 1e-9)
        let padding = positionsSinceStart > 0 ? 1 - realSinceStart / positionsSinceStart : 0
        metrics.record(["step": state.step, "loss": result.lossPerToken, "lr": Double(learningRate), "grad_norm": result.gradientNorm,
                        "tokens_per_s": rate, "elapsed_s": elapsed, "epoch": state.position.epoch, "padding_share": result.paddingShare],
                       log: log)
        if let end = config.learningRateSchedule.end, state.step > end, !saidPastSchedule {
            log("step \(state.step) is past the schedule's end (schedule.total_steps \(end)): the learning rate stays at \(learningRate)")
            saidPastSchedule = true
        }
        let steps = config.training.steps
        if state.step % config.training.logEvery == 0 || state.step == steps {
            let eta = Double(steps - state.step) * elapsed / Double(updatesSinceStart)
            log(String(format: "step %d/%d  loss %.4f  lr %.3g  grad norm %.3f  %.0f tokens/s (padding %.1f%%)  ETA %.0f s",
                       state.step, steps, result.lossPerToken, learningRate, result.gradientNorm, rate, 100 * padding, eta))
        }
        if result.stopRequested { log("a stop signal was received: stopping after step \(state.step) with a checkpoint") }
    }

    /// An evaluation at `step` that took `seconds`.
    func record(_ evaluation: Evaluation, step: Int, seconds: Double) {
        var fields: [String: Any] = ["step": step, "valid_loss": evaluation.loss, "valid_perplexity": evaluation.perplexity,
                                     "valid_token_accuracy": evaluation.tokenAccuracy, "valid_tokens": evaluation.targetTokens,
                                     "valid_seconds": seconds]
        var line = String(format: "eval at step %d: loss %.4f  perplexity %.3f  token accuracy %.4f", step,
                          evaluation.loss, evaluation.perplexity, evaluation.tokenAccuracy)
        if let exact = evaluation.exactMatch {
            fields["valid_exact_match"] = exact
            fields["valid_bleu"] = evaluation.bleu ?? NSNull()
            fields["valid_bleu_signature"] = evaluation.bleuSignature ?? NSNull()
            if let note = evaluation.bleuNote { fields["valid_bleu_note"] = note }
            fields["valid_chrf"] = evaluation.chrF ?? NSNull()
            fields["valid_chrf_signature"] = evaluation.chrFSignature ?? NSNull()
            line += String(format: "  exact match %.4f  %@  chrF %.2f", exact, evaluation.bleuText, evaluation.chrF ?? 0)
            if !saidSignatures, let bleu = evaluation.bleuSignature, let chrF = evaluation.chrFSignature {
                line += "\n  scores as sacrebleu computes them: BLEU|\(bleu), chrF2|\(chrF)"
                saidSignatures = true
            }
        }
        metrics.record(fields, log: log)
        log(line)
    }

    /// An evaluation at `step` that failed with `message`.
    func recordFailedEvaluation(_ message: String, step: Int) {
        metrics.record(["step": step, "eval_error": message], log: log)
    }
}

/// metrics.jsonl in the run directory: one JSON object per line, appended (rank 0 only). A value that is not finite
/// (the perplexity of a diverged model) is written as null, so every line stays valid JSON. With `tensorboard`, every
/// line's numbers also go to a TensorBoard event file in the run directory (one file per attempt, opened by a session
/// START at the attempt's first step, so TensorBoard shows a resumed run's repeated steps once), tagged with the
/// metrics.jsonl names.
final class MetricsLog {
    private let handle: FileHandle
    private let path: String
    private var failed = false
    private let events: EventFileWriter?
    private var eventsFailed = false

    /// Opens `directory`/metrics.jsonl for appending (created when missing). A metrics.jsonl with other names (hard
    /// links: a snapshot made with `cp -al`, say) is first made a file of its own, a copy renamed over it, so the
    /// lines appended here do not change those other names; `log` says so.
    init(directory: String, tensorboard: Bool = false, log: (String) -> Void = { _ in }) throws {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw TrainingError("\(directory): cannot create the run directory: \(describe(error))")
        }
        path = Paths.join(directory, "metrics.jsonl")
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        do {
            if let names = try OutputFile.separateHardLinks(path) {
                log("\(path) had \(names - 1) other name\(names == 2 ? "" : "s") (hard links): the run appends to a copy of it, "
                    + "and \(names == 2 ? "that name keeps" : "those names keep") the lines it had")
            }
        } catch {
            throw TrainingError("\(error); the run would append to the other names of metrics.jsonl (hard links) too")
        }
        guard let handle = FileHandle(forWritingAtPath: path) else { throw TrainingError("\(path): cannot open for appending") }
        handle.seekToEndOfFile()
        self.handle = handle
        do {
            events = tensorboard ? try EventFileWriter(directory: directory) : nil
        } catch {
            throw TrainingError("\(error) (training.tensorboard is true)")
        }
    }

    /// `fields` with non-finite numbers replaced by null.
    static func finite(_ fields: [String: Any]) -> [String: Any] {
        fields.mapValues { value in
            if let number = value as? Double, !number.isFinite { return NSNull() }
            if let number = value as? Float, !number.isFinite { return NSNull() }
            return value
        }
    }

    /// Appends one line. Training never stops for its metrics: the first failure (a full disk, say) is logged
    /// through `log` with the reason, later ones are not repeated.
    func record(_ fields: [String: Any], log: (String) -> Void) {
        do {
            var data = try JSONSerialization.data(withJSONObject: Self.finite(fields), options: [.sortedKeys])
            data.append(0x0A)
            try handle.write(contentsOf: data)
        } catch {
            if !failed { log("warning: \(path): cannot append metrics (\(describe(error))); training goes on, later failures are not repeated") }
            failed = true
        }
        guard let events, let step = fields["step"] as? Int else { return }
        // The finite numbers of the line (texts and nulls are not scalars).
        let scalars = Self.finite(fields).filter { $0.key != "step" }.compactMapValues { value -> Double? in
            (value as? Double) ?? (value as? Int).map(Double.init) ?? (value as? Float).map(Double.init)
        }
        guard !scalars.isEmpty else { return }
        do {
            try events.add(step: step, scalars: scalars)
        } catch {
            if !eventsFailed { log("warning: \(error); training goes on, later failures are not repeated") }
            eventsFailed = true
        }
    }

    deinit { try? handle.close() }
}
