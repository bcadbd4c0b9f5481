// Run by MPITests under `mpirun -np N` (and alone): every rank checks exact results of every collective
// for every element type, and the argument checks, then prints one line. Any failure exits non-zero,
// which makes mpirun end the job.
import MPI

#if canImport(Glibc)
import Glibc
#endif

var checks = 0
var rankForMessages = -1

@MainActor
func require(_ condition: Bool, _ what: @autoclosure () -> String) {
    checks += 1
    if !condition {
        print("FAIL rank \(rankForMessages): \(what())")
        exit(1)  // exit() flushes stdout
    }
}

@MainActor
func requireThrows(_ kind: MPIError.Kind, _ what: String, _ body: () throws -> Void) {
    do {
        try body()
        require(false, "\(what): expected an MPIError \(kind), nothing was thrown")
    } catch let error as MPIError {
        require(error.kind == kind, "\(what): expected \(kind), got \(error)")
        require(!error.description.isEmpty, "\(what): error has no description")
    } catch {
        require(false, "\(what): expected an MPIError, got \(error)")
    }
}

/// A value that depends on rank and index, small enough that sums are exact in Float.
func value<T: Numeric>(_ rank: Int, _ index: Int, as: T.Type) -> T where T: ExpressibleByIntegerLiteral {
    T(exactly: (rank + 1) * (index % 5 + 1) - 3)!
}

@MainActor
func checkReductions<T: MPIReducible & Numeric & Comparable>(_ type: T.Type, world: Communicator, count: Int) throws {
    let ranks = 0..<world.size
    for op in ReduceOp.allCases {
        var values = (0..<count).map { value(world.rank, $0, as: T.self) }
        try world.allreduce(&values, op: op)
        for index in 0..<count {
            let contributions = ranks.map { value($0, index, as: T.self) }
            let expected: T
            switch op {
            case .sum: expected = contributions.reduce(0) { $0 + $1 }
            case .max: expected = contributions.max()!
            case .min: expected = contributions.min()!
            }
            require(values[index] == expected, "allreduce \(op) \(T.self)[\(index)] = \(values[index]), expected \(expected)")
        }
    }
    let scalar = try world.allreduce(value(world.rank, 0, as: T.self), op: .sum)
    require(scalar == ranks.map { value($0, 0, as: T.self) }.reduce(0) { $0 + $1 }, "scalar allreduce \(T.self)")
}

@MainActor
func checkBroadcast<T: MPIElement & Numeric & Equatable>(_ type: T.Type, world: Communicator) throws {
    for root in 0..<world.size {
        var values = (0..<7).map { world.rank == root ? T(exactly: $0 * 3 + root)! : T(exactly: 0)! }
        try world.broadcast(&values, root: root)
        require(values == (0..<7).map { T(exactly: $0 * 3 + root)! }, "broadcast \(T.self) from root \(root)")
    }
}

// What the launch environment chose for Open MPI's nonblocking allreduce, before MPIRuntime fills in its default.
let launchAlgorithm = getenv(MPIRuntime.ringAllreduceVariable).map { String(cString: $0) }
let runtime: MPIRuntime
do {
    runtime = try MPIRuntime.initialize(threadLevel: .serialized)
} catch {
    print("FAIL: MPI did not initialise: \(error)")
    exit(1)
}
let world = runtime.world
rankForMessages = world.rank

// `--die-on-rank R`: rank R exits without finalising while the others wait in a barrier. mpirun must end
// the whole job (non-zero) rather than leave them waiting.
if let flag = CommandLine.arguments.firstIndex(of: "--die-on-rank"), let dying = Int(CommandLine.arguments[flag + 1]) {
    if world.rank == dying {
        print("rank \(world.rank): exiting on purpose")
        exit(3)
    }
    try? world.barrier()
    print("rank \(world.rank): barrier returned although rank \(dying) died")
    exit(0)
}
// `--abort-on-rank R`: rank R calls Communicator.abort while the others wait in a barrier.
if let flag = CommandLine.arguments.firstIndex(of: "--abort-on-rank"), let aborting = Int(CommandLine.arguments[flag + 1]) {
    if world.rank == aborting {
        world.abort(code: 7, message: "aborting on purpose: config mismatch in key 'model.d_model'")
    }
    try? world.barrier()
    print("rank \(world.rank): barrier returned although rank \(aborting) aborted")
    exit(0)
}

do {
    require(runtime.requestedThreadLevel == .serialized, "requested thread level recorded")
    require(runtime.providedThreadLevel >= .funneled, "provided thread level \(runtime.providedThreadLevel)")
    requireThrows(.alreadyInitialized, "second initialisation") { _ = try MPIRuntime.initialize() }

    // Identity: ranks are 0..<size, all on this node (one machine).
    require(world.size >= 1 && (0..<world.size).contains(world.rank), "rank \(world.rank) of \(world.size)")
    let allRanks = try world.allgather([Int32(world.rank)])
    require(allRanks == (0..<world.size).map(Int32.init), "allgather of ranks gave \(allRanks)")
    require(world.localSize == world.size, "local size \(world.localSize) on one node of \(world.size) ranks")
    let localRanks = try world.allgather([Int64(world.localRank)])
    require(Set(localRanks) == Set((0..<world.size).map(Int64.init)), "local ranks \(localRanks)")
    try world.barrier()

    // The nonblocking allreduce algorithm Open MPI really uses: the ring, unless the launch environment chose one.
    let algorithm = try MPIRuntime.integerControlVariable(named: MPIRuntime.ringAllreduceSetting.parameter)
    let expected = launchAlgorithm ?? String(MPIRuntime.ringAllreduceSetting.value)
    require(algorithm.map(String.init) == expected, "libnbc iallreduce algorithm \(algorithm.map(String.init) ?? "missing"), expected \(expected)")
    require(try MPIRuntime.integerControlVariable(named: "swiftddp_no_such_variable") == nil, "an unknown control variable is nil")

    // Broadcast: every type, every root; bytes and strings of a length only the root knows.
    try checkBroadcast(Float.self, world: world)
    try checkBroadcast(Double.self, world: world)
    try checkBroadcast(Int32.self, world: world)
    try checkBroadcast(Int64.self, world: world)
    try checkBroadcast(UInt8.self, world: world)
    for root in 0..<world.size {
        let text = "config from rank \(root): d_model=512, heads=8 — Ünïcödé ✓"
        let received = try world.broadcast(world.rank == root ? text : "", root: root)
        require(received == text, "string broadcast from \(root) gave \(received)")
        let bytes = try world.broadcast(bytes: world.rank == root ? Array(repeating: UInt8(root + 7), count: 1000 + root) : [],
                                        root: root)
        require(bytes == Array(repeating: UInt8(root + 7), count: 1000 + root), "bytes broadcast from \(root)")
    }
    let empty = try world.broadcast("", root: 0)
    require(empty.isEmpty, "empty string broadcast")

    // Gather of bytes of uneven lengths (rank 1 sends none), to every root; only the root receives.
    for root in 0..<world.size {
        let mine = [UInt8](repeating: UInt8(world.rank + 1), count: world.rank == 1 ? 0 : 3 + 1000 * world.rank)
        let gathered = try world.gather(bytes: mine, root: root)
        if world.rank == root {
            let expected = (0..<world.size).map { [UInt8](repeating: UInt8($0 + 1), count: $0 == 1 ? 0 : 3 + 1000 * $0) }
            require(gathered == expected, "gather to root \(root): \(gathered.map(\.count)) bytes per rank")
        } else {
            require(gathered.isEmpty, "gather to root \(root): rank \(world.rank) received \(gathered.count) shares")
        }
    }
    requireThrows(.invalidArgument, "gather to a root outside the communicator") { _ = try world.gather(bytes: [1], root: world.size) }

    // Allreduce: every op and type, odd count (no alignment assumptions), and a large buffer.
    for count in [1, 37, 300_001] {
        try checkReductions(Float.self, world: world, count: count)
        try checkReductions(Double.self, world: world, count: count)
        try checkReductions(Int32.self, world: world, count: count)
        try checkReductions(Int64.self, world: world, count: count)
    }

    // Nonblocking allreduce: two in flight at once, polled with test() then completed with wait().
    let count = 100_003
    var first = (0..<count).map { value(world.rank, $0, as: Float.self) }
    var second = (0..<count).map { value(world.rank, $0 + 1, as: Double.self) }
    try first.withUnsafeMutableBufferPointer { firstBuffer in
        try second.withUnsafeMutableBufferPointer { secondBuffer in
            let requestA = try world.iallreduce(firstBuffer, op: .sum)
            let requestB = try world.iallreduce(secondBuffer, op: .max)
            var polls = 0
            while try !requestA.test() { polls += 1 }
            try requestB.wait()
            try requestB.wait()  // waiting twice is harmless
            require(try requestA.test(), "a completed request stays complete")
        }
    }
    for index in 0..<count {
        let sum = (0..<world.size).map { value($0, index, as: Float.self) }.reduce(0) { $0 + $1 }
        let max = (0..<world.size).map { value($0, index + 1, as: Double.self) }.max()!
        require(first[index] == sum && second[index] == max, "iallreduce result at \(index)")
    }

    // In-place nonblocking sums shorter than the ring has ranks (empty segments) and of odd lengths.
    for count in [1, 2, 3, 5, 4_097] {
        var values = (0..<count).map { value(world.rank, $0, as: Float.self) }
        try values.withUnsafeMutableBufferPointer { try world.iallreduce($0, op: .sum).wait() }
        for index in 0..<count {
            let sum = (0..<world.size).map { value($0, index, as: Float.self) }.reduce(0) { $0 + $1 }
            require(values[index] == sum, "in-place iallreduce of \(count) at \(index): \(values[index]), expected \(sum)")
        }
    }

    // bfloat16 sums (UInt16 bits, float32 pairwise sums rounded once): small integers are exact in bfloat16, so any
    // order of pairwise sums gives the exact total; arbitrary values stay within bfloat16's rounding per addition.
    let halves = 1_000
    var bits = (0..<halves).map { UInt16(Float(world.rank + 1 + $0 % 7).bitPattern >> 16) }
    try bits.withUnsafeMutableBufferPointer { try world.allreduceBFloat16Sum($0) }
    for index in 0..<halves {
        let total = Float((0..<world.size).map { $0 + 1 + index % 7 }.reduce(0, +))
        require(Float(bitPattern: UInt32(bits[index]) << 16) == total, "bfloat16 sum at \(index): \(Float(bitPattern: UInt32(bits[index]) << 16)), expected \(total)")
    }
    let fractions = (0..<halves).map { Float(bitPattern: UInt32(UInt16(Float(0.1 * Double($0 + 1) * Double(world.rank + 1)).bitPattern >> 16)) << 16) }
    var fractionBits = fractions.map { UInt16($0.bitPattern >> 16) }
    let request = try fractionBits.withUnsafeMutableBufferPointer { try world.iallreduceBFloat16Sum($0) }
    try request.wait()
    for index in 0..<halves {
        let exact = (0..<world.size).map { rank in Float(bitPattern: UInt32(UInt16(Float(0.1 * Double(index + 1) * Double(rank + 1)).bitPattern >> 16)) << 16) }.reduce(0, +)
        let got = Float(bitPattern: UInt32(fractionBits[index]) << 16)
        require(abs(got - exact) <= abs(exact) * Float(world.size - 1) * 0x1p-8, "bfloat16 sum at \(index): \(got), exact \(exact)")
    }

    // Allgather: blocks in rank order.
    let gathered = try world.allgather((0..<3).map { Float(world.rank * 10 + $0) })
    require(gathered == (0..<world.size).flatMap { rank in (0..<3).map { Float(rank * 10 + $0) } }, "allgather Float: \(gathered)")

    // Reduce-scatter (block): rank r gets block r of the sum.
    let block = 5
    let contribution = (0..<(block * world.size)).map { Int64(world.rank + 1) * Int64($0) }
    let mine = try world.reduceScatter(contribution, op: .sum)
    let rankSum = Int64(world.size * (world.size + 1) / 2)
    require(mine == (0..<block).map { rankSum * Int64(world.rank * block + $0) }, "reduce-scatter Int64: \(mine)")
    let mineFloat = try world.reduceScatter((0..<(block * world.size)).map { Float($0) }, op: .max)
    require(mineFloat == (0..<block).map { Float(world.rank * block + $0) }, "reduce-scatter Float max: \(mineFloat)")
    // Empty contributions still join the collective: the collectives after them stay matched on every rank.
    require(try world.allgather([Int32]()).isEmpty && (try world.reduceScatter([Float](), op: .sum)).isEmpty, "empty collectives")
    let afterEmpty = try world.allgather([Int32(world.rank)])
    require(afterEmpty == (0..<world.size).map(Int32.init), "allgather after empty collectives gave \(afterEmpty)")

    // Argument checks happen before the C call and throw on this rank alone (no collective is entered).
    requireThrows(.invalidArgument, "broadcast to a root outside the communicator") {
        var values: [Float] = [1]
        try world.broadcast(&values, root: world.size)
    }
    requireThrows(.invalidArgument, "allgather into a receive buffer of the wrong size") {
        var receive = [Float](repeating: 0, count: world.size * 2 + 1)
        try [Float](repeating: 1, count: 2).withUnsafeBufferPointer { send in
            try receive.withUnsafeMutableBufferPointer { buffer in try world.allgather(send, into: buffer) }
        }
    }
    requireThrows(.invalidArgument, "reduce-scatter with a send buffer that is not size x receive") {
        var receive = [Float](repeating: 0, count: 3)
        try [Float](repeating: 1, count: world.size * 3 + 1).withUnsafeBufferPointer { send in
            try receive.withUnsafeMutableBufferPointer { buffer in try world.reduceScatter(send, into: buffer, op: .sum) }
        }
    }
    if world.size > 1 {
        requireThrows(.invalidArgument, "reduce-scatter of an array that does not split into blocks") {
            _ = try world.reduceScatter([Float](repeating: 1, count: world.size * 3 + 1), op: .sum)
        }
    }
    requireThrows(.invalidArgument, "split with a negative color") { _ = try world.split(color: -5, key: 0) }

    // A sub-communicator works the same way: even and odd ranks.
    let parity = try world.split(color: world.rank % 2, key: world.rank)
    let paritySum = try parity.allreduce(Int32(world.rank), op: .sum)
    require(paritySum == Int32((0..<world.size).filter { $0 % 2 == world.rank % 2 }.reduce(0) { $0 + $1 }), "split allreduce \(paritySum)")

    try world.barrier()
    print("rank \(world.rank)/\(world.size): all \(checks) checks passed (thread level \(runtime.providedThreadLevel))")
    try runtime.finalize()
    try runtime.finalize()  // finalising twice does nothing
    requireThrows(.alreadyInitialized, "initialisation after finalize") { _ = try MPIRuntime.initialize() }
} catch {
    print("FAIL rank \(world.rank): \(error)")
    exit(1)
}
