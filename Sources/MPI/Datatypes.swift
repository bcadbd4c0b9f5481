import CMPI

/// The element types our collectives move. Public so that callers can be generic over them;
/// the mapping to `MPI_Datatype` stays inside this module.
public enum MPIElementKind: Sendable {
    /// MPI_FLOAT, MPI_DOUBLE, MPI_INT32_T, MPI_INT64_T, MPI_UINT8_T and MPI_UINT16_T.
    case float32, float64, int32, int64, uint8, uint16

    var datatype: MPI_Datatype {
        switch self {
        case .float32: return swiftddp_MPI_FLOAT()
        case .float64: return swiftddp_MPI_DOUBLE()
        case .int32: return swiftddp_MPI_INT32_T()
        case .int64: return swiftddp_MPI_INT64_T()
        case .uint8: return swiftddp_MPI_UINT8_T()
        case .uint16: return swiftddp_MPI_UINT16_T()
        }
    }
}

/// A Swift type that MPI can send as-is (broadcast, allgather).
public protocol MPIElement: BitwiseCopyable {
    /// The MPI datatype this Swift type travels as.
    static var mpiElementKind: MPIElementKind { get }
}

/// A Swift type that MPI can also reduce (sum, max, min).
public protocol MPIReducible: MPIElement {}

extension Float: MPIReducible { public static var mpiElementKind: MPIElementKind { .float32 } }
extension Double: MPIReducible { public static var mpiElementKind: MPIElementKind { .float64 } }
extension Int32: MPIReducible { public static var mpiElementKind: MPIElementKind { .int32 } }
extension Int64: MPIReducible { public static var mpiElementKind: MPIElementKind { .int64 } }
extension UInt8: MPIElement { public static var mpiElementKind: MPIElementKind { .uint8 } }
extension UInt16: MPIElement { public static var mpiElementKind: MPIElementKind { .uint16 } }

/// Reduction operators.
public enum ReduceOp: String, Sendable, CaseIterable {
    /// MPI_SUM, MPI_MAX and MPI_MIN, elementwise.
    case sum, max, min

    var handle: MPI_Op {
        switch self {
        case .sum: return swiftddp_MPI_SUM()
        case .max: return swiftddp_MPI_MAX()
        case .min: return swiftddp_MPI_MIN()
        }
    }
}
