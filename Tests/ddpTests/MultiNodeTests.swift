import Foundation
import TestSupport
import XCTest

/// Multi-host runs over real TCP: two hosts are network namespaces joined by a bridge (Launch/test-cluster.sh),
/// mpirun starts on host 1 and reaches host 2 through the cluster's rsh agent, as it would over ssh.
final class MultiNodeTests: XCTestCase {
    private var ddp: String { builtProduct("ddp") }
    private var directory: URL!
    private let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    private var cluster: String { root.appendingPathComponent("Launch/test-cluster.sh").path }
    /// Each test builds its own cluster state directory, so a failed run leaves nothing for the next one.
    private var clusterEnvironment: [String: String] {
        mpiEnvironment.merging(["DDP_BIN": ddp, "SWIFTDDP_CLUSTER_DIR": path("cluster")]) { _, new in new }
    }

    override func setUpWithError() throws {
        guard getuid() == 0 else { throw XCTSkip("network namespaces need root") }
        guard findOnPath("ip") != nil, findOnPath("unshare") != nil else {
            throw XCTSkip("needs iproute2 (ip) and util-linux (unshare); Launch/setup.sh installs iproute2")
        }
        directory = try makeTemporaryDirectory("ddp-multinode")
        let up = try runProcess(cluster, ["up", "2"], environment: clusterEnvironment)
        guard up.status == 0 else {
            _ = try? runProcess(cluster, ["down"], environment: clusterEnvironment)
            throw XCTSkip("cannot create network namespaces here (no CAP_NET_ADMIN?): \(up.output)")
        }
    }

    override func tearDownWithError() throws {
        guard let directory else { return }
        let down = try runProcess(cluster, ["down"], environment: clusterEnvironment)
        XCTAssertEqual(down.status, 0, down.output)
        try? FileManager.default.removeItem(at: directory)
    }

    private func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// `ddp ARGUMENTS` on the test cluster: `hosts` x `perHost` ranks, one thread each.
    private func clusterArguments(hosts: Int = 2, perHost: Int = 1, _ arguments: [String]) -> [String] {
        ["mpirun", "--slots", String(perHost), "-np", String(hosts * perHost), "--threads", "1", "--"] + arguments
    }

    func testAllreduceAcrossTwoHostsWithOneAndTwoRanksEach() throws {
        for perHost in [1, 2] {
            let result = try runProcess(cluster, clusterArguments(perHost: perHost, ["bench", "allreduce", "--size-mb", "2", "--iterations", "3"]),
                                        environment: clusterEnvironment, timeout: 120)
            XCTAssertEqual(result.status, 0, result.output)
            // Open MPI sees two nodes: ranks share memory only with the ranks of their own host.
            XCTAssertTrue(result.stdout.contains("\(2 * perHost) rank(s) (\(perHost) on this node)"), result.output)
            XCTAssertTrue(result.stdout.contains("verified    every element, every rank, every iteration"), result.output)
        }
    }

    /// What benchmarks use: hosts pinned to their own cores, links shaped by tbf with offload packets that fit its
    /// bucket, and the nonblocking allreduce of gradient buckets as a ring. The shaper's rate bounds what the
    /// allreduce can reach (a limit, not a timing: nothing can be faster than the link).
    func testPinnedHostsShapedLinksAndTheRingAllreduce() throws {
        let up = try runProcess(cluster, ["up", "2", "--pin"], environment: clusterEnvironment)
        XCTAssertEqual(up.status, 0, up.output)
        for host in ["1", "2"] {
            let shape = try runProcess(cluster, ["shape", host, "100mbit"], environment: clusterEnvironment)
            XCTAssertEqual(shape.status, 0, shape.output)
        }
        let status = try runProcess(cluster, ["status"], environment: clusterEnvironment)
        XCTAssertEqual(status.stdout.components(separatedBy: "rate 100Mbit  gso_max_size 60000").count, 3, status.output)
        XCTAssertTrue(status.stdout.contains("hosts pinned"), status.output)
        let inHost = URL(fileURLWithPath: path("cluster")).appendingPathComponent("in-host").path
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let affinity = try runProcess(inHost, ["ddp-host2", "/bin/sh", "-c", "taskset -cp $$"])
        XCTAssertTrue(affinity.stdout.hasSuffix("affinity list: \(1 % cores)\n"), affinity.output)

        let result = try runProcess(cluster, clusterArguments(["bench", "allreduce", "--nonblocking", "--size-mb", "1",
                                                               "--iterations", "2", "--warmup", "1", "--json"]),
                                    environment: clusterEnvironment, timeout: 120)
        XCTAssertEqual(result.status, 0, result.output)
        let line = result.stdout.split(separator: "\n").last { $0.hasPrefix("{") } ?? ""
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Foundation.Data(line.utf8)) as? [String: Any], result.output)
        XCTAssertEqual(json["call"] as? String, "nonblocking, libnbc ring")
        XCTAssertEqual(json["verified"] as? Bool, true)
        let algorithmBandwidth = try XCTUnwrap(json["algbw_gbps"] as? Double)
        XCTAssertLessThan(algorithmBandwidth, 0.0125 * 1.1, "faster than the 100 Mbit/s links allow: \(result.output)")

        let off = try runProcess(cluster, ["shape", "2", "off"], environment: clusterEnvironment)
        XCTAssertEqual(off.status, 0, off.output)
        let after = try runProcess(cluster, ["status"], environment: clusterEnvironment)
        XCTAssertTrue(after.stdout.contains("ddp-host2  10.231.77.2  link up  unshaped  gso_max_size 65536"), after.output)
    }

    private func prepareData() throws {
        let prepare = try runProcess(ddp, ["prepare", "--synthetic", "reverse", "--samples", "400", "--max-length", "12",
                                           "--valid-fraction", "0.05", "--output", path("data")])
        XCTAssertEqual(prepare.status, 0, prepare.output)
    }

    private func config(batch: Int, steps: Int, extra: String = "", checkpointEvery: Int = 0) throws -> String {
        let file = path("b\(batch)-s\(steps).yaml")
        try """
            model: {kind: encoder-decoder, vocab_size: 260, d_model: 32, heads: 4, encoder_layers: 1, decoder_layers: 1, d_ff: 64,
                    activation: gelu, norm: pre, positions: sinusoidal, max_length: 16, dropout: 0.0, tied_embeddings: true}
            data: {directory: \(path("data")), source_length: 13, target_length: 13}
            training: {batch_size: \(batch), steps: \(steps), label_smoothing: 0.1, seed: 3, threads: 1, clip_norm: 1.0,
                       bucket_mb: 0.01, log_every: 1\(extra)}
            optimizer: {lr: 3.0e-3}
            eval: {every: 0, max_batches: 1}
            checkpoint: {every: \(checkpointEvery), keep: 3}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }

    private func losses(_ run: String) throws -> [Double] { try trainingLosses(inRun: path(run)) }

    /// 2 hosts x batch 4 takes the same steps as 1 process x batch 8.
    func testTrainingAcrossTwoHostsEqualsOneHost() throws {
        try prepareData()
        let alone = try runProcess(ddp, ["train", "--config", try config(batch: 8, steps: 12), "--run-dir", path("one")],
                                   environment: mpiEnvironment, timeout: 300)
        XCTAssertEqual(alone.status, 0, alone.output)
        let twoHosts = try runProcess(cluster, clusterArguments(["train", "--config", try config(batch: 4, steps: 12), "--run-dir", path("two")]),
                                      environment: clusterEnvironment, timeout: 300)
        XCTAssertEqual(twoHosts.status, 0, twoHosts.output)
        XCTAssertTrue(twoHosts.stdout.contains("on 2 rank(s)"), twoHosts.output)
        let one = try losses("one"), two = try losses("two")
        XCTAssertEqual(one.count, 12)
        XCTAssertEqual(two.count, 12)
        for (step, (a, b)) in zip(one, two).enumerated() { XCTAssertEqual(b, a, accuracy: abs(a) * 1e-5, "step \(step + 1)") }
    }

    /// Starts a long training run across the two hosts and waits until it has written a checkpoint.
    private func startLongRun(_ run: String, timeout: Int) throws -> (Process, URL) {
        try prepareData()
        let long = try config(batch: 4, steps: 1_000_000, extra: ", collective_timeout: \(timeout)", checkpointEvery: 5)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: cluster)
        process.arguments = clusterArguments(["train", "--config", long, "--run-dir", path(run)])
        process.environment = ProcessInfo.processInfo.environment.merging(clusterEnvironment) { _, new in new }
        let log = directory.appendingPathComponent("\(run).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        let deadline = Date().addingTimeInterval(120)
        while !FileManager.default.fileExists(atPath: path("\(run)/latest")) {
            guard Date() < deadline, process.isRunning else {
                process.terminate()
                XCTFail("the run did not reach its first checkpoint:\n" + ((try? String(contentsOf: log, encoding: .utf8)) ?? ""))
                throw XCTSkip("no run to interrupt")
            }
            Thread.sleep(forTimeInterval: 0.2)
        }
        return (process, log)
    }

    /// A cut link (host 2's cable pulled): the job ends non-zero within collective_timeout + 30 s with a message naming
    /// the collective phase, and the last checkpoint continues on one host.
    func testCutLinkEndsTheJobAndTheLastCheckpointResumesOnOneHost() throws {
        let (process, log) = try startLongRun("cut", timeout: 5)
        let cut = try runProcess(cluster, ["link", "2", "down"], environment: clusterEnvironment)
        XCTAssertEqual(cut.status, 0, cut.output)
        let (finished, elapsed) = waitForExit(process, within: 35)
        let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        XCTAssertTrue(finished, "the job hung after the link was cut:\n\(text)")
        XCTAssertLessThan(elapsed, 35)
        XCTAssertNotEqual(process.terminationStatus, 0)
        XCTAssertTrue(text.contains("did not complete within 5"), text)
        XCTAssertTrue(text.contains("collective '"), text)
        print("link cut: the job ended \(String(format: "%.1f", elapsed)) s later")

        let latest = try String(contentsOfFile: path("cut/latest"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let step = try XCTUnwrap(Int(latest.dropFirst("checkpoint-".count).prefix(8)), latest)
        // One rank takes both ranks' share: the same global batch, so the run continues the same data order.
        let resumed = try runProcess(ddp, ["train", "--config", path("b4-s1000000.yaml"), "--run-dir", path("cut"), "--resume",
                                           "--set", "training.steps=\(step + 3)", "--set", "training.batch_size=8"],
                                     environment: mpiEnvironment, timeout: 120)
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertTrue(resumed.stdout.contains("resumed from") && resumed.stdout.contains("at step \(step)"), resumed.output)
    }

    /// kill -9 of the rank on host 2: the job ends non-zero within 30 s.
    func testKilledRemoteRankEndsTheJob() throws {
        let (process, log) = try startLongRun("killed", timeout: 60)
        let pids = try runProcess(try XCTUnwrap(findOnPath("ip")), ["netns", "pids", "ddp-host2"])
        let remote = pids.stdout.split(separator: "\n").compactMap { Int32($0) }.filter { pid in
            ((try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? "").contains("train")
                && ((try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? "").hasPrefix("ddp")
        }
        XCTAssertEqual(remote.count, 1, "the rank on host 2: \(pids.stdout)")
        for pid in remote { kill(pid, SIGKILL) }
        let (finished, elapsed) = waitForExit(process, within: 30)
        XCTAssertTrue(finished, "the job hung after its remote rank died:\n" + ((try? String(contentsOf: log, encoding: .utf8)) ?? ""))
        XCTAssertNotEqual(process.terminationStatus, 0)
        XCTAssertLessThan(elapsed, 30)
    }
}
