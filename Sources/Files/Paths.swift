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

    /// Why `path`, which `FileManager.fileExists` does not find, is missing, as a clause that follows the path:
    /// "does not exist", or for a symbolic link "is a link to T, which does not exist" (a dangling link) or "is a link
    /// that loops" (a link that names itself, directly or through other links).
    public static func whyMissing(_ path: String) -> String {
        var current = path
        var seen: Set<String> = []
        while let target = try? FileManager.default.destinationOfSymbolicLink(atPath: current) {
            // A relative target is relative to the link's own directory.
            let next = target.hasPrefix("/") ? target : join(parent(current), target)
            guard seen.insert(normalized(current)).inserted, seen.count <= 40 else { return "is a link that loops" }
            current = next
        }
        return current == path ? "does not exist" : "is a link to \(current), which does not exist"
    }

    /// `path` with `.`, `..` and repeated separators resolved lexically.
    public static func normalized(_ path: String) -> String {
        FilePath(path).lexicallyNormalized().string
    }
}
