import Foundation

/// The per-step losses a run wrote to `metrics.jsonl` in its run directory, in order (lines without a `loss`, such as
/// evaluations, skipped).
public func trainingLosses(inRun runDirectory: String) throws -> [Double] {
    let text = try String(contentsOfFile: runDirectory + "/metrics.jsonl", encoding: .utf8)
    return try text.split(separator: "\n").compactMap { line in
        (try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["loss"] as? Double
    }
}
