import CHDF5

/// The numeric element types our datasets and array attributes hold.
public enum ElementType: String, Sendable, CaseIterable, CustomStringConvertible {
    /// IEEE floats of 4 and 8 bytes, signed integers of 4 and 8 bytes, unsigned integers of 1 and 2 bytes; written
    /// little-endian, read in either byte order.
    case float32, float64, int32, int64, uint8, uint16

    /// The case name ("float32", "uint16", ...).
    public var description: String { rawValue }

    /// Bytes per element: 1, 2, 4 or 8.
    public var byteSize: Int {
        switch self {
        case .float32, .int32: return 4
        case .float64, .int64: return 8
        case .uint8: return 1
        case .uint16: return 2
        }
    }

    /// The type in memory, as Swift holds it.
    var memoryType: hid_t {
        switch self {
        case .float32: return swiftddp_H5T_NATIVE_FLOAT()
        case .float64: return swiftddp_H5T_NATIVE_DOUBLE()
        case .int32: return swiftddp_H5T_NATIVE_INT32()
        case .int64: return swiftddp_H5T_NATIVE_INT64()
        case .uint8: return swiftddp_H5T_NATIVE_UINT8()
        case .uint16: return swiftddp_H5T_NATIVE_UINT16()
        }
    }

    /// The type in the file: little-endian, so files are the same on every machine (and what h5py writes).
    var fileType: hid_t {
        switch self {
        case .float32: return swiftddp_H5T_IEEE_F32LE()
        case .float64: return swiftddp_H5T_IEEE_F64LE()
        case .int32: return swiftddp_H5T_STD_I32LE()
        case .int64: return swiftddp_H5T_STD_I64LE()
        case .uint8: return swiftddp_H5T_STD_U8LE()
        case .uint16: return swiftddp_H5T_STD_U16LE()
        }
    }

    /// The element type a stored HDF5 type holds, or nil when it is none of ours. Byte order is not part
    /// of the element type: HDF5 swaps bytes of a big-endian float32 on read, which loses nothing.
    init?(storedType type: hid_t) {
        let size = H5Tget_size(type)
        switch H5Tget_class(type) {
        case H5T_FLOAT:
            switch size {
            case 4: self = .float32
            case 8: self = .float64
            default: return nil
            }
        case H5T_INTEGER:
            let signed = H5Tget_sign(type) == H5T_SGN_2
            switch (size, signed) {
            case (4, true): self = .int32
            case (8, true): self = .int64
            case (1, false): self = .uint8
            case (2, false): self = .uint16
            default: return nil
            }
        default:
            return nil
        }
    }
}

/// Describes any stored HDF5 type in words, for `ddp inspect` and error messages.
func describeStoredType(_ type: hid_t) -> String {
    let size = H5Tget_size(type)
    let order = H5Tget_order(type) == H5T_ORDER_BE ? " big-endian" : ""
    switch H5Tget_class(type) {
    case H5T_FLOAT: return "float\(size * 8)\(order)"
    case H5T_INTEGER: return (H5Tget_sign(type) == H5T_SGN_2 ? "int" : "uint") + "\(size * 8)\(order)"
    case H5T_STRING: return H5Tis_variable_str(type) > 0 ? "string (variable length)" : "string (\(size) bytes)"
    case H5T_COMPOUND: return "compound (\(size) bytes)"
    case H5T_ENUM: return "enum (\(size) bytes)"
    case H5T_ARRAY: return "array type (\(size) bytes)"
    case H5T_VLEN: return "variable-length sequence"
    case H5T_OPAQUE: return "opaque (\(size) bytes)"
    case H5T_REFERENCE: return "reference"
    case H5T_BITFIELD: return "bitfield (\(size) bytes)"
    default: return "unknown type"
    }
}

/// A Swift type that maps to exactly one `ElementType`.
public protocol HDF5Scalar: BitwiseCopyable {
    static var hdf5ElementType: ElementType { get }
}

extension Float: HDF5Scalar { public static var hdf5ElementType: ElementType { .float32 } }
extension Double: HDF5Scalar { public static var hdf5ElementType: ElementType { .float64 } }
extension Int32: HDF5Scalar { public static var hdf5ElementType: ElementType { .int32 } }
extension Int64: HDF5Scalar { public static var hdf5ElementType: ElementType { .int64 } }
extension UInt8: HDF5Scalar { public static var hdf5ElementType: ElementType { .uint8 } }
extension UInt16: HDF5Scalar { public static var hdf5ElementType: ElementType { .uint16 } }
