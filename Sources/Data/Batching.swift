import Basics
import Files
import Foundation
import HDF5

/// Reads samples by global index from a split's files (hyperslabs: only what is asked for). Owns HDF5 handles,
/// so it lives on one thread: the loader's.
public final class SampleReader {
    private let split: DataSplit
    /// Open token datasets per shard by name ("tokens", "source/tokens", "target/tokens"): opened once, not per read.
    private let datasets: [[String: Dataset]]
    /// First global index of each shard.
    private let starts: [Int]
    /// seq2seq offsets per shard (small; read once).
    private let sourceOffsets: [[Int64]], targetOffsets: [[Int64]]

    /// Opens every shard of `split` and its token datasets ("tokens", or "source/tokens" and "target/tokens") and reads
    /// the seq2seq offsets; throws `DataError` naming the shard when a file cannot be opened, a dataset is missing or
    /// the offsets cannot be read.
    public init(split: DataSplit) throws {
        self.split = split
        var starts: [Int] = [], sourceOffsets: [[Int64]] = [], targetOffsets: [[Int64]] = []
        var datasets: [[String: Dataset]] = []
        var start = 0
        for shard in split.shards {
            let file: File
            do { file = try File.open(shard.path) } catch { throw DataError(file: shard.path, "\(error)") }
            // Only the file that was validated: one prepared again since (another tokenizer, other token ids, other
            // offsets) is refused, not read unchecked.
            if let version = shard.version, FileVersion.of(shard.path) != version {
                throw DataError(file: shard.path, "has changed since it was checked (prepared again?); only the data checked at the "
                                                  + "start is read: start the command again to use the new data")
            }
            starts.append(start)
            var open: [String: Dataset] = [:]
            for name in split.task == .lm ? ["tokens"] : ["source/tokens", "target/tokens"] {
                open[name] = try file.openShardDataset(name, path: shard.path)
            }
            datasets.append(open)
            start += shard.samples
            if split.task == .seq2seq {
                do {
                    sourceOffsets.append(try file.openDataset("source/offsets").read(as: Int64.self))
                    targetOffsets.append(try file.openDataset("target/offsets").read(as: Int64.self))
                } catch {
                    throw DataError(file: shard.path, "offsets cannot be read: \(error)")
                }
            }
        }
        self.datasets = datasets
        self.starts = starts
        self.sourceOffsets = sourceOffsets
        self.targetOffsets = targetOffsets
    }

    private func locate(_ index: Int) -> (shard: Int, local: Int) {
        var low = 0, high = starts.count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if starts[middle] <= index { low = middle } else { high = middle - 1 }
        }
        return (low, index - starts[low])
    }

    private func read(_ shard: Int, _ name: String, from: Int64, to: Int64) throws -> [Int32] {
        do {
            return try datasets[shard][name]!.read(as: Int32.self, offset: [Int(from)], count: [Int(to - from)])
        } catch {
            throw DataError(file: split.shards[shard].path, "/\(name)[\(from)..<\(to)] cannot be read (corrupted?): \(error)")
        }
    }

    /// How many tokens a sample holds on each side (read from the offsets, before any token is read).
    public func lengths(_ index: Int) -> (source: Int, target: Int) {
        let (shard, local) = locate(index)
        switch split.task {
        case .lm: return (split.sequenceLength + 1, 0)
        case .seq2seq:
            return (Int(sourceOffsets[shard][local + 1] - sourceOffsets[shard][local]),
                    Int(targetOffsets[shard][local + 1] - targetOffsets[shard][local]))
        }
    }

    /// Every sample's lengths (`lengths(_:)`), in index order.
    public func allLengths() -> [(source: Int, target: Int)] {
        (0..<split.samples).map(lengths)
    }

    /// Throws `DataError` naming the first pair of the split whose source + EOS is longer than `maxSourceLength`
    /// positions or BOS + target longer than `maxTargetLength`, and how many more there are (read from the offsets
    /// only, so a trainer checks a whole split before its first step instead of meeting the pair when its batch is
    /// built). lm windows always fit.
    public func checkFits(maxSourceLength: Int, maxTargetLength: Int) throws {
        guard split.task == .seq2seq else { return }
        let tooLong = (0..<split.samples).lazy.filter { !self.fits($0, maxSourceLength: maxSourceLength, maxTargetLength: maxTargetLength) }
        guard let index = tooLong.first,
              let first = refusal(index, maxSourceLength: maxSourceLength, maxTargetLength: maxTargetLength) else { return }
        let more = tooLong.count - 1
        throw more == 0 ? first
            : DataError(file: first.file, first.message + "; \(more) more pair\(more == 1 ? " of the split is" : "s of the split are") too long as well")
    }

    /// Whether pair `index` takes at most `maxSourceLength` positions with EOS and `maxTargetLength` with BOS.
    private func fits(_ index: Int, maxSourceLength: Int, maxTargetLength: Int) -> Bool {
        let (source, target) = lengths(index)
        return source + 1 <= maxSourceLength && target + 1 <= maxTargetLength
    }

    /// Why sample `index` cannot be framed in `maxSourceLength` / `maxTargetLength` positions, if it cannot.
    private func refusal(_ index: Int, maxSourceLength: Int, maxTargetLength: Int) -> DataError? {
        guard split.task == .seq2seq, !fits(index, maxSourceLength: maxSourceLength, maxTargetLength: maxTargetLength) else { return nil }
        let (source, target) = lengths(index), (shard, local) = locate(index)
        return DataError(file: split.shards[shard].path,
                         "pair \(local) has \(source) source and \(target) target tokens, \(source + 1) and \(target + 1) positions with EOS "
                         + "and BOS; the model takes \(maxSourceLength) and \(maxTargetLength) (data.source_length and data.target_length)")
    }

    /// The stored tokens of one sample: (source, target) for seq2seq, (window, []) for lm; at most `limit` tokens of
    /// each side (the first ones), so a file's longest sample never decides what is allocated.
    public func sample(_ index: Int, limit: Int = .max) throws -> (source: [Int32], target: [Int32]) {
        let (shard, local) = locate(index)
        switch split.task {
        case .lm:
            let length = Int64(split.sequenceLength)
            let start = Int64(local) * length
            return (try read(shard, "tokens", from: start, to: start + min(length + 1, Int64(limit))), [])
        case .seq2seq:
            let (sourceStart, targetStart) = (sourceOffsets[shard][local], targetOffsets[shard][local])
            return (try read(shard, "source/tokens", from: sourceStart, to: min(sourceOffsets[shard][local + 1], sourceStart + Int64(min(limit, Int(Int32.max))))),
                    try read(shard, "target/tokens", from: targetStart, to: min(targetOffsets[shard][local + 1], targetStart + Int64(min(limit, Int(Int32.max))))))
        }
    }

    /// Frames and pads the samples into one batch; a sample longer than the model takes is an error naming it.
    public func batch(_ indices: [Int], maxSourceLength: Int, maxTargetLength: Int) throws -> TokenBatch {
        var sources: [[Int32]] = [], inputs: [[Int32]] = [], labels: [[Int32]] = []
        let special = split.tokenizer.specialTokens
        for index in indices {
            // Lengths first, from the offsets: a sample too long for the model is refused before it is read.
            if let refusal = refusal(index, maxSourceLength: maxSourceLength, maxTargetLength: maxTargetLength) { throw refusal }
            let (shard, local) = locate(index)
            let (stored, target) = try sample(index)
            switch split.task {
            case .lm:
                inputs.append(Array(stored.dropLast()))
                labels.append(Array(stored.dropFirst()))
            case .seq2seq:
                sources.append(stored + [special.eos])
                inputs.append([special.bos] + target)
                labels.append(target + [special.eos])
            }
            if inputs.last!.count > maxTargetLength {
                throw DataError(file: split.shards[shard].path, "sample \(local) needs \(inputs.last!.count) decoder positions; the model takes \(maxTargetLength)")
            }
        }
        let s = sources.map(\.count).max() ?? 0, t = inputs.map(\.count).max() ?? 0
        func padded(_ rows: [[Int32]], to length: Int) -> [Int32] {
            rows.flatMap { $0 + [Int32](repeating: special.pad, count: length - $0.count) }
        }
        return TokenBatch(batchSize: indices.count, sourceLength: s, targetLength: t, source: padded(sources, to: s),
                          decoderInput: padded(inputs, to: t), labels: padded(labels, to: t), samples: indices, pad: special.pad)
    }
}

/// Reads batches ahead in a background thread that owns every HDF5 call, keeping at most `capacity` ready.
/// `next()` returns them in order; a read error is rethrown by `next()`; `stop()` (or releasing the loader)
/// shuts the thread down.
public final class BatchLoader: Sendable {
    private let queue: ReadyQueue

    /// `plan` yields each batch's sample indices in order (nil ends the stream); it runs on the loader thread.
    public init(split: DataSplit, maxSourceLength: Int, maxTargetLength: Int, capacity: Int = 4,
                plan: @escaping @Sendable () -> [Int]?) {
        let queue = ReadyQueue(capacity: max(1, capacity))
        self.queue = queue
        // The thread owns the queue, not the loader: dropping the loader stops it without dangling references.
        let thread = Thread {
            defer { queue.finish() }
            let reader: SampleReader
            do {
                reader = try SampleReader(split: split)
            } catch {
                _ = queue.deliver(.failure(error))
                return
            }
            while let indices = plan() {
                let result = Result { try reader.batch(indices, maxSourceLength: maxSourceLength, maxTargetLength: maxTargetLength) }
                guard queue.deliver(result) else { return }
                if case .failure = result { return }
            }
        }
        thread.name = "ddp-data-loader"
        thread.start()
    }

    /// The next batch in plan order, or nil once the plan has ended.
    public func next() throws -> TokenBatch? { try queue.next() }

    /// Stops reading and waits for the thread to end.
    public func stop() { queue.stop(wait: true) }

    deinit { queue.stop(wait: false) }
}

/// The bounded hand-over between the loader thread and the training thread.
private final class ReadyQueue: @unchecked Sendable {
    // @unchecked: every stored property below is read and written only while `condition` is locked.
    private let condition = NSCondition()
    private var ready: [Result<TokenBatch, Error>] = []
    private var finished = false
    private var stopping = false
    private let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    /// Waits for room, then queues; false when the loader is stopping.
    func deliver(_ result: Result<TokenBatch, Error>) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while ready.count >= capacity && !stopping { condition.wait() }
        guard !stopping else { return false }
        ready.append(result)
        condition.broadcast()
        return true
    }

    func finish() {
        condition.lock()
        finished = true
        condition.broadcast()
        condition.unlock()
    }

    func next() throws -> TokenBatch? {
        condition.lock()
        defer { condition.unlock() }
        while ready.isEmpty && !finished { condition.wait() }
        guard !ready.isEmpty else { return nil }
        let result = ready.removeFirst()
        condition.broadcast()
        return try result.get()
    }

    func stop(wait: Bool) {
        condition.lock()
        stopping = true
        condition.broadcast()
        while wait && !finished { condition.wait() }
        condition.unlock()
    }
}
