import CHDF5

/// An attribute's value as stored. Integers and floats widen to Int64 and Double for reading
/// (h5py stores Python ints as int64 and floats as float64; numpy scalars may be narrower);
/// exact-typed arrays come from `attribute(_:as:)`.
public enum AttributeValue: Sendable, Equatable, CustomStringConvertible {
    /// A scalar integer attribute, widened to Int64.
    case integer(Int64)
    /// A scalar floating-point attribute, widened to Double.
    case real(Double)
    /// A scalar string attribute, fixed- or variable-length, decoded as UTF-8.
    case string(String)
    /// A 1-D integer array attribute, each element widened to Int64.
    case integers([Int64])
    /// A 1-D floating-point array attribute, each element widened to Double.
    case reals([Double])
    /// A 1-D array of strings.
    case strings([String])
    /// A type we do not read, described in words.
    case unsupported(String)

    /// The value as it appears in messages: numbers as Swift prints them, strings in double quotes, arrays in brackets
    /// and an unsupported type as `<type>`.
    public var description: String {
        switch self {
        case .integer(let value): return String(value)
        case .real(let value): return String(value)
        case .string(let value): return "\"\(value)\""
        case .integers(let values): return "[" + values.map(String.init).joined(separator: ", ") + "]"
        case .reals(let values): return "[" + values.map { String($0) }.joined(separator: ", ") + "]"
        case .strings(let values): return "[" + values.map { "\"\($0)\"" }.joined(separator: ", ") + "]"
        case .unsupported(let type): return "<\(type)>"
        }
    }
}

extension HDF5Object {
    // MARK: Writing (an existing attribute of the same name is replaced)

    /// Writes a scalar little-endian int64 attribute (H5Acreate2, H5Awrite); throws `HDF5Error` when HDF5 fails.
    public func setAttribute(_ name: String, _ value: Int64) throws(HDF5Error) {
        try writeAttribute(name, elementType: .int64, count: nil) { type, attribute in
            withUnsafePointer(to: value) { H5Awrite(attribute, type, $0) }
        }
    }

    /// Writes `value` as a scalar int64 attribute, as `setAttribute(_:_:)` with an Int64 does.
    public func setAttribute(_ name: String, _ value: Int) throws(HDF5Error) {
        try setAttribute(name, Int64(value))
    }

    /// Writes a scalar little-endian float64 attribute (H5Acreate2, H5Awrite); throws `HDF5Error` when HDF5 fails.
    public func setAttribute(_ name: String, _ value: Double) throws(HDF5Error) {
        try writeAttribute(name, elementType: .float64, count: nil) { type, attribute in
            withUnsafePointer(to: value) { H5Awrite(attribute, type, $0) }
        }
    }

    /// A UTF-8 string of fixed length (its bytes, NUL-padded). Fixed, not variable-length as h5py writes
    /// `attrs["key"] = "text"`: a variable-length string lives in HDF5's global heap, which has no checksum, and a damaged
    /// byte there can crash the HDF5 library when read; a fixed-length one lives in the checksummed object header (or in
    /// dense attribute storage). h5py reads it as bytes (`f.attrs["task"].decode()`); readers here take both kinds.
    public func setAttribute(_ name: String, _ value: String) throws(HDF5Error) {
        let attributeSite = Site(file: filePath, object: "\(path)@\(name)")
        let bytes = Array(value.utf8)
        let type = try ObjectHandle(.datatype, "H5Tcopy", attributeSite) { H5Tcopy(swiftddp_H5T_C_S1()) }
        try h5call("H5Tset_size", attributeSite) { H5Tset_size(type.id, max(1, bytes.count)) }
        try h5call("H5Tset_strpad", attributeSite) { H5Tset_strpad(type.id, H5T_STR_NULLPAD) }
        try h5call("H5Tset_cset", attributeSite) { H5Tset_cset(type.id, H5T_CSET_UTF8) }
        let space = try ObjectHandle(.dataspace, "H5Screate", attributeSite) { H5Screate(H5S_SCALAR) }
        try removeAttributeIfPresent(name)
        let attribute = try ObjectHandle(.attribute, "H5Acreate2", attributeSite) {
            H5Acreate2(handle.id, name, type.id, space.id, swiftddp_H5P_DEFAULT(), swiftddp_H5P_DEFAULT())
        }
        let padded = bytes.isEmpty ? [0] : bytes
        try h5call("H5Awrite", attributeSite) { padded.withUnsafeBufferPointer { H5Awrite(attribute.id, type.id, $0.baseAddress) } }
    }

    /// A 1-D numeric array.
    public func setAttribute<T: HDF5Scalar>(_ name: String, _ values: [T]) throws(HDF5Error) {
        try writeAttribute(name, elementType: T.hdf5ElementType, count: values.count) { type, attribute in
            values.withUnsafeBufferPointer { H5Awrite(attribute, type, $0.baseAddress) }
        }
    }

    private func writeAttribute(_ name: String, elementType: ElementType, count: Int?,
                                _ write: (hid_t, hid_t) -> herr_t) throws(HDF5Error) {
        let attributeSite = Site(file: filePath, object: "\(path)@\(name)")
        let space = try ObjectHandle(.dataspace, "H5Screate", attributeSite) {
            if let count {
                var dims = [hsize_t(count)]
                return H5Screate_simple(1, &dims, nil)
            }
            return H5Screate(H5S_SCALAR)
        }
        try removeAttributeIfPresent(name)
        let attribute = try ObjectHandle(.attribute, "H5Acreate2", attributeSite) {
            H5Acreate2(handle.id, name, elementType.fileType, space.id, swiftddp_H5P_DEFAULT(), swiftddp_H5P_DEFAULT())
        }
        try h5call("H5Awrite", attributeSite) { write(elementType.memoryType, attribute.id) }
    }

    private func removeAttributeIfPresent(_ name: String) throws(HDF5Error) {
        if try hasAttribute(name) {
            try h5call("H5Adelete", Site(file: filePath, object: "\(path)@\(name)")) { H5Adelete(handle.id, name) }
        }
    }

    // MARK: Reading

    /// Whether this object carries an attribute called `name` (H5Aexists); throws `HDF5Error` when HDF5 fails.
    public func hasAttribute(_ name: String) throws(HDF5Error) -> Bool {
        try h5call("H5Aexists", Site(file: filePath, object: "\(path)@\(name)")) { H5Aexists(handle.id, name) } > 0
    }

    /// Attribute names in name order (bytewise); more than `limit` (a file may declare any number) throws `.implausible`.
    public func attributeNames(limit: Int = 1 << 16) throws(HDF5Error) -> [String] {
        let names = StringList()
        names.limit = limit
        let box = Unmanaged.passRetained(names)
        defer { box.release() }
        // In storage order, then sorted here: increasing name order makes HDF5 build a table of every attribute of
        // dense storage first, as for links, whose table a damaged group made HDF5 1.10 release half filled and crash
        // (see `members`).
        try h5call("H5Aiterate2", site) {
            H5Aiterate2(handle.id, H5_INDEX_NAME, H5_ITER_NATIVE, nil, { _, name, _, context in
                guard let name, let context else { return 0 }
                let names = Unmanaged<StringList>.fromOpaque(context).takeUnretainedValue()
                names.lines.append(String(cString: name))
                return names.lines.count > names.limit ? 1 : 0  // (1 stops the iteration; the count is refused below)
            }, box.toOpaque())
        }
        guard names.lines.count <= limit else {
            throw HDF5Error(.implausible, operation: "list attributes", file: filePath, object: path,
                            message: "holds more than \(limit) attributes, the most SwiftDDP lists")
        }
        return names.lines.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
    }

    /// The attribute's value; a missing attribute throws `.objectNotFound`, one with no value (a null dataspace, zero
    /// elements) or implausibly many elements `.implausible`, naming the attribute.
    public func attribute(_ name: String) throws(HDF5Error) -> AttributeValue {
        let opened = try openAttribute(name)
        let attributeSite = opened.attribute.site
        let type = opened.type
        let (count, isScalar) = try valueCount(opened.attribute, name: name)

        switch H5Tget_class(type.id) {
        case H5T_INTEGER:
            var values = [Int64](repeating: 0, count: count)
            try h5call("H5Aread", attributeSite) { H5Aread(opened.attribute.id, swiftddp_H5T_NATIVE_INT64(), &values) }
            return isScalar ? .integer(values[0]) : .integers(values)
        case H5T_FLOAT:
            var values = [Double](repeating: 0, count: count)
            try h5call("H5Aread", attributeSite) { H5Aread(opened.attribute.id, swiftddp_H5T_NATIVE_DOUBLE(), &values) }
            return isScalar ? .real(values[0]) : .reals(values)
        case H5T_STRING:
            let strings = try readStrings(opened.attribute, type: type, count: count)
            return isScalar ? .string(strings[0]) : .strings(strings)
        default:
            return .unsupported(describeStoredType(type.id))
        }
    }

    /// A scalar integer attribute; throws `HDF5Error` `.objectNotFound` when it is missing and `.typeMismatch` when it
    /// holds anything else (a float, a string, an array).
    public func int64Attribute(_ name: String) throws(HDF5Error) -> Int64 {
        guard case .integer(let value) = try attribute(name) else { throw attributeTypeError(name, expected: "an integer") }
        return value
    }

    /// A scalar floating-point attribute; throws `HDF5Error` `.objectNotFound` when it is missing and `.typeMismatch`
    /// when it holds anything else (an integer is not converted).
    public func doubleAttribute(_ name: String) throws(HDF5Error) -> Double {
        guard case .real(let value) = try attribute(name) else { throw attributeTypeError(name, expected: "a float") }
        return value
    }

    /// A scalar string attribute (fixed- or variable-length); throws `HDF5Error` `.objectNotFound` when it is missing
    /// and `.typeMismatch` when it holds anything else.
    public func stringAttribute(_ name: String) throws(HDF5Error) -> String {
        guard case .string(let value) = try attribute(name) else { throw attributeTypeError(name, expected: "a string") }
        return value
    }

    /// A 1-D numeric attribute whose stored element type is exactly `T`'s.
    public func attribute<T: HDF5Scalar>(_ name: String, as: [T].Type) throws(HDF5Error) -> [T] {
        let opened = try openAttribute(name)
        let attributeSite = opened.attribute.site
        guard let stored = ElementType(storedType: opened.type.id), stored == T.hdf5ElementType else {
            throw HDF5Error(.typeMismatch, operation: "read attribute", file: filePath, object: attributeSite.object,
                            message: "the attribute stores \(describeStoredType(opened.type.id)), not \(T.hdf5ElementType)")
        }
        let (count, _) = try valueCount(opened.attribute, name: name)
        return try [T](unsafeUninitializedCapacity: count) { (buffer, initialized) throws(HDF5Error) in
            try h5call("H5Aread", attributeSite) { H5Aread(opened.attribute.id, stored.memoryType, buffer.baseAddress) }
            initialized = count
        }
    }

    /// Attributes hold at most this many elements for SwiftDDP (a tokenizer's JSON is one string).
    static var largestAttributeCount: Int { 1 << 24 }
    /// And at most this many bytes of fixed-length string data.
    static var largestAttributeBytes: Int { 1 << 28 }

    /// How many values the attribute holds and whether it is a scalar; throws for none (a null dataspace, as h5py's
    /// `Empty` writes) or implausibly many.
    private func valueCount(_ attribute: ObjectHandle, name: String) throws(HDF5Error) -> (count: Int, isScalar: Bool) {
        let site = attribute.site
        let space = try ObjectHandle(.dataspace, "H5Aget_space", site) { H5Aget_space(attribute.id) }
        let kind = H5Sget_simple_extent_type(space.id)
        let count = Int(try h5call("H5Sget_simple_extent_npoints", site) { H5Sget_simple_extent_npoints(space.id) })
        guard kind != H5S_NULL, count > 0 else {
            throw HDF5Error(.implausible, operation: "read attribute", file: filePath, object: site.object,
                            message: "attribute '\(name)' has no value (an empty dataspace)")
        }
        guard count <= Self.largestAttributeCount else {
            throw HDF5Error(.implausible, operation: "read attribute", file: filePath, object: site.object,
                            message: "attribute '\(name)' holds \(count) values, more than the \(Self.largestAttributeCount) SwiftDDP reads")
        }
        return (count, kind == H5S_SCALAR)
    }

    private func openAttribute(_ name: String) throws(HDF5Error) -> (attribute: ObjectHandle, type: ObjectHandle) {
        let attributeSite = Site(file: filePath, object: "\(path)@\(name)")
        guard try hasAttribute(name) else {
            throw HDF5Error(.objectNotFound, operation: "read attribute", file: filePath, object: attributeSite.object,
                            message: "no attribute '\(name)' on \(path)")
        }
        let attribute = try ObjectHandle(.attribute, "H5Aopen", attributeSite) { H5Aopen(handle.id, name, swiftddp_H5P_DEFAULT()) }
        let type = try ObjectHandle(.datatype, "H5Aget_type", attributeSite) { H5Aget_type(attribute.id) }
        return (attribute, type)
    }

    private func attributeTypeError(_ name: String, expected: String) -> HDF5Error {
        let actual = (try? attribute(name)).map { "\($0)" } ?? "unreadable"
        return HDF5Error(.typeMismatch, operation: "read attribute", file: filePath, object: "\(path)@\(name)",
                         message: "expected \(expected), found \(actual)")
    }

    /// Reads variable-length or fixed-length strings (h5py writes the first, numpy `S` arrays the second).
    private func readStrings(_ attribute: ObjectHandle, type: ObjectHandle, count: Int) throws(HDF5Error) -> [String] {
        if H5Tis_variable_str(type.id) > 0 {
            let memoryType = try variableLengthStringType(attribute.site)
            var pointers = [UnsafeMutablePointer<CChar>?](repeating: nil, count: count)
            try h5call("H5Aread", attribute.site) { H5Aread(attribute.id, memoryType.id, &pointers) }
            defer { for pointer in pointers where pointer != nil { H5free_memory(pointer) } }
            return pointers.map { $0.map { String(cString: $0) } ?? "" }
        }
        // A copy of the stored type (same character set) with room for a terminating NUL: numpy writes
        // NULLPAD strings that fill their whole width, and a NULLTERM type of that width would drop a byte.
        let size = H5Tget_size(type.id) + 1
        guard size > 1, size.multipliedReportingOverflow(by: count).partialValue <= Self.largestAttributeBytes,
              !size.multipliedReportingOverflow(by: count).overflow else {
            throw HDF5Error(.implausible, operation: "read attribute", file: filePath, object: attribute.site.object,
                            message: "holds \(count) strings of \(size - 1) bytes, more than SwiftDDP reads")
        }
        let memoryType = try ObjectHandle(.datatype, "H5Tcopy", attribute.site) { H5Tcopy(type.id) }
        try h5call("H5Tset_size", attribute.site) { H5Tset_size(memoryType.id, size) }
        try h5call("H5Tset_strpad", attribute.site) { H5Tset_strpad(memoryType.id, H5T_STR_NULLTERM) }
        var bytes = [UInt8](repeating: 0, count: size * count)
        try h5call("H5Aread", attribute.site) { H5Aread(attribute.id, memoryType.id, &bytes) }
        return (0..<count).map { index in
            let field = bytes[index * size ..< (index + 1) * size]
            return String(decoding: field.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    private func variableLengthStringType(_ site: Site) throws(HDF5Error) -> ObjectHandle {
        let type = try ObjectHandle(.datatype, "H5Tcopy", site) { H5Tcopy(swiftddp_H5T_C_S1()) }
        try h5call("H5Tset_size", site) { H5Tset_size(type.id, swiftddp_H5T_VARIABLE()) }
        try h5call("H5Tset_cset", site) { H5Tset_cset(type.id, H5T_CSET_UTF8) }
        return type
    }
}

extension HDF5Object {
    /// A 64-bit FNV-1a digest of every attribute of this object but `excluded` (names in order, each with its value as
    /// `AttributeValue.description` prints it). Files SwiftDDP writes store it as `attribute_digest`, so a changed
    /// attribute value — even one in HDF5's global heap, where variable-length strings live without a checksum of their
    /// own — is found when the file is read.
    public func attributesDigest(excluding excluded: Set<String> = [attributeDigestName]) throws(HDF5Error) -> Int64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for name in try attributeNames() where !excluded.contains(name) {
            for byte in "\(name)=\(try attribute(name))\n".utf8 {
                hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3
            }
        }
        return Int64(bitPattern: hash)
    }

    /// Stores `attributesDigest()` as `attribute_digest` (call after the last other attribute is set).
    public func sealAttributes() throws(HDF5Error) {
        try setAttribute(attributeDigestName, try attributesDigest())
    }

    /// Throws `.implausible` when the object carries `attribute_digest` and its attributes no longer match it; objects
    /// without one (written by other programs) pass.
    public func verifySealedAttributes() throws(HDF5Error) {
        guard try hasAttribute(attributeDigestName) else { return }
        let stored = try int64Attribute(attributeDigestName)
        guard try attributesDigest() == stored else {
            throw HDF5Error(.implausible, operation: "verify attributes", file: filePath, object: path,
                            message: "its attributes do not match the digest stored with them: changed after writing (by another "
                                + "program) or damaged (to accept a deliberate edit, delete the '\(attributeDigestName)' attribute)")
        }
    }
}

/// The attribute that holds `attributesDigest()` of the others.
public let attributeDigestName = "attribute_digest"
