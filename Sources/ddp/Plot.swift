import ArgumentParser
import Files
import Foundation
import Pictures
import Training

struct Plot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Draw training curves of one or more runs as a self-contained HTML page or SVG file.",
        discussion: """
            Reads RUN_DIR/metrics.jsonl of each run and draws, against the step, one chart per quantity with every \
            run as a line (the legend names the run directories): training loss and validation loss (log scale), \
            the other evaluation metrics the runs recorded (perplexity on a log scale, token accuracy, exact match, \
            BLEU, chrF), learning rate, gradient norm (log scale), tokens/s and padding share. A resumed run's \
            repeated steps are drawn once, from the lines written last. The output names its format by its \
            extension: .html (the charts on one page) or .svg (the charts stacked in one picture). Nothing is \
            fetched from the network to show either.

            Examples:
              ddp plot runs/quickstart --output curves.html
              ddp plot runs/lr-1e-3 runs/lr-3e-4 --output compare.svg
            """
    )

    @Argument(help: "Run directories (each with a metrics.jsonl).")
    var runs: [String]

    @Option(help: "The picture to write: FILE.html or FILE.svg.")
    var output: String

    func validate() throws {
        guard !runs.isEmpty else { throw ValidationError("give at least one run directory.") }
        let lower = output.lowercased()
        guard lower.hasSuffix(".html") || lower.hasSuffix(".svg") else {
            throw ValidationError("--output \(output): the file's extension names its format: .html or .svg.")
        }
    }

    func run() throws {
        try requireOneProcess("ddp plot")
        RemoveOnSignal.install()  // an interrupted write leaves no temporary beside the output
        let fields = Set(Self.quantities.map(\.field))
        let histories = try runs.map { try MetricsHistory(directory: $0, fields: fields) }
        for history in histories where history.skippedLines > 0 {
            printToStandardError("\(Paths.join(history.directory, "metrics.jsonl")): skipped \(history.skippedLines) of \(history.lines) lines that are not metrics (a line cut short when the run was killed, say)")
        }
        guard histories.contains(where: { !$0.updates.isEmpty || !$0.evaluations.isEmpty }) else {
            throw PicturesInputError("\(runs.joined(separator: ", ")): no metrics recorded yet, nothing to draw")
        }
        let charts = Self.charts(histories, names: Self.legendNames(runs))
        let inputs = runs.flatMap { [Paths.join($0, "metrics.jsonl")] + RunDirectory.runFiles(in: $0) }
        let text: String
        if output.lowercased().hasSuffix(".svg") {
            text = Self.stacked(charts)
        } else {
            text = FigurePage(title: "Training curves: " + runs.joined(separator: ", "),
                              sections: [FigurePage.Section(heading: "Against the step", figures: charts.map {
                                  FigurePage.Figure(caption: "", svg: $0.svg())
                              })]).html()
        }
        try OutputFile.write(output, data: Data(text.utf8), inputs: inputs)
        print("wrote \(output): \(charts.count) charts of \(runs.count) run(s)")
    }

    /// What is drawn, in order: (metrics.jsonl field, from evaluation lines, title, y label, log scale).
    static let quantities: [(field: String, evaluation: Bool, title: String, yLabel: String, logarithmic: Bool)] = [
        ("loss", false, "Training loss", "loss (nats per token)", true),
        ("valid_loss", true, "Validation loss", "loss (nats per token)", true),
        ("valid_perplexity", true, "Validation perplexity", "perplexity", true),
        ("valid_token_accuracy", true, "Validation token accuracy", "accuracy", false),
        ("valid_exact_match", true, "Validation exact match", "share of sequences", false),
        ("valid_bleu", true, "Validation BLEU", "BLEU", false),
        ("valid_chrf", true, "Validation chrF", "chrF", false),
        ("lr", false, "Learning rate", "learning rate", false),
        ("grad_norm", false, "Gradient norm (before clipping)", "L2 norm", true),
        ("tokens_per_s", false, "Throughput", "target tokens/s since the run (re)started", false),
        ("padding_share", false, "Padding", "share of computed positions that are padding", false),
    ]

    /// The charts drawn, in order, for the quantities any run recorded.
    static func charts(_ histories: [MetricsHistory], names: [String]) -> [LineChart] {
        quantities.compactMap { field, evaluation, title, yLabel, logarithmic in
            let series = zip(histories, names).compactMap { history, name -> LineChart.Series? in
                guard let points = (evaluation ? history.evaluations : history.updates)[field], !points.isEmpty else { return nil }
                return LineChart.Series(label: name, points: points.map { (Double($0.step), $0.value) })
            }
            return series.isEmpty ? nil : LineChart(title: title, xLabel: "step", yLabel: yLabel, logarithmic: logarithmic, series: series)
        }
    }

    /// Legend names: each run directory's last component, or the whole path where two runs share it.
    static func legendNames(_ runs: [String]) -> [String] {
        let last = runs.map { path in Paths.lastComponent(path).isEmpty ? path : Paths.lastComponent(path) }
        return zip(runs, last).map { run, name in last.filter { $0 == name }.count > 1 ? run : name }
    }

    /// The charts one under another in one SVG, each `LineChart.defaultSize` and nested in a group moved down.
    static func stacked(_ charts: [LineChart]) -> String {
        let (width, height) = LineChart.defaultSize, total = height * charts.count
        let body = charts.enumerated().map { index, chart in
            "<g transform=\"translate(0 \(index * height))\">\n\(chart.svg(width: width, height: height))</g>\n"
        }.joined()
        return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(total)\" viewBox=\"0 0 \(width) \(total)\">\n\(body)</svg>\n"
    }
}
