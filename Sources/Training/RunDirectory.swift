import Files
import Foundation
import HDF5
#if canImport(Glibc)
import Glibc
#endif

/// A run directory: `checkpoint-NNNNNNNN.h5` files, `latest` (the newest one's name), `metrics.jsonl` and, with
/// `training.tensorboard`, TensorBoard event files.
///
/// The rules `ddp train` keeps (rank 0 applies them before any step):
/// - a fresh run never writes into a directory that holds an earlier run (a checkpoint, `latest` or metrics) unless
///   told to overwrite it, which removes those files first and says so;
/// - `--resume` continues from `latest` and is an error when there is none; resume-if-present starts fresh then,
///   unless the directory holds checkpoints without a `latest` (an error that names them);
/// - the path must be a directory, or not exist yet (it is created);
/// - one run at a time: the run holds a lock on `.ddp-train.lock` in the directory to its end, and a second run there
///   is refused while it does (the kernel drops the lock when the first ends, however it ends).
public struct RunDirectory: Sendable {
    /// The directory's path (`ddp train --run-dir`; by default runs/ and the config file's name without extension).
    public let path: String

    /// The run directory at `path`; nothing is checked or created until `prepare`.
    public init(path: String) { self.path = path }

    /// Files of an earlier run in the directory: checkpoints, `latest`, metrics and TensorBoard event files
    /// (`events.out.tfevents.<seconds>.<host>.<pid>`) (names, sorted). An empty `metrics.jsonl` (an attempt that stopped before its first
    /// step) records no run.
    public func earlierRunFiles() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        let metricsSize = (try? FileManager.default.attributesOfItem(atPath: Paths.join(path, "metrics.jsonl"))[.size] as? Int) ?? 0
        return names.filter { Self.isRunFileName($0) && ($0 != "metrics.jsonl" || metricsSize > 0) }.sorted()
    }

    /// Whether `name` is one a run writes and `--overwrite` removes: a checkpoint's exact name (checkpoint-<step>.h5:
    /// "checkpoint-notes.h5" is not the run's), `latest`, `metrics.jsonl` or an event file.
    static func isRunFileName(_ name: String) -> Bool {
        Checkpoint.step(ofCheckpointNamed: name) != nil || name == Checkpoint.latestName || name == "metrics.jsonl" || isEventFile(name)
    }

    /// Every file of a run in `directory` (full paths): its checkpoints, `latest`, metrics files (`metrics.jsonl` and
    /// the ones set aside), TensorBoard event files and the lock file, whatever their size: what commands that read a
    /// run (eval, embed, export, attention maps) never write over.
    public static func runFiles(in directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter {
            isRunFileName($0) || ($0.hasPrefix("metrics") && $0.hasSuffix(".jsonl")) || $0 == lockName
        }.sorted().map { Paths.join(directory, $0) }
    }

    /// Whether `name` is a TensorBoard event file training wrote (`training.tensorboard`): as `EventFileWriter` names
    /// them, `events.out.tfevents.<seconds>.<host>.<pid>`.
    static func isEventFile(_ name: String) -> Bool {
        name.wholeMatch(of: /events\.out\.tfevents\.[0-9]+\..+\.[0-9]+/) != nil
    }

    /// Applies the rules for `resume` and `overwrite`; returns the checkpoint to resume from ("" for a fresh start) and
    /// the run directory's lock, which the run holds to its end (the directory is created first when missing; another
    /// run holding the lock is an error naming it). Temporary files an interrupted checkpoint write left behind (`.checkpoint-*.tmp`, `.latest.*.tmp`) are removed
    /// first: they are this directory's own leftovers, never a usable checkpoint.
    public func prepare(resume: ResumeMode, overwrite: Bool, log: (String) -> Void) throws -> (resumeFrom: String, lock: FileLock) {
        try checkPath()
        // Directories this start creates (the run directory, and parents that were missing too), deepest first.
        var created: [String] = []
        var missing = Paths.withoutTrailingSeparators(path)
        while !FileManager.default.fileExists(atPath: missing) && missing != "." && missing != "/" {
            created.append(missing)
            missing = Paths.parent(missing)
        }
        // One run at a time: a second would remove the first's checkpoint writes in flight and interleave its own.
        let lock = try lockForThisRun()
        if let unsupported = lock.unsupported {
            log("note: \(lock.path) cannot be locked (\(unsupported)): nothing stops a second run from using \(path) at the same time")
        }
        do {
            return (try decide(resume: resume, overwrite: overwrite, log: log), lock)
        } catch {
            // A refused start leaves no directory it made (`--resume --run-dir typo/run`); rmdir removes only empty ones.
            if !created.isEmpty {
                lock.release()
                try? FileManager.default.removeItem(atPath: lock.path)
                for directory in created { _ = rmdir(directory) }
            }
            throw error
        }
    }

    /// The lock file `prepare` takes, in the run directory (it stays there; the lock goes with the process holding it).
    public static let lockName = ".ddp-train.lock"

    /// Creates the directory when missing and locks its `lockName`, naming this process as the holder; a `TrainingError`
    /// when another `ddp train` holds it (that process named).
    private func lockForThisRun() throws -> FileLock {
        do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
            throw TrainingError("\(path): the run directory cannot be created: \(describe(error))")
        }
        // ("process N on HOST": the form FileLock reads back to tell a stale text and another node's holder.)
        let holder = "ddp train, process \(ProcessInfo.processInfo.processIdentifier) on \(ProcessInfo.processInfo.hostName), "
            + "since \(ISO8601DateFormatter().string(from: Date()))"
        do { return try FileLock.acquire(Paths.join(path, Self.lockName), holder: holder) } catch {
            guard error.message.hasPrefix("is locked by") else { throw TrainingError("\(error)") }
            // On this node the kernel's lock is proof of a live holder; one taken on another node may have outlived it.
            let elsewhere = FileLock.isHeldOnAnotherNode(error)
            throw TrainingError("\(path) is in use by another run: its lock file \(error.path) \(error.message); two runs in one directory "
                                + "would overwrite each other's checkpoints. Wait for that run to end (or stop it), or give another --run-dir"
                                + (elsewhere ? " (if the holder was on a node that crashed, whose lock a network file system can keep, and no "
                                                + "run uses the directory, remove \(error.path))" : ""))
        }
    }

    /// Refuses a path that cannot become the run directory: a file, a dangling link, a path under a file.
    private func checkPath() throws {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue {
            throw TrainingError("\(path): the run directory is \(Paths.kindInWords(path)); give a directory with --run-dir")
        }
        // A dangling or looping link cannot become the run directory (creating it would fail at the first checkpoint).
        if !FileManager.default.fileExists(atPath: path),
           (try? FileManager.default.destinationOfSymbolicLink(atPath: Paths.withoutTrailingSeparators(path))) != nil {
            throw TrainingError("\(path): the run directory \(Paths.whyMissing(path)); give an existing directory or a new path with --run-dir")
        }
        // A path under a file cannot become a directory ("notes.txt/run").
        if !FileManager.default.fileExists(atPath: path) {
            var ancestor = Paths.parent(Paths.withoutTrailingSeparators(path))
            while !FileManager.default.fileExists(atPath: ancestor) && ancestor != "." && ancestor != "/" { ancestor = Paths.parent(ancestor) }
            if FileManager.default.fileExists(atPath: ancestor, isDirectory: &isDirectory), !isDirectory.boolValue {
                throw TrainingError("\(path): the run directory cannot be created: \(ancestor) is \(Paths.kindInWords(ancestor)), not a directory; give another --run-dir")
            }
        }
    }

    /// The rules for `resume` and `overwrite`, applied under the lock: the checkpoint to resume from, or "".
    private func decide(resume: ResumeMode, overwrite: Bool, log: (String) -> Void) throws -> String {
        removeInterruptedWrites(log: log)
        // Under the names a run writes and removes (checkpoints, latest, metrics, event files), only its files may be:
        // a directory, FIFO or device there is someone else's, which neither --overwrite nor checkpoint.keep removes.
        for name in earlierRunFiles() {
            let file = Paths.join(path, name)
            guard let type = Paths.entryType(file), type != .typeRegular, type != .typeSymbolicLink else { continue }
            throw TrainingError("\(file) is \(type == .typeDirectory ? "a directory" : "a FIFO, device or socket"), under a name a run writes "
                                + "its own files by; a run never removes or writes over it: move or rename it, or give another --run-dir")
        }
        // The run's own files are written in place: through a link they would change a file elsewhere.
        for name in [Checkpoint.latestName, "metrics.jsonl"] {
            let file = Paths.join(path, name)
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: file) {
                throw TrainingError("\(file) is a symbolic link (to \(target)); a run writes its \(name) itself and not through a link, which "
                                    + "would change the file it points to: replace the link with a copy of that file, or remove it")
            }
            // A FIFO would block the run when it opens metrics.jsonl (waiting for a reader), a device take its lines.
            // (`latest` is read as a small regular file, and its refusal names the checkpoints to go on from.)
            if name == "metrics.jsonl", let type = Paths.entryType(file), type != .typeRegular {
                throw TrainingError("\(file) is not a regular file (\(type == .typeDirectory ? "a directory" : "a FIFO, device or socket")); "
                                    + "a run writes its \(name) itself: remove it, or give another --run-dir")
            }
        }
        let latest: String?
        do { latest = try checkpointToResume(resume) } catch where resume == .fresh && overwrite {
            latest = nil  // a `latest` naming a missing file is one more thing --overwrite removes
        }
        switch resume {
        case .required:
            return latest!  // checkpointToResume throws when there is none
        case .ifPresent:
            if let latest { return latest }
            if earlierRunFiles().filter({ !Self.isEventFile($0) }) == ["metrics.jsonl"] {
                // An attempt that died before its first checkpoint: keep its metrics beside, start again (its event
                // files stay; the new attempt's session START hides their steps in TensorBoard).
                let kept = firstFreeName("metrics-without-checkpoint", extension: "jsonl")
                do { try FileManager.default.moveItem(atPath: Paths.join(path, "metrics.jsonl"), toPath: Paths.join(path, kept)) } catch {
                    throw TrainingError("\(path): cannot set aside metrics.jsonl of an attempt without a checkpoint: \(describe(error))")
                }
                log("no checkpoint in \(path): starting a fresh run (metrics of the attempt that wrote none are kept as \(kept))")
                return ""
            }
            log("no checkpoint in \(path): starting a fresh run")
        case .fresh:
            break
        }
        let earlier = earlierRunFiles()
        guard !earlier.isEmpty else { return "" }
        guard overwrite else {
            let hasLatest = earlier.contains(Checkpoint.latestName)
            let unnamed = hasLatest ? [] : Checkpoint.checkpointNames(in: path)
            let step = latest.flatMap { try? Checkpoint.readHeader($0).state.step }.map { " (its latest checkpoint is at step \($0))" } ?? ""
            // Checkpoints without a latest (deleted by hand): --resume needs latest to name the one to go on from.
            let resuming = hasLatest ? "Continue it with --resume, start"
                : unnamed.last.map { "To continue it, write the name of a checkpoint (\($0), say) into \(Paths.join(path, Checkpoint.latestName)) "
                                     + "and give --resume; start" } ?? "Start"
            throw TrainingError("\(path) holds an earlier run\(step): \(earlier.joined(separator: ", ")). " + resuming
                                + " over with --overwrite (which deletes those files), or give another --run-dir")
        }
        // Checked before anything is removed, so a refusal leaves the earlier run whole: a name that is not UTF-8
        // (which arrives with U+FFFD in place of its bytes, naming no file) cannot be removed by that name.
        if let odd = earlier.first(where: { Paths.isMangledName($0, in: path) }) {
            throw TrainingError("\(Paths.join(path, odd)): its name is not UTF-8 (shown with \u{FFFD}), so --overwrite cannot remove it; "
                                + "nothing was removed: rename or remove it yourself, or give another --run-dir")
        }
        // A file named like a checkpoint that is not HDF5 is not the run's (checked before anything is removed).
        for name in earlier where Checkpoint.step(ofCheckpointNamed: name) != nil && Paths.entryType(Paths.join(path, name)) == .typeRegular {
            guard File.isHDF5(Paths.join(path, name)) else {
                throw TrainingError("\(Paths.join(path, name)) is named like a checkpoint but is not one (not an HDF5 file); --overwrite removes only "
                                    + "a run's own files and nothing was removed: move or rename it, or give another --run-dir")
            }
        }
        // unlink, never a recursive removal: only files (and links, not what they point to) go.
        for name in earlier {
            let file = Paths.join(path, name)
            guard unlink(file) == 0 else {
                throw TrainingError("\(file): cannot remove it for --overwrite: \(String(cString: strerror(errno)))")
            }
        }
        log("--overwrite: removed the earlier run's \(earlier.joined(separator: ", ")) from \(path)")
        return ""
    }

    /// The checkpoint `latest` names (nil when there is none), read without changing anything: for `.required`, none is
    /// an error; for any resume, so are checkpoints without a `latest` (deleted by hand: which one to go on from is the
    /// user's to say, and neither "nothing to resume" nor a fresh start over them is true). A damaged `latest` is an
    /// error naming the checkpoints the directory holds (`Checkpoint.latest`).
    public func checkpointToResume(_ resume: ResumeMode) throws -> String? {
        let latest = try Checkpoint.latest(in: path, forTraining: true)
        if resume != .fresh, latest == nil, !Checkpoint.checkpointNames(in: path).isEmpty {
            throw TrainingError("\(Paths.join(path, Checkpoint.latestName)) is missing, so nothing names the checkpoint to resume from"
                                + Checkpoint.otherCheckpoints(in: path, besides: "", forTraining: true))
        }
        if resume == .required, latest == nil {
            throw TrainingError("\(path): nothing to resume (no '\(Checkpoint.latestName)' checkpoint); start the run without --resume, "
                                + "or use --resume-if-present in job scripts that may start fresh")
        }
        return latest
    }

    /// Removes the temporary files of checkpoint writes that were killed (`OutputFile` names them `.NAME.XXXXXXXX.tmp`).
    private func removeInterruptedWrites(log: (String) -> Void) {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).filter {
            ($0.hasPrefix(".checkpoint-") || $0.hasPrefix(".\(Checkpoint.latestName).")) && $0.hasSuffix(".tmp")
        }
        for name in names { try? FileManager.default.removeItem(atPath: Paths.join(path, name)) }
        if !names.isEmpty { log("removed \(names.count) temporary file(s) an interrupted checkpoint write left in \(path)") }
    }

    /// `stem.extension`, or `stem-2.extension`, ... : the first name not taken in the directory.
    private func firstFreeName(_ stem: String, extension suffix: String) -> String {
        var candidate = "\(stem).\(suffix)", number = 1
        while FileManager.default.fileExists(atPath: Paths.join(path, candidate)) {
            number += 1
            candidate = "\(stem)-\(number).\(suffix)"
        }
        return candidate
    }
}
