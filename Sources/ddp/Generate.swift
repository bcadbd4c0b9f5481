import Basics
import ArgumentParser
import Data
import Files
import Foundation
import Kernels
import Training
import Transformer

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sample from a language model, translate with an encoder-decoder model, or fill masks with an encoder-only model.",
        discussion: """
            Decoding is incremental with a key/value cache: each new token costs one position of the decoder.

            Language model (decoder-only): continues --prompt (--prompt - reads it from standard input), printing \
            the continuation as it is generated. \
            --temperature 0 is greedy; --top-k and --top-p restrict sampling to the most likely tokens; --seed makes \
            it repeatable. Generation stops at --max-tokens, at EOS, or when the context reaches the model's max_length.

            Encoder-decoder: translates --input, or every line of standard input, one output line per input line.

            Encoder-only (masked language model): --prompt is text in which each [MASK] stands for one token; \
            prints, for each mask in order, the --top-k most likely tokens (default 5) with their probabilities, \
            then the text with every mask filled by its most likely token.

            Examples:
              ddp generate --checkpoint runs/gpt-small --prompt "ROMEO:" --temperature 0.8 --top-k 40 --max-tokens 200
              ddp generate --checkpoint runs/reverse --input "hello world" --decode beam --beam-size 4
              printf 'abc\\nxyz\\n' | ddp generate --checkpoint runs/reverse
              ddp generate --checkpoint runs/bert-small --prompt "the [MASK]at sat on the mat"
            """
    )

    @OptionGroup var checkpoint: CheckpointOption

    @Option(help: "Language model: the text to continue (default: a new document). Fill-mask: text with [MASK]s. -: the text on standard input, without its final line end.")
    var prompt: String?

    @Option(help: "Encoder-decoder: the text to translate (default: each line of standard input).")
    var input: String?

    @Option(parsing: .unconditional, help: "Tokens to generate at most, 1 or more (default: 256 for a language model, target_length - 1 for translation).")
    var maxTokens: Int?

    @Option(parsing: .unconditional, help: "Language model: sampling temperature, 0 or more (0: greedy; default 1).")
    var temperature: Double?

    @Option(parsing: .unconditional, help: "Language model: sample only among the k most likely tokens (default 0: all); fill-mask: how many tokens to list per mask (default 5, 0: all).")
    var topK: Int?

    @Option(parsing: .unconditional, help: "Language model: sample only among the most likely tokens whose probability reaches p, in (0, 1] (default 1: all).")
    var topP: Double?

    @Option(parsing: .unconditional, help: "Language model: random seed for sampling (default 0).")
    var seed: UInt64?

    @OptionGroup var decoding: DecodingOptions

    @OptionGroup var threads: ThreadsOption

    /// The prompt standard input may hold at most (bytes); a model's context is far shorter anyway.
    static let largestPrompt = 1 << 20

    func validate() throws {
        guard prompt == nil || input == nil else {
            throw ValidationError("give --prompt (language model or fill-mask) or --input (translation), not both.")
        }
        if let maxTokens, maxTokens < 1 { throw ValidationError("--max-tokens must be 1 or more, got \(maxTokens).") }
        if let temperature, !(temperature >= 0 && temperature.isFinite) {
            throw ValidationError("--temperature must be a finite number, 0 (greedy) or more, got \(temperature).")
        }
        if let topK, topK < 0 { throw ValidationError("--top-k must be 0 (all) or more, got \(topK).") }
        if let topP, !(topP > 0 && topP <= 1) { throw ValidationError("--top-p must be more than 0 and at most 1, got \(topP).") }
    }

    /// The options given that `kind`'s generation does not use (each would be ignored without a word).
    private func unused(by kind: ModelConfig.Kind) -> [String] {
        let sampling = [temperature.map { _ in "--temperature" }, topP.map { _ in "--top-p" }, seed.map { _ in "--seed" }].compactMap { $0 }
        switch kind {
        case .decoderOnly: return decoding.given
        case .encoderOnly: return (maxTokens.map { _ in ["--max-tokens"] } ?? []) + sampling + decoding.given
        case .encoderDecoder: return sampling + (topK.map { _ in ["--top-k"] } ?? [])
        }
    }

    func run() throws {
        try requireOneProcess("ddp generate")
        try threads.apply()
        let path = try checkpoint.resolve()
        let (model, header) = try Checkpoint.loadModel(path, maxBatch: 1)
        guard let tokenizer = header.tokenizer else {
            throw RunError("\(path) holds no tokenizer, so text cannot be turned into tokens as in training")
        }
        let kind = model.config.kind
        if let option = unused(by: kind).first {
            let does = [ModelConfig.Kind.decoderOnly: "continues text by sampling (--temperature, --top-k, --top-p, --seed, --max-tokens)",
                        .encoderOnly: "fills masks (--prompt, --top-k)",
                        .encoderDecoder: "translates greedily or by beam search (--decode, --beam-size, --length-penalty, --max-tokens)"][kind]!
            throw RunError("\(option) does not apply to \(path), \(kind.withArticle) model, which \(does): leave it out")
        }
        if kind == .encoderDecoder { try decoding.checkBeamSettings() }
        // A language model's greedy decoding draws nothing: what shapes or seeds a draw would be ignored.
        if kind == .decoderOnly, temperature == 0,
           let option = [topK.map { _ in "--top-k" }, topP.map { _ in "--top-p" }, seed.map { _ in "--seed" }].compactMap({ $0 }).first {
            throw RunError("\(option) does nothing with --temperature 0 (greedy: the most likely token, nothing is drawn); leave one of them out")
        }
        switch kind {
        case .decoderOnly:
            guard input == nil else { throw RunError("\(path) is a language model: give --prompt, not --input") }
            try continueText(model, tokenizer: tokenizer)
        case .encoderOnly:
            guard input == nil, prompt != nil else {
                throw RunError("\(path) is an encoder-only (masked language) model: give --prompt with [MASK] where tokens are to be filled in")
            }
            try fillMasks(try promptText(), model: model, tokenizer: tokenizer)
        case .encoderDecoder:
            guard prompt == nil else { throw RunError("\(path) is an encoder-decoder model: give --input (or lines on standard input), not --prompt") }
            try translate(model, tokenizer: tokenizer, run: header.config)
        }
    }

    /// The prompt: --prompt, standard input read to its end for `--prompt -` (its final line end dropped), or (a
    /// language model's) "": a new document.
    /// Standard input is read only when asked: a job's inherited pipe that never closes cannot hang generate, nor a
    /// loop's `while read` lose its lines to it. Text waiting there without `--prompt -` is pointed out, not taken.
    private func promptText() throws -> String {
        if prompt == "-" {
            if standardInputWasClosed { throw FileError("standard input", "cannot be read: it is closed (--prompt - reads the prompt from it)") }
            // Without the line end `echo` or an editor puts after the last line.
            var text = try TextFile.readAll(of: FileHandle.standardInput, largest: Self.largestPrompt)
            if text.last?.isNewline == true { text.removeLast() }  // ("\r\n" is one Character)
            return text
        }
        if let prompt { return prompt }
        var status = stat()
        if !standardInputWasClosed, isatty(0) == 0, fstat(0, &status) == 0, status.st_mode & S_IFMT != S_IFCHR {
            printToStandardError("ddp generate: no --prompt: starting a new document (standard input is not read; give --prompt - to continue its text)")
        }
        return ""
    }

    private func continueText(_ model: TransformerModel, tokenizer: Tokenizer) throws {
        let sampling = SamplingSettings(temperature: temperature ?? 1, topK: topK ?? 0, topP: topP ?? 1, seed: seed ?? 0)
        var stream = UTF8Stream()
        let tokens = tokenizer.encode(try promptText())
        let source = prompt == "-" ? "standard input" : "--prompt"
        try tokenizer.refusePadding(in: tokens, what: "the text", of: source)
        // (An empty prompt starts from EOS, one token.)
        guard max(1, tokens.count) <= model.config.maxLength else {
            throw GenerateInputError(message: "\(source) is \(tokens.count) tokens; the model takes at most \(model.config.maxLength)")
        }
        try model.generate(prompt: tokens, maxTokens: maxTokens ?? 256, sampling: sampling) { token in
            stream.write(tokenizer.bytes([token]))
            return stream.failure == nil  // output that cannot be written ends the generation
        }
        stream.finish()
        if let failure = stream.failure { throw failure }
    }

    /// Prints the most likely tokens for each [MASK] of `prompt`, then the prompt filled with the first choices.
    private func fillMasks(_ prompt: String, model: TransformerModel, tokenizer: Tokenizer) throws {
        let marker = Tokenizer.maskMarker
        let tokens = tokenizer.encodeMarkingMasks(prompt)
        let source = self.prompt == "-" ? "standard input" : "--prompt"
        try tokenizer.refusePadding(in: tokens, what: "the text", of: source)
        guard tokens.contains(tokenizer.maskToken) else {
            throw GenerateInputError(message: "\(source) has no \(marker): write \(marker) where a token is to be filled in")
        }
        guard tokens.count <= model.maxSourceLength else {
            throw GenerateInputError(message: "\(source) is \(tokens.count) tokens; the model takes at most \(model.maxSourceLength)")
        }
        let choices = try model.fillMask(tokens, maskToken: tokenizer.maskToken,
                                         candidates: tokenizer.ordinaryTokens, topK: topK ?? 5)
        var filled = tokens
        for (number, (position, candidates)) in zip(tokens.indices.filter { tokens[$0] == tokenizer.maskToken }, choices).enumerated() {
            print("\(marker) \(number + 1) of \(choices.count) (token \(position + 1)):")
            for candidate in candidates {
                print(String(format: "  %.4f  ", candidate.probability) + quoted(tokenizer.displayText(candidate.token)) + "  (id \(candidate.token))")
            }
            filled[position] = candidates[0].token
        }
        print("filled: " + tokenizer.decode(filled))
    }

    /// A token's text in quotes, with control characters escaped, so spaces and newlines are visible.
    private func quoted(_ text: String) -> String {
        "\"" + text.unicodeScalars.map { $0.properties.generalCategory == .control || $0 == "\"" ? $0.escaped(asASCII: false) : String($0) }
            .joined() + "\""
    }

    private func translate(_ model: TransformerModel, tokenizer: Tokenizer, run: RunConfig) throws {
        let limit = maxTokens ?? run.data.targetLength - 1
        /// The translation of `text`, or an error sentence when the model cannot take it.
        func translation(_ text: String) throws -> Result<String, GenerateInputError> {
            let source = tokenizer.encode(text) + [tokenizer.specialTokens.eos]
            do { try tokenizer.refusePadding(in: source, what: "the text", of: "'\(text.prefix(40))\(text.count > 40 ? "..." : "")'") } catch {
                return .failure(GenerateInputError(message: "\(error)"))
            }
            guard source.count <= run.data.sourceLength else {
                return .failure(GenerateInputError(message: "'\(text.prefix(40))\(text.count > 40 ? "..." : "")' is \(source.count - 1) tokens; "
                                                            + "the model takes at most \(run.data.sourceLength - 1)"))
            }
            let output = try model.decode(source: source, batchSize: 1, sourceLength: source.count, maxTokens: limit, method: decoding.method)
            return .success(tokenizer.decode(output[0]))
        }
        if let input {
            print(try translation(input).get())
            return
        }
        // Standard input, line by line (LF, CRLF or CR): a line the model cannot take is reported on stderr and an
        // empty line keeps the output aligned with the input; the rest go on, and the exit status says it happened.
        var number = 0, failed = 0
        if standardInputWasClosed {
            throw FileError("standard input", "cannot be read: it is closed (give --input, or lines on standard input)")
        }
        try TextFile.forEachLine(of: FileHandle.standardInput) { line in
            number += 1
            switch try line.map(translation) ?? .failure(GenerateInputError(message: "is not UTF-8 text")) {
            case .success(let text): print(text)
            case .failure(let error):
                failed += 1
                print("")
                printToStandardError("ddp generate: standard input line \(number): \(error.message); skipped")
            }
            // Each translation as soon as it is made: a program that feeds a line and waits for its answer gets it.
            // Output that cannot be written (a full disk) ends the run with a sentence, not 300 translations lost.
            if fflush(nil) != 0 {
                throw RunError.standardOutputFailed(String(cString: strerror(errno)), "the translations are lost")
            }
        }
        if failed > 0 { throw GenerateInputError(message: "\(failed) of \(number) input line(s) could not be translated (see above)") }
    }
}

/// An input the model cannot take (too long for its source length).
struct GenerateInputError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// Writes generated bytes to standard output as text as they come, holding back only an unfinished UTF-8
/// character; bytes that are not UTF-8 (a model can sample any byte) become U+FFFD, as `Tokenizer.decode` does.
/// The first write that fails (a full disk, a closed pipe) is kept in `failure`, and nothing more is written.
struct UTF8Stream {
    private var pending: [UInt8] = []
    private(set) var failure: RunError?

    mutating func write(_ bytes: [UInt8]) {
        pending += bytes
        let complete = completePrefix(pending)
        guard complete > 0 else { return }
        emit(pending[..<complete])
        pending.removeFirst(complete)
    }

    mutating func finish() {
        emit(pending[...] + [UInt8(ascii: "\n")])
        pending = []
    }

    private mutating func emit(_ bytes: ArraySlice<UInt8>) {
        guard failure == nil else { return }
        do { try FileHandle.standardOutput.write(contentsOf: Foundation.Data(String(decoding: bytes, as: UTF8.self).utf8)) } catch {
            failure = RunError.standardOutputFailed(describe(error), "the generated text is lost")
        }
    }

    /// Length of the longest prefix that does not end inside a multi-byte character.
    private func completePrefix(_ bytes: [UInt8]) -> Int {
        guard !bytes.isEmpty else { return 0 }  // tokens without text (special ones, ids past the tokenizer's) so far
        // Look back at most 3 bytes for the lead byte of the last character.
        for back in 1...min(4, bytes.count) {
            let byte = bytes[bytes.count - back]
            if byte & 0xC0 == 0x80 { continue }  // a continuation byte
            let needed = byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1
            return needed > back ? bytes.count - back : bytes.count
        }
        return bytes.count  // not UTF-8 anyway: let it through
    }
}
