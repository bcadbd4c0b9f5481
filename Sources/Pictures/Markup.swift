import Foundation

/// Text made safe for XML and HTML content and attribute values: `&`, `<`, `>`, both quotes, and characters XML 1.0
/// cannot hold (controls other than tab and line breaks, lone surrogates, U+FFFE/U+FFFF) as the replacement character.
public func escapeMarkup(_ text: String) -> String {
    var result = ""
    result.reserveCapacity(text.utf8.count)
    for scalar in text.unicodeScalars {
        switch scalar {
        case "&": result += "&amp;"
        case "<": result += "&lt;"
        case ">": result += "&gt;"
        case "\"": result += "&quot;"
        case "'": result += "&#39;"
        case "\t", "\n", "\r": result.unicodeScalars.append(scalar)
        default:
            let value = scalar.value
            let allowed = (value >= 0x20 && value < 0xD800) || (value >= 0xE000 && value < 0xFFFE) || value >= 0x10000
            result.unicodeScalars.append(allowed ? scalar : "\u{FFFD}")
        }
    }
    return result
}

/// A token as a person can read it on an axis: spaces, tabs and line breaks as visible symbols (␣ ⇥ ⏎), other
/// control and invisible characters as U+XXXX, at most `limit` characters (at least 2; an ellipsis ends a longer one). The
/// result is plain text; escape it with `escapeMarkup` before it goes into markup.
public func readableToken(_ text: String, limit: Int = 12) -> String {
    guard !text.isEmpty else { return "∅" }
    var pieces: [String] = []
    for scalar in text.unicodeScalars {
        switch scalar {
        case " ": pieces.append("␣")
        case "\t": pieces.append("⇥")
        case "\n", "\r", "\u{0B}", "\u{0C}", "\u{85}", "\u{2028}", "\u{2029}": pieces.append("⏎")
        default:
            let invisible = scalar.properties.generalCategory == .control || scalar.properties.generalCategory == .format
                || scalar.properties.generalCategory == .surrogate || scalar.properties.generalCategory == .unassigned
                || scalar.properties.generalCategory == .privateUse || scalar.value == 0xFFFD
            pieces.append(invisible ? String(format: "U+%04X", scalar.value) : String(scalar))
        }
    }
    let joined = pieces.joined(), limit = max(2, limit)
    return joined.count > limit ? String(joined.prefix(limit - 1)) + "…" : joined
}

/// A number for an axis tick or a tooltip: up to four significant digits, no trailing zeros, exponent form for
/// very large and very small magnitudes.
func formatNumber(_ value: Double) -> String {
    guard value.isFinite else { return value.isNaN ? "NaN" : (value > 0 ? "∞" : "-∞") }
    if value == 0 { return "0" }
    let magnitude = abs(value)
    if magnitude >= 1e6 || magnitude < 1e-3 { return String(format: "%.3g", value) }
    var text = String(format: "%.4g", value)
    if text.contains("."), !text.contains("e") {
        while text.hasSuffix("0") { text.removeLast() }
        if text.hasSuffix(".") { text.removeLast() }
    }
    return text
}
