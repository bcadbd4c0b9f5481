import Basics
import Files
import Foundation

/// Built-in sequence-to-sequence tasks generated from a seed, so training can be tried with no data.
public enum SyntheticTask: String, CaseIterable, Sendable {
    /// "abcde" → "edcba"
    case reverse
    /// "abcde" → "abcde"
    case copy
    /// "dbeca" → "abcde"
    case sort
    /// "123+4567" → "4690"
    case addition

    /// `count` (source, target) pairs; random letters (or numbers) of 1 ... `maxCharacters` characters.
    public func pairs(count: Int, seed: UInt64, maxCharacters: Int) -> [(String, String)] {
        var random = SplitMix64(seed: seed ^ 0x5EED_0000_0000_0000 &+ UInt64(SyntheticTask.allCases.firstIndex(of: self)!))
        func uniform(_ bound: Int) -> Int { Int(random.next() % UInt64(bound)) }
        let letters = Array("abcdefghijklmnopqrstuvwxyz")
        return (0..<count).map { _ in
            switch self {
            case .reverse, .copy, .sort:
                let source = String((0..<(1 + uniform(max(1, maxCharacters)))).map { _ in letters[uniform(letters.count)] })
                let target = self == .reverse ? String(source.reversed()) : self == .copy ? source : String(source.sorted())
                return (source, target)
            case .addition:
                let digits = max(1, (maxCharacters - 1) / 2)
                let limit = Int(pow(10, Double(min(digits, 9))))
                let a = uniform(limit), b = uniform(limit)
                return ("\(a)+\(b)", "\(a + b)")
            }
        }
    }
}

/// How `ddp prepare` turns text into shards.
public struct PrepareOptions: Sendable {
    /// The tokenizer to build (`--tokenizer`): byte (260 ids) or BPE trained on the input text.
    public enum TokenizerKind: String, CaseIterable, Sendable { case byte, bpe }
    /// The directory the shards are written into (`--output`); created when missing.
    public var output: String
    /// Which tokenizer to build (`--tokenizer`, default byte); ignored when `fixedTokenizer` is set.
    public var tokenizer: TokenizerKind = .byte
    /// Encode with this tokenizer instead of building one (evaluating text with a checkpoint's own tokenizer).
    public var fixedTokenizer: Tokenizer?
    /// Target vocabulary for BPE (specials and bytes included).
    public var vocabularySize = 4096
    /// Shards per split (`--shards`, default 1); a split with fewer samples gets one shard per sample.
    public var shards = 1
    /// The fraction of documents or pairs that go to the valid split (`--valid-fraction`, default 0.05).
    public var validFraction = 0.05
    /// Seeds the shuffle that chooses the valid samples (`--seed`, default 0).
    public var seed: UInt64 = 0
    /// seq2seq: pairs whose source or target has more tokens are dropped and counted (or an error, see below).
    public var maxPairTokens: Int?
    /// seq2seq: a pair over `maxPairTokens` is an error instead of being dropped.
    public var failOnLong = false
    /// Where `maxPairTokens` comes from, as that error names it (nil: the `--max-length` option).
    public var limitSource: String?
    /// The files read (text, parallel text): a shard is never written over one of them.
    public var inputs: [String] = []
    /// Replace the shards of an earlier dataset in `output` (refused without it).
    public var overwrite = false
    /// The most bytes of text read in all, and why (what memory allows): more is an error naming the file that
    /// passes it, before it is read whole (nil: no limit).
    public var textLimit: TextLimit?

    /// Options for writing into `output`, every other option at its default.
    public init(output: String) { self.output = output }
}

/// A limit on the text `ddp prepare` (and `eval --text`, `embed`) reads: preparing holds the text, its lines and their tokens in memory at once,
/// about `perTextByte` bytes for each byte of text and `perLine` for each line (a line's strings and tokens).
public struct TextLimit: Sendable {
    /// Bytes of memory preparing may take.
    public var memory: Int
    /// Why, as a clause ("this process can allocate 3.2 GiB (ulimit -v)").
    public var reason: String
    /// Bytes of memory per byte of text, and per line (measured: 11 for long lines; short pairs cost ~170 more each).
    public var perTextByte = 12, perLine = 256

    /// A limit of `memory` bytes for `reason`.
    public init(memory: Int, reason: String) {
        self.memory = memory
        self.reason = reason
    }

    /// The most bytes of text `memory` holds, with nothing else read.
    var textBytes: Int { memory / perTextByte }
    /// What `bytes` of text in `lines` lines take, at most.
    func cost(bytes: Int, lines: Int) -> Int { bytes.multipliedReportingOverflow(by: perTextByte).partialValue + lines * perLine }
}

/// The text read so far against a `TextLimit`.
struct TextRead {
    var bytes = 0, lines = 0
}

/// What `ddp prepare` wrote.
public struct PrepareSummary: Sendable, CustomStringConvertible {
    /// The task of the shards written.
    public var task: DatasetTask
    /// The tokenizer the shards were encoded with (built, or the fixed one given).
    public var tokenizer: Tokenizer
    /// Documents (lm) or pairs (seq2seq) written to each split.
    public var trainSamples = 0, validSamples = 0
    /// Tokens written to each split: the documents' tokens plus one EOS per document for lm, source and target tokens
    /// together for seq2seq.
    public var trainTokens = 0, validTokens = 0
    /// Files written for each split.
    public var trainShards = 0, validShards = 0
    /// seq2seq: pairs left out because a side had more than `maxPairTokens` tokens (nil: no limit was given).
    public var dropped = 0, maxPairTokens: Int?
    /// The vocabulary size asked of a BPE trained here, when the text gave fewer merges than that.
    public var askedVocabularySize: Int?
    /// seq2seq: pairs kept with an empty source or target (an empty line on one side), and the first one's number.
    public var emptySides = 0, firstEmptySide = 0

    /// Notes the vocabulary size `options` asked of a BPE trained here when it ended smaller.
    mutating func noteVocabulary(asked options: PrepareOptions) {
        guard options.fixedTokenizer == nil, options.tokenizer == .bpe, tokenizer.vocabularySize < options.vocabularySize else { return }
        askedVocabularySize = options.vocabularySize
    }

    /// The summary as `ddp prepare` prints it: one line per split, and the dropped pairs for seq2seq.
    public var description: String {
        let unit = task == .lm ? "documents" : "pairs"
        var text = """
            task        \(task.rawValue), tokenizer \(tokenizer.kind) (vocab_size \(tokenizer.vocabularySize))
            train       \(trainSamples) \(unit), \(trainTokens) tokens, \(trainShards) shard(s)
            valid       \(validSamples) \(unit), \(validTokens) tokens, \(validShards) shard(s)
            """
        if let askedVocabularySize {
            text += "\nnote        --vocab-size \(askedVocabularySize) was asked; training stopped at \(tokenizer.vocabularySize), where no "
                + "pair of tokens occurs twice in the text any more or BPE's size limits are reached (a model's vocab_size may still be larger)"
        }
        if task == .seq2seq, let maxPairTokens { text += "\ndropped     \(dropped) pairs longer than --max-length \(maxPairTokens)" }
        if emptySides > 0 {
            text += "\nempty       \(emptySides) pairs kept with an empty source or target (the first is pair \(firstEmptySide)); "
                + "they train the model to map to or from nothing"
        }
        return text
    }
}

/// Turns text (documents, parallel files, TSV pairs) into tokenized train and valid shards, for `ddp prepare`.
public enum Preparer {
    /// Documents of a text: runs of non-empty lines; blank lines separate documents. Lines end in LF, CRLF or CR,
    /// and a document's lines are joined with "\n".
    public static func documents(in text: String) -> [String] {
        var documents: [String] = []
        var current: [String] = []
        for line in TextFile.lines(text) {
            if line.allSatisfy(\.isWhitespace) {
                if !current.isEmpty { documents.append(current.joined(separator: "\n")) }
                current = []
            } else {
                current.append(line)
            }
        }
        if !current.isEmpty { documents.append(current.joined(separator: "\n")) }
        return documents
    }

    /// Lines of `text` as an editor counts them: each ends at LF, CRLF or a lone CR, and a last line without an end
    /// counts too ("a\nb\n" and "a\r\nb" are 2, "" is 0).
    static func lineCount(_ text: String) -> Int {
        var count = 0, previous: UInt8 = 10
        for byte in text.utf8 {
            if byte == 10 { if previous != 13 { count += 1 } } else if byte == 13 { count += 1 }
            previous = byte
        }
        return count + (previous == 10 || previous == 13 ? 0 : 1)
    }

    /// One file's text within `limit`, as `readText(_:limit:read:)` with nothing read before (`ddp embed`'s lines,
    /// `ddp eval`'s text).
    public static func readText(_ path: String, limit: TextLimit?) throws -> String {
        var read = TextRead()
        return try readText(path, limit: limit, read: &read)
    }

    /// The text of `path` (`TextFile.read`), within what `limit` leaves after the text `read` of earlier files (which
    /// grows by this file's bytes and lines); exceeding it is a `DataError` naming the file and the limit's reason,
    /// for bytes before the file is read whole, for lines once they are counted.
    static func readText(_ path: String, limit: TextLimit?, read: inout TextRead) throws -> String {
        guard let limit else { return try TextFile.read(path) }
        let before = read
        func refusal(_ what: String) -> DataError {
            DataError(file: path, "is more text than fits in memory here: \(what)\(before.bytes == 0 ? "" : ", with the files before it") "
                      + "(text takes up to \(limit.perTextByte) bytes of memory per byte and \(limit.perLine) per line while it is "
                      + "tokenized, and \(limit.reason)); give less text, or use a machine with more memory")
        }
        let text: String
        do { text = try TextFile.read(path, largest: max(0, (limit.memory - limit.cost(bytes: before.bytes, lines: before.lines)) / limit.perTextByte)) } catch {
            guard error.isTooLarge else { throw error }
            throw refusal("more than \(limit.textBytes) bytes in all")
        }
        read.bytes += text.utf8.count
        read.lines += lineCount(text)
        guard limit.cost(bytes: read.bytes, lines: read.lines) <= limit.memory else {
            throw refusal("\(read.lines) lines in \(read.bytes) bytes in all")
        }
        return text
    }

    /// Line-aligned parallel files: line i of `source` translates to line i of `target` (LF, CRLF or CR line ends);
    /// both files together within `limit` (a `DataError` naming the file that passes it).
    public static func parallelPairs(source: String, target: String, limit: TextLimit? = nil) throws -> [(String, String)] {
        var read = TextRead()
        let sourceText = try readText(source, limit: limit, read: &read)
        let targetText = try readText(target, limit: limit, read: &read)
        let s = TextFile.lines(sourceText), t = TextFile.lines(targetText)
        guard s.count == t.count else {
            throw DataError(file: target, "has \(t.count) lines but \(source) has \(s.count): parallel files must be line-aligned")
        }
        return Array(zip(s, t))
    }

    /// A TSV file: each line "source<TAB>target", exactly one tab (LF, CRLF or CR line ends; empty lines are skipped),
    /// within `limit`.
    public static func tsvPairs(_ path: String, limit: TextLimit? = nil) throws -> [(String, String)] {
        var pairs: [(String, String)] = []
        var read = TextRead()
        let text = try readText(path, limit: limit, read: &read)
        for (number, line) in TextFile.lines(text).enumerated() where !line.isEmpty {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard fields.count == 2 else {
                throw DataError(file: path, fields.count == 1 ? "line \(number + 1) has no tab between source and target"
                                : "line \(number + 1) has \(fields.count - 1) tabs; a line is source<TAB>target, one tab (a third column, "
                                  + "or a tab inside a sentence, would be taken into the target)")
            }
            pairs.append((String(fields[0]), String(fields[1])))
        }
        return pairs
    }

    private static func makeTokenizer(_ options: PrepareOptions, texts: () -> [String], progress: (String) -> Void) -> Tokenizer {
        if let fixed = options.fixedTokenizer { return fixed }
        switch options.tokenizer {
        case .byte: return .byte
        case .bpe:
            progress("training BPE to vocab_size \(options.vocabularySize)")
            return .bpe(BPE.train(texts: texts(), vocabularySize: options.vocabularySize))
        }
    }

    /// Seeded split: a `validFraction` of the indices go to valid (at least one when the fraction is positive and
    /// there are two or more samples); both keep the input order.
    static func split(_ count: Int, options: PrepareOptions) -> (train: [Int], valid: [Int]) {
        var validCount = Int((Double(count) * options.validFraction).rounded())
        if options.validFraction > 0 && count >= 2 { validCount = max(1, validCount) }
        validCount = min(validCount, max(0, count - 1))  // train keeps at least one
        var order = Array(0..<count)
        var random = SplitMix64(seed: options.seed)
        for i in stride(from: count - 1, to: 0, by: -1) { order.swapAt(i, Int(random.next() % UInt64(i + 1))) }
        let valid = Set(order.prefix(validCount))
        return ((0..<count).filter { !valid.contains($0) }, (0..<count).filter { valid.contains($0) })
    }

    private static func shardRanges(_ count: Int, shards: Int) -> [Range<Int>] {
        let n = max(1, min(shards, count))
        return (0..<n).map { (count * $0 / n)..<(count * ($0 + 1) / n) }
    }

    /// Cuts each split into `options.shards` files (`train-00000.h5`, ...), has `write` produce each one (returning its
    /// token count), and records the counts in the summary. Warns, naming the split, when valid comes out empty
    /// although a valid fraction was asked for. The new shards replace the directory's only once all are written
    /// (`OutputFile.writeAll`); with `overwrite`, shards of an earlier dataset that the new one does not replace are
    /// removed then.
    private static func writeSplits(train: [Int], valid: [Int], options: PrepareOptions, content: ContentDigest, into summary: inout PrepareSummary,
                                    progress: (String) -> Void,
                                    write: (_ split: String, _ shard: Int, _ shards: Int, _ indices: ArraySlice<Int>, _ path: String,
                                            _ membership: ShardMembership) throws -> Int) throws {
        let earlier = try prepareOutputDirectory(options)
        if valid.isEmpty && options.validFraction > 0 {
            progress("warning: the valid split is empty (\(train.count) sample(s) in all, valid fraction \(options.validFraction)); "
                     + "training will report no validation metrics")
        }
        // Every shard of both splits is written to a temporary first, and renamed into place only when all are: a
        // failure (text refused part-way, a full disk) leaves the directory as it was, an earlier dataset whole.
        var planned: [(split: String, shard: Int, shards: Int, indices: ArraySlice<Int>, file: String)] = []
        for (name, indices) in [("train", train), ("valid", valid)] where !indices.isEmpty {
            let ranges = shardRanges(indices.count, shards: options.shards)
            for (shard, range) in ranges.enumerated() {
                planned.append((name, shard, ranges.count, indices[range], String(format: "%@-%05d.h5", name, shard)))
            }
        }
        var tokens = [Int](repeating: 0, count: planned.count)
        // Every file says which dataset it belongs to (a hash of what the dataset holds and how it is split, so the same
        // prepare gives the same files, byte for byte): one killed while renaming leaves a mix that readers refuse.
        var identity = content
        for indices in [train, valid] { indices.withUnsafeBufferPointer { identity.add($0) } }
        identity.add("\(options.shards)")
        let datasetID = String(identity.value, radix: 16)
        do {
            // (No input is among the earlier files: `prepareOutputDirectory` refuses an input named like a shard in --output.)
            let obsolete = earlier.filter { file in !planned.contains { $0.file == file } }.map { Paths.join(options.output, $0) }
            try OutputFile.writeAll(planned.map { Paths.join(options.output, $0.file) }, inputs: options.inputs, removing: obsolete) { index, temporary in
                let shard = planned[index]
                tokens[index] = try write(shard.split, shard.shard, shard.shards, shard.indices, temporary,
                                          ShardMembership(datasetID: datasetID, splitShards: shard.shards))
            }
        } catch {
            // The output directory (and those above it) this prepare created, still empty: they go too.
            OutputFile.removeCreatedDirectoriesIfEmpty()
            throw error
        }
        for (name, indices) in [("train", train), ("valid", valid)] where !indices.isEmpty {
            let mine = planned.indices.filter { planned[$0].split == name }
            let total = mine.reduce(0) { $0 + tokens[$1] }
            if name == "train" { (summary.trainSamples, summary.trainShards, summary.trainTokens) = (indices.count, mine.count, total) }
            else { (summary.validSamples, summary.validShards, summary.validTokens) = (indices.count, mine.count, total) }
        }
    }

    /// Shard names of a dataset: `train-00000.h5`, `valid-00012.h5`, ...
    public static func isShardName(_ name: String) -> Bool {
        (name.hasPrefix("train-") || name.hasPrefix("valid-")) && name.hasSuffix(".h5")
    }

    /// Creates the output directory when missing, and returns the shards an earlier dataset left in it: refused
    /// unless `overwrite` (a new dataset never mixes with or silently replaces an earlier one).
    private static func prepareOutputDirectory(_ options: PrepareOptions) throws -> [String] {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: options.output, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else {
                throw DataError(file: options.output, "exists and is not a directory; --output names the directory to write the shards into")
            }
        } else {
            let parent = Paths.parent(options.output)
            do {
                try OutputFile.createDirectory(options.output)
            } catch {
                // A dangling or looping link, or a path under a file, says which (the system's own text does not).
                if (try? FileManager.default.destinationOfSymbolicLink(atPath: Paths.withoutTrailingSeparators(options.output))) != nil {
                    throw DataError(file: options.output, "cannot be the output directory: it \(Paths.whyMissing(options.output))")
                }
                throw DataError(file: options.output, "cannot create the output directory (in \(parent.isEmpty ? "." : parent)): \(describe(error))")
            }
        }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: options.output)) ?? []
        // Temporaries of a prepare that was killed (`OutputFile` names them `.NAME.XXXXXXXX.tmp`): its own leftovers.
        // (A shard's own writer nests one in another: `..NAME.XXXXXXXX.tmp.YYYYYYYY.tmp`.)
        for name in names where name.hasSuffix(".tmp") && isShardName(String(name.drop { $0 == "." }.prefix { $0 != "." }) + ".h5") {
            try? FileManager.default.removeItem(atPath: Paths.join(options.output, name))
        }
        let earlier = names.filter(isShardName).sorted()
        // A name that is not UTF-8 arrives with U+FFFD in place of its bytes and names no file: --overwrite could not
        // remove it, and training would find it beside the new shards.
        if let odd = earlier.first(where: { Paths.isMangledName($0, in: options.output) }) {
            throw DataError(file: Paths.join(options.output, odd), "its name is not UTF-8 (shown with \u{FFFD}), so it cannot be "
                            + "removed or read by name; nothing was written: rename or remove it yourself, or give another --output")
        }
        // An input named like a shard inside --output would stay there (inputs are never written or removed) and be
        // read as part of the new dataset.
        for name in earlier {
            let path = Paths.join(options.output, name)
            if let input = options.inputs.first(where: { OutputFile.sameFile($0, path) }) {
                throw DataError(file: input, "is an input of this prepare and, as \(path), would stay in --output as a shard of the "
                                + "dataset written there; move it out of \(options.output), or give another --output")
            }
        }
        if !earlier.isEmpty && !options.overwrite {
            throw DataError(file: options.output, "already holds a dataset (\(earlier.count) shard(s): \(earlier.prefix(3).joined(separator: ", "))"
                                                  + "\(earlier.count > 3 ? ", ..." : "")); give another --output, or --overwrite to replace it")
        }
        return earlier
    }

    /// Language modelling from text files.
    public static func prepareLM(inputs: [String], options: PrepareOptions, progress: (String) -> Void = { _ in }) throws -> PrepareSummary {
        var documents: [String] = []
        var origins: [(file: String, number: Int)] = []  // each document's input and its place there, for messages
        var read = TextRead()
        for input in inputs {
            let text = try readText(input, limit: options.textLimit, read: &read)
            let found = Self.documents(in: text)
            documents += found
            origins += found.indices.map { (input, $0 + 1) }
        }
        guard !documents.isEmpty else { throw DataError(file: inputs.joined(separator: ", "), "holds no text") }
        let tokenizer = makeTokenizer(options, texts: { documents }, progress: progress)
        var options = options
        options.inputs += inputs
        let (train, valid) = split(documents.count, options: options)
        var summary = PrepareSummary(task: .lm, tokenizer: tokenizer)
        summary.noteVocabulary(asked: options)
        var content = ContentDigest()
        content.add(tokenizer.json)
        for document in documents { content.add(document) }
        try writeSplits(train: train, valid: valid, options: options, content: content, into: &summary, progress: progress) { name, shard, shards, indices, path, membership in
            var encoded: [[Int32]] = []
            for (done, index) in indices.enumerated() {
                encoded.append(tokenizer.encode(documents[index]))
                try tokenizer.refusePadding(in: encoded[encoded.count - 1], what: "document \(origins[index].number)", of: origins[index].file)
                if done % 1000 == 999 { progress("encoding \(name) shard \(shard + 1)/\(shards): \(done + 1)/\(indices.count) documents") }
            }
            try ShardWriter.writeLM(path, documents: encoded, tokenizer: tokenizer, inputs: options.inputs, membership: membership)
            return encoded.reduce(0) { $0 + $1.count + 1 }
        }
        return summary
    }

    /// Sequence-to-sequence from pairs of text.
    public static func prepareSeq2Seq(pairs: [(String, String)], options: PrepareOptions,
                                      progress: (String) -> Void = { _ in }) throws -> PrepareSummary {
        // Errors about the pairs name the text they came from (the output directory for synthetic pairs).
        let subject = options.inputs.isEmpty ? options.output : options.inputs.joined(separator: ", ")
        guard !pairs.isEmpty else { throw DataError(file: subject, "no pairs to prepare") }
        let tokenizer = makeTokenizer(options, texts: { pairs.flatMap { [$0.0, $0.1] } }, progress: progress)
        var encoded: [(source: [Int32], target: [Int32])] = []
        var dropped = 0, emptySides = 0, firstEmptySide = 0
        for (number, pair) in pairs.enumerated() {
            let source = tokenizer.encode(pair.0), target = tokenizer.encode(pair.1)
            try tokenizer.refusePadding(in: source + target, what: "pair \(number + 1)", of: subject)
            if let limit = options.maxPairTokens, source.count > limit || target.count > limit {
                if options.failOnLong {
                    throw DataError(file: subject, "pair \(number + 1) has \(source.count) source and \(target.count) target tokens, over "
                                                             + (options.limitSource ?? "--max-length \(limit)"))
                }
                dropped += 1
                continue
            }
            encoded.append((source, target))
            if source.isEmpty || target.isEmpty {
                if emptySides == 0 { firstEmptySide = number + 1 }
                emptySides += 1
            }
            if number % 10_000 == 9_999 { progress("encoded \(number + 1)/\(pairs.count) pairs") }
        }
        guard !encoded.isEmpty else { throw DataError(file: options.output, "every pair is longer than --max-length") }
        let (train, valid) = split(encoded.count, options: options)
        var summary = PrepareSummary(task: .seq2seq, tokenizer: tokenizer)
        summary.noteVocabulary(asked: options)
        summary.dropped = dropped
        summary.maxPairTokens = options.maxPairTokens
        (summary.emptySides, summary.firstEmptySide) = (emptySides, firstEmptySide)
        var content = ContentDigest()
        content.add(tokenizer.json)
        for pair in encoded {
            pair.source.withUnsafeBufferPointer { content.add($0) }
            pair.target.withUnsafeBufferPointer { content.add($0) }
        }
        try writeSplits(train: train, valid: valid, options: options, content: content, into: &summary, progress: progress) { _, _, _, indices, path, membership in
            let chosen = indices.map { encoded[$0] }
            try ShardWriter.writeSeq2Seq(path, pairs: chosen, tokenizer: tokenizer, inputs: options.inputs, membership: membership)
            return chosen.reduce(0) { $0 + $1.source.count + $1.target.count }
        }
        return summary
    }
}
