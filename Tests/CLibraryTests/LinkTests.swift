import CBLAS
import CHDF5
import CMPI
import XCTest

/// The three system libraries are found, linked and callable (no initialisation needed for these calls).
final class LinkTests: XCTestCase {
    func testMPIVersion() {
        var major: Int32 = 0
        var minor: Int32 = 0
        XCTAssertEqual(MPI_Get_version(&major, &minor), MPI_SUCCESS)
        XCTAssertGreaterThanOrEqual(major, 3, "nonblocking collectives need MPI 3")
    }

    func testHDF5Version() {
        var major: UInt32 = 0
        var minor: UInt32 = 0
        var release: UInt32 = 0
        XCTAssertGreaterThanOrEqual(H5get_libversion(&major, &minor, &release), 0)
        XCTAssertTrue(major > 1 || (major == 1 && minor >= 10), "HDF5 \(major).\(minor).\(release) is older than 1.10")
    }

    func testSgemm() {
        // [1 2; 3 4] x [5 6; 7 8] = [19 22; 43 50], row-major.
        let a: [Float] = [1, 2, 3, 4]
        let b: [Float] = [5, 6, 7, 8]
        var c = [Float](repeating: 0, count: 4)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 2, 1, a, 2, b, 2, 0, &c, 2)
        XCTAssertEqual(c, [19, 22, 43, 50])
        openblas_set_num_threads(1)
        XCTAssertEqual(openblas_get_num_threads(), 1)
    }
}
