import Basics
import Foundation
import HDF5
import TestSupport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Nothing lost, nothing silent: every command's output paths, the end of a run, run directories and resume, text
/// from any editor, and messages a user can act on — each through the binary as users run it.
final class NothingLostTests: XCTestCase {
    private var ddp: String { builtProduct("ddp") }
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try makeTemporaryDirectory("ddp-nothing-lost")
        let prepare = try runProcess(ddp, ["prepare", "--synthetic", "reverse", "--samples", "300", "--max-length", "8",
                                           "--valid-fraction", "0.1", "--output", path("data")])
        XCTAssertEqual(prepare.status, 0, prepare.output)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    private func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    private func config(_ name: String = "run.yaml", steps: Int = 6, training extra: String = "", lr: String = "3.0e-3",
                        clip: String = "1.0", eval: String = "{every: 0, decode_samples: 20}", model: String = "d_model: 32, d_ff: 64",
                        data: String = "data") throws -> String {
        try """
            model: {kind: encoder-decoder, vocab_size: 260, \(model), heads: 4, encoder_layers: 1, decoder_layers: 1,
                    activation: relu, norm: pre, positions: sinusoidal, max_length: 16, dropout: 0.0, tied_embeddings: true}
            data: {directory: \(path(data)), source_length: 9, target_length: 9}
            training: {batch_size: 8, steps: \(steps), seed: 1, threads: 1, log_every: 2, clip_norm: \(clip)\(extra)}
            optimizer: {lr: \(lr)}
            eval: \(eval)
            """.write(toFile: path(name), atomically: true, encoding: .utf8)
        return path(name)
    }

    private func ddp(_ arguments: [String], standardInput: String? = nil) throws -> ProcessResult {
        try runProcess(ddp, arguments, environment: mpiEnvironment, timeout: 300, standardInput: standardInput)
    }

    private func train(_ config: String, run: String, _ extra: [String] = [], file: StaticString = #filePath, line: UInt = #line) throws -> ProcessResult {
        let result = try ddp(["train", "--config", config, "--run-dir", path(run)] + extra)
        XCTAssertFalse(result.timedOut, result.output, file: file, line: line)
        return result
    }

    /// A new-user trial's run-directory findings: a link placed under a checkpoint name is replaced, not written
    /// through; after a resume from an earlier checkpoint, rotation keeps the run's new checkpoints (the abandoned
    /// later ones are left alone); a FIFO metrics.jsonl, a dangling --run-dir, a looping checkpoint link and a file
    /// name that is not UTF-8 are each refused by name, before anything is removed.
    func testOddRunDirectoriesAreRefusedOrHandledWithoutLoss() throws {
        let file = try config(steps: 6)
        XCTAssertEqual(try train(file, run: "r", ["--set", "checkpoint.every=2", "--set", "checkpoint.keep=5"]).status, 0)
        XCTAssertEqual(files(in: "r").filter { $0.hasPrefix("checkpoint-") },
                       ["checkpoint-00000002.h5", "checkpoint-00000004.h5", "checkpoint-00000006.h5"])
        try "checkpoint-00000002.h5\n".write(toFile: path("r/latest"), atomically: true, encoding: .utf8)
        try "precious\n".write(toFile: path("precious.txt"), atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: path("r/checkpoint-00000003.h5"), withDestinationPath: path("precious.txt"))
        let resumed = try train(try config(steps: 3), run: "r", ["--resume", "--set", "checkpoint.every=1", "--set", "checkpoint.keep=2"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertEqual(try String(contentsOfFile: path("precious.txt"), encoding: .utf8), "precious\n", "the link's target is untouched")
        XCTAssertNil(try? FileManager.default.destinationOfSymbolicLink(atPath: path("r/checkpoint-00000003.h5")), "the link was replaced")
        XCTAssertEqual(files(in: "r").filter { $0.hasPrefix("checkpoint-") },
                       ["checkpoint-00000002.h5", "checkpoint-00000003.h5", "checkpoint-00000004.h5", "checkpoint-00000006.h5"],
                       "keep 2 of this attempt's (2 and 3); 4 and 6, of the abandoned one, are left alone")
        XCTAssertTrue(resumed.stdout.contains("resume: checkpoint.keep leaves checkpoint-00000004.h5, checkpoint-00000006.h5 as they are"),
                      resumed.output)
        // Past the abandoned checkpoints' steps too: the run's own 4 and 6 are kept, the abandoned 3, 5 and 7 left alone.
        let six = try config("lineage.yaml", steps: 6)
        XCTAssertEqual(try train(six, run: "lineage", ["--set", "training.steps=7", "--set", "checkpoint.every=1",
                                                        "--set", "checkpoint.keep=10"]).status, 0)
        try "checkpoint-00000002.h5\n".write(toFile: path("lineage/latest"), atomically: true, encoding: .utf8)
        let lineage = try train(six, run: "lineage", ["--resume", "--set", "checkpoint.every=2", "--set", "checkpoint.keep=2"])
        XCTAssertEqual(lineage.status, 0, lineage.output)
        XCTAssertEqual(files(in: "lineage").filter { $0.hasPrefix("checkpoint-") }, (3...7).map { String(format: "checkpoint-%08d.h5", $0) })
        // Resumed again (from 6, the run's own): the set-aside 3, 5 and 7 stay set aside (7 until written over).
        let again = try train(try config("lineage-10.yaml", steps: 10), run: "lineage", ["--resume", "--set", "checkpoint.every=2",
                                                                                          "--set", "checkpoint.keep=2"])
        XCTAssertEqual(again.status, 0, again.output)
        XCTAssertTrue(again.stdout.contains("resume: checkpoint.keep leaves checkpoint-00000003.h5, checkpoint-00000005.h5, "
                                            + "checkpoint-00000007.h5 as they are"), again.output)
        XCTAssertEqual(files(in: "lineage").filter { $0.hasPrefix("checkpoint-") },
                       [3, 5, 7, 8, 10].map { String(format: "checkpoint-%08d.h5", $0) })

        // A checkpoint that latest names, as a link that loops.
        try FileManager.default.createSymbolicLink(atPath: path("r/checkpoint-00000009.h5"), withDestinationPath: "checkpoint-00000009.h5")
        try "checkpoint-00000009.h5\n".write(toFile: path("r/latest"), atomically: true, encoding: .utf8)
        let looping = try train(try config(steps: 12), run: "r", ["--resume"])
        XCTAssertNotEqual(looping.status, 0)
        XCTAssertTrue(looping.stderr.contains("names 'checkpoint-00000009.h5', which is a link that loops"), looping.output)

        // metrics.jsonl as a FIFO: refused (opening it would wait for a reader), not a hang.
        try FileManager.default.createDirectory(atPath: path("fifo"), withIntermediateDirectories: true)
        XCTAssertEqual(mkfifo(path("fifo/metrics.jsonl"), 0o644), 0)
        let fifo = try train(file, run: "fifo")
        XCTAssertNotEqual(fifo.status, 0)
        XCTAssertTrue(fifo.stderr.contains("\(path("fifo/metrics.jsonl")) is not a regular file (a FIFO, device or socket)"), fifo.output)

        // A --run-dir that is a dangling link: refused at start-up, not at the first checkpoint.
        try FileManager.default.createSymbolicLink(atPath: path("dangling"), withDestinationPath: path("nowhere"))
        let dangling = try train(file, run: "dangling")
        XCTAssertNotEqual(dangling.status, 0)
        XCTAssertTrue(dangling.stderr.contains("\(path("dangling")): the run directory is a link to \(path("nowhere")), which does not exist"),
                      dangling.output)
        XCTAssertFalse(dangling.stdout.contains("step "), dangling.output)
        let slashed = try ddp(["train", "--config", file, "--run-dir", path("dangling") + "/"])
        XCTAssertNotEqual(slashed.status, 0)
        XCTAssertTrue(slashed.stderr.contains("the run directory is a link to \(path("nowhere")), which does not exist"), slashed.output)

        // A directory under a checkpoint's name is someone else's: refused at start-up, never removed by --overwrite or
        // rotation; a file named like a checkpoint but not as one ("checkpoint-notes.h5") is not the run's at all.
        try FileManager.default.createDirectory(atPath: path("mine/checkpoint-00000017.h5/sub"), withIntermediateDirectories: true)
        try "thesis\n".write(toFile: path("mine/checkpoint-00000017.h5/sub/thesis.txt"), atomically: true, encoding: .utf8)
        try "notes\n".write(toFile: path("mine/checkpoint-notes.h5"), atomically: true, encoding: .utf8)
        for flags in [["--overwrite"], ["--resume-if-present"], []] {
            let refused = try train(file, run: "mine", flags)
            XCTAssertNotEqual(refused.status, 0, refused.output)
            XCTAssertTrue(refused.stderr.contains("\(path("mine/checkpoint-00000017.h5")) is a directory, under a name a run writes its own "
                                                  + "files by; a run never removes or writes over it"), "\(flags): \(refused.output)")
        }
        XCTAssertEqual(try String(contentsOfFile: path("mine/checkpoint-00000017.h5/sub/thesis.txt"), encoding: .utf8), "thesis\n")
        try FileManager.default.moveItem(atPath: path("mine/checkpoint-00000017.h5"), toPath: path("thesis"))
        XCTAssertEqual(try train(try config("mine.yaml", steps: 2), run: "mine").status, 0, "checkpoint-notes.h5 is no earlier run")
        XCTAssertEqual(try train(try config("mine.yaml", steps: 2), run: "mine", ["--overwrite"]).status, 0)
        XCTAssertTrue(files(in: "mine").contains("checkpoint-notes.h5"), "--overwrite removes only the run's own files")
        // Nor a directory named latest (removed with its contents before), nor a file named like a checkpoint that is not
        // HDF5, nor one not named as a run names them ("checkpoint-1.h5").
        try FileManager.default.removeItem(atPath: path("mine/latest"))
        try FileManager.default.createDirectory(atPath: path("mine/latest/sub"), withIntermediateDirectories: true)
        try "precious\n".write(toFile: path("mine/latest/sub/notes.txt"), atomically: true, encoding: .utf8)
        let latestDirectory = try train(try config("mine.yaml", steps: 2), run: "mine", ["--overwrite"])
        XCTAssertEqual(latestDirectory.status, 1, latestDirectory.output)
        XCTAssertTrue(latestDirectory.stderr.contains("\(path("mine/latest")) is a directory, under a name a run writes"), latestDirectory.output)
        XCTAssertEqual(try String(contentsOfFile: path("mine/latest/sub/notes.txt"), encoding: .utf8), "precious\n")
        try FileManager.default.removeItem(atPath: path("mine/latest"))
        try "mine\n".write(toFile: path("mine/checkpoint-00000009.h5"), atomically: true, encoding: .utf8)
        try "mine\n".write(toFile: path("mine/checkpoint-1.h5"), atomically: true, encoding: .utf8)
        let notHDF5 = try train(try config("mine.yaml", steps: 2), run: "mine", ["--overwrite"])
        XCTAssertEqual(notHDF5.status, 1, notHDF5.output)
        XCTAssertTrue(notHDF5.stderr.contains("\(path("mine/checkpoint-00000009.h5")) is named like a checkpoint but is not one (not an HDF5 file)"),
                      notHDF5.output)
        XCTAssertTrue(files(in: "mine").contains("checkpoint-00000002.h5"), "nothing removed")
        try FileManager.default.removeItem(atPath: path("mine/checkpoint-00000009.h5"))
        XCTAssertEqual(try train(try config("mine.yaml", steps: 2), run: "mine", ["--overwrite"]).status, 0)
        XCTAssertTrue(files(in: "mine").contains("checkpoint-1.h5"), "not a name a run writes")

        // --overwrite of a run holding a name that is not UTF-8: refused before anything is removed.
        let odd = Array(path("r/events.out.tfevents.1700000000.").utf8) + [0xFF] + Array(".7".utf8) + [0]
        let descriptor = odd.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { creat($0.baseAddress!, 0o644) } }
        XCTAssertGreaterThanOrEqual(descriptor, 0)
        close(descriptor)
        let before = files(in: "r")
        let overwrite = try train(file, run: "r", ["--overwrite"])
        XCTAssertNotEqual(overwrite.status, 0)
        XCTAssertTrue(overwrite.stderr.contains("its name is not UTF-8") && overwrite.stderr.contains("nothing was removed"), overwrite.output)
        XCTAssertEqual(files(in: "r"), before, "nothing removed")
    }

    private func files(in name: String) -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: path(name))) ?? []).sorted() }

    private func metricLines(_ run: String) throws -> [[String: Any]] {
        try String(contentsOfFile: path("\(run)/metrics.jsonl"), encoding: .utf8).split(separator: "\n").map { line in
            try XCTUnwrap(try JSONSerialization.jsonObject(with: Foundation.Data(line.utf8)) as? [String: Any], "not JSON: \(line)")
        }
    }

    // MARK: 1. A command never destroys what it was not asked to write

    func testExportNeverReplacesADirectoryOrItsInput() throws {
        XCTAssertEqual(try train(try config(), run: "a").status, 0)
        let before = files(in: "a")
        XCTAssertTrue(before.contains("latest") && before.contains("metrics.jsonl"), "\(before)")
        for (output, words) in [(path("a"), "is a directory"), (path("data"), "is a directory"),
                                (path("a/checkpoint-00000006.h5"), "input"), (path("missing/model.safetensors"), "does not exist")] {
            let result = try ddp(["export", "--checkpoint", path("a"), "--output", output])
            XCTAssertNotEqual(result.status, 0, "export to \(output) must fail:\n\(result.output)")
            XCTAssertTrue(result.stderr.contains(words) && result.stderr.contains(output), "\(output):\n\(result.output)")
        }
        XCTAssertEqual(files(in: "a"), before, "the run directory is untouched")
        XCTAssertEqual(files(in: "data").sorted(), ["train-00000.h5", "valid-00000.h5"])
        let written = try ddp(["export", "--checkpoint", path("a"), "--output", path("a/model.safetensors")])
        XCTAssertEqual(written.status, 0, written.output)
        XCTAssertEqual(files(in: "a"), (before + ["model.safetensors"]).sorted(), "a new file beside the checkpoints, no temporary left")
    }

    func testPrepareNeverMixesOrReplacesADatasetUnasked() throws {
        let again = try ddp(["prepare", "--synthetic", "copy", "--samples", "50", "--output", path("data")])
        XCTAssertNotEqual(again.status, 0, again.output)
        XCTAssertTrue(again.stderr.contains("already holds a dataset") && again.stderr.contains("--overwrite"), again.output)
        // Three shards, then one with --overwrite: the two the new dataset does not replace are gone.
        XCTAssertEqual(try ddp(["prepare", "--synthetic", "copy", "--samples", "60", "--shards", "3", "--valid-fraction", "0",
                                "--output", path("sharded")]).status, 0)
        XCTAssertEqual(files(in: "sharded"), ["train-00000.h5", "train-00001.h5", "train-00002.h5"])
        let replaced = try ddp(["prepare", "--synthetic", "copy", "--samples", "60", "--valid-fraction", "0", "--overwrite",
                                "--output", path("sharded")])
        XCTAssertEqual(replaced.status, 0, replaced.output)
        XCTAssertEqual(files(in: "sharded"), ["train-00000.h5"])
        // A shard name that is not UTF-8 could be neither removed nor read by name: refused before anything is written.
        let odd = Array(path("sharded/train-").utf8) + [0xFF] + Array(".h5".utf8) + [0]
        let descriptor = odd.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { creat($0.baseAddress!, 0o644) } }
        XCTAssertGreaterThanOrEqual(descriptor, 0)
        close(descriptor)
        let before = files(in: "sharded")
        let oddName = try ddp(["prepare", "--synthetic", "copy", "--samples", "60", "--valid-fraction", "0", "--overwrite", "--output", path("sharded")])
        XCTAssertNotEqual(oddName.status, 0, oddName.output)
        XCTAssertTrue(oddName.stderr.contains("its name is not UTF-8") && oddName.stderr.contains("nothing was written"), oddName.output)
        XCTAssertEqual(files(in: "sharded"), before)
        // An output that is a file, here the input itself.
        try "one document\n".write(toFile: path("corpus.txt"), atomically: true, encoding: .utf8)
        let onto = try ddp(["prepare", "--task", "lm", "--input", path("corpus.txt"), "--output", path("corpus.txt")])
        XCTAssertNotEqual(onto.status, 0, onto.output)
        XCTAssertTrue(onto.stderr.contains("not a directory"), onto.output)
        XCTAssertEqual(try String(contentsOfFile: path("corpus.txt"), encoding: .utf8), "one document\n")
    }

    /// A full disk while writing shards (a small tmpfs; needs root): an error naming the shard, no crash, no temporary.
    func testFullDiskWhilePreparingIsASentence() throws {
        let full = path("full")
        try FileManager.default.createDirectory(atPath: full, withIntermediateDirectories: true)
        let mount = try runProcess(try XCTUnwrap(findOnPath("mount")), ["-t", "tmpfs", "-o", "size=300k", "tmpfs", full])
        guard mount.status == 0 else { throw XCTSkip("cannot mount a small tmpfs (needs root): \(mount.output)") }
        defer { _ = try? runProcess(findOnPath("umount") ?? "umount", [full]) }
        let result = try ddp(["prepare", "--synthetic", "reverse", "--samples", "40000", "--output", full + "/d"])
        XCTAssertFalse(result.signaled, "crashed:\n\(result.output)")
        XCTAssertNotEqual(result.status, 0, result.output)
        XCTAssertTrue(result.stderr.contains("No space left on device") && result.stderr.contains(full + "/d/train-00000.h5"), result.output)
        XCTAssertFalse(result.stderr.contains(".tmp"), "the message names the file asked for: \(result.output)")
        XCTAssertEqual(files(in: "full/d").filter { $0.hasSuffix(".tmp") }, [], "no temporary left")

        // A trial's finding: where the disk filled up at the file's close, HDF5's exit handler closed it again and
        // crashed (signal 11) after the sentence (a 3 MB tmpfs, 14 MB of text).
        let larger = path("full-3m")
        try FileManager.default.createDirectory(atPath: larger, withIntermediateDirectories: true)
        XCTAssertEqual(try runProcess(try XCTUnwrap(findOnPath("mount")), ["-t", "tmpfs", "-o", "size=3m", "tmpfs", larger]).status, 0)
        defer { _ = try? runProcess(findOnPath("umount") ?? "umount", [larger]) }
        var random = SplitMix64(seed: 3)
        let words = ["alpha", "beta", "gamma", "delta"]
        let text = (0..<400_000).map { _ in (0..<12).map { _ in words[Int(random.next() % 4)] }.joined(separator: " ") }.joined(separator: "\n")
        try text.write(toFile: path("big.txt"), atomically: true, encoding: .utf8)
        let lm = try ddp(["prepare", "--task", "lm", "--input", path("big.txt"), "--output", larger + "/d"])
        XCTAssertFalse(lm.signaled, "crashed:\n\(lm.output)")
        XCTAssertEqual(lm.status, 1, lm.output)
        XCTAssertTrue(lm.stderr.contains("No space left on device"), lm.output)
    }

    /// A closed terminal (SIGHUP) while prepare writes its shards: the temporaries go, as for SIGINT and SIGTERM (a
    /// trial found SIGHUP left a hidden temporary shard behind).
    func testAHangUpWhilePreparingLeavesNoTemporary() throws {
        var random = SplitMix64(seed: 4)
        let words = ["alpha", "beta", "gamma", "delta", "epsilon"]
        let text = (0..<600_000).map { _ in (0..<12).map { _ in words[Int(random.next() % 5)] }.joined(separator: " ") }.joined(separator: "\n")
        try text.write(toFile: path("hangup.txt"), atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ddp)
        process.arguments = ["prepare", "--task", "lm", "--input", path("hangup.txt"), "--output", path("hangup/sub")]
        process.standardOutput = FileHandle.nullDevice
        let standardError = Pipe()
        process.standardError = standardError
        try process.run()
        let deadline = Date().addingTimeInterval(120)
        while process.isRunning, Date() < deadline, !files(in: "hangup/sub").contains(where: { $0.hasSuffix(".tmp") }) {
            Thread.sleep(forTimeInterval: 0.005)
        }
        guard process.isRunning else { return XCTFail("prepare finished before a temporary was seen: give it more text to write") }
        kill(process.processIdentifier, SIGHUP)
        let said = String(decoding: standardError.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 128 + SIGHUP)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("hangup")), "no temporary left, nor the directories prepare made for it")
        // Said, not only an exit status (a trial's prepare ended 143 in silence).
        XCTAssertTrue(said.contains("ddp: stopped by signal \(SIGHUP) (Hangup) before it finished writing \(path("hangup/sub/train-00000.h5")): "
                                    + "not written (what was there before is untouched), and nothing half-written is left"), said)
    }

    /// A signal in the first fraction of a second, while the command installs its handlers, ends it too (by the signal's
    /// default action before the handlers are in place): a trial's SIGTERM 0.1 s into ddp eval was lost 2 times in
    /// 60 (SIG_IGN was set before libdispatch had its handler in place) and the command ran to its end.
    func testASignalAtStartUpIsNeverLost() throws {
        var random = SplitMix64(seed: 9)
        let text = (0..<200_000).map { _ in String(repeating: "word ", count: 1 + Int(random.next() % 9)) }.joined(separator: "\n")
        try text.write(toFile: path("startup.txt"), atomically: true, encoding: .utf8)
        for step in 0..<8 {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: ddp)
            process.arguments = ["prepare", "--task", "lm", "--input", path("startup.txt"), "--output", path("startup")]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            Thread.sleep(forTimeInterval: 0.02 * Double(step))
            kill(process.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(10)
            while process.isRunning, Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
            XCTAssertFalse(process.isRunning, "SIGTERM \(0.02 * Double(step)) s after the start was lost")
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            XCTAssertTrue(process.terminationReason == .uncaughtSignal ? process.terminationStatus == SIGTERM
                                                                       : process.terminationStatus == 128 + SIGTERM,
                          "\(process.terminationReason) \(process.terminationStatus)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: path("startup")), "nothing of the output is left")
        }
    }

    /// Leftovers of killed writes are removed by the next write into the same place; an input named like a shard
    /// inside --output is refused (it would stay there and be read as a shard of the new dataset), nothing removed.
    func testLeftoversAreSweptAndInputsKept() throws {
        try "text".write(toFile: path("data/.train-00000.h5.DEADBEEF.tmp"), atomically: true, encoding: .utf8)
        // A shard's writer nests its temporary in the set's: a kill leaves this name.
        try "text".write(toFile: path("data/..valid-00001.h5.0BADF00D.tmp.DEADBEEF.tmp"), atomically: true, encoding: .utf8)
        try "one document\n\nanother one\n".write(toFile: path("data/valid-00007.h5"), atomically: true, encoding: .utf8)
        let refused = try ddp(["prepare", "--task", "lm", "--input", path("data/valid-00007.h5"), "--valid-fraction", "0",
                               "--output", path("data"), "--overwrite"])
        XCTAssertNotEqual(refused.status, 0, refused.output)
        XCTAssertTrue(refused.stderr.contains("\(path("data/valid-00007.h5")): is an input of this prepare and, as "
                                              + "\(path("data/valid-00007.h5")), would stay in --output as a shard"), refused.output)
        XCTAssertEqual(files(in: "data"), ["train-00000.h5", "valid-00000.h5", "valid-00007.h5"], "the earlier dataset and the input stay")
        try FileManager.default.moveItem(atPath: path("data/valid-00007.h5"), toPath: path("corpus.txt"))
        let result = try ddp(["prepare", "--task", "lm", "--input", path("corpus.txt"), "--valid-fraction", "0",
                              "--output", path("data"), "--overwrite"])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertEqual(files(in: "data"), ["train-00000.h5"], "the old shards and the leftovers go")

        XCTAssertEqual(try ddp(["prepare", "--synthetic", "reverse", "--samples", "300", "--max-length", "8", "--valid-fraction", "0.1",
                                "--output", path("data"), "--overwrite"]).status, 0)
        XCTAssertEqual(try train(try config(steps: 2), run: "r").status, 0)
        try "partial".write(toFile: path("r/.checkpoint-00000004.h5.0BADF00D.tmp"), atomically: true, encoding: .utf8)
        let resumed = try train(try config(steps: 3), run: "r", ["--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertTrue(resumed.stdout.contains("removed 1 temporary file(s) an interrupted checkpoint write left"), resumed.output)
        XCTAssertFalse(files(in: "r").contains { $0.hasSuffix(".tmp") })
    }

    // MARK: 2. Work is never lost at the end of a run

    /// A diverging run whose final evaluation overflows perplexity: the last checkpoint is written first, and
    /// metrics.jsonl stays valid JSON with null for what is not finite.
    func testNonFiniteEvaluationKeepsTheCheckpointAndValidMetrics() throws {
        let result = try train(try config(steps: 4, lr: "30.0", eval: "{every: 2, decode_samples: 4}"), run: "diverged")
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(files(in: "diverged").contains("checkpoint-00000004.h5"), result.output)
        let evaluations = try metricLines("diverged").filter { $0["valid_loss"] != nil }
        XCTAssertEqual(evaluations.count, 2)
        XCTAssertTrue(evaluations.contains { $0["valid_perplexity"] is NSNull }, "an infinite perplexity is written as null: \(evaluations)")
    }

    /// The valid shard held open for writing by another process once training has started: the final evaluation
    /// fails, the run still ends with its checkpoint, says why, records it, and exits non-zero.
    func testFailingFinalEvaluationKeepsTheTrainedState() throws {
        let long = try config(steps: 200)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ddp)
        process.arguments = ["train", "--config", long, "--run-dir", path("locked")]
        process.environment = ProcessInfo.processInfo.environment.merging(mpiEnvironment) { _, new in new }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let deadline = Date().addingTimeInterval(120)
        while ((try? String(contentsOfFile: path("locked/metrics.jsonl"), encoding: .utf8))?.count ?? 0) == 0 && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.05)
        }
        // HDF5 locks with flock(2): an exclusive lock is what a writer holds.
        let descriptor = open(path("data/valid-00000.h5"), O_RDWR)
        XCTAssertGreaterThanOrEqual(descriptor, 0)
        XCTAssertEqual(flock(descriptor, LOCK_EX), 0)
        defer { close(descriptor) }
        let (finished, _) = waitForExit(process, within: 240)
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(finished, text)
        XCTAssertNotEqual(process.terminationStatus, 0, text)
        XCTAssertTrue(files(in: "locked").contains("checkpoint-00000200.h5"), "the trained state is saved:\n\(text)")
        XCTAssertTrue(text.contains("final evaluation failed"), text)
        XCTAssertTrue(text.contains("another process holds this file open for writing") && text.contains("HDF5_USE_FILE_LOCKING=FALSE"), text)
        XCTAssertTrue(try metricLines("locked").contains { ($0["eval_error"] as? String)?.contains("valid-00000.h5") == true })
        let inspect = try ddp(["inspect", path("locked")])
        XCTAssertTrue(inspect.stdout.contains("checksums verified"), inspect.output)
    }

    // MARK: 3. The watchdog times waiting, not work

    /// A healthy 2-rank run whose evaluations take longer than its collective_timeout (1 s). (Rank 0's long
    /// checkpoint write is the same mechanism; WatchdogTests checks it with 3 s of work under a 1 s timeout.)
    func testLongEvaluationIsNotAStall() throws {
        // Enough to decode that an evaluation takes well over 1 s in a debug build (1,600 samples
        // once took 0.9 s after the kernels got faster, and the test no longer tested anything).
        let prepare = try ddp(["prepare", "--synthetic", "reverse", "--samples", "4000", "--max-length", "8",
                               "--valid-fraction", "0.5", "--output", path("many")])
        XCTAssertEqual(prepare.status, 0, prepare.output)
        let slow = try config(steps: 4, training: ", collective_timeout: 1", eval: "{every: 2, decode_samples: 100000}", data: "many")
        let result = try runUnderMPI(ranks: 2, ddp, ["train", "--config", slow, "--run-dir", path("healthy")], timeout: 600)
        XCTAssertFalse(result.timedOut, result.output)
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertFalse(result.output.contains("did not complete"), result.output)
        let evaluations = try metricLines("healthy").filter { $0["valid_loss"] != nil }
        XCTAssertEqual(evaluations.count, 2, result.output)
        for evaluation in evaluations {
            XCTAssertGreaterThan(evaluation["valid_seconds"] as? Double ?? 0, 1, "an evaluation longer than the timeout: \(evaluation)")
        }
    }

    // MARK: 4. Resume and run directories say what they do

    func testRunDirectoryRules() throws {
        let six = try config()
        let nothing = try train(six, run: "empty", ["--resume"])
        XCTAssertNotEqual(nothing.status, 0)
        XCTAssertTrue(nothing.stderr.contains("nothing to resume"), nothing.output)
        XCTAssertEqual(try train(six, run: "empty", ["--resume-if-present"]).status, 0, "resume-if-present starts fresh")

        XCTAssertEqual(try train(six, run: "first").status, 0)
        let again = try train(six, run: "first")
        XCTAssertNotEqual(again.status, 0)
        XCTAssertTrue(again.stderr.contains("holds an earlier run (its latest checkpoint is at step 6)") && again.stderr.contains("--overwrite"),
                      again.output)
        XCTAssertEqual(try metricLines("first").filter { $0["loss"] != nil }.count, 6, "metrics untouched")
        let overwritten = try train(try config("three.yaml", steps: 3), run: "first", ["--overwrite"])
        XCTAssertEqual(overwritten.status, 0, overwritten.output)
        XCTAssertEqual(files(in: "first").filter { $0.hasPrefix("checkpoint-") }, ["checkpoint-00000003.h5"])
        XCTAssertEqual(try metricLines("first").filter { $0["loss"] != nil }.map { $0["step"] as? Int }, [1, 2, 3], "a new metrics file")

        // A config without data.directory is named with the key; a constant warm-up longer than the run is pointed out.
        try (try String(contentsOfFile: six, encoding: .utf8)).replacingOccurrences(of: "directory: \(path("data")), ", with: "")
            .write(toFile: path("no-data.yaml"), atomically: true, encoding: .utf8)
        let noData = try train(path("no-data.yaml"), run: "no-data")
        XCTAssertEqual(noData.status, 1, noData.output)
        XCTAssertTrue(noData.stderr.contains("\(path("no-data.yaml")): config key 'data.directory': is not set"), noData.output)
        let warm = try train(six, run: "warm", ["--set", "schedule.warmup_steps=12"])
        XCTAssertEqual(warm.status, 0, warm.output)
        XCTAssertTrue(warm.stdout.contains("note: schedule.warmup_steps 12 is longer than the run's 6 updates: the learning rate reaches only "
                                           + "0.0015, 50% of optimizer.lr"), warm.output)
        // A checkpoint renamed by hand resumes where its contents say, and the mismatch is pointed out.
        XCTAssertEqual(try train(six, run: "renamed").status, 0)
        try FileManager.default.moveItem(atPath: path("renamed/checkpoint-00000006.h5"), toPath: path("renamed/checkpoint-00000005.h5"))
        try "checkpoint-00000005.h5\n".write(toFile: path("renamed/latest"), atomically: true, encoding: .utf8)
        let renamed = try train(try config("eight.yaml", steps: 8), run: "renamed", ["--resume"])
        XCTAssertEqual(renamed.status, 0, renamed.output)
        XCTAssertTrue(renamed.stdout.contains("holds step 6, not the step 5 its name says; resuming at step 6"), renamed.output)
        // A snapshot made of hard links (cp -al) keeps its metrics when the run goes on: the run appends to a copy.
        XCTAssertEqual(link(path("renamed/metrics.jsonl"), path("snapshot-metrics.jsonl")), 0)
        XCTAssertEqual(link(path("renamed/.ddp-train.lock"), path("snapshot.lock")), 0, "cp -al links the lock file too")
        let snapshot = try String(contentsOfFile: path("snapshot-metrics.jsonl"), encoding: .utf8)
        let linked = try train(try config("ten.yaml", steps: 10), run: "renamed", ["--resume"])
        XCTAssertEqual(linked.status, 0, linked.output)
        XCTAssertTrue(linked.stdout.contains("\(path("renamed/metrics.jsonl")) had 1 other name (hard links): the run appends to a copy of it, "
                                             + "and that name keeps the lines it had"), linked.output)
        XCTAssertEqual(try String(contentsOfFile: path("snapshot-metrics.jsonl"), encoding: .utf8), snapshot, "the other name is unchanged")
        XCTAssertEqual(try metricLines("renamed").filter { $0["loss"] != nil }.map { $0["step"] as? Int }, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        // A config from a pipe names no run: --run-dir is asked for (it trained into runs/63, the pipe's number).
        let piped = try runProcess("/bin/bash", ["-c", "cd \"$1\" && exec \"$0\" train --config <(cat \"$2\")", ddp, directory.path, six],
                                   environment: mpiEnvironment, timeout: 120)
        XCTAssertEqual(piped.status, 1, piped.output)
        XCTAssertTrue(piped.stderr.contains("is a pipe, whose name says nothing of the run: give --run-dir"), piped.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("runs")), "no run directory named after the pipe")
        // A refused start leaves no directory of its own making behind (a mistyped --run-dir with --resume).
        let typo = try train(six, run: "typo/deeper", ["--resume"])
        XCTAssertEqual(typo.status, 1, typo.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("typo")), "nothing left of typo/deeper")
        try "not a directory".write(toFile: path("plain"), atomically: true, encoding: .utf8)
        let file = try train(six, run: "plain")
        XCTAssertNotEqual(file.status, 0)
        XCTAssertTrue(file.stderr.contains("the run directory is a regular file"), file.output)
        // A device is not called a file (a trial's --output /dev/null said "is a file").
        let device = try ddp(["train", "--config", six, "--run-dir", "/dev/null"])
        XCTAssertNotEqual(device.status, 0)
        XCTAssertTrue(device.stderr.contains("/dev/null: the run directory is a character device"), device.output)
    }

    /// A trial's finding: an update that diverged (here a learning rate of 3e38) left parameters that are not finite
    /// with a finite loss, and its checkpoint was written, `latest` moved to it and the good one rotated away. Now it
    /// is not written, and the last good one stays `latest`. AdamW moments no update makes (a negative exp_avg_sq,
    /// written by hand) are refused by --resume and pointed out by inspect.
    func testADivergedModelIsNeverCheckpointed() throws {
        let five = try config("five.yaml", steps: 5), ten = try config("ten.yaml", steps: 10)
        XCTAssertEqual(try train(five, run: "diverged", ["--set", "checkpoint.keep=1"]).status, 0)
        let diverged = try train(ten, run: "diverged", ["--resume", "--set", "optimizer.lr=3.0e38", "--set", "optimizer.weight_decay=10",
                                                       "--set", "checkpoint.every=1", "--set", "checkpoint.keep=1"])
        XCTAssertEqual(diverged.status, 1, diverged.output)
        XCTAssertTrue(diverged.stderr.contains("checkpoint-00000006.h5: is not written: after step 6 the model holds parameters that are not "
                                               + "finite (NaN or infinity) in ")
                      && diverged.stderr.contains("the run's latest checkpoint, \(path("diverged/checkpoint-00000005.h5")), is untouched"),
                      diverged.output)
        XCTAssertEqual(files(in: "diverged").filter { $0.hasPrefix("checkpoint-") }, ["checkpoint-00000005.h5"])
        XCTAssertEqual(try String(contentsOfFile: path("diverged/latest"), encoding: .utf8), "checkpoint-00000005.h5\n")
        XCTAssertEqual(try ddp(["inspect", path("diverged")]).status, 0, "the good checkpoint stays usable")

        // A negative second moment: inspect says the checkpoint cannot be resumed, and --resume refuses it by tensor.
        do {
            let file = try File.open(path("diverged/checkpoint-00000005.h5"), mode: .readWrite)
            let moment = try file.openDataset("optimizer/exp_avg_sq/embed.weight")
            var values = try moment.read(as: Float.self)
            values[0] = -1
            try moment.write(values)
            try file.close()
        }
        let inspected = try ddp(["inspect", path("diverged")])
        XCTAssertEqual(inspected.status, 1, inspected.output)
        XCTAssertTrue(inspected.stdout.contains("NOT RESUMABLE: AdamW moments no update makes (not finite, or a negative exp_avg_sq) in "
                                                + "exp_avg_sq of embed.weight (1)"), inspected.output)
        let resumed = try train(ten, run: "diverged", ["--resume"])
        XCTAssertEqual(resumed.status, 1, resumed.output)
        XCTAssertTrue(resumed.stderr.contains("cannot resume: AdamW moments no update makes (not finite, or a negative exp_avg_sq) in "
                                              + "exp_avg_sq of embed.weight (1)"), resumed.output)
    }

    /// A requeued job whose first attempt died before its first checkpoint, and a `latest` naming a deleted file.
    func testResumeIfPresentAndOverwriteAfterAbruptEnds() throws {
        try FileManager.default.createDirectory(atPath: path("early"), withIntermediateDirectories: true)
        try #"{"step": 1, "loss": 5.0}"#.write(toFile: path("early/metrics.jsonl"), atomically: true, encoding: .utf8)
        let requeued = try train(try config(steps: 2), run: "early", ["--resume-if-present"])
        XCTAssertEqual(requeued.status, 0, requeued.output)
        XCTAssertTrue(files(in: "early").contains("metrics-without-checkpoint.jsonl"), "the earlier attempt's metrics are kept")
        XCTAssertEqual(try metricLines("early").filter { $0["loss"] != nil }.count, 2)

        XCTAssertEqual(try train(try config(steps: 2), run: "dangling").status, 0)
        try FileManager.default.removeItem(atPath: path("dangling/checkpoint-00000002.h5"))
        let overwritten = try train(try config(steps: 2), run: "dangling", ["--overwrite"])
        XCTAssertEqual(overwritten.status, 0, overwritten.output)
        XCTAssertTrue(files(in: "dangling").contains("checkpoint-00000002.h5"))

        // A damaged latest, or a latest naming a file elsewhere: the refusal names the checkpoints still there.
        XCTAssertEqual(try train(try config(steps: 4), run: "damaged", ["--set", "checkpoint.every=2"]).status, 0)
        let newest = path("damaged/checkpoint-00000004.h5")
        let bytes = try Foundation.Data(contentsOf: URL(fileURLWithPath: newest))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: newest))
        let damaged = try train(try config(steps: 6), run: "damaged", ["--resume"])
        XCTAssertNotEqual(damaged.status, 0)
        XCTAssertTrue(damaged.stderr.contains("\(path("damaged")) also holds checkpoint-00000002.h5: to go on from one, write its name "
                                              + "(checkpoint-00000002.h5, say) into \(path("damaged/latest"))"), damaged.output)
        try "/etc/passwd\n".write(toFile: path("damaged/latest"), atomically: true, encoding: .utf8)
        let elsewhere = try train(try config(steps: 6), run: "damaged", ["--resume"])
        XCTAssertNotEqual(elsewhere.status, 0)
        XCTAssertTrue(elsewhere.stderr.contains("names '/etc/passwd', which is not a checkpoint file name of the run directory"), elsewhere.output)
        try Foundation.Data([0x63, 0xFF, 0xFE, 0x0A]).write(to: URL(fileURLWithPath: path("damaged/latest")))
        let notText = try train(try config(steps: 6), run: "damaged", ["--resume"])
        XCTAssertNotEqual(notText.status, 0)
        XCTAssertTrue(notText.stderr.contains("is not a text file naming a checkpoint") && notText.stderr.contains("also holds checkpoint-00000004.h5, checkpoint-00000002.h5"),
                      notText.output)
        // Checkpoints without a latest: --resume and --resume-if-present both name them, neither starts over.
        try FileManager.default.removeItem(atPath: path("damaged/latest"))
        for flag in ["--resume", "--resume-if-present"] {
            let noLatest = try train(try config(steps: 6), run: "damaged", [flag])
            XCTAssertNotEqual(noLatest.status, 0, flag)
            XCTAssertTrue(noLatest.stderr.contains("\(path("damaged/latest")) is missing, so nothing names the checkpoint to resume from; "
                                                   + "\(path("damaged")) also holds checkpoint-00000004.h5, checkpoint-00000002.h5"), noLatest.output)
            XCTAssertFalse(noLatest.output.contains("starting a fresh run"), noLatest.output)
        }
        // Without a flag, the refusal says how to continue (not "with --resume", which needs latest).
        let plain = try train(try config(steps: 6), run: "damaged", [])
        XCTAssertNotEqual(plain.status, 0)
        XCTAssertTrue(plain.stderr.contains("To continue it, write the name of a checkpoint (checkpoint-00000004.h5, say) into "
                                            + "\(path("damaged/latest")) and give --resume; start over with --overwrite"), plain.output)
        // A FIFO where latest names a checkpoint is refused before it is opened (HDF5 would wait for a writer).
        XCTAssertEqual(mkfifo(path("damaged/checkpoint-00000006.h5"), 0o644), 0)
        try "checkpoint-00000006.h5\n".write(toFile: path("damaged/latest"), atomically: true, encoding: .utf8)
        let fifoCheckpoint = try train(try config(steps: 8), run: "damaged", ["--resume"])
        XCTAssertNotEqual(fifoCheckpoint.status, 0)
        XCTAssertTrue(fifoCheckpoint.stderr.contains("checkpoint-00000006.h5 is a FIFO, device or socket, under a name a run writes"),
                      fifoCheckpoint.output)
        try FileManager.default.removeItem(atPath: path("damaged/checkpoint-00000006.h5"))
        try "checkpoint-00000004.h5\n".write(toFile: path("damaged/latest"), atomically: true, encoding: .utf8)
        // A FIFO named latest is refused, not read (which would wait for a writer).
        try FileManager.default.removeItem(atPath: path("damaged/latest"))
        XCTAssertEqual(mkfifo(path("damaged/latest"), 0o644), 0)
        let fifo = try train(try config(steps: 6), run: "damaged", ["--resume"])
        XCTAssertNotEqual(fifo.status, 0)
        XCTAssertTrue(fifo.stderr.contains("\(path("damaged/latest")) is a FIFO, device or socket, under a name a run writes"), fifo.output)
        try FileManager.default.removeItem(atPath: path("damaged/latest"))
        try "checkpoint-00000004.h5\n".write(toFile: path("damaged/latest"), atomically: true, encoding: .utf8)
        // A link among the run's own files is refused, not written through (it would change the file it points to).
        try "precious\n".write(toFile: path("precious.txt"), atomically: true, encoding: .utf8)
        try FileManager.default.removeItem(atPath: path("damaged/latest"))
        try FileManager.default.createSymbolicLink(atPath: path("damaged/latest"), withDestinationPath: path("precious.txt"))
        let linked = try train(try config(steps: 6), run: "damaged", ["--resume"])
        XCTAssertNotEqual(linked.status, 0)
        XCTAssertTrue(linked.stderr.contains("\(path("damaged/latest")) is a symbolic link (to \(path("precious.txt")))"), linked.output)
        XCTAssertEqual(try String(contentsOfFile: path("precious.txt"), encoding: .utf8), "precious\n")
        try FileManager.default.removeItem(atPath: path("damaged/latest"))
        try "checkpoint-00000002.h5\n".write(toFile: path("damaged/latest"), atomically: true, encoding: .utf8)
        let earlier = try train(try config(steps: 6), run: "damaged", ["--resume"])
        XCTAssertEqual(earlier.status, 0, earlier.output)
        XCTAssertTrue(earlier.stdout.contains("at step 2"), earlier.output)
        // A tensor of latest that cannot be read, under mpirun: every rank stops with rank 0's sentence, no MPI abort.
        guard let python = pythonWithH5py(), findOnPath("mpirun") != nil else {
            print("NothingLostTests: python3 with h5py or mpirun missing; the damaged-tensor resume under mpirun is not tried")
            return
        }
        let flip = try runProcess(python, ["-c", """
            import h5py, sys
            path = sys.argv[1]
            with h5py.File(path, 'r') as f: offset = f['params/embed.weight'].id.get_chunk_info(0).byte_offset
            with open(path, 'r+b') as raw:
                raw.seek(offset + 64); data = bytearray(raw.read(8)); raw.seek(offset + 64); raw.write(bytes(b ^ 0xFF for b in data))
            """, path("damaged/checkpoint-00000006.h5")])
        XCTAssertEqual(flip.status, 0, flip.output)
        let ranks = try runUnderMPI(ranks: 2, ddp, ["train", "--config", try config(steps: 8), "--run-dir", path("damaged"), "--resume",
                                                    "--set", "training.batch_size=4"], timeout: 120)
        XCTAssertNotEqual(ranks.status, 0)
        XCTAssertFalse(ranks.output.contains("MPI_ABORT"), ranks.output)
        XCTAssertTrue(ranks.stderr.contains("Error: checkpoint \(path("damaged/checkpoint-00000006.h5")): tensor /params/embed.weight"),
                      ranks.output)
    }

    func testResumeSaysWhatChangedAndRefusesWhatChangesTheSamples() throws {
        XCTAssertEqual(try train(try config(steps: 4), run: "r").status, 0)
        // Fewer steps than the checkpoint has taken: said, not a silent "done".
        let behind = try train(try config(steps: 2), run: "r", ["--resume"])
        XCTAssertEqual(behind.status, 0, behind.output)
        XCTAssertTrue(behind.stdout.contains("nothing to train: the checkpoint is at step 4 and training.steps is 2"), behind.output)
        XCTAssertTrue(behind.stdout.contains("done at step 4"), behind.output)
        let batch = try train(try config(steps: 8), run: "r", ["--resume", "--set", "training.batch_size=4"])
        XCTAssertNotEqual(batch.status, 0)
        XCTAssertTrue(batch.stderr.contains("global batch: 8") && batch.stderr.contains("4 now"), batch.output)
        let seed = try train(try config(steps: 8), run: "r", ["--resume", "--set", "training.seed=9"])
        XCTAssertNotEqual(seed.status, 0)
        XCTAssertTrue(seed.stderr.contains("training.seed"), seed.output)
        let allowed = try train(try config(steps: 8, lr: "1.0e-3"), run: "r", ["--resume"])
        XCTAssertEqual(allowed.status, 0, allowed.output)
        XCTAssertTrue(allowed.stdout.contains("resume: optimizer.lr: 0.003"), allowed.output)
        XCTAssertTrue(allowed.stdout.contains("resume: training.steps: 4 in the checkpoint, 8 now"), allowed.output)
        XCTAssertTrue(allowed.stdout.contains("resumed from"), allowed.output)
        // Dropout is training's, not the network's: it may change; the network may not.
        let dropout = try train(try config(steps: 9, lr: "1.0e-3"), run: "r", ["--resume", "--set", "model.dropout=0.2"])
        XCTAssertEqual(dropout.status, 0, dropout.output)
        XCTAssertTrue(dropout.stdout.contains("resume: model.dropout: 0 in the checkpoint, 0.2 now"), dropout.output)
        let wider = try train(try config(steps: 10, lr: "1.0e-3", model: "d_model: 32, d_ff: 128"), run: "r", ["--resume"])
        XCTAssertNotEqual(wider.status, 0)
        XCTAssertTrue(wider.stderr.contains("was written for another model") && wider.stderr.contains("d_ff"), wider.output)
        XCTAssertFalse(wider.stderr.contains("also holds"), "a refusal, not damage: no other checkpoint to go on from: \(wider.output)")
        // A language model's target_length cuts its windows: refused for that reason alone, not also as other data.
        let text = (0..<30).map { "document \($0) with a handful of words" }.joined(separator: "\n\n")
        try text.write(toFile: path("lm.txt"), atomically: true, encoding: .utf8)
        XCTAssertEqual(try ddp(["prepare", "--task", "lm", "--input", path("lm.txt"), "--output", path("lm"), "--valid-fraction", "0"]).status, 0)
        try """
            model: {kind: decoder-only, vocab_size: 260, d_model: 32, d_ff: 64, heads: 4, decoder_layers: 1, activation: gelu, norm: pre,
                    positions: learned, max_length: 16, dropout: 0.0, tied_embeddings: true}
            data: {directory: \(path("lm")), target_length: 16}
            training: {batch_size: 4, steps: 2, seed: 1, threads: 1}
            """.write(toFile: path("lm.yaml"), atomically: true, encoding: .utf8)
        XCTAssertEqual(try train(path("lm.yaml"), run: "lm-run").status, 0)
        let windows = try train(path("lm.yaml"), run: "lm-run", ["--resume", "--set", "training.steps=4", "--set", "data.target_length=8"])
        XCTAssertNotEqual(windows.status, 0)
        XCTAssertTrue(windows.stderr.contains("cannot resume: changed data.target_length"), windows.output)
        XCTAssertFalse(windows.stderr.contains("the training data"), "the data did not change: \(windows.output)")

        // Data with the same shards, samples and tokens but other content (prepared again with another seed, say):
        // refused as other data. Before, only names and counts were compared, and the run went on over other samples.
        try FileManager.default.copyItem(atPath: path("data"), toPath: path("shuffled"))
        do {
            let file = try File.open(path("shuffled/train-00000.h5"), mode: .readWrite)
            let tokens = try file.openDataset("target/tokens")
            let values: [Int32] = try tokens.read()
            try tokens.write(Array(values.dropFirst()) + [values[0]])  // the same tokens, each one place on
        }
        let shuffled = try train(try config(steps: 12, lr: "1.0e-3"), run: "r", ["--resume", "--set", "data.directory=\(path("shuffled"))"])
        XCTAssertNotEqual(shuffled.status, 0, shuffled.output)
        XCTAssertTrue(shuffled.stderr.contains("the training data (\(path("shuffled")) holds other shards, samples or tokenizer"), shuffled.output)
        let same = try train(try config(steps: 10, lr: "1.0e-3"), run: "r", ["--resume"])
        XCTAssertEqual(same.status, 0, same.output)
    }

    /// A prepare --overwrite killed while it renamed its files into place leaves a mix of two datasets (a trial: two new
    /// train files beside two old ones, which training read in silence): refused within a split and across the splits.
    func testAMixOfTwoPreparesIsRefused() throws {
        for seed in ["1", "2"] {
            let made = try ddp(["prepare", "--synthetic", "reverse", "--samples", "200", "--max-length", "8", "--shards", "2", "--seed", seed, "--output", path("seed\(seed)")])
            XCTAssertEqual(made.status, 0, made.output)
        }
        try FileManager.default.copyItem(atPath: path("seed1"), toPath: path("mixed"))
        try FileManager.default.removeItem(atPath: path("mixed/train-00001.h5"))
        try FileManager.default.copyItem(atPath: path("seed2/train-00001.h5"), toPath: path("mixed/train-00001.h5"))
        let withinSplit = try train(try config("mixed.yaml", steps: 2, data: "mixed"), run: "mixed-run")
        XCTAssertEqual(withinSplit.status, 1, withinSplit.output)
        XCTAssertTrue(withinSplit.stderr.contains("\(path("mixed")): holds train files of 2 ddp prepares"), withinSplit.output)
        try FileManager.default.copyItem(atPath: path("seed1"), toPath: path("valid-mixed"))
        for name in ["valid-00000.h5", "valid-00001.h5"] {
            try FileManager.default.removeItem(atPath: path("valid-mixed/\(name)"))
            try FileManager.default.copyItem(atPath: path("seed2/\(name)"), toPath: path("valid-mixed/\(name)"))
        }
        // (Across the splits it is said, not refused: a validation set prepared on its own looks the same.)
        let acrossSplits = try train(try config("valid-mixed.yaml", steps: 2, data: "valid-mixed"), run: "valid-mixed-run")
        XCTAssertEqual(acrossSplits.status, 0, acrossSplits.output)
        XCTAssertTrue(acrossSplits.stdout.contains("valid-00000.h5 was written by another ddp prepare than"), acrossSplits.output)
        let whole = try train(try config("whole.yaml", steps: 2, data: "seed2"), run: "whole-run")
        XCTAssertEqual(whole.status, 0, "one prepare's files train: \(whole.output)")
        XCTAssertFalse(whole.stdout.contains("note: "), whole.output)
        // Some of one prepare's files train too, with a note (a subset someone chose, or a file lost).
        try FileManager.default.removeItem(atPath: path("seed2/train-00001.h5"))
        let subset = try train(try config("subset.yaml", steps: 2, data: "seed2"), run: "subset-run")
        XCTAssertEqual(subset.status, 0, subset.output)
        XCTAssertTrue(subset.stdout.contains("note: \(path("seed2")) holds 1 of the 2 train files ddp prepare wrote (dataset_id "), subset.output)
        XCTAssertTrue(subset.stdout.contains("only those are read; if files were lost, prepare the data again"), subset.output)
    }

    // MARK: 5. Text from any editor

    /// A fine-tune (--init, a config without a model section) resumes from its own checkpoint: the --init file is not
    /// needed, nor read, once the run has one (it may have moved since).
    func testAFineTuneResumesWithoutItsInitCheckpoint() throws {
        XCTAssertEqual(try train(try config(steps: 2), run: "base").status, 0)
        try FileManager.default.copyItem(atPath: path("base/checkpoint-00000002.h5"), toPath: path("base.h5"))
        try """
            data: {directory: \(path("data")), source_length: 9, target_length: 9}
            training: {batch_size: 8, steps: 2, seed: 1, threads: 1}
            eval: {every: 0, decode_samples: 0}
            """.write(toFile: path("finetune.yaml"), atomically: true, encoding: .utf8)
        let started = try train(path("finetune.yaml"), run: "ft", ["--init", path("base.h5")])
        XCTAssertEqual(started.status, 0, started.output)
        try FileManager.default.removeItem(atPath: path("base.h5"))
        let resumed = try train(path("finetune.yaml"), run: "ft", ["--resume", "--set", "training.steps=3"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertTrue(resumed.stdout.contains("done at step 3"), resumed.output)
        let requeued = try train(path("finetune.yaml"), run: "ft", ["--resume-if-present", "--init", path("base.h5"), "--set", "training.steps=4"])
        XCTAssertEqual(requeued.status, 0, requeued.output)
        XCTAssertTrue(requeued.stdout.contains("--init \(path("base.h5")) is not read: \(path("ft")) resumes its own run"), requeued.output)
        XCTAssertTrue(requeued.stdout.contains("done at step 4"), requeued.output)
        // Without its latest, the fine-tune's resume says so (not that the config lacks a model section).
        try FileManager.default.moveItem(atPath: path("ft/latest"), toPath: path("ft-latest"))
        let noLatest = try train(path("finetune.yaml"), run: "ft", ["--resume", "--set", "training.steps=5"])
        XCTAssertNotEqual(noLatest.status, 0)
        XCTAssertTrue(noLatest.stderr.contains("\(path("ft/latest")) is missing, so nothing names the checkpoint to resume from"), noLatest.output)
        try FileManager.default.moveItem(atPath: path("ft-latest"), toPath: path("ft/latest"))
        // A run whose config names its model keeps that config's values on resume: a key left out since the start
        // takes its default (and the change is said), not the checkpoint's value.
        try (try String(contentsOfFile: try config(steps: 2), encoding: .utf8)).replacingOccurrences(of: "dropout: 0.0", with: "dropout: 0.1")
            .write(toFile: path("dropout.yaml"), atomically: true, encoding: .utf8)
        XCTAssertEqual(try train(path("dropout.yaml"), run: "dropout").status, 0)
        try (try String(contentsOfFile: try config(steps: 3), encoding: .utf8)).replacingOccurrences(of: " dropout: 0.0,", with: "")
            .write(toFile: path("dropout.yaml"), atomically: true, encoding: .utf8)
        let defaulted = try train(path("dropout.yaml"), run: "dropout", ["--resume"])
        XCTAssertEqual(defaulted.status, 0, defaulted.output)
        XCTAssertTrue(defaulted.stdout.contains("resume: model.dropout: 0.1 in the checkpoint, 0 now"), defaulted.output)
        // On 2 ranks (the same global batch): rank 0 reads the run's model and sends it to the other.
        guard findOnPath("mpirun") != nil else { return }
        let ranks = try runUnderMPI(ranks: 2, ddp, ["train", "--config", path("finetune.yaml"), "--run-dir", path("ft"), "--resume",
                                                    "--set", "training.steps=5", "--set", "training.batch_size=4"],
                                    environment: mpiEnvironment, timeout: 120)
        XCTAssertEqual(ranks.status, 0, ranks.output)
        XCTAssertTrue(ranks.stdout.contains("done at step 5"), ranks.output)
    }

    func testWindowsAndOldMacLineEndings() throws {
        let documents = (0..<20).map { "Document \($0) line one\r\nline two of \($0)" }.joined(separator: "\r\n\r\n") + "\r\n"
        try documents.write(toFile: path("crlf.txt"), atomically: true, encoding: .utf8)
        let lm = try ddp(["prepare", "--task", "lm", "--input", path("crlf.txt"), "--valid-fraction", "0.1", "--output", path("lm")])
        XCTAssertEqual(lm.status, 0, lm.output)
        XCTAssertTrue(lm.stdout.contains("train       18 documents"), lm.output)
        let file = try File.open(path("lm/train-00000.h5"))
        XCTAssertFalse(try file.openDataset("tokens").read(as: Int32.self).contains(4 + 13), "no carriage return stored")

        try "hello\tolleh\r\nabc\tcba\r\n".write(toFile: path("pairs.tsv"), atomically: true, encoding: .utf8)
        let tsv = try ddp(["prepare", "--tsv", path("pairs.tsv"), "--valid-fraction", "0", "--output", path("tsv")])
        XCTAssertEqual(tsv.status, 0, tsv.output)
        XCTAssertTrue(tsv.stdout.contains("train       2 pairs"), tsv.output)
        try "one\rtwo\rthree\r".write(toFile: path("src.txt"), atomically: true, encoding: .utf8)
        try "eno\rowt\reerht\r".write(toFile: path("tgt.txt"), atomically: true, encoding: .utf8)
        let parallel = try ddp(["prepare", "--source", path("src.txt"), "--target", path("tgt.txt"), "--valid-fraction", "0.34",
                                "--output", path("cr")])
        XCTAssertTrue(parallel.stdout.contains("train       2 pairs") && parallel.stdout.contains("valid       1 pairs"), parallel.output)

        try "single\n".write(toFile: path("one.txt"), atomically: true, encoding: .utf8)
        let lonely = try ddp(["prepare", "--task", "lm", "--input", path("one.txt"), "--output", path("one")])
        XCTAssertEqual(lonely.status, 0, lonely.output)
        XCTAssertTrue(lonely.stderr.contains("the valid split is empty"), "an empty split is said: \(lonely.output)")
    }

    // MARK: 6. Messages a user can act on

    func testMessagesNameTheUsersFilesAndLeaveNothingBehind() throws {
        XCTAssertEqual(try train(try config(), run: "m").status, 0)
        let temporaries = { ((try? FileManager.default.contentsOfDirectory(atPath: NSTemporaryDirectory())) ?? []).filter { $0.hasPrefix("ddp-eval-") } }
        let before = temporaries()
        try "a\n".write(toFile: path("short.txt"), atomically: true, encoding: .utf8)
        try "b\n".write(toFile: path("short-target.txt"), atomically: true, encoding: .utf8)
        try "one\ntwo\n".write(toFile: path("two-lines.txt"), atomically: true, encoding: .utf8)
        let mismatched = try ddp(["eval", "--checkpoint", path("m"), "--source", path("two-lines.txt"), "--target", path("short-target.txt")])
        XCTAssertNotEqual(mismatched.status, 0)
        XCTAssertTrue(mismatched.stderr.contains(path("short-target.txt")), mismatched.output)
        XCTAssertFalse(mismatched.output.contains("ddp-eval-"), "no temporary directory in the message: \(mismatched.output)")
        XCTAssertEqual(temporaries(), before, "the temporary shards are removed")

        // Standard input with a line too long for the model in the middle: the rest is translated, and it says so.
        let lines = "abc\r\n" + String(repeating: "x", count: 40) + "\r\nxyz\n"
        let generate = try ddp(["generate", "--checkpoint", path("m")], standardInput: lines)
        XCTAssertNotEqual(generate.status, 0, generate.output)
        XCTAssertEqual(generate.stdout.split(separator: "\n", omittingEmptySubsequences: false).count, 4, "three lines out:\n\(generate.stdout)")
        XCTAssertTrue(generate.stderr.contains("standard input line 2") && generate.stderr.contains("1 of 3 input line(s)"), generate.output)

        // Invalid UTF-8 and a byte-order mark on standard input: the mark is dropped, the bad line reported.
        var bytes = Foundation.Data([0xEF, 0xBB, 0xBF]) + Foundation.Data("abc\n".utf8)
        bytes += Foundation.Data([0x61, 0xFF, 0x62, 0x0A]) + Foundation.Data("xyz\n".utf8)
        let input = path("stdin.bin")
        try bytes.write(to: URL(fileURLWithPath: input))
        let piped = try runProcess("/bin/sh", ["-c", "exec \"$0\" generate --checkpoint \"$1\" < \"$2\"", ddp, path("m"), input],
                                   environment: mpiEnvironment)
        let withBOM = try ddp(["generate", "--checkpoint", path("m"), "--input", "abc"])
        XCTAssertEqual(piped.stdout.split(separator: "\n", omittingEmptySubsequences: false).first,
                       withBOM.stdout.split(separator: "\n", omittingEmptySubsequences: false).first, "the mark is not part of the first line")
        XCTAssertTrue(piped.stderr.contains("standard input line 2: is not UTF-8 text"), piped.output)

        // Text evaluation names its file in the report; too little text says so about that file.
        let text = try ddp(["eval", "--checkpoint", path("m"), "--source", path("two-lines.txt"), "--target", path("two-lines.txt"), "--json"])
        let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Foundation.Data(text.stdout.utf8)) as? [String: Any], text.output)
        XCTAssertEqual(report["data"] as? String, path("two-lines.txt") + ", " + path("two-lines.txt"))
        XCTAssertEqual(report["split"] as? String, "text")
        let nothing = try ddp(["eval", "--checkpoint", path("m"), "--source", "/dev/null", "--target", "/dev/null"])
        XCTAssertNotEqual(nothing.status, 0)
        XCTAssertTrue(nothing.stderr.contains("/dev/null"), nothing.output)

        // Empty paths and special files as outputs, and config values of the wrong kind, are sentences.
        let emptyRun = try ddp(["train", "--config", try config(), "--run-dir", ""])
        XCTAssertTrue(emptyRun.stderr.contains("--run-dir is empty"), emptyRun.output)
        let device = try ddp(["export", "--checkpoint", path("m"), "--output", "/dev/null"])
        XCTAssertTrue(device.stderr.contains("a character device"), device.output)
        let schedule = try ddp(["train", "--config", try config(), "--run-dir", path("s"), "--set", "schedule.kind=cosin"])
        XCTAssertTrue(schedule.stderr.contains("--set schedule.kind=cosin") && schedule.stderr.contains("must be one of constant, noam, cosine"),
                      schedule.output)
        let batch = try ddp(["train", "--config", try config(), "--run-dir", path("s"), "--set", "training.batch_size=abc"])
        XCTAssertTrue(batch.stderr.contains("--set training.batch_size=abc") && batch.stderr.contains("expected an integer"), batch.output)

        let descriptor = open(path("data/valid-00000.h5"), O_RDWR)
        XCTAssertEqual(flock(descriptor, LOCK_EX), 0)
        let locked = try ddp(["eval", "--checkpoint", path("m")])
        close(descriptor)
        XCTAssertNotEqual(locked.status, 0)
        XCTAssertTrue(locked.stderr.contains("another process holds this file open for writing"), locked.output)

        for result in [mismatched, generate, locked, nothing, emptyRun, device, schedule, batch] {
            XCTAssertFalse(result.output.contains("NSCocoaErrorDomain") || result.output.contains("Code="), result.output)
        }
    }

    // MARK: 7. A metric that means something on one-word outputs

    func testChrFAndAnHonestBLEUForOneWordOutputs() throws {
        XCTAssertEqual(try train(try config(), run: "c").status, 0)
        let result = try ddp(["eval", "--checkpoint", path("c"), "--json"])
        XCTAssertEqual(result.status, 0, result.output)
        let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Foundation.Data(result.stdout.utf8)) as? [String: Any])
        // Reversed strings are one word each, so BLEU-4 has nothing of order 2 to count: sacrebleu's 0, with the reason.
        XCTAssertEqual(report["bleu"] as? Double, 0, "\(report)")
        let reason = try XCTUnwrap(report["bleu_note"] as? String, "\(report)")
        XCTAssertTrue(reason.contains("no hypothesis has") || reason.contains("empty"), reason)
        XCTAssertNotNil(report["chrf"] as? Double, "\(report)")
        let table = try ddp(["eval", "--checkpoint", path("c")])
        XCTAssertTrue(table.stdout.contains("BLEU            0.00  BLEU|nrefs:1|") && table.stdout.contains("(0 whatever the output: \(reason))"),
                      table.output)
        XCTAssertTrue(table.stdout.contains("chrF "), table.output)
    }
}
