import HDF5
import TestSupport
import XCTest

/// HDF5 files are how users hand us data: what h5py writes we read, and what we write h5py reads.
/// Needs python3 with h5py and numpy (Launch/test.sh installs them); skips, saying so, without them.
final class H5pyInteropTests: XCTestCase {
    private var directory: URL!
    private var python: String!

    override func setUpWithError() throws {
        guard let python = pythonWithH5py() else {
            throw XCTSkip("python3 with h5py and numpy is not installed: interop with h5py not checked (pip install h5py)")
        }
        self.python = python
        directory = try makeTemporaryDirectory("hdf5-h5py")
    }

    override func tearDownWithError() throws {
        if let directory { try? FileManager.default.removeItem(at: directory) }
    }

    private func runPython(_ script: String, _ arguments: [String]) throws -> ProcessResult {
        let scriptPath = directory.appendingPathComponent("script.py").path
        try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        let result = try runProcess(python, [scriptPath] + arguments)
        XCTAssertEqual(result.status, 0, result.output)
        return result
    }

    func testSwiftReadsWhatH5pyWrote() throws {
        let filePath = directory.appendingPathComponent("from-h5py.h5").path
        _ = try runPython("""
            import sys, h5py, numpy as np
            with h5py.File(sys.argv[1], "w") as f:
                f.attrs["format"] = "swiftddp-tokens"
                f.attrs["version"] = 1
                f.attrs["vocab_size"] = np.int32(260)
                f.attrs["ratio"] = 0.25
                f.attrs["fixed"] = np.bytes_(b"fixed-length")
                f.attrs["lengths"] = np.array([3, 4, 5], dtype=np.int64)
                f.create_dataset("tokens", data=np.arange(1000, dtype=np.int32) % 260, chunks=(100,), compression="gzip", fletcher32=True)
                g = f.create_group("source")
                g.create_dataset("offsets", data=np.array([0, 3, 7, 12], dtype=np.int64))
                f.create_dataset("weights", data=np.arange(12, dtype=np.float32).reshape(3, 4) / 8)
                f.create_dataset("doubles", data=np.linspace(0, 1, 5))
                f.create_dataset("bytes", data=np.arange(6, dtype=np.uint8))
                f.create_dataset("shorts", data=np.array([0, 65535], dtype=np.uint16))
                f.create_dataset("bigendian", data=np.array([1.5, -2.0], dtype=">f4"))
                f.create_dataset("names", data=[b"a", b"bc"])
            """, [filePath])

        let file = try File.open(filePath)
        XCTAssertEqual(try file.stringAttribute("format"), "swiftddp-tokens")
        XCTAssertEqual(try file.int64Attribute("version"), 1)
        XCTAssertEqual(try file.int64Attribute("vocab_size"), 260)
        XCTAssertEqual(try file.doubleAttribute("ratio"), 0.25)
        XCTAssertEqual(try file.stringAttribute("fixed"), "fixed-length")
        XCTAssertEqual(try file.attribute("lengths", as: [Int64].self), [3, 4, 5])
        let tokens = try file.openDataset("tokens")
        XCTAssertEqual(try tokens.read(as: Int32.self), (0..<1000).map { Int32($0 % 260) })
        XCTAssertEqual(try tokens.read(as: Int32.self, offset: [250], count: [20]), (250..<270).map { Int32($0 % 260) })
        let storage = try tokens.storage()
        XCTAssertEqual(storage.chunks, [100])
        XCTAssertNotNil(storage.deflateLevel)
        XCTAssertTrue(storage.fletcher32)
        XCTAssertEqual(try file.openDataset("source/offsets").read(as: Int64.self), [0, 3, 7, 12])
        let weights = try file.openDataset("weights")
        XCTAssertEqual(weights.shape, [3, 4])
        XCTAssertEqual(try weights.read(as: Float.self), (0..<12).map { Float($0) / 8 })
        XCTAssertEqual(try file.openDataset("doubles").read(as: Double.self), [0, 0.25, 0.5, 0.75, 1])
        XCTAssertEqual(try file.openDataset("bytes").read(as: UInt8.self), [0, 1, 2, 3, 4, 5])
        XCTAssertEqual(try file.openDataset("shorts").read(as: UInt16.self), [0, 65535])
        XCTAssertEqual(try file.openDataset("bigendian").read(as: Float.self), [1.5, -2.0])
        let names = try file.openDataset("names")
        XCTAssertNil(names.elementType)
        XCTAssertThrowsError(try names.read(as: UInt8.self)) { error in
            XCTAssertEqual((error as? HDF5Error)?.kind, .unsupportedType)
        }
    }

    func testH5pyReadsWhatSwiftWrote() throws {
        let filePath = directory.appendingPathComponent("from-swift.h5").path
        do {
            let file = try File.create(filePath)
            try file.setAttribute("format", "swiftddp-tokens")
            try file.setAttribute("version", 1)
            try file.setAttribute("lr", 3e-4)
            try file.setAttribute("betas", [0.9, 0.98])
            try file.createDataset("tokens", type: .int32, shape: [1000], chunks: [128], deflate: 4, fletcher32: true)
                .write((0..<1000).map { Int32($0 * 7 % 997) })
            try file.createDataset("params/decoder.layers.0.ffn.fc1.weight", type: .float32, shape: [3, 2])
                .write([Float](arrayLiteral: 0.5, -1, 2, 3.25, -0, 1e-7))
            try file.createDataset("target/offsets", type: .int64, shape: [3]).write([Int64(0), 5, 1 << 40])
            try file.createDataset("d", type: .float64, shape: [2]).write([Double.pi, -1])
            try file.createDataset("u8", type: .uint8, shape: [2]).write([UInt8(7), 255])
            try file.createDataset("u16", type: .uint16, shape: [1]).write([UInt16(65000)])
        }
        let result = try runPython("""
            import sys, h5py, numpy as np
            with h5py.File(sys.argv[1], "r") as f:
                assert f.attrs["format"] == b"swiftddp-tokens", f.attrs["format"]  # fixed-length UTF-8: bytes in h5py
                assert f.attrs["version"] == 1 and f.attrs["version"].dtype == np.int64
                assert f.attrs["lr"] == 3e-4
                assert list(f.attrs["betas"]) == [0.9, 0.98]
                t = f["tokens"]
                assert t.dtype == np.int32 and t.shape == (1000,) and t.chunks == (128,)
                assert t.compression == "gzip" and t.compression_opts == 4 and t.fletcher32
                assert (t[:] == (np.arange(1000) * 7 % 997)).all()
                w = f["params/decoder.layers.0.ffn.fc1.weight"]
                assert w.dtype == np.float32 and w.shape == (3, 2)
                assert (w[:] == np.array([[0.5, -1], [2, 3.25], [0, 1e-7]], dtype=np.float32)).all()
                assert list(f["target/offsets"][:]) == [0, 5, 1 << 40]
                assert f["d"].dtype == np.float64 and f["d"][0] == np.pi
                assert list(f["u8"][:]) == [7, 255] and f["u8"].dtype == np.uint8
                assert f["u16"][0] == 65000 and f["u16"].dtype == np.uint16
            print("h5py read everything")
            """, [filePath])
        XCTAssertTrue(result.stdout.contains("h5py read everything"), result.output)
    }
}
