import TestSupport
import XCTest

/// The MPI layer under real `mpirun`: the mpi-checks program checks exact results of every collective on
/// every rank; here we run it with 2 and 3 (oversubscribed) ranks and alone, and read what each rank said.
final class MPIRunTests: XCTestCase {
    private var checks: String { builtProduct("mpi-checks") }

    private func assertEveryRankPassed(_ result: ProcessResult, ranks: Int, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(result.timedOut, "mpirun did not finish in time:\n\(result.output)", file: file, line: line)
        XCTAssertEqual(result.status, 0, "mpirun failed:\n\(result.output)", file: file, line: line)
        for rank in 0..<ranks {
            XCTAssertTrue(result.stdout.contains("rank \(rank)/\(ranks): all "),
                          "rank \(rank) did not report success:\n\(result.output)", file: file, line: line)
        }
        XCTAssertFalse(result.stdout.contains("FAIL"), result.output, file: file, line: line)
    }

    func testTwoRanks() throws {
        assertEveryRankPassed(try runUnderMPI(ranks: 2, checks, []), ranks: 2)
    }

    func testThreeRanksOversubscribed() throws {
        assertEveryRankPassed(try runUnderMPI(ranks: 3, checks, []), ranks: 3)
    }

    /// An algorithm chosen in the launch environment wins over MPIRuntime's ring (the checks compare what Open
    /// MPI reports with it), and the binomial tree gives the same sums.
    func testLaunchEnvironmentChoosesTheAllreduceAlgorithm() throws {
        let binomial = ["OMPI_MCA_coll_libnbc_iallreduce_algorithm": "2"]
        assertEveryRankPassed(try runUnderMPI(ranks: 2, checks, [], environment: binomial), ranks: 2)
    }

    /// Local mode: the binary started without mpirun is a world of one (MPI singleton).
    func testWithoutMpirun() throws {
        let result = try runProcess(checks, [], environment: mpiEnvironment)
        assertEveryRankPassed(result, ranks: 1)
    }

    /// A rank that dies ends the whole job promptly with a non-zero status; the others are not left waiting.
    func testDeadRankEndsTheJob() throws {
        let started = Date()
        let result = try runUnderMPI(ranks: 2, checks, ["--die-on-rank", "1"], timeout: 60)
        XCTAssertFalse(result.timedOut, "the job hung:\n\(result.output)")
        XCTAssertNotEqual(result.status, 0, result.output)
        XCTAssertLessThan(Date().timeIntervalSince(started), 30)
        XCTAssertFalse(result.stdout.contains("barrier returned"), result.output)
    }

    /// Communicator.abort ends every rank, with the message on stderr and the code as the job's status.
    func testAbortEndsEveryRank() throws {
        let result = try runUnderMPI(ranks: 2, checks, ["--abort-on-rank", "1"], timeout: 60)
        XCTAssertFalse(result.timedOut, "the job hung:\n\(result.output)")
        XCTAssertEqual(result.status, 7, result.output)
        XCTAssertTrue(result.stderr.contains("ddp: rank 1: aborting on purpose: config mismatch in key 'model.d_model'"), result.output)
        XCTAssertFalse(result.stdout.contains("barrier returned"), result.output)
    }
}
