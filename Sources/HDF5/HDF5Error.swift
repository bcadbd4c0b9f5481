import CHDF5
#if canImport(Glibc)
import Glibc
#endif

/// A failed HDF5 operation: what was attempted, on which file and object, and HDF5's own error stack.
public struct HDF5Error: Error, CustomStringConvertible, Sendable {
    /// What went wrong, for callers that react to some failures (a missing attribute, say) and report the others.
    public enum Kind: Sendable, Equatable {
        /// The HDF5 library reported a failure; `stack` holds its error stack, innermost last.
        case library
        /// The file does not exist.
        case fileNotFound
        /// The file exists but is not an HDF5 file.
        case notHDF5
        /// The path names a directory, a FIFO, a device or a socket: refused before anything reads it.
        case notRegularFile
        /// Creating a file that exists, without permission to replace it.
        case alreadyExists
        /// A group, dataset or attribute is not there.
        case objectNotFound
        /// The caller's element type differs from what the file stores (we never convert silently).
        case typeMismatch
        /// The caller's buffer holds a different number of elements than the selection.
        case sizeMismatch
        /// A hyperslab reaches past the dataset's extent, or has the wrong rank.
        case outOfBounds
        /// The stored type is one this layer does not move (strings in datasets, compounds, ...).
        case unsupportedType
        /// Arguments that cannot work (negative sizes, a chunk shape of the wrong rank, ...).
        case invalidArgument
        /// The file declares more than it holds or than can be held (a dataset whose chunks are not all stored, a
        /// shape whose element count overflows, an attribute with no value or too many).
        case implausible
        /// A link to another file: data is read only from the file that was named.
        case externalLink
        /// Data compressed with a filter this HDF5 library cannot decode (h5py's lzf, a plugin's).
        case unavailableFilter
    }

    /// The category of failure.
    public let kind: Kind
    /// What was attempted, in words or as the HDF5 function that failed ("open", "read attribute", "H5Dwrite").
    public let operation: String
    /// The path of the file, as it was given when opened or created.
    public let file: String
    /// The object inside the file (a path such as "/tokens", or "path@name" for an attribute), or nil for the file
    /// itself.
    public let object: String?
    /// What was wrong, in a sentence.
    public let message: String
    /// HDF5's error stack at the time of failure ("function(): description" lines, outermost first).
    public let stack: [String]

    /// An error with its parts; `stack` is HDF5's error stack, outermost first, when the library reported one.
    public init(_ kind: Kind, operation: String, file: String, object: String?, message: String, stack: [String] = []) {
        self.kind = kind
        self.operation = operation
        self.file = file
        self.object = object
        self.message = message
        self.stack = stack
    }

    /// The failure in one sentence, with the innermost lines of HDF5's stack (where the cause is) when there is one.
    public var description: String {
        let target = object.map { "\(file):\($0)" } ?? file
        var text = "HDF5 \(operation) failed for \(target): \(message)"
        let innermost = stack.suffix(2).filter { $0 != message }
        if !innermost.isEmpty { text += " (HDF5: " + innermost.joined(separator: "; ") + ")" }
        return text
    }
}

/// Where an operation happens, for error messages.
struct Site {
    let file: String
    let object: String?
}

// HDF5 prints its error stack to stderr by default; we turn that off and copy the stack into our error.
// In a thread-safe HDF5 build the setting is per thread, so each thread turns it off on its first call.
private let quietErrorsKey: pthread_key_t = {
    var key = pthread_key_t()
    pthread_key_create(&key, nil)
    return key
}()

func silenceAutomaticErrorPrinting() {
    HDF5Library.skipCleanupAtExit()
    guard pthread_getspecific(quietErrorsKey) == nil else { return }
    H5Eset_auto2(swiftddp_H5E_DEFAULT(), nil, nil)
    pthread_setspecific(quietErrorsKey, UnsafeRawPointer(bitPattern: 1))
}

/// Every HDF5 call goes through here: a negative return (herr_t, hid_t, htri_t, ssize_t) throws an
/// `HDF5Error` carrying the error stack.
@discardableResult
func h5call<R: BinaryInteger>(_ operation: @autoclosure () -> String, _ site: Site, message: @autoclosure () -> String? = nil,
                              _ body: () -> R) throws(HDF5Error) -> R {
    silenceAutomaticErrorPrinting()
    let result = body()
    if result < 0 {
        let stack = takeErrorStack()
        if stack.contains(where: { $0.contains("No space left on device") }) {
            throw HDF5Error(.library, operation: operation(), file: site.file, object: site.object,
                            message: "No space left on device (errno 28)")
        }
        if stack.contains(where: { $0.contains("unable to lock file") }) {
            throw HDF5Error(.library, operation: operation(), file: site.file, object: site.object,
                            message: "another process holds this file open for writing (HDF5's file lock). Wait for it to "
                                + "finish; if that process only reads, HDF5_USE_FILE_LOCKING=FALSE in this command's environment "
                                + "lets readers proceed")
        }
        throw HDF5Error(.library, operation: operation(), file: site.file, object: site.object,
                        message: message() ?? stack.last ?? "HDF5 returned an error", stack: stack)
    }
    return result
}

/// Clears the error stack after a failure that was expected and handled.
func discardErrorStack() {
    H5Eclear2(swiftddp_H5E_DEFAULT())
}

/// Collects strings from HDF5's C callbacks (passed through their `void *` context).
final class StringList {
    var lines: [String] = []
    /// The most lines a collector takes before it asks the C library to stop.
    var limit = Int.max
    /// Why the callback stopped the C library with an error (a value no sound file holds), to be said in place of the
    /// library's own "iteration failed".
    var failure: String?
}

/// Reads the current thread's HDF5 error stack (outermost call first) and clears it.
func takeErrorStack() -> [String] {
    let collected = StringList()
    let box = Unmanaged.passRetained(collected)
    defer { box.release() }
    H5Ewalk2(swiftddp_H5E_DEFAULT(), H5E_WALK_DOWNWARD, { _, entry, context in
        guard let entry, let context else { return 0 }
        let lines = Unmanaged<StringList>.fromOpaque(context).takeUnretainedValue()
        let function = entry.pointee.func_name.map { String(cString: $0) } ?? "?"
        let detail = entry.pointee.desc.map { String(cString: $0) } ?? ""
        let minor = errorMessageText(entry.pointee.min_num)
        lines.lines.append("\(function)(): \(detail)" + (minor.isEmpty ? "" : " [\(minor)]"))
        return 0
    }, box.toOpaque())
    H5Eclear2(swiftddp_H5E_DEFAULT())
    return collected.lines
}

private func errorMessageText(_ id: hid_t) -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    let length = H5Eget_msg(id, nil, &buffer, buffer.count)
    guard length > 0 else { return "" }
    return String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
