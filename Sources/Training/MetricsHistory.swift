import Files
import Foundation

/// A run directory's `metrics.jsonl` read back: the numeric fields of its update lines and evaluation lines, by
/// step. A resumed run appends again from its checkpoint's step: when an update line's step is not past the last one
/// read, the lines read before at that step and later are dropped (as TensorBoard drops them at a session start), so
/// what remains is the history the run went on from. Lines that are not JSON objects with an integer `step` (a line
/// cut short by a kill, say) are skipped and counted.
public struct MetricsHistory: Sendable {
    /// The run directory it came from.
    public let directory: String
    /// Update lines (those with `loss`): field → [(step, value)] in step order.
    public private(set) var updates: [String: [(step: Int, value: Double)]] = [:]
    /// Evaluation lines (those with `valid_loss`): field → [(step, value)] in step order.
    public private(set) var evaluations: [String: [(step: Int, value: Double)]] = [:]
    /// Lines skipped as unreadable.
    public private(set) var skippedLines = 0
    /// Lines read.
    public private(set) var lines = 0

    /// The largest metrics file read: 256 MiB, about a million lines (what a million updates write).
    public static let maximumBytes = 256 << 20

    /// Reads `directory`/metrics.jsonl, keeping the fields named in `fields` (all numeric fields when nil). Throws a
    /// `FileError` naming the file when it is missing, not a regular file (a link, a FIFO, a device), unreadable or
    /// larger than `maximumBytes`; at most that many bytes are ever read.
    public init(directory: String, fields: Set<String>? = nil) throws(FileError) {
        self.directory = directory
        let path = Paths.join(directory, "metrics.jsonl")
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) else {
            throw FileError(directory, "not a run directory (no such directory)")
        }
        guard isDirectory.boolValue else { throw FileError(directory, "not a run directory (it is \(Paths.kindInWords(directory)))") }
        // attributesOfItem does not follow a symbolic link: only a regular file itself is read (a FIFO would block,
        // a device never end, a link lead anywhere).
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path) else {
            throw FileError(path, "no such file: \(directory) holds no metrics (has a run written to it?)")
        }
        guard attributes[.type] as? FileAttributeType == .typeRegular else {
            throw FileError(path, "is not a regular file; metrics.jsonl is the file a run appends its metrics to")
        }
        let size = attributes[.size] as? Int ?? 0
        guard size <= Self.maximumBytes else {
            throw FileError(path, "\(size) bytes, more than the \(Self.maximumBytes >> 20) MiB a metrics file is read up to")
        }
        let data: Data
        do {
            guard let handle = FileHandle(forReadingAtPath: path) else { throw FileError(path, "cannot be opened for reading") }
            defer { try? handle.close() }
            data = try handle.read(upToCount: Self.maximumBytes + 1) ?? Data()
        } catch let error as FileError {
            throw error
        } catch {
            throw FileError(path, "cannot be read: \(describe(error))")
        }
        guard data.count <= Self.maximumBytes else {
            throw FileError(path, "more than the \(Self.maximumBytes >> 20) MiB a metrics file is read up to (it grew while being read)")
        }
        var latestUpdate: [Int: [String: Double]] = [:], latestEvaluation: [Int: [String: Double]] = [:]
        var lastUpdateStep = Int.min
        for line in data.split(separator: 0x0A, omittingEmptySubsequences: true) {
            lines += 1
            guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
                  let stepNumber = object["step"] as? NSNumber, !(object["step"] is String),
                  let step = Int(exactly: stepNumber.doubleValue), step >= 0 else {
                skippedLines += 1
                continue
            }
            var numbers: [String: Double] = [:]
            for (key, value) in object where key != "step" && fields?.contains(key) != false {
                // Numbers only: texts (BLEU signatures, errors) and nulls (a diverged perplexity) are left out.
                if let number = value as? NSNumber, !(value is String) { numbers[key] = number.doubleValue }
            }
            if object["loss"] != nil {
                if step <= lastUpdateStep {
                    // A resumed attempt: what earlier attempts wrote from this step on is not the run's history.
                    latestUpdate = latestUpdate.filter { $0.key < step }
                    latestEvaluation = latestEvaluation.filter { $0.key < step }
                }
                lastUpdateStep = step
                latestUpdate[step] = numbers
            } else if object["valid_loss"] != nil {
                latestEvaluation[step] = numbers
            }
        }
        updates = Self.series(latestUpdate)
        evaluations = Self.series(latestEvaluation)
    }

    private static func series(_ byStep: [Int: [String: Double]]) -> [String: [(step: Int, value: Double)]] {
        var result: [String: [(step: Int, value: Double)]] = [:]
        for step in byStep.keys.sorted() {
            for (key, value) in byStep[step]! { result[key, default: []].append((step, value)) }
        }
        return result
    }
}
