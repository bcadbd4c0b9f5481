@testable import Data
import Foundation
import TestSupport
import XCTest

/// How text is counted against the memory limit of `ddp prepare`, `eval --text` and `embed`.
final class TextLimitTests: XCTestCase {
    /// Lines as an editor counts them, whatever their ends; a final line end starts no line.
    func testLinesAreCountedAsAnEditorDoes() {
        let cases: [(String, Int)] = [("", 0), ("a", 1), ("a\n", 1), ("a\nb", 2), ("a\nb\n", 2), ("a\r\nb\r\n", 2), ("a\rb\r", 2),
                                      ("\n", 1), ("\n\n", 2), ("a\r\n\r\nb", 3), ("a\n\rb", 3)]
        for (text, lines) in cases { XCTAssertEqual(Preparer.lineCount(text), lines, "\(text.debugDescription)") }
    }

    /// A file over the limit is refused naming it, its line count and the limit's reason; one within it is read whole.
    func testTextOverTheLimitIsRefusedByName() throws {
        let directory = try makeTemporaryDirectory("text-limit")
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("lines.txt").path
        try String(repeating: "ab\r\n", count: 100).write(toFile: file, atomically: true, encoding: .utf8)
        // 400 bytes x 12 + 100 lines x 256 = 30,400 bytes.
        XCTAssertEqual(try Preparer.readText(file, limit: TextLimit(memory: 30_400, reason: "a test allows 30400 bytes")).count, 300)
        XCTAssertThrowsError(try Preparer.readText(file, limit: TextLimit(memory: 30_399, reason: "a test allows 30399 bytes"))) {
            XCTAssertEqual("\($0)", "\(file): is more text than fits in memory here: 100 lines in 400 bytes in all (text takes up to 12 bytes "
                           + "of memory per byte and 256 per line while it is tokenized, and a test allows 30399 bytes); give less text, "
                           + "or use a machine with more memory")
        }
    }
}
