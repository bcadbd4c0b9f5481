import ArgumentParser
import Basics
import Data
import Files
import Foundation
import Kernels
import MPI
import Training
import Transformer

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Evaluate a checkpoint on a data split or on text: loss, perplexity, token accuracy; seq2seq adds exact match, BLEU and chrF.",
        discussion: """
            Every example of the split is evaluated exactly once. Loss and perplexity are plain token-weighted cross-entropy \
            over real target tokens. seq2seq models also decode every example (or the first --max-decode) and report the \
            share decoded exactly, corpus BLEU and chrF, as sacrebleu computes them by default (BLEU's words from \
            --bleu-tokenize, 13a unless the run's eval.bleu_tokenize says otherwise), each with sacrebleu's signature. \
            --hypotheses FILE writes the decoded outputs, one line per example in split order (--references and \
            --sources the targets and sources beside them), so that `sacrebleu REFERENCES -i HYPOTHESES` gives the same \
            numbers. Encoder-only models report the \
            masked-LM loss, perplexity and accuracy over the positions BERT's recipe chooses with mlm.eval_seed (the \
            same on every run). Under mpirun the examples are split across ranks and the numbers are the same.

            Text instead of shards: --text FILE (language model) or --source FILE --target FILE (parallel lines), \
            tokenized with the checkpoint's own tokenizer.

            Examples:
              ddp eval --checkpoint runs/reverse --data data/reverse
              ddp eval --checkpoint runs/reverse/checkpoint-00000600.h5 --decode beam --beam-size 4 --json
              Launch/mpirun.sh -np 2 eval --checkpoint runs/reverse --json
              ddp eval --checkpoint runs/wmt --hypotheses hyp.txt --references ref.txt   (then: sacrebleu ref.txt -i hyp.txt)
            """
    )

    @OptionGroup var checkpoint: CheckpointOption

    @Option(help: "A data directory of HDF5 shards (default: the run config's data.directory).")
    var data: String?

    @Option(help: "Which split of the data directory: valid or train.")
    var split = "valid"

    @Option(help: "Language-model text to evaluate instead of shards (documents separated by blank lines).")
    var text: String?

    @Option(help: "Parallel text: source sentences, one per line (with --target).")
    var source: String?

    @Option(help: "Parallel text: target sentences, one per line (with --source).")
    var target: String?

    @Option(parsing: .unconditional, help: "Sequences per batch (per rank); default: the run's training.batch_size.")
    var batchSize: Int?

    @OptionGroup var threads: ThreadsOption

    @OptionGroup var decoding: DecodingOptions

    @Option(parsing: .unconditional, help: "seq2seq: decode only the first N examples for exact match, BLEU, chrF and the written files (default: all; 0: none).")
    var maxDecode: Int?

    @Option(help: "seq2seq: how BLEU cuts text into words, as sacrebleu's --tokenize: 13a, none, char or intl (default: the run's eval.bleu_tokenize, 13a).")
    var bleuTokenize: BLEUTokenization?

    @Option(help: "seq2seq: write the decoded outputs to this file, one line per decoded example in split order.")
    var hypotheses: String?

    @Option(help: "seq2seq: write the references (targets) of the decoded examples to this file, one per line.")
    var references: String?

    @Option(help: "seq2seq: write the sources of the decoded examples to this file, one per line.")
    var sources: String?

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    /// The text files asked for: option name, path, and the lines of `DecodedTexts` each holds.
    private var textOutputs: [(option: String, path: String, lines: KeyPath<DecodedTexts, [String]>)] {
        [("--hypotheses", hypotheses, \DecodedTexts.hypotheses), ("--references", references, \.references), ("--sources", sources, \.sources)]
            .compactMap { option, path, lines in path.map { (option, $0, lines) } }
    }

    func validate() throws {
        guard split == "valid" || split == "train" else { throw ValidationError("--split must be valid or train, got '\(split)'.") }
        guard (source == nil) == (target == nil) else { throw ValidationError("--source and --target go together.") }
        guard text == nil || source == nil else { throw ValidationError("give --text or --source/--target, not both.") }
        guard (text == nil && source == nil) || data == nil else { throw ValidationError("give --data or text files, not both.") }
        if let batchSize, !(1...RunConfig.largestBatch).contains(batchSize) {
            throw ValidationError("--batch-size must be 1 to \(RunConfig.largestBatch), got \(batchSize).")
        }
        if let maxDecode, maxDecode < 0 { throw ValidationError("--max-decode must be 0 or more, got \(maxDecode).") }
        if maxDecode == 0, let first = textOutputs.first {
            throw ValidationError("\(first.option) writes decoded examples, and --max-decode 0 decodes none.")
        }
    }

    func run() throws {
        let path = try checkpoint.resolve()
        let header = try Checkpoint.readHeader(path)
        let run = header.config
        let inputs = checkpoint.protectedFiles(resolved: path) + [text, source, target].compactMap { $0 } + (data.map { [$0] } ?? [])
        // The files of the data directory (its shards are read) are protected too, as are the other outputs from one
        // another (also through links).
        let dataDirectory = text == nil && source == nil ? data ?? run.data.directory : nil
        let protected = dataDirectory.map { directory in
            ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).map { Paths.join(directory, $0) }
        } ?? []
        for (index, output) in textOutputs.enumerated() {
            let target = try OutputFile.check(output.path, inputs: inputs + protected)
            // A new file there named as a shard would be read as one of the dataset's from then on (and break it).
            if let dataDirectory, Preparer.isShardName(Paths.lastComponent(target)), OutputFile.sameFile(Paths.parent(target), dataDirectory) {
                throw EvalInputError(message: "\(output.path): \(output.option) would put a file named as a shard into the data directory "
                                     + "\(dataDirectory), which reads it as one of the dataset's from then on; give another name or directory")
            }
            for other in textOutputs[..<index] where OutputFile.sameFile(other.path, output.path) {
                throw EvalInputError(message: "\(output.path): \(other.option) and \(output.option) name the same file; give each its own")
            }
        }
        if !textOutputs.isEmpty { RemoveOnSignal.install() }
        // Options for what only seq2seq models do would be ignored without a word.
        // (--max-decode 0, decoding none, is true of every model.)
        let seq2seqOnly = decoding.given + [maxDecode.flatMap { $0 == 0 ? nil : "--max-decode" }, bleuTokenize.map { _ in "--bleu-tokenize" }]
            .compactMap { $0 }
        if let option = seq2seqOnly.first, run.model.kind.dataTask != .seq2seq {
            throw EvalInputError(message: "\(option) is for seq2seq models, which decode translations, and \(path) is \(run.model.kind.withArticle) "
                                          + "model: leave it out")
        }
        try decoding.checkBeamSettings()
        if let first = textOutputs.first, run.model.kind.dataTask != .seq2seq {
            throw EvalInputError(message: "\(first.option) writes text of the decoded examples (hypotheses, or their references or sources), and \(path) is \(run.model.kind.withArticle) model, "
                                          + "which decodes none (they are for seq2seq models)")
        }
        let batch = batchSize ?? run.training.batchSize
        try withMPI { runtime in
            let world = runtime.world
            try threads.apply(world: world)
            var temporary: String?
            defer { if let temporary { try? FileManager.default.removeItem(atPath: temporary) } }
            // Each rank reads the checkpoint and the data; a refusal on any rank stops every rank with a sentence.
            let (model, evaluated) = try togetherOnEveryRank(world, "checkpoint and data checks") {
                let (evaluated, made) = try dataSplit(run: run, header: header, checkpoint: path)
                temporary = made
                // The run's batch_size (derived from a token budget, it can be large) only as far as this rank's share
                // of the split fills it; batches never hold more rows than that share.
                let (model, _) = try Checkpoint.loadModel(path, maxBatch: batchSize ?? evaluationRows(batchSize: batch, samples: evaluated.samples,
                                                                                                        worldSize: world.size))
                try check(evaluated, against: header, checkpoint: path)
                return (model, evaluated)
            }
            // The data's tokenizer is the checkpoint's (checked), or the only one there is for a checkpoint stored without.
            model.specialTokens = evaluated.tokenizer.specialTokens
            var plan = EvaluationPlan(batchSize: batch, sourceLength: run.data.sourceLength, targetLength: run.data.targetLength,
                                      decodeSamples: maxDecode ?? .max, decoding: decoding.method)
            plan.masking = run.evaluationMasking(tokenizer: evaluated.tokenizer)
            plan.bleuTokenization = bleuTokenize ?? run.eval.bleuTokenize
            plan.gatherTexts = !textOutputs.isEmpty
            // Each rank read its own --checkpoint and data (node-local paths, say): the sums below combine only what
            // is the same on every rank.
            var options = ContentDigest()
            options.add("\(plan)")
            try requireRanksAgree(world, on: [("the checkpoint (its config and parameters)", model.contentDigest),
                                              ("the data evaluated (its shards' content, or the text's)", evaluated.contentDigest),
                                              ("the evaluation options", options.value)],
                                  hint: "the same --checkpoint, data and options on every rank?")
            let result = try evaluate(model, on: evaluated, plan: plan, world: world)
            if world.rank == 0 {
                // Text is named by its files: the temporary shards it became are gone by the time anyone reads this.
                let textFiles = [text, source, target].compactMap { $0 }
                var report = EvalReport(checkpoint: path, step: header.state.step,
                                        data: textFiles.isEmpty ? evaluated.directory : textFiles.joined(separator: ", "),
                                        split: textFiles.isEmpty ? evaluated.split : "text",
                                        result: result, decoding: evaluated.task == .seq2seq ? (decoding.decode ?? .greedy).rawValue : nil,
                                        beamSize: decoding.decode == .beam ? decoding.beamWidth : nil,
                                        lengthPenalty: decoding.decode == .beam ? decoding.penalty : nil)
                if run.model.kind == .encoderOnly { report.counted = "masked positions (BERT's recipe, mlm.eval_seed \(run.mlm.evalSeed))" }
                print(json ? try jsonLine(report) : report.table())
                // After the scores are shown: a file that cannot be written does not cost them.
                if !textOutputs.isEmpty { try write(result.texts ?? DecodedTexts(), inputs: inputs + protected) }
            }
        }
    }

    /// Writes the files asked for with --hypotheses, --references and --sources (rank 0), each line one example, as
    /// one set (`OutputFile.writeAll`): a signal, or an error while they are written (a full disk), leaves them all new
    /// or all as they were, never this run's hypotheses beside another's references. (Only a rename the system refuses
    /// part-way through, an immutable file say, leaves those renamed before it new; the error names them.) A path that
    /// is a symbolic link is written through, as a single file would be.
    private func write(_ texts: DecodedTexts, inputs: [String]) throws {
        try OutputFile.writeAll(textOutputs.map(\.path), inputs: inputs, throughLinks: true) { index, temporary in
            try OutputFile.fill(temporary, with: Foundation.Data(texts[keyPath: textOutputs[index].lines].map { $0 + "\n" }.joined().utf8))
        }
    }

    /// The split to evaluate: shards from a directory, or text tokenized into temporary shards (removed on every
    /// path by the caller, or here when this throws). Errors about text name the user's files, not the shards.
    private func dataSplit(run: RunConfig, header: Checkpoint.Header, checkpoint: String) throws -> (DataSplit, String?) {
        let isLM = run.model.kind.readsTokenStream
        // The context length, for a language model's windows; seq2seq data ignores it.
        let sequenceLength = run.data.targetLength
        guard text != nil || source != nil else {
            let directory = data ?? run.data.directory
            // The run's own directory, as its config gave it: relative to where the run was started, perhaps not here.
            if data == nil, directory.isEmpty {
                throw EvalInputError(message: "\(checkpoint) stores no data.directory (an imported model, say): give --data DIR, or text with "
                                              + (run.model.kind.readsTokenStream ? "--text FILE" : "--source FILE --target FILE"))
            }
            if data == nil, !FileManager.default.fileExists(atPath: directory) {
                throw DataError(file: directory, "no such data directory: it \(Paths.whyMissing(directory)) (the data.directory \(checkpoint)'s run "
                                + "was trained on\(directory.hasPrefix("/") ? "" : ", relative to where that run was started")); give the data with --data")
            }
            // The task first: lm data too short for one window is the other task, not an empty split.
            if let first = try DataSplit.firstShard(directory: directory, split: split) {
                try requireTask(first.task, file: first.path, header: header, checkpoint: checkpoint)
            }
            return (try DataSplit(directory: directory, split: split, sequenceLength: sequenceLength), nil)
        }
        guard let tokenizer = header.tokenizer else {
            throw EvalInputError(message: "the checkpoint holds no tokenizer, so text cannot be tokenized as in training; prepare shards instead")
        }
        if text != nil && !isLM { throw EvalInputError(message: "--text is for language models; this checkpoint is seq2seq (use --source/--target)") }
        if source != nil && isLM { throw EvalInputError(message: "--source/--target are for seq2seq models; this checkpoint is a language model (use --text)") }
        let inputs = [text, source, target].compactMap { $0 }
        // Every rank tokenizes the text into shards of its own (node-local temporary storage, cheap next to
        // evaluating them); the same input gives every rank the same shards, or the same error.
        let directory = NSTemporaryDirectory() + "ddp-eval-" + UUID().uuidString
        RemoveOnSignal.install(removing: directory)
        do {
            var options = PrepareOptions(output: directory)
            options.fixedTokenizer = tokenizer
            options.validFraction = 0
            options.inputs = inputs
            options.textLimit = Prepare.textLimit()
            if let text {
                let summary = try Preparer.prepareLM(inputs: [text], options: options)
                guard summary.trainTokens > sequenceLength else {
                    throw DataError(file: text, "holds \(summary.trainTokens) tokens once tokenized, fewer than the \(sequenceLength + 1) "
                                                + "that one evaluation window needs (the run's data.target_length \(sequenceLength), plus one)")
                }
            } else if let source, let target {
                let limit = min(run.data.sourceLength, run.data.targetLength) - 1
                options.maxPairTokens = limit
                options.failOnLong = true
                options.limitSource = "the \(limit) tokens a side the checkpoint's model takes "
                    + "(data.source_length \(run.data.sourceLength) and data.target_length \(run.data.targetLength), EOS and BOS included)"
                _ = try Preparer.prepareSeq2Seq(pairs: try Preparer.parallelPairs(source: source, target: target, limit: options.textLimit),
                                              options: options)
            }
            return (try DataSplit(directory: directory, split: "train", sequenceLength: sequenceLength), directory)
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw EvalInputError(message: "\(error)".replacingOccurrences(of: directory, with: inputs.joined(separator: ", ")))
        }
    }

    /// Data of `task` (in `file`) must be what the checkpoint's model takes.
    private func requireTask(_ task: DatasetTask, file: String, header: Checkpoint.Header, checkpoint: String) throws {
        let expected = header.config.model.kind.dataTask
        guard task != expected else { return }
        throw EvalInputError(message: "\(file): holds \(task.rawValue) data, but \(checkpoint) has model.kind "
                                      + "\(header.config.model.kind.rawValue), which takes \(expected.rawValue) data")
    }

    /// Data must be the model's task, in the checkpoint's tokenizer.
    private func check(_ split: DataSplit, against header: Checkpoint.Header, checkpoint: String) throws {
        let file = split.shards.first?.path ?? split.directory
        try requireTask(split.task, file: file, header: header, checkpoint: checkpoint)
        if let tokenizer = header.tokenizer, tokenizer != split.tokenizer {
            throw EvalInputError(message: "\(file): its tokenizer (\(split.tokenizer.kind), \(split.tokenizer.vocabularySize) tokens) differs from "
                                          + "the one \(checkpoint) was trained with (\(tokenizer.kind), \(tokenizer.vocabularySize) tokens)")
        }
        guard split.tokenizer.vocabularySize <= header.config.model.vocabSize else {
            throw EvalInputError(message: "\(file): its tokenizer has \(split.tokenizer.vocabularySize) tokens, more than the model's vocab_size \(header.config.model.vocabSize)")
        }
    }
}

extension BLEUTokenization: ExpressibleByArgument {}

/// Input every rank found unusable together (they all read the same files or got rank 0's message).
struct EvalInputError: ErrorOnEveryRank, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// What `ddp eval` reports: a table, or with --json one object whose numbers are null where they are not finite
/// (the perplexity of a diverged model) or not computed (a seq2seq evaluation with --max-decode 0). BLEU and chrF
/// come with sacrebleu's signatures (`bleu_signature`, `chrf_signature`, as sacrebleu's own JSON has them), and
/// `bleu_note` says why BLEU is 0 whatever the output when it is (no hypothesis with four words).
struct EvalReport: Encodable {
    let checkpoint: String
    let step: Int
    let data: String
    let split: String
    let loss: JSONNumber
    let perplexity: JSONNumber
    let token_accuracy: JSONNumber
    let tokens: Int
    let sequences: Int
    let exact_match: JSONNumber?
    let bleu: JSONNumber?
    let bleu_signature: String?
    let bleu_note: String?
    let chrf: JSONNumber?
    let chrf_signature: String?
    let decoded: Int?
    let decoding: String?
    let beam_size: Int?
    let length_penalty: Double?
    private let result: Evaluation
    private let isSeq2Seq: Bool
    /// What `tokens` counts, for the table: target tokens, or an encoder-only model's masked positions.
    var counted = "target tokens"

    init(checkpoint: String, step: Int, data: String, split: String, result: Evaluation, decoding: String?, beamSize: Int?,
         lengthPenalty: Double?) {
        isSeq2Seq = decoding != nil
        self.checkpoint = checkpoint
        self.step = step
        self.data = data
        self.split = split
        self.result = result
        loss = JSONNumber(result.loss)
        perplexity = JSONNumber(result.perplexity)
        token_accuracy = JSONNumber(result.tokenAccuracy)
        tokens = result.targetTokens
        sequences = result.sequences
        exact_match = result.exactMatch.map(JSONNumber.init)
        bleu = result.bleu.map(JSONNumber.init)
        bleu_signature = result.bleuSignature
        bleu_note = result.bleuNote
        chrf = result.chrF.map(JSONNumber.init)
        chrf_signature = result.chrFSignature
        decoded = result.decoded
        self.decoding = result.decoded == nil ? nil : decoding
        beam_size = result.decoded == nil ? nil : beamSize
        length_penalty = result.decoded == nil ? nil : lengthPenalty
    }

    enum CodingKeys: String, CodingKey {
        case checkpoint, step, data, split, loss, perplexity, token_accuracy, tokens, sequences, exact_match, bleu,
             bleu_signature, bleu_note, chrf, chrf_signature, decoded, decoding, beam_size, length_penalty
    }

    /// Every key, always: a seq2seq number that was not computed (no example decoded) is null, not missing.
    func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(checkpoint, forKey: .checkpoint)
        try container.encode(step, forKey: .step)
        try container.encode(data, forKey: .data)
        try container.encode(split, forKey: .split)
        try container.encode(loss, forKey: .loss)
        try container.encode(perplexity, forKey: .perplexity)
        try container.encode(token_accuracy, forKey: .token_accuracy)
        try container.encode(tokens, forKey: .tokens)
        try container.encode(sequences, forKey: .sequences)
        guard isSeq2Seq else { return }
        try container.encode(exact_match, forKey: .exact_match)
        try container.encode(bleu, forKey: .bleu)
        try container.encode(bleu_signature, forKey: .bleu_signature)
        try container.encode(bleu_note, forKey: .bleu_note)
        try container.encode(chrf, forKey: .chrf)
        try container.encode(chrf_signature, forKey: .chrf_signature)
        try container.encode(decoded ?? 0, forKey: .decoded)
        try container.encode(decoding, forKey: .decoding)
        try container.encode(beam_size, forKey: .beam_size)
        try container.encode(length_penalty, forKey: .length_penalty)
    }

    func table() -> String {
        var lines = ["checkpoint      \(checkpoint) (step \(step))",
                     "data            \(data), split \(split): \(sequences) sequences, \(tokens) \(counted)",
                     String(format: "loss            %.6f", result.loss),
                     String(format: "perplexity      %.4f", result.perplexity),
                     String(format: "token accuracy  %.4f", result.tokenAccuracy)]
        if let exact = result.exactMatch, let decoded {
            let how = beam_size.map { "beam \($0), length penalty \(length_penalty ?? 0)" } ?? "greedy"
            lines.append(String(format: "exact match     %.4f", exact) + "  (\(decoded) decoded, \(how))")
            lines.append(String(format: "BLEU            %.2f", result.bleu ?? 0) + "  BLEU|\(result.bleuSignature ?? "")"
                         + (result.bleuNote.map { "\n                (0 whatever the output: \($0))" } ?? ""))
            lines.append(String(format: "chrF            %.2f", result.chrF ?? 0) + "  chrF2|\(result.chrFSignature ?? "")")
        }
        return lines.joined(separator: "\n")
    }
}

/// A number in JSON output: itself when finite, null otherwise (JSON has no infinity or NaN).
struct JSONNumber: Encodable {
    let value: Double
    init(_ value: Double) { self.value = value }
    func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        if value.isFinite { try container.encode(value) } else { try container.encodeNil() }
    }
}
