import Foundation
import SystemPackage

/// Path arithmetic on user-given paths through swift-system's `FilePath`. (Foundation's `NSString` path methods trap
/// on a one-character relative path such as `--output d` in swift-corelibs-foundation, so SwiftDDP never uses them.)
public enum Paths {
    /// `directory/name`.
    public static func join(_ directory: String, _ name: String) -> String {
        directory.isEmpty ? name : FilePath(directory).appending(name).string
    }

    /// The last component ("model.h5" of "runs/a/model.h5"; "" for "" or "/").
    public static func lastComponent(_ path: String) -> String {
        FilePath(path).lastComponent?.string ?? ""
    }

    /// The last component without its extension ("reverse" of "Configs/reverse.yaml").
    public static func stem(_ path: String) -> String {
        FilePath(path).stem ?? ""
    }

    /// The directory holding `path` ("runs/a" of "runs/a/model.h5"; "." for a bare name).
    public static func parent(_ path: String) -> String {
        let parent = FilePath(path).removingLastComponent().string
        return parent.isEmpty ? "." : parent
    }

    /// Symbolic links the system follows in one path before it gives up (Linux's limit, ELOOP).
    public static let linkLimit = 40

    /// `path` with the links of its last component followed as the system follows them: the path reached (the
    /// same path when it is not a link), or the reason it cannot be reached ("is a link that loops", "is a chain of
    /// more than 40 links"). A relative link target is taken from the link's own directory.
    public static func followingLinks(_ path: String) -> (path: String, problem: String?) {
        // A trailing separator would make readlink follow the link itself ("dir-link/").
        var current = withoutTrailingSeparators(path)
        // Links are told apart by file (device and inode), not by text: "d/../x" is not "x" when d is a link.
        var seen: Set<String> = []
        while let target = try? FileManager.default.destinationOfSymbolicLink(atPath: current) {
            let attributes = try? FileManager.default.attributesOfItem(atPath: current)
            let identity = (attributes?[.systemNumber] as? NSNumber).flatMap { device in
                (attributes?[.systemFileNumber] as? NSNumber).map { "\(device.intValue):\($0.intValue)" }
            } ?? "path " + normalized(current)  // (if the link went away meanwhile)
            guard seen.insert(identity).inserted else { return (current, "is a link that loops") }
            guard seen.count <= linkLimit else { return (current, "is a chain of more than \(linkLimit) links") }
            current = target.hasPrefix("/") ? target : parent(current) == "." ? target : join(parent(current), target)
        }
        return (current, nil)
    }

    /// Why `path`, which `FileManager.fileExists` does not find, is missing, as a clause that follows the path:
    /// "does not exist", or for a symbolic link "is a link to T, which does not exist" (a dangling link), "is a link
    /// that loops" (a link that names itself, directly or through other links) or "is a chain of more than 40 links";
    /// "ends in / but is not a directory" for a file named as a directory; for "-", how to give standard input.
    public static func whyMissing(_ path: String) -> String {
        let (reached, problem) = followingLinks(path)
        if let problem { return problem }
        // "name/" of something that is not a directory (the system's ENOTDIR).
        if path.hasSuffix("/"), FileManager.default.fileExists(atPath: reached) {
            return reached == withoutTrailingSeparators(path) ? "ends in / but is not a directory"
                : "ends in / but is a link to \(reached), which is not a directory"
        }
        // "-" is standard input to many tools; here every input is a path, and standard input's is /dev/stdin.
        if path == "-" { return "does not exist (for standard input, give /dev/stdin)" }
        return reached == withoutTrailingSeparators(path) ? "does not exist" : "is a link to \(reached), which does not exist"
    }

    /// The size in bytes of the regular file `path` names (through links, as the system follows them); a `FileError`
    /// naming the path when it is missing (`whyMissing`), a directory, or another kind of file (a FIFO, whose reading
    /// would wait for a writer; a device or a socket). Check before opening a file from elsewhere.
    public static func regularFileSize(_ path: String) throws(FileError) -> Int {
        let (reached, problem) = followingLinks(path)
        if let problem { throw FileError(path, problem) }
        if path.hasSuffix("/") { throw FileError(path, whyMissing(path)) }  // a regular file's name does not end in /
        // attributesOfItem does not follow a link in the last component; `reached` has none there.
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: reached) else {
            // Something the system reaches that has no path of its own (/dev/stdin on a pipe: /proc/self/fd/pipe:[N]).
            if FileManager.default.fileExists(atPath: path) { throw FileError(path, "is not a regular file (a pipe or another special file), so it is not read") }
            throw FileError(path, whyMissing(path))
        }
        switch attributes[.type] as? FileAttributeType {
        case .typeRegular?: return (attributes[.size] as? NSNumber)?.intValue ?? 0
        case .typeDirectory?: throw FileError(path, "is a directory, not a file")
        default: throw FileError(path, "is not a regular file (a FIFO, device or socket), so it is not read")
        }
    }

    /// Whether `path` reaches a pipe without a name (`/dev/fd/63` of a shell's `<(command)`, `/dev/stdin` on a pipe):
    /// unlike a FIFO, it was made with its writer, so reading it cannot wait for one that never comes.
    public static func isAnonymousPipe(_ path: String) -> Bool {
        let (reached, problem) = followingLinks(path)
        return problem == nil && reached != withoutTrailingSeparators(path) && lastComponent(reached).hasPrefix("pipe:[")
            && FileManager.default.fileExists(atPath: path)
    }

    /// A file type in words ("a regular file", "a character device").
    public static func words(for kind: FileAttributeType) -> String {
        switch kind {
        case .typeCharacterSpecial: return "a character device"
        case .typeBlockSpecial: return "a block device"
        case .typeSocket: return "a socket"
        case .typeSymbolicLink: return "a symbolic link"
        case .typeDirectory: return "a directory"
        case .typeRegular: return "a regular file"
        default: return "a FIFO or other special file"
        }
    }

    /// What is at `path`, links followed, in words ("a regular file", "a character device" for /dev/null): for a
    /// message about a path that should have been a directory.
    public static func kindInWords(_ path: String) -> String {
        guard let kind = (try? FileManager.default.attributesOfItem(atPath: followingLinks(path).path))?[.type] as? FileAttributeType else {
            return "not a directory"
        }
        return words(for: kind)
    }

    /// What `path` itself is (a link is `.typeSymbolicLink`, not followed), or nil when nothing is there.
    public static func entryType(_ path: String) -> FileAttributeType? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.type] as? FileAttributeType
    }

    /// Whether `name`, listed in `directory`, came from bytes that are not UTF-8: the listing shows them as U+FFFD,
    /// and that text names no file (a name that really holds U+FFFD does, and is not one).
    public static func isMangledName(_ name: String, in directory: String) -> Bool {
        name.contains("\u{FFFD}") && entryType(join(directory, name)) == nil
    }

    /// `path` without separators at its end ("runs/a/" is "runs/a"; "/" stays "/").
    public static func withoutTrailingSeparators(_ path: String) -> String {
        var result = Substring(path)
        while result.count > 1 && result.hasSuffix("/") { result = result.dropLast() }
        return String(result)
    }

    /// `path` with `.`, `..` and repeated separators resolved lexically.
    public static func normalized(_ path: String) -> String {
        FilePath(path).lexicallyNormalized().string
    }
}
