import Files
import Foundation

/// A run directory: `checkpoint-NNNNNNNN.h5` files, `latest` (the newest one's name) and `metrics.jsonl`.
///
/// The rules `ddp train` keeps (rank 0 applies them before any step):
/// - a fresh run never writes into a directory that holds an earlier run (a checkpoint, `latest` or metrics) unless
///   told to overwrite it, which removes those files first and says so;
/// - `--resume` continues from `latest` and is an error when there is none; resume-if-present starts fresh then;
/// - the path must be a directory, or not exist yet (it is created).
public struct RunDirectory: Sendable {
    public let path: String

    public init(path: String) { self.path = path }

    /// Files of an earlier run in the directory: checkpoints, `latest`, metrics (names, sorted).
    public func earlierRunFiles() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.filter { ($0.hasPrefix("checkpoint-") && $0.hasSuffix(".h5")) || $0 == Checkpoint.latestName || $0 == "metrics.jsonl" }
            .sorted()
    }

    /// Applies the rules for `resume` and `overwrite`; returns the checkpoint to resume from, or "" for a fresh start.
    public func prepare(resume: ResumeMode, overwrite: Bool, log: (String) -> Void) throws -> String {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue {
            throw TrainingError("\(path): the run directory is a file; give a directory with --run-dir")
        }
        let latest = try Checkpoint.latest(in: path)
        switch resume {
        case .required:
            guard let latest else {
                throw TrainingError("\(path): nothing to resume (no '\(Checkpoint.latestName)' checkpoint); start the run without --resume, "
                                    + "or use --resume-if-present in job scripts that may start fresh")
            }
            return latest
        case .ifPresent:
            if let latest { return latest }
            log("no checkpoint in \(path): starting a fresh run")
        case .fresh:
            break
        }
        let earlier = earlierRunFiles()
        guard !earlier.isEmpty else { return "" }
        guard overwrite else {
            let step = latest.flatMap { try? Checkpoint.readHeader($0).state.step }.map { " (its latest checkpoint is at step \($0))" } ?? ""
            throw TrainingError("\(path) holds an earlier run\(step): \(earlier.prefix(4).joined(separator: ", "))"
                                + "\(earlier.count > 4 ? ", ..." : ""). Continue it with --resume, start over with --overwrite "
                                + "(which deletes those files), or give another --run-dir")
        }
        for name in earlier {
            let file = Paths.join(path, name)
            do { try FileManager.default.removeItem(atPath: file) } catch {
                throw TrainingError("\(file): cannot remove it for --overwrite: \(describe(error))")
            }
        }
        log("--overwrite: removed the earlier run's \(earlier.joined(separator: ", ")) from \(path)")
        return ""
    }
}
