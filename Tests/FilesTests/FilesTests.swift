import Files
import Foundation
import XCTest

final class OutputFileTests: XCTestCase {
    private var directory: String!

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "files-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: directory) }

    private func path(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }

    private func assertRefused(_ target: String, inputs: [String] = [], saying words: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try OutputFile.write(target, data: Data("new".utf8), inputs: inputs), file: file, line: line) { error in
            XCTAssertTrue("\(error)".contains(words), "\(error)", file: file, line: line)
            XCTAssertTrue("\(error)".contains(target), "the message names the path: \(error)", file: file, line: line)
        }
    }

    func testWritesAndReplacesARegularFileLeavingNoTemporary() throws {
        try OutputFile.write(path("out.bin"), data: Data("one".utf8))
        try OutputFile.write(path("out.bin"), data: Data("two".utf8))
        XCTAssertEqual(try String(contentsOfFile: path("out.bin"), encoding: .utf8), "two")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory), ["out.bin"])
    }

    func testRefusesADirectoryAndLeavesItsContents() throws {
        try FileManager.default.createDirectory(atPath: path("run"), withIntermediateDirectories: true)
        try Data("keep".utf8).write(to: URL(fileURLWithPath: path("run/latest")))
        assertRefused(path("run"), saying: "is a directory")
        XCTAssertEqual(try String(contentsOfFile: path("run/latest"), encoding: .utf8), "keep")
    }

    func testRefusesAnInputAlsoThroughLinks() throws {
        try Data("input".utf8).write(to: URL(fileURLWithPath: path("model.h5")))
        assertRefused(path("model.h5"), inputs: [path("model.h5")], saying: "input")
        try FileManager.default.createSymbolicLink(atPath: path("alias.h5"), withDestinationPath: path("model.h5"))
        assertRefused(path("alias.h5"), inputs: [path("model.h5")], saying: "input")
        try FileManager.default.linkItem(atPath: path("model.h5"), toPath: path("hard.h5"))
        assertRefused(path("hard.h5"), inputs: [path("model.h5")], saying: "input")
        // A chain of links (relative ones too) is followed to its end, as the system follows it.
        try FileManager.default.createSymbolicLink(atPath: path("second.h5"), withDestinationPath: "alias.h5")
        try FileManager.default.createSymbolicLink(atPath: path("third.h5"), withDestinationPath: path("second.h5"))
        assertRefused(path("third.h5"), inputs: [path("model.h5")], saying: "input")
        XCTAssertEqual(try String(contentsOfFile: path("model.h5"), encoding: .utf8), "input")
        // Written through a chain, the file at its end is replaced and every link stays.
        try Data("old".utf8).write(to: URL(fileURLWithPath: path("out.txt")))
        try FileManager.default.createSymbolicLink(atPath: path("out-1"), withDestinationPath: "out.txt")
        try FileManager.default.createSymbolicLink(atPath: path("out-2"), withDestinationPath: "out-1")
        try OutputFile.write(path("out-2"), data: Data("new".utf8))
        XCTAssertEqual(try String(contentsOfFile: path("out.txt"), encoding: .utf8), "new")
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: path("out-2")), "out-1")
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: path("out-1")), "out.txt")
    }

    func testReportsAMissingParentDirectory() {
        assertRefused(path("no/such/dir/out.bin"), saying: "does not exist")
    }

    func testRemovesTheTemporaryWhenWritingFails() throws {
        struct Broken: Error {}
        XCTAssertThrowsError(try OutputFile.write(path("out.bin")) { temporary in
            try Data("partial".utf8).write(to: URL(fileURLWithPath: temporary))
            throw Broken()
        })
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory), [], "no temporary and no target left")
    }

    /// What a command's SIGINT/SIGTERM handler calls before it exits: the temporary being written goes, the target
    /// is what it was, and the handler learns which writes it cut short and which had finished.
    func testTemporariesInFlightAreRemovedOnRequest() throws {
        try "before".write(toFile: path("out.txt"), atomically: true, encoding: .utf8)
        var removed = false, unfinished: [String] = []
        XCTAssertThrowsError(try OutputFile.write(path("out.txt")) { temporary in
            try "half".write(toFile: temporary, atomically: false, encoding: .utf8)
            unfinished = OutputFile.removeTemporariesInFlight { $0.unfinished }
            removed = !FileManager.default.fileExists(atPath: temporary)
            throw FileError(temporary, "interrupted")
        })
        XCTAssertTrue(removed, "the temporary was removed while its write was in flight")
        XCTAssertEqual(unfinished, [path("out.txt")], "the handler is told which file was not written")
        XCTAssertEqual(OutputFile.removeTemporariesInFlight { $0.unfinished }, [], "nothing in flight once the write has ended")
        XCTAssertFalse(OutputFile.removeTemporariesInFlight { $0.finished }.contains(path("out.txt")), "nor written")
        // A write into another write's temporary (a shard's file inside its set's) is for the outer write's path, and
        // is not itself a file written.
        var nested: [String] = []
        XCTAssertThrowsError(try OutputFile.writeAll([path("set-0"), path("set-1")]) { index, outer in
            try OutputFile.write(outer) { inner in try "whole".write(toFile: inner, atomically: false, encoding: .utf8) }
            guard index == 1 else { return }
            try OutputFile.write(outer) { inner in
                try "half".write(toFile: inner, atomically: false, encoding: .utf8)
                nested = OutputFile.removeTemporariesInFlight { $0.unfinished }
                throw FileError(inner, "interrupted")
            }
        })
        XCTAssertEqual(nested, [path("set-0"), path("set-1")])
        XCTAssertFalse(OutputFile.removeTemporariesInFlight { $0.finished }.contains { $0.hasPrefix(path(".set-")) })
        XCTAssertEqual(try String(contentsOfFile: path("out.txt"), encoding: .utf8), "before")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory), ["out.txt"])
        // A finished write is said as written (a signal just after embed replaced its output was said as "nothing").
        try OutputFile.write(path("out.txt"), data: Data("after".utf8))
        XCTAssertEqual(OutputFile.removeTemporariesInFlight { $0.finished }.last, path("out.txt"))
    }

    /// A set's new files land together with the removal of the earlier set's files they do not replace; directories
    /// made for an output go when the command fails before anything is in them.
    func testObsoleteFilesGoWithTheNewSetAndCreatedDirectoriesWhenEmpty() throws {
        for name in ["shard-0", "shard-1", "shard-2"] { try "old".write(toFile: path(name), atomically: true, encoding: .utf8) }
        try OutputFile.writeAll([path("shard-0"), path("shard-1")], removing: [path("shard-2")]) { _, temporary in
            try "new".write(toFile: temporary, atomically: false, encoding: .utf8)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory).sorted(), ["shard-0", "shard-1"])
        XCTAssertEqual(OutputFile.removeTemporariesInFlight { Array($0.finished.suffix(2)) }, [path("shard-0"), path("shard-1")])

        try FileManager.default.createDirectory(atPath: path("kept"), withIntermediateDirectories: false)
        try OutputFile.createDirectory(path("kept/new/deeper"))
        try OutputFile.createDirectory(path("full"))
        try "x".write(toFile: path("full/file"), atomically: true, encoding: .utf8)
        OutputFile.removeCreatedDirectoriesIfEmpty()
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("kept")), "it was there before")
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("kept/new")), "made, and empty")
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("full/file")), "a directory that holds anything stays")
    }

    /// Several files as one: all in place once all are written; when one fails, none is touched and no temporary is
    /// left, whatever the error (another error type passes unchanged, a FileError about a temporary names the path).
    func testWriteAllReplacesEveryFileOrNone() throws {
        let paths = (0..<3).map { path("shard-\($0)") }
        for target in paths { try "old".write(toFile: target, atomically: true, encoding: .utf8) }
        struct Refused: Error, Equatable {}
        XCTAssertThrowsError(try OutputFile.writeAll(paths) { index, temporary in
            try "new".write(toFile: temporary, atomically: false, encoding: .utf8)
            if index == 2 { throw Refused() }
        }) { XCTAssertEqual($0 as? Refused, Refused(), "\($0)") }
        XCTAssertThrowsError(try OutputFile.writeAll(paths) { index, temporary in
            try "new".write(toFile: temporary, atomically: false, encoding: .utf8)
            if index == 1 { throw FileError(temporary, "no space left on device") }
        }) { XCTAssertEqual("\($0)", "\(paths[1]): writing it failed, and none of the 3 files written together was replaced: "
                            + "\(paths[1]): no space left on device") }
        for target in paths { XCTAssertEqual(try String(contentsOfFile: target, encoding: .utf8), "old") }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory).sorted(), ["shard-0", "shard-1", "shard-2"])
        try OutputFile.writeAll(paths + [path("shard-3")]) { index, temporary in
            try "new \(index)".write(toFile: temporary, atomically: false, encoding: .utf8)
        }
        for (index, target) in (paths + [path("shard-3")]).enumerated() {
            XCTAssertEqual(try String(contentsOfFile: target, encoding: .utf8), "new \(index)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory).count, 4, "no temporary left")
        // A link among the paths is replaced itself; the file it points to (another set's) is not written.
        try FileManager.default.createDirectory(atPath: path("other"), withIntermediateDirectories: true)
        try "theirs".write(toFile: path("other/shard-0"), atomically: true, encoding: .utf8)
        try FileManager.default.removeItem(atPath: paths[0])
        try FileManager.default.createSymbolicLink(atPath: paths[0], withDestinationPath: path("other/shard-0"))
        try OutputFile.writeAll([paths[0]]) { _, temporary in try "mine".write(toFile: temporary, atomically: false, encoding: .utf8) }
        XCTAssertEqual(try String(contentsOfFile: path("other/shard-0"), encoding: .utf8), "theirs")
        XCTAssertNil(try? FileManager.default.destinationOfSymbolicLink(atPath: paths[0]), "the link itself was replaced")
        XCTAssertEqual(try String(contentsOfFile: paths[0], encoding: .utf8), "mine")
        // throughLinks (a command's own outputs): the file a link points to is written, the link stays, and an error or
        // the signal handler names the path as given, not the link's target.
        try FileManager.default.createSymbolicLink(atPath: path("mine.txt"), withDestinationPath: path("other/real.txt"))
        let pair = [path("plain.txt"), path("mine.txt")]
        try OutputFile.writeAll(pair, throughLinks: true) { index, temporary in
            try "written \(index)".write(toFile: temporary, atomically: false, encoding: .utf8)
        }
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: path("mine.txt")), path("other/real.txt"))
        XCTAssertEqual(try String(contentsOfFile: path("other/real.txt"), encoding: .utf8), "written 1")
        XCTAssertEqual(try String(contentsOfFile: path("plain.txt"), encoding: .utf8), "written 0")
        var inFlight: [String] = []
        XCTAssertThrowsError(try OutputFile.writeAll(pair, throughLinks: true) { index, temporary in
            try "again".write(toFile: temporary, atomically: false, encoding: .utf8)
            guard index == 1 else { return }
            inFlight = OutputFile.removeTemporariesInFlight { $0.unfinished }
            throw FileError(temporary, "no space left on device")
        }) { XCTAssertEqual("\($0)", "\(path("mine.txt")): writing it failed, and none of the 2 files written together was replaced: "
                            + "\(path("mine.txt")): no space left on device") }
        XCTAssertEqual(inFlight.sorted(), pair.sorted(), "the signal handler is told the paths as given")
        XCTAssertEqual(try String(contentsOfFile: path("other/real.txt"), encoding: .utf8), "written 1")
        XCTAssertEqual(try String(contentsOfFile: path("plain.txt"), encoding: .utf8), "written 0")
    }

    /// A path through a link to a directory and then '..' is written where the system reads it (beside the directory
    /// the link points to), and no temporary is left where the path's text would put it.
    func testAPathThroughALinkAndDotDotIsWrittenWhereTheSystemReadsIt() throws {
        try FileManager.default.createDirectory(atPath: path("far/dir"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: path("near"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: path("near/link"), withDestinationPath: path("far/dir"))
        try OutputFile.write(path("near") + "/link/../x.txt", data: Data("through".utf8))
        XCTAssertEqual(try String(contentsOfFile: path("far/x.txt"), encoding: .utf8), "through")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: path("near")), ["link"], "no temporary left")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: path("far")).sorted(), ["dir", "x.txt"])
    }

    /// A path ending in '/' names a directory: refused before any work, not met at the rename ("Not a directory").
    /// Two spellings of one file not written yet are the same file (an absolute and a relative path, a link to its
    /// directory), as two of an existing file are.
    func testATrailingSlashIsRefusedAndAFileNotThereYetIsKnownBySpelling() throws {
        for target in [path("new/"), path("new.txt/")] {
            XCTAssertThrowsError(try OutputFile.check(target)) {
                XCTAssertEqual("\($0)", "\(target): ends in '/', which names a directory; give the path of a file to write (without the '/')")
            }
        }
        try FileManager.default.createDirectory(atPath: path("dir"), withIntermediateDirectories: false)
        try FileManager.default.createSymbolicLink(atPath: path("dirlink"), withDestinationPath: path("dir"))
        XCTAssertTrue(OutputFile.sameFile(path("dirlink/x.txt"), path("dir/x.txt")))
        XCTAssertTrue(OutputFile.sameFile(path("dir/../dir/x.txt"), path("dir/x.txt")))
        XCTAssertFalse(OutputFile.sameFile(path("dirlink/y.txt"), path("dir/x.txt")))
        XCTAssertFalse(OutputFile.sameFile(path("dir/\u{E9}.txt"), path("dir/e\u{301}.txt")), "two names to the system, one to Swift's ==")
        let here = FileManager.default.currentDirectoryPath
        defer { FileManager.default.changeCurrentDirectoryPath(here) }
        XCTAssertTrue(FileManager.default.changeCurrentDirectoryPath(path("dir")))
        XCTAssertTrue(OutputFile.sameFile("x.txt", path("dir/x.txt")), "relative and absolute")
        XCTAssertTrue(OutputFile.sameFile("./x.txt", path("dirlink/x.txt")))
        XCTAssertFalse(OutputFile.sameFile("x.txt", path("x.txt")))
        XCTAssertFalse(OutputFile.sameFile(path("no/such/x.txt"), path("dir/x.txt")))
    }

    /// What a write killed outright (kill -9) left beside its target, a file or a directory, goes with the next write
    /// of that target (a trial found ddp embed's and export --format hf's left for good); names like it are kept.
    func testLeftoversOfAKilledWriteAreRemovedByTheNext() throws {
        try Data("half".utf8).write(to: URL(fileURLWithPath: path(".out.bin.0A1B2C3D.tmp")))
        try FileManager.default.createDirectory(atPath: path(".out.bin.DEADBEEF.tmp"), withIntermediateDirectories: true)
        for kept in [".out.bin.notes.tmp", ".other.bin.0A1B2C3D.tmp", "out.bin.0A1B2C3D.tmp"] {
            try Data("mine".utf8).write(to: URL(fileURLWithPath: path(kept)))
        }
        try OutputFile.write(path("out.bin"), data: Data("new".utf8))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory).sorted(),
                       [".other.bin.0A1B2C3D.tmp", ".out.bin.notes.tmp", "out.bin", "out.bin.0A1B2C3D.tmp"])
    }

    func testTemporaryNamesAreUnique() throws {
        var seen: Set<String> = []
        for _ in 0..<20 {
            try OutputFile.write(path("out.bin")) { temporary in
                XCTAssertTrue((temporary as NSString).lastPathComponent.hasPrefix(".out.bin."))
                XCTAssertTrue(temporary.hasSuffix(".tmp"))
                seen.insert(temporary)
                try Data().write(to: URL(fileURLWithPath: temporary))
            }
        }
        XCTAssertEqual(seen.count, 20)
    }

    func testFoundationErrorsBecomeSentences() throws {
        do {
            _ = try FileManager.default.contentsOfDirectory(atPath: path("missing"))
            XCTFail("expected an error")
        } catch {
            XCTAssertFalse(describe(error).contains("NSCocoaErrorDomain"), describe(error))
            XCTAssertFalse(describe(error).contains("Code="), describe(error))
        }
        struct Config: Decodable { var steps: Int }
        XCTAssertThrowsError(try JSONDecoder().decode(Config.self, from: Data(#"{"steps": "many"}"#.utf8))) { error in
            XCTAssertEqual(describe(error), "key 'steps' is not an integer")
        }
    }
}

final class TextFileTests: XCTestCase {
    func testEveryLineEnding() {
        XCTAssertEqual(TextFile.lines("a\nb\n"), ["a", "b"])
        XCTAssertEqual(TextFile.lines("a\r\nb\r\n"), ["a", "b"])
        XCTAssertEqual(TextFile.lines("a\rb\r"), ["a", "b"])
        XCTAssertEqual(TextFile.lines("a\r\n\r\nb"), ["a", "", "b"], "a blank CRLF line stays a blank line")
        XCTAssertEqual(TextFile.lines("hello\tolleh\r\nabc\tcba\r\n"), ["hello\tolleh", "abc\tcba"])
        XCTAssertEqual(TextFile.lines("x\n\r\ny"), ["x", "", "y"])
        XCTAssertEqual(TextFile.lines(""), [])
        XCTAssertFalse(TextFile.lines("é\r\n日本\r語").joined().contains("\r"))
    }

    /// A missing file, a dangling link and a link that loops (directly or through another) are told apart.
    func testMissingFilesAndBrokenLinksAreToldApart() throws {
        let directory = NSTemporaryDirectory() + "text-file-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let manager = FileManager.default
        func message(_ name: String) -> String {
            do { _ = try TextFile.read(directory + "/" + name, largest: 1024); return "read" } catch { return "\(error)" }
        }
        XCTAssertEqual(message("absent.yaml"), "\(directory)/absent.yaml: does not exist")
        try manager.createSymbolicLink(atPath: directory + "/dangling.yaml", withDestinationPath: "gone.yaml")
        XCTAssertEqual(message("dangling.yaml"), "\(directory)/dangling.yaml: is a link to \(directory)/gone.yaml, which does not exist")
        try manager.createSymbolicLink(atPath: directory + "/self.yaml", withDestinationPath: "self.yaml")
        XCTAssertEqual(message("self.yaml"), "\(directory)/self.yaml: is a link that loops")
        try manager.createSymbolicLink(atPath: directory + "/a.yaml", withDestinationPath: directory + "/b.yaml")
        try manager.createSymbolicLink(atPath: directory + "/b.yaml", withDestinationPath: "a.yaml")
        XCTAssertEqual(message("a.yaml"), "\(directory)/a.yaml: is a link that loops")
        try Data("x: 1\n".utf8).write(to: URL(fileURLWithPath: directory + "/real.yaml"))
        try manager.createSymbolicLink(atPath: directory + "/chain.yaml", withDestinationPath: "real.yaml")
        XCTAssertEqual(message("chain.yaml"), "read", "a link to a file reads the file")
        // A chain of 30 links reads as the system reads it (Foundation's own resolution stops near 20); 41 do not.
        for index in 1...41 {
            try manager.createSymbolicLink(atPath: directory + "/link\(index).yaml", withDestinationPath: index == 1 ? "real.yaml" : "link\(index - 1).yaml")
        }
        XCTAssertEqual(message("link30.yaml"), "read")
        XCTAssertEqual(message("link41.yaml"), "\(directory)/link41.yaml: is a chain of more than 40 links")
        // A FIFO is refused before it is opened (reading it would wait for a writer), also through a link.
        XCTAssertEqual(mkfifo(directory + "/fifo.yaml", 0o644), 0)
        try manager.createSymbolicLink(atPath: directory + "/to-fifo.yaml", withDestinationPath: "fifo.yaml")
        XCTAssertEqual(message("to-fifo.yaml"), "\(directory)/to-fifo.yaml: is not a regular file (a FIFO, device or socket), so it is not read")
        // Without a size limit too (a corpus, embed's lines): the kind of file is checked before it is opened.
        for name in ["fifo.yaml", "to-fifo.yaml"] {
            XCTAssertThrowsError(try TextFile.readLines(directory + "/" + name)) { XCTAssertTrue("\($0)".hasSuffix("is not a regular file (a FIFO, device or socket), so it is not read")) }
        }
        XCTAssertThrowsError(try TextFile.read("/dev/zero")) { XCTAssertEqual("\($0)", "/dev/zero: is not a regular file (a FIFO, device or socket), so it is not read") }
        XCTAssertEqual(message("."), "\(directory)/.: is a directory, not a text file")
        // A file named as a directory (the system's ENOTDIR), itself or through a link.
        XCTAssertEqual(message("real.yaml/"), "\(directory)/real.yaml/: ends in / but is not a directory")
        XCTAssertEqual(message("chain.yaml/"), "\(directory)/chain.yaml/: ends in / but is a link to \(directory)/real.yaml, which is not a directory")
        // A name that really holds U+FFFD is an ordinary name.
        try Data("x: 1\n".utf8).write(to: URL(fileURLWithPath: directory + "/a\u{FFFD}b.yaml"))
        XCTAssertFalse(Paths.isMangledName("a\u{FFFD}b.yaml", in: directory))
        XCTAssertTrue(Paths.isMangledName("c\u{FFFD}d.yaml", in: directory))
    }

    /// A lock file: held by one open at a time (a second is refused naming the holder's text), given up on release
    /// (and by the kernel when the process ends); never taken through a link, on a FIFO or on a directory.
    func testFileLock() throws {
        let directory = URL(fileURLWithPath: NSTemporaryDirectory() + "ddp-lock-" + UUID().uuidString)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("run.lock").path
        let first = try FileLock.acquire(path, holder: "the first")
        XCTAssertTrue(first.isHeld)
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "the first\n")
        XCTAssertThrowsError(try FileLock.acquire(path, holder: "the second")) { error in
            XCTAssertEqual("\(error)", "\(path): is locked by the first")
        }
        first.release()
        let second = try FileLock.acquire(path, holder: "the second")
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "the second\n", "the holder's text replaced, not appended")
        second.release()
        let target = directory.appendingPathComponent("elsewhere").path
        try "keep\n".write(toFile: target, atomically: true, encoding: .utf8)
        let link = directory.appendingPathComponent("link.lock").path
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        XCTAssertThrowsError(try FileLock.acquire(link, holder: "x")) { XCTAssertTrue("\($0)".contains("is a symbolic link"), "\($0)") }
        XCTAssertEqual(try String(contentsOfFile: target, encoding: .utf8), "keep\n")
        let fifo = directory.appendingPathComponent("fifo.lock").path
        XCTAssertEqual(mkfifo(fifo, 0o644), 0)
        XCTAssertThrowsError(try FileLock.acquire(fifo, holder: "x")) { XCTAssertTrue("\($0)".contains("is not a regular file"), "\($0)") }
        XCTAssertThrowsError(try FileLock.acquire(directory.path, holder: "x")) { XCTAssertTrue("\($0)".contains("is a directory"), "\($0)") }
        // A hard link (a cp -al snapshot's lock file, a user's file) is locked, but the holder is not written into
        // it, which would change the file's other names; a second holder is still refused.
        try "keep\n".write(toFile: directory.appendingPathComponent("mine.txt").path, atomically: true, encoding: .utf8)
        try FileManager.default.linkItem(atPath: directory.appendingPathComponent("mine.txt").path, toPath: directory.appendingPathComponent("hard.lock").path)
        let linked = try FileLock.acquire(directory.appendingPathComponent("hard.lock").path, holder: "x")
        XCTAssertTrue(linked.isHeld)
        XCTAssertEqual(try String(contentsOfFile: directory.appendingPathComponent("mine.txt").path, encoding: .utf8), "keep\n")
        XCTAssertThrowsError(try FileLock.acquire(directory.appendingPathComponent("mine.txt").path, holder: "y")) {
            XCTAssertTrue("\($0)".contains("is locked by"), "\($0)")
        }
        linked.release()
    }
}
