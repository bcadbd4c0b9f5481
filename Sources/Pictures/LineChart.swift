import Foundation

/// A line chart as a self-contained SVG: one line per series against a shared x axis (the training step), labelled
/// axes with ticks, a legend naming the series, and optionally a logarithmic y axis (loss curves). Points that are
/// not finite (and, on a log axis, not positive) are left out and break the line there. A long line is thinned to
/// about 2,000 vertices keeping each stretch's lowest and highest point, so spikes stay visible.
public struct LineChart {
    /// One line: a label for the legend and its points in x order.
    public struct Series {
        /// The name the legend shows.
        public var label: String
        /// (x, y) pairs in x order.
        public var points: [(x: Double, y: Double)]

        /// A series named `label`.
        public init(label: String, points: [(x: Double, y: Double)]) {
            self.label = label
            self.points = points
        }
    }

    /// The title above the chart.
    public var title: String
    /// The x axis's label (quantity and unit).
    public var xLabel: String
    /// The y axis's label (quantity and unit); " (log scale)" is added on a logarithmic axis.
    public var yLabel: String
    /// A base-10 logarithmic y axis.
    public var logarithmic: Bool
    /// The lines, coloured in order.
    public var series: [Series]

    /// A chart titled `title`; the axis labels name the quantity and unit ("step", "loss (nats per token)").
    public init(title: String, xLabel: String, yLabel: String, logarithmic: Bool = false, series: [Series]) {
        (self.title, self.xLabel, self.yLabel, self.logarithmic, self.series) = (title, xLabel, yLabel, logarithmic, series)
    }

    /// Colours of the series, in order (Tableau 10), repeated past ten.
    static let palette = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]

    /// The size `svg()` draws at by default, in pixels: width and height.
    public static let defaultSize = (width: 640, height: 360)

    /// The chart, `width` x `height` pixels. A chart without any plottable point says so in its plot area.
    public func svg(width: Int = defaultSize.width, height: Int = defaultSize.height) -> String {
        let left = 72.0, right = 16.0, top = 36.0, bottom = 52.0
        let plotWidth = Double(width) - left - right, plotHeight = Double(height) - top - bottom
        let transform: (Double) -> Double = logarithmic ? { log10($0) } : { $0 }
        // Each series as runs of consecutive plottable points (a point that is not plottable ends a run).
        let segments: [[[(x: Double, y: Double)]]] = series.map { line in
            var runs: [[(x: Double, y: Double)]] = [[]]
            for point in line.points {
                if point.x.isFinite && point.y.isFinite && (!logarithmic || point.y > 0) {
                    runs[runs.count - 1].append((x: point.x, y: transform(point.y)))
                } else if !runs[runs.count - 1].isEmpty {
                    runs.append([])
                }
            }
            return runs.filter { !$0.isEmpty }
        }
        let usable = segments.map { $0.flatMap { $0 } }
        var out = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(width)" height="\(height)" viewBox="0 0 \(width) \(height)" \
        font-family="sans-serif" font-size="12">
        <rect width="\(width)" height="\(height)" fill="white"/>
        <text x="\(width / 2)" y="22" text-anchor="middle" font-size="15" font-weight="bold">\(escapeMarkup(title))</text>

        """
        let all = usable.flatMap { $0 }
        guard let xMin = all.map(\.x).min(), let xMax = all.map(\.x).max(), let yMin = all.map(\.y).min(), let yMax = all.map(\.y).max() else {
            out += "<text x=\"\(width / 2)\" y=\"\(height / 2)\" text-anchor=\"middle\" fill=\"#777\">no values to plot</text>\n</svg>\n"
            return out
        }
        let (x0, x1) = Self.padded(xMin, xMax), (y0, y1) = Self.padded(yMin, yMax)
        func px(_ x: Double) -> Double { left + (x - x0) / (x1 - x0) * plotWidth }
        func py(_ y: Double) -> Double { top + (1 - (y - y0) / (y1 - y0)) * plotHeight }
        let format: (Double) -> String = { String(format: "%.1f", $0) }
        out += "<rect x=\"\(format(left))\" y=\"\(format(top))\" width=\"\(format(plotWidth))\" height=\"\(format(plotHeight))\" fill=\"none\" stroke=\"#888\"/>\n"
        for tick in Self.ticks(x0, x1) {
            out += "<line x1=\"\(format(px(tick)))\" y1=\"\(format(top))\" x2=\"\(format(px(tick)))\" y2=\"\(format(top + plotHeight))\" stroke=\"#eee\"/>"
            out += "<text x=\"\(format(px(tick)))\" y=\"\(format(top + plotHeight + 16))\" text-anchor=\"middle\">\(formatNumber(tick))</text>\n"
        }
        let yTicks = logarithmic ? Self.logarithmicTicks(y0, y1) : Self.ticks(y0, y1).map { ($0, formatNumber($0)) }
        for (tick, label) in yTicks {
            out += "<line x1=\"\(format(left))\" y1=\"\(format(py(tick)))\" x2=\"\(format(left + plotWidth))\" y2=\"\(format(py(tick)))\" stroke=\"#eee\"/>"
            out += "<text x=\"\(format(left - 6))\" y=\"\(format(py(tick) + 4))\" text-anchor=\"end\">\(escapeMarkup(label))</text>\n"
        }
        out += "<text x=\"\(format(left + plotWidth / 2))\" y=\"\(height - 12)\" text-anchor=\"middle\">\(escapeMarkup(xLabel))</text>\n"
        let yTitle = yLabel + (logarithmic ? " (log scale)" : "")
        out += "<text transform=\"translate(16 \(format(top + plotHeight / 2))) rotate(-90)\" text-anchor=\"middle\">\(escapeMarkup(yTitle))</text>\n"
        for (index, runs) in segments.enumerated() {
            let colour = Self.palette[index % Self.palette.count]
            let total = runs.reduce(0) { $0 + $1.count }
            for points in runs {
                let kept = Self.thinned(points, to: max(2, 2000 * points.count / max(1, total)))
                if kept.count > 1 {
                    let path = kept.map { "\(format(px($0.x))),\(format(py($0.y)))" }.joined(separator: " ")
                    out += "<polyline fill=\"none\" stroke=\"\(colour)\" stroke-width=\"1.5\" points=\"\(path)\"/>\n"
                }
                // Sparse series (evaluations) and lone points are marked.
                if total <= 60 || kept.count == 1 {
                    for point in kept {
                        out += "<circle cx=\"\(format(px(point.x)))\" cy=\"\(format(py(point.y)))\" r=\"2.5\" fill=\"\(colour)\"/>"
                    }
                    out += "\n"
                }
            }
        }
        // The legend, top right inside the plot area.
        let named = series.enumerated().filter { !usable[$0.offset].isEmpty }
        if !named.isEmpty {
            let legendWidth = 20.0 + 7.0 * Double(min(40, named.map { $0.element.label.count }.max() ?? 0))
            let legendX = left + plotWidth - legendWidth - 8
            out += "<rect x=\"\(format(legendX))\" y=\"\(format(top + 6))\" width=\"\(format(legendWidth))\" height=\"\(format(Double(named.count) * 16 + 6))\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#ccc\"/>\n"
            for (row, entry) in named.enumerated() {
                let y = top + 18 + Double(row) * 16
                let colour = Self.palette[entry.offset % Self.palette.count]
                out += "<line x1=\"\(format(legendX + 4))\" y1=\"\(format(y - 4))\" x2=\"\(format(legendX + 16))\" y2=\"\(format(y - 4))\" stroke=\"\(colour)\" stroke-width=\"3\"/>"
                out += "<text x=\"\(format(legendX + 20))\" y=\"\(format(y))\">\(escapeMarkup(String(entry.element.label.prefix(40))))</text>\n"
            }
        }
        out += "</svg>\n"
        return out
    }

    /// `points` with at most about `limit` of them: each of limit / 2 stretches keeps its lowest and highest point, in
    /// order, and the first and last points stay.
    static func thinned(_ points: [(x: Double, y: Double)], to limit: Int) -> [(x: Double, y: Double)] {
        guard points.count > limit, limit >= 4 else { return points }
        let stretch = (points.count + limit / 2 - 1) / (limit / 2)
        var kept: [(x: Double, y: Double)] = [points[0]]
        for start in stride(from: 0, to: points.count, by: stretch) {
            let part = points[start..<min(points.count, start + stretch)]
            let low = part.indices.min { part[$0].y < part[$1].y }!, high = part.indices.max { part[$0].y < part[$1].y }!
            for index in Set([low, high]).sorted() where index != 0 && index != points.count - 1 { kept.append(points[index]) }
        }
        kept.append(points[points.count - 1])
        return kept
    }

    /// [low, high] widened by 3% on each side (a single value by ±1, or ±5% of itself).
    static func padded(_ low: Double, _ high: Double) -> (Double, Double) {
        guard high > low else {
            let margin = low == 0 ? 1 : abs(low) * 0.05
            return (low - margin, high + margin)
        }
        let margin = (high - low) * 0.03
        return (low - margin, high + margin)
    }

    /// About five round values (1, 2 or 5 times a power of ten apart) within [low, high].
    static func ticks(_ low: Double, _ high: Double) -> [Double] {
        let raw = (high - low) / 5
        guard raw > 0, raw.isFinite else { return [low] }
        let power = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * power }.first { $0 >= raw } ?? 10 * power
        var ticks: [Double] = []
        var value = ceil(low / step) * step
        while value <= high + step * 1e-9, ticks.count < 12 {
            ticks.append(abs(value) < step * 1e-9 ? 0 : value)
            value += step
        }
        return ticks
    }

    /// Ticks for a log10 axis spanning [low, high] (in log10 units): the powers of ten inside it, with 2 and 5 times
    /// them when fewer than three decades are shown; labels in the data's own units.
    static func logarithmicTicks(_ low: Double, _ high: Double) -> [(Double, String)] {
        let fine = high - low < 3
        var ticks: [(Double, String)] = []
        var decade = floor(low)
        while decade <= ceil(high), ticks.count < 24 {
            for factor in fine ? [1.0, 2, 5] : [1.0] {
                let value = decade + log10(factor)
                if value >= low && value <= high { ticks.append((value, formatNumber(pow(10, value)))) }
            }
            decade += 1
        }
        // A range inside one decade: plain ticks of the values themselves.
        if ticks.count < 2 { return self.ticks(pow(10, low), pow(10, high)).filter { $0 > 0 }.map { (log10($0), formatNumber($0)) } }
        return ticks
    }
}
