import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An exclusive lock on a lock file (`flock(2)`), held until the value is released or the process ends. On a local
/// file system the kernel releases it when its holder dies, killed or not; on a network file system a lock can outlive
/// a node that crashed (NFS keeps it until that client comes back or its lease runs out), and some mount only lock
/// within a node (NFS `local_lock`). The file itself stays (removing it would let two processes lock two different
/// files of one name). What holds the lock is written into the file, so a refusal can say who.
public final class FileLock: @unchecked Sendable {
    /// The lock file's path.
    public let path: String
    private var descriptor: Int32

    /// The outcome of `acquire` when the file system has no locks (some network file systems): the lock is not held.
    public let unsupported: String?

    private init(path: String, descriptor: Int32, unsupported: String?) {
        self.path = path
        self.descriptor = descriptor
        self.unsupported = unsupported
    }

    /// Locks `path` (created when missing, never through a link), writing `holder` into it ("ddp train, process 1234 on
    /// node7 since ..."). Throws a `FileError` naming the file when another process holds the lock (with what that
    /// process wrote), or when the path is a link, a directory, a FIFO or a device. On a file system without locks
    /// the lock is returned not held, with `unsupported` saying so. A holder text naming "process N on HOST" lets a
    /// refusal drop a dead local process's stale text and tell another node's holder (`isHeldOnAnotherNode`).
    public static func acquire(_ path: String, holder: String) throws(FileError) -> FileLock {
        // O_NOFOLLOW: a link would lock (and write into) a file elsewhere. O_NONBLOCK: a FIFO cannot make open wait.
        var descriptor = Glibc.open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0o644)
        var code = errno
        if descriptor < 0 && code == EACCES && Paths.entryType(path) != nil {
            // Another user's lock file in a shared directory: it locks as well read-only (the holder is not written).
            descriptor = Glibc.open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
            if descriptor < 0 { code = errno }
        }
        guard descriptor >= 0 else {
            if code == ELOOP { throw FileError(path, "is a symbolic link; a lock file is never written through a link: remove it") }
            if code == EISDIR { throw FileError(path, "is a directory, where the lock file goes: remove it") }
            if code == EACCES {
                throw FileError(path, Paths.entryType(path) == nil ? "cannot be created (permission denied): its directory must be writable to you"
                                                                   : "cannot be opened (permission denied): it belongs to someone who has not let you read it")
            }
            throw FileError(path, "cannot be opened as a lock file: \(String(cString: strerror(code)))")
        }
        var status = stat()
        guard fstat(descriptor, &status) == 0, status.st_mode & S_IFMT == S_IFREG else {
            close(descriptor)
            throw FileError(path, "is not a regular file (a FIFO, device or socket), where the lock file goes: remove it")
        }
        while flock(descriptor, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            if code == EINTR { continue }
            if code == EWOULDBLOCK {
                let holder = Self.holder(descriptor)
                close(descriptor)
                throw FileError(path, "is locked by \(holder.isEmpty ? "another process" : holder)")
            }
            if code == ENOLCK || code == EOPNOTSUPP || code == ENOSYS {
                close(descriptor)
                return FileLock(path: path, descriptor: -1, unsupported: "locks are not supported here (\(String(cString: strerror(code))))")
            }
            close(descriptor)
            throw FileError(path, "cannot be locked: \(String(cString: strerror(code)))")
        }
        // A file with other names (a snapshot of the run directory made with cp -al, a user's file linked in): the lock
        // holds (it is the file's, whatever its names), but the holder is not written, which would change those names.
        guard status.st_nlink <= 1 else { return FileLock(path: path, descriptor: descriptor, unsupported: nil) }
        // Held: say by whom (best effort: the lock is what counts, the text only explains a refusal). A lock file
        // that cannot be written keeps an earlier holder's text, which a refusal must not take for the holder's:
        // emptied where it can be, and otherwise told stale by the process id it names (see `holder`).
        let text = Array((holder + "\n").utf8)
        if ftruncate(descriptor, 0) == 0 {
            _ = text.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
        }
        return FileLock(path: path, descriptor: descriptor, unsupported: nil)
    }

    /// What the holder wrote into the lock file (at most 512 bytes of it, one line), or "" when there is nothing or
    /// it cannot be the holder's: text naming a process of this node ("process N on HOST") that no longer exists
    /// was left by an earlier holder (the lock file could not be written by the one holding it now).
    private static func holder(_ descriptor: Int32) -> String {
        var bytes = [UInt8](repeating: 0, count: 512)
        let count = bytes.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return "" }
        let line = bytes[..<count].prefix { $0 != UInt8(ascii: "\n") }
        let text = String(decoding: line, as: UTF8.self).filter { !$0.isNewline && $0.asciiValue.map { $0 >= 32 } ?? true }
        if let process = process(in: text), process.host == ProcessInfo.processInfo.hostName, kill(process.id, 0) != 0 && errno == ESRCH {
            return ""
        }
        return text
    }

    /// The process a holder's text names as "process N on HOST" (the form `acquire`'s callers write), if it does.
    private static func process(in text: String) -> (id: Int32, host: String)? {
        guard let match = text.firstMatch(of: /process ([0-9]+) on ([^ ,]+)/), let id = Int32(match.1) else { return nil }
        return (id, String(match.2))
    }

    /// Whether `error` is `acquire`'s refusal for a lock held by a process of another node (by its holder's text): one
    /// a network file system may have kept for a node that crashed, which the kernel here cannot vouch for.
    public static func isHeldOnAnotherNode(_ error: FileError) -> Bool {
        guard error.message.hasPrefix("is locked by"), let process = process(in: error.message) else { return false }
        return process.host != ProcessInfo.processInfo.hostName
    }

    /// Whether this value holds the lock.
    public var isHeld: Bool { descriptor >= 0 }

    /// Gives the lock up (closing the file releases it); the file stays.
    public func release() {
        guard descriptor >= 0 else { return }
        close(descriptor)
        descriptor = -1
    }

    deinit { release() }
}
