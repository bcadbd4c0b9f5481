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
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        for view in model.layout.views {
            header[view.name] = ["dtype": "F32", "shape": view.shape, "data_offsets": [offset, offset + view.count * 4]] as [String: Any]
            offset += view.count * 4
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
        json.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - json.count % 8) % 8))
        var length = UInt64(json.count).littleEndian
        var bytes = Foundation.Data(bytes: &length, count: 8)
        bytes.append(json)
        bytes.reserveCapacity(bytes.count + offset)
        for view in model.layout.views {
            let tensor = model.parameters[view]
            // x86-64 and arm64 store Float little-endian already: the tensor's memory is the format's bytes.
            bytes.append(UnsafeBufferPointer(tensor))
        }
        try OutputFile.write(path, data: bytes, inputs: inputs)
        return bytes.count
    }
}
