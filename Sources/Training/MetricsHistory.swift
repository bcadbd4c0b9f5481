import Files
import Foundation

/// A run directory's `metrics.jsonl` read back: every numeric field of its update lines and evaluation lines, by
/// step. A resumed run appends again from its checkpoint's step, so a step can appear twice: the later line wins (it
/// is the history the run went on from). Lines that are not JSON objects with an integer `step` (a line cut short by
/// a kill, say) are skipped and counted.
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

    /// The largest metrics file read: 256 MiB, about a million lines (what a million updates write), which take
    /// about 1 GB once parsed.
    public static let maximumBytes = 256 << 20

    /// Reads `directory`/metrics.jsonl. Throws a `FileError` naming the file when it is missing, unreadable or
    /// larger than `maximumBytes`.
    public init(directory: String) throws(FileError) {
        self.directory = directory
        let path = Paths.join(directory, "metrics.jsonl")
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw FileError(directory, "not a run directory (no such directory)")
        }
        guard FileManager.default.fileExists(atPath: path) else {
            throw FileError(path, "no such file: \(directory) holds no metrics (has a run written to it?)")
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        guard size <= Self.maximumBytes else {
            throw FileError(path, "\(size) bytes, more than the \(Self.maximumBytes >> 20) MiB a metrics file is read up to")
        }
        guard let data = FileManager.default.contents(atPath: path) else { throw FileError(path, "cannot be read") }
        var latestUpdate: [Int: [String: Double]] = [:], latestEvaluation: [Int: [String: Double]] = [:]
        for line in data.split(separator: 0x0A, omittingEmptySubsequences: true) {
            lines += 1
            guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
                  let stepNumber = object["step"] as? NSNumber, let step = Int(exactly: stepNumber.doubleValue), step >= 0 else {
                skippedLines += 1
                continue
            }
            var numbers: [String: Double] = [:]
            for (key, value) in object where key != "step" {
                // Numbers only: texts (BLEU signatures, errors) and nulls (a diverged perplexity) are left out.
                if let number = value as? NSNumber, !(value is String) { numbers[key] = number.doubleValue }
            }
            if object["loss"] != nil { latestUpdate[step] = numbers } else if object["valid_loss"] != nil { latestEvaluation[step] = numbers }
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
