import Basics
import Data
import XCTest

final class TokenizerTests: XCTestCase {
    private let texts = [
        "", "hello world", "Hello, World!\n\nSecond paragraph.\n", "  leading and trailing spaces  ",
        "naïve café — ünïcödé: 日本語のテキスト, emoji 🧪🚀 and combining e\u{301}", "\n", "tabs\tand\r\nwindows lines",
        "numbers 12345 and symbols #$%^&*()", String(repeating: "abc ", count: 50),
    ]

    func testByteTokenizerRoundTripsAnyText() {
        for text in texts {
            let ids = Tokenizer.byte.encode(text)
            XCTAssertEqual(ids.count, text.utf8.count)
            XCTAssertTrue(ids.allSatisfy { $0 >= 4 && $0 < 260 })
            XCTAssertEqual(Tokenizer.byte.decode(ids), text)
        }
        XCTAssertEqual(Tokenizer.byte.vocabularySize, 260)
        XCTAssertEqual(Tokenizer.byte.decode([SpecialTokens.standard.bos] + Tokenizer.byte.encode("a") + [SpecialTokens.standard.eos, SpecialTokens.standard.pad]), "a",
                       "special tokens decode to nothing")
    }

    /// A token's text for people: UTF-8 as it is, a byte that is no character alone as <0xNN> (fill-mask showed it as
    /// U+FFFD while the attention pictures wrote <0xNN>), special tokens empty.
    func testDisplayTextShowsBytesThatAreNotText() throws {
        let byte = Tokenizer.byte
        let lone = try XCTUnwrap((0..<Int32(byte.vocabularySize)).first { byte.bytes([$0]) == [0xE2] })
        XCTAssertEqual(byte.displayText(lone), "<0xE2>")
        XCTAssertEqual(byte.displayText(byte.encode("a")[0]), "a")
        XCTAssertEqual(byte.displayText(byte.specialTokens.eos), "")
    }

    func testBPERoundTripsAndCompresses() throws {
        let corpus = texts + (0..<200).map { "the quick brown fox jumps over the lazy dog number \($0 % 17) — ünïcödé" }
        let bpe = Tokenizer.bpe(BPE.train(texts: corpus, vocabularySize: 330))
        XCTAssertEqual(bpe.vocabularySize, 330)
        // Asking for more than the corpus supports stops when no pair occurs twice.
        let saturated = BPE.train(texts: corpus, vocabularySize: 5000)
        XCTAssertLessThan(saturated.merges.count, 5000 - 260)
        for text in texts + ["unseen words: zyxw 🦀 ümlaut", "the lazy fox"] {
            let ids = bpe.encode(text)
            XCTAssertTrue(ids.allSatisfy { $0 >= 4 && $0 < 330 })
            XCTAssertEqual(bpe.decode(ids), text, "BPE must round-trip \(text.debugDescription)")
        }
        let sentence = "the quick brown fox jumps over the lazy dog"
        XCTAssertLessThan(bpe.encode(sentence).count, sentence.utf8.count / 2, "BPE merges frequent pieces")
    }

    func testBPEIsDeterministicAndSerialises() throws {
        let corpus = (0..<300).map { "line \($0): some repeated words, some repeated words and \($0 * 7) more" }
        let first = BPE.train(texts: corpus, vocabularySize: 330)
        let second = BPE.train(texts: corpus, vocabularySize: 330)
        XCTAssertEqual(first, second)
        let tokenizer = Tokenizer.bpe(first)
        XCTAssertEqual(try Tokenizer(json: tokenizer.json), tokenizer)
        XCTAssertEqual(try Tokenizer(json: Tokenizer.byte.json), .byte)
    }

    func testBadTokenizerDescriptions() {
        for json in ["", "[]", #"{"kind":"wordpiece"}"#, #"{"kind":"bpe"}"#, #"{"kind":"bpe","merges":[[4,900]]}"#,
                     #"{"kind":"byte","vocab_size":300}"#] {
            XCTAssertThrowsError(try Tokenizer(json: json), json)
        }
    }
}
