import ArgumentParser
import Data
import Files
import Foundation
import HDF5
import Kernels
import Training

extension SyntheticTask: ExpressibleByArgument {}
extension PrepareOptions.TokenizerKind: ExpressibleByArgument {}
extension DatasetTask: ExpressibleByArgument {}

struct Prepare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Turn text, parallel text or a built-in synthetic task into HDF5 data shards.",
        discussion: """
            Writes OUTPUT/train-00000.h5 ... and OUTPUT/valid-00000.h5 ... (schema in README.md "Data files"). \
            An OUTPUT that already holds shards is refused unless --overwrite. Language modelling: documents are runs \
            of non-empty lines; blank lines separate them; EOS follows each. Lines may end in LF, CRLF or CR. The \
            same inputs, options and seed give byte-identical files.

            Examples:
              ddp prepare --task lm --input corpus.txt --output data/lm --tokenizer bpe --vocab-size 8192
              ddp prepare --task seq2seq --source train.de --target train.en --output data/de-en
              ddp prepare --synthetic reverse --samples 20000 --output data/reverse
            """
    )

    @Option(help: "lm or seq2seq (implied by --synthetic, --source/--target or --tsv).")
    var task: DatasetTask?

    @Option(parsing: .upToNextOption, help: "Text files for --task lm.")
    var input: [String] = []

    @Option(help: "Source side of line-aligned parallel text (seq2seq).")
    var source: String?

    @Option(help: "Target side of line-aligned parallel text (seq2seq).")
    var target: String?

    @Option(help: "A file of 'source<TAB>target' lines (seq2seq).")
    var tsv: String?

    @Option(help: "Generate a built-in seq2seq task instead of reading files.")
    var synthetic: SyntheticTask?

    @Option(parsing: .unconditional, help: "Pairs to generate with --synthetic (at most 10 million, and samples x --max-length at most 200 million).")
    var samples = 20_000

    /// The most characters (samples x --max-length) `--synthetic` makes: a few GB of pairs in memory.
    static let largestSynthetic = 200_000_000.0
    /// The most pairs `--synthetic` makes (each costs about 100 bytes besides its characters).
    static let largestSyntheticCount = 10_000_000

    @Option(help: "Directory to write the shards into.")
    var output: String

    @Option(help: "byte (260 tokens, the default) or bpe (trained on the input).")
    var tokenizer: PrepareOptions.TokenizerKind?

    @Option(help: ArgumentHelp("Encode with an existing tokenizer: a Hugging Face tokenizer.json, a model directory holding one (its config.json's special token ids are used), or a SwiftDDP checkpoint's.",
                               valueName: "path"))
    var tokenizerFrom: String?

    @Option(parsing: .unconditional, help: "Vocabulary size for --tokenizer bpe (4 specials and 256 bytes included; default 4096).")
    var vocabSize: Int?

    @Option(parsing: .unconditional, help: "Shards per split.")
    var shards = 1

    @Option(parsing: .unconditional, help: "Fraction of documents or pairs for the valid split.")
    var validFraction = 0.05

    @Option(parsing: .unconditional, help: "Seed for the split and for --synthetic.")
    var seed: UInt64 = 0

    @Option(name: .customLong("max-length"), parsing: .unconditional,
            help: "seq2seq: pairs with more tokens on either side are dropped and counted (synthetic: longest string).")
    var maxPairTokens: Int?

    @Flag(help: "Fail on a pair longer than --max-length instead of dropping it.")
    var failOnLong = false

    @Flag(help: "Replace the dataset already in --output (without it, an --output that holds shards is refused).")
    var overwrite = false

    func validate() throws {
        guard !output.isEmpty else { throw ValidationError("--output is empty; give the directory to write the shards into.") }
        let sources = [synthetic != nil, !input.isEmpty, source != nil || target != nil, tsv != nil].filter { $0 }.count
        guard sources == 1 else {
            throw ValidationError("Give exactly one input: --input FILE... (lm), --source/--target, --tsv, or --synthetic TASK.")
        }
        if (source == nil) != (target == nil) { throw ValidationError("--source and --target go together.") }
        if !input.isEmpty && task == .seq2seq { throw ValidationError("--input is for --task lm; use --source/--target or --tsv for seq2seq.") }
        if input.isEmpty && task == .lm { throw ValidationError("--task lm reads --input FILE...") }
        guard shards >= 1 else { throw ValidationError("--shards must be at least 1, got \(shards).") }
        guard (0..<1).contains(validFraction) else { throw ValidationError("--valid-fraction must be in [0, 1), got \(validFraction).") }
        guard samples >= 1 else { throw ValidationError("--samples must be at least 1, got \(samples).") }
        // Synthetic pairs are made in memory before they are written: bounded, so a typo cannot exhaust it.
        let characters = Double(samples) * Double(maxPairTokens ?? 16)
        if synthetic != nil, samples > Self.largestSyntheticCount {
            throw ValidationError("--samples \(samples) is more than the \(Self.largestSyntheticCount) pairs --synthetic makes (in memory).")
        }
        if synthetic != nil, characters > Self.largestSynthetic {
            throw ValidationError("--samples \(samples) x --max-length \(maxPairTokens ?? 16) is more than the \(Int(Self.largestSynthetic)) characters "
                                  + "--synthetic makes (in memory); give fewer samples or a smaller --max-length.")
        }
        if let maxPairTokens, maxPairTokens < 1 { throw ValidationError("--max-length must be at least 1, got \(maxPairTokens).") }
        // Options that would be ignored without a word: a language model's documents are cut into windows at training.
        if !input.isEmpty && maxPairTokens != nil {
            throw ValidationError("--max-length is for pairs (seq2seq); --task lm keeps whole documents, which training cuts into windows of data.target_length.")
        }
        if failOnLong && !input.isEmpty {
            throw ValidationError("--fail-on-long is for pairs (seq2seq); --task lm keeps whole documents.")
        }
        if failOnLong && synthetic != nil {
            throw ValidationError("--fail-on-long is for text pairs; --synthetic makes none longer than --max-length.")
        }
        if failOnLong && maxPairTokens == nil {
            throw ValidationError("--fail-on-long needs --max-length: without it no pair is too long.")
        }
        if tokenizerFrom != nil && (tokenizer != nil || vocabSize != nil) {
            throw ValidationError("--tokenizer-from encodes with an existing tokenizer; --tokenizer and --vocab-size build one. Give one or the other.")
        }
        if tokenizer != .bpe && vocabSize != nil { throw ValidationError("--vocab-size is for --tokenizer bpe.") }
        let size = vocabSize ?? Self.defaultVocabularySize
        if tokenizer == .bpe && size <= 260 { throw ValidationError("--vocab-size must exceed 260 for bpe, got \(size).") }
        if tokenizer == .bpe && size > 260 + BPE.largestMergeCount {
            throw ValidationError("--vocab-size must be at most \(260 + BPE.largestMergeCount) for bpe, got \(size).")
        }
    }

    func run() throws {
        try requireOneProcess("ddp prepare")
        // Ctrl-C or a kill while shards are written leaves no temporary behind (nor any shard of the new set).
        RemoveOnSignal.install()
        var options = PrepareOptions(output: output)
        options.tokenizer = tokenizer ?? .byte
        if let tokenizerFrom { options.fixedTokenizer = try Self.readTokenizer(tokenizerFrom) }
        options.vocabularySize = vocabSize ?? Self.defaultVocabularySize
        options.shards = shards
        options.validFraction = validFraction
        options.seed = seed
        options.maxPairTokens = maxPairTokens
        options.failOnLong = failOnLong
        options.overwrite = overwrite
        options.inputs = input + [source, target, tsv].compactMap { $0 }
        options.textLimit = Self.textLimit()
        let progress: (String) -> Void = { message in
            printToStandardError("prepare: \(message)")
        }
        let summary: PrepareSummary
        if !input.isEmpty {
            summary = try Preparer.prepareLM(inputs: input, options: options, progress: progress)
        } else {
            let pairs: [(String, String)]
            if let synthetic {
                pairs = synthetic.pairs(count: samples, seed: seed, maxCharacters: maxPairTokens ?? 16)
            } else if let tsv {
                pairs = try Preparer.tsvPairs(tsv, limit: options.textLimit)
            } else {
                pairs = try Preparer.parallelPairs(source: source!, target: target!, limit: options.textLimit)
            }
            summary = try Preparer.prepareSeq2Seq(pairs: pairs, options: options, progress: progress)
        }
        print("wrote \(output)")
        print(summary)
    }

    /// The text this process can prepare: 90% of what it can still allocate (`MemoryBudget`), at `TextLimit`'s costs.
    static func textLimit() -> TextLimit {
        TextLimit(memory: Int(MemoryBudget.availableBytes * 0.9), reason: "this process can allocate " + MemoryBudget.availableDescription)
    }

    /// `--vocab-size` when not given.
    static let defaultVocabularySize = 4096

    /// The tokenizer `--tokenizer-from` names: a checkpoint's (an HDF5 file, or a run directory's latest), or a Hugging
    /// Face `tokenizer.json` or model directory.
    static func readTokenizer(_ path: String) throws -> Tokenizer {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw RunError("--tokenizer-from \(path) \(Paths.whyMissing(path)).")
        }
        if isDirectory.boolValue && FileManager.default.fileExists(atPath: Paths.join(path, Checkpoint.latestName))
            || Checkpoint.runDirectory(ofLatest: path) != nil {
            return try readTokenizer(try Checkpoint.resolve(path))
        }
        if !isDirectory.boolValue {
            do { _ = try Paths.regularFileSize(path) } catch { throw RunError("--tokenizer-from \(error).") }
        }
        if !isDirectory.boolValue, File.isHDF5(path) {
            guard let tokenizer = try Checkpoint.readHeader(path).tokenizer else {
                throw RunError("--tokenizer-from \(path) is a checkpoint without a tokenizer.")
            }
            return tokenizer
        }
        let (tokenizer, notes) = try HuggingFaceGPT2.readTokenizer(at: path)
        for note in notes { printToStandardError("prepare: \(note)") }
        return tokenizer
    }
}
