import HDF5
import TestSupport
import XCTest

final class RoundTripTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try makeTemporaryDirectory("hdf5-roundtrip")
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    private func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    private func roundTrip<T: HDF5Scalar & Equatable>(_ values: [T], shape: [Int], file: StaticString = #filePath, line: UInt = #line) throws {
        let filePath = path("roundtrip-\(T.self).h5")
        do {
            let file = try File.create(filePath)
            try file.createDataset("values", type: T.hdf5ElementType, shape: shape).write(values)
        }
        let dataset = try File.open(filePath).openDataset("values")
        XCTAssertEqual(dataset.shape, shape, file: file, line: line)
        XCTAssertEqual(dataset.elementType, T.hdf5ElementType, file: file, line: line)
        XCTAssertEqual(try dataset.read(as: T.self), values, file: file, line: line)
        // And into a caller's buffer.
        var buffer = [T](repeating: values[0], count: values.count)
        try buffer.withUnsafeMutableBufferPointer { try dataset.read(into: $0) }
        XCTAssertEqual(buffer, values, file: file, line: line)
    }

    func testEveryElementTypeRoundTrips() throws {
        try roundTrip((0..<24).map { Float($0) * 0.5 - 3.25 } + [Float.greatestFiniteMagnitude], shape: [5, 5])
        try roundTrip((0..<12).map { Double($0) / 3 } + [Double.leastNonzeroMagnitude, -0.0, .infinity], shape: [15])
        try roundTrip([Int32.min, -1, 0, 1, Int32.max, 7], shape: [2, 3])
        try roundTrip([Int64.min, -1, 0, 1, Int64.max, 1 << 40], shape: [3, 2])
        try roundTrip([UInt8.min, 1, 127, 128, UInt8.max, 9, 10, 11], shape: [2, 2, 2])
        try roundTrip([UInt16.min, 1, 300, UInt16.max], shape: [4])
        try roundTrip([Float(42)], shape: [])  // scalar dataset
    }

    func testNaNSurvivesBitForBit() throws {
        let filePath = path("nan.h5")
        let values: [Float] = [.nan, 1, -.infinity]
        try File.create(filePath).createDataset("x", type: .float32, shape: [3]).write(values)
        let read: [Float] = try File.open(filePath).openDataset("x").read()
        XCTAssertEqual(read.map(\.bitPattern), values.map(\.bitPattern))
    }

    func testHyperslabWritesAndReads() throws {
        let filePath = path("slabs.h5")
        let rows = 6, columns = 5
        do {
            let dataset = try File.create(filePath).createDataset("grid", type: .int32, shape: [rows, columns], chunks: [2, 5])
            // Write row blocks of two rows each, as a writer streaming shards does.
            for start in stride(from: 0, to: rows, by: 2) {
                let block = (0..<(2 * columns)).map { Int32(start * columns + $0) }
                try dataset.write(block, offset: [start, 0], count: [2, columns])
            }
        }
        let dataset = try File.open(filePath).openDataset("grid")
        XCTAssertEqual(try dataset.read(as: Int32.self), (0..<Int32(rows * columns)).map { $0 })
        // An interior block: rows 1..<4, columns 2..<5.
        let block = try dataset.read(as: Int32.self, offset: [1, 2], count: [3, 3])
        XCTAssertEqual(block, [7, 8, 9, 12, 13, 14, 17, 18, 19])
        // Into the middle of a caller's buffer (an arena slice).
        var arena = [Int32](repeating: -1, count: 10)
        try arena.withUnsafeMutableBufferPointer { buffer in
            try dataset.read(into: UnsafeMutableBufferPointer(rebasing: buffer[2..<7]), offset: [5, 0], count: [1, 5])
        }
        XCTAssertEqual(arena, [-1, -1, 25, 26, 27, 28, 29, -1, -1, -1])
        // An empty selection reads nothing and succeeds.
        XCTAssertEqual(try dataset.read(as: Int32.self, offset: [6, 0], count: [0, 5]), [])
    }

    func testOverwritingAHyperslabLeavesTheRest() throws {
        let filePath = path("overwrite.h5")
        let file = try File.create(filePath)
        let dataset = try file.createDataset("v", type: .float64, shape: [10])
        try dataset.write((0..<10).map(Double.init))
        try dataset.write([-1.0, -2.0], offset: [4], count: [2])
        XCTAssertEqual(try dataset.read(as: Double.self), [0, 1, 2, 3, -1, -2, 6, 7, 8, 9])
    }

    func testChunkedDeflateFletcherDataset() throws {
        let filePath = path("filtered.h5")
        let values = (0..<100_000).map { Float($0 % 100) }  // compressible
        do {
            let dataset = try File.create(filePath).createDataset("tokens", type: .float32, shape: [100_000], chunks: [10_000],
                                                                  deflate: 6, fletcher32: true)
            try dataset.write(values)
        }
        let dataset = try File.open(filePath).openDataset("tokens")
        let storage = try dataset.storage()
        XCTAssertEqual(storage.chunks, [10_000])
        XCTAssertEqual(storage.deflateLevel, 6)
        XCTAssertTrue(storage.fletcher32)
        XCTAssertLessThan(storage.storedBytes, values.count * 4 / 4, "deflate should shrink a repetitive pattern")
        XCTAssertEqual(try dataset.read(as: Float.self), values)
        XCTAssertEqual(try dataset.read(as: Float.self, offset: [55_555], count: [10]), Array(values[55_555..<55_565]))
    }

    func testFiltersWithoutChunkShapeChooseOne() throws {
        let filePath = path("autochunk.h5")
        let dataset = try File.create(filePath).createDataset("m", type: .float32, shape: [2000, 300], fletcher32: true)
        let chunks = try XCTUnwrap(try dataset.storage().chunks)
        XCTAssertEqual(chunks.count, 2)
        XCTAssertLessThanOrEqual(chunks.reduce(1, *) * 4, 1 << 20)
        XCTAssertEqual(chunks[1], 300, "rows stay whole")
        let contiguous = try File.create(path("contiguous.h5")).createDataset("m", type: .float32, shape: [10])
        XCTAssertNil(try contiguous.storage().chunks)
    }

    func testAttributesOfEveryKindOnFileGroupAndDataset() throws {
        let filePath = path("attributes.h5")
        do {
            let file = try File.create(filePath)
            try file.setAttribute("format", "swiftddp-tokens")
            try file.setAttribute("version", 1)
            try file.setAttribute("vocab_size", Int64(50_257))
            try file.setAttribute("dropout", 0.1)
            try file.setAttribute("tokenizer", "{\"kind\": \"byte\", \"text\": \"héllo ✓\"}")
            try file.setAttribute("empty", "")
            let group = try file.createGroup("optimizer/exp_avg")
            try group.setAttribute("betas", [0.9, 0.98])
            try group.setAttribute("shape", [Int64(512), 2048])
            let dataset = try file.createDataset("params/embed.weight", type: .float32, shape: [4, 2])
            try dataset.setAttribute("ids", [Int32(1), 2, 3])
            try dataset.setAttribute("bytes", [UInt8(0), 255])
            try dataset.setAttribute("halves", [Float(0.5), 1.5])
            try dataset.setAttribute("step", 10)
            try dataset.setAttribute("step", 11)  // replaces
            try dataset.setAttribute("step_kind", 3.5)
            try dataset.setAttribute("step_kind", "now a string")  // replaces with another type
        }
        let file = try File.open(filePath)
        XCTAssertEqual(try file.attributeNames(), ["dropout", "empty", "format", "tokenizer", "version", "vocab_size"])
        XCTAssertEqual(try file.stringAttribute("format"), "swiftddp-tokens")
        XCTAssertEqual(try file.int64Attribute("version"), 1)
        XCTAssertEqual(try file.int64Attribute("vocab_size"), 50_257)
        XCTAssertEqual(try file.doubleAttribute("dropout"), 0.1)
        XCTAssertEqual(try file.stringAttribute("tokenizer"), "{\"kind\": \"byte\", \"text\": \"héllo ✓\"}")
        XCTAssertEqual(try file.stringAttribute("empty"), "")
        let group = try file.openGroup("optimizer/exp_avg")
        XCTAssertEqual(try group.attribute("betas", as: [Double].self), [0.9, 0.98])
        XCTAssertEqual(try group.attribute("shape"), .integers([512, 2048]))
        let dataset = try file.openDataset("params/embed.weight")
        XCTAssertEqual(try dataset.attribute("ids", as: [Int32].self), [1, 2, 3])
        XCTAssertEqual(try dataset.attribute("bytes", as: [UInt8].self), [0, 255])
        XCTAssertEqual(try dataset.attribute("halves", as: [Float].self), [0.5, 1.5])
        XCTAssertEqual(try dataset.int64Attribute("step"), 11)
        XCTAssertEqual(try dataset.stringAttribute("step_kind"), "now a string")
        XCTAssertEqual(try dataset.attributeNames(), ["bytes", "halves", "ids", "step", "step_kind"])
        XCTAssertThrowsError(try dataset.attributeNames(limit: 3)) { error in
            XCTAssertEqual((error as? HDF5Error)?.kind, .implausible)
            XCTAssertTrue("\(error)".contains("holds more than 3 attributes, the most SwiftDDP lists"), "\(error)")
        }
    }

    func testGroupsAndMembers() throws {
        let filePath = path("groups.h5")
        do {
            let file = try File.create(filePath)
            try file.createGroup("encoder/layers/0")
            try file.createDataset("encoder/layers/0/weight", type: .float32, shape: [2, 2])
            try file.createDataset("tokens", type: .int32, shape: [5])
        }
        let file = try File.open(filePath)
        XCTAssertEqual(try file.members(), [Member(name: "encoder", kind: .group), Member(name: "tokens", kind: .dataset)])
        XCTAssertEqual(try file.openGroup("encoder/layers").members(), [Member(name: "0", kind: .group)])
        XCTAssertTrue(try file.contains("encoder/layers/0/weight"))
        XCTAssertTrue(try file.contains("/tokens"))
        XCTAssertFalse(try file.contains("decoder/layers/0"))
        XCTAssertEqual(try file.openGroup("encoder").openDataset("layers/0/weight").path, "/encoder/layers/0/weight")

        // A group of many links (kept in HDF5's dense storage, as a checkpoint's /params): every name, in name order
        // (bytewise), whatever order they were made in; a limit below their count is refused.
        let manyPath = path("many.h5")
        let names = (0..<60).map { "layers.\($0).weight" } + ["Z", "a", "é"]
        do {
            let many = try File.create(manyPath)
            for name in names.shuffled() { try many.createDataset("params/\(name)", type: .float32, shape: [1]) }
        }
        let params = try File.open(manyPath).openGroup("params")
        XCTAssertEqual(try params.members().map(\.name), names.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) })
        XCTAssertTrue(try params.members().allSatisfy { $0.kind == .dataset })
        XCTAssertThrowsError(try params.members(limit: 10)) { error in
            XCTAssertEqual((error as? HDF5Error)?.kind, .implausible)
            XCTAssertTrue("\(error)".contains("holds 63 links, more than the 10 SwiftDDP lists"), "\(error)")
        }

        // A link name past any a real file holds (a trial's 70,000 bytes): a sentence saying so, not the library's
        // "iteration failed".
        let longPath = path("long-name.h5")
        try File.create(longPath).createDataset(String(repeating: "n", count: 70_000), type: .float32, shape: [1])
        XCTAssertThrowsError(try File.open(longPath).members()) { error in
            XCTAssertEqual((error as? HDF5Error)?.kind, .implausible)
            XCTAssertTrue("\(error)".contains("holds a link whose name is 65536 bytes or longer (link number 1 in storage order)"), "\(error)")
            XCTAssertTrue("\(error)".contains(longPath), "\(error)")
        }
    }

    func testReadWriteModeReopensAndAppends() throws {
        let filePath = path("rw.h5")
        try File.create(filePath).createDataset("a", type: .int64, shape: [2]).write([Int64(1), 2])
        do {
            let file = try File.open(filePath, mode: .readWrite)
            try file.createDataset("b", type: .int64, shape: [1]).write([Int64(3)])
            try file.flush()
            try file.close()
        }
        let file = try File.open(filePath)
        XCTAssertEqual(try file.openDataset("a").read(as: Int64.self), [1, 2])
        XCTAssertEqual(try file.openDataset("b").read(as: Int64.self), [3])
    }
}
