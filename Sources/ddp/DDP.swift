import ArgumentParser

@main
struct DDP: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ddp",
        abstract: "SwiftDDP: data-parallel transformer training on CPUs over MPI.",
        discussion: """
            Run alone for local mode, or under mpirun (see Launch/mpirun.sh) for data-parallel runs.
            """,
        subcommands: [Prepare.self, Train.self, Eval.self, Generate.self, Embed.self, Inspect.self, Export.self, Import.self, AttentionMaps.self, Plot.self, Bench.self]
    )
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure this machine or cluster.",
        subcommands: [BenchAllreduce.self, BenchStep.self, BenchData.self, BenchDecode.self]
    )
}
