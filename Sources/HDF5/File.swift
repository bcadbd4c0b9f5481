import CHDF5
#if canImport(Glibc)
import Glibc
#endif

/// An HDF5 file; it is also its own root group ("/").
///
/// Not `Sendable`: HDF5 objects are used by one thread at a time (the data loader's thread owns its files).
public final class File: HDF5Container {
    /// How `open` opens a file: read-only (H5F_ACC_RDONLY) or for reading and writing (H5F_ACC_RDWR).
    public enum Mode: Sendable { case readOnly, readWrite }

    /// The open HDF5 file id, closed by `close()` or when the file is released.
    public let handle: ObjectHandle

    private init(_ handle: ObjectHandle) { self.handle = handle }

    /// Opens an existing file. A missing file throws `.fileNotFound`, a file that is not HDF5 `.notHDF5`, a directory,
    /// FIFO, device or socket `.notRegularFile` before anything reads it (reading a FIFO would wait for a writer).
    public static func open(_ path: String, mode: Mode = .readOnly) throws(HDF5Error) -> File {
        let site = Site(file: path, object: nil)
        var status = stat()
        guard stat(path, &status) == 0 else {
            let reason = errno
            throw HDF5Error(.fileNotFound, operation: "open", file: path, object: nil,
                            message: reason == ELOOP ? "no such file: a link that loops, or a chain of more than 40 links"
                                     : reason == ENOENT || reason == ENOTDIR ? "no such file" : String(cString: strerror(reason)))
        }
        guard status.st_mode & S_IFMT == S_IFREG else {
            throw HDF5Error(.notRegularFile, operation: "open", file: path, object: nil, message: status.st_mode & S_IFMT == S_IFDIR
                            ? "is a directory, not an HDF5 file" : "is not a regular file (a FIFO, device or socket), so it is not read")
        }
        let isHDF5 = try h5call("H5Fis_hdf5", site) { H5Fis_hdf5(path) }
        guard isHDF5 > 0 else {
            throw HDF5Error(.notHDF5, operation: "open", file: path, object: nil,
                            message: "not an HDF5 file (no HDF5 signature found)")
        }
        let flags = mode == .readOnly ? swiftddp_H5F_ACC_RDONLY() : swiftddp_H5F_ACC_RDWR()
        return File(try ObjectHandle(.file, "H5Fopen", site) { H5Fopen(path, flags, swiftddp_H5P_DEFAULT()) })
    }

    /// Whether `path` is a regular file that holds an HDF5 signature (HDF5's `H5Fis_hdf5`); false for anything else,
    /// a FIFO or device included (never opened, so never waited on).
    public static func isHDF5(_ path: String) -> Bool {
        var status = stat()
        guard stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFREG else { return false }
        return ((try? h5call("H5Fis_hdf5", Site(file: path, object: nil)) { H5Fis_hdf5(path) }) ?? 0) > 0
    }

    /// Creates a file. With `overwrite` an existing file is truncated; without it an existing file throws
    /// `.alreadyExists`.
    ///
    /// Written in the HDF5 1.10 file format (library version bounds V110 to V110): its superblock, object headers and
    /// chunk indexes carry checksums, so a damaged byte in the file's structure is reported when read instead of being
    /// parsed; HDF5 1.10 and later (h5py included) read it.
    public static func create(_ path: String, overwrite: Bool = true) throws(HDF5Error) -> File {
        let site = Site(file: path, object: nil)
        if !overwrite && access(path, F_OK) == 0 {
            throw HDF5Error(.alreadyExists, operation: "create", file: path, object: nil,
                            message: "the file exists and overwriting was not asked for")
        }
        let flags = overwrite ? swiftddp_H5F_ACC_TRUNC() : swiftddp_H5F_ACC_EXCL()
        let access = try ObjectHandle(.propertyList, "H5Pcreate", site) { H5Pcreate(swiftddp_H5P_FILE_ACCESS()) }
        try h5call("H5Pset_libver_bounds", site) { H5Pset_libver_bounds(access.id, H5F_LIBVER_V110, H5F_LIBVER_V110) }
        // No modification times in the root group's object header either: the same data gives a byte-identical file.
        let creation = try ObjectHandle(.propertyList, "H5Pcreate", site) { H5Pcreate(swiftddp_H5P_FILE_CREATE()) }
        try h5call("H5Pset_obj_track_times", site) { H5Pset_obj_track_times(creation.id, false) }
        return File(try ObjectHandle(.file, "H5Fcreate", site) { H5Fcreate(path, flags, creation.id, access.id) })
    }

    /// Writes buffered data to the operating system (not an fsync).
    public func flush() throws(HDF5Error) {
        try h5call("H5Fflush", site) { H5Fflush(handle.id, H5F_SCOPE_GLOBAL) }
    }

    /// Closes the file now and reports a failure; otherwise it closes when released. Groups and datasets
    /// still open keep the file open until they are released too.
    public func close() throws(HDF5Error) {
        try handle.close()
    }
}

/// A group inside a file.
public final class Group: HDF5Container {
    /// The open HDF5 group id, closed when the group is released.
    public let handle: ObjectHandle
    init(_ handle: ObjectHandle) { self.handle = handle }
}

/// The HDF5 library this program runs with.
public enum HDF5Library {
    /// Tells HDF5 not to close what is still open when the process exits (H5dont_atexit), once; call it before
    /// anything else of HDF5 (a program's start: the library's first call here makes it too, in case). A file whose
    /// close failed (a full disk) stays registered with the library, and HDF5's exit handler closing it again crashed
    /// the process after its error was said. Every file SwiftDDP writes is closed, or abandoned as failed, before it is
    /// renamed into place, so nothing is lost by skipping that handler.
    public static func skipCleanupAtExit() {
        _ = cleanupSkipped
    }

    /// H5dont_atexit, called at most once (a second call fails, and would leave an error on HDF5's stack).
    private static let cleanupSkipped: Void = { _ = H5dont_atexit() }()

    /// Its version, as "HDF5 1.10.8" (H5get_libversion).
    public static var version: String {
        var major: UInt32 = 0, minor: UInt32 = 0, release: UInt32 = 0
        guard H5get_libversion(&major, &minor, &release) >= 0 else { return "version unknown" }
        return "HDF5 \(major).\(minor).\(release)"
    }
}
