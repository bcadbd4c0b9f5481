import Foundation
@testable import TensorBoard
import XCTest

/// TFRecord framing and the event file's records (TensorBoard's own reader is run by the ddp tests when installed).
final class EventFileTests: XCTestCase {
    func testCRC32CKnownValues() {
        // The check value of CRC-32C (RFC 3720, B.4) and an all-zero block.
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
    }

    func testRecordsFrameTheEncodedEvents() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("events-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let writer = try EventFileWriter(directory: directory, wallTime: Date(timeIntervalSince1970: 1_700_000_000))
        try writer.add(step: 7, scalars: ["loss": 2.5, "lr": 1e-3], wallTime: Date(timeIntervalSince1970: 1_700_000_001))
        XCTAssertTrue((writer.path as NSString).lastPathComponent.hasPrefix("events.out.tfevents.1700000000."))
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: writer.path)))
        var events: [Tensorboard_Event] = [], offset = 0
        while offset < bytes.count {
            let header = Array(bytes[offset..<(offset + 8)])
            let length = Int(header.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
            let lengthCRC = bytes[(offset + 8)..<(offset + 12)].enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) }
            XCTAssertEqual(lengthCRC, CRC32C.masked(header), "the length's checksum")
            let payload = Array(bytes[(offset + 12)..<(offset + 12 + length)])
            let payloadCRC = bytes[(offset + 12 + length)..<(offset + 16 + length)].enumerated()
                .reduce(UInt32(0)) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) }
            XCTAssertEqual(payloadCRC, CRC32C.masked(payload), "the payload's checksum")
            events.append(try Tensorboard_Event(serializedBytes: payload))
            offset += 16 + length
        }
        XCTAssertEqual(events.count, 3)
        XCTAssertEqual(events[0].fileVersion, "brain.Event:2")
        XCTAssertEqual(events[1].sessionLog.status, .start)
        XCTAssertEqual(events[1].step, 7)
        XCTAssertEqual(events[2].step, 7)
        XCTAssertEqual(events[2].wallTime, 1_700_000_001)
        XCTAssertEqual(events[2].summary.value.map(\.tag), ["loss", "lr"])
        XCTAssertEqual(events[2].summary.value.map(\.simpleValue), [2.5, Float(1e-3)])
    }
}
