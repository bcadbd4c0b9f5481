import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif

/// A temporary directory of files a test class prepares once (data sets, trained runs) and shares between its tests:
/// hold it in a `static let` (initialised once, thread-safely). `failure` says why preparing it failed.
public struct PreparedDirectory: Sendable {
    public let directory: URL
    public let failure: String?

    /// Makes a directory labelled `label` and runs `prepare` on it; an error becomes `failure`.
    public init(_ label: String, prepare: (URL) throws -> Void) {
        do {
            let url = try makeTemporaryDirectory(label)
            directory = url
            do {
                try prepare(url)
                failure = nil
            } catch {
                failure = "\(error)"
            }
        } catch {
            directory = FileManager.default.temporaryDirectory
            failure = "\(error)"
        }
    }

    /// The path of `name` inside the directory.
    public func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
}

/// Runs the built `ddp` with `arguments` (MPI's environment, as the tests run it); throws with its output when it
/// fails. For preparing a test's files.
public func runDDPOrThrow(_ arguments: [String], timeout: Double = 300) throws {
    let result = try runProcess(builtProduct("ddp"), arguments, environment: mpiEnvironment, timeout: timeout)
    if result.status != 0 {
        throw NSError(domain: "setup", code: 1, userInfo: [NSLocalizedDescriptionKey: "ddp \(arguments.joined(separator: " ")):\n\(result.output)"])
    }
}

/// An XML document (SVG, or HTML written as XHTML) read back: whether it is well-formed, the parser's error, its
/// character data with entities resolved, and the names of its elements in document order.
public struct ParsedMarkup {
    public let wellFormed: Bool
    public let error: String?
    public let text: String
    public let elements: [String]

    /// Parses `data`.
    public init(_ data: Data) {
        final class Collector: NSObject, XMLParserDelegate {
            var text = "", elements: [String] = []
            func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                        attributes: [String: String] = [:]) { elements.append(name) }
            func parser(_ parser: XMLParser, foundCharacters string: String) { text += string }
        }
        let parser = XMLParser(data: data), collector = Collector()
        parser.delegate = collector
        wellFormed = parser.parse()
        error = parser.parserError.map { "\($0)" }
        (text, elements) = (collector.text, collector.elements)
    }
}
