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

    /// A state with its parts.
    public init(step: Int, position: SamplerPosition, dropoutSeed: UInt64) {
        self.step = step
        self.position = position
        self.dropoutSeed = dropoutSeed
    }
}

/// A checkpoint that cannot be written or used, naming the file and, where it applies, the tensor or key.
public struct CheckpointError: Error, CustomStringConvertible, Sendable {
    /// The checkpoint file, run directory or `latest` file at fault.
    public let file: String
    /// What is wrong, as a clause that follows the file's name.
    public let message: String
    /// "checkpoint file: message".
    public var description: String { "checkpoint \(file): \(message)" }
    /// When `latest` named a checkpoint that does not exist: the text `latest` held (a rotation may be in flight).
    var latestNamingMissing: String? = nil
}

/// Checkpoints (README.md, "Checkpoints"): `/params/<name>`, `/optimizer/exp_avg/<name>`, `/optimizer/exp_avg_sq/<name>`, each
/// with a Fletcher-32 checksum, and root attributes for the format, step, sampler position, dropout seed, the run
/// config (JSON) and the tokenizer. Written under a temporary name, synced, renamed; `latest` is replaced only
/// after that, and atomically, so a crash at any point leaves the previous `latest` loadable.
public enum Checkpoint {
    /// The root "format" attribute of every checkpoint; a file with another value is refused.
    public static let format = "swiftddp-checkpoint"
    /// The root "version" attribute of the checkpoints this build writes and reads; other versions are refused.
    public static let version: Int64 = 1
    /// The file in a run directory that holds the name of the newest complete checkpoint, followed by a newline.
    public static let latestName = "latest"

    static func fileName(step: Int) -> String { String(format: "checkpoint-%08d.h5", step) }

    /// What the run looked like when the checkpoint was written, so a resume can check it sees the same samples.
    public struct Provenance: Sendable {
        /// Sequences per update over all ranks and micro-steps (the unit of the sampler position); 0 for token-budget
        /// batches (`training.max_tokens`), which are the same on any number of ranks.
        public var globalBatch: Int
        /// Ranks that trained the run when the checkpoint was written (root attribute "world_size").
        public var worldSize: Int
        /// The training data's fingerprint (shard names, sample and token counts, tokenizer).
        public var dataFingerprint: String
        /// The training data's content: shard names, every shard's `Shard.digest`, tokenizer (root attribute
        /// "data_digest"; nil in checkpoints written before it, whose resume compares only `dataFingerprint`).
        public var dataDigest: String?
        /// The validation data's content (root attribute "valid_digest", `DataSplit.contentDigest` in hexadecimal; nil
        /// without a validation split, or in checkpoints written before it): a resume on other validation data says so.
        public var validDigest: String?
        /// The epoch order of the build that wrote it (`TokenBudgetSampler.orderVersion`, root attribute
        /// "sampler_version"; 1 when not stored, as before the attribute).
        public var samplerVersion: Int

        /// A provenance with its parts; the sampler version this build's.
        public init(globalBatch: Int, worldSize: Int, dataFingerprint: String, dataDigest: String?, validDigest: String? = nil,
                    samplerVersion: Int = TokenBudgetSampler.orderVersion) {
            self.globalBatch = globalBatch
            self.worldSize = worldSize
            self.dataFingerprint = dataFingerprint
            self.dataDigest = dataDigest
            self.validDigest = validDigest
            self.samplerVersion = samplerVersion
        }
    }

    /// Writes the checkpoint for `state.step` into `directory` (a link under its name is replaced, not written
    /// through), points `latest` at it, and removes all but the newest `keep` checkpoints, leaving `abandoned` alone
    /// (the later checkpoints of an attempt a resume from an earlier one replaced; stored in the checkpoint, so a
    /// later resume leaves them alone too). Returns the checkpoint's path.
    @discardableResult
    public static func save(directory: String, model: TransformerModel, optimizer: AdamW, state: TrainingState,
                            config: RunConfig, tokenizer: Tokenizer?, keep: Int, provenance: Provenance? = nil,
                            abandoned: Set<String> = []) throws -> String {
        let manager = FileManager.default
        do {
            try manager.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw CheckpointError(file: directory, message: "cannot create the run directory: \(describe(error))")
        }
        let name = fileName(step: state.step)
        let final = Paths.join(directory, name)
        let earlier = (try? latest(in: directory)) ?? nil
        let kept = earlier.map { "the run's latest checkpoint, \($0), is untouched" } ?? "no checkpoint of this run was written before"
        // A diverged update (a learning rate far too large, say) can leave values no resume can go on from, with a
        // finite loss and gradient norm at this step: they are not saved, and `latest` and the rotation keep the
        // checkpoints before.
        if let unusable = unusableState(model, optimizer: optimizer) {
            throw CheckpointError(file: final, message: "is not written: after step \(state.step) the model holds \(unusable), so training "
                                  + "diverged (a learning rate far too large?); \(kept)")
        }
        // The run's checkpoint names are its own: a link placed under one is replaced, never written through (which
        // would overwrite the file it names, anywhere). Removing a link leaves its target as it was.
        if (try? manager.destinationOfSymbolicLink(atPath: final)) != nil {
            do { try manager.removeItem(atPath: final) } catch {
                throw CheckpointError(file: final, message: "is a link where this run writes its checkpoint, and cannot be removed: \(describe(error))")
            }
        }
        do {
            try OutputFile.write(final) { temporary in
                let file = try File.create(temporary)
                try writeContents(file, model: model, optimizer: optimizer, state: state, config: config, tokenizer: tokenizer,
                                  provenance: provenance, abandoned: abandoned.subtracting([name]).sorted())
                try file.close()
            }
        } catch {
            throw CheckpointError(file: final, message: "writing failed (\(describe(error))); \(kept)")
        }
        try pointLatest(directory: directory, at: name)
        try prune(directory: directory, keep: max(1, keep), protecting: name, abandoned: abandoned.subtracting([name]))
        return final
    }

    /// Writes one checkpoint file at `path` (no run directory, no `latest`): what `ddp import` makes. Through
    /// `OutputFile`: never over a directory or one of `inputs`, complete or not at all.
    public static func write(to path: String, model: TransformerModel, optimizer: AdamW, state: TrainingState, config: RunConfig,
                             tokenizer: Tokenizer?, inputs: [String] = []) throws {
        try OutputFile.write(path, inputs: inputs) { temporary in
            let file = try File.create(temporary)
            try writeContents(file, model: model, optimizer: optimizer, state: state, config: config, tokenizer: tokenizer, provenance: nil)
            try file.close()
        }
    }

    /// The attributes and tensors of a checkpoint (the layout in the type's comment).
    private static func writeContents(_ file: File, model: TransformerModel, optimizer: AdamW, state: TrainingState,
                                      config: RunConfig, tokenizer: Tokenizer?, provenance: Provenance?, abandoned: [String] = []) throws {
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
            if let digest = provenance.dataDigest { try file.setAttribute("data_digest", digest) }
            if let digest = provenance.validDigest { try file.setAttribute("valid_digest", digest) }
            try file.setAttribute("sampler_version", provenance.samplerVersion)
        }
        if !abandoned.isEmpty { try file.setAttribute("abandoned_checkpoints", abandoned.joined(separator: "\n")) }
        try file.sealAttributes()
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
        let latest = Paths.join(directory, latestName)
        do {
            try OutputFile.write(latest, data: Foundation.Data((name + "\n").utf8))
        } catch {
            throw CheckpointError(file: latest, message: "cannot update latest (it still names the previous checkpoint): \(describe(error))")
        }
    }

    /// Removes all but the newest `keep` checkpoints (by step, never `name`); files that are not named as checkpoints
    /// are written (`checkpoint-<step>.h5`) are left alone.
    /// The `abandoned` checkpoints take no part: they neither count among the newest nor are removed.
    private static func prune(directory: String, keep: Int, protecting name: String, abandoned: Set<String>) throws {
        let current = checkpointNames(in: directory).filter { !abandoned.contains($0) }
        for old in current.dropLast(keep) where old != name {
            // Only the run's own kind of file: a directory or FIFO under a checkpoint's name is never removed.
            let type = Paths.entryType(Paths.join(directory, old))
            guard type == .typeRegular || type == .typeSymbolicLink else { continue }
            try? FileManager.default.removeItem(atPath: Paths.join(directory, old))
        }
    }

    /// The step of a checkpoint's file name (`checkpoint-<step>.h5`), or nil for any other name.
    static func step(ofCheckpointNamed name: String) -> Int? {
        guard name.hasPrefix("checkpoint-") && name.hasSuffix(".h5") else { return nil }
        let digits = name.dropFirst("checkpoint-".count).dropLast(".h5".count)
        // Only what `fileName` writes: 8 digits, or more without a leading zero ("checkpoint-1.h5" is someone else's).
        guard digits.allSatisfy({ $0.isASCII && $0.isNumber }), digits.count == 8 || (digits.count > 8 && digits.first != "0"),
              let step = Int(digits), fileName(step: step) == name else { return nil }
        return step
    }

    /// The checkpoint files of a run directory, oldest step first.
    static func checkpointNames(in directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .compactMap { name in step(ofCheckpointNamed: name).map { (name: name, step: $0) } }.sorted { $0.step < $1.step }.map(\.name)
    }

    /// For an error about a run directory's latest checkpoint: the others it holds, newest first, and how to resume
    /// from one (`forTraining`), or to read one (the other commands: name it) ("" when there are none).
    public static func otherCheckpoints(in directory: String, besides path: String, forTraining: Bool) -> String {
        let others = checkpointNames(in: directory).reversed().filter { Paths.join(directory, $0) != path }
        guard let newest = others.first else { return "" }
        let held = "; \(directory) also holds \(others.prefix(3).joined(separator: ", "))\(others.count > 3 ? ", ..." : "")"
        return held + (forTraining ? ": to go on from one, write its name (\(newest), say) into \(Paths.join(directory, latestName))"
                                   : ": to read one, name it instead (\(Paths.join(directory, newest)), say)")
    }

    /// The header of `path`, the checkpoint a run in `runDirectory` resumes from; an error (a damaged file) also names
    /// the directory's other checkpoints and how to go on from one.
    public static func readHeader(toResume path: String, in runDirectory: String) throws -> Header {
        do { return try readHeader(path) } catch let error as CheckpointError {
            throw CheckpointError(file: error.file, message: error.message + otherCheckpoints(in: runDirectory, besides: path, forTraining: true))
        }
    }

    /// The checkpoint `latest` names in a run directory, or nil when there is none yet. It must name a checkpoint file
    /// of the directory itself (`checkpoint-<step>.h5`) that exists. A run that is writing checkpoints may remove the
    /// one named just after `latest` was read (`checkpoint.keep`): then `latest` is read again, as long as it moves on.
    /// `forTraining`: an error then says how `ddp train` goes on (`--overwrite`); for the commands that read a
    /// checkpoint, that it holds none to read.
    public static func latest(in directory: String, forTraining: Bool = false) throws -> String? {
        var attempt = 0
        while true {
            do { return try latestOnce(in: directory, forTraining: forTraining) } catch let error as CheckpointError where error.latestNamingMissing != nil && attempt < 20 {
                attempt += 1
                Thread.sleep(forTimeInterval: 0.02)
                // (The same name again, and still no file: that is what latest says, not a rotation in flight.)
                if (try? TextFile.read(Paths.join(directory, latestName), largest: 4096)) == error.latestNamingMissing { throw error }
            }
        }
    }

    private static func latestOnce(in directory: String, forTraining: Bool) throws -> String? {
        let latest = Paths.join(directory, latestName)
        guard FileManager.default.fileExists(atPath: latest) else { return nil }
        // A regular file of a few bytes: a FIFO or a device named latest cannot block the read, a huge file fill memory.
        guard let text = try? TextFile.read(latest, largest: 4096) else {
            throw CheckpointError(file: latest, message: "is not a text file naming a checkpoint (a directory, a FIFO or device, over 4 KiB, or bytes that are not UTF-8)"
                                  + otherCheckpoints(in: directory, besides: latest, forTraining: forTraining))
        }
        let name = text.trimmingCharacters(in: .whitespacesAndNewlines)
        let path = Paths.join(directory, name)
        guard step(ofCheckpointNamed: name) != nil, !name.contains("/") else {
            throw CheckpointError(file: latest, message: "names '\(name.prefix(200))', which is not a checkpoint file name of the run "
                                  + "directory (checkpoint-<step>.h5)" + otherCheckpoints(in: directory, besides: path, forTraining: forTraining))
        }
        guard FileManager.default.fileExists(atPath: path) else {
            // No checkpoint left (a killed --overwrite removed them before latest): how to get out, said.
            let others = otherCheckpoints(in: directory, besides: path, forTraining: forTraining)
            let none = forTraining ? "; \(directory) holds no other checkpoint to go on from: --overwrite starts a new run there "
                + "(it removes the earlier run's files: move any you want to keep elsewhere first)" : "; \(directory) holds no other checkpoint to read"
            var error = CheckpointError(file: latest, message: "names '\(name)', which \(Paths.whyMissing(path))" + (others.isEmpty ? none : others))
            error.latestNamingMissing = text
            throw error
        }
        return path
    }

    /// What a checkpoint says about its run, before its tensors are loaded.
    public struct Header: Sendable {
        /// The step, sampler position and dropout seed to continue from.
        public let state: TrainingState
        /// AdamW's update count (torch's `step`, the bias corrections' exponent), root attribute "optimizer_step".
        public let optimizerStep: Int
        /// The run config the checkpoint was written with (root attribute "config", JSON), validated.
        public let config: RunConfig
        /// The tokenizer of the training data (root attribute "tokenizer"), or nil when none was stored.
        public let tokenizer: Tokenizer?
        /// Recorded since the resume checks (nil in older checkpoints).
        public let provenance: Provenance?
        /// Checkpoints of the run directory that rotation leaves alone (`save`'s `abandoned`, root attribute
        /// "abandoned_checkpoints", one name per line): kept across resumes. Empty when none were stored.
        public var abandoned: [String] = []
    }

    /// Opens a checkpoint to read it; a failure is a `CheckpointError` naming the file. One that is gone while its
    /// run's `latest` names a later step says it was removed while it was read (`checkpoint.keep` rotates the oldest
    /// away as new ones come; `ddp eval --checkpoint RUN_DIR` during training), naming the checkpoint `latest` names now.
    static func openForReading(_ path: String) throws -> File {
        // (A checkpoint `resolve` pinned is read from the file found then, whatever has become of its name.)
        if let file = pinned[path] { return file }
        do { return try File.open(path) } catch {
            if error.kind == .notRegularFile { throw CheckpointError(file: path, message: error.message) }
            if !FileManager.default.fileExists(atPath: path), let now = try? latest(in: Paths.parent(path)),
               let goneStep = Self.step(ofCheckpointNamed: Paths.lastComponent(path)),
               let nowStep = Self.step(ofCheckpointNamed: Paths.lastComponent(now)), goneStep < nowStep {
                throw CheckpointError(file: path, message: "was removed while it was read (its run keeps only the newest checkpoints, "
                                      + "checkpoint.keep); the run's latest is now \(now): run the command again")
            }
            throw CheckpointError(file: path, message: "cannot be opened (missing or truncated?): \(error.message)")
        }
    }

    /// Checkpoints a command settled on (`pin`), held open until the process ends.
    nonisolated(unsafe) private static var pinned: [String: File] = [:]

    /// Holds `file`, the checkpoint at `path`, open for this process's later reads of `path` (`readHeader`, `load`,
    /// `loadModel`): they read that file even after its name was removed or given to another (a run that keeps only
    /// its newest checkpoints removes them while `ddp eval` or `ddp generate` reads one; each read opening the name
    /// again found it gone). For commands, on their main thread.
    public static func pin(_ file: File, as path: String) {
        pinned[path] = file
    }

    /// The file `pin` holds for `path`, if any.
    public static func pinnedFile(_ path: String) -> File? { pinned[path] }

    /// Reads and checks a checkpoint's root attributes without touching its tensors: the sealed attributes, format and
    /// version, the stored config (decoded and validated), the tokenizer, and counts within range (step, epoch and
    /// batch 0 to Int32.max). Throws `CheckpointError` naming the file and attribute when one is missing, damaged or
    /// out of range.
    public static func readHeader(_ path: String) throws -> Header {
        let file = try openForReading(path)
        func attribute<T>(_ name: String, _ read: (String) throws(HDF5Error) -> T) throws -> T {
            do { return try read(name) } catch { throw CheckpointError(file: path, message: "attribute '\(name)': \(error.message)") }
        }
        func has(_ name: String) throws -> Bool {
            do { return try file.hasAttribute(name) } catch {
                throw CheckpointError(file: path, message: "attribute '\(name)' cannot be looked up: \(error.message)")
            }
        }
        /// A stored count that must be in `range` (a step, an epoch, a batch size): never a value that traps later.
        func count(_ name: String, in range: ClosedRange<Int64> = 0...Int64(Int32.max)) throws -> Int {
            let value = try attribute(name, file.int64Attribute)
            guard range.contains(value) else {
                throw CheckpointError(file: path, message: "attribute '\(name)' is \(value); expected \(range.lowerBound) to \(range.upperBound)")
            }
            return Int(value)
        }
        do { try file.verifySealedAttributes() } catch { throw CheckpointError(file: path, message: error.message) }
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
        do { try config.validate(file: path) } catch let error as ConfigError {
            throw CheckpointError(file: path, message: "its stored config cannot be used: \(error.key.map { "key '\($0)': " } ?? "")\(error.message)")
        }
        var tokenizer: Tokenizer?
        if try has("tokenizer") {
            do { tokenizer = try Tokenizer(json: try file.stringAttribute("tokenizer")) } catch {
                throw CheckpointError(file: path, message: "attribute 'tokenizer': \(error)")
            }
        }
        if let tokenizer {
            // Every id the tokenizer (and, encoder-only, the mask token after it) produces must index the embedding.
            let needed = tokenizer.vocabularySize + (config.model.kind == .encoderOnly ? 1 : 0)
            guard needed <= config.model.vocabSize else {
                throw CheckpointError(file: path, message: "its tokenizer needs \(needed) token ids (the mask token included for an "
                                      + "encoder-only model), more than its model.vocab_size \(config.model.vocabSize)")
            }
        }
        let state = TrainingState(step: try count("step"),
                                  position: SamplerPosition(epoch: try count("epoch"), batch: try count("batch")),
                                  dropoutSeed: UInt64(bitPattern: try attribute("dropout_seed", file.int64Attribute)))
        var provenance: Provenance?
        if try has("global_batch") {
            provenance = Provenance(globalBatch: try count("global_batch", in: 0...Int64(Int32.max)),
                                    worldSize: try count("world_size", in: 1...Int64(1 << 24)),
                                    dataFingerprint: try attribute("data_fingerprint", file.stringAttribute),
                                    dataDigest: try has("data_digest") ? try attribute("data_digest", file.stringAttribute) : nil,
                                    validDigest: try has("valid_digest") ? try attribute("valid_digest", file.stringAttribute) : nil,
                                    samplerVersion: try has("sampler_version") ? try count("sampler_version", in: 1...1_000_000) : 1)
        }
        var header = Header(state: state, optimizerStep: try count("optimizer_step"), config: config, tokenizer: tokenizer,
                            provenance: provenance)
        if try has("abandoned_checkpoints") {
            // Only names of checkpoint files (no path), and a bounded number: the list only ever spares files from rotation.
            let text = try attribute("abandoned_checkpoints", file.stringAttribute)
            header.abandoned = Array(text.split(separator: "\n").map(String.init)
                .filter { step(ofCheckpointNamed: $0) != nil && !$0.contains("/") }.prefix(100_000))
        }
        return header
    }

    /// Loads parameters (and, given an optimizer, its moments and step) into a model built for `header.config`'s
    /// model (`dropout` aside); a missing tensor, a shape that does not fit, or a checksum failure is an error naming
    /// the tensor. With `parametersOnly` (`ddp train --init`) the optimizer is not read.
    @discardableResult
    public static func load(_ path: String, into model: TransformerModel, optimizer: AdamW? = nil, parametersOnly: Bool = false) throws -> Header {
        let header = try readHeader(path)
        try requireModel(model.config, of: header, path: path, parametersOnly: parametersOnly)
        let file = try openForReading(path)
        var groups = [("params", model.parameters)]
        if let optimizer {
            groups += [("optimizer/exp_avg", optimizer.firstMoment), ("optimizer/exp_avg_sq", optimizer.secondMoment)]
        }
        for (group, arena) in groups {
            let datasets = try tensors(in: file, group: group, layout: model.layout, path: path)
            for (view, dataset) in zip(model.layout.views, datasets) {
                do { try dataset.read(into: arena[view]) } catch {
                    throw CheckpointError(file: path, message: "tensor /\(group)/\(view.name) cannot be read (damaged?): \(error.message)")
                }
            }
        }
        optimizer?.restore(step: header.optimizerStep)
        return header
    }

    /// The datasets of `group` for every view of `layout`, each checked before anything is allocated or read for it:
    /// present, of the view's shape and float32, and really stored in the file (`Dataset.requireStored`). A member of
    /// the group that is no tensor of the layout is refused by name, as `torch.nn.Module.load_state_dict` (strict)
    /// refuses unexpected keys: a tensor the model would silently leave unused (an edited or mixed-up file).
    static func tensors(in file: File, group: String, layout: ParameterLayout, path: String) throws -> [Dataset] {
        do {
            if try file.contains(group) {
                let unexpected = try file.openGroup(group).members().map(\.name).filter { layout.view($0) == nil }
                if let first = unexpected.first {
                    throw CheckpointError(file: path, message: "holds /\(group)/\(first.prefix(200))"
                                          + (unexpected.count > 1 ? " and \(unexpected.count - 1) more member(s) of /\(group)" : "")
                                          + ", which the model (its config in the file) has no parameter for; an edited or mixed-up file?")
                }
            }
        } catch let error as HDF5Error {
            throw CheckpointError(file: path, message: "group /\(group): \(error.message)")
        }
        return try layout.views.map { view in
            let name = "/\(group)/\(view.name)"
            let dataset: Dataset
            do {
                guard try file.contains(name) else { throw CheckpointError(file: path, message: "missing tensor \(name)") }
                dataset = try file.openDataset(name)
            } catch let error as HDF5Error {
                throw CheckpointError(file: path, message: "tensor \(name): \(error.message)")
            }
            guard dataset.shape == view.shape else {
                throw CheckpointError(file: path, message: "tensor \(name) has shape \(dataset.shape), the model expects \(view.shape)")
            }
            guard dataset.elementType == .float32 else {
                throw CheckpointError(file: path, message: "tensor \(name) stores \(dataset.typeDescription), expected float32")
            }
            do { try dataset.requireStored() } catch let error as HDF5Error {
                throw CheckpointError(file: path, message: "tensor \(name) \(error.message)")
            }
            return dataset
        }
    }

    /// The names of parameter tensors holding values that are not finite (NaN or infinity), with how many.
    public static func nonFiniteTensors(_ model: TransformerModel) -> [(name: String, count: Int)] {
        model.layout.views.compactMap { view in
            let count = model.parameters[view].reduce(0) { $0 + ($1.isFinite ? 0 : 1) }
            return count > 0 ? (view.name, count) : nil
        }
    }

    /// The AdamW moments that no update can have made, with how many values: a first moment (`exp_avg`) that is not
    /// finite, a second moment (`exp_avg_sq`, a running mean of squares) that is not finite or is negative. Named
    /// "exp_avg of NAME" and "exp_avg_sq of NAME", as torch's optimizer state names them.
    public static func impossibleMoments(_ optimizer: AdamW, layout: ParameterLayout) -> [(name: String, count: Int)] {
        layout.views.flatMap { view -> [(name: String, count: Int)] in
            let first = optimizer.firstMoment[view].reduce(0) { $0 + ($1.isFinite ? 0 : 1) }
            let second = optimizer.secondMoment[view].reduce(0) { $0 + ($1.isFinite && $1 >= 0 ? 0 : 1) }
            return (first > 0 ? [("exp_avg of \(view.name)", first)] : []) + (second > 0 ? [("exp_avg_sq of \(view.name)", second)] : [])
        }
    }

    /// What keeps a model and its optimizer from being a checkpoint to go on from, as a clause listing the tensors
    /// (`nonFiniteTensors`, then `impossibleMoments`), or nil when nothing does.
    public static func unusableState(_ model: TransformerModel, optimizer: AdamW) -> String? {
        let parameters = nonFiniteTensors(model), moments = impossibleMoments(optimizer, layout: model.layout)
        // The first few tensors by name, and how many more (a diverged model has them all).
        func listed(_ tensors: [(name: String, count: Int)]) -> String {
            tensors.prefix(4).map { "\($0.name) (\($0.count))" }.joined(separator: ", ")
                + (tensors.count > 4 ? " and \(tensors.count - 4) more tensors" : "")
        }
        var parts: [String] = []
        if !parameters.isEmpty { parts.append("parameters that are not finite (NaN or infinity) in " + listed(parameters)) }
        if !moments.isEmpty { parts.append("AdamW moments no update makes (not finite, or a negative exp_avg_sq) in " + listed(moments)) }
        return parts.isEmpty ? nil : parts.joined(separator: "; ")
    }

    /// Checks that resuming `path` with `config` sees the samples the run would have seen: the seed, the global batch
    /// (batch_size x ranks x grad_accum, the sampler position's unit; 0 for token-budget batches, whose budget
    /// `training.max_tokens` and `training.length_groups` must then be the same, on any number of ranks), the training data and, for a language model,
    /// the context length must be what the checkpoint was written with; the model must be the same (checked first,
    /// `requireModel`). Every other difference (steps, learning rate, schedule, evaluation, checkpointing, logging, threads,
    /// timeout, compression, ranks at the same global batch) is allowed and logged, key by key. The sampler position
    /// must lie inside an epoch of `batchesPerEpoch` global batches.
    public static func checkResume(_ path: String, with config: RunConfig, globalBatch: Int, batchesPerEpoch: Int, dataFingerprint: String,
                                   dataDigest: String, validDigest: String?, log: (String) -> Void) throws {
        let header = try readHeader(path)
        // Refused first, before loading (whose errors are the file's damage, and name the run's other checkpoints) and
        // before the changes are listed (another kind's model lists keys that kind has no use for).
        try requireModel(config.model, of: header, path: path, parametersOnly: false)
        let changes = RunConfig.differences(header.config, config)
        for change in changes { log("resume: \(change.key): \(change.stored) in the checkpoint, \(change.current) now") }
        var refused: [String] = []
        if header.config.training.seed != config.training.seed { refused.append("training.seed (it orders every epoch's samples)") }
        if config.model.kind.readsTokenStream && header.config.data.targetLength != config.data.targetLength {
            refused.append("data.target_length (a language model's samples are windows of that length)")
        }
        let (stored, now) = (header.config.training.maxTokens, config.training.maxTokens)
        if stored != now {
            refused.append("training.max_tokens: \(stored.map(String.init) ?? "none (training.batch_size)") in the checkpoint, "
                           + "\(now.map(String.init) ?? "none (training.batch_size)") now; the sampler position counts its batches")
        }
        if header.config.training.lengthGroups != config.training.lengthGroups {
            refused.append("training.length_groups: \(header.config.training.lengthGroups) in the checkpoint, \(config.training.lengthGroups) "
                           + "now; the sampler position counts batches of that many groups")
        }
        if let provenance = header.provenance {
            if stored == now && provenance.globalBatch != globalBatch {
                refused.append("the global batch: \(provenance.globalBatch) sequences per update (training.batch_size x ranks x grad_accum) "
                               + "in the checkpoint, \(globalBatch) now; the sampler position counts global batches")
            }
            // A language model's windows are cut at target_length: that change (refused above) alters the samples
            // too, and is the one reason to give.
            let windowsChanged = config.model.kind.readsTokenStream && header.config.data.targetLength != config.data.targetLength
            if (provenance.dataFingerprint != dataFingerprint || provenance.dataDigest.map { $0 != dataDigest } == true) && !windowsChanged {
                refused.append("the training data (\(config.data.directory) holds other shards, samples or tokenizer than the checkpoint's run, "
                               + "or other tokens in them)")
            }
            // Other validation data changes no step, only what valid_loss measures: allowed, and said.
            if let stored = provenance.validDigest, stored != validDigest {
                log("resume: the validation data differs from the checkpoint's run (" + (validDigest == nil ? "there is none now"
                    : "\(config.data.directory)'s valid split holds other files or tokens") + "): valid_loss before and after step "
                    + "\(header.state.step) measure different data")
            }
            // Length groups were joined by chance before sampler version 2: the rest of an epoch begun in that order
            // would repeat some of its samples and skip others in this build's. A checkpoint at an epoch's start is fine.
            let position = header.state.position
            let version = provenance.samplerVersion
            // (An earlier version differs only in how length groups are joined; a later one's order is unknown here.)
            if position.batch > 0, version > TokenBudgetSampler.orderVersion
                || (version < TokenBudgetSampler.orderVersion && now != nil && config.training.lengthGroups > 1) {
                throw CheckpointError(file: path, message: "cannot resume: it was written inside epoch \(position.epoch) (at batch "
                                      + "\(position.batch)) by " + (version < TokenBudgetSampler.orderVersion
                                        ? "an earlier SwiftDDP, which joined training.length_groups by chance; this one joins one group per stratum"
                                        : "a later SwiftDDP (sampler version \(version); this one's is \(TokenBudgetSampler.orderVersion)), whose epochs are ordered otherwise")
                                      + ", so the rest of that epoch would repeat some samples and skip others. Finish the epoch with "
                                      + "the version that wrote it, or resume from a checkpoint written at an epoch's start")
            }
        } else {
            log("resume: \(path) does not record its global batch and data (written by an earlier version): check that "
                + "training.batch_size x ranks x grad_accum and the data are what they were")
        }
        guard refused.isEmpty else {
            throw CheckpointError(file: path, message: "cannot resume: changed \(refused.joined(separator: "; ")). These decide which "
                                  + "samples each step sees; change them back, or start a new run in another --run-dir")
        }
        let position = header.state.position
        guard position.batch < batchesPerEpoch else {
            throw CheckpointError(file: path, message: "its sampler position, batch \(position.batch) of epoch \(position.epoch), is "
                                  + "past the \(batchesPerEpoch) batches an epoch of this data has (a damaged or crafted file)")
        }
    }

    /// Throws unless the checkpoint at `path` (its `header`) was written for the network `model` describes: `dropout`
    /// is training's, not the network's, so a run may resume or start (--init, `parametersOnly`) with another rate.
    /// The error names the differing keys; it is a refusal, not damage.
    static func requireModel(_ model: ModelConfig, of header: Header, path: String, parametersOnly: Bool) throws {
        guard let differences = architectureDifferences(header.config.model, model) else { return }
        throw CheckpointError(file: path, message: parametersOnly ? "holds another model than the run's (\(differences))"
                              : "was written for another model (\(differences)); a run continues its own model: change the config "
                                + "back, or start a new run in another --run-dir (--init starts one from a checkpoint's parameters)")
    }

    /// The model-config keys on which two configs differ, for error messages.
    /// Nil when `stored` and `expected` describe the same network (`dropout` aside: it is training's, not the
    /// network's), else the differing keys as `differences` words them.
    public static func architectureDifferences(_ stored: ModelConfig, _ expected: ModelConfig) -> String? {
        var stored = stored
        stored.dropout = expected.dropout
        return stored == expected ? nil : differences(stored, expected)
    }

    static func differences(_ stored: ModelConfig, _ expected: ModelConfig) -> String {
        func values(_ model: ModelConfig) -> [String: String]? {
            (try? JSONDecoder().decode([String: ConfigValue].self, from: JSONEncoder().encode(model)))?.mapValues(\.description)
        }
        guard let a = values(stored), let b = values(expected) else { return "configs differ" }
        let keys = Set(a.keys).union(b.keys).sorted().filter { a[$0] != b[$0] }
        return keys.map { "model.\($0): checkpoint \(a[$0] ?? "none"), expected \(b[$0] ?? "none")" }.joined(separator: "; ")
    }
}

extension Checkpoint {
    /// A checkpoint file as given, or the one a run directory's `latest` names, pinned (`pin`) unless `pin` is false:
    /// the command's reads of it see that file even when its run, still training, removes it meanwhile
    /// (`checkpoint.keep`). A process that lives long (training from `--init`) does not pin: it would hold the disk
    /// space of a removed file, and its HDF5 lock, for the whole run.
    public static func resolve(_ path: String, pin: Bool = true) throws -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw CheckpointError(file: path, message: Paths.whyMissing(path))
        }
        guard isDirectory.boolValue else {
            // RUN/latest itself, the text file that names the run's newest checkpoint: that checkpoint, as for RUN.
            if let run = runDirectory(ofLatest: path) { return try resolve(run, pin: pin) }
            if pin, let file = try? File.open(path) { Self.pin(file, as: path) }
            return path
        }
        guard var latest = try latest(in: path) else {
            let shard = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().first(where: Preparer.isShardName)
            throw CheckpointError(file: path, message: "is a directory without a 'latest' checkpoint " + (shard.map {
                "(a data directory? name one of its files, such as \(Paths.join(path, $0)))" } ?? "(not a run directory, or no checkpoint written yet)"))
        }
        guard pin else { return latest }
        // Rotated away between reading latest and opening it: latest again, as `latest(in:)` does.
        for _ in 0..<20 {
            if let file = try? File.open(latest) {
                Self.pin(file, as: latest)
                return latest
            }
            guard !FileManager.default.fileExists(atPath: latest), let now = try Self.latest(in: path), now != latest else { break }
            latest = now
        }
        return latest
    }

    /// The run directory whose `latest` file `path` is, links followed (a link to RUN/latest means RUN's), or nil when
    /// `path` is not a run's `latest` (another name, not a regular file, or an HDF5 file: a checkpoint named latest).
    public static func runDirectory(ofLatest path: String) -> String? {
        let (reached, problem) = Paths.followingLinks(path)
        var status = stat()
        guard problem == nil, Paths.lastComponent(reached) == latestName, stat(reached, &status) == 0,
              status.st_mode & S_IFMT == S_IFREG, !File.isHDF5(reached) else { return nil }
        return Paths.parent(reached)
    }

    /// The checkpoint's model, built for batches of up to `maxBatch` rows at the run's lengths, with its parameters.
    /// Every tensor's shape and storage is checked against the stored config before the model is allocated, and
    /// parameters that are not finite are refused, naming the tensors (unless `allowNonFinite`, for `inspect`).
    /// `optimizerState`: the memory check also counts AdamW moments for this model, which the caller will allocate.
    public static func loadModel(_ path: String, maxBatch: Int, allowNonFinite: Bool = false,
                                 optimizerState: Bool = false) throws -> (model: TransformerModel, header: Header) {
        let header = try readHeader(path)
        let run = header.config
        do {
            _ = try tensors(in: try openForReading(path), group: "params", layout: TransformerModel.parameterLayout(for: run.model), path: path)
        } catch let error as HDF5Error {
            throw CheckpointError(file: path, message: error.message)
        }
        let model: TransformerModel
        do {
            model = try TransformerModel(config: run.model, maxBatch: maxBatch,
                                         maxSourceLength: run.model.kind == .encoderDecoder ? run.data.sourceLength : 0,
                                         maxTargetLength: run.data.targetLength, optimizerState: optimizerState)
        } catch where error.key == "batch_size" {
            // The model fits; the activations of maxBatch rows do not (the caller's batch size, not the checkpoint).
            throw CheckpointError(file: path, message: "\(error.message); use smaller batches (--batch-size)")
        } catch where error.isMemoryShortfall {
            throw CheckpointError(file: path, message: "its model does not fit in memory here: \(error.message)")
        } catch {
            throw CheckpointError(file: path, message: "its config does not build a model: \(error)")
        }
        try load(path, into: model)
        model.training = false
        model.specialTokens = header.tokenizer?.specialTokens ?? .standard
        let nonFinite = nonFiniteTensors(model)
        if !allowNonFinite && !nonFinite.isEmpty {
            throw CheckpointError(file: path, message: "parameters that are not finite (NaN or infinity) in "
                                  + nonFinite.map { "\($0.name) (\($0.count))" }.joined(separator: ", ") + "; the model cannot be used")
        }
        return (model, header)
    }
}
