// Run by TrainingTests under `mpirun -np 2`: gradient buckets all-reduced during backward give exactly the
// gradients of a plain allreduce of the whole arena, and the sum equals one process's gradient of both ranks'
// batches together (each rank's batch padded to its own length). Prints one line per rank; exits non-zero on failure.
import MPI
import Transformer
import Training

#if canImport(Glibc)
import Glibc
#endif

func fail(_ message: String, rank: Int) -> Never {
    print("FAIL rank \(rank): \(message)")
    exit(1)
}

let runtime = try MPIRuntime.initialize()
let world = runtime.world
let config = ModelConfig(kind: .encoderDecoder, vocabSize: 30, dModel: 16, heads: 2, encoderLayers: 2, decoderLayers: 2, dFF: 32,
                         activation: .gelu, norm: .pre, positions: .learned, maxLength: 8, dropout: 0, tiedEmbeddings: true)
// Rank 0's rows are longer than rank 1's: each pads to its own length.
let batches = [
    Batch(batchSize: 2, sourceLength: 4, targetLength: 5, source: [5, 6, 7, 2, 8, 2, 0, 0],
          decoderInput: [1, 9, 10, 11, 12, 1, 13, 0, 0, 0], labels: [9, 10, 11, 12, 2, 13, 2, 0, 0, 0]),
    Batch(batchSize: 2, sourceLength: 3, targetLength: 3, source: [14, 2, 0, 15, 16, 2],
          decoderInput: [1, 17, 0, 1, 18, 19], labels: [17, 2, 0, 18, 19, 2]),
]
guard world.size == 2 else { fail("run with 2 ranks", rank: world.rank) }

let model = try TransformerModel(config: config, maxBatch: 4, maxSourceLength: 4, maxTargetLength: 5)
model.initializeParameters(seed: 8)

// Overlapped buckets (1 KiB: many of them).
let synchronizer = GradientSynchronizer(gradients: model.gradients, communicator: world, bucketBytes: 1024)
model.gradients.zero()
synchronizer.attach(to: model)
model.forwardBackward(batches[world.rank], labelSmoothing: 0.1)
try synchronizer.finish(detaching: model)
let bucketed = Array(model.gradients.storage)

// Reference: the whole arena in one blocking allreduce.
model.gradients.zero()
model.forwardBackward(batches[world.rank], labelSmoothing: 0.1)
try world.allreduce(model.gradients.storage, op: .sum)
let plain = Array(model.gradients.storage)
guard bucketed.elementsEqual(plain, by: { $0.bitPattern == $1.bitPattern }) else {
    fail("bucketed gradients differ from a plain allreduce", rank: world.rank)
}
guard synchronizer.buckets.count > 4, synchronizer.launchedDuringBackward > 0 else {
    fail("no overlap: \(synchronizer.buckets.count) buckets, \(synchronizer.launchedDuringBackward) launched during backward", rank: world.rank)
}

// One process, both batches: the same summed gradient (padding differs, the result must not).
model.gradients.zero()
for batch in batches { model.forwardBackward(batch, labelSmoothing: 0.1) }
let single = Array(model.gradients.storage)
let scale = single.map { abs($0) }.max()!
let worst = zip(bucketed, single).map { abs($0 - $1) }.max()!
guard worst / scale < 1e-5 else { fail("2-rank gradient differs from 1-rank by \(worst) (scale \(scale))", rank: world.rank) }

print("rank \(world.rank): gradient sync checks passed (\(synchronizer.buckets.count) buckets, \(synchronizer.launchedDuringBackward) started during backward, 1-rank difference \(worst / scale))")
try runtime.finalize()
