import CHDF5

/// Anything in an HDF5 file that carries attributes: a file's root group, a group, a dataset.
public protocol HDF5Object: AnyObject {
    /// The open HDF5 id of the object, closed when the object is released.
    var handle: ObjectHandle { get }
}

extension HDF5Object {
    /// The file this object lives in, as it was opened.
    public var filePath: String { handle.filePath }
    /// The object's path inside the file ("/" for the root).
    public var path: String { handle.path }

    var site: Site { handle.site }

    func childPath(_ name: String) -> String {
        if name.hasPrefix("/") { return name }
        return path == "/" ? "/" + name : path + "/" + name
    }
}

/// A group-like object: the root of a file, or a group.
public protocol HDF5Container: HDF5Object {}

/// What a group holds under one name.
public struct Member: Sendable, Equatable {
    /// What the name links to. Soft and external links are reported as links, not followed.
    public enum Kind: Sendable, Equatable {
        case group, dataset, softLink, externalLink, other
        /// A hard link to an object this HDF5 library cannot open (one a newer HDF5 wrote, or damage): its error.
        case unopenable(String)
    }
    /// The link name inside the group (one path component).
    public let name: String
    /// What the link points to.
    public let kind: Kind

    /// A member called `name` of `kind`.
    public init(name: String, kind: Kind) {
        self.name = name
        self.kind = kind
    }
}

extension HDF5Object {
    /// Sixteen bytes that identify this object within its file (two names of one object give the same bytes).
    public func identity() throws(HDF5Error) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 16)
        try h5call("H5Oget_info", site) { swiftddp_object_identity(handle.id, &bytes) }
        return bytes
    }
}

extension HDF5Container {
    /// True when a link of that name (a relative or absolute path) exists and resolves to an object. A link to another
    /// file on the way throws `.externalLink`: data comes only from the file that was named.
    public func contains(_ name: String) throws(HDF5Error) -> Bool {
        // Walk the path one link at a time: H5Lexists fails rather than answering false on a missing parent.
        var prefix = name.hasPrefix("/") ? "/" : ""
        for part in name.split(separator: "/") {
            prefix += (prefix.isEmpty || prefix.hasSuffix("/") ? "" : "/") + part
            let exists = try h5call("H5Lexists", Site(file: filePath, object: childPath(prefix))) {
                H5Lexists(handle.id, prefix, swiftddp_H5P_DEFAULT())
            }
            if exists == 0 { return false }
            if swiftddp_link_type(handle.id, prefix) == Int32(H5L_TYPE_EXTERNAL.rawValue) {
                throw HDF5Error(.externalLink, operation: "open", file: filePath, object: childPath(prefix),
                                message: "is a link to another file; SwiftDDP reads data only from the file it was given")
            }
        }
        return try h5call("H5Oexists_by_name", Site(file: filePath, object: childPath(name))) {
            H5Oexists_by_name(handle.id, name, swiftddp_H5P_DEFAULT())
        } > 0
    }

    /// The members of this group in name order, with their kind (at most `limit`; a file may declare any number).
    public func members(limit: Int = 1 << 20) throws(HDF5Error) -> [Member] {
        var info = H5G_info_t()
        try h5call("H5Gget_info", site) { H5Gget_info(handle.id, &info) }
        guard info.nlinks <= hsize_t(limit) else {
            throw HDF5Error(.implausible, operation: "list group", file: filePath, object: path,
                            message: "holds \(info.nlinks) links, more than the \(limit) SwiftDDP lists")
        }
        // Names first, in storage order (for a group in dense storage the C library then builds no table of all links,
        // see shim.h), then sorted as HDF5's name index orders them (bytewise).
        let collected = StringList()
        collected.limit = limit
        let box = Unmanaged.passRetained(collected)
        defer { box.release() }
        do {
            try h5call("H5Literate", site) {
                swiftddp_link_names(handle.id, { name, context in
                    guard let name, let context else { return -1 }
                    let names = Unmanaged<StringList>.fromOpaque(context).takeUnretainedValue()
                    var length = 0
                    while name[length] != 0 {
                        length += 1
                        if length == longestLinkName {
                            names.failure = "holds a link whose name is \(longestLinkName) bytes or longer (link number \(names.lines.count + 1) "
                                + "in storage order); names of HDF5 files SwiftDDP reads are far shorter"
                            return -1
                        }
                    }
                    names.lines.append(String(decoding: UnsafeRawBufferPointer(start: name, count: length), as: UTF8.self))
                    return names.lines.count > names.limit ? 1 : 0  // (1 stops the iteration; the count is refused below)
                }, box.toOpaque())
            }
        } catch {
            guard let failure = collected.failure else { throw error }
            throw HDF5Error(.implausible, operation: "list group", file: filePath, object: path, message: failure)
        }
        // (More links than the group's count said: the iteration stopped at limit + 1.)
        guard collected.lines.count <= limit else {
            throw HDF5Error(.implausible, operation: "list group", file: filePath, object: path,
                            message: "holds more than \(limit) links, the most SwiftDDP lists")
        }
        let names = collected.lines.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        return names.map { Member(name: $0, kind: memberKind($0)) }
    }

    private func memberKind(_ name: String) -> Member.Kind {
        switch swiftddp_link_type(handle.id, name) {
        case Int32(H5L_TYPE_SOFT.rawValue): return .softLink
        case Int32(H5L_TYPE_EXTERNAL.rawValue): return .externalLink
        case Int32(H5L_TYPE_HARD.rawValue): break
        default:
            discardErrorStack()
            return .other
        }
        silenceAutomaticErrorPrinting()
        let object = H5Oopen(handle.id, name, swiftddp_H5P_DEFAULT())
        guard object >= 0 else {
            // The innermost reason ("unable to decode ..."), which says what the library could not read.
            return .unopenable(takeErrorStack().last ?? "H5Oopen failed")
        }
        defer { H5Oclose(object) }
        switch H5Iget_type(object) {
        case H5I_GROUP: return .group
        case H5I_DATASET: return .dataset
        default: return .other
        }
    }

    /// Creates a group (and any missing parents: "a/b/c" works).
    @discardableResult
    public func createGroup(_ name: String) throws(HDF5Error) -> Group {
        let target = Site(file: filePath, object: childPath(name))
        if try contains(name) {
            throw HDF5Error(.alreadyExists, operation: "create group", file: filePath, object: target.object,
                            message: "a group or dataset of that name already exists")
        }
        try createParents(of: name)
        let creation = try ObjectHandle(.propertyList, "H5Pcreate", target) { H5Pcreate(swiftddp_H5P_GROUP_CREATE()) }
        try h5call("H5Pset_obj_track_times", target) { H5Pset_obj_track_times(creation.id, false) }
        let group = try ObjectHandle(.group, "H5Gcreate2", target) {
            H5Gcreate2(handle.id, name, swiftddp_H5P_DEFAULT(), creation.id, swiftddp_H5P_DEFAULT())
        }
        return Group(group)
    }

    /// Creates the missing groups on the way to `name`, one by one without modification times (HDF5's own
    /// intermediate-group creation would record them, and the same data would not give a byte-identical file).
    private func createParents(of name: String) throws(HDF5Error) {
        var parent = name.hasPrefix("/") ? "/" : ""
        for part in name.split(separator: "/").dropLast() {
            parent += (parent.isEmpty || parent.hasSuffix("/") ? "" : "/") + part
            if try !contains(parent) { try createGroup(parent) }
        }
    }

    /// Opens an existing group; a missing one throws `.objectNotFound`.
    public func openGroup(_ name: String) throws(HDF5Error) -> Group {
        let target = Site(file: filePath, object: childPath(name))
        try requireMember(name, target, what: "group")
        return Group(try ObjectHandle(.group, "H5Gopen2", target) { H5Gopen2(handle.id, name, swiftddp_H5P_DEFAULT()) })
    }

    /// Creates a dataset of `shape` (and any missing parent groups).
    ///
    /// - chunks: the chunk shape; needed by the filters, and chosen automatically (about 1 MiB per chunk)
    ///   when a filter is asked for without one.
    /// - deflate: gzip level 0-9.
    /// - fletcher32: a checksum on every chunk, verified on read: corrupted bytes fail to read.
    @discardableResult
    public func createDataset(_ name: String, type: ElementType, shape: [Int], chunks: [Int]? = nil,
                              deflate: Int? = nil, fletcher32: Bool = false) throws(HDF5Error) -> Dataset {
        let target = Site(file: filePath, object: childPath(name))
        func invalid(_ message: String) -> HDF5Error {
            HDF5Error(.invalidArgument, operation: "create dataset", file: filePath, object: target.object, message: message)
        }
        guard shape.allSatisfy({ $0 >= 0 }) else { throw invalid("shape \(shape) has a negative extent") }
        if let deflate, !(0...9).contains(deflate) { throw invalid("deflate level \(deflate) is not in 0...9") }
        if try contains(name) {
            throw HDF5Error(.alreadyExists, operation: "create dataset", file: filePath, object: target.object,
                            message: "a group or dataset of that name already exists")
        }
        let wantsFilters = deflate != nil || fletcher32
        var chunkShape = chunks
        if chunkShape == nil && wantsFilters { chunkShape = defaultChunkShape(shape, elementSize: type.byteSize) }
        if let chunkShape {
            guard chunkShape.count == shape.count, !shape.isEmpty else {
                throw invalid("chunk shape \(chunkShape) does not match the rank of shape \(shape)")
            }
            guard chunkShape.allSatisfy({ $0 > 0 }) else { throw invalid("chunk shape \(chunkShape) has an extent < 1") }
        }

        let dims = shape.map { hsize_t($0) }
        let space = try ObjectHandle(.dataspace, "H5Screate_simple", target) {
            shape.isEmpty ? H5Screate(H5S_SCALAR) : H5Screate_simple(Int32(dims.count), dims, nil)
        }
        let creation = try ObjectHandle(.propertyList, "H5Pcreate", target) { H5Pcreate(swiftddp_H5P_DATASET_CREATE()) }
        // No modification times in object headers: the same data gives a byte-identical file.
        try h5call("H5Pset_obj_track_times", target) { H5Pset_obj_track_times(creation.id, false) }
        if let chunkShape {
            let chunkDims = chunkShape.map { hsize_t($0) }
            try h5call("H5Pset_chunk", target) { H5Pset_chunk(creation.id, Int32(chunkDims.count), chunkDims) }
        }
        if let deflate {
            try h5call("H5Pset_deflate", target) { H5Pset_deflate(creation.id, UInt32(deflate)) }
        }
        // Last in the pipeline, as h5py does: the checksum covers the bytes as stored.
        if fletcher32 {
            try h5call("H5Pset_fletcher32", target) { H5Pset_fletcher32(creation.id) }
        }
        try createParents(of: name)
        let dataset = try ObjectHandle(.dataset, "H5Dcreate2", target) {
            H5Dcreate2(handle.id, name, type.fileType, space.id, swiftddp_H5P_DEFAULT(), creation.id, swiftddp_H5P_DEFAULT())
        }
        return try Dataset(dataset)
    }

    /// Opens an existing dataset; a missing one throws `.objectNotFound`.
    public func openDataset(_ name: String) throws(HDF5Error) -> Dataset {
        let target = Site(file: filePath, object: childPath(name))
        try requireMember(name, target, what: "dataset")
        return try Dataset(try ObjectHandle(.dataset, "H5Dopen2", target) { H5Dopen2(handle.id, name, swiftddp_H5P_DEFAULT()) })
    }

    private func requireMember(_ name: String, _ target: Site, what: String) throws(HDF5Error) {
        guard try contains(name) else {
            throw HDF5Error(.objectNotFound, operation: "open \(what)", file: filePath, object: target.object,
                            message: "no \(what) of that name")
        }
    }

}

/// About 1 MiB per chunk: shrink the leading dimensions first, so rows stay contiguous.
func defaultChunkShape(_ shape: [Int], elementSize: Int) -> [Int] {
    let targetElements = max(1, (1 << 20) / elementSize)
    var chunk = shape.map { max(1, $0) }
    var index = 0
    while chunk.reduce(1, *) > targetElements && index < chunk.count {
        let rest = chunk.reduce(1, *) / chunk[index]
        chunk[index] = max(1, targetElements / max(1, rest))
        index += 1
    }
    return chunk
}

/// The longest link name `members` reads (bytes): a longer one is damage, or a file made to exhaust memory.
private let longestLinkName = 1 << 16
