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

            Language model (decoder-only): continues --prompt, printing the continuation as it is generated. \
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

    @Option(help: "Language model: the text to continue (empty: start a new document).")
    var prompt: String?

    @Option(help: "Encoder-decoder: the text to translate (default: each line of standard input).")
    var input: String?

    @Option(help: "Tokens to generate at most (default: 256 for a language model, target_length - 1 for translation).")
    var maxTokens: Int?

    @Option(help: "Sampling temperature (0: greedy).")
    var temperature = 1.0

    @Option(help: "Sample only among the k most likely tokens (0: all); fill-mask: how many tokens to list per mask (default 5, 0: all).")
    var topK: Int?

    @Option(help: "Sample only among the most likely tokens whose probability reaches p (1: all).")
    var topP = 1.0

    @Option(help: "Random seed for sampling.")
    var seed: UInt64 = 0

    @OptionGroup var decoding: DecodingOptions

    @OptionGroup var threads: ThreadsOption

    func validate() throws {
        guard prompt == nil || input == nil else {
            throw ValidationError("give --prompt (language model or fill-mask) or --input (translation), not both.")
        }
        if let maxTokens, maxTokens < 0 { throw ValidationError("--max-tokens must be 0 or more, got \(maxTokens).") }
        if let topK, topK < 0 { throw ValidationError("--top-k must be 0 (all) or more, got \(topK).") }
    }

    func run() throws {
        try requireOneProcess("ddp generate")
        threads.apply()
        let path = try checkpoint.resolve()
        let (model, header) = try Checkpoint.loadModel(path, maxBatch: 1)
        guard let tokenizer = header.tokenizer else {
            throw RunError("\(path) holds no tokenizer, so text cannot be turned into tokens as in training")
        }
        switch model.config.kind {
        case .decoderOnly:
            guard input == nil else { throw RunError("\(path) is a language model: give --prompt, not --input") }
            try continueText(model, tokenizer: tokenizer)
        case .encoderOnly:
            guard input == nil, let prompt else {
                throw RunError("\(path) is an encoder-only (masked language) model: give --prompt with [MASK] where tokens are to be filled in")
            }
            try fillMasks(prompt, model: model, tokenizer: tokenizer)
        case .encoderDecoder:
            guard prompt == nil else { throw RunError("\(path) is an encoder-decoder model: give --input (or lines on standard input), not --prompt") }
            try translate(model, tokenizer: tokenizer, run: header.config)
        }
    }

    private func continueText(_ model: TransformerModel, tokenizer: Tokenizer) throws {
        let sampling = SamplingSettings(temperature: temperature, topK: topK ?? 0, topP: topP, seed: seed)
        var stream = UTF8Stream()
        let tokens = tokenizer.encode(prompt ?? "")
        try tokenizer.refusePadding(in: tokens, what: "the text", of: "--prompt")
        try model.generate(prompt: tokens, maxTokens: maxTokens ?? 256, sampling: sampling) { token in
            stream.write(tokenizer.bytes([token]))
            return true
        }
        stream.finish()
    }

    /// Prints the most likely tokens for each [MASK] of `prompt`, then the prompt filled with the first choices.
    private func fillMasks(_ prompt: String, model: TransformerModel, tokenizer: Tokenizer) throws {
        let marker = Tokenizer.maskMarker
        let tokens = tokenizer.encodeMarkingMasks(prompt)
        try tokenizer.refusePadding(in: tokens, what: "the text", of: "--prompt")
        guard tokens.contains(tokenizer.maskToken) else {
            throw GenerateInputError(message: "--prompt has no \(marker): write \(marker) where a token is to be filled in")
        }
        guard tokens.count <= model.maxSourceLength else {
            throw GenerateInputError(message: "--prompt is \(tokens.count) tokens; the model takes at most \(model.maxSourceLength)")
        }
        let choices = try model.fillMask(tokens, maskToken: tokenizer.maskToken,
                                         candidates: tokenizer.ordinaryTokens, topK: topK ?? 5)
        var filled = tokens
        for (number, (position, candidates)) in zip(tokens.indices.filter { tokens[$0] == tokenizer.maskToken }, choices).enumerated() {
            print("\(marker) \(number + 1) of \(choices.count) (token \(position + 1)):")
            for candidate in candidates {
                print(String(format: "  %.4f  ", candidate.probability) + quoted(tokenizer.decode([candidate.token])) + "  (id \(candidate.token))")
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
            flushStandardOutput()
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
struct UTF8Stream {
    private var pending: [UInt8] = []

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

    private func emit(_ bytes: ArraySlice<UInt8>) {
        FileHandle.standardOutput.write(Foundation.Data(String(decoding: bytes, as: UTF8.self).utf8))
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
