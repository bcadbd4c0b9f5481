import Data
import Files
import Foundation
import HDF5
import Transformer

/// Where a run is, besides its tensors: enough to continue exactly.
public struct TrainingState: Equatable, Sendable {
    /// Updates taken.
    public var step: Int
    /// The sampler's position (independent of world size).
    public var position: SamplerPosition
    /// Seeds the next step's dropout masks.
    public var dropoutSeed: UInt64

    public init(step: Int, position: SamplerPosition, dropoutSeed: UInt64) {
        self.step = step
        self.position = position
        self.dropoutSeed = dropoutSeed
    }
}

/// A checkpoint that cannot be written or used, naming the file and, where it applies, the tensor or key.
public struct CheckpointError: Error, CustomStringConvertible, Sendable {
    public let file: String
    public let message: String
    public var description: String { "checkpoint \(file): \(message)" }
}

/// Checkpoints (DESIGN.md): `/params/<name>`, `/optimizer/exp_avg/<name>`, `/optimizer/exp_avg_sq/<name>`, each
/// with a Fletcher-32 checksum, and root attributes for the format, step, sampler position, dropout seed, the run
/// config (JSON) and the tokenizer. Written under a temporary name, synced, renamed; `latest` is replaced only
/// after that, and atomically, so a crash at any point leaves the previous `latest` loadable.
public enum Checkpoint {
    public static let format = "swiftddp-checkpoint"
    public static let version: Int64 = 1
    public static let latestName = "latest"

    static func fileName(step: Int) -> String { String(format: "checkpoint-%08d.h5", step) }

    /// What the run looked like when the checkpoint was written, so a resume can check it sees the same samples.
    public struct Provenance: Sendable {
        /// Sequences per update over all ranks and micro-steps (the unit of the sampler position).
        public var globalBatch: Int
        public var worldSize: Int
        /// The training data's fingerprint (shard names, sample and token counts, tokenizer).
        public var dataFingerprint: String

        public init(globalBatch: Int, worldSize: Int, dataFingerprint: String) {
            self.globalBatch = globalBatch
            self.worldSize = worldSize
            self.dataFingerprint = dataFingerprint
        }
    }

    /// Writes the checkpoint for `state.step` into `directory`, points `latest` at it, and removes all but the
    /// newest `keep` checkpoints. Returns the checkpoint's path.
    @discardableResult
    public static func save(directory: String, model: TransformerModel, optimizer: AdamW, state: TrainingState,
                            config: RunConfig, tokenizer: Tokenizer?, keep: Int, provenance: Provenance? = nil) throws -> String {
        let manager = FileManager.default
        do {
            try manager.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw CheckpointError(file: directory, message: "cannot create the run directory: \(describe(error))")
        }
        let name = fileName(step: state.step)
        let final = (directory as NSString).appendingPathComponent(name)
        do {
            try OutputFile.write(final) { temporary in
                let file = try File.create(temporary)
                try writeContents(file, model: model, optimizer: optimizer, state: state, config: config, tokenizer: tokenizer,
                                  provenance: provenance)
                try file.close()
            }
        } catch {
            throw CheckpointError(file: final, message: "writing failed, the previous checkpoint is untouched: \(error)")
        }
        try pointLatest(directory: directory, at: name)
        try prune(directory: directory, keep: max(1, keep), protecting: name)
        return final
    }

    /// The attributes and tensors of a checkpoint (the layout in the type's comment).
    private static func writeContents(_ file: File, model: TransformerModel, optimizer: AdamW, state: TrainingState,
                                      config: RunConfig, tokenizer: Tokenizer?, provenance: Provenance?) throws {
        try file.setAttribute("format", format)
        try file.setAttribute("version", version)
        try file.setAttribute("step", state.step)
        try file.setAttribute("epoch", state.position.epoch)
        try file.setAttribute("batch", state.position.batch)
        try file.setAttribute("dropout_seed", Int64(bitPattern: state.dropoutSeed))
        try file.setAttribute("optimizer_step", optimizer.step)
        try file.setAttribute("config", String(decoding: try JSONEncoder().encode(config), as: UTF8.self))
        if let tokenizer { try file.setAttribute("tokenizer", tokenizer.json) }
        if let provenance {
            try file.setAttribute("global_batch", provenance.globalBatch)
            try file.setAttribute("world_size", provenance.worldSize)
            try file.setAttribute("data_fingerprint", provenance.dataFingerprint)
        }
        for (group, arena) in [("params", model.parameters), ("optimizer/exp_avg", optimizer.firstMoment),
                               ("optimizer/exp_avg_sq", optimizer.secondMoment)] {
            for view in model.layout.views {
                let dataset = try file.createDataset("\(group)/\(view.name)", type: .float32, shape: view.shape, fletcher32: true)
                try dataset.write(UnsafeBufferPointer(arena[view]))
            }
        }
    }

    /// Replaces `latest` atomically (`OutputFile`: a temporary file beside it, synced, renamed over it), so a reader
    /// sees the old or the new name, never a partial one; the checkpoint it names was synced before.
    private static func pointLatest(directory: String, at name: String) throws {
        let latest = (directory as NSString).appendingPathComponent(latestName)
        do {
            try OutputFile.write(latest, data: Foundation.Data((name + "\n").utf8))
        } catch {
            throw CheckpointError(file: latest, message: "cannot update latest (it still names the previous checkpoint): \(describe(error))")
        }
    }

    private static func prune(directory: String, keep: Int, protecting name: String) throws {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasPrefix("checkpoint-") && $0.hasSuffix(".h5") }.sorted()
        for old in names.dropLast(keep) where old != name {
            try? FileManager.default.removeItem(atPath: (directory as NSString).appendingPathComponent(old))
        }
    }

    /// The checkpoint `latest` names in a run directory, or nil when there is none yet.
    public static func latest(in directory: String) throws -> String? {
        let latest = (directory as NSString).appendingPathComponent(latestName)
        guard let text = try? String(contentsOfFile: latest, encoding: .utf8) else { return nil }
        let name = text.trimmingCharacters(in: .whitespacesAndNewlines)
        let path = (directory as NSString).appendingPathComponent(name)
        guard !name.isEmpty, FileManager.default.fileExists(atPath: path) else {
            throw CheckpointError(file: latest, message: "names '\(name)', which does not exist")
        }
        return path
    }

    /// What a checkpoint says about its run, before its tensors are loaded.
    public struct Header: Sendable {
        public let state: TrainingState
        public let optimizerStep: Int
        public let config: RunConfig
        public let tokenizer: Tokenizer?
        /// Recorded since the resume checks (nil in older checkpoints).
        public let provenance: Provenance?
    }

    public static func readHeader(_ path: String) throws -> Header {
        let file: File
        do { file = try File.open(path) } catch {
            throw CheckpointError(file: path, message: "cannot be opened (missing or truncated?): \(error)")
        }
        func attribute<T>(_ name: String, _ read: (String) throws -> T) throws -> T {
            do { return try read(name) } catch { throw CheckpointError(file: path, message: "attribute '\(name)': \(error)") }
        }
        let fileFormat = try attribute("format", file.stringAttribute)
        guard fileFormat == format else { throw CheckpointError(file: path, message: "format is '\(fileFormat)', expected '\(format)'") }
        let fileVersion = try attribute("version", file.int64Attribute)
        guard fileVersion == version else {
            throw CheckpointError(file: path, message: "format version \(fileVersion) is not supported (this build reads \(version))")
        }
        let configJSON = try attribute("config", file.stringAttribute)
        let config: RunConfig
        do { config = try JSONDecoder().decode(RunConfig.self, from: Foundation.Data(configJSON.utf8)) } catch {
            throw CheckpointError(file: path, message: "attribute 'config' is not a run config: \(describe(error))")
        }
        var tokenizer: Tokenizer?
        if try file.hasAttribute("tokenizer") {
            do { tokenizer = try Tokenizer(json: try file.stringAttribute("tokenizer")) } catch {
                throw CheckpointError(file: path, message: "attribute 'tokenizer': \(error)")
            }
        }
        let state = TrainingState(step: Int(try attribute("step", file.int64Attribute)),
                                  position: SamplerPosition(epoch: Int(try attribute("epoch", file.int64Attribute)),
                                                            batch: Int(try attribute("batch", file.int64Attribute))),
                                  dropoutSeed: UInt64(bitPattern: try attribute("dropout_seed", file.int64Attribute)))
        var provenance: Provenance?
        if try file.hasAttribute("global_batch") {
            provenance = Provenance(globalBatch: Int(try attribute("global_batch", file.int64Attribute)),
                                    worldSize: Int(try attribute("world_size", file.int64Attribute)),
                                    dataFingerprint: try attribute("data_fingerprint", file.stringAttribute))
        }
        return Header(state: state, optimizerStep: Int(try attribute("optimizer_step", file.int64Attribute)), config: config,
                      tokenizer: tokenizer, provenance: provenance)
    }

    /// Loads parameters (and, given an optimizer, its moments and step) into a model built for `header.config`'s
    /// model; a missing tensor, a shape that does not fit, or a checksum failure is an error naming the tensor.
    @discardableResult
    public static func load(_ path: String, into model: TransformerModel, optimizer: AdamW? = nil) throws -> Header {
        let header = try readHeader(path)
        guard header.config.model == model.config else {
            throw CheckpointError(file: path, message: "was written for another model (\(differences(header.config.model, model.config)))")
        }
        let file = try File.open(path)
        var groups = [("params", model.parameters)]
        if let optimizer {
            groups += [("optimizer/exp_avg", optimizer.firstMoment), ("optimizer/exp_avg_sq", optimizer.secondMoment)]
        }
        for (group, arena) in groups {
            for view in model.layout.views {
                let name = "/\(group)/\(view.name)"
                guard (try? file.contains(name)) == true else { throw CheckpointError(file: path, message: "missing tensor \(name)") }
                do {
                    let dataset = try file.openDataset(name)
                    guard dataset.shape == view.shape else {
                        throw CheckpointError(file: path, message: "tensor \(name) has shape \(dataset.shape), the model expects \(view.shape)")
                    }
                    try dataset.read(into: arena[view])
                } catch let error as CheckpointError {
                    throw error
                } catch {
                    throw CheckpointError(file: path, message: "tensor \(name) cannot be read (corrupted?): \(error)")
                }
            }
        }
        optimizer?.restore(step: header.optimizerStep)
        return header
    }

    /// Checks that resuming `path` with `config` sees the samples the run would have seen: the seed, the global batch
    /// (batch_size x ranks x grad_accum, the sampler position's unit), the training data and, for a language model,
    /// the context length must be what the checkpoint was written with; the model must be the same (checked when
    /// loading). Every other difference (steps, learning rate, schedule, evaluation, checkpointing, logging, threads,
    /// timeout, compression, ranks at the same global batch) is allowed and logged, key by key.
    public static func checkResume(_ path: String, with config: RunConfig, globalBatch: Int, dataFingerprint: String,
                                   log: (String) -> Void) throws {
        let header = try readHeader(path)
        let changes = RunConfig.differences(header.config, config)
        for change in changes { log("resume: \(change.key): \(change.stored) in the checkpoint, \(change.current) now") }
        var refused: [String] = []
        if header.config.training.seed != config.training.seed { refused.append("training.seed (it orders every epoch's samples)") }
        if config.model.kind == .decoderOnly && header.config.data.targetLength != config.data.targetLength {
            refused.append("data.target_length (a language model's samples are windows of that length)")
        }
        if let provenance = header.provenance {
            if provenance.globalBatch != globalBatch {
                refused.append("the global batch: \(provenance.globalBatch) sequences per update (training.batch_size x ranks x grad_accum) "
                               + "in the checkpoint, \(globalBatch) now; the sampler position counts global batches")
            }
            if provenance.dataFingerprint != dataFingerprint {
                refused.append("the training data (\(config.data.directory) holds other shards, samples or tokenizer than the checkpoint's run)")
            }
        } else {
            log("resume: \(path) does not record its global batch and data (written by an earlier version): check that "
                + "training.batch_size x ranks x grad_accum and the data are what they were")
        }
        guard refused.isEmpty else {
            throw CheckpointError(file: path, message: "cannot resume: changed \(refused.joined(separator: "; ")). These decide which "
                                  + "samples each step sees; change them back, or start a new run in another --run-dir")
        }
    }

    /// The model-config keys on which two configs differ, for error messages.
    static func differences(_ stored: ModelConfig, _ expected: ModelConfig) -> String {
        guard let a = try? JSONSerialization.jsonObject(with: JSONEncoder().encode(stored)) as? [String: Any],
              let b = try? JSONSerialization.jsonObject(with: JSONEncoder().encode(expected)) as? [String: Any] else { return "configs differ" }
        let keys = Set(a.keys).union(b.keys).sorted().filter { "\(a[$0] ?? "none")" != "\(b[$0] ?? "none")" }
        return keys.map { "model.\($0): checkpoint \(a[$0] ?? "none"), expected \(b[$0] ?? "none")" }.joined(separator: "; ")
    }
}

extension Checkpoint {
    /// A checkpoint file as given, or the one a run directory's `latest` names.
    public static func resolve(_ path: String) throws -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw CheckpointError(file: path, message: "does not exist")
        }
        guard isDirectory.boolValue else { return path }
        guard let latest = try latest(in: path) else {
            throw CheckpointError(file: path, message: "is a directory without a 'latest' checkpoint (not a run directory, or no checkpoint written yet)")
        }
        return latest
    }

    /// The checkpoint's model, built for batches of up to `maxBatch` rows at the run's lengths, with its parameters.
    public static func loadModel(_ path: String, maxBatch: Int) throws -> (model: TransformerModel, header: Header) {
        let header = try readHeader(path)
        let run = header.config
        let model: TransformerModel
        do {
            model = try TransformerModel(config: run.model, maxBatch: maxBatch,
                                         maxSourceLength: run.model.kind == .encoderDecoder ? run.data.sourceLength : 0,
                                         maxTargetLength: run.data.targetLength)
        } catch {
            throw CheckpointError(file: path, message: "its config does not build a model: \(error)")
        }
        try load(path, into: model)
        model.training = false
        return (model, header)
    }
}
