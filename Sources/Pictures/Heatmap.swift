import Foundation

/// An attention map as a self-contained SVG: one cell per (query, key) pair shaded from white (0) to dark blue (1),
/// the tokens on both axes (queries down the left, keys along the top, written as `readableToken` shows them and
/// escaped), each cell's weight in its tooltip (maps of up to `maximumTooltipCells` cells).
public struct Heatmap {
    /// The title above the map.
    public var title: String
    /// One label per row (the queries).
    public var rowLabels: [String]
    /// One label per column (the keys).
    public var columnLabels: [String]
    /// rows x columns weights, row-major, in [0, 1] (values outside are clamped for the shade).
    public var values: [Float]

    /// A map of `values` [rowLabels.count, columnLabels.count]; the counts must agree.
    public init(title: String, rowLabels: [String], columnLabels: [String], values: [Float]) {
        precondition(values.count == rowLabels.count * columnLabels.count,
                     "a heatmap of \(rowLabels.count) x \(columnLabels.count) needs as many values, got \(values.count)")
        (self.title, self.rowLabels, self.columnLabels, self.values) = (title, rowLabels, columnLabels, values)
    }

    /// Maps of at most this many cells (64 x 64) give each cell a tooltip with its weight.
    public static let maximumTooltipCells = 4096

    /// The map with square cells of `cell` pixels.
    public func svg(cell: Int = 18) -> String {
        let rows = rowLabels.count, columns = columnLabels.count
        let rowText = rowLabels.map { readableToken($0) }, columnText = columnLabels.map { readableToken($0) }
        let labelWidth = 8 * (rowText.map(\.count).max() ?? 1) + 10
        let labelHeight = 7 * (columnText.map(\.count).max() ?? 1) + 14
        let left = max(40, labelWidth), top = 30 + labelHeight
        let width = max(left + columns * cell + 12, 8 * title.count + 12), height = top + rows * cell + 12
        // A tooltip per cell only on small maps: on a large one they make browsers take minutes to draw it.
        let tooltips = rows * columns <= Self.maximumTooltipCells
        var out = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(width)" height="\(height)" viewBox="0 0 \(width) \(height)" \
        font-family="monospace" font-size="11">
        <rect width="\(width)" height="\(height)" fill="white"/>
        <text x="4" y="16" font-family="sans-serif" font-size="13" font-weight="bold">\(escapeMarkup(title))</text>

        """
        for (j, label) in columnText.enumerated() {
            let x = left + j * cell + cell / 2 + 4, y = top - 6
            out += "<text transform=\"translate(\(x) \(y)) rotate(-60)\">\(escapeMarkup(label))</text>\n"
        }
        for (i, label) in rowText.enumerated() {
            out += "<text x=\"\(left - 6)\" y=\"\(top + i * cell + cell / 2 + 4)\" text-anchor=\"end\">\(escapeMarkup(label))</text>\n"
        }
        for i in 0..<rows {
            for j in 0..<columns {
                let value = values[i * columns + j]
                let shade = value.isFinite ? Double(min(1, max(0, value))) : 0
                // White to #08306b (a dark blue), linearly in each channel.
                let red = Int(255 - shade * (255 - 8)), green = Int(255 - shade * (255 - 48)), blue = Int(255 - shade * (255 - 107))
                out += "<rect x=\"\(left + j * cell)\" y=\"\(top + i * cell)\" width=\"\(cell)\" height=\"\(cell)\" "
                    + String(format: "fill=\"#%02x%02x%02x\"", red, green, blue)
                if tooltips {
                    let tip = "\(rowText[i]) → \(columnText[j]): \(String(format: "%.4f", Double(value)))"
                    out += "><title>\(escapeMarkup(tip))</title></rect>\n"
                } else {
                    out += "/>\n"
                }
            }
        }
        out += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(columns * cell)\" height=\"\(rows * cell)\" fill=\"none\" stroke=\"#888\"/>\n</svg>\n"
        return out
    }
}
