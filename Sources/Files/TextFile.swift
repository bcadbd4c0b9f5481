import Foundation

/// Text from any editor: UTF-8 files whose lines end in LF, CRLF or CR (a lone CR is an old Mac line end).
public enum TextFile {
    /// The file's text; an error naming the file when it cannot be read or is not UTF-8.
    public static func read(_ path: String) throws(FileError) -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { throw FileError(path, "does not exist") }
        guard !isDirectory.boolValue else { throw FileError(path, "is a directory, not a text file") }
        guard let data = FileManager.default.contents(atPath: path) else { throw FileError(path, "cannot be read (permissions?)") }
        guard let text = String(data: data, encoding: .utf8) else { throw FileError(path, "is not UTF-8 text") }
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

    /// The lines of the file at `path` (see `lines(_:)`).
    public static func readLines(_ path: String) throws(FileError) -> [String] {
        lines(try read(path))
    }
}
