// Run by TrainingTests under `mpirun -np 2`: in training's own step (TrainingStep), gradient buckets all-reduced
// during backward (by a progress thread, or by the training thread) give exactly the gradients of a plain allreduce
// of the whole arena (and bfloat16 compression stays within its rounding of it), and the sum equals one process's
// gradient of both ranks' batches together (each rank's batch padded to its own length). Prints one line per rank;
// exits non-zero on failure.
import Basics
import Foundation
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

let runtime = try MPIRuntime.initialize(threadLevel: .serialized)
let world = runtime.world

// `training-checks watchdog [stall]` (run by TrainingTests under `mpirun -np 2`): the collective watchdog counts
// waiting, not work. Rank 0 works for three timeouts before joining an allreduce and the other rank waits through it;
// with `stall`, rank 1 then stops answering and rank 0 ends the job within the timeout, naming rank 1.
if CommandLine.arguments.count > 1 && CommandLine.arguments[1] == "watchdog" {
    let watchdog = try CollectiveWatchdog(timeoutSeconds: 1, world: world)
    var values = [1.0]
    if world.rank == 0 { watchdog.working { Thread.sleep(forTimeInterval: 3) } }
    try watchdog.allreduce(&values, phase: "after rank 0's long work")
    guard values == [Double(world.size)] else { fail("allreduce gave \(values)", rank: world.rank) }
    print("rank \(world.rank): waited through 3 s of rank 0's work under a 1 s timeout")
    if CommandLine.arguments.dropFirst(2).first == "stall" {
        if world.rank == 1 { Thread.sleep(forTimeInterval: 60) }
        try watchdog.allreduce(&values, phase: "rank 1 stalls")
        fail("the stall was not detected", rank: world.rank)
    }
    watchdog.stop()
    try runtime.finalize()
    exit(0)
}

let config = ModelConfig(kind: .encoderDecoder, vocabSize: 30, dModel: 16, heads: 2, encoderLayers: 2, decoderLayers: 2, dFF: 32,
                         activation: .gelu, norm: .pre, positions: .learned, maxLength: 8, dropout: 0, tiedEmbeddings: true)
// Rank 0's rows are longer than rank 1's: each pads to its own length.
let batches = [
    TokenBatch(batchSize: 2, sourceLength: 4, targetLength: 5, source: [5, 6, 7, 2, 8, 2, 0, 0],
          decoderInput: [1, 9, 10, 11, 12, 1, 13, 0, 0, 0], labels: [9, 10, 11, 12, 2, 13, 2, 0, 0, 0]),
    TokenBatch(batchSize: 2, sourceLength: 3, targetLength: 3, source: [14, 2, 0, 15, 16, 2],
          decoderInput: [1, 17, 0, 1, 18, 19], labels: [17, 2, 0, 18, 19, 2]),
]
guard world.size == 2 else { fail("run with 2 ranks", rank: world.rank) }

let model = try TransformerModel(config: config, maxBatch: 4, maxSourceLength: 4, maxTargetLength: 5)
model.initializeParameters(seed: 8)

// Training's own step (TrainingStep) with overlapped buckets (1 KiB: many of them), driven by a progress thread and
// by the training thread itself.
@MainActor func trainingStep(compression: GradientCompression = .none, progressThread: Bool) -> TrainingStep {
    TrainingStep(model: model, optimizer: AdamW(layout: model.layout, settings: AdamWSettings()), world: world, accumulationSteps: 1,
                 labelSmoothing: 0.1, clipNorm: 1, bucketBytes: 1024, compression: compression, progressThread: progressThread)
}
var bucketedRuns: [(gradients: [Float], synchronizer: GradientSynchronizer)] = []
for progressThread in [true, false] {
    let step = trainingStep(progressThread: progressThread)
    guard let synchronizer = step.synchronizer, synchronizer.usesProgressThread == progressThread else {
        fail("progress thread \(progressThread) not honoured (MPI thread level \(runtime.providedThreadLevel))", rank: world.rank)
    }
    // Twice with the same synchronizer: its state resets between steps.
    for _ in 0..<2 {
        let outcome = try step.computeGradients(step: 0, dropoutSeed: 0, stopRequested: world.rank == 1) { batches[world.rank] }
        guard outcome.targetTokens == 12, outcome.stopRequested else {
            fail("the step's totals: \(outcome.targetTokens) target tokens (12 expected), stop requested \(outcome.stopRequested)", rank: world.rank)
        }
    }
    bucketedRuns.append((Array(model.gradients.storage), synchronizer))
}
let bucketed = bucketedRuns[0].gradients
let synchronizer = bucketedRuns[0].synchronizer

// Reference: the whole arena in one blocking allreduce.
model.gradients.zero()
model.forwardBackward(batches[world.rank], labelSmoothing: 0.1)
try world.allreduce(model.gradients.storage, op: .sum)
let plain = Array(model.gradients.storage)
for (run, name) in zip(bucketedRuns, ["with a progress thread", "on the training thread"]) {
    guard run.gradients.elementsEqual(plain, by: { $0.bitPattern == $1.bitPattern }) else {
        fail("bucketed gradients (\(name)) differ from a plain allreduce", rank: world.rank)
    }
}
guard synchronizer.buckets.count > 4, synchronizer.launchedDuringBackward > 0 else {
    fail("no overlap: \(synchronizer.buckets.count) buckets, \(synchronizer.launchedDuringBackward) launched during backward", rank: world.rank)
}

// bfloat16 compression: each rank's gradient and each sum rounded to 8 significant bits, so every element is within
// 2^-7 of the sum of magnitudes of the two contributions (2^-8 per rounding), and some element does differ.
model.gradients.zero()
model.forwardBackward(batches[world.rank], labelSmoothing: 0.1)
let local = Array(model.gradients.storage)
var magnitudes = local.map { abs($0) }
try world.allreduce(&magnitudes, op: .sum)
for progressThread in [true, false] {
    _ = try trainingStep(compression: .bf16, progressThread: progressThread)
        .computeGradients(step: 0, dropoutSeed: 0, stopRequested: false) { batches[world.rank] }
    let reduced = Array(model.gradients.storage)
    for index in reduced.indices where abs(reduced[index] - plain[index]) > magnitudes[index] * 0x1p-7 {
        fail("bfloat16 sum at \(index): \(reduced[index]), exact \(plain[index]) (contributions \(magnitudes[index]))", rank: world.rank)
    }
    guard reduced != plain else { fail("bfloat16 compression changed nothing: was it used?", rank: world.rank) }
}

// Ranges reported in any order: a bucket starts once everything from its start to the arena's end has been reported,
// and not before.
do {
    let synchronizer = GradientSynchronizer(gradients: model.gradients, communicator: world, bucketBytes: 1024, progressThread: false)
    let count = model.layout.count, quarter = count / 4
    for i in 0..<count { model.gradients.storage[i] = Float(world.rank + 1) * Float(i % 7) }
    synchronizer.attach(to: model)
    let report = model.onGradientsFinal!
    func startedFrom(_ offset: Int) -> Int { synchronizer.buckets.filter { $0.lowerBound >= offset }.count }
    report(quarter..<(2 * quarter))
    guard synchronizer.launchedDuringBackward == 0 else { fail("a bucket started before the arena's end was final", rank: world.rank) }
    report((3 * quarter)..<count)
    guard synchronizer.launchedDuringBackward == startedFrom(3 * quarter) else {
        fail("\(synchronizer.launchedDuringBackward) buckets started after the tail, \(startedFrom(3 * quarter)) expected", rank: world.rank)
    }
    report((2 * quarter)..<(3 * quarter))
    guard synchronizer.launchedDuringBackward == startedFrom(quarter) else {
        fail("\(synchronizer.launchedDuringBackward) buckets started once [\(quarter), end) was final, \(startedFrom(quarter)) expected",
             rank: world.rank)
    }
    report(0..<quarter)
    try synchronizer.finish(detaching: model)
    for i in 0..<count where model.gradients.storage[i] != 3 * Float(i % 7) {
        fail("element \(i) summed to \(model.gradients.storage[i]), not \(3 * Float(i % 7))", rank: world.rank)
    }
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
