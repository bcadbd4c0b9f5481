import CMPI
#if canImport(Glibc)
import Glibc
#endif

/// An MPI communicator with `MPI_ERRORS_RETURN` set: every failure throws `MPIError` instead of aborting.
///
/// Buffers are typed (`MPIElement`), so the MPI datatype always matches the Swift element type, and
/// counts are checked before any C call. Not `Sendable`: MPI calls on one communicator are made from one
/// thread at a time (thread levels up to `.serialized`); the trainer overlaps communication with
/// nonblocking collectives, not with threads.
public final class Communicator {
    let handle: MPI_Comm?
    private let ownsHandle: Bool

    /// This process's rank and the number of ranks.
    public let rank: Int
    /// The number of ranks in this communicator (MPI_Comm_size).
    public let size: Int
    /// Rank and size among the ranks on this node (shared-memory split of this communicator).
    public let localRank: Int
    /// The number of ranks of this communicator on this node (MPI_Comm_size of the MPI_COMM_TYPE_SHARED split).
    public let localSize: Int

    /// MPI_COMM_WORLD, with errors returned rather than fatal.
    convenience init(world: Void) throws(MPIError) {
        try self.init(adopting: swiftddp_MPI_COMM_WORLD(), owned: false)
    }

    private init(adopting comm: MPI_Comm?, owned: Bool) throws(MPIError) {
        handle = comm
        ownsHandle = owned
        try mpiCheck(MPI_Comm_set_errhandler(comm, swiftddp_MPI_ERRORS_RETURN()), "MPI_Comm_set_errhandler")
        var rank: Int32 = 0
        var size: Int32 = 0
        try mpiCheck(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank")
        try mpiCheck(MPI_Comm_size(comm, &size), "MPI_Comm_size")
        self.rank = Int(rank)
        self.size = Int(size)

        var node: MPI_Comm? = swiftddp_MPI_COMM_NULL()
        try mpiCheck(MPI_Comm_split_type(comm, swiftddp_MPI_COMM_TYPE_SHARED(), rank, swiftddp_MPI_INFO_NULL(), &node),
                     "MPI_Comm_split_type(shared)", rank: Int(rank))
        defer { MPI_Comm_free(&node) }
        var localRank: Int32 = 0
        var localSize: Int32 = 0
        try mpiCheck(MPI_Comm_rank(node, &localRank), "MPI_Comm_rank(node)", rank: Int(rank))
        try mpiCheck(MPI_Comm_size(node, &localSize), "MPI_Comm_size(node)", rank: Int(rank))
        self.localRank = Int(localRank)
        self.localSize = Int(localSize)
    }

    deinit {
        guard ownsHandle, MPIRuntime.isRunning else { return }
        var comm: MPI_Comm? = handle
        MPI_Comm_free(&comm)
    }

    /// A new communicator of the ranks that pass the same `color`, ordered by `key` (MPI_Comm_split).
    public func split(color: Int, key: Int) throws(MPIError) -> Communicator {
        var newComm: MPI_Comm? = swiftddp_MPI_COMM_NULL()
        let color32 = try mpiCount(color, "MPI_Comm_split(color)", rank: rank)
        let key32 = try mpiCount(key, "MPI_Comm_split(key)", rank: rank)
        try mpiCheck(MPI_Comm_split(handle, color32, key32, &newComm), "MPI_Comm_split", rank: rank)
        guard let newComm else {
            throw MPIError(.invalidArgument, operation: "MPI_Comm_split", message: "no communicator returned", rank: rank)
        }
        return try Communicator(adopting: newComm, owned: true)
    }

    /// A communicator of the same ranks whose messages never match this one's (MPI_Comm_dup): a separate channel,
    /// for example for notices sent while collectives run on this one.
    public func duplicate() throws(MPIError) -> Communicator {
        var newComm: MPI_Comm? = swiftddp_MPI_COMM_NULL()
        try mpiCheck(MPI_Comm_dup(handle, &newComm), "MPI_Comm_dup", rank: rank)
        return try Communicator(adopting: newComm, owned: true)
    }

    // MARK: Synchronisation

    /// Blocks until every rank of this communicator has entered the barrier (MPI_Barrier); throws `MPIError` when MPI
    /// fails.
    public func barrier() throws(MPIError) {
        try mpiCheck(MPI_Barrier(handle), "MPI_Barrier", rank: rank)
    }

    /// Starts a barrier and returns at once (MPI_Ibarrier): the request completes when every rank has entered it.
    public func ibarrier() throws(MPIError) -> Request {
        var request: MPI_Request? = swiftddp_MPI_REQUEST_NULL()
        try mpiCheck(MPI_Ibarrier(handle, &request), "MPI_Ibarrier", rank: rank)
        return Request(request, operation: "MPI_Ibarrier", rank: rank)
    }

    // MARK: Point to point (small notices)

    /// Sends one Int64 to rank `destination` with `tag` and returns at once (MPI_Isend). The request owns the
    /// sent value; complete it (`test`, `wait`) or `abandon` it.
    public func isend(_ value: Int64, to destination: Int, tag: Int) throws(MPIError) -> Request {
        guard (0..<size).contains(destination) else {
            throw MPIError(.invalidArgument, operation: "MPI_Isend", message: "rank \(destination) is not in this communicator (size \(size))",
                           rank: rank)
        }
        let tag32 = try mpiCount(tag, "MPI_Isend(tag)", rank: rank)
        let buffer = UnsafeMutablePointer<Int64>.allocate(capacity: 1)
        buffer.initialize(to: value)
        var request: MPI_Request? = swiftddp_MPI_REQUEST_NULL()
        let status = MPI_Isend(buffer, 1, swiftddp_MPI_INT64_T(), Int32(destination), tag32, handle, &request)
        if status != MPI_SUCCESS { buffer.deallocate() }
        try mpiCheck(status, "MPI_Isend(to \(destination))", rank: rank)
        return Request(request, operation: "MPI_Isend(to \(destination))", rank: rank, owning: buffer)
    }

    /// A message with `tag` that has arrived from any rank, received without blocking (MPI_Iprobe, then MPI_Recv
    /// of the one Int64 it holds), or nil when none is waiting. Pairs with `isend`.
    public func receivePending(tag: Int) throws(MPIError) -> (source: Int, value: Int64)? {
        let tag32 = try mpiCount(tag, "MPI_Iprobe(tag)", rank: rank)
        var flag: Int32 = 0
        var status = MPI_Status()
        try mpiCheck(MPI_Iprobe(swiftddp_MPI_ANY_SOURCE(), tag32, handle, &flag, &status), "MPI_Iprobe", rank: rank)
        guard flag != 0 else { return nil }
        var value: Int64 = 0
        try mpiCheck(MPI_Recv(&value, 1, swiftddp_MPI_INT64_T(), status.MPI_SOURCE, tag32, handle, swiftddp_MPI_STATUS_IGNORE()),
                     "MPI_Recv(from \(status.MPI_SOURCE))", rank: rank)
        return (Int(status.MPI_SOURCE), value)
    }

    /// Ends every rank of the job: prints `message` to stderr, then MPI_Abort. For errors that the other
    /// ranks cannot learn about through a collective (they may be blocked in one).
    public func abort(code: Int32 = 1, message: String) -> Never {
        var line = "ddp: rank \(rank): \(message)\n"
        line.withUTF8 { bytes in _ = write(2, bytes.baseAddress, bytes.count) }
        MPI_Abort(handle, code)
        exit(code)  // MPI_Abort does not return in practice; this keeps the promise of `Never`.
    }

    // MARK: Broadcast

    /// Broadcasts `buffer` from `root` into every rank's buffer. Every rank passes the same count.
    public func broadcast<T: MPIElement>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) throws(MPIError) {
        try checkRoot(root, "MPI_Bcast")
        let count = try mpiCount(buffer.count, "MPI_Bcast", rank: rank)
        try mpiCheck(MPI_Bcast(buffer.baseAddress, count, T.mpiElementKind.datatype, Int32(root), handle),
                     "MPI_Bcast(\(buffer.count) x \(T.self), root \(root))", rank: rank)
    }

    /// Broadcasts `values` from `root` into every rank's array (MPI_Bcast); every rank passes the same count. Throws
    /// `MPIError` `.invalidArgument` for a root outside the communicator or a count beyond MPI's 32-bit int.
    public func broadcast<T: MPIElement>(_ values: inout [T], root: Int) throws(MPIError) {
        try values.withUnsafeMutableBufferPointer { (buffer) throws(MPIError) in try broadcast(buffer, root: root) }
    }

    /// Broadcasts bytes of any length: the root's length goes first, so other ranks may pass anything.
    public func broadcast(bytes: [UInt8], root: Int) throws(MPIError) -> [UInt8] {
        var length = [Int64(bytes.count)]
        try broadcast(&length, root: root)
        var result = rank == root ? bytes : [UInt8](repeating: 0, count: Int(length[0]))
        try broadcast(&result, root: root)
        return result
    }

    /// Broadcasts a string (UTF-8) of any length from `root`.
    public func broadcast(_ string: String, root: Int) throws(MPIError) -> String {
        String(decoding: try broadcast(bytes: Array(string.utf8), root: root), as: UTF8.self)
    }

    // MARK: Gather

    /// Every rank's bytes, of any lengths, on `root` in rank order (MPI_Allgather of the lengths, then MPI_Gatherv);
    /// the other ranks get an empty array. Every rank joins. Throws `MPIError` `.invalidArgument` for a root outside
    /// the communicator or when the root would receive more than MPI's 32-bit count of bytes.
    public func gather(bytes: [UInt8], root: Int) throws(MPIError) -> [[UInt8]] {
        try checkRoot(root, "MPI_Gatherv")
        // Every rank learns every length, so a total too large for MPI is refused by all ranks together.
        let allLengths = try allgather([Int64(bytes.count)])
        var lengths: [Int32] = [], offsets: [Int32] = [], total = 0
        for length in allLengths {
            offsets.append(try mpiCount(total, "MPI_Gatherv", rank: rank))
            lengths.append(try mpiCount(Int(length), "MPI_Gatherv", rank: rank))
            total += Int(length)
        }
        _ = try mpiCount(total, "MPI_Gatherv", rank: rank)
        let length = lengths[rank]
        if rank != root { total = 0 }
        var received = [UInt8](repeating: 0, count: total)
        try bytes.withUnsafeBufferPointer { (send) throws(MPIError) in
            try received.withUnsafeMutableBufferPointer { (receive) throws(MPIError) in
                try mpiCheck(MPI_Gatherv(send.baseAddress, length, UInt8.mpiElementKind.datatype, receive.baseAddress, lengths, offsets,
                                         UInt8.mpiElementKind.datatype, Int32(root), handle),
                             "MPI_Gatherv(\(bytes.count) bytes, root \(root))", rank: rank)
            }
        }
        guard rank == root else { return [] }
        return lengths.indices.map { Array(received[Int(offsets[$0])..<(Int(offsets[$0]) + Int(lengths[$0]))]) }
    }

    // MARK: Reductions

    /// Reduces `buffer` over all ranks in place: afterwards every rank holds the same result.
    public func allreduce<T: MPIReducible>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOp) throws(MPIError) {
        let count = try mpiCount(buffer.count, "MPI_Allreduce", rank: rank)
        try mpiCheck(MPI_Allreduce(UnsafeRawPointer(swiftddp_MPI_IN_PLACE()), buffer.baseAddress, count,
                                   T.mpiElementKind.datatype, op.handle, handle),
                     "MPI_Allreduce(\(buffer.count) x \(T.self), \(op))", rank: rank)
    }

    /// Reduces `values` over all ranks in place (MPI_Allreduce with MPI_IN_PLACE): afterwards every rank holds the same
    /// result.
    public func allreduce<T: MPIReducible>(_ values: inout [T], op: ReduceOp) throws(MPIError) {
        try values.withUnsafeMutableBufferPointer { (buffer) throws(MPIError) in try allreduce(buffer, op: op) }
    }

    /// One value reduced over all ranks (MPI_Allreduce of a single element), the same on every rank.
    public func allreduce<T: MPIReducible>(_ value: T, op: ReduceOp) throws(MPIError) -> T {
        var values = [value]
        try allreduce(&values, op: op)
        return values[0]
    }

    /// Starts an in-place allreduce and returns at once. The buffer must stay alive and untouched until the
    /// returned request has completed (`wait()` returned or `test()` returned true).
    public func iallreduce<T: MPIReducible>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOp) throws(MPIError) -> Request {
        let count = try mpiCount(buffer.count, "MPI_Iallreduce", rank: rank)
        let operation = "MPI_Iallreduce(\(buffer.count) x \(T.self), \(op))"
        var request: MPI_Request? = swiftddp_MPI_REQUEST_NULL()
        try mpiCheck(MPI_Iallreduce(UnsafeRawPointer(swiftddp_MPI_IN_PLACE()), buffer.baseAddress, count,
                                    T.mpiElementKind.datatype, op.handle, handle, &request),
                     operation, rank: rank)
        return Request(request, operation: operation, rank: rank)
    }

    /// Each rank contributes `send`; `receive` (size x send.count) gets every rank's block in rank order.
    public func allgather<T: MPIElement>(_ send: UnsafeBufferPointer<T>, into receive: UnsafeMutableBufferPointer<T>) throws(MPIError) {
        guard receive.count == send.count * size else {
            throw MPIError(.invalidArgument, operation: "MPI_Allgather",
                           message: "receive buffer holds \(receive.count) elements, expected \(send.count) x \(size) ranks = \(send.count * size)",
                           rank: rank)
        }
        let count = try mpiCount(send.count, "MPI_Allgather", rank: rank)
        let datatype = T.mpiElementKind.datatype
        try mpiCheck(MPI_Allgather(send.baseAddress, count, datatype, receive.baseAddress, count, datatype, handle),
                     "MPI_Allgather(\(send.count) x \(T.self))", rank: rank)
    }

    /// Every rank's `values` concatenated in rank order (MPI_Allgather): size x values.count elements. Every rank
    /// passes the same count, and every rank joins the collective (also with an empty array).
    public func allgather<T: MPIElement>(_ values: [T]) throws(MPIError) -> [T] {
        var result = values.first.map { [T](repeating: $0, count: values.count * size) } ?? []
        try values.withUnsafeBufferPointer { (send) throws(MPIError) in
            try result.withUnsafeMutableBufferPointer { (receive) throws(MPIError) in try allgather(send, into: receive) }
        }
        return result
    }

    /// Reduces `send` (size x receive.count elements) over all ranks and leaves block `rank` of the
    /// result in `receive` (MPI_Reduce_scatter_block).
    public func reduceScatter<T: MPIReducible>(_ send: UnsafeBufferPointer<T>, into receive: UnsafeMutableBufferPointer<T>,
                                               op: ReduceOp) throws(MPIError) {
        guard send.count == receive.count * size else {
            throw MPIError(.invalidArgument, operation: "MPI_Reduce_scatter_block",
                           message: "send buffer holds \(send.count) elements, expected \(receive.count) x \(size) ranks = \(receive.count * size)",
                           rank: rank)
        }
        let count = try mpiCount(receive.count, "MPI_Reduce_scatter_block", rank: rank)
        try mpiCheck(MPI_Reduce_scatter_block(send.baseAddress, receive.baseAddress, count, T.mpiElementKind.datatype,
                                              op.handle, handle),
                     "MPI_Reduce_scatter_block(\(receive.count) x \(T.self), \(op))", rank: rank)
    }

    /// Reduces `values` over all ranks and returns this rank's block of values.count / size elements
    /// (MPI_Reduce_scatter_block). Throws `MPIError` `.invalidArgument` when the count does not split into `size` equal
    /// blocks; every rank joins the collective (also with an empty array).
    public func reduceScatter<T: MPIReducible>(_ values: [T], op: ReduceOp) throws(MPIError) -> [T] {
        guard values.count % size == 0 else {
            throw MPIError(.invalidArgument, operation: "MPI_Reduce_scatter_block",
                           message: "\(values.count) elements do not split into \(size) equal blocks", rank: rank)
        }
        var result = values.first.map { [T](repeating: $0, count: values.count / size) } ?? []
        try values.withUnsafeBufferPointer { (send) throws(MPIError) in
            try result.withUnsafeMutableBufferPointer { (receive) throws(MPIError) in
                try reduceScatter(send, into: receive, op: op)
            }
        }
        return result
    }

    private func checkRoot(_ root: Int, _ operation: String) throws(MPIError) {
        guard (0..<size).contains(root) else {
            throw MPIError(.invalidArgument, operation: operation,
                           message: "root \(root) is not a rank of this communicator (size \(size))", rank: rank)
        }
    }
}

/// A nonblocking operation in flight. Complete it with `wait()` (or poll with `test()`) before touching
/// its buffer. Dropping an incomplete request waits for it, so MPI never writes into memory after the
/// request is gone.
public final class Request {
    private var handle: MPI_Request?
    private var isComplete = false
    /// The MPI call and its arguments in words ("MPI_Iallreduce(1024 x Float, sum)"), for error messages.
    public let operation: String
    private let rank: Int
    /// A sent value the request owns (`isend`), freed once the send has completed.
    private var owned: UnsafeMutablePointer<Int64>?

    init(_ handle: MPI_Request?, operation: String, rank: Int, owning owned: UnsafeMutablePointer<Int64>? = nil) {
        self.handle = handle
        self.operation = operation
        self.rank = rank
        self.owned = owned
    }

    /// Blocks until the operation has completed.
    public func wait() throws(MPIError) {
        guard !isComplete else { return }
        isComplete = true
        defer { release() }
        try mpiCheck(MPI_Wait(&handle, swiftddp_MPI_STATUS_IGNORE()), "MPI_Wait(\(operation))", rank: rank)
    }

    /// True once the operation has completed (then the buffer may be used); also makes MPI progress.
    public func test() throws(MPIError) -> Bool {
        guard !isComplete else { return true }
        var flag: Int32 = 0
        try mpiCheck(MPI_Test(&handle, &flag, swiftddp_MPI_STATUS_IGNORE()), "MPI_Test(\(operation))", rank: rank)
        isComplete = flag != 0
        if isComplete { release() }
        return isComplete
    }

    /// Lets an unfinished send complete in the background without waiting for it (MPI_Request_free): for a notice
    /// to a rank that may never receive it. The value it sends is kept (8 bytes) since MPI may still read it.
    public func abandon() {
        guard !isComplete else { return }
        isComplete = true
        if MPIRuntime.isRunning { MPI_Request_free(&handle) }
        owned = nil
    }

    private func release() {
        owned?.deallocate()
        owned = nil
    }

    deinit {
        if !isComplete && MPIRuntime.isRunning {
            MPI_Wait(&handle, swiftddp_MPI_STATUS_IGNORE())
        }
        release()
    }
}
