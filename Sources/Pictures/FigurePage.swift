import Foundation

/// An HTML page (no scripts or fonts, nothing fetched from the network) of titled sections, each a grid of figures
/// with captions; a figure is an SVG document placed inline (the page is then self-contained) or an SVG file beside
/// the page.
public struct FigurePage {
    /// One picture with its caption.
    public struct Figure {
        /// Shown above the picture (nothing when empty).
        public var caption: String
        /// The picture: an SVG document placed inline, or the relative path of an SVG file beside the page.
        public var content: Content

        /// Where the picture is.
        public enum Content {
            /// An SVG document, placed in the page.
            case inline(String)
            /// An SVG file's path relative to the page.
            case file(String)
        }

        /// A figure captioned `caption` (none when empty) showing the SVG document `svg`.
        public init(caption: String, svg: String) { (self.caption, self.content) = (caption, .inline(svg)) }

        /// A figure captioned `caption` showing the SVG file at `path`, relative to the page (large pictures: the
        /// page stays small and the browser loads them from beside it).
        public init(caption: String, file path: String) { (self.caption, self.content) = (caption, .file(path)) }
    }

    /// A heading, notes under it, and a grid of figures.
    public struct Section {
        /// The section's heading.
        public var heading: String
        /// Lines of text under the heading (escaped when written).
        public var notes: [String]
        /// The pictures, in reading order.
        public var figures: [Figure]
        /// A section headed `heading`.
        public init(heading: String, notes: [String] = [], figures: [Figure]) { (self.heading, self.notes, self.figures) = (heading, notes, figures) }
    }

    /// The page's title and first heading.
    public var title: String
    /// The sections, in order.
    public var sections: [Section]

    /// A page titled `title`.
    public init(title: String, sections: [Section]) { (self.title, self.sections) = (title, sections) }

    /// The page as HTML5 that is also well-formed XML (XHTML's syntax), so XML tools can read it too.
    public func html() -> String {
        var out = """
        <!DOCTYPE html>
        <html lang="en">
        <head>
        <meta charset="utf-8"/>
        <title>\(escapeMarkup(title))</title>
        <style>
        body { font-family: sans-serif; margin: 1.5em; color: #222; }
        .grid { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
        figure { margin: 0; border: 1px solid #ddd; padding: 0.4em; background: white; }
        figcaption { font-size: 0.9em; color: #444; margin-bottom: 0.3em; }
        .notes { font-family: monospace; white-space: pre-wrap; }
        </style>
        </head>
        <body>
        <h1>\(escapeMarkup(title))</h1>

        """
        for section in sections {
            out += "<section>\n<h2>\(escapeMarkup(section.heading))</h2>\n"
            for note in section.notes { out += "<p class=\"notes\">\(escapeMarkup(note))</p>\n" }
            out += "<div class=\"grid\">\n"
            for figure in section.figures {
                let caption = figure.caption.isEmpty ? "" : "<figcaption>\(escapeMarkup(figure.caption))</figcaption>\n"
                switch figure.content {
                case .inline(let svg): out += "<figure>\n\(caption)\(svg)</figure>\n"
                case .file(let path):
                    out += "<figure>\n\(caption)<img src=\"\(escapeMarkup(path))\" alt=\"\(escapeMarkup(figure.caption))\"/>\n</figure>\n"
                }
            }
            out += "</div>\n</section>\n"
        }
        out += "</body>\n</html>\n"
        return out
    }
}
