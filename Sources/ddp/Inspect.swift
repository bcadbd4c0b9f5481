import ArgumentParser
import Data
import Files
import Foundation
import HDF5
import Training
import Transformer

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what an HDF5 file holds: a checkpoint's run and tensors, a data shard's examples, or any file's datasets.",
        discussion: """
            A checkpoint (a file, or a run directory for its latest): step, sampler position, tokenizer, model and run \
            config, and every parameter tensor with its shape and norm (reading them all checks their checksums). \
            Any other HDF5 file: groups, datasets (shape, type, chunks, filters) and attributes, like `h5ls -r -v` \
            but readable; a data shard also shows its task, tokenizer and first examples.

            Exits 1, after printing all it can, when anything is NOT READABLE, NOT AS WRITTEN, NOT VALID or NOT \
            USABLE (as h5check and fsck do), so a script can check files with it.

            Examples:
              ddp inspect data/train-00000.h5
              ddp inspect runs/reverse
            """
    )

    @Argument(help: "The HDF5 file to inspect, or a run directory.")
    var file: String

    @Flag(help: "For a checkpoint, also list its HDF5 groups, datasets and attributes.")
    var tree = false

    @Option(parsing: .unconditional, help: "Show at most this many characters of a string attribute, or elements of an array attribute.")
    var maxValueLength = 120

    func validate() throws {
        guard maxValueLength >= 1 else { throw ValidationError("--max-value-length must be 1 or more, got \(maxValueLength).") }
    }

    func run() throws {
        try requireOneProcess("ddp inspect")
        // What was found wrong: each is printed where it is found, and any makes the command exit 1.
        var problems = 0
        let file = try isDirectory(self.file) || Checkpoint.runDirectory(ofLatest: self.file) != nil ? try Checkpoint.resolve(self.file) : self.file
        defer {
            if problems > 0 {
                printToStandardError("\(file): \(problems) problem(s) found, printed above")
            }
        }
        // A missing file says why (a dangling or looping link, a file named with a trailing /), as other commands do.
        guard FileManager.default.fileExists(atPath: file) else { throw RunError("\(file): \(Paths.whyMissing(file))") }
        let handle = try Checkpoint.pinnedFile(file) ?? File.open(file)
        // (A checkpoint its run rotates away while it is inspected is read whole, header and tensors alike.)
        Checkpoint.pin(handle, as: file)
        let bytes = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? nil
        print("\(file)  HDF5 file" + (bytes.map { ", \(formatBytes($0))" } ?? ""))
        do { _ = try handle.attributeNames() } catch {
            print("attributes  NOT READABLE: \(error.message)")
            problems += 1
        }
        if (try? handle.hasAttribute(attributeDigestName)) == true {
            do {
                try handle.verifySealedAttributes()
                print("attributes  as written (their digest matches)")
            } catch {
                print("attributes  NOT AS WRITTEN: \(error.message)")
                problems += 1
            }
        }
        let isCheckpoint = (try? handle.stringAttribute("format")) == Checkpoint.format
        if !isCheckpoint || tree {
            var listing = Listing()
            try describe(group: handle, depth: 0, into: &listing)
            print(listing.lines.joined(separator: "\n"))
            if listing.omitted > 0 { print("... and \(listing.omitted) more lines not shown") }
            if !listing.unreadable.isEmpty {
                print("\nattributes  NOT READABLE in \(file): " + listing.unreadable.joined(separator: "; "))
                problems += 1
            }
            if !listing.unopenable.isEmpty {
                print("\nmembers  NOT READABLE in \(file): " + listing.unopenable.joined(separator: "; "))
                problems += 1
            }
        }
        if isCheckpoint {
            if !describeCheckpoint(file) { problems += 1 }
            if problems > 0 { throw ExitCode.failure }
            return
        }
        let preview: ShardPreview?
        do {
            preview = try ShardPreview.read(file)
        } catch {
            // Inspecting is how people find out what is wrong with a file: list it, then say why it is no valid shard.
            print("\ndata shard  NOT VALID: \(error)")
            problems += 1
            throw ExitCode.failure
        }
        if let preview {
            let unit = preview.task == .lm ? "documents" : "pairs"
            let checksums = preview.checksummed ? "checksums verified" : "no checksums stored (values read and range-checked only)"
            print("""

                data shard  \(preview.task.rawValue), \(preview.count) \(unit), \(preview.tokens) tokens, \(checksums), \
                content digest \(String(preview.digest, radix: 16))
                tokenizer   \(preview.tokenizer.kind), vocab_size \(preview.tokenizer.vocabularySize)
                first \(unit):
                """)
            for example in preview.examples {
                let text = example.count > maxValueLength ? String(example.prefix(maxValueLength)) + "..." : example
                print("  " + text.replacingOccurrences(of: "\n", with: "\\n"))
            }
        }
        if problems > 0 { throw ExitCode.failure }
    }

    private func isDirectory(_ path: String) throws -> Bool {
        var directory: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &directory) && directory.boolValue
    }

    /// Prints the run a checkpoint belongs to and its tensors; a checkpoint that cannot be used is listed, then said
    /// why, and the result is false.
    private func describeCheckpoint(_ path: String) -> Bool {
        do {
            let header = try Checkpoint.readHeader(path)
            let model = header.config.model
            let layers = model.kind == .encoderDecoder ? "\(model.encoderLayers)+\(model.decoderLayers) layers"
                : "\(model.encoderLayers + model.decoderLayers) layers"
            print("""

                checkpoint  step \(header.state.step), optimizer step \(header.optimizerStep); sampler at epoch \(header.state.position.epoch), \
                global batch \(header.state.position.batch); dropout seed \(header.state.dropoutSeed)
                model       \(model.kind.rawValue), d_model \(model.dModel), \(model.heads) heads, \(layers), d_ff \(model.dFF), \
                vocab_size \(model.vocabSize), \(model.norm.rawValue)-norm, \(model.positions.rawValue) positions, \(model.activation.rawValue), \
                max_length \(model.maxLength), \(model.tiedEmbeddings ? "tied" : "untied") embeddings
                tokenizer   \(header.tokenizer.map { "\($0.kind), vocab_size \($0.vocabularySize)" } ?? "none stored")
                config      \(String(decoding: (try? JSONEncoder.sortedKeys.encode(header.config)) ?? Foundation.Data(), as: UTF8.self))
                """)
            let (loaded, _) = try Checkpoint.loadModel(path, maxBatch: 1, allowNonFinite: true, optimizerState: true)
            // The AdamW moments too, so "checksums verified" covers everything --resume reads.
            let optimizer = AdamW(layout: loaded.layout, settings: header.config.optimizer.settings)
            try Checkpoint.load(path, into: loaded, optimizer: optimizer)
            let width = max(6, loaded.layout.views.map(\.name.count).max() ?? 0)
            var digest: UInt64 = 0xCBF2_9CE4_8422_2325
            for byte in UnsafeRawBufferPointer(loaded.parameters.storage) { digest = (digest ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
            print("tensors     \(loaded.layout.views.count), \(loaded.layout.count) parameters, checksums verified, "
                  + "content digest \(String(digest, radix: 16))")
            print("  " + "name".padding(toLength: width, withPad: " ", startingAt: 0) + "  " + "shape".padding(toLength: 14, withPad: " ", startingAt: 0) + "  norm")
            let nonFinite = Dictionary(uniqueKeysWithValues: Checkpoint.nonFiniteTensors(loaded).map { ($0.name, $0.count) })
            for view in loaded.layout.views {
                let norm = loaded.parameters[view].reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
                let shape = "[" + view.shape.map(String.init).joined(separator: ", ") + "]"
                print("  " + view.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  "
                      + shape.padding(toLength: 14, withPad: " ", startingAt: 0) + "  " + String(format: "%.6g", norm)
                      + (nonFinite[view.name].map { "  (\($0) values not finite)" } ?? ""))
            }
            if !nonFinite.isEmpty {
                print("\ncheckpoint  NOT USABLE: parameters that are not finite (NaN or infinity) in "
                      + nonFinite.keys.sorted().joined(separator: ", ") + "; eval, generate and export refuse it")
                return false
            }
            let moments = Checkpoint.impossibleMoments(optimizer, layout: loaded.layout)
            if !moments.isEmpty {
                print("\ncheckpoint  NOT RESUMABLE: AdamW moments no update makes (not finite, or a negative exp_avg_sq) in "
                      + moments.map { "\($0.name) (\($0.count))" }.joined(separator: ", ") + "; --resume refuses it (eval, generate and "
                      + "export, which read only the parameters, take it)")
                return false
            }
            return true
        } catch {
            print("\ncheckpoint  NOT USABLE: \(error)")
            return false
        }
    }

    /// What a tree listing has seen: each object once (a hard link to a group above it would otherwise loop), and
    /// at most `limit` lines.
    private struct Listing {
        var lines: [String] = []
        var visited: Set<[UInt8]> = []
        var omitted = 0
        /// Attributes that could not be read ("/path@name: why").
        var unreadable: [String] = []
        /// Members, or member lists, that could not be read ("/path: why").
        var unopenable: [String] = []
        let limit = 20_000

        mutating func append(_ line: String) {
            if lines.count < limit { lines.append(line) } else { omitted += 1 }
        }
    }

    private func describe(group: some HDF5Container, depth: Int, into listing: inout Listing) throws {
        let indent = String(repeating: "  ", count: depth)
        listing.append("\(indent)\(group.path == "/" ? "/" : group.path + "/")  group")
        listing.visited.insert(try group.identity())
        describeAttributes(of: group, indent: indent + "  ", into: &listing)
        // A list or member that cannot be read is said, and the rest listed (inspecting is how people find out).
        let members: [Member]
        do { members = try group.members() } catch {
            listing.append("\(indent)  (members unreadable: \(error.message))")
            listing.unopenable.append("the members of \(group.path): \(error.message)")
            return
        }
        for member in members {
            let memberPath = "\(group.path == "/" ? "" : group.path)/\(member.name)"
            do { try describe(member, at: memberPath, in: group, depth: depth, into: &listing) } catch {
                listing.append("\(indent)  \(memberPath)  unreadable: \(error)")
                listing.unopenable.append("\(memberPath): \(error)")
            }
        }
    }

    /// Lists one member of `group` (a group with what it holds, a dataset with its storage and attributes, a link);
    /// throws what HDF5 says when it cannot be read.
    private func describe(_ member: Member, at memberPath: String, in group: some HDF5Container, depth: Int, into listing: inout Listing) throws {
        let indent = String(repeating: "  ", count: depth)
        switch member.kind {
        case .group:
            let child = try group.openGroup(member.name)
            if listing.visited.contains(try child.identity()) {
                listing.append("\(indent)  \(memberPath)  (another name for a group listed above: not followed)")
            } else {
                try describe(group: child, depth: depth + 1, into: &listing)
            }
        case .dataset:
            let dataset = try group.openDataset(member.name)
            listing.visited.insert(try dataset.identity())
            let storage = try dataset.storage()
            var parts = ["\(indent)  \(dataset.path)  dataset \(dataset.typeDescription)",
                         dataset.shape.isEmpty ? "scalar" : "[" + dataset.shape.map(String.init).joined(separator: ", ") + "]"]
            if let chunks = storage.chunks { parts.append("chunks [" + chunks.map(String.init).joined(separator: ", ") + "]") }
            var filters: [String] = []
            if storage.shuffle { filters.append("shuffle") }
            if let level = storage.deflateLevel { filters.append("deflate \(level)") }
            if storage.fletcher32 { filters.append("fletcher32") }
            filters += storage.otherFilters
            if !filters.isEmpty { parts.append("filters " + filters.joined(separator: ", ")) }
            parts.append("stored \(formatBytes(storage.storedBytes))")
            listing.append(parts.joined(separator: "  "))
            describeAttributes(of: dataset, indent: indent + "    ", into: &listing)
        case .softLink:
            listing.append("\(indent)  \(memberPath)  soft link (not followed)")
        case .externalLink:
            listing.append("\(indent)  \(memberPath)  external link to another file (not followed; shards and checkpoints "
                           + "with one are refused)")
        case .other:
            listing.append("\(indent)  \(memberPath)  (link to no group or dataset)")
        case .unopenable(let reason):
            let why = "cannot be opened by this program's \(HDF5Library.version), written by a newer HDF5 or damaged: \(reason)"
            listing.unopenable.append("\(memberPath) \(why)")
            listing.append("\(indent)  \(memberPath)  \(why)")
        }
    }

    /// The attributes and their values; one that cannot be read is listed with the reason.
    private func describeAttributes(of object: some HDF5Object, indent: String, into listing: inout Listing) {
        let names: [String]
        do { names = try object.attributeNames() } catch {
            listing.append("\(indent)(attributes unreadable: \(error.message))")
            listing.unreadable.append("\(object.path): the attribute list: \(error.message)")
            return
        }
        for name in names {
            do {
                listing.append("\(indent)@\(name) = \(shorten(try object.attribute(name)))")
            } catch {
                listing.append("\(indent)@\(name) unreadable: \(error.message)")
                listing.unreadable.append("\(object.path)@\(name): \(error.message)")
            }
        }
    }

    private func shorten(_ value: AttributeValue) -> String {
        func list(_ items: [String]) -> String {
            let shown = items.prefix(maxValueLength).joined(separator: ", ")
            return items.count > maxValueLength ? "[\(shown), ... (\(items.count) elements)]" : "[\(shown)]"
        }
        switch value {
        case .string(let text) where text.count > maxValueLength:
            let head = String(text.prefix(maxValueLength)).replacingOccurrences(of: "\n", with: "\\n")
            return "\"\(head)...\" (\(text.count) characters)"
        case .string(let text):
            return "\"\(text.replacingOccurrences(of: "\n", with: "\\n"))\""
        case .integers(let values): return list(values.map(String.init))
        case .reals(let values): return list(values.map { String($0) })
        case .strings(let values): return list(values.map { "\"\($0)\"" })
        default: return value.description
        }
    }
}
