import Basics
import Data
import Foundation
import HDF5
import TestSupport
import Training
import Transformer
import XCTest

final class CheckpointTests: XCTestCase {
    private var directory: URL!
    private var run: String { directory.appendingPathComponent("run").path }

    override func setUpWithError() throws { directory = try makeTemporaryDirectory("ddp-checkpoint") }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    private let config = try! RunConfig.parse("""
        model: {kind: encoder-decoder, vocab_size: 260, d_model: 8, heads: 2, encoder_layers: 1, decoder_layers: 1, d_ff: 16,
                activation: relu, norm: post, positions: sinusoidal, max_length: 8, tied_embeddings: false}
        data: {source_length: 6, target_length: 6}
        training: {batch_size: 2}
        """, file: "inline.yaml")

    private func trainedModel(updates: Int = 2) throws -> (TransformerModel, AdamW) {
        let model = try TransformerModel(config: config.model, maxBatch: 2, maxSourceLength: 6, maxTargetLength: 6)
        model.initializeParameters(seed: 21)
        let optimizer = AdamW(layout: model.layout, settings: config.optimizer.settings)
        let batch = TokenBatch(batchSize: 2, sourceLength: 3, targetLength: 3, source: [5, 6, 2, 7, 2, 0],
                          decoderInput: [1, 8, 9, 1, 10, 0], labels: [8, 9, 2, 10, 2, 0])
        for _ in 0..<updates {
            model.gradients.zero()
            let loss = model.forwardBackward(batch)
            optimizer.update(parameters: model.parameters, gradients: model.gradients, learningRate: 1e-2, gradientScale: 1 / Float(loss.targetTokens))
        }
        return (model, optimizer)
    }

    private func state(_ step: Int) -> TrainingState { TrainingState(step: step, position: SamplerPosition(epoch: 1, batch: step), dropoutSeed: 0xFEED_F00D_0000_0001) }

    private func assertCheckpointError(_ fragments: [String], file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Void) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            for fragment in fragments {
                XCTAssertTrue("\(error)".contains(fragment), "'\(fragment)' missing from: \(error)", file: file, line: line)
            }
        }
    }

    func testRoundTripRestoresEverythingBitwise() throws {
        let (model, optimizer) = try trainedModel()
        let path = try Checkpoint.save(directory: run, model: model, optimizer: optimizer, state: state(2), config: config,
                                       tokenizer: .byte, keep: 3)
        XCTAssertEqual(try Checkpoint.latest(in: run), path)
        let (fresh, freshOptimizer) = try trainedModel(updates: 0)
        let header = try Checkpoint.load(path, into: fresh, optimizer: freshOptimizer)
        XCTAssertEqual(header.state, state(2))
        XCTAssertEqual(header.config, config)
        XCTAssertEqual(header.tokenizer, .byte)
        XCTAssertEqual(freshOptimizer.step, 2)
        for (a, b) in [(model.parameters, fresh.parameters), (optimizer.firstMoment, freshOptimizer.firstMoment),
                       (optimizer.secondMoment, freshOptimizer.secondMoment)] {
            XCTAssertTrue(a.storage.elementsEqual(b.storage) { $0.bitPattern == $1.bitPattern })
        }
        // h5py-style reading of a tensor by its parameter name.
        let stored = try File.open(path).openDataset("params/decoder.layers.0.cross_attn.q_proj.weight")
        XCTAssertEqual(stored.shape, [8, 8])
        XCTAssertTrue(try stored.storage().fletcher32)
    }

    func testKeepsTheNewestKAndLatestFollows() throws {
        let (model, optimizer) = try trainedModel(updates: 0)
        for step in 1...5 {
            try Checkpoint.save(directory: run, model: model, optimizer: optimizer, state: state(step), config: config, tokenizer: nil, keep: 2)
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: run).filter { $0.hasSuffix(".h5") }.sorted()
        XCTAssertEqual(files, ["checkpoint-00000004.h5", "checkpoint-00000005.h5"])
        XCTAssertEqual(try Checkpoint.latest(in: run).map { ($0 as NSString).lastPathComponent }, "checkpoint-00000005.h5")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: run).filter { $0.hasPrefix(".") }, [], "no temporary left")
    }

    /// A checkpoint a command settled on (`resolve`) is read whole even when its run removes it meanwhile: a trial's
    /// `ddp eval` of a run directory during training with checkpoint.keep 1 lost that race 40 times in 40.
    func testAResolvedCheckpointIsReadAfterItsRunRemovedIt() throws {
        let (model, optimizer) = try trainedModel()
        let path = try Checkpoint.save(directory: run, model: model, optimizer: optimizer, state: state(2), config: config,
                                       tokenizer: .byte, keep: 1)
        XCTAssertEqual(try Checkpoint.resolve(run), path)
        // The run goes on: a new checkpoint, and the one resolved rotated away.
        try Checkpoint.save(directory: run, model: model, optimizer: optimizer, state: state(3), config: config, tokenizer: .byte, keep: 1)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path), "rotated away")
        XCTAssertEqual(try Checkpoint.readHeader(path).state, state(2))
        let (loaded, _) = try Checkpoint.loadModel(path, maxBatch: 1)
        XCTAssertTrue(loaded.parameters.storage.elementsEqual(model.parameters.storage) { $0.bitPattern == $1.bitPattern })
        // A checkpoint never resolved is not held: gone is gone.
        let other = try Checkpoint.save(directory: run, model: model, optimizer: optimizer, state: state(4), config: config, tokenizer: .byte, keep: 5)
        try FileManager.default.removeItem(atPath: other)
        XCTAssertThrowsError(try Checkpoint.readHeader(other))
    }

    /// Resuming compares the training data by its fingerprint (names, counts, tokenizer) and by its content digest; a
    /// checkpoint written before the digest was stored (no `data_digest`) is compared by the fingerprint alone.
    func testResumeComparesTheDataByFingerprintAndDigest() throws {
        let (model, optimizer) = try trainedModel(updates: 0)
        func check(_ path: String, fingerprint: String, digest: String) throws {
            var lines: [String] = []
            try Checkpoint.checkResume(path, with: config, globalBatch: 2, batchesPerEpoch: 10, dataFingerprint: fingerprint,
                                       dataDigest: digest, validDigest: nil, log: { lines.append($0) })
        }
        let withDigest = try Checkpoint.save(directory: run, model: model, optimizer: optimizer, state: state(2), config: config, tokenizer: nil,
                                             keep: 5, provenance: .init(globalBatch: 2, worldSize: 1, dataFingerprint: "f1", dataDigest: "d1"))
        XCTAssertEqual(try Checkpoint.readHeader(withDigest).provenance?.dataDigest, "d1")
        try check(withDigest, fingerprint: "f1", digest: "d1")
        assertCheckpointError(["cannot resume", "the training data"]) { try check(withDigest, fingerprint: "f1", digest: "d2") }
        assertCheckpointError(["cannot resume", "the training data"]) { try check(withDigest, fingerprint: "f2", digest: "d1") }
        let older = try Checkpoint.save(directory: run, model: model, optimizer: optimizer, state: state(3), config: config, tokenizer: nil,
                                        keep: 5, provenance: .init(globalBatch: 2, worldSize: 1, dataFingerprint: "f1", dataDigest: nil))
        XCTAssertFalse(try File.open(older).hasAttribute("data_digest"))
        XCTAssertNil(try Checkpoint.readHeader(older).provenance?.dataDigest)
        try check(older, fingerprint: "f1", digest: "any")
        assertCheckpointError(["cannot resume", "the training data"]) { try check(older, fingerprint: "f2", digest: "any") }

        // Other validation data is allowed and said (a trial swapped the valid split; valid_loss jumped with no word).
        let withValid = try Checkpoint.save(directory: run, model: model, optimizer: optimizer, state: state(4), config: config, tokenizer: nil,
                                            keep: 5, provenance: .init(globalBatch: 2, worldSize: 1, dataFingerprint: "f1", dataDigest: "d1",
                                                                       validDigest: "v1"))
        XCTAssertEqual(try Checkpoint.readHeader(withValid).provenance?.validDigest, "v1")
        func notes(valid: String?) throws -> [String] {
            var lines: [String] = []
            try Checkpoint.checkResume(withValid, with: config, globalBatch: 2, batchesPerEpoch: 10, dataFingerprint: "f1", dataDigest: "d1",
                                       validDigest: valid, log: { lines.append($0) })
            return lines.filter { $0.contains("validation data") }
        }
        XCTAssertEqual(try notes(valid: "v1"), [])
        XCTAssertEqual(try notes(valid: "v2").count, 1)
        XCTAssertTrue(try notes(valid: "v2")[0].contains("valid_loss before and after step 4 measure different data"))
        XCTAssertTrue(try notes(valid: nil)[0].contains("there is none now"))
        XCTAssertNil(try Checkpoint.readHeader(withDigest).provenance?.validDigest, "written without: nothing to compare")
    }

    /// Pruning orders checkpoints by step, also past eight digits, and never removes a file it did not name itself.
    func testPruningGoesByStepAndLeavesOtherFilesAlone() throws {
        let (model, optimizer) = try trainedModel(updates: 0)
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        for name in ["checkpoint-best.h5", "checkpoint-00000001.h5.bak"] {
            XCTAssertTrue(FileManager.default.createFile(atPath: "\(run)/\(name)", contents: Foundation.Data("mine".utf8)))
        }
        for step in [99_999_999, 100_000_000, 100_000_001] {
            try Checkpoint.save(directory: run, model: model, optimizer: optimizer, state: state(step), config: config, tokenizer: nil, keep: 2)
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: run).filter { $0.hasPrefix("checkpoint-") }.sorted()
        XCTAssertEqual(files, ["checkpoint-00000001.h5.bak", "checkpoint-100000000.h5", "checkpoint-100000001.h5", "checkpoint-best.h5"])
    }

    /// A write that fails (here: the checkpoint's name is taken by a directory, which is never replaced) reports it and
    /// leaves the previous checkpoint and `latest` as they were, and no temporary file; leftovers of an interrupted
    /// write do not disturb `latest` either.
    func testFailedWriteLeavesThePreviousCheckpointIntact() throws {
        let (model, optimizer) = try trainedModel()
        let first = try Checkpoint.save(directory: run, model: model, optimizer: optimizer, state: state(1), config: config, tokenizer: nil, keep: 3)
        try FileManager.default.createDirectory(atPath: (run as NSString).appendingPathComponent("checkpoint-00000002.h5"),
                                                withIntermediateDirectories: true)
        assertCheckpointError(["writing failed (", "is a directory", "the run's latest checkpoint, \(first), is untouched"]) {
            try Checkpoint.save(directory: run, model: model, optimizer: optimizer, state: state(2), config: config, tokenizer: nil, keep: 3)
        }
        XCTAssertEqual(try Checkpoint.latest(in: run), first)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: run).filter { $0.hasSuffix(".tmp") }, [])
        try "half-written".write(toFile: (run as NSString).appendingPathComponent(".checkpoint-00000003.h5.tmp"), atomically: false, encoding: .utf8)
        let (fresh, _) = try trainedModel(updates: 0)
        XCTAssertEqual(try Checkpoint.load(try XCTUnwrap(try Checkpoint.latest(in: run)), into: fresh).state.step, 1)
    }

    func testBadCheckpointsNameFileAndTensor() throws {
        let (model, optimizer) = try trainedModel()
        let path = try Checkpoint.save(directory: run, model: model, optimizer: optimizer, state: state(2), config: config, tokenizer: nil, keep: 3)
        let (fresh, freshOptimizer) = try trainedModel(updates: 0)

        assertCheckpointError(["/nonexistent.h5", "cannot be opened"]) { try Checkpoint.load("/nonexistent.h5", into: fresh) }

        // Another model: the error lists the keys that differ.
        var other = config.model
        other.dFF = 32
        let otherModel = try TransformerModel(config: other, maxBatch: 1, maxSourceLength: 6, maxTargetLength: 6)
        assertCheckpointError([path, "another model", "model.d_ff: checkpoint 16, expected 32"]) { try Checkpoint.load(path, into: otherModel) }

        // Truncated.
        let truncated = directory.appendingPathComponent("truncated.h5").path
        let bytes = try Foundation.Data(contentsOf: URL(fileURLWithPath: path))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: truncated))
        assertCheckpointError([truncated]) { try Checkpoint.load(truncated, into: fresh, optimizer: freshOptimizer) }

        // A flipped byte inside a tensor's stored data: the checksum names it.
        let corrupt = directory.appendingPathComponent("corrupt.h5").path
        try bytes.write(to: URL(fileURLWithPath: corrupt))
        let chunk = try XCTUnwrap(try File.open(corrupt).openDataset("params/encoder.layers.0.ffn.fc1.weight").storedChunks().first)
        var corrupted = [UInt8](bytes)
        corrupted[chunk.offset + chunk.size / 2] ^= 0x10
        try Foundation.Data(corrupted).write(to: URL(fileURLWithPath: corrupt))
        assertCheckpointError([corrupt, "tensor /params/encoder.layers.0.ffn.fc1.weight cannot be read (damaged?)"]) {
            try Checkpoint.load(corrupt, into: fresh)
        }

        // A tensor missing, and one of the wrong shape (a checkpoint assembled by hand).
        // By hand: the header of a real checkpoint and only an embedding, of the wrong and then the right shape.
        func handmade(_ name: String, embedShape: [Int]) throws -> String {
            let target = directory.appendingPathComponent(name).path
            let file = try File.create(target)
            let source = try File.open(path)
            for attribute in try source.attributeNames() { try file.setAttribute(attribute, try source.attribute(attribute)) }
            try file.createDataset("params/embed.weight", type: .float32, shape: embedShape)
                .write([Float](repeating: 0, count: embedShape.reduce(1, *)))
            return target
        }
        let wrongShape = try handmade("wrong-shape.h5", embedShape: [260, 4])
        assertCheckpointError(["tensor /params/embed.weight has shape [260, 4], the model expects [260, 8]"]) { try Checkpoint.load(wrongShape, into: fresh) }
        let onlyEmbed = try handmade("only-embed.h5", embedShape: [260, 8])
        assertCheckpointError(["missing tensor /params/encoder.layers.0.self_attn.q_proj.weight"]) { try Checkpoint.load(onlyEmbed, into: fresh) }

        // A tensor the model has no parameter for (a layer of a deeper model pasted in) is refused by name, as torch's
        // strict load_state_dict refuses unexpected keys, not left unused in silence.
        let extra = directory.appendingPathComponent("extra.h5").path
        try bytes.write(to: URL(fileURLWithPath: extra))
        do {
            let file = try File.open(extra, mode: .readWrite)
            try file.createDataset("params/encoder.layers.7.ffn.fc1.weight", type: .float32, shape: [2, 2]).write([Float](repeating: 0, count: 4))
            try file.createDataset("params/zz_extra", type: .float32, shape: [1]).write([Float(0)])
        }
        assertCheckpointError([extra, "holds /params/encoder.layers.7.ffn.fc1.weight and 1 more member(s) of /params, which the model "
                               + "(its config in the file) has no parameter for"]) { try Checkpoint.load(extra, into: fresh) }
        XCTAssertThrowsError(try Checkpoint.loadModel(extra, maxBatch: 1))

        // A checkpoint its run rotated away while it was read (a trial ran generate on a run directory during a run
        // with checkpoint.keep 1; HDF5's own "can't retrieve stat info" came out): said, with the run's latest now.
        let newer = try Checkpoint.save(directory: run, model: fresh, optimizer: freshOptimizer, state: state(7), config: config,
                                        tokenizer: .byte, keep: 10)
        try FileManager.default.removeItem(atPath: path)
        assertCheckpointError([path, "was removed while it was read", "the run's latest is now \(newer)"]) { _ = try Checkpoint.readHeader(path) }
        assertCheckpointError([path, "was removed while it was read"]) { try Checkpoint.load(path, into: fresh) }
        // A gone checkpoint of a later step than latest's was not rotated away: said as missing, no more.
        let later = (run as NSString).appendingPathComponent("checkpoint-00000050.h5")
        XCTAssertThrowsError(try Checkpoint.readHeader(later)) { error in
            XCTAssertTrue("\(error)".contains("\(later): cannot be opened"), "\(error)")
            XCTAssertFalse("\(error)".contains("removed while it was read"), "\(error)")
        }

        // latest naming a file that is gone.
        try "checkpoint-00000099.h5\n".write(toFile: (run as NSString).appendingPathComponent("latest"), atomically: true, encoding: .utf8)
        assertCheckpointError(["names 'checkpoint-00000099.h5', which does not exist"]) { _ = try Checkpoint.latest(in: run) }
        // With other checkpoints there: training is told to write one's name into latest, a reader to name it.
        let newest = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: run).filter { $0.hasPrefix("checkpoint-") }.sorted().last)
        assertCheckpointError(["also holds \(newest)", ": to go on from one, write its name (\(newest), say) into "]) {
            _ = try Checkpoint.latest(in: run, forTraining: true)
        }
        assertCheckpointError(["also holds \(newest)", ": to read one, name it instead (\((run as NSString).appendingPathComponent(newest)), say)"]) {
            _ = try Checkpoint.resolve(run)
        }
        // And no checkpoint left at all (a trial killed train --overwrite after it removed the checkpoints, before
        // latest): the way out is said.
        let emptied = directory.appendingPathComponent("emptied").path
        try FileManager.default.createDirectory(atPath: emptied, withIntermediateDirectories: true)
        try "checkpoint-00000150.h5\n".write(toFile: (emptied as NSString).appendingPathComponent("latest"), atomically: true, encoding: .utf8)
        assertCheckpointError(["names 'checkpoint-00000150.h5', which does not exist; \(emptied) holds no other checkpoint to go on from: "
                               + "--overwrite starts a new run there"]) { _ = try Checkpoint.latest(in: emptied, forTraining: true) }
        // The commands that read a checkpoint (eval, inspect, ...) have no --overwrite: they are told there is none to read.
        for resolve in [{ _ = try Checkpoint.resolve(emptied) }, { _ = try Checkpoint.resolve((emptied as NSString).appendingPathComponent("latest")) }] {
            XCTAssertThrowsError(try resolve()) { error in
                XCTAssertTrue("\(error)".hasSuffix("names 'checkpoint-00000150.h5', which does not exist; \(emptied) holds no other checkpoint to read"),
                              "\(error)")
                XCTAssertFalse("\(error)".contains("--overwrite"), "\(error)")
            }
        }
    }
}

private extension File {
    /// Copies a string or number attribute (enough for checkpoint headers).
    func setAttribute(_ name: String, _ value: AttributeValue) throws {
        switch value {
        case .string(let text): try setAttribute(name, text)
        case .integer(let number): try setAttribute(name, number)
        case .real(let number): try setAttribute(name, number)
        default: break
        }
    }
}
