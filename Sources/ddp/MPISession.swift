import ArgumentParser
import Foundation
import MPI

/// Runs `body` with MPI initialised, and finalises it afterwards.
///
/// On an error with other ranks in the job, this rank aborts the whole job with the error's text: the
/// other ranks may be waiting in a collective this rank will never join, and MPI_Finalize would wait
/// for them. Alone, or for an error every rank raised together (`ErrorOnEveryRank`), it finalises and rethrows
/// so each rank's command line prints the error.
func withMPI<Result>(_ body: (MPIRuntime) throws -> Result) throws -> Result {
    // Serialized: the gradient synchronizer's progress thread makes MPI calls while the main thread computes
    // (never both at once).
    let runtime = try MPIRuntime.initialize(threadLevel: .serialized)
    do {
        let result = try body(runtime)
        try runtime.finalize()
        return result
    } catch let error as ErrorOnEveryRank where runtime.world.size > 1 {
        // Every rank prints, then waits for the others to have printed: mpirun ends the job at the first non-zero
        // exit, which would otherwise cut the other ranks short.
        printToStandardError("Error: rank \(runtime.world.rank): \(error)")
        try? runtime.world.barrier()
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

/// Refuses a command that runs as one process when mpirun started it as several: each rank would do all of the work,
/// print all of it, and write the same files at once. The job's size is what Open MPI's mpirun (OMPI_COMM_WORLD_SIZE)
/// or a PMI launcher such as MPICH's or srun --mpi=pmi2 (PMI_SIZE) tells each process; other launchers are not seen.
func requireOneProcess(_ command: String) throws {
    let environment = ProcessInfo.processInfo.environment
    guard let size = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].lazy.compactMap({ environment[$0].flatMap(Int.init) }).first, size > 1 else { return }
    throw RunError("\(command) runs as one process, and mpirun started \(size); run it without mpirun (train, "
                       + "eval, embed, bench step and bench allreduce are the commands that run on several ranks)")
}
