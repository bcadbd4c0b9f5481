import ArgumentParser
import Foundation
import MPI

/// Runs `body` with MPI initialised, and finalises it afterwards.
///
/// On an error with other ranks in the job, this rank aborts the whole job with the error's text: the
/// other ranks may be waiting in a collective this rank will never join, and MPI_Finalize would wait
/// for them. Alone, it rethrows; for an error every rank raised together (`ErrorOnEveryRank`), rank 0 prints the
/// ranks' sentences (`errorLines`), and every rank finalises and exits 1.
func withMPI<Result>(_ body: (MPIRuntime) throws -> Result) throws -> Result {
    // Serialized: the gradient synchronizer's progress thread makes MPI calls while the main thread computes
    // (never both at once).
    let runtime = try MPIRuntime.initialize(threadLevel: .serialized)
    do {
        if runtime.world.size > 1 { try requireOneCommand(runtime.world) }
        let result = try body(runtime)
        try runtime.finalize()
        return result
    } catch let error as ErrorOnEveryRank where runtime.world.size > 1 {
        // Rank 0 prints what the ranks raised, each sentence once (ranks printing at once interleave on a shared
        // terminal); then every rank waits for it: mpirun ends the job at the first non-zero exit.
        let world = runtime.world
        if let gathered = try? world.gather(bytes: Array("\(error)".utf8), root: 0) {
            if world.rank == 0 {
                for line in errorLines(gathered.map { String(decoding: $0, as: UTF8.self) }) { printToStandardError(line) }
            }
        } else {
            printToStandardError("Error: rank \(world.rank): \(error)")
        }
        try? world.barrier()
        try? runtime.finalize()
        throw ExitCode.failure
    } catch {
        if runtime.world.size > 1 {
            flushStandardOutput()
            runtime.world.abort(code: 1, message: "\(error)")
        }
        try? runtime.finalize()
        throw error
    }
}

/// The command this process runs ("train", "bench step"): the subcommand names at the head of its arguments.
private var commandName: String {
    let names = CommandLine.arguments.dropFirst().prefix { !$0.hasPrefix("-") }
    return names.prefix(names.first == "bench" ? 2 : 1).joined(separator: " ")
}

/// Every rank of a job must run the same command: mpirun's MPMD form (`mpirun -np 1 ddp train ... : -np 1 ddp eval
/// ...`) would otherwise leave each waiting in collectives the others never make. The first collective of every
/// command is this fixed-size exchange of their names, so it matches whatever the ranks run; a difference is an error
/// every rank raises alike (said once).
private func requireOneCommand(_ world: Communicator) throws {
    let width = 64
    let own = Array(commandName.utf8.prefix(width))
    let all = try world.allgather(own + [UInt8](repeating: 0, count: width - own.count))
    let names = (0..<world.size).map { rank in
        String(decoding: all[(rank * width)..<((rank + 1) * width)].prefix { $0 != 0 }, as: UTF8.self)
    }
    guard Set(names).count > 1 else { return }
    let listed = names.enumerated().map { "rank \($0.offset) ddp \($0.element)" }.joined(separator: ", ")
    throw DifferentCommands(message: "the ranks of this job run different commands (\(listed)); each waits in steps the "
                                     + "others never take: give every rank the same ddp command")
}

/// Ranks of one job that run different commands (`requireOneCommand`).
private struct DifferentCommands: ErrorOnEveryRank, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// The lines that report every rank's error (`messages[r]` is rank r's): "Error: SENTENCE" when all ranks raised the
/// same, else "Error: rank R: SENTENCE" per distinct sentence, its ranks listed; a rank that only relays another's
/// refusal ("rank N refused: ..." with rank N's own sentence, from `togetherOnEveryRank`) is left out.
func errorLines(_ messages: [String]) -> [String] {
    let own = messages.indices.filter { rank in
        !messages.indices.contains { other in other != rank && messages[rank] == "rank \(other) refused: \(messages[other])" }
    }
    var groups: [(message: String, ranks: [Int])] = []
    for rank in own {
        if let index = groups.firstIndex(where: { $0.message == messages[rank] }) { groups[index].ranks.append(rank) }
        else { groups.append((messages[rank], [rank])) }
    }
    if groups.count == 1 && groups[0].ranks.count == messages.count { return ["Error: \(groups[0].message)"] }
    return groups.map { "Error: rank\($0.ranks.count > 1 ? "s" : "") \($0.ranks.map(String.init).joined(separator: ", ")): \($0.message)" }
}

/// Refuses a command that runs as one process when mpirun started it as several: each rank would do all of the work,
/// print all of it, and write the same files at once. The job's size is what Open MPI's mpirun (OMPI_COMM_WORLD_SIZE)
/// or a PMI launcher such as MPICH's or srun --mpi=pmi2 (PMI_SIZE) tells each process; other launchers are not seen.
func requireOneProcess(_ command: String) throws {
    let environment = ProcessInfo.processInfo.environment
    guard let size = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].lazy.compactMap({ environment[$0].flatMap(Int.init) }).first, size > 1 else { return }
    throw RunError("\(command) runs as one process, and mpirun started \(size); run it without mpirun (train, "
                       + "eval, embed, bench step and bench allreduce are the commands that run on several ranks)")
}
