import Basics
import CMPI
import Synchronization

/// Sums of bfloat16 values (the upper 16 bits of a float32), carried as UInt16: each pairwise sum is computed in
/// float32 and rounded once, to nearest even, back to bfloat16. Halves the bytes of a float32 all-reduce.
extension Communicator {
    /// Starts an in-place bfloat16 sum over all ranks; see `iallreduce` for the buffer's lifetime.
    public func iallreduceBFloat16Sum(_ buffer: UnsafeMutableBufferPointer<UInt16>) throws(MPIError) -> Request {
        let count = try mpiCount(buffer.count, "MPI_Iallreduce", rank: rank)
        let operation = "MPI_Iallreduce(\(buffer.count) x bfloat16, sum)"
        let op = try bfloat16SumOp(rank: rank)
        var request: MPI_Request? = swiftddp_MPI_REQUEST_NULL()
        try mpiCheck(MPI_Iallreduce(UnsafeRawPointer(swiftddp_MPI_IN_PLACE()), buffer.baseAddress, count, swiftddp_MPI_UINT16_T(),
                                    op.handle, handle, &request),
                     operation, rank: rank)
        return Request(request, operation: operation, rank: rank)
    }

    /// In-place bfloat16 sum over all ranks, blocking.
    public func allreduceBFloat16Sum(_ buffer: UnsafeMutableBufferPointer<UInt16>) throws(MPIError) {
        try iallreduceBFloat16Sum(buffer).wait()
    }
}

/// The MPI handle of the user-defined operator, made once per process (after MPI_Init) and kept until exit.
private struct OperatorHandle: @unchecked Sendable {
    // @unchecked: an MPI_Op is an opaque handle MPI allows any thread to use once created; it is never freed.
    let handle: MPI_Op?
}

private let bfloat16Operator = Mutex<OperatorHandle?>(nil)

private func bfloat16SumOp(rank: Int) throws(MPIError) -> OperatorHandle {
    try bfloat16Operator.withLock { (cached: inout OperatorHandle?) throws(MPIError) -> OperatorHandle in
        if let cached { return cached }
        var op: MPI_Op? = nil
        try mpiCheck(MPI_Op_create(bfloat16SumKernel, 1, &op), "MPI_Op_create(bfloat16 sum)", rank: rank)
        cached = OperatorHandle(handle: op)
        return cached!
    }
}

/// inout[i] = bf16(float(in[i]) + float(inout[i])) — MPI's user-function signature.
private let bfloat16SumKernel: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutablePointer<Int32>?,
                                               UnsafeMutablePointer<MPI_Datatype?>?) -> Void = { input, accumulator, length, _ in
    guard let input, let accumulator, let length else { return }
    let a = input.assumingMemoryBound(to: UInt16.self), b = accumulator.assumingMemoryBound(to: UInt16.self)
    for i in 0..<Int(length.pointee) {
        b[i] = BFloat16.bits(rounding: BFloat16.float(a[i]) + BFloat16.float(b[i]))
    }
}
