import HDF5
import TestSupport
import XCTest

/// Every failure throws an HDF5Error that names the file and object, and never reads garbage.
final class ErrorTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try makeTemporaryDirectory("hdf5-errors")
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    private func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    private func assertThrows<R>(_ kind: HDF5Error.Kind, mentioning texts: [String] = [], _ body: @autoclosure () throws -> R,
                                 file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            guard let error = error as? HDF5Error else { return XCTFail("not an HDF5Error: \(error)", file: file, line: line) }
            XCTAssertEqual(error.kind, kind, "\(error)", file: file, line: line)
            for text in texts {
                XCTAssertTrue(error.description.contains(text), "'\(text)' missing from: \(error)", file: file, line: line)
            }
        }
    }

    private func smallFile() throws -> String {
        let filePath = path("small.h5")
        let file = try File.create(filePath)
        try file.createDataset("values", type: .float32, shape: [4, 3]).write((0..<12).map(Float.init))
        try file.setAttribute("count", 12)
        return filePath
    }

    func testMissingFile() {
        let missing = path("nope/missing.h5")
        assertThrows(.fileNotFound, mentioning: [missing, "no such file"], try File.open(missing))
    }

    func testNotAnHDF5File() throws {
        let text = path("notes.txt")
        try "plain text, not HDF5".write(toFile: text, atomically: true, encoding: .utf8)
        assertThrows(.notHDF5, mentioning: [text], try File.open(text))
    }

    /// A FIFO (reading it would wait for a writer) and a directory are refused before anything reads them; a link
    /// that loops is named.
    func testFIFOsDirectoriesAndLoopsAreRefusedBeforeReading() throws {
        let fifo = path("fifo.h5")
        XCTAssertEqual(mkfifo(fifo, 0o644), 0)
        assertThrows(.notRegularFile, mentioning: [fifo, "is not a regular file"], try File.open(fifo))
        assertThrows(.notRegularFile, mentioning: [directory.path, "is a directory"], try File.open(directory.path))
        let loop = path("loop.h5")
        try FileManager.default.createSymbolicLink(atPath: loop, withDestinationPath: loop)
        assertThrows(.fileNotFound, mentioning: [loop, "a link that loops"], try File.open(loop))
    }

    func testCreateWithoutOverwriteRefusesExistingFile() throws {
        let filePath = try smallFile()
        assertThrows(.alreadyExists, mentioning: [filePath], try File.create(filePath, overwrite: false))
        XCTAssertEqual(try File.open(filePath).openDataset("values").shape, [4, 3], "the existing file is untouched")
    }

    func testCreateInMissingDirectoryCarriesTheLibraryStack() {
        let filePath = path("no/such/dir/x.h5")
        XCTAssertThrowsError(try File.create(filePath)) { error in
            let error = error as! HDF5Error
            XCTAssertEqual(error.kind, .library)
            XCTAssertEqual(error.file, filePath)
            XCTAssertFalse(error.stack.isEmpty, "the library's error stack is copied into the error")
            XCTAssertTrue(error.stack.contains { $0.contains("H5Fcreate") }, "\(error.stack)")
        }
    }

    func testWrongElementTypeIsRefused() throws {
        let dataset = try File.open(try smallFile()).openDataset("values")
        assertThrows(.typeMismatch, mentioning: ["/values", "float32", "float64"], try dataset.read(as: Double.self))
        assertThrows(.typeMismatch, mentioning: ["int32"], try dataset.read(as: Int32.self))
        assertThrows(.typeMismatch, try dataset.write([Int64](repeating: 0, count: 12)))
    }

    func testWrongBufferSizeIsRefused() throws {
        let dataset = try File.open(try smallFile(), mode: .readWrite).openDataset("values")
        var tooSmall = [Float](repeating: 0, count: 11)
        assertThrows(.sizeMismatch, mentioning: ["11", "12"], try tooSmall.withUnsafeMutableBufferPointer { try dataset.read(into: $0) })
        var tooLarge = [Float](repeating: 0, count: 13)
        assertThrows(.sizeMismatch, try tooLarge.withUnsafeMutableBufferPointer { try dataset.read(into: $0) })
        assertThrows(.sizeMismatch, try dataset.write([Float](repeating: 0, count: 5), offset: [0, 0], count: [2, 3]))
        XCTAssertEqual(try dataset.read(as: Float.self), (0..<12).map(Float.init), "nothing was written")
    }

    func testHyperslabOutOfBounds() throws {
        let dataset = try File.open(try smallFile()).openDataset("values")
        assertThrows(.outOfBounds, mentioning: ["[3, 0]", "[2, 3]", "[4, 3]"], try dataset.read(as: Float.self, offset: [3, 0], count: [2, 3]))
        assertThrows(.outOfBounds, try dataset.read(as: Float.self, offset: [0, 1], count: [1, 3]))
        assertThrows(.outOfBounds, try dataset.read(as: Float.self, offset: [-1, 0], count: [1, 3]))
        assertThrows(.outOfBounds, mentioning: ["rank"], try dataset.read(as: Float.self, offset: [0], count: [3]))
    }

    func testMissingObjectsAndAttributes() throws {
        let file = try File.open(try smallFile())
        assertThrows(.objectNotFound, mentioning: ["/params/embed.weight"], try file.openDataset("params/embed.weight"))
        assertThrows(.objectNotFound, mentioning: ["/optimizer"], try file.openGroup("optimizer"))
        assertThrows(.objectNotFound, mentioning: ["vocab_size"], try file.int64Attribute("vocab_size"))
        assertThrows(.typeMismatch, mentioning: ["count", "expected a string", "12"], try file.stringAttribute("count"))
        assertThrows(.typeMismatch, try file.attribute("count", as: [Float].self))
    }

    func testCreatingTwiceAndBadArguments() throws {
        let file = try File.create(path("twice.h5"))
        try file.createDataset("a", type: .float32, shape: [2])
        assertThrows(.alreadyExists, mentioning: ["/a"], try file.createDataset("a", type: .float32, shape: [2]))
        assertThrows(.alreadyExists, try file.createGroup("a"))
        assertThrows(.invalidArgument, mentioning: ["negative"], try file.createDataset("b", type: .float32, shape: [-1]))
        assertThrows(.invalidArgument, mentioning: ["deflate"], try file.createDataset("c", type: .float32, shape: [4], deflate: 12))
        assertThrows(.invalidArgument, mentioning: ["chunk"], try file.createDataset("d", type: .float32, shape: [4, 4], chunks: [2]))
    }

    func testWritingToReadOnlyFileFails() throws {
        let dataset = try File.open(try smallFile()).openDataset("values")
        assertThrows(.library, mentioning: ["/values"], try dataset.write([Float](repeating: 1, count: 12)))
    }

    /// Bytes changed on disk after writing: a Fletcher-32 dataset must fail to read, not return garbage.
    func testCorruptedFletcherDatasetFailsToRead() throws {
        let filePath = path("corrupt.h5")
        // A recognisable, incompressible-looking pattern so the chunk's raw bytes can be found in the file.
        let values = (0..<4096).map { Int32(bitPattern: UInt32(truncatingIfNeeded: $0 &* 2_654_435_761)) }
        do {
            let dataset = try File.create(filePath).createDataset("checked", type: .int32, shape: [4096], chunks: [1024], fletcher32: true)
            try dataset.write(values)
        }
        XCTAssertEqual(try File.open(filePath).openDataset("checked").read(as: Int32.self), values)

        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: filePath)))
        let needle = values[1500..<1504].withUnsafeBytes { Array($0) }
        let at = try XCTUnwrap(bytes.indices.first { index in
            index + needle.count <= bytes.count && Array(bytes[index..<(index + needle.count)]) == needle
        }, "the chunk's bytes were not found in the file")
        bytes[at + 1] ^= 0x40
        try Data(bytes).write(to: URL(fileURLWithPath: filePath))

        let dataset = try File.open(filePath).openDataset("checked")
        assertThrows(.library, mentioning: [filePath, "/checked"], try dataset.read(as: Int32.self))
        XCTAssertThrowsError(try dataset.read(as: Int32.self)) { error in
            let text = "\(error)".lowercased()
            XCTAssertTrue(text.contains("fletcher32") || text.contains("checksum"), "the error says the checksum failed: \(error)")
        }
        // Chunks that were not touched still read.
        XCTAssertEqual(try dataset.read(as: Int32.self, offset: [0], count: [1024]), Array(values[0..<1024]))
    }
}
