import Files
import Foundation
import SwiftProtobuf

/// An event file TensorBoard reads (`tensorboard --logdir DIR`, or its Python `EventAccumulator`): TFRecord framing
/// around `Event` protocol buffers, encoded by swift-protobuf from the generated code of `event.proto`. The file is
/// `events.out.tfevents.<seconds>.<host>.<pid>` in `directory`; each event is written to the file at once (one
/// write(2); no buffering), so a killed run loses nothing it reported.
public final class EventFileWriter {
    /// The file written.
    public let path: String
    private let handle: FileHandle
    /// Whether the session START is written (before the first scalars).
    private var started = false

    /// Creates a new event file in `directory` (which must exist) and writes its version record. Throws an
    /// `EventFileError` naming the file when it cannot be created or written.
    public init(directory: String, wallTime: Date = Date()) throws(EventFileError) {
        let seconds = Int(wallTime.timeIntervalSince1970)
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "localhost"
        path = Paths.join(directory, "events.out.tfevents.\(seconds).\(host).\(getpid())")
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
            throw EventFileError(path: path, message: "cannot be created")
        }
        self.handle = handle
        var first = Tensorboard_Event()
        first.wallTime = wallTime.timeIntervalSince1970
        first.fileVersion = "brain.Event:2"
        try append(first)
    }

    deinit { try? handle.close() }

    /// Appends one event at `step` holding `scalars` (tag → value; tags in sorted order), stamped `wallTime`. The
    /// first is preceded by a session START at its step, the attempt's first: TensorBoard then drops what earlier
    /// attempts (other files in the directory) logged at that step and after, as a resumed run writes those again.
    public func add(step: Int, scalars: [String: Double], wallTime: Date = Date()) throws(EventFileError) {
        if !started {
            var start = Tensorboard_Event()
            start.wallTime = wallTime.timeIntervalSince1970
            start.step = Int64(step)
            var session = Tensorboard_SessionLog()
            session.status = .start
            start.sessionLog = session
            try append(start)
            started = true
        }
        var event = Tensorboard_Event()
        event.wallTime = wallTime.timeIntervalSince1970
        event.step = Int64(step)
        var summary = Tensorboard_Summary()
        summary.value = scalars.keys.sorted().map { tag in
            var value = Tensorboard_Summary.Value()
            value.tag = tag
            value.simpleValue = Float(scalars[tag]!)
            return value
        }
        event.summary = summary
        try append(event)
    }

    private func append(_ event: Tensorboard_Event) throws(EventFileError) {
        do {
            let payload = try event.serializedBytes() as [UInt8]
            try handle.write(contentsOf: Data(Self.record(payload)))
        } catch {
            throw EventFileError(path: path, message: "cannot be written: \(describe(error))")
        }
    }

    /// One TFRecord: the payload's length (8 bytes, little-endian), the masked CRC-32C of those 8 bytes, the
    /// payload, the masked CRC-32C of the payload (TensorFlow's record_writer.cc).
    static func record(_ payload: [UInt8]) -> [UInt8] {
        let length = withUnsafeBytes(of: UInt64(payload.count).littleEndian, Array.init)
        func masked(_ bytes: [UInt8]) -> [UInt8] {
            withUnsafeBytes(of: CRC32C.masked(bytes).littleEndian, Array.init)
        }
        return length + masked(length) + payload + masked(payload)
    }
}

/// An event file that could not be created or written.
public struct EventFileError: Error, CustomStringConvertible, Sendable {
    /// The event file.
    public let path: String
    /// What went wrong, as a sentence fragment after the path.
    public let message: String
    /// "PATH: message".
    public var description: String { "\(path): \(message)" }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord checksums its records.
enum CRC32C {
    private static let table: [UInt32] = (0..<256).map { index in
        var crc = UInt32(index)
        for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
        return crc
    }

    /// The checksum of `bytes`.
    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }

    /// TFRecord's masked form: rotated right by 15 bits plus 0xA282EAD8.
    static func masked(_ bytes: [UInt8]) -> UInt32 {
        let crc = checksum(bytes)
        return ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
    }
}
