import MPI

/// A start-up check (the data, the model's size, a checkpoint) that failed on some rank: every rank stops with the
/// first one's message.
public struct StartupRefused: ErrorOnEveryRank, CustomStringConvertible, Sendable {
    /// The failing rank's error, as it would have printed it.
    public let message: String
    /// The message itself.
    public var description: String { message }
    /// A refusal every rank makes with `message` (a sentence every rank has, as after a broadcast).
    public init(message: String) { self.message = message }
}

/// Runs a check every rank of `world` makes on the same config and files (opening data, sizing a model, loading a
/// checkpoint). When it fails on any rank, every rank throws `StartupRefused`: a rank that failed with its own
/// sentence, the others with the lowest failing rank's ("rank N refused: ..."), so the job ends with a sentence and no
/// MPI abort; alone, the error itself. Every rank enters the same collectives (an allreduce, then a broadcast only on
/// failure), timed by `watchdog` when given.
public func togetherOnEveryRank<T>(_ world: Communicator, _ phase: String, watchdog: CollectiveWatchdog? = nil,
                                   _ body: () throws -> T) throws -> T {
    let outcome: Result<T, any Error>
    do { outcome = .success(try body()) } catch { outcome = .failure(error) }
    guard world.size > 1 else { return try outcome.get() }
    func collective<R>(_ call: () throws -> R) throws -> R { try watchdog.map { try $0.guarding(phase, call) } ?? call() }
    var own: String?
    if case .failure(let error) = outcome { own = sentenceOnEveryRank(error) }
    let first = try collective { try world.allreduce(Int64(own == nil ? world.size : world.rank), op: .min) }
    guard first < world.size else { return try outcome.get() }
    let message = try collective { try world.broadcast(own ?? "", root: Int(first)) }
    throw StartupRefused(message: own ?? "rank \(first) refused: \(message)")
}

/// An error as the sentence ranks pass to one another: never empty, since an empty message means success to them.
func sentenceOnEveryRank(_ error: any Error) -> String {
    let text = "\(error)"
    return text.isEmpty ? "\(type(of: error)) (an error without a message)" : text
}

/// Every rank of `world` must hold the same of each part of `parts` (a name and a content digest: the checkpoint's
/// parameters, the data, the options that shape the result), as `ddp train` checks its config and data: one
/// allgather of the digests. The first part where a rank differs from rank 0 is `RanksDisagree` on every rank, naming
/// the part and the ranks, and `hint` (what to check). Alone, nothing to compare.
public func requireRanksAgree(_ world: Communicator, on parts: [(name: String, digest: UInt64)], hint: String) throws {
    guard world.size > 1 else { return }
    let all = try world.allgather(parts.map { Int64(bitPattern: $0.digest) })
    for (index, part) in parts.enumerated() {
        let values = (0..<world.size).map { all[$0 * parts.count + index] }
        let differing = values.indices.filter { values[$0] != values[0] }
        guard !differing.isEmpty else { continue }
        throw RanksDisagree(message: "ranks disagree on \(part.name): rank\(differing.count > 1 ? "s" : "") "
                                     + "\(differing.map(String.init).joined(separator: ", ")) \(differing.count > 1 ? "differ" : "differs") "
                                     + "from rank 0 (\(hint))")
    }
}
