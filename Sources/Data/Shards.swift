import Basics
import Files
import Foundation
import HDF5

/// What a data file holds (README.md, "Data files", documents the schema for h5py users).
public enum DatasetTask: String, Sendable, CaseIterable {
    /// `/tokens`: one stream, EOS between documents; sample i is a window of seq_len + 1 tokens at i·seq_len.
    case lm
    /// `/source/tokens` + `/source/offsets` (count + 1), `/target/tokens` + `/target/offsets`.
    case seq2seq
}

/// The root "format" attribute of every data file; a file with another value is not read as data.
public let dataFormat = "swiftddp-tokens"
/// The root "version" attribute of the data files this build writes and reads; other versions are refused.
public let dataFormatVersion: Int64 = 1

/// A problem with a data directory or file, naming the file and what was expected.
public struct DataError: Error, CustomStringConvertible, Sendable {
    /// The data file or directory at fault (for several files, their paths joined with ", ").
    public let file: String
    /// What is wrong with it, as a clause that follows the path.
    public let message: String

    /// An error about `file`; `message` continues the sentence after the path.
    public init(file: String, _ message: String) {
        self.file = file
        self.message = message
    }

    /// "file: message".
    public var description: String { "\(file): \(message)" }
}

extension File {
    /// Opens the dataset `name` of this data file (at `path`); throws `DataError`: one that is not there is missing,
    /// one that is there and cannot be opened is said as such (h5py's libver='latest' writes layouts HDF5 1.10 cannot read).
    func openShardDataset(_ name: String, path: String) throws -> Dataset {
        do { return try openDataset(name) } catch {
            guard (try? contains(name)) == true else { throw DataError(file: path, "missing dataset /\(name)") }
            if (try? openGroup(name)) != nil { throw DataError(file: path, "/\(name) is a group, not a dataset") }
            throw DataError(file: path, "dataset /\(name) cannot be opened by this program's \(HDF5Library.version) (written by a "
                                        + "newer HDF5, as h5py's libver='latest' may, or damaged): \(error.message)")
        }
    }
}

/// Which dataset a shard belongs to: the `ddp prepare` that wrote it (root attribute "dataset_id", a hash of the
/// dataset's content and split) and how many files of its split that prepare wrote ("split_shards"). A split holding
/// files of several prepares, one of them not whole, is a mix of two datasets (a prepare --overwrite killed part-way):
/// refused (`DataSplit`).
public struct ShardMembership: Sendable, Equatable {
    /// The writing prepare's id.
    public let datasetID: String
    /// Files of the split that prepare wrote.
    public let splitShards: Int

    /// A membership with its parts.
    public init(datasetID: String, splitShards: Int) {
        self.datasetID = datasetID
        self.splitShards = splitShards
    }
}

/// Writes data files in the schema, chunked with Fletcher-32 checksums (a corrupted shard fails to read).
public enum ShardWriter {
    /// Small chunks: a random sample read decompresses 16 KB, not a whole large chunk.
    static let chunk = 4096

    private static func header(_ file: File, task: DatasetTask, tokenizer: Tokenizer, membership: ShardMembership?) throws {
        try file.setAttribute("format", dataFormat)
        try file.setAttribute("version", dataFormatVersion)
        try file.setAttribute("task", task.rawValue)
        try file.setAttribute("vocab_size", tokenizer.vocabularySize)
        try file.setAttribute("tokenizer", tokenizer.json)
        if let membership {
            try file.setAttribute("dataset_id", membership.datasetID)
            try file.setAttribute("split_shards", membership.splitShards)
        }
    }

    private static func writeTokens(_ file: File, _ name: String, _ tokens: [Int32]) throws {
        try file.createDataset(name, type: .int32, shape: [tokens.count], chunks: [max(1, min(chunk, tokens.count))],
                               deflate: 4, fletcher32: true).write(tokens)
    }

    /// Creates the shard at `path` through `OutputFile` (a temporary beside it, renamed when complete; never over a
    /// directory or one of `inputs`).
    private static func create(_ path: String, inputs: [String], _ body: (File) throws -> Void) throws {
        try OutputFile.write(path, inputs: inputs) { temporary in
            let file = try File.create(temporary)
            try body(file)
            try file.close()
        }
    }

    /// A language-modelling shard: the documents' tokens joined with EOS after each document.
    public static func writeLM(_ path: String, documents: [[Int32]], tokenizer: Tokenizer, inputs: [String] = [],
                               membership: ShardMembership? = nil) throws {
        var stream: [Int32] = []
        stream.reserveCapacity(documents.reduce(0) { $0 + $1.count + 1 })
        for document in documents {
            stream += document
            stream.append(tokenizer.specialTokens.eos)
        }
        try create(path, inputs: inputs) { file in
            try header(file, task: .lm, tokenizer: tokenizer, membership: membership)
            try file.setAttribute("documents", documents.count)
            try file.sealAttributes()
            try writeTokens(file, "tokens", stream)
        }
    }

    /// A sequence-to-sequence shard of aligned (source, target) pairs.
    public static func writeSeq2Seq(_ path: String, pairs: [(source: [Int32], target: [Int32])], tokenizer: Tokenizer,
                                    inputs: [String] = [], membership: ShardMembership? = nil) throws {
        try create(path, inputs: inputs) { file in
            try header(file, task: .seq2seq, tokenizer: tokenizer, membership: membership)
            try file.sealAttributes()
            for (side, sequences) in [("source", pairs.map(\.source)), ("target", pairs.map(\.target))] {
                var offsets: [Int64] = [0]
                offsets.reserveCapacity(sequences.count + 1)
                for sequence in sequences { offsets.append(offsets.last! + Int64(sequence.count)) }
                try writeTokens(file, "\(side)/tokens", sequences.flatMap { $0 })
                try file.createDataset("\(side)/offsets", type: .int64, shape: [offsets.count],
                                       chunks: [max(1, min(chunk, offsets.count))], fletcher32: true).write(offsets)
            }
        }
    }
}

/// Reads a 1-D dataset in blocks of about a million elements, handing each to `check` with its first index: memory
/// stays flat however large the file.
func forEachBlock<T: HDF5Scalar>(of dataset: Dataset, _ name: String, as type: T.Type,
                                 _ check: (_ block: [T], _ start: Int) throws -> Void) throws {
    let count = dataset.shape[0], block = 1 << 20
    for start in stride(from: 0, to: count, by: block) {
        let values: [T]
        do { values = try dataset.read(as: T.self, offset: [start], count: [min(block, count - start)]) } catch {
            throw DataError(file: dataset.filePath, "/\(name)[\(start)...] cannot be read (damaged?): \(error.message)")
        }
        try check(values, start)
    }
}

/// One validated data file and how many samples it holds.
public struct Shard: Sendable {
    /// The file's path (the data directory joined with its name).
    public let path: String
    /// The file's "task" attribute.
    public let task: DatasetTask
    /// Samples the file yields: pairs for seq2seq; for lm, windows of seq_len + 1 tokens at multiples of seq_len,
    /// (tokens − 1) / seq_len of them.
    public let samples: Int
    /// Real tokens in the file (all of them for seq2seq, the stream length for lm).
    public let tokens: Int
    /// A 64-bit hash of every stored token and offset in file order (tokens, then for seq2seq the source and target
    /// offsets), made while validating (`ContentDigest`): shards with the same digest hold the same data (`ddp inspect`'s
    /// content digest).
    public let digest: UInt64
    /// The file's version when it was validated (nil when it could not be read): readers open only that version
    /// (`SampleReader`), not a file prepared again under its name since.
    public let version: FileVersion?
    /// The prepare that wrote it (nil for files written before it was stored, or by another writer).
    public var membership: ShardMembership? = nil
}

/// A split (`train` or `valid`) of a dataset directory, every file validated before training starts.
public struct DataSplit: Sendable {
    /// The dataset directory the shards were found in ("" for a split made from one file).
    public let directory: String
    /// The split's name, the prefix of its files: "train" or "valid" ("" for a split made from one file).
    public let split: String
    /// The task every shard of the split holds.
    public let task: DatasetTask
    /// The tokenizer every shard of the split was written with (from their "tokenizer" attributes).
    public let tokenizer: Tokenizer
    /// The split's files in name order; global sample indices run through them in this order.
    public let shards: [Shard]
    /// LM context: samples are windows of `sequenceLength + 1` tokens (ignored by seq2seq data).
    public let sequenceLength: Int

    /// Samples in all shards together: the size of the sampler's global index space.
    public var samples: Int { shards.reduce(0) { $0 + $1.samples } }

    /// The shard holding sample `index` (a global index of the split) and the sample's index within it; nil for an
    /// index outside the split.
    public func locate(_ index: Int) -> (shard: Shard, local: Int)? {
        var start = 0
        for shard in shards {
            if index >= start && index < start + shard.samples { return (shard, index - start) }
            start += shard.samples
        }
        return nil
    }

    /// The ids of the prepares that wrote the split's files (`ShardMembership`; empty for files written before they were stored).
    public var datasetIDs: Set<String> { Set(shards.compactMap { $0.membership?.datasetID }) }

    /// The split's files grouped by the prepare that wrote them (`ShardMembership`), in path order; files without a
    /// membership are left out.
    private static func preparesOf(_ shards: [Shard]) -> [[Shard]] {
        Dictionary(grouping: shards.filter { $0.membership != nil }, by: { $0.membership!.datasetID }).values.sorted { $0[0].path < $1[0].path }
    }

    /// The prepares of which the split holds only some files, with how many it holds and how many that prepare wrote
    /// (a subset someone chose, or files lost; a mix of several prepares is refused when the split is opened).
    public var partialPrepares: [(datasetID: String, present: Int, written: Int)] {
        Self.preparesOf(shards).compactMap { members in
            let membership = members[0].membership!
            return members.count == membership.splitShards ? nil : (membership.datasetID, members.count, membership.splitShards)
        }
    }

    /// The split's content, for runs and ranks to compare (a resumed run's data, every rank's data): a hash of its
    /// shards' names and content digests (`Shard.digest`), in order, and its tokenizer (`ContentDigest`). Data prepared
    /// again with another seed has the same names and counts, and another digest.
    public var contentDigest: UInt64 {
        var digest = ContentDigest()
        for shard in shards { digest.add("\(Paths.lastComponent(shard.path)) \(shard.digest)") }
        digest.add(tokenizer.json)
        return digest.value
    }

    /// The files of `directory`'s split (`split-*.h5`), in name order.
    static func shardNames(in directory: String, split: String) throws -> [String] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasPrefix("\(split)-") && $0.hasSuffix(".h5") }.sorted()
        // A name that is not UTF-8 arrives with U+FFFD in place of its bytes, and names no file: said as such.
        if let odd = names.first(where: { Paths.isMangledName($0, in: directory) }) {
            throw DataError(file: Paths.join(directory, odd), "its name is not UTF-8 (shown with \u{FFFD}), so it cannot be opened by name; rename it")
        }
        return names
    }

    /// A split's first file and its task (the header checked), or nil when the split has no file: for a command to
    /// refuse data of the other task by name before windows of a context are cut from it.
    public static func firstShard(directory: String, split: String) throws -> (path: String, task: DatasetTask)? {
        guard let first = try shardNames(in: directory, split: split).first else { return nil }
        let path = Paths.join(directory, first)
        var file = try ShardValidator(path: path)
        return (path, try file.header().0)
    }

    /// Opens `directory/split-*.h5` and validates every file: format and version, task, dtypes, offsets monotonic
    /// and in bounds, every token id < vocab_size and not PAD, one tokenizer for all files, and a non-empty split.
    public init(directory: String, split: String, sequenceLength: Int = 0) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) else {
            throw DataError(file: directory, "no such data directory: it \(Paths.whyMissing(directory))")
        }
        guard isDirectory.boolValue else { throw DataError(file: directory, "is \(Paths.kindInWords(directory)), not a data directory") }
        let names = try Self.shardNames(in: directory, split: split)
        guard !names.isEmpty else { throw DataError(file: directory, "no \(split)-*.h5 files: the \(split) split is empty") }
        var task: DatasetTask?
        var tokenizer: Tokenizer?
        var tokenizerSource = ""
        var shards: [Shard] = []
        for name in names {
            let path = Paths.join(directory, name)
            let (shard, fileTokenizer) = try Self.validate(path, sequenceLength: sequenceLength)
            if let task, task != shard.task {
                throw DataError(file: path, "task \(shard.task.rawValue) differs from \(tokenizerSource)'s \(task.rawValue)")
            }
            if let tokenizer, tokenizer != fileTokenizer {
                throw DataError(file: path, "its tokenizer differs from \(tokenizerSource)'s (every shard must use one tokenizer)")
            }
            task = shard.task
            tokenizer = fileTokenizer
            tokenizerSource = name
            shards.append(shard)
        }
        // Files of several prepares where one of them is not whole: a mix of two datasets. (Whole datasets put together,
        // or some of one dataset's files alone, are what someone chose.)
        let groups = Self.preparesOf(shards)
        if groups.count > 1, groups.contains(where: { $0.count != $0[0].membership!.splitShards }) {
            let described = groups.map { members in
                "\(members.count) of the \(members[0].membership!.splitShards) files of dataset_id \(members[0].membership!.datasetID) "
                    + "(\(Paths.lastComponent(members[0].path))" + (members.count > 1 ? ", ..." : "") + ")"
            }
            throw DataError(file: directory, "holds \(split) files of \(groups.count) ddp prepares, not all of every one: "
                            + "\(described.joined(separator: "; ")). Such a mix is what a prepare --overwrite stopped part-way "
                            + "(kill -9) leaves, or files copied in from another dataset: prepare the data again, or keep one "
                            + "dataset's files")
        }
        self.directory = directory
        self.split = split
        self.task = task!
        self.tokenizer = tokenizer!
        self.shards = shards
        self.sequenceLength = sequenceLength
        guard samples > 0 else {
            let what = self.task == .lm ? "no window of \(sequenceLength + 1) tokens fits in any file (a shorter context, "
                + "data.target_length, or more text would)" : "no pairs"
            throw DataError(file: directory, "the \(split) split is empty: \(what)")
        }
    }

    /// One file checked against the schema (every attribute, dataset type, token id and offset), read in bounded
    /// blocks; `sequenceLength` is an lm dataset's context. Throws `DataError` naming the file and what is wrong.
    static func validate(_ path: String, sequenceLength: Int) throws -> (Shard, Tokenizer) {
        var file = try ShardValidator(path: path)
        let (task, tokenizer) = try file.header()
        switch task {
        case .lm:
            guard sequenceLength >= 1 else { throw DataError(file: path, "an lm dataset needs a sequence length (the model's context)") }
            let tokens = try file.validateTokens("tokens", pad: tokenizer.specialTokens.pad)
            let windows = tokens > sequenceLength ? (tokens - 1) / sequenceLength : 0
            return (Shard(path: path, task: .lm, samples: windows, tokens: tokens, digest: file.digest, version: file.version,
                          membership: file.membership), tokenizer)
        case .seq2seq:
            let pad = tokenizer.specialTokens.pad
            let source = try file.validateTokens("source/tokens", pad: pad), target = try file.validateTokens("target/tokens", pad: pad)
            let sources = try file.validateOffsets("source/offsets", tokens: source)
            let targets = try file.validateOffsets("target/offsets", tokens: target)
            guard sources == targets else {
                throw DataError(file: path, "/source/offsets has \(sources) sequences but /target/offsets \(targets)")
            }
            return (Shard(path: path, task: .seq2seq, samples: sources, tokens: source + target, digest: file.digest, version: file.version,
                          membership: file.membership),
                    tokenizer)
        }
    }
}

/// One data file checked against the schema; every error is a `DataError` naming the file.
private struct ShardValidator {
    let path: String
    let file: File
    /// The root attribute `vocab_size` once `header()` has read it.
    private(set) var vocabularySize: Int64 = 0
    /// The root attributes `dataset_id` and `split_shards` once `header()` has read them (nil when the file has none).
    private(set) var membership: ShardMembership?
    /// The hash of every block validated so far (`Shard.digest`).
    private var content = ContentDigest()
    var digest: UInt64 { content.value }

    private mutating func mix<T>(_ block: [T]) { block.withUnsafeBytes { content.add($0) } }

    /// The file's version, taken before it is opened: a file replaced during validation then reads as changed.
    let version: FileVersion?

    init(path: String) throws {
        self.path = path
        version = FileVersion.of(path)
        do { file = try File.open(path) } catch { throw DataError(file: path, error.message) }
    }

    private func attribute<T>(_ name: String, _ read: (String) throws(HDF5Error) -> T) throws -> T {
        guard (try? file.hasAttribute(name)) == true else { throw DataError(file: path, "missing root attribute '\(name)'") }
        do { return try read(name) } catch { throw DataError(file: path, "root attribute '\(name)': \(error.message)") }
    }

    /// The root attributes: format, version, task, vocabulary size and tokenizer, each checked and consistent.
    mutating func header() throws -> (DatasetTask, Tokenizer) {
        do { try file.verifySealedAttributes() } catch { throw DataError(file: path, error.message) }
        let format = try attribute("format", file.stringAttribute)
        guard format == dataFormat else { throw DataError(file: path, "format is '\(format)', expected '\(dataFormat)'") }
        let version = try attribute("version", file.int64Attribute)
        guard version == dataFormatVersion else {
            throw DataError(file: path, "format version \(version) is not supported (this build reads version \(dataFormatVersion))")
        }
        let taskName = try attribute("task", file.stringAttribute)
        guard let task = DatasetTask(rawValue: taskName) else { throw DataError(file: path, "task '\(taskName)' is not lm or seq2seq") }
        vocabularySize = try attribute("vocab_size", file.int64Attribute)
        guard (1...Int64(1 << 31)).contains(vocabularySize) else {
            throw DataError(file: path, "vocab_size \(vocabularySize) is not a vocabulary size (1 to 2^31)")
        }
        let tokenizerJSON = try attribute("tokenizer", file.stringAttribute)
        let tokenizer: Tokenizer
        do { tokenizer = try Tokenizer(json: tokenizerJSON) } catch { throw DataError(file: path, "attribute 'tokenizer': \(error)") }
        guard tokenizer.vocabularySize == vocabularySize else {
            throw DataError(file: path, "vocab_size \(vocabularySize) differs from the tokenizer's \(tokenizer.vocabularySize)")
        }
        if (try? file.hasAttribute("dataset_id")) == true {
            let id = try attribute("dataset_id", file.stringAttribute)
            guard (1...64).contains(id.utf8.count) else { throw DataError(file: path, "root attribute 'dataset_id' is not 1 to 64 bytes") }
            let count = try attribute("split_shards", file.int64Attribute)
            guard (1...Int64(1 << 20)).contains(count) else {
                throw DataError(file: path, "root attribute 'split_shards' \(count) is not a file count (1 to 2^20)")
            }
            membership = ShardMembership(datasetID: id, splitShards: Int(count))
        }
        return (task, tokenizer)
    }

    private func open(_ name: String, _ type: ElementType, _ description: String) throws -> Dataset {
        let dataset: Dataset
        dataset = try file.openShardDataset(name, path: path)
        guard dataset.elementType == type, dataset.shape.count == 1 else {
            throw DataError(file: path, "/\(name) must be \(description), found \(dataset.typeDescription) \(dataset.shape)")
        }
        do { try dataset.requireStored() } catch { throw DataError(file: path, "/\(name) \(error.message)") }
        return dataset
    }

    /// Every token id in range, read in blocks (memory stays flat on multi-gigabyte shards); returns the count.
    /// Token ids lie in the vocabulary and are not the tokenizer's PAD (`pad`; -1, none, for GPT-2's): padding is hidden
    /// from attention and the loss, so a PAD in the data would silently drop that position.
    mutating func validateTokens(_ name: String, pad: Int32) throws -> Int {
        let dataset = try open(name, .int32, "1-D int32")
        try forEachBlock(of: dataset, name, as: Int32.self) { block, start in
            mix(block)
            if let bad = block.firstIndex(where: { $0 < 0 || Int64($0) >= vocabularySize || $0 == pad }) {
                let what = block[bad] == pad ? "the tokenizer's PAD id, which only padding may hold (it is hidden from attention and the loss)"
                                             : "outside the vocabulary (vocab_size \(vocabularySize))"
                throw DataError(file: path, "/\(name)[\(start + bad)] = \(block[bad]) is \(what)")
            }
        }
        return dataset.shape[0]
    }

    /// Offsets start at 0, never decrease and end at the token count, checked in blocks; returns the sequence count.
    mutating func validateOffsets(_ name: String, tokens: Int) throws -> Int {
        let dataset = try open(name, .int64, "1-D int64 with at least one entry")
        guard dataset.shape[0] >= 1 else { throw DataError(file: path, "/\(name) must have at least one entry, found none") }
        var previous: Int64 = 0
        try forEachBlock(of: dataset, name, as: Int64.self) { block, start in
            mix(block)
            if start == 0 && block[0] != 0 { throw DataError(file: path, "/\(name)[0] is \(block[0]), expected 0") }
            for (i, value) in block.enumerated() {
                guard value >= previous else {
                    throw DataError(file: path, "/\(name) is not monotonic at \(start + i) (\(previous) then \(value))")
                }
                previous = value
            }
        }
        guard previous == Int64(tokens) else { throw DataError(file: path, "/\(name) ends at \(previous) but there are \(tokens) tokens") }
        return dataset.shape[0] - 1
    }
}

/// A data file described for people (`ddp inspect`): what it holds and its first examples, decoded.
public struct ShardPreview: Sendable {
    /// The file's "task" attribute.
    public let task: DatasetTask
    /// The tokenizer the file was written with, used to decode the examples.
    public let tokenizer: Tokenizer
    /// Pairs (seq2seq) or documents (lm).
    public let count: Int
    /// Tokens stored in the file: source and target together for seq2seq, the whole stream (EOS included) for lm.
    public let tokens: Int
    /// The first samples decoded to text, at most as many as `read` was asked for: documents found in the first 4096
    /// tokens for lm, "source  →  target" for seq2seq.
    public let examples: [String]
    /// The shard's content digest (`Shard.digest`): two shards with the same digest hold the same data.
    public let digest: UInt64
    /// Whether every token and offset dataset carries Fletcher-32 checksums (as ddp writes them), so reading it all
    /// verified them; files written elsewhere (h5py without `fletcher32=True`) have none.
    public let checksummed: Bool

    /// Nil when the file is not a data shard (no `format = swiftddp-tokens`).
    public static func read(_ path: String, examples: Int = 3) throws -> ShardPreview? {
        let file = try File.open(path)
        guard (try? file.stringAttribute("format")) == dataFormat else { return nil }
        let (shard, tokenizer) = try DataSplit.validate(path, sequenceLength: 1)
        let digest = shard.digest
        let names = shard.task == .lm ? ["tokens"] : ["source/tokens", "target/tokens", "source/offsets", "target/offsets"]
        let checksummed = try names.allSatisfy { try file.openDataset($0).storage().fletcher32 }
        var shown: [String] = []
        switch shard.task {
        case .lm:
            let stream = try file.openDataset("tokens").read(as: Int32.self, offset: [0], count: [min(shard.tokens, 4096)])
            let documents = stream.split(separator: tokenizer.specialTokens.eos).prefix(examples)
            shown = documents.map { tokenizer.decode(Array($0)) }
            let count = (try? file.int64Attribute("documents")).map(Int.init) ?? stream.filter { $0 == tokenizer.specialTokens.eos }.count
            return ShardPreview(task: .lm, tokenizer: tokenizer, count: count, tokens: shard.tokens, examples: shown, digest: digest,
                                checksummed: checksummed)
        case .seq2seq:
            let reader = try SampleReader(split: DataSplit(shards: [shard], tokenizer: tokenizer, task: .seq2seq))
            for index in 0..<min(examples, shard.samples) {
                let (source, target) = try reader.sample(index, limit: 4096)
                shown.append("\(tokenizer.decode(source))  →  \(tokenizer.decode(target))")
            }
            return ShardPreview(task: .seq2seq, tokenizer: tokenizer, count: shard.samples, tokens: shard.tokens, examples: shown,
                                digest: digest, checksummed: checksummed)
        }
    }
}

extension DataSplit {
    /// A split of already-validated shards (for reading one file).
    init(shards: [Shard], tokenizer: Tokenizer, task: DatasetTask) {
        self.directory = ""
        self.split = ""
        self.task = task
        self.tokenizer = tokenizer
        self.shards = shards
        self.sequenceLength = 0
    }
}
