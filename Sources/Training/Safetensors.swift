import Files
import Foundation
import Transformer

/// The safetensors format (huggingface/safetensors): an 8-byte little-endian header length, a JSON header mapping
/// each tensor name to its dtype, shape and [begin, end) byte offsets in the data that follows (plus string
/// `__metadata__`), then the raw little-endian data, contiguous, in header order.
public enum Safetensors {
    /// Writes every parameter of `model` as F32 under its parameter name, with `metadata`, through `OutputFile`
    /// (never over a directory or one of `inputs`; a temporary beside `path`, renamed when complete). Returns the
    /// bytes written.
    @discardableResult
    public static func write(_ model: TransformerModel, metadata: [String: String], to path: String, inputs: [String] = []) throws -> Int {
        try write(model.layout.views.map { Tensor(name: $0.name, shape: $0.shape, values: Array(model.parameters[$0])) },
                  metadata: metadata, to: path, inputs: inputs)
    }

    /// One named F32 tensor, row-major.
    public struct Tensor: Sendable {
        /// The tensor's name in the file.
        public var name: String
        /// Its shape, outermost first.
        public var shape: [Int]
        /// Its values, row-major (as many as the shape's product).
        public var values: [Float]

        /// A tensor of `values` with `shape`.
        public init(name: String, shape: [Int], values: [Float]) {
            precondition(shape.reduce(1, *) == values.count, "\(name): \(values.count) values for shape \(shape)")
            (self.name, self.shape, self.values) = (name, shape, values)
        }
    }

    /// Writes `tensors` as F32, in the given order, with `metadata`, through `OutputFile` as above. Returns the bytes
    /// written.
    @discardableResult
    public static func write(_ tensors: [Tensor], metadata: [String: String], to path: String, inputs: [String] = []) throws -> Int {
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        for tensor in tensors {
            header[tensor.name] = ["dtype": "F32", "shape": tensor.shape, "data_offsets": [offset, offset + tensor.values.count * 4]] as [String: Any]
            offset += tensor.values.count * 4
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
        json.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - json.count % 8) % 8))
        var length = UInt64(json.count).littleEndian
        var bytes = Foundation.Data(bytes: &length, count: 8)
        bytes.append(json)
        bytes.reserveCapacity(bytes.count + offset)
        for tensor in tensors {
            // x86-64 and arm64 store Float little-endian already: the values' memory is the format's bytes.
            tensor.values.withUnsafeBufferPointer { bytes.append($0) }
        }
        try OutputFile.write(path, data: bytes, inputs: inputs)
        return bytes.count
    }

    // MARK: Reading

    /// A safetensors file that cannot be read, naming it.
    public struct ReadError: Error, CustomStringConvertible, Sendable {
        /// The file.
        public let file: String
        /// What is wrong with it.
        public let message: String
        /// "FILE: MESSAGE".
        public var description: String { "\(file): \(message)" }
    }

    /// The tensors of a safetensors file, read lazily from the mapped file.
    public struct File {
        /// The file's path.
        public let path: String
        /// Each tensor's dtype, shape and byte range in `data`.
        public let entries: [String: (dtype: String, shape: [Int], range: Range<Int>)]
        private let data: Foundation.Data
        private let dataStart: Int

        /// Largest header read (the reference implementation's limit).
        public static let largestHeader = 100_000_000

        /// Maps `path` and checks its header: length within the file, a JSON object whose entries have a dtype of F32, F16,
        /// BF16 or F64, a shape of non-negative sizes, and offsets inside the data that match the shape. Throws
        /// `ReadError` naming the file and the tensor.
        public init(_ path: String) throws {
            self.path = path
            func fail(_ message: String) -> ReadError { ReadError(file: path, message: message) }
            // A Hugging Face cache's snapshot links each file to its blob: the file a link names is what is read.
            do { _ = try Paths.regularFileSize(path) } catch { throw fail(error.message) }
            do { data = try Foundation.Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) } catch {
                throw fail("cannot be read: \(error.localizedDescription)")
            }
            guard data.count >= 8 else { throw fail("is \(data.count) bytes, too short for a safetensors header") }
            let length = data.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
            guard length <= UInt64(Self.largestHeader), Int(length) <= data.count - 8 else {
                throw fail("header length \(length) exceeds the file (\(data.count) bytes) or \(Self.largestHeader) bytes: not a safetensors file")
            }
            dataStart = 8 + Int(length)
            let dataCount = data.count - dataStart
            guard let header = try? JSONSerialization.jsonObject(with: data.subdata(in: 8..<dataStart)) as? [String: Any] else {
                throw fail("the header is not a JSON object: not a safetensors file")
            }
            let sizes = ["F32": 4, "F16": 2, "BF16": 2, "F64": 8]
            var entries: [String: (dtype: String, shape: [Int], range: Range<Int>)] = [:]
            for (name, value) in header where name != "__metadata__" {
                guard let entry = value as? [String: Any], let dtype = entry["dtype"] as? String, let shape = entry["shape"] as? [Int],
                      let offsets = entry["data_offsets"] as? [Int], offsets.count == 2 else {
                    throw fail("tensor '\(name)' lacks a dtype, shape or two data_offsets")
                }
                guard let size = sizes[dtype] else { throw fail("tensor '\(name)' has dtype \(dtype); only F32, F16, BF16 and F64 are read") }
                guard shape.allSatisfy({ $0 >= 0 }) else { throw fail("tensor '\(name)' has shape \(shape), with a negative size") }
                var count = 1
                for dimension in shape {
                    let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
                    guard !overflow, product <= dataCount else { throw fail("tensor '\(name)' has shape \(shape), larger than the file") }
                    count = product
                }
                guard offsets[0] >= 0, offsets[0] <= offsets[1], offsets[1] <= dataCount, offsets[1] - offsets[0] == count * size else {
                    throw fail("tensor '\(name)' has data_offsets \(offsets) that do not hold its \(count) \(dtype) values inside the file's \(dataCount) data bytes")
                }
                entries[name] = (dtype, shape, offsets[0]..<offsets[1])
            }
            // Each byte of data belongs to one tensor at most (as the reference reader requires): overlapping tensors
            // would let a small file stand for an enormous model.
            let ranges = entries.values.map(\.range).filter { !$0.isEmpty }.sorted { $0.lowerBound < $1.lowerBound }
            for (a, b) in zip(ranges, ranges.dropFirst()) where b.lowerBound < a.upperBound {
                func name(_ range: Range<Int>) -> String { entries.filter { $0.value.range == range }.keys.min() ?? "?" }
                throw fail("tensors '\(name(a))' and '\(name(b))' overlap in the file (data_offsets \(a) and \(b))")
            }
            self.entries = entries
        }

        /// Tensor `name` as Float (F16, BF16 and F64 converted), with its shape; nil when the file has none.
        public func tensor(_ name: String) -> (shape: [Int], values: [Float])? {
            guard let entry = entries[name] else { return nil }
            let bytes = data.subdata(in: (dataStart + entry.range.lowerBound)..<(dataStart + entry.range.upperBound))
            let values: [Float] = bytes.withUnsafeBytes { raw in
                switch entry.dtype {
                case "F32": return (0..<(raw.count / 4)).map { Float(bitPattern: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self).littleEndian) }
                case "F64": return (0..<(raw.count / 8)).map { Float(Double(bitPattern: raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self).littleEndian)) }
                case "BF16": return (0..<(raw.count / 2)).map { Float(bitPattern: UInt32(raw.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self).littleEndian) << 16) }
                default: return (0..<(raw.count / 2)).map { Float(Float16(bitPattern: raw.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self).littleEndian)) }
                }
            }
            return (entry.shape, values)
        }
    }
}
