import ArgumentParser
import Basics
import Data
import Files
import Foundation
import MPI
import Transformer

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
        if runtime.world.size > 1 {
            let commands = try exchangeCommands(runtime.world, status: .running)
            if commands.contains(where: { $0.status != .running }) {
                // A rank stopped before starting its work (`stopBeforeMPI`): its sentence, said by rank 0, ends the job.
                reportStops(runtime.world, commands: commands, message: nil)
                throw RanksStoppedBeforeMPI()
            }
            try requireOneCommand(commands)
        }
        let result = try body(runtime)
        try runtime.finalize()
        return result
    } catch is RanksStoppedBeforeMPI {
        try? runtime.finalize()
        throw ExitCode.failure
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

/// The commands that run on every rank of an mpirun job (`withMPI`); every other command runs as one process.
let commandsOnSeveralRanks = ["train", "eval", "embed", "bench step", "bench allreduce"]

/// Another rank of the job stopped before MPI (`stopBeforeMPI`), and rank 0 has said so: this one stops too.
private struct RanksStoppedBeforeMPI: Error {}

/// What a rank tells the others in the job's first exchange (`exchangeCommands`).
private enum RankStatus: UInt8 {
    /// In `withMPI`, about to run its command.
    case running = 1
    /// Stopped before MPI with an error (a wrong argument, a check before `withMPI`).
    case failed = 2
    /// Stopped before MPI having printed what was asked (`--help`, `--version`).
    case answered = 3
}

/// The job's first collective, made by every rank of a multi-rank job whatever it runs or however it stopped: a
/// fixed-size exchange of each rank's command name and status, so it matches on every rank (a rank that stopped
/// before MPI, or runs another command, would otherwise leave the others waiting in collectives it never makes).
private func exchangeCommands(_ world: Communicator, status: RankStatus) throws -> [(name: String, status: RankStatus)] {
    let width = 64
    let own = Array(commandName.utf8.prefix(width - 1))
    let all = try world.allgather([status.rawValue] + own + [UInt8](repeating: 0, count: width - 1 - own.count))
    return (0..<world.size).map { rank in
        let record = all[(rank * width)..<((rank + 1) * width)]
        return (String(decoding: record.dropFirst().prefix { $0 != 0 }, as: UTF8.self), RankStatus(rawValue: record.first!) ?? .failed)
    }
}

/// Rank 0 prints what the ranks that stopped before MPI said (each rank passes its own `message`: nil for a rank that
/// was running); then every rank waits for it (mpirun ends the job at the first non-zero exit).
private func reportStops(_ world: Communicator, commands: [(name: String, status: RankStatus)], message: String?) {
    let everyRankAnswered = commands.allSatisfy { $0.status == .answered }
    if let gathered = try? world.gather(bytes: Array((message ?? "").utf8), root: 0) {
        if world.rank == 0 {
            let texts = gathered.map { String(decoding: $0, as: UTF8.self) }
            if everyRankAnswered {
                if !texts[0].isEmpty { print(texts[0]) }  // the help every rank was asked for, once
            } else {
                let messages = commands.indices.map { rank -> String? in
                    switch commands[rank].status {
                    case .running: return nil
                    case .failed: return texts[rank].hasPrefix("Error: ") ? String(texts[rank].dropFirst(7)) : texts[rank]
                    case .answered:
                        let command = ["ddp", commands[rank].name].filter { !$0.isEmpty }.joined(separator: " ")
                        return "printed what \(command) was asked for (--help, --version) instead of running it"
                    }
                }
                let stopped = messages.compactMap { $0 }.count
                for line in errorLines(messages) { printToStandardError(line) }
                if stopped < commands.count { printToStandardError("(the other ranks of the job stop with \(stopped == 1 ? "it" : "them"))") }
            }
        }
    } else if let message {
        printToStandardError("rank \(world.rank): \(message)")
    }
    flushStandardOutput()
    try? world.barrier()
}

/// For a process that stops before its command starts MPI (an argument error, `--help`, a refusal before `withMPI`)
/// as one rank of several: it starts MPI and takes part in the job's first exchange saying so, and rank 0 prints each
/// rank's `message` once (`reportStops`), instead of every rank printing the same and, where other ranks do run,
/// leaving them waiting for a rank that never comes (MPI_Init waits for every rank). Returns false when this process
/// runs alone, has started MPI already, or cannot start it, and for an error of a one-process command (not
/// `commandsOnSeveralRanks`, or refused by `requireOneProcess`: `oneProcess`; or no command at all): the caller prints
/// its own message. That error ends the job anyway (mpirun stops every rank at a non-zero exit; srun does with
/// --kill-on-bad-exit, as Launch/slurm.sbatch runs it), and a script that each rank of a job runs, with ddp commands
/// one after another, must not find MPI used up by the first (MPI starts once per rank of a job). `--help` still
/// takes part: it ends with exit 0, which no launcher takes for the end of the job.
func stopBeforeMPI(message: String, isError: Bool, oneProcess: Bool) -> Bool {
    // (`bench step --dry-run` is a one-process command, its argument errors included.)
    let multiRank = commandsOnSeveralRanks.contains(commandName) && !(commandName == "bench step" && CommandLine.arguments.contains("--dry-run"))
    guard launchedWorldSize > 1, !isError || (!oneProcess && multiRank), !MPIRuntime.hasStarted,
          let runtime = try? MPIRuntime.initialize(threadLevel: .serialized) else { return false }
    guard runtime.world.size > 1 else {
        try? runtime.finalize()
        return false
    }
    guard let commands = try? exchangeCommands(runtime.world, status: isError ? .failed : .answered) else {
        // The other ranks may be waiting in the exchange this one could not make: the job ends, with this rank's message.
        flushStandardOutput()
        runtime.world.abort(code: 1, message: message.isEmpty ? "the job's first exchange failed" : message)
    }
    reportStops(runtime.world, commands: commands, message: message)
    try? runtime.finalize()
    return true
}

/// Every rank of a job must run the same command: mpirun's MPMD form (`mpirun -np 1 ddp train ... : -np 1 ddp eval
/// ...`) would otherwise leave each waiting in collectives the others never make. A difference in the names of the
/// job's first exchange (`exchangeCommands`) is an error every rank raises alike (said once).
private func requireOneCommand(_ commands: [(name: String, status: RankStatus)]) throws {
    let names = commands.map(\.name)
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

/// The lines that report every rank's error (`messages[r]` is rank r's, nil for a rank that raised none): "Error: SENTENCE" when all ranks raised the
/// same, else "Error: rank R: SENTENCE" per distinct sentence, its ranks listed; a rank that only relays another's
/// refusal ("rank N refused: ..." with rank N's own sentence, from `togetherOnEveryRank`) is left out.
func errorLines(_ messages: [String?]) -> [String] {
    let own = messages.indices.filter { rank in
        guard let message = messages[rank] else { return false }  // nothing to say
        return !messages.indices.contains { other in other != rank && messages[other].map { message == "rank \(other) refused: \($0)" } == true }
    }
    var groups: [(message: String, ranks: [Int])] = []
    for rank in own {
        let message = messages[rank]!
        if let index = groups.firstIndex(where: { $0.message == message }) { groups[index].ranks.append(rank) }
        else { groups.append((message, [rank])) }
    }
    if groups.count == 1 && groups[0].ranks.count == messages.count { return ["Error: \(groups[0].message)"] }
    return groups.map { "Error: rank\($0.ranks.count > 1 ? "s" : "") \($0.ranks.map(String.init).joined(separator: ", ")): \($0.message)" }
}

/// The number of processes the launcher started this one among, before MPI is started: what Open MPI's mpirun
/// (OMPI_COMM_WORLD_SIZE), a PMI launcher such as MPICH's or srun --mpi=pmi2 (PMI_SIZE), or srun --mpi=pmix (its
/// processes have PMIX_RANK, and the step's size in SLURM_STEP_NUM_TASKS) tells each process; 1 when none says (alone,
/// or a launcher not seen). Processes that a rank starts inherit these: a ddp command in a script run by each rank
/// of a job counts as one of its ranks.
private var launchedWorldSize: Int {
    let environment = ProcessInfo.processInfo.environment
    let sizes = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"] + (environment["PMIX_RANK"] != nil ? ["SLURM_STEP_NUM_TASKS"] : [])
    return sizes.lazy.compactMap({ environment[$0].flatMap(Int.init) }).first ?? 1
}

/// Refuses a command that runs as one process when mpirun started it as several: each rank would do all of the work,
/// print all of it, and write the same files at once (`launchedWorldSize`).
func requireOneProcess(_ command: String) throws {
    let size = launchedWorldSize
    guard size > 1 else { return }
    let several = commandsOnSeveralRanks.dropLast().joined(separator: ", ") + " and " + commandsOnSeveralRanks.last!
    throw OneProcessCommandUnderMPI(description: "\(command) runs as one process, and mpirun (or srun) started \(size); run it "
                                                 + "without mpirun (\(several) are the commands that run on several ranks)")
}

/// A one-process command started as one rank of several (`requireOneProcess`): said by each rank, without MPI.
struct OneProcessCommandUnderMPI: Error, CustomStringConvertible {
    /// The sentence.
    let description: String
}
