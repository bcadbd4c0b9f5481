import Basics
import XCTest

/// `ContentDigest`'s values are stored (a checkpoint's `data_digest`) and printed (`ddp inspect`'s content digest): they
/// must not change between builds, so they are pinned to values of an independent implementation (Python, from the
/// definition in ContentDigest.swift).
final class ContentDigestTests: XCTestCase {
    private func digest(_ bytes: [UInt8]) -> UInt64 {
        var digest = ContentDigest()
        bytes.withUnsafeBytes { digest.add($0) }
        return digest.value
    }

    func testValuesArePinned() {
        XCTAssertEqual(ContentDigest().value, 0xCBF2_9CE4_8422_2325, "nothing added: FNV-1a's offset basis")
        XCTAssertEqual(digest(Array(0..<20)), 0xE89F_E68F_5FE3_A82E, "two words and four bytes one by one")
        var text = ContentDigest()
        text.add("SwiftDDP")
        XCTAssertEqual(text.value, 0xCAE8_283B_6023_2435, "UTF-8 bytes, then their count as a little-endian word")
    }

    func testBlocksOfWholeWordsHashAsOneStream() {
        let bytes = (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        var split = ContentDigest()
        bytes[..<24].withUnsafeBytes { split.add($0) }
        bytes[24...].withUnsafeBytes { split.add($0) }
        XCTAssertEqual(split.value, digest(bytes))
    }

    func testEveryChangeShows() {
        let bytes = (0..<40).map { UInt8($0) }
        let original = digest(bytes)
        for position in bytes.indices {
            for bit in 0..<8 {
                var flipped = bytes
                flipped[position] ^= 1 << bit
                XCTAssertNotEqual(digest(flipped), original, "bit \(bit) of byte \(position)")
            }
        }
        var ab = ContentDigest(), a = ContentDigest()
        ab.add("ab"); ab.add("c")
        a.add("a"); a.add("bc")
        XCTAssertNotEqual(ab.value, a.value, "texts are delimited by their lengths")
    }
}
