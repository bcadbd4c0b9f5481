import Foundation
import Synchronization

/// A file that cannot be read or written as asked, naming the path and what is wrong.
public struct FileError: Error, CustomStringConvertible, Sendable {
    /// The path the error is about: a file, or the directory that holds one.
    public let path: String
    /// What is wrong with the file, as a clause that follows the path ("does not exist", "is not UTF-8 text").
    public let message: String
    /// Whether the file was refused only for holding more than the bytes its reader takes (`TextFile.read`'s
    /// `largest`), so that a caller can say why there is such a limit.
    public let isTooLarge: Bool

    /// An error about `path`; `message` continues the sentence after the path.
    public init(_ path: String, _ message: String, isTooLarge: Bool = false) {
        self.path = path
        self.message = message
        self.isTooLarge = isTooLarge
    }

    /// "path: message".
    public var description: String { "\(path): \(message)" }
}

/// Writing an output file without losing anything else.
///
/// Every command that writes a file goes through `write`: it replaces only a regular file (or creates one), refuses
/// a directory, anything that is not a regular file, and a path that is one of the command's own inputs; writes to a
/// temporary file with a unique name in the same directory (so the rename is atomic), removes it on every failure
/// path, syncs it to disk, and only then renames it over the target. A missing parent directory is reported as such.
public enum OutputFile {
    /// Checks that `path` may be written as a regular file: throws, with a sentence naming the path, when it is a
    /// directory or another non-regular file, the same file as one of `inputs` (also through links), or when its
    /// directory is missing or not a directory. Returns the path to write (a symbolic link's target).
    @discardableResult
    public static func check(_ path: String, inputs: [String] = []) throws(FileError) -> String {
        guard !path.isEmpty else { throw FileError("''", "an output path is empty") }
        // (Otherwise found only at the rename, after the work: "Not a directory".)
        guard !path.hasSuffix("/") else {
            throw FileError(path, "ends in '/', which names a directory; give the path of a file to write (without the '/')")
        }
        let target = resolved(path)
        if let kind = kind(of: target) {
            switch kind {
            case .typeDirectory:
                throw FileError(path, "is a directory; give the path of a file to write (a file inside it, for example)")
            case .typeRegular:
                break
            default:
                throw FileError(path, "exists and is not a regular file (\(Paths.words(for: kind))); it is not replaced")
            }
            for input in inputs where sameFile(target, input) {
                // (Callers list the files of the run a checkpoint is read from among the inputs: kept, though not read.)
                throw FileError(path, "is \(input == path ? "an input of this command, or a file of the run it reads from" : "the input \(input)"); "
                                      + "writing it would destroy what is read or kept — give another output path")
            }
        }
        let directory = Paths.parent(target)
        switch kind(of: directory) {
        case nil: throw FileError(path, "cannot be written: its directory \(directory) does not exist")
        case .typeDirectory?: break
        default: throw FileError(path, "cannot be written: \(directory) is not a directory")
        }
        return target
    }

    /// Writes `path` by calling `body` with a temporary path beside it, then syncs and renames the temporary over
    /// `path` (see the type's rules). The temporary file is removed when `body`, the sync or the rename throws.
    public static func write(_ path: String, inputs: [String] = [], _ body: (_ temporary: String) throws -> Void) throws {
        let target = try check(path, inputs: inputs)
        let directory = Paths.parent(target)
        removeLeftovers(of: target)
        let temporary = temporaryPath(for: target)
        var renamed = false
        writes.withLock { $0.inFlight[temporary] = path }
        defer {
            if !renamed { try? FileManager.default.removeItem(atPath: temporary) }
            writes.withLock { _ = $0.inFlight.removeValue(forKey: temporary) }
        }
        do { try body(temporary) } catch {
            // Name the file the user asked for, not the temporary (which is gone).
            throw FileError(path, "writing it failed, and nothing was replaced: "
                            + describe(error).replacingOccurrences(of: temporary, with: path))
        }
        do { try sync(temporary) } catch {
            throw FileError(path, "writing it failed, and nothing was replaced: "
                            + describe(error).replacingOccurrences(of: temporary, with: path))
        }
        // Under the lock a signal's handler takes, which then finds the file either in flight or in place.
        try writes.withLock { writes in
            guard rename(temporary, target) == 0 else {
                throw FileError(path, "cannot replace it with the written file: \(String(cString: strerror(errno)))")
            }
            renamed = true
            writes.inFlight[temporary] = nil
            writes.recordFinished(path)
        }
        try sync(directory)
    }

    /// Makes the regular file at `path` a file of its own when it has other names (hard links), before something is
    /// appended to it in place: a copy beside it, synced, renamed over `path` (`write`'s rules), so the other names keep
    /// the bytes they had. Returns how many names the file had (nil when it had only this one, and nothing was done).
    public static func separateHardLinks(_ path: String) throws -> Int? {
        var status = stat()
        guard lstat(path, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG, status.st_nlink > 1 else { return nil }
        try write(path) { temporary in
            do { try FileManager.default.copyItem(atPath: path, toPath: temporary) } catch {
                throw FileError(path, "cannot be copied to make it a file of its own: \(describe(error))")
            }
        }
        return Int(status.st_nlink)
    }

    /// Writes several files as one (a dataset's shards): `body` fills a temporary beside each of `paths` in turn,
    /// given its index; only when every one is written and synced are they renamed over their paths. When `body` or a
    /// sync throws, every temporary is removed and no path has been touched, so an earlier version of the set stays
    /// whole. (A rename that fails part of the way through, which a same-directory rename hardly does, leaves the
    /// files renamed so far in place, and names the one that failed and those already replaced.) Each path is checked
    /// as `check` does before anything is written; `body`'s own errors are rethrown (a `FileError` as one about the
    /// path, not its temporary, saying that none of the set was replaced).
    /// `obsolete`: files of the earlier set that the new one does not replace, removed as the new ones land.
    /// `throughLinks`: a path that is a symbolic link writes the file it points to, as `write` does (a command's
    /// several outputs, each the user's own file); without it, the link itself is replaced (a dataset's shards are
    /// their directory's own, and a link among them may point into another set). Errors and the signal handler name
    /// the paths as given.
    public static func writeAll(_ paths: [String], inputs: [String] = [], removing obsolete: [String] = [],
                                throughLinks: Bool = false, _ body: (_ index: Int, _ temporary: String) throws -> Void) throws {
        var targets: [String] = []
        for path in paths {
            let target = try check(path, inputs: inputs)
            targets.append(throughLinks ? target : path)
        }
        for target in targets { removeLeftovers(of: target) }
        let temporaries = targets.map(temporaryPath)
        var renamed = 0
        writes.withLock { writes in
            for (temporary, path) in zip(temporaries, paths) { writes.inFlight[temporary] = path }
        }
        defer {
            for temporary in temporaries[renamed...] { try? FileManager.default.removeItem(atPath: temporary) }
            writes.withLock { writes in
                for temporary in temporaries { writes.inFlight[temporary] = nil }
            }
        }
        for (index, (path, temporary)) in zip(paths, temporaries).enumerated() {
            do {
                try body(index, temporary)
                try sync(temporary)
            } catch let error as FileError {
                // Name the file the user asked for, not the temporary (which is gone), and say that none was
                // replaced. Other errors (about what was being written, say) pass unchanged.
                let none = paths.count == 1 ? "nothing was replaced" : "none of the \(paths.count) files written together was replaced"
                throw FileError(path, "writing it failed, and \(none): " + describe(error).replacingOccurrences(of: temporary, with: path))
            }
        }
        // The renames hold the lock a signal's handler takes (`removeTemporariesInFlight`): a signal then waits for
        // the whole set to be in place, instead of removing the temporaries not yet renamed and leaving half of it.
        try writes.withLock { writes in
            for (index, path) in paths.enumerated() {
                guard rename(temporaries[index], targets[index]) == 0 else {
                    let reason = String(cString: strerror(errno))
                    let replaced = paths[..<index].joined(separator: ", ")
                    throw FileError(path, "cannot replace it with the written file: \(reason)"
                                    + (index == 0 ? "; nothing was replaced" : "; the set is incomplete: \(replaced) already replaced"))
                }
                renamed += 1
                writes.inFlight[temporaries[index]] = nil
                writes.recordFinished(path)
            }
            // The earlier set's files the new one does not replace go under the same lock: a signal finds the old set
            // or the new one, never the new files beside old ones.
            for path in obsolete { unlink(path) }
        }
        for directory in Set(targets.map(Paths.parent)) { try sync(directory) }
    }

    /// A temporary beside `target`, named `.NAME.XXXXXXXX.tmp` (unique; what a later write's sweep recognises).
    public static func temporaryPath(for target: String) -> String {
        Paths.join(Paths.parent(target), ".\(Paths.lastComponent(target)).\(UUID().uuidString.prefix(8)).tmp")
    }

    /// Removes what a write of `target` killed outright (kill -9, a power cut) left beside it: temporaries named as
    /// `temporaryPath` names them, files or directories. (A write of the same target running at this moment in
    /// another process would lose its temporary and say so; two writers of one file are at odds anyway.)
    public static func removeLeftovers(of target: String) {
        let directory = Paths.parent(target), prefix = ".\(Paths.lastComponent(target))."
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasPrefix(prefix) && name.hasSuffix(".tmp") {
            let middle = name.dropFirst(prefix.count).dropLast(4)
            guard middle.count == 8, middle.allSatisfy(\.isHexDigit) else { continue }
            try? FileManager.default.removeItem(atPath: Paths.join(directory, name))
        }
    }

    /// What this process's writes are doing, for a signal's handler (`removeTemporariesInFlight`).
    private struct Writes {
        /// Temporaries being written now, each with the path it is written for.
        var inFlight: [String: String] = [:]
        /// Paths written and in place, in order (not writes into another write's temporary).
        var finished: [String] = []
        /// Directories `createDirectory` made, deepest first.
        var createdDirectories: [String] = []

        mutating func recordFinished(_ path: String) {
            if inFlight[path] == nil, !finished.contains(path) { finished.append(path) }
        }
    }

    private static let writes = Mutex(Writes())

    /// What a signal cut short: the paths whose writes it stopped (none of them replaced), and those written before it.
    public struct Interrupted: Sendable {
        public let unfinished: [String], finished: [String]
    }

    /// Runs `body`, which puts `path` in place by other means than `write` (a directory renamed over it), under the
    /// lock a signal's handler takes, and records `path` as written when `body` returns.
    public static func placing(_ path: String, _ body: () throws -> Void) throws {
        try writes.withLock { writes in
            try body()
            writes.recordFinished(path)
        }
    }

    /// Creates the directory `path` and the missing ones above it, and remembers them: an interrupted command's handler
    /// (`removeTemporariesInFlight`) and `removeCreatedDirectoriesIfEmpty` remove those still empty.
    public static func createDirectory(_ path: String) throws {
        var missing: [String] = [], current = Paths.withoutTrailingSeparators(path)
        while !current.isEmpty, current != "/", current != ".", !FileManager.default.fileExists(atPath: current),
              (try? FileManager.default.destinationOfSymbolicLink(atPath: current)) == nil {
            missing.append(current)
            current = Paths.parent(current)
        }
        // Recorded first: a signal while they are made removes those made so far (rmdir of one not yet made fails).
        writes.withLock { $0.createdDirectories += missing }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    /// Removes the directories `createDirectory` made that are still empty (deepest first; a directory that holds
    /// anything stays): what a command that fails leaves of its output's place.
    public static func removeCreatedDirectoriesIfEmpty() {
        writes.withLock { writes in
            for directory in writes.createdDirectories { rmdir(directory) }
            writes.createdDirectories.removeAll { !FileManager.default.fileExists(atPath: $0) }
        }
    }

    /// Removes every temporary a `write` is filling now and every directory `createDirectory` made that is empty then,
    /// and calls `body` with what was cut short and what was written before (`Interrupted`; paths sorted, written ones
    /// in order), still holding the lock every write takes to start and to put its file in place: when `body` ends the
    /// process, no write begins or lands before. For a command's SIGINT/SIGTERM handler, so that an interrupted write
    /// leaves nothing behind (the target itself is never partial).
    public static func removeTemporariesInFlight<Result>(then body: (Interrupted) -> Result) -> Result {
        writes.withLock { writes in
            for temporary in writes.inFlight.keys { unlink(temporary) }
            for directory in writes.createdDirectories { rmdir(directory) }
            // A write into another's temporary (a shard's file inside its set's) is for the outer write's path.
            let unfinished = Set(writes.inFlight.values.map { path in
                var target = path
                while let outer = writes.inFlight[target], outer != target { target = outer }
                return target
            }).sorted()
            writes.inFlight.removeAll()
            return body(Interrupted(unfinished: unfinished, finished: writes.finished))
        }
    }

    /// Writes `data` to `path` (see `write(_:inputs:_:)`).
    public static func write(_ path: String, data: Foundation.Data, inputs: [String] = []) throws {
        try write(path, inputs: inputs) { temporary in try fill(temporary, with: data) }
    }

    /// Writes `data` as the whole content of `temporary`, a path `write` or `writeAll` gave its body (an error names
    /// the temporary, which they replace by the file's own path).
    public static func fill(_ temporary: String, with data: Foundation.Data) throws(FileError) {
        // Straight into our own temporary, by the path as the system reads it: `createFile` would write a hidden
        // temporary of its own first, and a URL resolves "link/../x" by its text, elsewhere than rename and sync do.
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw FileError(temporary, "cannot be created: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        var written = 0
        let failure: Int32? = data.withUnsafeBytes { bytes in
            while written < bytes.count {
                let count = Glibc.write(descriptor, bytes.baseAddress! + written, bytes.count - written)
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { return count < 0 ? errno : ENOSPC }
                written += count
            }
            return nil
        }
        if let failure {
            throw FileError(temporary, "cannot be written (\(data.count) bytes): \(String(cString: strerror(failure)).lowercased())")
        }
    }

    /// Flushes a file's (or a directory's) data to disk.
    public static func sync(_ path: String) throws(FileError) {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw FileError(path, "cannot be opened to sync it to disk") }
        defer { try? handle.close() }
        do { try handle.synchronize() } catch { throw FileError(path, "syncing to disk failed: \(describe(error))") }
    }

    /// Whether two paths name the same file: an existing one by device and inode (hard and symbolic links included),
    /// one not there yet by its directory's device and inode and its name.
    public static func sameFile(_ a: String, _ b: String) -> Bool {
        let (first, second) = (resolved(a), resolved(b))
        if let one = identity(first), let other = identity(second) { return one == other }
        // A file not there yet (an output about to be written): the same name in the same directory, however each
        // path spells the directory ("x.txt" and "/work/x.txt" from /work, "d/../x.txt"). Names compare by their bytes,
        // as the system does ("é" composed and decomposed are two files).
        if let one = identity(Paths.parent(first)), let other = identity(Paths.parent(second)) {
            return one == other && Array(Paths.lastComponent(first).utf8) == Array(Paths.lastComponent(second).utf8)
        }
        return Paths.normalized(first) == Paths.normalized(second)
    }


    /// The file type at `path` (following symbolic links), or nil when nothing is there.
    static func kind(of path: String) -> FileAttributeType? {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: resolved(path)) else { return nil }
        return attributes[.type] as? FileAttributeType
    }

    /// Device and inode of what `path` names, links followed (a directory reached through a link is that directory).
    private static func identity(_ path: String) -> [UInt64]? {
        var status = stat()
        guard stat(path, &status) == 0 else { return nil }
        return [UInt64(status.st_dev), UInt64(status.st_ino)]
    }

    /// `path` with the links at its end followed, a chain of them too (the file they name is what gets written).
    static func resolved(_ path: String) -> String {
        // (Not normalised: "d/../x" is not "x" when d is itself a link.)
        let reached = Paths.followingLinks(path).path
        return reached == Paths.withoutTrailingSeparators(path) ? path : reached
    }
}

/// A Foundation or Codable error as a sentence: its reason without the domain and code (`NSCocoaErrorDomain
/// Code=...`) or the coding path's internals; other errors as they describe themselves.
public func describe(_ error: Error) -> String {
    if let error = error as? FileError { return error.description }
    if let error = error as? DecodingError {
        func key(_ context: DecodingError.Context, _ last: CodingKey? = nil) -> String {
            let path = (context.codingPath + (last.map { [$0] } ?? [])).map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }
            return path.isEmpty ? "the top level" : "key '\(path.joined(separator: ".").replacingOccurrences(of: ".[", with: "["))'"
        }
        switch error {
        case .keyNotFound(let missing, let context): return "\(key(context, missing)) is missing"
        case .typeMismatch(let type, let context): return "\(key(context)) is not \(describeType(type))"
        case .valueNotFound(let type, let context): return "\(key(context)) is null, expected \(describeType(type))"
        case .dataCorrupted(let context):
            return context.codingPath.isEmpty ? "not valid JSON" : "\(key(context)): \(context.debugDescription)"
        @unknown default: return "cannot be decoded"
        }
    }
    if error is EncodingError { return "a value cannot be encoded (a number that is not finite?)" }
    let nsError = error as NSError
    guard nsError.domain == NSCocoaErrorDomain || nsError.domain == NSPOSIXErrorDomain else { return "\(error)" }
    if let underlying = nsError.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain,
       let code = POSIXErrorCode(rawValue: Int32(underlying.code)) {
        return String(cString: strerror(code.rawValue))
    }
    if nsError.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(nsError.code))) }
    switch nsError.code {
    case NSFileNoSuchFileError, NSFileReadNoSuchFileError: return "no such file or directory"
    case NSFileWriteNoPermissionError, NSFileReadNoPermissionError: return "permission denied"
    case NSFileWriteOutOfSpaceError: return "no space left on device"
    case NSFileWriteVolumeReadOnlyError: return "read-only file system"
    default: return nsError.localizedFailureReason ?? nsError.localizedDescription
    }
}

/// What a value of `type` is, for a message: "an integer", "a number", "a string", ...
public func describeType(_ type: Any.Type) -> String {
    switch type {
    case is String.Type: return "a string"
    case is Bool.Type: return "true or false"
    case is Int.Type, is Int64.Type, is UInt64.Type, is Int32.Type: return "an integer"
    case is Double.Type, is Float.Type: return "a number"
    default:
        let name = "\(type)"
        return name == "Scalar" ? "a single value (not a list or a mapping)" : name == "Mapping" ? "a mapping of keys to values" : "of the expected kind (\(name))"
    }
}
