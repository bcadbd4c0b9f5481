import ArgumentParser
import Basics
import Foundation
import Training
import Kernels
import MPI

struct BenchAllreduce: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "allreduce",
        abstract: "Time in-place allreduce (sum) of a Float buffer over all ranks.",
        discussion: """
            Every iteration refills the buffer, synchronises the ranks, times one in-place MPI_Allreduce \
            and checks the result exactly on every rank. The time of an iteration is the slowest rank's. \
            Rank 0 prints the median time, the algorithm bandwidth (size / time) and the bus bandwidth \
            (2(n-1)/n x size / time, the figure that compares clusters independently of the rank count). \
            --nonblocking times MPI_Iallreduce and its wait instead, the call that sums gradient buckets during \
            training, and names the algorithm Open MPI uses for it.

            Example:
              Launch/mpirun.sh -np 2 bench allreduce --size-mb 64
            """
    )

    @Option(parsing: .unconditional, help: "Message size in MiB (2^20 bytes).")
    var sizeMb: Double = 64

    @Option(parsing: .unconditional, help: "Timed iterations.")
    var iterations: Int = 20

    @Option(parsing: .unconditional, help: "Untimed warm-up iterations.")
    var warmup: Int = 3

    @Flag(help: "Time the nonblocking allreduce (MPI_Iallreduce + wait) that training uses for gradient buckets.")
    var nonblocking = false

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    func validate() throws {
        // (8192 MB would be 2^31 floats, past MPI's 32-bit count.)
        guard sizeMb > 0, sizeMb < 8192 else { throw ValidationError("--size-mb must be more than 0 and less than 8192, got \(sizeMb).") }
        guard (1...largestBenchCount).contains(iterations) else {
            throw ValidationError("--iterations must be 1 to \(largestBenchCount), got \(iterations).")
        }
        guard (0...largestBenchCount).contains(warmup) else { throw ValidationError("--warmup must be 0 to \(largestBenchCount), got \(warmup).") }
    }

    func run() throws {
        try withMPI { runtime in
            let world = runtime.world
            // Ranks given other sizes or counts would wait in collectives the others never make, or mismatch in one.
            var options = ContentDigest()
            options.add("\(sizeMb) \(iterations) \(warmup) \(nonblocking)")
            try requireRanksAgree(world, on: [("the options (--size-mb, --iterations, --warmup, --nonblocking)", options.value)],
                                  hint: "give every rank the same options")
            let count = max(1, Int(sizeMb * 1_048_576) / MemoryLayout<Float>.stride)
            // The buffer, and as much again that MPI may take for a large message: checked on every rank, said once.
            try togetherOnEveryRank(world, "memory check") {
                let bytes = 2 * Double(count * MemoryLayout<Float>.stride)
                if let shortfall = MemoryBudget.shortfall(bytes, for: "--size-mb \(sizeMb) (the buffer, and as much again for MPI)") {
                    throw RunError(shortfall + "; give a smaller --size-mb")
                }
            }
            let result = try measure(world, count: count)
            if world.rank == 0 { print(json ? try result.json() : result.table()) }
        }
    }

    private func measure(_ world: Communicator, count: Int) throws -> AllreduceResult {
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
        defer { buffer.deallocate() }
        let ranks = world.size
        // Small integers keep every partial sum exact in Float, so the check can demand equality.
        let rankFactor = Float(world.rank + 1)
        let sumOfRankFactors = Float(ranks * (ranks + 1) / 2)
        func pattern(_ index: Int, _ iteration: Int) -> Float { Float((index &+ iteration) & 7) + 1 }

        var times: [Double] = []
        var wrongElements: Int64 = 0
        let clock = ContinuousClock()
        for iteration in 0..<(warmup + iterations) {
            for index in 0..<count { buffer[index] = rankFactor * pattern(index, iteration) }
            try world.barrier()
            let start = clock.now
            if nonblocking {
                try world.iallreduce(buffer, op: .sum).wait()
            } else {
                try world.allreduce(buffer, op: .sum)
            }
            let elapsed = clock.now - start
            if iteration >= warmup {
                times.append(elapsed.seconds)
            }
            for index in 0..<count where buffer[index] != sumOfRankFactors * pattern(index, iteration) {
                wrongElements += 1
            }
        }
        try world.allreduce(&times, op: .max)
        let totalWrong = try world.allreduce(wrongElements, op: .sum)
        guard totalWrong == 0 else {
            throw RunError("allreduce returned \(totalWrong) wrong elements (summed over all ranks and iterations)")
        }
        return AllreduceResult(ranks: ranks, ranksOnNode: world.localSize, bytes: count * MemoryLayout<Float>.stride,
                               iterations: iterations, warmup: warmup, times: times,
                               call: nonblocking ? "nonblocking, \(try nonblockingAlgorithm())" : "blocking")
    }

    /// Open MPI's choice for MPI_Iallreduce (coll/libnbc), as the library reports it.
    private func nonblockingAlgorithm() throws -> String {
        guard let value = try MPIRuntime.integerControlVariable(named: MPIRuntime.ringAllreduceSetting.parameter) else {
            return "algorithm unknown (not Open MPI's libnbc)"
        }
        let names = [0: "libnbc's own choice: binomial tree below 4 ranks or in place", 1: "ring", 2: "binomial tree",
                     3: "Rabenseifner", 4: "recursive doubling"]
        return "libnbc \(names[value] ?? "algorithm \(value)")"
    }
}

struct AllreduceResult: Encodable {
    let ranks: Int
    let ranksOnNode: Int
    let bytes: Int
    let iterations: Int
    let warmup: Int
    let times: [Double]
    /// "blocking", or "nonblocking, " and the algorithm.
    let call: String

    var sorted: [Double] { times.sorted() }
    var medianSeconds: Double { median(times) }
    var algorithmBandwidth: Double { Double(bytes) / medianSeconds / 1e9 }
    /// nccl-tests' bus bandwidth: what each link carries in a ring allreduce; 0 for one rank.
    var busBandwidth: Double { algorithmBandwidth * 2 * Double(ranks - 1) / Double(ranks) }

    func table() -> String {
        func ms(_ seconds: Double) -> String { String(format: "%.3f ms", seconds * 1e3) }
        return """
            allreduce   float32 sum, in place, \(call), \(ranks) rank(s) (\(ranksOnNode) on this node)
            size        \(String(format: "%.2f", Double(bytes) / 1_048_576)) MiB (\(bytes / 4) floats)
            iterations  \(iterations) timed, \(warmup) warm-up
            median      \(ms(medianSeconds))  (min \(ms(sorted.first!)), max \(ms(sorted.last!)))
            algbw       \(String(format: "%.3f", algorithmBandwidth)) GB/s
            busbw       \(String(format: "%.3f", busBandwidth)) GB/s
            verified    every element, every rank, every iteration
            """
    }

    func json() throws -> String {
        struct Output: Encodable {
            let benchmark = "allreduce"
            let dtype = "float32"
            let call: String
            let ranks: Int
            let ranks_on_node: Int
            let bytes: Int
            let iterations: Int
            let warmup: Int
            let median_seconds: Double
            let min_seconds: Double
            let max_seconds: Double
            let algbw_gbps: Double
            let busbw_gbps: Double
            let verified = true
        }
        let output = Output(call: call, ranks: ranks, ranks_on_node: ranksOnNode, bytes: bytes, iterations: iterations, warmup: warmup,
                            median_seconds: medianSeconds, min_seconds: sorted.first!, max_seconds: sorted.last!,
                            algbw_gbps: algorithmBandwidth, busbw_gbps: busBandwidth)
        return try jsonLine(output)
    }
}
