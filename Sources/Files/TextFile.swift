import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Text from any editor: UTF-8 files whose lines end in LF, CRLF or CR (a lone CR is an old Mac line end).
public enum TextFile {
    /// The file's text; an error naming the file when it cannot be read or is not UTF-8. The path must be a regular
    /// file (through links), and with `largest` (bytes) one of at most that size, checked before anything is read: a
    /// FIFO without a writer cannot hang the reader, nor a device feed it without end, nor a huge file exhaust memory.
    /// A pipe a shell hands over (`<(zcat corpus.gz)`, `/dev/stdin` on a pipe) is read too, since it has a writer, and
    /// `largest` is then checked as it comes. An error for exceeding `largest` has `isTooLarge`.
    public static func read(_ path: String, largest: Int? = nil) throws(FileError) -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { throw FileError(path, Paths.whyMissing(path)) }
        guard !isDirectory.boolValue else { throw FileError(path, "is a directory, not a text file") }
        // The file a link names is what is read (the link's own attributes say only that it is a link).
        let size: Int?
        do { size = try Paths.regularFileSize(path) } catch where Paths.isAnonymousPipe(path) { size = nil }
        if let largest, let size, size > largest { throw FileError(path, "is \(size) bytes, more than the \(largest) read", isTooLarge: true) }
        guard let handle = FileHandle(forReadingAtPath: path) else { throw FileError(path, "cannot be opened for reading (permissions?)") }
        defer { try? handle.close() }
        if size == nil {
            do { return try readAll(of: handle, named: path, largest: largest ?? .max) } catch let error as FileError { throw error } catch {
                throw FileError(path, "cannot be read: \(describe(error))")
            }
        }
        let data: Foundation.Data
        do { data = try handle.readToEnd() ?? Foundation.Data() } catch { throw FileError(path, "cannot be read: \(describe(error))") }
        guard var text = String(data: data, encoding: .utf8) else { throw FileError(path, "is not UTF-8 text") }
        if text.hasPrefix("\u{FEFF}") { text.removeFirst() }  // a byte-order mark some editors write
        return text
    }

    /// The lines of `text`, without their line ends: LF, CRLF and CR each end a line, and no line holds a "\r".
    /// A final line end does not start another line ("a\nb\n" is two lines; "" is none).
    public static func lines(_ text: String) -> [String] {
        var lines: [String] = []
        var current: [UInt8] = []
        var previousWasCR = false
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\r"):
                lines.append(String(decoding: current, as: UTF8.self))
                current.removeAll(keepingCapacity: true)
                previousWasCR = true
                continue
            case UInt8(ascii: "\n"):
                if !previousWasCR {
                    lines.append(String(decoding: current, as: UTF8.self))
                    current.removeAll(keepingCapacity: true)
                }
            default:
                current.append(byte)
            }
            previousWasCR = false
        }
        if !current.isEmpty { lines.append(String(decoding: current, as: UTF8.self)) }
        return lines
    }

    /// Reads `handle` (standard input, say) to its end, calling `body` with each line as it completes: the same line
    /// ends as `lines(_:)`, a byte-order mark before the first line dropped, and nil for a line that is not UTF-8.
    /// Each read returns what is there (a line typed at a terminal is handled at once, not after 64 KiB or the end);
    /// a handle that cannot be read (standard input closed, or a directory) is a `FileError` naming `name`, not a
    /// trap (as `FileHandle.availableData` would be).
    public static func forEachLine(of handle: FileHandle, named name: String = "standard input", _ body: (String?) throws -> Void) throws {
        var pending: [UInt8] = []
        var previousWasCR = false, first = true
        func emit() throws {
            if first && pending.starts(with: [0xEF, 0xBB, 0xBF]) { pending.removeFirst(3) }
            first = false
            try body(String(validating: pending, as: UTF8.self))
            pending.removeAll(keepingCapacity: true)
        }
        try forEachChunk(of: handle, named: name) { chunk in
            for byte in chunk {
                switch byte {
                case UInt8(ascii: "\r"):
                    try emit()
                    previousWasCR = true
                    continue
                case UInt8(ascii: "\n"):
                    if !previousWasCR { try emit() }
                default:
                    pending.append(byte)
                }
                previousWasCR = false
            }
        }
        if !pending.isEmpty { try emit() }
    }

    /// All of `handle`'s text (standard input, say) up to its end: UTF-8, a byte-order mark dropped, line ends kept as
    /// they are. A `FileError` naming `name` when it cannot be read, holds more than `largest` bytes (said as soon as
    /// that many have come, not after the end) or is not UTF-8.
    public static func readAll(of handle: FileHandle, named name: String = "standard input", largest: Int) throws -> String {
        var bytes: [UInt8] = []
        try forEachChunk(of: handle, named: name) { chunk in
            bytes += chunk
            if bytes.count > largest { throw FileError(name, "holds more than the \(largest) bytes read", isTooLarge: true) }
        }
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw FileError(name, "is not UTF-8 text") }
        return text
    }

    /// Reads `handle` to its end with read(2), calling `body` with what each read returns as it arrives; a handle
    /// that cannot be read (closed, or a directory) is a `FileError` naming `name`, not a trap (as
    /// `FileHandle.availableData` would be).
    private static func forEachChunk(of handle: FileHandle, named name: String, _ body: (ArraySlice<UInt8>) throws -> Void) throws {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(handle.fileDescriptor, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK {
                    // A non-blocking descriptor (inherited so): wait until there is something to read.
                    var waiting = pollfd(fd: handle.fileDescriptor, events: Int16(POLLIN), revents: 0)
                    _ = poll(&waiting, 1, -1)
                    continue
                }
                throw FileError(name, "cannot be read: \(String(cString: strerror(errno)))")
            }
            if count == 0 { return }
            try body(buffer[..<count])
        }
    }

    /// The lines of the file at `path` (see `lines(_:)`).
    public static func readLines(_ path: String) throws(FileError) -> [String] {
        lines(try read(path))
    }
}
