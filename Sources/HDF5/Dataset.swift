import CHDF5

/// An n-dimensional array in a file. Reads and writes never convert element types and never overrun:
/// the Swift element type must be the stored one, and the buffer must hold exactly the selection.
public final class Dataset: HDF5Object {
    /// The open HDF5 dataset id, closed when the dataset is released.
    public let handle: ObjectHandle
    /// Extent of every dimension ([] for a scalar dataset).
    public let shape: [Int]
    /// The stored element type, or nil for types this layer does not read (see `typeDescription`).
    public let elementType: ElementType?
    /// The stored type in words ("float32", "string (variable length)", ...).
    public let typeDescription: String
    /// Elements in the dataset (the product of `shape`, checked: a shape whose product overflows is refused).
    public let elementCount: Int
    /// Set once `requireStored` has found every element stored.
    private var storageChecked = false

    init(_ handle: ObjectHandle) throws(HDF5Error) {
        self.handle = handle
        let type = try ObjectHandle(.datatype, "H5Dget_type", handle.site) { H5Dget_type(handle.id) }
        elementType = ElementType(storedType: type.id)
        typeDescription = describeStoredType(type.id)
        let space = try ObjectHandle(.dataspace, "H5Dget_space", handle.site) { H5Dget_space(handle.id) }
        shape = try Self.extent(of: space)
        elementCount = try Self.product(shape, elementSize: max(1, elementType?.byteSize ?? 1), handle.site)
    }

    static func extent(of space: ObjectHandle) throws(HDF5Error) -> [Int] {
        let rank = try h5call("H5Sget_simple_extent_ndims", space.site) { H5Sget_simple_extent_ndims(space.id) }
        guard rank <= 32 else {
            throw HDF5Error(.implausible, operation: "read shape", file: space.site.file, object: space.site.object,
                            message: "declares \(rank) dimensions (HDF5 allows 32)")
        }
        var dims = [hsize_t](repeating: 0, count: Int(rank))
        try h5call("H5Sget_simple_extent_dims", space.site) { H5Sget_simple_extent_dims(space.id, &dims, nil) }
        return try dims.map { (extent) throws(HDF5Error) in
            guard let value = Int(exactly: extent) else {
                throw HDF5Error(.implausible, operation: "read shape", file: space.site.file, object: space.site.object,
                                message: "declares an extent of \(extent), more than can be addressed")
            }
            return value
        }
    }

    /// The element count of `shape`, refusing one whose bytes (at `elementSize` each) do not fit in an Int.
    static func product(_ shape: [Int], elementSize: Int, _ site: Site) throws(HDF5Error) -> Int {
        var count = 1
        for extent in shape {
            let (next, overflow) = count.multipliedReportingOverflow(by: extent)
            guard !overflow, !next.multipliedReportingOverflow(by: elementSize).overflow else {
                throw HDF5Error(.implausible, operation: "read shape", file: site.file, object: site.object,
                                message: "declares shape \(shape), more elements than can be addressed")
            }
            count = next
        }
        return count
    }

    /// Deflate, the strongest filter HDF5 ships, shrinks data at most about 1032 times.
    static let largestCompressionRatio = 1100

    /// The largest chunk, in bytes, a dataset may have to be read (64 MiB: HDF5's own default cache holds 1 MiB, and
    /// SwiftDDP writes shards in 16 KB chunks and checkpoint tensors in chunks of about 1 MiB).
    public static let largestChunkBytes = 64 << 20

    /// Checks, before anything is allocated for the dataset's elements, that the file really stores them: a contiguous
    /// or compact dataset its full size in bytes, a chunked one every chunk its extent needs, and no more data than
    /// compression could have packed into the bytes stored. A file that declares more than it holds (a few kilobytes
    /// claiming billions of elements, a dataset never written) throws `.implausible`, naming the dataset and sizes.
    public func requireStored() throws(HDF5Error) {
        guard !storageChecked, let elementType, elementCount > 0 else { return }
        func implausible(_ message: String) -> HDF5Error {
            HDF5Error(.implausible, operation: "read", file: filePath, object: path, message: message)
        }
        let bytes = elementCount * elementType.byteSize
        let stored = Int(H5Dget_storage_size(handle.id))
        let creation = try ObjectHandle(.propertyList, "H5Dget_create_plist", site) { H5Dget_create_plist(handle.id) }
        if H5Pget_layout(creation.id) == H5D_CHUNKED {
            var dims = [hsize_t](repeating: 0, count: max(1, shape.count))
            try h5call("H5Pget_chunk", site) { H5Pget_chunk(creation.id, Int32(dims.count), &dims) }
            // A chunk is decompressed whole for any element in it: one larger than this makes every read slow and
            // large (a crafted 780 KB file held one 800 MB chunk), so it is refused before anything is read.
            let chunkBytes = dims.prefix(shape.count).reduce(elementType.byteSize) { bytes, extent in
                let (product, overflow) = bytes.multipliedReportingOverflow(by: Int(clamping: extent))
                return overflow ? Int.max : product
            }
            guard chunkBytes > 0, chunkBytes <= Self.largestChunkBytes else {
                throw implausible("has chunks of \(dims.prefix(shape.count).map(String.init).joined(separator: " x ")) elements "
                                  + "(\(chunkBytes) bytes); this reader takes chunks of at most \(Self.largestChunkBytes) bytes")
            }
            var expected = 1
            for (extent, chunk) in zip(shape, dims.prefix(shape.count)) where chunk > 0 {
                expected = expected.multipliedReportingOverflow(by: (extent + Int(chunk) - 1) / Int(chunk)).partialValue
            }
            let space = try ObjectHandle(.dataspace, "H5Dget_space", site) { H5Dget_space(handle.id) }
            var count: hsize_t = 0
            try h5call("H5Dget_num_chunks", site) { H5Dget_num_chunks(handle.id, space.id, &count) }
            guard Int(count) == expected else {
                throw implausible("declares \(elementCount) elements in \(expected) chunks but stores \(count) of them "
                                  + "(a damaged or crafted file, or one never fully written)")
            }
            // Every filter of the pipeline must be one this library decodes (a missing one fails at the first read,
            // as if the data were damaged): named here instead.
            for index in 0..<max(0, H5Pget_nfilters(creation.id)) {
                var flags: UInt32 = 0, valueCount = 0, config: UInt32 = 0
                var name = [CChar](repeating: 0, count: 256)
                let filter = try h5call("H5Pget_filter2", site) {
                    H5Pget_filter2(creation.id, UInt32(index), &flags, &valueCount, nil, name.count, &name, &config)
                }
                guard H5Zfilter_avail(filter) <= 0 else { continue }
                discardErrorStack()
                let text = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                throw HDF5Error(.unavailableFilter, operation: "read", file: filePath, object: path,
                                message: "is compressed with the HDF5 filter \(text.isEmpty ? "" : "'\(text)' ")(id \(filter)), which this "
                                + "program's \(HDF5Library.version) cannot decode; write it with gzip (deflate) compression or none")
            }
            guard stored.multipliedReportingOverflow(by: Self.largestCompressionRatio).partialValue >= bytes
                    || stored.multipliedReportingOverflow(by: Self.largestCompressionRatio).overflow else {
                throw implausible("declares \(bytes) bytes of data but stores \(stored), more than any compression packs")
            }
        } else {
            guard stored >= bytes else {
                throw implausible("declares \(elementCount) elements (\(bytes) bytes) but stores \(stored) bytes "
                                  + "(a damaged or crafted file, or one never written)")
            }
        }
        storageChecked = true
    }

    // MARK: Storage properties

    /// How the dataset is stored: chunking and the filter pipeline.
    public struct Storage: Sendable, Equatable {
        /// The chunk shape, one extent per dimension, or nil for a contiguous or compact dataset.
        public var chunks: [Int]?
        /// The gzip (deflate) level 0-9 when the deflate filter is in the pipeline, else nil.
        public var deflateLevel: Int?
        /// Whether every chunk carries a Fletcher-32 checksum that is verified on read.
        public var fletcher32: Bool
        /// Whether the byte-shuffle filter is in the pipeline.
        public var shuffle: Bool
        /// Filters other than the three above, by the name HDF5 gives them.
        public var otherFilters: [String]
        /// Bytes the data takes in the file (after compression).
        public var storedBytes: Int
    }

    /// The dataset's chunk shape, filters and stored size, read from its creation property list (H5Dget_create_plist,
    /// H5Pget_chunk, H5Pget_filter2); throws `HDF5Error` when HDF5 fails.
    public func storage() throws(HDF5Error) -> Storage {
        let creation = try ObjectHandle(.propertyList, "H5Dget_create_plist", site) { H5Dget_create_plist(handle.id) }
        var storage = Storage(chunks: nil, deflateLevel: nil, fletcher32: false, shuffle: false, otherFilters: [],
                              storedBytes: Int(H5Dget_storage_size(handle.id)))
        if H5Pget_layout(creation.id) == H5D_CHUNKED {
            var dims = [hsize_t](repeating: 0, count: max(1, shape.count))
            try h5call("H5Pget_chunk", site) { H5Pget_chunk(creation.id, Int32(dims.count), &dims) }
            storage.chunks = dims.prefix(shape.count).map { Int($0) }
        }
        let filterCount = try h5call("H5Pget_nfilters", site) { H5Pget_nfilters(creation.id) }
        for index in 0..<UInt32(filterCount) {
            var flags: UInt32 = 0
            var valueCount = 8
            var values = [UInt32](repeating: 0, count: valueCount)
            var name = [CChar](repeating: 0, count: 256)
            var config: UInt32 = 0
            let filter = try h5call("H5Pget_filter2", site) {
                H5Pget_filter2(creation.id, index, &flags, &valueCount, &values, name.count, &name, &config)
            }
            switch filter {
            case H5Z_FILTER_DEFLATE: storage.deflateLevel = Int(values[0])
            case H5Z_FILTER_FLETCHER32: storage.fletcher32 = true
            case H5Z_FILTER_SHUFFLE: storage.shuffle = true
            default:
                let text = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                storage.otherFilters.append(text.isEmpty ? "filter \(filter)" : text)
            }
        }
        return storage
    }

    /// Where each stored chunk of a chunked dataset lies in the file: byte offset and stored (filtered) size.
    public func storedChunks() throws(HDF5Error) -> [(offset: Int, size: Int)] {
        // HDF5 1.10 rejects H5S_ALL here: it wants the dataset's own dataspace.
        let space = try ObjectHandle(.dataspace, "H5Dget_space", site) { H5Dget_space(handle.id) }
        var count: hsize_t = 0
        try h5call("H5Dget_num_chunks", site) { H5Dget_num_chunks(handle.id, space.id, &count) }
        var chunks: [(offset: Int, size: Int)] = []
        for index in 0..<count {
            var address: haddr_t = 0
            var size: hsize_t = 0
            try h5call("H5Dget_chunk_info", site) {
                H5Dget_chunk_info(handle.id, space.id, index, nil, nil, &address, &size)
            }
            chunks.append((Int(address), Int(size)))
        }
        return chunks
    }

    // MARK: Reading

    /// Reads the whole dataset.
    public func read<T: HDF5Scalar>(as type: T.Type = T.self) throws(HDF5Error) -> [T] {
        try read(as: type, offset: [Int](repeating: 0, count: shape.count), count: shape)
    }

    /// Reads the block `offset ..< offset + count` (one entry per dimension) into a new array, after checking that
    /// the dataset really stores its elements (`requireStored`), so a file cannot make this allocate what it lacks.
    public func read<T: HDF5Scalar>(as type: T.Type = T.self, offset: [Int], count: [Int]) throws(HDF5Error) -> [T] {
        let total = try Self.product(count, elementSize: MemoryLayout<T>.stride, site)
        try requireStored()
        return try [T](unsafeUninitializedCapacity: total) { (buffer, initialized) throws(HDF5Error) in
            try read(into: buffer, offset: offset, count: count)
            initialized = total
        }
    }

    /// Reads the whole dataset into a caller's buffer, which must hold exactly `elementCount` elements.
    public func read<T: HDF5Scalar>(into buffer: UnsafeMutableBufferPointer<T>) throws(HDF5Error) {
        try read(into: buffer, offset: [Int](repeating: 0, count: shape.count), count: shape)
    }

    /// Reads the block `offset ..< offset + count` into a caller's buffer of exactly that many elements.
    public func read<T: HDF5Scalar>(into buffer: UnsafeMutableBufferPointer<T>, offset: [Int], count: [Int]) throws(HDF5Error) {
        let selection = try select(T.self, offset: offset, count: count, bufferCount: buffer.count, operation: "read")
        guard let fileSpace = selection.fileSpace, let memorySpace = selection.memorySpace else { return }
        try h5call("H5Dread", site) {
            H5Dread(handle.id, T.hdf5ElementType.memoryType, memorySpace.id, fileSpace.id, swiftddp_H5P_DEFAULT(),
                    buffer.baseAddress)
        }
    }

    // MARK: Writing

    /// Writes the whole dataset from `values` (exactly `elementCount` of them).
    public func write<T: HDF5Scalar>(_ values: [T]) throws(HDF5Error) {
        try values.withUnsafeBufferPointer { (buffer) throws(HDF5Error) in
            try write(buffer, offset: [Int](repeating: 0, count: shape.count), count: shape)
        }
    }

    /// Writes the block `offset ..< offset + count` from `values` (exactly that many elements).
    public func write<T: HDF5Scalar>(_ values: [T], offset: [Int], count: [Int]) throws(HDF5Error) {
        try values.withUnsafeBufferPointer { (buffer) throws(HDF5Error) in try write(buffer, offset: offset, count: count) }
    }

    /// Writes the whole dataset from a caller's buffer (a slice of an arena, for example).
    public func write<T: HDF5Scalar>(_ buffer: UnsafeBufferPointer<T>) throws(HDF5Error) {
        try write(buffer, offset: [Int](repeating: 0, count: shape.count), count: shape)
    }

    /// Writes the block `offset ..< offset + count` (one entry per dimension) from a caller's buffer of exactly that
    /// many elements (H5Dwrite on a hyperslab). Throws `HDF5Error` `.typeMismatch` when `T` is not the stored type,
    /// `.unsupportedType` for a type this layer does not write, `.outOfBounds` for a block outside the shape or of the
    /// wrong rank, `.sizeMismatch` when the buffer's count differs; an empty block writes nothing.
    public func write<T: HDF5Scalar>(_ buffer: UnsafeBufferPointer<T>, offset: [Int], count: [Int]) throws(HDF5Error) {
        let selection = try select(T.self, offset: offset, count: count, bufferCount: buffer.count, operation: "write")
        guard let fileSpace = selection.fileSpace, let memorySpace = selection.memorySpace else { return }
        try h5call("H5Dwrite", site) {
            H5Dwrite(handle.id, T.hdf5ElementType.memoryType, memorySpace.id, fileSpace.id, swiftddp_H5P_DEFAULT(),
                     buffer.baseAddress)
        }
    }

    // MARK: Selection checks

    /// Checks type, bounds and buffer size before any C call; returns nil spaces for an empty selection.
    private func select<T: HDF5Scalar>(_ type: T.Type, offset: [Int], count: [Int], bufferCount: Int,
                                       operation: String) throws(HDF5Error) -> (fileSpace: ObjectHandle?, memorySpace: ObjectHandle?) {
        func failure(_ kind: HDF5Error.Kind, _ message: String) -> HDF5Error {
            HDF5Error(kind, operation: operation, file: filePath, object: path, message: message)
        }
        guard let stored = elementType else {
            throw failure(.unsupportedType, "the dataset stores \(typeDescription), which this layer does not read or write")
        }
        guard stored == T.hdf5ElementType else {
            throw failure(.typeMismatch, "the dataset stores \(stored) but the buffer holds \(T.hdf5ElementType)")
        }
        guard offset.count == shape.count, count.count == shape.count else {
            throw failure(.outOfBounds, "selection offset \(offset) count \(count) does not have the dataset's rank \(shape.count)")
        }
        for axis in 0..<shape.count {
            guard offset[axis] >= 0, count[axis] >= 0, offset[axis] <= shape[axis], count[axis] <= shape[axis] - offset[axis] else {
                throw failure(.outOfBounds, "selection offset \(offset) count \(count) reaches outside shape \(shape) (axis \(axis))")
            }
        }
        let selected = try Self.product(count, elementSize: 1, site)
        guard bufferCount == selected else {
            throw failure(.sizeMismatch, "the buffer holds \(bufferCount) elements but the selection has \(selected)")
        }
        if selected == 0 { return (nil, nil) }

        let fileSpace = try ObjectHandle(.dataspace, "H5Dget_space", site) { H5Dget_space(handle.id) }
        if !shape.isEmpty {
            let start = offset.map { hsize_t($0) }
            let extent = count.map { hsize_t($0) }
            try h5call("H5Sselect_hyperslab", site) {
                H5Sselect_hyperslab(fileSpace.id, H5S_SELECT_SET, start, nil, extent, nil)
            }
        }
        let memoryDims = [hsize_t(selected)]
        let memorySpace = try ObjectHandle(.dataspace, "H5Screate_simple", site) { H5Screate_simple(1, memoryDims, nil) }
        return (fileSpace, memorySpace)
    }
}
