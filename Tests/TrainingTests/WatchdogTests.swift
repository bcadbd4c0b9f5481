import Foundation
import TestSupport
import XCTest

/// The collective watchdog under real `mpirun` (Tests/TrainingChecks): work is not a stall, silence is.
final class WatchdogTests: XCTestCase {
    func testWorkOnOneRankIsNotAStall() throws {
        let result = try runUnderMPI(ranks: 2, builtProduct("training-checks"), ["watchdog"], timeout: 120)
        XCTAssertFalse(result.timedOut, result.output)
        XCTAssertEqual(result.status, 0, result.output)
        for rank in 0..<2 { XCTAssertTrue(result.stdout.contains("rank \(rank): waited through 3 s"), result.output) }
    }

    func testASilentRankEndsTheJobNamingIt() throws {
        let started = Date()
        let result = try runUnderMPI(ranks: 2, builtProduct("training-checks"), ["watchdog", "stall"], timeout: 120)
        XCTAssertFalse(result.timedOut, result.output)
        XCTAssertNotEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("collective 'rank 1 stalls'") && result.output.contains("no word at all from rank(s) 1"),
                      result.output)
        XCTAssertLessThan(Date().timeIntervalSince(started), 40, "ended within the timeout plus start-up, not after rank 1's 60 s")
    }
}
