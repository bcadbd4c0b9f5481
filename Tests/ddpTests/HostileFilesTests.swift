import Basics
import Foundation
import TestSupport
import XCTest

/// Files SwiftDDP did not write: crafted shards, checkpoints and configs (Tests/CraftedFiles/make_crafted_files.py),
/// and byte-flipped or truncated copies of files it did write. Every command must end with a sentence naming the file
/// — never a signal, a trap or a hang — within a 4 GiB address space and a minute.
final class HostileFilesTests: XCTestCase {
    private var ddp: String { builtProduct("ddp") }
    private var directory: URL!
    private let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    /// The address-space cap every command runs under (`ulimit -v`, KiB): the documented bound on its memory.
    private let memoryCapKiB = 4 << 20

    override func setUpWithError() throws { directory = try makeTemporaryDirectory("ddp-hostile") }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    private func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// Runs ddp under the memory cap and a 60 s limit.
    private func capped(_ arguments: [String]) throws -> ProcessResult {
        try runProcess("/bin/sh", ["-c", "ulimit -v \(memoryCapKiB); exec \"$0\" \"$@\"", ddp] + arguments,
                       environment: mpiEnvironment, timeout: 60)
    }

    private func run(_ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let result = try runProcess(ddp, arguments, environment: mpiEnvironment, timeout: 300)
        XCTAssertEqual(result.status, 0, result.output, file: file, line: line)
    }

    /// A seq2seq shard, a language-model shard and a checkpoint, all written by ddp.
    private func realFiles() throws -> (seq2seq: String, lm: String, checkpoint: String) {
        try run(["prepare", "--synthetic", "reverse", "--samples", "200", "--max-length", "8", "--valid-fraction", "0.1",
                 "--output", path("reverse")])
        try (0..<40).map { "Document \($0): the quick brown fox jumps over the lazy dog.\n\n" }.joined()
            .write(toFile: path("text.txt"), atomically: true, encoding: .utf8)
        try run(["prepare", "--task", "lm", "--input", path("text.txt"), "--valid-fraction", "0", "--output", path("lm")])
        try config("base.yaml", data: path("reverse"))
        try run(["train", "--config", path("base.yaml"), "--run-dir", path("run")])
        return (path("reverse/train-00000.h5"), path("lm/train-00000.h5"), path("run/checkpoint-00000002.h5"))
    }

    @discardableResult
    private func config(_ name: String, data: String, kind: String = "encoder-decoder") throws -> String {
        let seq2seq = kind == "encoder-decoder"
        try """
            model: {kind: \(kind), vocab_size: 260, d_model: 16, heads: 2, encoder_layers: \(seq2seq ? 1 : 0), decoder_layers: 1, d_ff: 32,
                    activation: relu, norm: pre, positions: sinusoidal, max_length: 16, dropout: 0.0, tied_embeddings: true}
            data: {directory: \(data), \(seq2seq ? "source_length: 9, target_length: 9" : "target_length: 8")}
            training: {batch_size: 4, steps: 2, threads: 1}
            \(seq2seq ? "eval: {decode_samples: 4}" : "")
            """.write(toFile: path(name), atomically: true, encoding: .utf8)
        return path(name)
    }

    /// Every command a crafted file reaches, as a user would run it.
    private func commands(for item: [String: String], file: String) throws -> [[String]] {
        let name = (file as NSString).lastPathComponent
        switch item["kind"] {
        case "shard", "lm":
            let isLM = item["kind"] == "lm"
            let data = path("data-\(name)")
            try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: file, toPath: data + "/train-00000.h5")
            if FileManager.default.fileExists(atPath: path("crafted/elsewhere.h5")) {
                try? FileManager.default.copyItem(atPath: path("crafted/elsewhere.h5"), toPath: data + "/elsewhere.h5")
            }
            let yaml = try config("config-\(name).yaml", data: data, kind: isLM ? "decoder-only" : "encoder-decoder")
            var list = [["inspect", file], ["inspect", data + "/train-00000.h5"],
                        ["train", "--config", yaml, "--run-dir", path("run-\(name)")],
                        ["bench", "data", "--data", data, "--config", yaml, "--batches", "2"]]
            if !isLM { list.append(["eval", "--checkpoint", path("run"), "--data", data, "--split", "train"]) }
            return list
        case "checkpoint":
            let run = path("resume-\(name)")
            try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: file, toPath: run + "/checkpoint-00000002.h5")
            try "checkpoint-00000002.h5\n".write(toFile: run + "/latest", atomically: true, encoding: .utf8)
            return [["inspect", file], ["inspect", "--tree", file], ["eval", "--checkpoint", file, "--data", path("reverse")],
                    ["generate", "--checkpoint", file, "--input", "abc"],
                    ["export", "--checkpoint", file, "--output", path("export-\(name).safetensors")],
                    ["train", "--config", path("base.yaml"), "--run-dir", run, "--resume", "--set", "training.steps=3"]]
        default:
            return [["train", "--config", file, "--run-dir", path("run-\(name)")], ["bench", "step", "--config", file, "--dry-run"]]
        }
    }

    func testCraftedFilesNeverCrashHangOrExhaustMemory() throws {
        guard let python = pythonWithH5py() else { throw XCTSkip("python3 with h5py is not installed: crafted-file checks skipped") }
        let files = try realFiles()
        let generator = repository.appendingPathComponent("Tests/CraftedFiles/make_crafted_files.py").path
        let made = try runProcess(python, [generator, files.seq2seq, files.lm, files.checkpoint, path("crafted")], timeout: 600)
        XCTAssertEqual(made.status, 0, made.output)
        let items = try made.stdout.split(separator: "\n").map {
            try XCTUnwrap(try JSONSerialization.jsonObject(with: Foundation.Data($0.utf8)) as? [String: String])
        }
        XCTAssertGreaterThan(items.count, 30, made.output)
        var runs = 0
        for item in items {
            let file = path("crafted/" + (item["file"] ?? ""))
            let name = (file as NSString).lastPathComponent
            for arguments in try commands(for: item, file: file) {
                let started = Date()
                let result = try capped(arguments)
                runs += 1
                let what = "\(item["what"] ?? name): ddp \(arguments.joined(separator: " "))"
                XCTAssertFalse(result.timedOut, "\(what): still running after 60 s\n\(result.output)")
                XCTAssertFalse(result.signaled, "\(what): ended by signal \(result.status)\n\(result.output)")
                XCTAssertFalse(result.output.contains("Fatal error") || result.output.contains("failed to allocate"), "\(what)\n\(result.output)")
                XCTAssertLessThan(Date().timeIntervalSince(started), 60, what)
                // A member this HDF5 cannot open (a newer format) is a problem of the listing: said, and exit 1.
                if name.contains("newer-format-member"), arguments.first == "inspect", item["kind"] != "checkpoint" || arguments.contains("--tree") {
                    XCTAssertEqual(result.status, 1, "\(what): a member it cannot open, and exit 0\n\(result.output)")
                    XCTAssertTrue(result.stdout.contains("members  NOT READABLE in \(arguments.last!): ")
                                  && result.stdout.contains("notes cannot be opened by this program's HDF5 1."), "\(what)\n\(result.output)")
                }
                if name == "lm-newer-format-tokens.h5", arguments.first == "train" {
                    XCTAssertTrue(result.output.contains("dataset /tokens cannot be opened by this program's HDF5 1."), "\(what)\n\(result.output)")
                }
                // A listing may end normally, saying what is wrong; everything else refuses the file, naming it.
                if item["usable"] == "yes" { continue }
                let saidSo = result.status != 0 || result.stdout.contains("NOT ")
                XCTAssertTrue(saidSo, "\(what): accepted a crafted file\n\(result.output)")
                let named = result.output.contains(name) || result.output.contains("data-\(name)") || result.output.contains("resume-\(name)")
                XCTAssertTrue(named, "\(what): the message does not name the file\n\(result.output)")
                // A filter this HDF5 lacks is named as such (it read as damage: "cannot be read (damaged?)").
                if name.contains("lzf") {
                    XCTAssertTrue(result.output.contains("compressed with the HDF5 filter 'lzf' (id 32000)"), "\(what)\n\(result.output)")
                }
                // A crafted data file is refused for itself, not for the config written beside it (named after it).
                if item["kind"] != "config" {
                    XCTAssertFalse(result.output.contains("config key"), "\(what): the config was refused, not the file\n\(result.output)")
                }
            }
        }
        print("crafted files: \(items.count) variants, \(runs) commands, none crashed, hung or went past \(memoryCapKiB >> 20) GiB")
    }

    /// A seeded sweep of one-byte flips and truncations over a shard and a checkpoint that ddp wrote: `ddp inspect`
    /// (which reads every value and checksum) never crashes, and each mutant is either reported as damaged or read with
    /// exactly the original content (the same content digest and listing).
    func testByteFlipsAreReportedOrHarmless() throws {
        let files = try realFiles()
        var random = SplitMix64(seed: 20)
        var verdicts: [String: [String: Int]] = [:]
        for original in [files.seq2seq, files.checkpoint] {
            let bytes = try Foundation.Data(contentsOf: URL(fileURLWithPath: original))
            let reference = try capped(["inspect", original])
            XCTAssertEqual(reference.status, 0, reference.output)
            func listing(_ result: ProcessResult, _ file: String) -> [String] {
                Array(result.stdout.replacingOccurrences(of: file, with: "FILE").split(separator: "\n").dropFirst().map(String.init))
            }
            let expected = listing(reference, original)
            XCTAssertTrue(expected.contains { $0.contains("content digest") }, reference.output)
            let mutant = path("mutant.h5")
            for _ in 0..<150 {
                var data = bytes
                let description: String
                if random.next() % 7 == 0 {
                    let length = Int(random.next() % UInt64(bytes.count))
                    data = bytes.prefix(length)
                    description = "truncated to \(length) bytes"
                } else {
                    let position = Int(random.next() % UInt64(bytes.count)), mask = UInt8(1 + random.next() % 255)
                    data[position] ^= mask
                    description = "byte \(position) xor \(mask)"
                }
                try data.write(to: URL(fileURLWithPath: mutant))
                let result = try capped(["inspect", mutant])
                let what = "\((original as NSString).lastPathComponent) \(description)"
                XCTAssertFalse(result.signaled || result.timedOut, "\(what): crashed or hung\n\(result.output)")
                let verdict: String
                if result.status != 0 || result.stdout.contains("NOT ") {
                    verdict = "reported"
                    XCTAssertEqual(result.status, 1, "\(what): damage reported, so inspect exits 1\n\(result.output)")
                    XCTAssertTrue(result.output.contains(mutant), "\(what): the report does not name the file\n\(result.output)")
                } else {
                    verdict = "harmless"
                    XCTAssertEqual(listing(result, mutant), expected, "\(what): read with other content and no word of damage")
                }
                verdicts[(original as NSString).lastPathComponent, default: [:]][verdict, default: 0] += 1
            }
        }
        print("byte flips and truncations: \(verdicts)")
    }
}
