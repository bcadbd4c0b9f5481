import Foundation
@testable import Pictures
import TestSupport
import XCTest

/// The SVG and HTML writers: well-formed XML whatever the labels hold, escaping, axes and legends.
final class PicturesTests: XCTestCase {
    /// Parses `text` as XML; returns its character data (entities resolved) and the element names seen.
    private func parse(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> ParsedMarkup {
        let parsed = ParsedMarkup(Data(text.utf8))
        XCTAssertTrue(parsed.wellFormed, "not well-formed XML: \(parsed.error ?? "?")", file: file, line: line)
        return parsed
    }

    func testEscapingKeepsMarkupWellFormed() {
        let hostile = "a<b & \"c\" 'd' </svg> \u{01} \u{FFFE}"
        XCTAssertEqual(escapeMarkup("<&>\"'"), "&lt;&amp;&gt;&quot;&#39;")
        XCTAssertFalse(escapeMarkup(hostile).contains("<"))
        let map = Heatmap(title: hostile, rowLabels: ["<", "&", "\""], columnLabels: ["'", " ", "\n"], values: [0, 0.5, 1, 1, 0, 0.25, 0.1, 0.2, 0.7])
        let parsed = parse(map.svg())
        XCTAssertTrue(parsed.text.contains("a<b & \"c\" 'd' </svg>"), "the title comes back as written: \(parsed.text)")
        for label in ["<", "&", "\"", "'", "␣", "⏎"] { XCTAssertTrue(parsed.text.contains(label), "axis label \(label)") }
        XCTAssertEqual(parsed.elements.filter { $0 == "rect" }.count, 9 + 2, "a cell per weight, the background and the frame")
    }

    /// Small maps carry a tooltip per cell; large ones none (browsers take minutes to draw 65,536 of them).
    func testTooltipsOnlyOnSmallMaps() {
        let labels = (0..<70).map { "t\($0)" }
        let large = parse(Heatmap(title: "large", rowLabels: labels, columnLabels: labels, values: [Float](repeating: 0.5, count: 4900)).svg())
        XCTAssertEqual(large.elements.filter { $0 == "title" }.count, 0)
        XCTAssertEqual(large.elements.filter { $0 == "rect" }.count, 4900 + 2)
        let small = parse(Heatmap(title: "small", rowLabels: ["a", "b"], columnLabels: ["c"], values: [0.25, 0.75]).svg())
        XCTAssertEqual(small.elements.filter { $0 == "title" }.count, 2)
        XCTAssertTrue(small.text.contains("a → c: 0.2500"))
    }

    func testReadableTokens() {
        XCTAssertEqual(readableToken(" the"), "␣the")
        XCTAssertEqual(readableToken("\t\n"), "⇥⏎")
        XCTAssertEqual(readableToken("\u{200B}"), "U+200B", "an invisible format character is named")
        XCTAssertEqual(readableToken(""), "∅")
        XCTAssertEqual(readableToken(String(repeating: "x", count: 30), limit: 5), "xxxx…")
    }

    func testLineChartHasAxesLegendAndLogScale() {
        let chart = LineChart(title: "Training loss", xLabel: "step", yLabel: "loss", logarithmic: true, series: [
            LineChart.Series(label: "run <a>", points: (1...100).map { (Double($0), 5 / Double($0)) }),
            LineChart.Series(label: "run b", points: [(1, 3), (2, .nan), (3, 0), (4, 1)]),
        ])
        let parsed = parse(chart.svg())
        XCTAssertEqual(parsed.elements.filter { $0 == "polyline" }.count, 1, "run <a> is a line; run b's NaN and 0 (on a log axis) leave lone points")
        XCTAssertEqual(parsed.elements.filter { $0 == "circle" }.count, 2, "run b's two lone points are marked")
        for text in ["Training loss", "step", "loss (log scale)", "run <a>", "run b", "0.1"] {
            XCTAssertTrue(parsed.text.contains(text), "\(text) in \(parsed.text)")
        }
        let empty = parse(LineChart(title: "t", xLabel: "x", yLabel: "y", series: []).svg())
        XCTAssertTrue(empty.text.contains("no values to plot"))
    }

    /// Lines break where values are not finite, and a long line keeps its spike when thinned.
    func testGapsAndThinning() {
        var points = (0..<10_000).map { (x: Double($0), y: 1.0) }
        points[5_001].y = 50  // one spike
        points[100].y = .nan
        let svg = LineChart(title: "t", xLabel: "x", yLabel: "y", series: [LineChart.Series(label: "s", points: points)]).svg()
        XCTAssertEqual(parse(svg).elements.filter { $0 == "polyline" }.count, 2, "a NaN splits the line")
        let thinned = LineChart.thinned(points.filter { $0.y.isFinite }, to: 2000)
        XCTAssertLessThanOrEqual(thinned.count, 2002)
        XCTAssertTrue(thinned.contains { $0.y == 50 }, "the spike survives thinning")
        XCTAssertEqual(thinned.first?.x, 0)
        XCTAssertEqual(thinned.last?.x, 9_999)
    }

    func testPageIsWellFormedAndSelfContained() {
        let page = FigurePage(title: "maps & <curves>", sections: [
            FigurePage.Section(heading: "layer 0", notes: ["input: <b>"], figures: [
                FigurePage.Figure(caption: "head 0", svg: Heatmap(title: "h", rowLabels: ["x"], columnLabels: ["y"], values: [1]).svg()),
            ]),
        ]).html()
        let parsed = parse(page)
        XCTAssertTrue(parsed.elements.contains("svg") && parsed.elements.contains("figure"))
        XCTAssertTrue(parsed.text.contains("maps & <curves>") && parsed.text.contains("input: <b>"))
        for fetch in ["src=\"http", "href=\"http", "src=\"//", "@import", "url("] { XCTAssertFalse(page.contains(fetch), "nothing is fetched: \(fetch)") }
        XCTAssertFalse(page.contains("<script"))
    }
}
