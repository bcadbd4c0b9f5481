import MPI
import XCTest

final class MPIErrorTests: XCTestCase {
    func testDescriptionNamesOperationRankAndCode() {
        let error = MPIError(.library(code: 3), operation: "MPI_Allreduce(10 x Float, sum)", message: "MPI_ERR_COUNT: invalid count argument", rank: 1)
        XCTAssertEqual(error.description, "MPI error in MPI_Allreduce(10 x Float, sum) on rank 1: MPI_ERR_COUNT: invalid count argument (code 3)")
        let argument = MPIError(.invalidArgument, operation: "MPI_Bcast", message: "root 4 is not a rank of this communicator (size 2)", rank: 0)
        XCTAssertEqual(argument.description, "MPI MPI_Bcast on rank 0: root 4 is not a rank of this communicator (size 2)")
    }
}
