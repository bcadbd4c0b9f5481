import Foundation
import HDF5
import TestSupport
import XCTest

/// The `ddp` binary as users run it.
final class CommandLineTests: XCTestCase {
    private var ddp: String { builtProduct("ddp") }

    func testHelpListsSubcommandsAndOptions() throws {
        let root = try runProcess(ddp, ["--help"])
        XCTAssertEqual(root.status, 0, root.output)
        for text in ["data-parallel transformer training", "inspect", "bench"] {
            XCTAssertTrue(root.stdout.contains(text), "'\(text)' missing from ddp --help:\n\(root.stdout)")
        }
        let bench = try runProcess(ddp, ["bench", "allreduce", "--help"])
        XCTAssertEqual(bench.status, 0, bench.output)
        for text in ["--size-mb", "--iterations", "--warmup", "--json", "bus bandwidth"] {
            XCTAssertTrue(bench.stdout.contains(text), "'\(text)' missing from bench allreduce --help:\n\(bench.stdout)")
        }
        let inspect = try runProcess(ddp, ["inspect", "--help"])
        XCTAssertEqual(inspect.status, 0, inspect.output)
        XCTAssertTrue(inspect.stdout.contains("HDF5"), inspect.stdout)
    }

    /// Help reads as written prose: given room for any line, each paragraph is one line (no hard breaks inside
    /// sentences) without runs of spaces, and an option several commands share (`--checkpoint`, `--threads`,
    /// `--config`, `--set`, the decoding options) reads the same, with the same default, in each of them.
    func testHelpIsProseAndSharedOptionsReadTheSame() throws {
        let commands = [["prepare"], ["train"], ["eval"], ["generate"], ["inspect"], ["export"], ["bench", "allreduce"],
                        ["bench", "step"], ["bench", "data"], ["bench", "decode"]]
        var helpOf: [String: Set<String>] = [:]
        for command in commands {
            let result = try runProcess(ddp, command + ["--help"], environment: ["COLUMNS": "10000"])
            XCTAssertEqual(result.status, 0, result.output)
            let sections = result.stdout.components(separatedBy: "USAGE:")
            XCTAssertEqual(sections.count, 2, result.stdout)
            for line in sections[0].split(separator: "\n") {
                let content = line.trimmingCharacters(in: .whitespaces)
                if ["ddp ", "Launch/", "printf "].contains(where: content.hasPrefix) { continue }  // an example command
                XCTAssertFalse(content.contains("  "), "ddp \(command.joined(separator: " ")) --help: spaces in a row in '\(content)'")
                XCTAssertTrue(content.last.map { ".:)".contains($0) } ?? true,
                              "ddp \(command.joined(separator: " ")) --help: a line that stops inside a sentence: '\(content)'")
            }
            // "  --name <value>   Help text. (default: x)", the help on the next line after a long name.
            let lines = sections[1].split(separator: "\n").map(String.init)
            for (index, line) in lines.enumerated() {
                guard let match = line.wholeMatch(of: /\ \ (-[\w-]+(?:, -[\w-]+)?(?: <[\w-]+>)?)(?: +(.*))?/) else { continue }
                let name = String(match.1)
                let help = (match.2.map(String.init) ?? lines[min(index + 1, lines.count - 1)]).trimmingCharacters(in: .whitespaces)
                XCTAssertFalse(help.contains("  "), "ddp \(command.joined(separator: " ")) --help: spaces in a row in '\(help)'")
                helpOf[name, default: []].insert(help)
            }
        }
        for name in ["--checkpoint <checkpoint>", "--threads <threads>", "--config <config>", "--set <set>", "--decode <decode>",
                     "--beam-size <beam-size>", "--length-penalty <length-penalty>"] {
            XCTAssertEqual(helpOf[name]?.count, 1, "\(name) reads differently in different commands: \(helpOf[name] ?? [])")
        }
    }

    func testInspectShowsGroupsDatasetsFiltersAndAttributes() throws {
        let directory = try makeTemporaryDirectory("ddp-inspect")
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("shard.h5").path
        do {
            let file = try File.create(path)
            try file.setAttribute("format", "swiftddp-tokens")
            try file.setAttribute("vocab_size", 260)
            try file.setAttribute("long", String(repeating: "x", count: 500))
            try file.createDataset("tokens", type: .int32, shape: [4096], chunks: [1024], deflate: 4, fletcher32: true)
                .write([Int32](repeating: 5, count: 4096))
            let weight = try file.createDataset("params/embed.weight", type: .float32, shape: [260, 16])
            try weight.setAttribute("betas", [0.9, 0.98])
        }
        let result = try runProcess(ddp, ["inspect", path])
        // Listed in full, then found no valid shard: exit 1, as a check (h5check, fsck) that found a problem.
        XCTAssertEqual(result.status, 1, result.output)
        XCTAssertTrue(result.stderr.contains("\(path): 1 problem(s) found, printed above"), result.output)
        // Into one file (a job's log), standard output comes out where it was written: the report before its summary.
        let log = directory.appendingPathComponent("inspect.log").path
        _ = try runProcess("/bin/sh", ["-c", "\"$0\" inspect \"$1\" > \"$2\" 2>&1", ddp, path, log])
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").map(String.init)
        let report = try XCTUnwrap(lines.firstIndex { $0.contains("NOT VALID") }, lines.joined(separator: "\n"))
        let summary = try XCTUnwrap(lines.firstIndex { $0.contains("problem(s) found") }, lines.joined(separator: "\n"))
        XCTAssertLessThan(report, summary, lines.joined(separator: "\n"))
        for text in ["@format = \"swiftddp-tokens\"", "@vocab_size = 260", "(500 characters)",
                     "/tokens  dataset int32  [4096]  chunks [1024]  filters deflate 4, fletcher32",
                     "/params/", "/params/embed.weight  dataset float32  [260, 16]", "@betas = [0.9, 0.98]",
                     "data shard  NOT VALID: \(path): missing root attribute 'version'"] {
            XCTAssertTrue(result.stdout.contains(text), "'\(text)' missing from:\n\(result.stdout)")
        }
    }

    /// Command-line bytes that are not UTF-8 would arrive as U+FFFD (a --run-dir would name another directory): any such
    /// argument is refused, by position and by what it belongs to; with stderr closed, the refusal still exits 1.
    func testArgumentsThatAreNotUTF8AreRefused() throws {
        let directory = try makeTemporaryDirectory("ddp-not-utf8")
        defer { try? FileManager.default.removeItem(at: directory) }
        for (arguments, named) in [("--run-dir \"$(printf 'r\\377')\"", "argument 5, 'r\u{FFFD}' (after --run-dir)"),
                                   ("\"--run-dir=$(printf 'r\\377')\"", "argument 4, '--run-dir=r\u{FFFD}' (the value of --run-dir)")] {
            let result = try runProcess("/bin/sh", ["-c", "cd \"$1\" && exec \"$0\" train --config none.yaml \(arguments)", ddp, directory.path])
            XCTAssertEqual(result.status, 1, result.output)
            XCTAssertTrue(result.stderr.contains(named + ", holds bytes that are not UTF-8 text"), result.output)
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory.path), [], "no run directory made")
        }
        let closed = try runProcess("/bin/sh", ["-c", "exec \"$0\" train --config /nonexistent.yaml 2>&-", ddp])
        XCTAssertEqual(closed.status, 1, "an error with standard error closed exits 1, not a trap: \(closed.output)")
        // Output that cannot be written is an error, not a quiet exit 0; closed standard output is refused at once.
        let bench = "bench allreduce --size-mb 0.001 --iterations 1 --warmup 0"
        let full = try runProcess("/bin/sh", ["-c", "exec \"$0\" \(bench) > /dev/full", ddp], environment: mpiEnvironment)
        XCTAssertEqual(full.status, 1, full.output)
        XCTAssertTrue(full.stderr.contains("standard output: cannot be written (No space left on device)"), full.output)
        let shut = try runProcess("/bin/sh", ["-c", "exec \"$0\" \(bench) >&-", ddp], environment: mpiEnvironment)
        XCTAssertEqual(shut.status, 1, shut.output)
        XCTAssertTrue(shut.stderr.contains("standard output is closed"), shut.output)
    }

    /// A one-process command started by mpirun as several ranks is refused: each rank would print all of it, or write
    /// the same files at once.
    func testOneProcessCommandsRefuseSeveralRanks() throws {
        guard findOnPath("mpirun") != nil else { throw XCTSkip("mpirun is not installed") }
        let directory = try makeTemporaryDirectory("ddp-one-process")
        defer { try? FileManager.default.removeItem(at: directory) }
        for command in [["inspect", "/nonexistent.h5"], ["prepare", "--synthetic", "copy", "--samples", "10", "--output", directory.path + "/d"],
                        ["generate", "--checkpoint", "/nonexistent.h5", "--prompt", "a"]] {
            let result = try runUnderMPI(ranks: 2, ddp, command, timeout: 60)
            XCTAssertNotEqual(result.status, 0, result.output)
            XCTAssertTrue(result.stderr.contains("ddp \(command[0]) runs as one process, and mpirun (or srun) started 2; run it without mpirun"),
                          result.output)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory.path + "/d/train-00000.h5"), "nothing was prepared")
        // A script each rank runs, with ddp commands one after another: the refused one-process command does not start
        // MPI (it did, to say its refusal once, and the multi-rank command after it then could not start MPI).
        // (bench step is a multi-rank command; with --dry-run, a one-process one.)
        let script = "\"$0\" inspect /nonexistent.h5; \"$0\" bench step --config /nonexistent.yaml --dry-run; "
            + "exec \"$0\" bench allreduce --size-mb 0.001 --iterations 1 --warmup 0 --json"
        let sequence = try runUnderMPI(ranks: 2, "/bin/sh", ["-c", script, ddp], timeout: 60)
        XCTAssertFalse(sequence.timedOut, sequence.output)
        XCTAssertEqual(sequence.status, 0, sequence.output)
        XCTAssertEqual(sequence.stderr.components(separatedBy: "ddp inspect runs as one process").count - 1, 2, "each rank says it\n\(sequence.output)")
        XCTAssertEqual(sequence.stderr.components(separatedBy: "ddp bench step --dry-run runs as one process").count - 1, 2, sequence.output)
        XCTAssertEqual(try benchJSON(sequence)["ranks"] as? Int, 2, sequence.output)
        // srun --mpi=pmix tells its processes the step's size in SLURM_STEP_NUM_TASKS (with PMIX_RANK): counted too.
        let pmix = try runProcess(ddp, ["inspect", "/nonexistent.h5"], environment: ["PMIX_RANK": "0", "SLURM_STEP_NUM_TASKS": "3"])
        XCTAssertEqual(pmix.status, 1, pmix.output)
        XCTAssertTrue(pmix.stderr.contains("ddp inspect runs as one process, and mpirun (or srun) started 3"), pmix.output)
        let batchScript = try runProcess(ddp, ["inspect", "/nonexistent.h5"], environment: ["SLURM_STEP_NUM_TASKS": "3"])
        XCTAssertTrue(batchScript.stderr.contains("does not exist"), "a batch script's own environment is not a launch:\n\(batchScript.output)")
    }

    /// Launch/mpirun.sh: an option given last without its value, or followed by another option, is named (bash said
    /// "$2: unbound variable", or took the option for the value).
    func testTheLauncherNamesAnOptionWithoutItsValue() throws {
        let launcher = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Launch/mpirun.sh").path
        for option in ["-np", "--threads", "--hostfile", "--network", "--rsh-agent", "--env", "--mpi-arg"] {
            let result = try runProcess("/bin/bash", [launcher, option])
            XCTAssertEqual(result.status, 2, result.output)
            XCTAssertEqual(result.stderr, "mpirun.sh: \(option) needs a value\n", result.output)
            if option != "--mpi-arg" {
                let followed = try runProcess("/bin/bash", [launcher, option, "--no-bind", "bench", "allreduce"])
                XCTAssertEqual(followed.status, 2, followed.output)
                XCTAssertEqual(followed.stderr, "mpirun.sh: \(option) needs a value, not the option --no-bind\n", followed.output)
            }
        }
    }

    func testInspectErrorsNameTheFile() throws {
        let missing = try runProcess(ddp, ["inspect", "/nonexistent/shard.h5"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.stderr.contains("/nonexistent/shard.h5") && missing.stderr.contains("does not exist"), missing.output)

        let directory = try makeTemporaryDirectory("ddp-inspect-bad")
        defer { try? FileManager.default.removeItem(at: directory) }
        let text = directory.appendingPathComponent("notes.txt").path
        try "hello".write(toFile: text, atomically: true, encoding: .utf8)
        // A data directory is not a run directory: the error names one of its files instead.
        try FileManager.default.copyItem(atPath: text, toPath: directory.appendingPathComponent("train-00000.h5").path)
        let dataDirectory = try runProcess(ddp, ["inspect", directory.path])
        XCTAssertTrue(dataDirectory.stderr.contains("(a data directory? name one of its files, such as \(directory.path)/train-00000.h5)"),
                      dataDirectory.output)
        let notHDF5 = try runProcess(ddp, ["inspect", text])
        XCTAssertNotEqual(notHDF5.status, 0)
        XCTAssertTrue(notHDF5.stderr.contains("not an HDF5 file"), notHDF5.output)

        // A group whose members cannot be listed (a link name past 64 KiB) is said, and the rest of the file listed; it
        // stopped the whole listing with HDF5's words.
        let longName = directory.appendingPathComponent("long-name.h5").path
        do {
            let file = try File.create(longName)
            try file.createDataset("g/" + String(repeating: "n", count: 70_000), type: .float32, shape: [1])
            try file.createDataset("h/kept", type: .float32, shape: [2])
        }
        let listed = try runProcess(ddp, ["inspect", longName])
        XCTAssertEqual(listed.status, 1, listed.output)
        XCTAssertTrue(listed.stdout.contains("/g/  group") && listed.stdout.contains("(members unreadable: ")
                      && listed.stdout.contains("/h/kept  dataset float32"), listed.output)
        XCTAssertTrue(listed.stdout.contains("members  NOT READABLE in \(longName): the members of /g: ")
                      && listed.stdout.contains("holds a link whose name is 65536 bytes or longer"), listed.output)
    }

    private func benchJSON(_ result: ProcessResult, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        XCTAssertEqual(result.status, 0, result.output, file: file, line: line)
        let lines = result.stdout.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "only rank 0 prints, one line:\n\(result.stdout)", file: file, line: line)
        let object = try JSONSerialization.jsonObject(with: Data((lines.first ?? "").utf8))
        return try XCTUnwrap(object as? [String: Any], file: file, line: line)
    }

    func testBenchAllreduceAlone() throws {
        let json = try benchJSON(try runProcess(ddp, ["bench", "allreduce", "--size-mb", "0.5", "--iterations", "3", "--json"],
                                                environment: mpiEnvironment))
        XCTAssertEqual(json["ranks"] as? Int, 1)
        XCTAssertEqual(json["bytes"] as? Int, 524_288)
        XCTAssertEqual(json["busbw_gbps"] as? Double, 0, "one rank moves nothing over a bus")
        XCTAssertEqual(json["verified"] as? Bool, true)
    }

    func testBenchAllreduceTwoRanks() throws {
        let result = try runUnderMPI(ranks: 2, ddp, ["bench", "allreduce", "--size-mb", "1", "--iterations", "5", "--json"])
        let json = try benchJSON(result)
        XCTAssertEqual(json["ranks"] as? Int, 2)
        XCTAssertEqual(json["ranks_on_node"] as? Int, 2)
        let algbw = try XCTUnwrap(json["algbw_gbps"] as? Double)
        let busbw = try XCTUnwrap(json["busbw_gbps"] as? Double)
        XCTAssertGreaterThan(algbw, 0)
        XCTAssertEqual(busbw, algbw, accuracy: algbw * 1e-9, "2(n-1)/n = 1 for two ranks")
        let table = try runUnderMPI(ranks: 2, ddp, ["bench", "allreduce", "--size-mb", "1", "--iterations", "2"])
        XCTAssertEqual(table.status, 0, table.output)
        XCTAssertTrue(table.stdout.contains("busbw") && table.stdout.contains("2 rank(s)"), table.stdout)
        // Ranks given other options waited forever (iterations, --nonblocking) or stopped with MPI's "message truncated"
        // (sizes): refused, said once.
        guard let mpirun = findOnPath("mpirun") else { return }
        for other in [["--iterations", "500000"], ["--nonblocking"], ["--size-mb", "2"]] {
            let mixed = try runProcess(mpirun, ["-np", "1", ddp, "bench", "allreduce", "--size-mb", "1", ":", "-np", "1", ddp, "bench", "allreduce",
                                                "--size-mb", "1"] + other, environment: mpiEnvironment, timeout: 120)
            XCTAssertFalse(mixed.timedOut, "the job hung:\n\(mixed.output)")
            XCTAssertEqual(mixed.status, 1, mixed.output)
            XCTAssertEqual(mixed.stderr.components(separatedBy: "Error: ranks disagree on the options (--size-mb, --iterations, --warmup, "
                                                             + "--nonblocking): rank 1 differs from rank 0").count - 1, 1, mixed.output)
        }
    }

    func testBenchAllreduceRejectsBadOptions() throws {
        let result = try runProcess(ddp, ["bench", "allreduce", "--iterations", "0"])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.stderr.contains("--iterations must be 1 to 1000000, got 0"), result.output)
        // 8192 MB is 2^31 floats, past MPI's count: refused before 8 GiB are allocated (it failed in MPI after).
        let huge = try runProcess(ddp, ["bench", "allreduce", "--size-mb", "8192"])
        XCTAssertNotEqual(huge.status, 0)
        XCTAssertTrue(huge.stderr.contains("--size-mb must be more than 0 and less than 8192, got 8192.0"), huge.output)
    }

    /// A negative number is a value, not an option: every numeric option given one is refused by its own name with its
    /// range (ArgumentParser alone would say "Missing value" and blame nothing), before any file is touched.
    func testNegativeNumbersAreValuesRefusedByTheirOption() throws {
        let commands: [([String], String)] = [
            (["bench", "allreduce", "--size-mb"], "--size-mb"), (["bench", "allreduce", "--iterations"], "--iterations"),
            (["bench", "allreduce", "--warmup"], "--warmup"),
            (["bench", "data", "--data", "d", "--config", "c.yaml", "--batches"], "--batches"),
            (["bench", "decode", "--config", "c.yaml", "--context"], "--context"), (["bench", "decode", "--config", "c.yaml", "--rounds"], "--rounds"),
            (["bench", "step", "--config", "c.yaml", "--steps"], "--steps"), (["bench", "step", "--config", "c.yaml", "--warmup"], "--warmup"),
            (["embed", "--checkpoint", "c.h5", "--input", "i.txt", "--output", "o.h5", "--batch-size"], "--batch-size"),
            (["eval", "--checkpoint", "c.h5", "--batch-size"], "--batch-size"), (["eval", "--checkpoint", "c.h5", "--max-decode"], "--max-decode"),
            (["eval", "--checkpoint", "c.h5", "--threads"], "--threads"),
            (["inspect", "c.h5", "--max-value-length"], "--max-value-length"),
            (["prepare", "--synthetic", "reverse", "--output", "o", "--samples"], "--samples"),
            (["prepare", "--synthetic", "reverse", "--output", "o", "--shards"], "--shards"),
            (["prepare", "--synthetic", "reverse", "--output", "o", "--valid-fraction"], "--valid-fraction"),
            (["prepare", "--synthetic", "reverse", "--output", "o", "--max-length"], "--max-length"),
            (["prepare", "--task", "lm", "--input", "t.txt", "--tokenizer", "bpe", "--output", "o", "--vocab-size"], "--vocab-size"),
            (["generate", "--checkpoint", "c.h5", "--max-tokens"], "--max-tokens"),
            (["generate", "--checkpoint", "c.h5", "--length-penalty"], "--length-penalty"),
        ]
        for (arguments, option) in commands {
            let result = try runProcess(ddp, arguments + ["-2"])
            XCTAssertNotEqual(result.status, 0, "\(arguments): \(result.output)")
            XCTAssertFalse(result.stderr.contains("Missing value"), "\(arguments): \(result.output)")
            XCTAssertTrue(result.stderr.contains(option) && result.stderr.contains("-2"), "\(arguments): \(result.output)")
        }
        // Counts whose sums would overflow, and thread counts past any machine, are refused too.
        for arguments in [["bench", "step", "--config", "c.yaml", "--warmup"], ["bench", "allreduce", "--warmup"], ["bench", "allreduce", "--iterations"],
                          ["bench", "step", "--config", "c.yaml", "--threads"], ["eval", "--checkpoint", "c.h5", "--threads"]] {
            let result = try runProcess(ddp, arguments + ["\(Int.max)"])
            XCTAssertNotEqual(result.status, 0, "\(arguments): \(result.output)")
            XCTAssertTrue(result.stderr.contains("\(arguments.last!) must be ") && result.stderr.contains("got \(Int.max)"), "\(arguments): \(result.output)")
        }
        // Seeds are unsigned: a negative one is not a number they take.
        let seed = try runProcess(ddp, ["prepare", "--synthetic", "reverse", "--output", "o", "--seed", "-2"])
        XCTAssertTrue(seed.stderr.contains("--seed") && !seed.stderr.contains("Missing value"), seed.output)
    }
}
