import Kernels
import TestSupport
import Training
import Transformer
import XCTest

final class ScheduleTests: XCTestCase {
    func testNoamMatchesThePaper() {
        // lrate = d^-0.5 · min(step^-0.5, step · warmup^-1.5), d = 512, warmup 4000: peak at step 4000 ≈ 6.99e-4.
        let noam = LearningRateSchedule.noam(dModel: 512, warmupSteps: 4000, factor: 1)
        XCTAssertEqual(noam.rate(step: 4000), 0.000_698_77, accuracy: 1e-8)
        XCTAssertEqual(noam.rate(step: 1), Float(pow(512.0, -0.5) * pow(4000.0, -1.5)), accuracy: 1e-12)
        XCTAssertLessThan(noam.rate(step: 3999), noam.rate(step: 4000))
        XCTAssertLessThan(noam.rate(step: 8000), noam.rate(step: 4000))
        XCTAssertEqual(noam.rate(step: 16000), Float(pow(512.0, -0.5) * pow(16000.0, -0.5)), accuracy: 1e-10)
    }

    func testCosineWithWarmup() {
        let cosine = LearningRateSchedule.cosine(peak: 1e-3, warmupSteps: 10, totalSteps: 110, minimum: 1e-4)
        XCTAssertEqual(cosine.rate(step: 1), 1e-4, accuracy: 1e-9)
        XCTAssertEqual(cosine.rate(step: 10), 1e-3, accuracy: 1e-9)
        XCTAssertEqual(cosine.rate(step: 60), 5.5e-4, accuracy: 1e-8, "halfway down the cosine")
        XCTAssertEqual(cosine.rate(step: 110), 1e-4, accuracy: 1e-9)
        XCTAssertEqual(cosine.rate(step: 500), 1e-4, accuracy: 1e-9)
        XCTAssertEqual(LearningRateSchedule.constant(rate: 3e-4).rate(step: 77), 3e-4)
        // With a warm-up (Hugging Face's get_constant_schedule_with_warmup): linear from 0, then the rate.
        let warm = LearningRateSchedule.constant(rate: 4e-4, warmupSteps: 4)
        for (step, rate) in zip([1, 2, 3, 4, 5, 100], [1e-4, 2e-4, 3e-4, 4e-4, 4e-4, 4e-4] as [Float]) {
            XCTAssertEqual(warm.rate(step: step), rate, accuracy: 1e-9, "step \(step)")
        }
    }

    func testClippingFactorAndGradientNorm() {
        XCTAssertEqual(clippingFactor(norm: 10, maxNorm: 1), Float(1 / (10 + 1e-6)), accuracy: 1e-7)
        XCTAssertEqual(clippingFactor(norm: 0.5, maxNorm: 1), 1)
        XCTAssertEqual(clippingFactor(norm: 10, maxNorm: 0), 1, "max norm 0 turns clipping off")
        let values = (0..<10_001).map { Float($0 % 7) - 3 }
        var copy = values
        copy.withUnsafeMutableBufferPointer { buffer in
            setComputeThreads(1)
            let one = sumOfSquares(buffer)
            setComputeThreads(2)
            let two = sumOfSquares(buffer)
            setComputeThreads(1)
            XCTAssertEqual(one.bitPattern, two.bitPattern, "the same bits for any thread count")
            XCTAssertEqual(one, values.reduce(0.0) { $0 + Double($1) * Double($1) }, accuracy: 1e-9)
        }
    }

    func testScheduleFromConfig() throws {
        let yaml = smallModelYAML + """

            optimizer: {lr: 1.0e-3}
            schedule: {kind: cosine, warmup_steps: 5, total_steps: 50, min_lr: 1.0e-5}
            """
        let config = try RunConfig.parse(yaml, file: "inline.yaml")
        XCTAssertEqual(config.learningRateSchedule, .cosine(peak: 1e-3, warmupSteps: 5, totalSteps: 50, minimum: 1e-5))
        XCTAssertThrowsError(try RunConfig.parse(yaml.replacingOccurrences(of: "total_steps: 50", with: "total_steps: 5"), file: "inline.yaml")) {
            XCTAssertEqual(($0 as? ConfigError)?.key, "schedule.total_steps")
        }
        XCTAssertThrowsError(try RunConfig.parse(yaml.replacingOccurrences(of: "kind: cosine", with: "kind: linear"), file: "inline.yaml")) {
            XCTAssertEqual(($0 as? ConfigError)?.key, "schedule.kind")
        }
        // Without total_steps, cosine spans the run (training.steps), not one step.
        let spanning = try RunConfig.parse(yaml.replacingOccurrences(of: ", total_steps: 50", with: ""), file: "inline.yaml",
                                           overrides: ["training.steps=400"])
        XCTAssertEqual(spanning.learningRateSchedule, .cosine(peak: 1e-3, warmupSteps: 5, totalSteps: 400, minimum: 1e-5))
        XCTAssertEqual(spanning.learningRateSchedule.end, 400)
        XCTAssertGreaterThan(spanning.learningRateSchedule.rate(step: 200), 4e-4, "halfway through the run, not at min_lr")
        XCTAssertNil(LearningRateSchedule.noam(dModel: 512, warmupSteps: 4000, factor: 1).end)
    }

    func testSetOverridesAreCheckedLikeTheFile() throws {
        let yaml = smallModelYAML
        let config = try RunConfig.parse(yaml, file: "inline.yaml",
                                         overrides: ["training.steps=7", "model.activation=relu", "optimizer.lr=5.0e-4", "schedule.kind=cosine",
                                                     "schedule.warmup_steps=3"])
        XCTAssertEqual(config.training.steps, 7)
        XCTAssertEqual(config.model.activation, .relu)
        XCTAssertEqual(config.optimizer.lr, 5e-4)
        XCTAssertEqual(config.learningRateSchedule, .cosine(peak: 5e-4, warmupSteps: 3, totalSteps: 7, minimum: 0))
        func error(_ override: String) -> String {
            do {
                _ = try RunConfig.parse(yaml, file: "inline.yaml", overrides: [override])
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        // Each error names the --set that caused it, not the file (which holds no such key or value).
        XCTAssertEqual(error("training.stpes=3"), "--set training.stpes=3: config key 'training.stpes': unknown key (did you mean 'training.steps'?)")
        XCTAssertEqual(error("training.x=3"), "--set training.x=3: config key 'training.x': unknown key",
                       "no suggestion as far from every key as the key is long")
        XCTAssertEqual(error("training.seed=-5"), "--set training.seed=-5: config key 'training.seed': -5 is out of range (an integer from 0 to 18446744073709551615)")
        XCTAssertEqual(error("training.steps=9223372036854775808"),
                       "--set training.steps=9223372036854775808: config key 'training.steps': 9223372036854775808 is out of range (an integer from \(Int.min) to \(Int.max))")
        XCTAssertEqual(error("steps=3"), "--set steps=3: expected section.key=value (for example training.steps=100)")
        XCTAssertEqual(error("training.clip_norm=1e400"), "--set training.clip_norm=1e400: config key 'training.clip_norm': 1e400 is beyond "
                       + "the largest number a float holds (about 1.8e308)", "said as written, not as 'got inf'")
        XCTAssertTrue(error("optimizer.lr=.inf").contains("must be positive and finite, got inf"), "infinity written as such")
        for odd in ["training..steps=3", ".training.steps=3", "training.steps.=3"] {
            XCTAssertEqual(error(odd), "--set \(odd): expected section.key=value (for example training.steps=100)", "no key has empty parts")
        }
        XCTAssertEqual(error("training.collective_timeout=0.001"), "--set training.collective_timeout=0.001: config key "
                       + "'training.collective_timeout': must be 0 (no limit) or 1 to 1e7 seconds, got 0.001")
        XCTAssertEqual(error("training.steps="), "--set training.steps=: config key 'training.steps': has no value after '=' (give one, or "
                       + "leave this --set out for the config's value)", "it is section.key=value, with the value left out")
        // A trial's finding: YAML 1.1 forms of numbers were read silently (010 as 8, 1:00 as 60, 0x10 as 16), and a
        // quoted number was "out of range".
        let decimal = "; write the number in decimal"
        XCTAssertEqual(error("training.steps=010"), "--set training.steps=010: config key 'training.steps': 010 is an octal number in "
                       + "YAML 1.1, which this config is read by" + decimal)
        XCTAssertEqual(error("training.steps=1:00"), "--set training.steps=1:00: config key 'training.steps': 1:00 is a base-60 number in "
                       + "YAML 1.1, which this config is read by" + decimal)
        XCTAssertEqual(error("optimizer.lr=1:30.0"), "--set optimizer.lr=1:30.0: config key 'optimizer.lr': 1:30.0 is a base-60 number "
                       + "in YAML 1.1, which this config is read by" + decimal)
        // The kind, not only the examples: binary, separators and signed hexadecimal are text in YAML 1.2.
        for (value, form) in [("0b11", "a binary number"), ("4_0", "a number with digit separators ('_')"),
                              ("-1_000", "a number with digit separators ('_')"), ("0x1_0", "a hexadecimal number"),
                              ("+0x10", "a hexadecimal number")] {
            XCTAssertEqual(error("training.steps=\(value)"), "--set training.steps=\(value): config key 'training.steps': \(value) is \(form) "
                           + "in YAML 1.1, which this config is read by" + decimal)
        }
        XCTAssertEqual(error("optimizer.lr=0.000_1"), "--set optimizer.lr=0.000_1: config key 'optimizer.lr': 0.000_1 is a number with "
                       + "digit separators ('_') in YAML 1.1, which this config is read by" + decimal)
        XCTAssertEqual(try RunConfig.parse(yaml, file: "inline.yaml", overrides: ["data.directory=4_0"]).data.directory, "4_0")
        XCTAssertEqual(try RunConfig.parse(yaml, file: "inline.yaml", overrides: ["training.seed=0x10"]).training.seed, 16,
                       "hexadecimal means the same in YAML 1.1 and 1.2")
        XCTAssertEqual(error("training.steps=0:30"), "--set training.steps=0:30: config key 'training.steps': expected an integer",
                       "not base 60 (its integers start with 1-9): text")
        XCTAssertEqual(error("training.steps=08"), "--set training.steps=08: config key 'training.steps': expected an integer (08: a leading "
                       + "zero makes YAML 1.1 read an octal number, with no 8 or 9; write it without the zero)")
        XCTAssertEqual(try RunConfig.parse(yaml, file: "inline.yaml", overrides: ["optimizer.lr=08"]).optimizer.lr, 8, "a float key reads 08 as 8")
        XCTAssertEqual(error("training.steps=\"20\""), "--set training.steps=\"20\": config key 'training.steps': expected an integer, not "
                       + "the quoted string \"20\" (write it without quotes)")
        XCTAssertEqual(error("training.steps=\"abc\""), "--set training.steps=\"abc\": config key 'training.steps': expected an integer",
                       "no advice to unquote what is no number")
        XCTAssertEqual(try RunConfig.parse(yaml, file: "inline.yaml", overrides: ["training.seed=0"]).training.seed, 0, "0 is decimal")
        XCTAssertEqual(try RunConfig.parse(yaml, file: "inline.yaml", overrides: ["data.directory=007"]).data.directory, "007",
                       "a directory's name is text, read as written")
        XCTAssertEqual(error("training.steps=many"), "--set training.steps=many: config key 'training.steps': expected an integer")
        XCTAssertEqual(error("training.steps=[1"), "--set training.steps=[1: config key 'training.steps': '[1' is not a YAML value")
        XCTAssertEqual(error("model.d_model=-2"), "--set model.d_model=-2: config key 'model.d_model': must be even and at least 2, got -2")
        XCTAssertEqual(error("training.batch_size=0"), "--set training.batch_size=0: config key 'training.batch_size': must be 1 to "
                       + "\(RunConfig.largestBatch), got 0")
        XCTAssertTrue(error("model.heads=3").contains("d_model 64 is not divisible by heads 3"))
        // An error of a key the file set, caused by an override of another: the file with its overrides.
        XCTAssertEqual(error("model.kind=encoder-decoder"), "inline.yaml with --set model.kind=encoder-decoder: config key "
                       + "'model.encoder_layers': is missing")
        XCTAssertThrowsError(try RunConfig.parse(yaml, file: "inline.yaml", overrides: ["model.kind=encoder-decoder", "model.encoder_layers=0"])) {
            XCTAssertTrue("\($0)".hasSuffix("config key 'model.encoder_layers': an encoder-decoder model needs at least 1, got 0"), "\($0)")
        }
        // A path with a line end (a block scalar) is refused by key.
        XCTAssertThrowsError(try RunConfig.parse(yaml.replacingOccurrences(of: "data: {target_length: 16}",
                                                                           with: "data:\n  target_length: 16\n  directory: |\n    data/x\n"),
                                                 file: "inline.yaml")) {
            XCTAssertTrue("\($0)".hasPrefix("inline.yaml: config key 'data.directory': holds a line end"), "\($0)")
        }
        // A key with no value is YAML's null, not the key's default.
        XCTAssertEqual(error("training.label_smoothing=null"), "--set training.label_smoothing=null: config key 'training.label_smoothing': "
                       + "has no value (give one; a key that has a default may be left out instead)")
        // Keys a decoder-only model has no use for are refused, not dropped.
        XCTAssertEqual(error("model.encoder_layers=3"), "--set model.encoder_layers=3: config key 'model.encoder_layers': a decoder-only "
                       + "model has no encoder; leave the key out")
        XCTAssertNoThrow(try RunConfig.parse(yaml, file: "inline.yaml", overrides: ["model.encoder_layers=0"]))
        XCTAssertTrue(error("data.source_length=8").contains("config key 'data.source_length': a decoder-only model has no source side"))
        XCTAssertTrue(error("eval.decode_samples=5").contains("decodes no translations to score"))
        XCTAssertThrowsError(try RunConfig.parse(yaml + "\nmlm: {probability: 0.5}\n", file: "inline.yaml")) {
            XCTAssertEqual("\($0)", "inline.yaml: config key 'mlm.probability': a decoder-only model masks no tokens (the mlm section is "
                           + "for encoder-only models); leave the key out")
        }
        // ... except where null is a setting of its own: back to batch_size batching from a config with max_tokens.
        let budget = try RunConfig.parse(yaml, file: "inline.yaml", overrides: ["training.max_tokens=64"])
        XCTAssertEqual(budget.training.maxTokens, 64)
        XCTAssertNil(try RunConfig.parse(yaml, file: "inline.yaml", overrides: ["training.max_tokens=64", "training.max_tokens=null"]).training.maxTokens)
        XCTAssertThrowsError(try RunConfig.parse(yaml + "\ncheckpoint:\n  keep:\n", file: "inline.yaml")) {
            XCTAssertEqual("\($0)", "inline.yaml: config key 'checkpoint.keep': has no value (give one; a key that has a default may be left out instead)")
        }
    }

    /// The JSON a checkpoint stores (and `ddp inspect` prints) is itself a config that loads: for every shipped
    /// config of each kind, it holds no key the kind has no use for, and reads back as the same config.
    func testTheStoredConfigLoadsAsAConfig() throws {
        let configs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Configs")
        let names = try FileManager.default.contentsOfDirectory(atPath: configs.path).filter { $0.hasSuffix(".yaml") }.sorted()
        var kinds: Set<String> = []
        for name in names {
            let config = try RunConfig.load(configs.appendingPathComponent(name).path)
            kinds.insert(config.model.kind.rawValue)
            let json = String(decoding: try JSONEncoder().encode(config), as: UTF8.self)
            XCTAssertEqual(try RunConfig.parse(json, file: "\(name) as stored"), config, name)
            XCTAssertEqual(json.contains("\"mlm\""), config.model.kind == .encoderOnly, name)
            XCTAssertEqual(json.contains("source_length"), config.model.kind == .encoderDecoder, name)
            XCTAssertEqual(json.contains("decode_samples"), config.model.kind == .encoderDecoder, name)
        }
        XCTAssertEqual(kinds, Set(ModelConfig.Kind.allCases.map(\.rawValue)), "shipped configs of every kind")
    }

    /// Every key a config may hold is stored, but those its kind has no use for: a config that sets them all (none
    /// at its default) encodes exactly those keys and reads back as itself. A key added to a section and not to its
    /// encoding fails here.
    func testTheStoredConfigHoldsEveryKeyItsKindUses() throws {
        let sections = """
            data: {directory: d, source_length: 9, target_length: 16}
            training: {batch_size: 4, max_tokens: 64, length_groups: 2, label_smoothing: 0.1, seed: 3, steps: 50, grad_accum: 2,
                       clip_norm: 0.5, bucket_mb: 2, grad_compression: bf16, threads: 1, log_every: 5, collective_timeout: 60,
                       tensorboard: true}
            optimizer: {lr: 1.0e-3, beta1: 0.8, beta2: 0.99, eps: 1.0e-7, weight_decay: 0.1}
            schedule: {kind: cosine, warmup_steps: 5, min_lr: 1.0e-5, total_steps: 40}
            eval: {every: 5, max_batches: 2, decode_samples: 3, bleu_tokenize: char}
            checkpoint: {every: 10, keep: 2}
            mlm: {probability: 0.2, mask_replace_prob: 0.7, random_replace_prob: 0.2, eval_seed: 4}
            """
        // (schedule.factor is noam's, checked below with the other schedules' keys.)
        let unused: [ModelConfig.Kind: [String]] = [
            .encoderDecoder: ["mlm", "schedule.factor"],
            .encoderOnly: ["data.source_length", "eval.decode_samples", "eval.bleu_tokenize", "schedule.factor"],
            .decoderOnly: ["data.source_length", "eval.decode_samples", "eval.bleu_tokenize", "mlm", "schedule.factor"],
        ]
        for (kind, left) in unused {
            var text = """
                model: {kind: \(kind.rawValue), vocab_size: 300, d_model: 64, heads: 4, encoder_layers: \(kind.hasEncoder ? 1 : 0),
                        decoder_layers: \(kind.hasDecoder ? 1 : 0), d_ff: 64, activation: relu, norm: post, positions: learned,
                        max_length: 16, dropout: 0.1, tied_embeddings: false, scale_embedding: true}
                """ + "\n" + sections.replacingOccurrences(of: "length_groups: 2", with: "length_groups: \(kind == .encoderDecoder ? 2 : 1)")
            for key in left {
                let parts = key.split(separator: ".")
                text = parts.count == 1 ? text.replacing(/\nmlm: \{[^}]*\}/, with: "")
                                        : text.replacing(try Regex("\(parts[1]): [^,}]*,? ?"), with: "")
            }
            let config = try RunConfig.parse(text, file: "\(kind.rawValue).yaml")
            let json = try JSONEncoder().encode(config)
            let root = try XCTUnwrap(try JSONSerialization.jsonObject(with: json) as? [String: [String: Any]])
            let stored = Set(root.flatMap { section, keys in keys.keys.map { "\(section).\($0)" } })
            let expected = Set(RunConfig.knownKeys.filter { !$0.key.isEmpty }.flatMap { section, keys in keys.map { "\(section).\($0)" } })
                .filter { key in !left.contains { key == $0 || key.hasPrefix($0 + ".") } }
            XCTAssertEqual(stored, expected, kind.rawValue)
            XCTAssertEqual(try RunConfig.parse(String(decoding: json, as: UTF8.self), file: "stored"), config, kind.rawValue)
        }
        // A checkpoint stored before schedules kept only their own keys still reads (and keeps its warm-up).
        let old = try JSONDecoder().decode(RunConfig.self, from: try JSONEncoder().encode(try RunConfig.parse(smallModelYAML, file: "old.yaml"))
            .replacingSchedule(#"{"kind":"constant","warmup_steps":8,"factor":1,"min_lr":0}"#))
        XCTAssertEqual(old.learningRateSchedule, .constant(rate: old.optimizer.lr, warmupSteps: 8))
        // Another kind on the command line: the file's keys for its own kind are set aside with null.
        let switched = try RunConfig.parse(smallModelYAML + "\nschedule: {kind: cosine, warmup_steps: 5, min_lr: 1.0e-5}", file: "cos.yaml",
                                           overrides: ["schedule.kind=constant", "schedule.min_lr=null"])
        XCTAssertEqual(switched.learningRateSchedule, .constant(rate: switched.optimizer.lr, warmupSteps: 5))
        XCTAssertThrowsError(try RunConfig.parse(smallModelYAML + "\nschedule: {kind: cosine, min_lr: 1.0e-5}", file: "cos.yaml",
                                                 overrides: ["schedule.kind=constant"])) {
            XCTAssertTrue("\($0)".contains("leave the key out, or on the command line --set schedule.min_lr=null"), "\($0)")
        }
        // Each schedule stores the keys it uses, and a key it does not use is refused by name, not ignored.
        let model = smallModelYAML + "\n"
        // noam sets its own rate: optimizer.lr is refused with it, and not stored.
        let noam = try RunConfig.parse(smallModelYAML + "\nschedule: {kind: noam, warmup_steps: 5}", file: "noam.yaml")
        let noamStored = try XCTUnwrap(try JSONSerialization.jsonObject(with: try JSONEncoder().encode(noam)) as? [String: [String: Any]])
        XCTAssertNil(noamStored["optimizer"]?["lr"])
        XCTAssertNotNil(noamStored["optimizer"]?["beta2"])
        XCTAssertThrowsError(try RunConfig.parse(smallModelYAML + "\noptimizer: {lr: 1.0}\nschedule: {kind: noam, warmup_steps: 5}", file: "noam.yaml")) {
            XCTAssertTrue("\($0)".contains("config key 'optimizer.lr': the noam schedule has no use for it (noam sets the rate itself"), "\($0)")
        }
        // Switching kinds on the command line: every key set aside is named in one message, with the --set for each.
        let cosine = smallModelYAML + "\noptimizer: {lr: 1.0e-3}\nschedule: {kind: cosine, warmup_steps: 5, min_lr: 1.0e-5}"
        XCTAssertThrowsError(try RunConfig.parse(cosine, file: "cos.yaml", overrides: ["schedule.kind=noam"])) {
            XCTAssertTrue("\($0)".contains("the noam schedule has no use for it, nor for optimizer.lr (noam sets the rate itself")
                          && "\($0)".hasSuffix("--set schedule.min_lr=null --set optimizer.lr=null"), "\($0)")
        }
        let switchedToNoam = try RunConfig.parse(cosine, file: "cos.yaml", overrides: ["schedule.kind=noam", "schedule.min_lr=null", "optimizer.lr=null"])
        XCTAssertEqual(switchedToNoam.learningRateSchedule, .noam(dModel: 64, warmupSteps: 5, factor: 1))
        // A null where the kind uses the key is no value (an empty `lr:` in a file), not the default.
        for (section, kind) in [("optimizer: {lr: null}", "constant"), ("schedule: {kind: cosine, min_lr: null}", "cosine"),
                                ("schedule: {kind: noam, warmup_steps: 3, factor: null}", "noam")] {
            XCTAssertThrowsError(try RunConfig.parse(smallModelYAML + "\n" + section, file: "\(kind).yaml")) {
                XCTAssertTrue("\($0)".contains("has no value"), "\($0)")
            }
        }
        let schedules = ["constant": "{kind: constant, warmup_steps: 5}", "noam": "{kind: noam, warmup_steps: 5, factor: 2}",
                         "cosine": "{kind: cosine, warmup_steps: 5, min_lr: 1.0e-5, total_steps: 40}"]
        for (kind, section) in schedules {
            let config = try RunConfig.parse(model + "schedule: \(section)", file: "\(kind).yaml")
            let root = try XCTUnwrap(try JSONSerialization.jsonObject(with: try JSONEncoder().encode(config)) as? [String: [String: Any]])
            let expected = section.dropFirst().dropLast().split(separator: ",").map { String($0.split(separator: ":")[0]).trimmingCharacters(in: .whitespaces) }
            XCTAssertEqual(Set(try XCTUnwrap(root["schedule"]).keys), Set(expected), kind)
            for (key, value) in [("factor", "2"), ("min_lr", "1.0e-5"), ("total_steps", "40")] where !expected.contains(key) {
                XCTAssertThrowsError(try RunConfig.parse(model + "schedule: \(section.dropLast()), \(key): \(value)}", file: "\(kind).yaml")) {
                    XCTAssertTrue("\($0)".contains("config key 'schedule.\(key)': the \(kind) schedule has no use for it"), "\($0)")
                }
            }
        }
    }

    /// Differences (resume's lines, a refused model's keys) write values as a config does: true, not 1.
    func testDifferencesWriteValuesAsAConfigDoes() throws {
        let a = try RunConfig.parse(smallModelYAML, file: "a.yaml")
        let b = try RunConfig.parse(smallModelYAML, file: "b.yaml", overrides: ["training.tensorboard=true", "optimizer.lr=3.0e-3",
                                                                              "model.tied_embeddings=false", "model.activation=relu"])
        let changes = RunConfig.differences(a, b).map { "\($0.key): \($0.stored) -> \($0.current)" }
        XCTAssertEqual(changes, ["model.activation: gelu -> relu", "model.tied_embeddings: true -> false", "optimizer.lr: 0.0001 -> 0.003",
                                 "training.tensorboard: false -> true"])
        let seeds = try RunConfig.parse(smallModelYAML, file: "c.yaml", overrides: ["training.seed=18446744073709551615"])
        XCTAssertEqual(RunConfig.differences(a, seeds).map { "\($0.key): \($0.stored) -> \($0.current)" },
                       ["training.seed: 0 -> 18446744073709551615"])
        XCTAssertEqual(Checkpoint.architectureDifferences(a.model, b.model),
                       "model.activation: checkpoint gelu, expected relu; model.tied_embeddings: checkpoint true, expected false")
    }

    /// Aliases are refused (the YAML library would expand them all, however deeply nested), wherever the parser sees
    /// one, and only there: `&` and `*` in a comment, a quoted value or inside a word are neither.
    func testAliasesAreRefusedButNotInCommentsOrQuotes() throws {
        let commented = "# data: train-*.h5 and valid-*.h5, from ddp prepare &co\n" + smallModelYAML + "  # &x and *x\n"
        XCTAssertNoThrow(try RunConfig.parse(commented, file: "c.yaml"))
        for (directory, yaml) in [("runs &x/*x", "\"runs &x/*x\""), ("it's &x *x", "'it''s &x *x'"), ("runs/a*b", "runs/a*b"), ("*c", "'*c'")] {
            let text = smallModelYAML.replacingOccurrences(of: "data: {target_length: 16}", with: "data: {target_length: 16, directory: \(yaml)}")
            XCTAssertEqual(try RunConfig.parse(text, file: "q.yaml").data.directory, directory)
        }
        func error(_ text: String, overrides: [String] = []) -> String {
            do { _ = try RunConfig.parse(text, file: "a.yaml", overrides: overrides); return "no error" } catch { return "\(error)" }
        }
        XCTAssertEqual(error(smallModelYAML + "\nx: &big [1, 2]\ny: [*big, *big]\n"), "a.yaml: uses the YAML alias *big (line 6); run "
                       + "configs do not support anchors and aliases (write the values out)")
        // Texts a pattern over the characters would misread (a quote inside a word or a block scalar, line ends other
        // than \n, a byte-order mark before an alias): the parser's reading decides.
        let chain = (1...30).map { "l\($0): &l\($0) [*l\($0 - 1), *l\($0 - 1)]" }.joined(separator: "\n")
        for text in ["note: rock 'n roll\nx: &a [1, 2]\ny: *a\n", "note: a-'b\nx: &a [1, 2]\ny: *a\n", "note: |\n  it 'is\nx: &a [1, 2]\ny: *a\n",
                     "# c\u{2028}x: &a [1, 2]\ny: *a\n", "# c\u{85}x: &a [1, 2]\ny: *a\n", "x: &a [1, 2]\ny:\n\u{FEFF}*a\n",
                     "note: rock 'n roll\nl0: &l0 [1]\n" + chain + "\n? *l30\n: 1\n"] {
            XCTAssertTrue(error(text).hasPrefix("a.yaml: uses the YAML alias *"), "\(text.prefix(60)): \(error(text))")
        }
        // In a --set value too.
        XCTAssertEqual(error(smallModelYAML, overrides: ["model.d_model={a: &a [1], b: [*a, *a]}"]), "--set model.d_model={a: &a [1], b: "
                       + "[*a, *a]}: config key 'model.d_model': uses the YAML alias *a (line 1); run configs do not support anchors and "
                       + "aliases (write the values out)")
    }

    /// YAML tags are refused (the decoding would ignore them and read the value as written: `!!str 3` trained 3 steps),
    /// in a file and in a --set; a tag that says what the value is anyway (`!!int 3`, `!!str "a"`) passes.
    func testTagsAreRefusedUnlessTheySayWhatTheValueIs() throws {
        func error(_ text: String, overrides: [String] = []) -> String {
            do { _ = try RunConfig.parse(text, file: "t.yaml", overrides: overrides); return "no error" } catch { return "\(error)" }
        }
        let tail = "; run configs do not read tags (write the value without it)"
        for (value, tag) in [("!!str 3", "!!str"), ("!!float 3", "!!float"), ("!custom 3", "!custom"), ("!!int \"3\"", "!!int"), ("! 3", "!")] {
            XCTAssertEqual(error(smallModelYAML, overrides: ["training.steps=\(value)"]),
                           "--set training.steps=\(value): config key 'training.steps': uses the YAML tag \(tag) (line 1)" + tail)
        }
        let tagged = smallModelYAML.replacingOccurrences(of: "data: {target_length: 16}", with: "data: !settings {target_length: 16}")
        XCTAssertTrue(error(tagged).hasPrefix("t.yaml: uses the YAML tag !settings (line "), error(tagged))
        XCTAssertEqual(error(smallModelYAML, overrides: ["training.steps=!!int 3"]), "no error")
        XCTAssertEqual(try RunConfig.parse(smallModelYAML, file: "t.yaml", overrides: ["data.directory=!!str \"runs\""]).data.directory, "runs")
    }

    /// A config file that cannot be read says why: missing, a directory, a device, too large, not UTF-8.
    func testAnUnreadableConfigSaysWhy() throws {
        let directory = try makeTemporaryDirectory("config-read")
        defer { try? FileManager.default.removeItem(at: directory) }
        func error(_ path: String) -> String {
            do { _ = try RunConfig.load(path); return "no error" } catch { return "\(error)" }
        }
        let missing = directory.appendingPathComponent("missing.yaml").path
        XCTAssertEqual(error(missing), "\(missing): does not exist")
        XCTAssertEqual(error(directory.path), "\(directory.path): is a directory, not a text file")
        XCTAssertEqual(error("/dev/zero"), "/dev/zero: is not a regular file (a FIFO, device or socket), so it is not read")
        let big = directory.appendingPathComponent("big.yaml").path
        try Foundation.Data(repeating: UInt8(ascii: "#"), count: RunConfig.largestFile + 1).write(to: URL(fileURLWithPath: big))
        XCTAssertEqual(error(big), "\(big): is \(RunConfig.largestFile + 1) bytes, more than the \(RunConfig.largestFile) read")
        let latin1 = directory.appendingPathComponent("latin1.yaml").path
        try Foundation.Data([0x23, 0x20, 0xE9, 0x0A]).write(to: URL(fileURLWithPath: latin1))
        XCTAssertEqual(error(latin1), "\(latin1): is not UTF-8 text")
        // A link to a config is read as the config it names.
        let config = directory.appendingPathComponent("run.yaml").path, link = directory.appendingPathComponent("link.yaml").path
        try smallModelYAML.write(toFile: config, atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: config)
        XCTAssertEqual(try RunConfig.load(link), try RunConfig.load(config))
    }

    /// An encoder-decoder config without `data.source_length` says the key is missing, not that it is 0.
    func testAMissingSourceLengthIsSaidMissing() {
        let yaml = """
            model: {kind: encoder-decoder, vocab_size: 300, d_model: 64, heads: 4, encoder_layers: 1, decoder_layers: 1, d_ff: 64,
                    activation: relu, norm: pre, positions: sinusoidal, max_length: 16}
            data: {target_length: 16}
            training: {batch_size: 2}
            """
        XCTAssertThrowsError(try RunConfig.parse(yaml, file: "inline.yaml")) {
            XCTAssertEqual("\($0)", "inline.yaml: config key 'data.source_length': is missing (or 0): an encoder-decoder model needs the "
                           + "longest source it reads, in tokens with EOS, in 1...model.max_length (16)")
        }
        XCTAssertNoThrow(try RunConfig.parse(yaml.replacingOccurrences(of: "target_length: 16", with: "target_length: 16, source_length: 9"),
                                             file: "inline.yaml"))
    }

    /// README's list of required keys ("Configs"): each one left out is an error naming it; every other key may be
    /// left out of a config that has them all.
    func testTheRequiredKeysAreTheOnesREADMENames() throws {
        let model: [(String, String)] = [("kind", "encoder-decoder"), ("vocab_size", "64"), ("d_model", "32"), ("heads", "4"),
                                         ("encoder_layers", "1"), ("decoder_layers", "1"), ("d_ff", "64"), ("activation", "relu"),
                                         ("norm", "post"), ("positions", "sinusoidal"), ("max_length", "32")]
        let sections: [(String, [(String, String)])] = [("model", model), ("data", [("target_length", "16"), ("source_length", "16")]),
                                                        ("training", [("batch_size", "2")])]
        func yaml(leavingOut left: String?) -> String {
            sections.map { section, keys in
                "\(section): {" + keys.filter { "\(section).\($0.0)" != left }.map { "\($0.0): \($0.1)" }.joined(separator: ", ") + "}"
            }.joined(separator: "\n") + "\n"
        }
        let minimal = try RunConfig.parse(yaml(leavingOut: nil), file: "minimal.yaml")
        XCTAssertEqual(minimal.model.dropout, 0)
        XCTAssertTrue(minimal.model.tiedEmbeddings)
        for (section, keys) in sections {
            for (key, _) in keys {
                XCTAssertThrowsError(try RunConfig.parse(yaml(leavingOut: "\(section).\(key)"), file: "minimal.yaml"), "\(section).\(key)") {
                    let prefix = "minimal.yaml: config key '\(section).\(key)': "
                    XCTAssertTrue("\($0)".hasPrefix(prefix) && "\($0)".dropFirst(prefix.count).hasPrefix("is missing"), "\($0)")
                }
            }
        }
        // A language model's config needs neither encoder key nor source_length.
        let languageModel = yaml(leavingOut: nil).replacingOccurrences(of: "kind: encoder-decoder", with: "kind: decoder-only")
            .replacingOccurrences(of: "encoder_layers: 1, ", with: "").replacingOccurrences(of: ", source_length: 16", with: "")
        XCTAssertNoThrow(try RunConfig.parse(languageModel, file: "lm.yaml"))
        // The training data's directory is required by ddp train alone (eval and bench read a config without it).
        XCTAssertEqual(minimal.data.directory, "")
        // README says so, naming the model keys that are not required, the rest of the keys above, and no others.
        let readme = try String(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("README.md"), encoding: .utf8).replacingOccurrences(of: "\n", with: " ")
        let sentence = try XCTUnwrap(readme.range(of: "Required keys: ").map { String(readme[$0.upperBound...].prefix(400)) })
        XCTAssertTrue(sentence.hasPrefix("every `model` key but these five: `encoder_layers` and `decoder_layers` (required where the kind has "
                                         + "that stack, refused where it has not), `dropout` (default 0), `tied_embeddings` (default true) and "
                                         + "`scale_embedding` (the kind's default); `data.target_length`, `data.source_length` for encoder-decoder, "
                                         + "and `data.directory` for `ddp train`; `training.batch_size` or `training.max_tokens`."), sentence)
        // Every model key a config holds is one of those above or one of the three with defaults.
        let stored = try XCTUnwrap(try JSONSerialization.jsonObject(with: JSONEncoder().encode(minimal.model)) as? [String: Any])
        XCTAssertEqual(Set(stored.keys).union(["scale_embedding"]), Set(model.map(\.0)).union(["dropout", "tied_embeddings", "scale_embedding"]))
    }

    /// A file that is not YAML is one line naming where: not the YAML library's dump of the file.
    func testYAMLErrorsAreOneLine() {
        func error(_ text: String) -> String {
            do { _ = try RunConfig.parse(text, file: "bad.yaml"); return "no error" } catch { return "\(error)" }
        }
        let duplicate = "data: {target_length: 8}\nmodel:\n  kind: decoder-only\n  heads: 2\n  kind: encoder-only\ntraining: {batch_size: 2}\n"
        XCTAssertEqual(error(duplicate), "bad.yaml: not valid YAML: 'kind' is given more than once in one mapping (first at line 3); give "
                       + "each key once")
        XCTAssertEqual(error("\n  \n"), "bad.yaml: the file is empty")
        XCTAssertEqual(error("# model: {heads: 2}\n\n"), "bad.yaml: holds no keys, only comments or blank lines")
        let later = "model:\n  heads: 2\n  d_model: 8\n  kind: a\n  kind: b\n"
        XCTAssertEqual(error(later), "bad.yaml: not valid YAML: 'kind' is given more than once in one mapping (first at line 4); give "
                       + "each key once")
        // A control character: the reader's place, as a line and column, also after Windows line ends.
        let control = error("model:\r\n  heads: 2\r\n  kind: \u{01}x\r\n")
        XCTAssertTrue(control.hasPrefix("bad.yaml: not valid YAML: line 3, column 9: "), control)
        let unclosed = error("model: {kind: encoder-decoder\ndata: {target_length: 8}\n")
        XCTAssertTrue(unclosed.hasPrefix("bad.yaml: not valid YAML: line "), unclosed)
        XCTAssertFalse(unclosed.contains("\n"), unclosed)
        let deep = error("model: " + String(repeating: "[", count: 2000) + "\n")
        XCTAssertTrue(deep.hasPrefix("bad.yaml: not valid YAML: line 1, column ") && deep.hasSuffix("nested too deeply (a run config holds "
                                                                                              + "sections of keys)"), deep)
        let tab = error("model:\n\tkind: decoder-only\n")
        XCTAssertTrue(tab.hasPrefix("bad.yaml: not valid YAML: line 2, column 1: "), tab)
        XCTAssertFalse(tab.contains("\n"), tab)
    }

    /// A value out of range is blamed on its own key, whichever key it is.
    func testEveryOutOfRangeValueNamesItsKey() {
        let bad = ["optimizer.lr": "0", "optimizer.beta1": "1", "optimizer.beta2": "-0.5", "optimizer.eps": "0", "optimizer.weight_decay": "-1",
                   "schedule.factor": "0", "schedule.warmup_steps": "-1", "schedule.min_lr": "1", "eval.every": "-1",
                   "eval.max_batches": "-2", "eval.decode_samples": "-1", "checkpoint.every": "-1", "checkpoint.keep": "0",
                   "training.label_smoothing": "1", "training.clip_norm": "-1", "training.grad_accum": "0", "training.log_every": "0",
                   "training.bucket_mb": "0", "training.collective_timeout": "-1"]
        for (key, value) in bad {
            XCTAssertThrowsError(try RunConfig.parse(smallModelYAML, file: "inline.yaml", overrides: ["\(key)=\(value)"]), key) {
                XCTAssertEqual(($0 as? ConfigError)?.key, key, "\(key)=\(value): \($0)")
                XCTAssertEqual(($0 as? ConfigError)?.file, "--set \(key)=\(value)", "the value came from the command line: \($0)")
            }
        }
        // training.length_groups: 1 to max_tokens groups, and only next to max_tokens.
        for (overrides, fragment) in [(["training.max_tokens=64", "training.length_groups=0"], "must be 1 to training.max_tokens (64)"),
                                      (["training.max_tokens=64", "training.length_groups=65"], "got 65"),
                                      (["training.max_tokens=64", "training.length_groups=two"], "length_groups"),
                                      (["training.length_groups=2"], "it needs training.max_tokens")] {
            XCTAssertThrowsError(try RunConfig.parse(smallModelYAML, file: "inline.yaml", overrides: overrides), "\(overrides)") {
                XCTAssertTrue("\($0)".contains("training.length_groups") && "\($0)".contains(fragment), "\(overrides): \($0)")
            }
        }
        XCTAssertThrowsError(try RunConfig.parse(smallModelYAML, file: "inline.yaml", overrides: ["training.max_tokens=64", "training.length_groups=8"])) {
            XCTAssertEqual("\($0)", "--set training.length_groups=8: config key 'training.length_groups': a decoder-only model has windows of "
                           + "one length (data.target_length): length groups have nothing to mix; leave the key out")
        }
        XCTAssertEqual(try RunConfig.parse(smallModelYAML, file: "inline.yaml",
                                           overrides: ["training.max_tokens=64", "training.length_groups=1"]).training.lengthGroups, 1)
        XCTAssertEqual(try RunConfig.parse(smallModelYAML, file: "inline.yaml").training.lengthGroups, 1)
        // Every number that is not an integer refuses infinity and NaN by name (a value a checkpoint's JSON cannot hold).
        for key in ["optimizer.lr", "optimizer.beta1", "optimizer.beta2", "optimizer.eps", "optimizer.weight_decay", "schedule.factor",
                    "schedule.min_lr", "training.label_smoothing", "training.clip_norm", "training.bucket_mb", "training.collective_timeout",
                    "model.dropout"] {
            for value in [".nan", ".inf", "1.0e39"] {
                XCTAssertThrowsError(try RunConfig.parse(smallModelYAML, file: "inline.yaml", overrides: ["\(key)=\(value)"]), "\(key)=\(value)") {
                    XCTAssertTrue(($0 as? ConfigError)?.key == key || ($0 as? ConfigError)?.key == nil && "\($0)".contains(key.split(separator: ".")[1]),
                                  "\(key)=\(value): \($0)")
                }
            }
        }
        XCTAssertThrowsError(try RunConfig.parse(smallModelYAML, file: "inline.yaml", overrides: ["data.directory=r\u{FFFD}v"])) {
            XCTAssertEqual("\($0)", "--set data.directory=r\u{FFFD}v: holds bytes that are not UTF-8 text (shown as \u{FFFD})")
        }
    }
}

/// A valid config small enough for parsing tests.
private let smallModelYAML = """
    model: {kind: decoder-only, vocab_size: 300, d_model: 64, heads: 4, decoder_layers: 1, d_ff: 64, activation: gelu,
            norm: pre, positions: learned, max_length: 16}
    data: {target_length: 16}
    training: {batch_size: 2}
    """

private extension Data {
    /// The encoded config with its `schedule` object replaced by `json` (a config as an older version stored it).
    func replacingSchedule(_ json: String) throws -> Data {
        var object = try XCTUnwrap(try JSONSerialization.jsonObject(with: self) as? [String: Any])
        object["schedule"] = try JSONSerialization.jsonObject(with: Data(json.utf8))
        return try JSONSerialization.data(withJSONObject: object)
    }
}
