import ArgumentParser
import Files
import Foundation
import Training

/// The median of a non-empty list (mean of the middle two for an even count).
func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    let middle = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

/// One JSON object on one line, keys sorted: what every `--json` prints. Non-finite numbers must be encoded as
/// null by the value (`JSONNumber`); encoding never falls back to an empty object.
func jsonLine<T: Encodable>(_ value: T) throws -> String {
    do {
        return String(decoding: try JSONEncoder.sortedKeys.encode(value), as: UTF8.self)
    } catch {
        throw RunError("cannot write the JSON report: \(describe(error))")
    }
}

/// `count` bytes for people: "512 B", "1.5 MiB" (binary units, one decimal).
func formatBytes(_ count: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(count)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(count) B" : String(format: "%.1f", value) + " " + units[unit]
}
