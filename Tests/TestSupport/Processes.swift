import Foundation

/// What a finished child process did.
public struct ProcessResult: Sendable {
    public let status: Int32
    public let stdout: String
    public let stderr: String
    public let timedOut: Bool
    /// Ended by a signal (a crash: SIGSEGV, SIGILL, a Swift trap's SIGTRAP or SIGABRT); `status` is then its number.
    public var signaled: Bool = false
    public var output: String { stdout + stderr }
}

/// Runs `executable` with `arguments`, killing it after `timeout` seconds so a hang fails the test instead of
/// stalling CI. Output goes through files, not pipes, so a chatty child never blocks on a full pipe.
/// `standardInput`, when given, is what the child reads from standard input. The child's environment is this
/// process's with `environment` added (replacing) and the variables named in `unsetting` removed.
public func runProcess(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                       unsetting: [String] = [], timeout: TimeInterval = 120, standardInput: String? = nil) throws -> ProcessResult {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ddp-proc-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let outURL = directory.appendingPathComponent("out")
    let errURL = directory.appendingPathComponent("err")
    _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
    _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
    let outHandle = try FileHandle(forWritingTo: outURL)
    let errHandle = try FileHandle(forWritingTo: errURL)

    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        .filter { !unsetting.contains($0.key) }
    process.standardOutput = outHandle
    process.standardError = errHandle
    if let standardInput {
        let inURL = directory.appendingPathComponent("in")
        try standardInput.write(to: inURL, atomically: true, encoding: .utf8)
        process.standardInput = try FileHandle(forReadingFrom: inURL)
    }
    try process.run()
    let deadline = Date().addingTimeInterval(timeout)
    var timedOut = false
    while process.isRunning {
        if Date() > deadline {
            timedOut = true
            process.terminate()
            Thread.sleep(forTimeInterval: 2)
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            break
        }
        Thread.sleep(forTimeInterval: 0.05)
    }
    process.waitUntilExit()
    try outHandle.close()
    try errHandle.close()
    return ProcessResult(status: process.terminationStatus,
                         stdout: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
                         stderr: (try? String(contentsOf: errURL, encoding: .utf8)) ?? "",
                         timedOut: timedOut, signaled: process.terminationReason == .uncaughtSignal)
}

/// A program on PATH, or nil.
public func findOnPath(_ name: String) -> String? {
    for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
        let candidate = "\(directory)/\(name)"
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    return nil
}

/// A product built next to the test bundle (same build directory and configuration).
public func builtProduct(_ name: String) -> String {
    let testBinary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    var directory = testBinary.deletingLastPathComponent()
    // On Linux the test runner is .build/<triple>/<config>/<Package>PackageTests.xctest (a file);
    // elsewhere it may be a bundle directory nested deeper.
    while !FileManager.default.isExecutableFile(atPath: directory.appendingPathComponent(name).path),
          directory.path != "/" {
        directory = directory.deletingLastPathComponent()
    }
    return directory.appendingPathComponent(name).path
}

/// Environment that lets Open MPI run as root (CI runs as root) and keeps BLAS to one thread per rank.
public var mpiEnvironment: [String: String] {
    var environment = ["OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"]
    if getuid() == 0 {
        environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    }
    return environment
}

/// Runs `program` under `mpirun -np ranks` (oversubscribed when there are more ranks than cores).
public func runUnderMPI(ranks: Int, _ program: String, _ arguments: [String], environment: [String: String] = [:],
                        timeout: TimeInterval = 180) throws -> ProcessResult {
    guard let mpirun = findOnPath("mpirun") else {
        throw NSError(domain: "TestSupport", code: 1, userInfo: [NSLocalizedDescriptionKey: "mpirun is not on PATH"])
    }
    var mpiArguments = ["-np", String(ranks)]
    if ranks > ProcessInfo.processInfo.activeProcessorCount { mpiArguments.append("--oversubscribe") }
    return try runProcess(mpirun, mpiArguments + [program] + arguments,
                          environment: mpiEnvironment.merging(environment) { _, chosen in chosen }, timeout: timeout)
}

/// A fresh temporary directory for one test.
public func makeTemporaryDirectory(_ label: String = "ddp-test") throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(label)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// A Python that can import torch, h5py and numpy (SWIFTDDP_TORCH_PYTHON, TORCH_PYTHON, or python3), or nil: tests
/// that compare with PyTorch skip and say so. CI has no torch.
public func pythonWithTorch() -> String? {
    pythonImporting("torch, h5py, numpy", candidates: ["SWIFTDDP_TORCH_PYTHON", "TORCH_PYTHON"], timeout: 120)
}

/// A python3 that can import h5py, or nil (tests that need it skip and say so).
public func pythonWithH5py() -> String? {
    pythonImporting("h5py, numpy", candidates: ["SWIFTDDP_PYTHON"], timeout: 60)
}

/// A Python that can import sacrebleu (SWIFTDDP_PYTHON, SWIFTDDP_TORCH_PYTHON or python3), or nil (tests that score
/// with it skip and say so).
public func pythonWithSacrebleu() -> String? {
    pythonImporting("sacrebleu", candidates: ["SWIFTDDP_PYTHON", "SWIFTDDP_TORCH_PYTHON"], timeout: 60)
}

/// A Python that can import tensorboard's event reader (SWIFTDDP_PYTHON, SWIFTDDP_TORCH_PYTHON or python3), or nil
/// (tests that read event files with it skip and say so).
public func pythonWithTensorBoard() -> String? {
    pythonImporting("tensorboard.backend.event_processing.event_accumulator", candidates: ["SWIFTDDP_PYTHON", "SWIFTDDP_TORCH_PYTHON"],
                    timeout: 120)
}

/// A Python that can import the `tokenizers` package (SWIFTDDP_PYTHON, SWIFTDDP_TORCH_PYTHON or python3), or nil
/// (tests that compare with it skip and say so).
public func pythonWithTokenizers() -> String? {
    pythonImporting("tokenizers", candidates: ["SWIFTDDP_PYTHON", "SWIFTDDP_TORCH_PYTHON"], timeout: 60)
}

/// A Python that can import torch, transformers and tokenizers (SWIFTDDP_TORCH_PYTHON, TORCH_PYTHON or python3), or
/// nil (tests that compare with transformers skip and say so; CI has no torch).
public func pythonWithTransformers() -> String? {
    pythonImporting("torch, transformers, tokenizers", candidates: ["SWIFTDDP_TORCH_PYTHON", "TORCH_PYTHON"], timeout: 180)
}

/// `Tests/Reference/NAME`, the reference scripts beside the tests.
public func referenceScript(_ name: String) -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Reference").appendingPathComponent(name).path
}

/// The first of the Pythons named by the environment variables `candidates`, then python3 on the PATH, that can
/// import `modules` (a comma-separated list), or nil.
private func pythonImporting(_ modules: String, candidates: [String], timeout: Double) -> String? {
    let environment = ProcessInfo.processInfo.environment
    for candidate in candidates.compactMap({ environment[$0] }) + [findOnPath("python3")].compactMap({ $0 }) {
        if let result = try? runProcess(candidate, ["-c", "import \(modules)"], timeout: timeout), result.status == 0 {
            return candidate
        }
    }
    return nil
}

/// Waits up to `seconds` for a started process to end; terminates it if it has not. Returns whether it ended by
/// itself, and after how long.
public func waitForExit(_ process: Process, within seconds: Double) -> (finished: Bool, elapsed: Double) {
    let start = Date()
    while process.isRunning && Date().timeIntervalSince(start) < seconds { Thread.sleep(forTimeInterval: 0.1) }
    let finished = !process.isRunning
    if !finished { process.terminate() }
    process.waitUntilExit()
    return (finished, Date().timeIntervalSince(start))
}
