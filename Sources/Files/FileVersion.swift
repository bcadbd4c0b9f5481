import Foundation

/// Which file a path named, and which version of it, when it was read: device, inode, size and modification time
/// (links at the path's end followed). A file prepared again under the same name (written beside it and renamed over
/// it) has another inode, so a reader can tell the file it checked from the one that replaced it.
public struct FileVersion: Equatable, Sendable {
    let device: UInt64, inode: UInt64, size: UInt64
    let modified: Double

    /// The version `path` names now; nil when it cannot be read (gone, no permission).
    public static func of(_ path: String) -> FileVersion? {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: OutputFile.resolved(path)),
              let device = (attributes[.systemNumber] as? NSNumber)?.uint64Value,
              let inode = (attributes[.systemFileNumber] as? NSNumber)?.uint64Value,
              let size = (attributes[.size] as? NSNumber)?.uint64Value,
              let modified = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 else { return nil }
        return FileVersion(device: device, inode: inode, size: size, modified: modified)
    }
}
