import CMPI

/// A failed MPI operation: which operation, on which rank, and what MPI (or our argument check) said.
public struct MPIError: Error, CustomStringConvertible, Sendable {
    /// Where the failure came from: the MPI library, or a check in this layer before or instead of an MPI call.
    public enum Kind: Sendable, Equatable {
        /// An MPI call returned this error code (the communicator uses `MPI_ERRORS_RETURN`).
        case library(code: Int32)
        /// Our own check before the C call refused the arguments (counts, roots, buffer sizes).
        case invalidArgument
        /// `MPIRuntime.initialize` was called when MPI had already been initialised in this process.
        case alreadyInitialized
        /// An operation needed MPI but it is not initialised, or already finalised.
        case notInitialized
    }

    /// The category of failure (with MPI's error code for `.library`).
    public let kind: Kind
    /// What failed: the MPI call with its arguments in words ("MPI_Allreduce(1024 x Float, sum)"), or the task it
    /// served ("reading MPI control variable '...'").
    public let operation: String
    /// MPI's text for the error code (MPI_Error_string), or this layer's own explanation for the other kinds.
    public let message: String
    /// The rank that raised the error, or nil for calls made without a communicator's rank (MPI_Init_thread, MPI_T
    /// calls).
    public let rank: Int?

    /// An error with its parts.
    public init(_ kind: Kind, operation: String, message: String, rank: Int? = nil) {
        self.kind = kind
        self.operation = operation
        self.message = message
        self.rank = rank
    }

    /// The failure in one line: the operation, the rank when known, the message, and the MPI error code for `.library`.
    public var description: String {
        let whereText = rank.map { " on rank \($0)" } ?? ""
        switch kind {
        case .library(let code):
            return "MPI error in \(operation)\(whereText): \(message) (code \(code))"
        case .invalidArgument, .alreadyInitialized, .notInitialized:
            return "MPI \(operation)\(whereText): \(message)"
        }
    }
}

/// The text MPI gives for an error code.
func mpiErrorString(_ code: Int32) -> String {
    var buffer = [CChar](repeating: 0, count: 1024)  // MPI_MAX_ERROR_STRING is 256 in Open MPI
    var length: Int32 = 0
    guard MPI_Error_string(code, &buffer, &length) == MPI_SUCCESS else { return "unknown MPI error" }
    let bytes = buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}

/// Every MPI call goes through here: a non-success code becomes a thrown `MPIError`.
@inline(__always)
func mpiCheck(_ code: Int32, _ operation: @autoclosure () -> String, rank: Int? = nil) throws(MPIError) {
    if code != MPI_SUCCESS {
        throw MPIError(.library(code: code), operation: operation(), message: mpiErrorString(code), rank: rank)
    }
}

/// MPI counts are C `int`; refuse larger buffers instead of truncating the count.
func mpiCount(_ count: Int, _ operation: String, rank: Int?) throws(MPIError) -> Int32 {
    guard let value = Int32(exactly: count), value >= 0 else {
        throw MPIError(.invalidArgument, operation: operation,
                       message: "element count \(count) does not fit MPI's 32-bit count", rank: rank)
    }
    return value
}

/// An error every rank raises at the same point, after a collective they all completed (a config mismatch seen
/// by all): every rank can then print it and finalise normally, instead of one rank aborting the others.
public protocol ErrorOnEveryRank: Error {}
