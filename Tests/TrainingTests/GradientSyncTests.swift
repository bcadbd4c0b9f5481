import TestSupport
import XCTest

/// Gradient buckets all-reduced during backward, under real `mpirun` (Tests/TrainingChecks).
final class GradientSyncTests: XCTestCase {
    func testBucketedOverlappedAllreduceUnderTwoRanks() throws {
        let result = try runUnderMPI(ranks: 2, builtProduct("training-checks"), [])
        XCTAssertFalse(result.timedOut, result.output)
        XCTAssertEqual(result.status, 0, result.output)
        for rank in 0..<2 {
            XCTAssertTrue(result.stdout.contains("rank \(rank): gradient sync checks passed"), result.output)
        }
    }
}
