import ArgumentParser
import Files
import Foundation

/// The median of a non-empty list (mean of the middle two for an even count).
func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    let middle = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}


extension JSONEncoder {
    /// Sorted keys: stable output to read and to compare.
    static var sortedKeys: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }
}

/// One JSON object on one line, keys sorted: what every `--json` prints. Non-finite numbers must be encoded as
/// null by the value (`JSONNumber`); encoding never falls back to an empty object.
func jsonLine<T: Encodable>(_ value: T) throws -> String {
    do {
        return String(decoding: try JSONEncoder.sortedKeys.encode(value), as: UTF8.self)
    } catch {
        throw ValidationError("cannot write the JSON report: \(describe(error))")
    }
}
