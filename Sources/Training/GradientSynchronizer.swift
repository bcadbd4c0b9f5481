import MPI
import Transformer

/// Sums the gradient arena over all ranks in buckets, overlapped with backward.
///
/// The arena is cut into buckets of about `bucketBytes` from its end (backward finishes the end first). When the
/// model reports that every gradient from some offset on is final (`TransformerModel.onGradientsFinal`), each bucket
/// lying wholly past it starts a nonblocking in-place allreduce at once; `finish()` starts the rest and waits for
/// all. Only the last micro-step of an accumulation communicates: earlier ones just accumulate locally.
public final class GradientSynchronizer {
    private let communicator: Communicator
    private let gradients: Arena
    /// Bucket ranges in launch order: the last slice of the arena first.
    public let buckets: [Range<Int>]
    private var requests: [Request] = []
    private var launched = 0
    private var failure: MPIError?
    /// Buckets launched before backward ended in the last step (how much communication overlapped).
    public private(set) var launchedDuringBackward = 0

    public init(gradients: Arena, communicator: Communicator, bucketBytes: Int) {
        self.communicator = communicator
        self.gradients = gradients
        let perBucket = max(1, bucketBytes / MemoryLayout<Float>.stride)
        var buckets: [Range<Int>] = []
        var end = gradients.layout.count
        while end > 0 {
            let start = max(0, end - perBucket)
            buckets.append(start..<end)
            end = start
        }
        self.buckets = buckets
    }

    /// Connects to the model's backward for one micro-step that must communicate.
    public func attach(to model: TransformerModel) {
        requests.removeAll(keepingCapacity: true)
        launched = 0
        failure = nil
        launchedDuringBackward = 0
        model.onGradientsFinal = { [unowned self] offset in self.gradientsFinal(from: offset) }
    }

    /// Starts every bucket whose gradients are all final, and lets MPI progress the ones in flight.
    func gradientsFinal(from offset: Int) {
        while launched < buckets.count && buckets[launched].lowerBound >= offset && failure == nil {
            launch(buckets[launched])
            if offset > 0 { launchedDuringBackward += 1 }
        }
        // Open MPI progresses nonblocking collectives inside MPI calls: a test per bucket keeps them moving.
        for request in requests where failure == nil {
            do { _ = try request.test() } catch { failure = error }
        }
    }

    private func launch(_ range: Range<Int>) {
        launched += 1
        do {
            requests.append(try communicator.iallreduce(UnsafeMutableBufferPointer(rebasing: gradients.storage[range]), op: .sum))
        } catch {
            failure = error
        }
    }

    /// Starts what is left, waits for everything, and detaches from the model. Afterwards every rank holds the
    /// same summed gradients.
    public func finish(detaching model: TransformerModel) throws(MPIError) {
        model.onGradientsFinal = nil
        if let failure { throw failure }
        while launched < buckets.count { launch(buckets[launched]) }
        for request in requests { try request.wait() }
        if let failure { throw failure }
    }
}
