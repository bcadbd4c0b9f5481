import CMPI
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// MPI thread support levels, weakest first (`MPI_THREAD_SINGLE` ... `MPI_THREAD_MULTIPLE`).
public enum ThreadLevel: Int, Sendable, CaseIterable, Comparable, CustomStringConvertible {
    /// MPI_THREAD_SINGLE (one thread), MPI_THREAD_FUNNELED (only the main thread calls MPI), MPI_THREAD_SERIALIZED (any
    /// thread, one at a time), MPI_THREAD_MULTIPLE (any thread, concurrently).
    case single, funneled, serialized, multiple

    init(mpiValue: Int32) {
        switch mpiValue {
        case swiftddp_MPI_THREAD_MULTIPLE(): self = .multiple
        case swiftddp_MPI_THREAD_SERIALIZED(): self = .serialized
        case swiftddp_MPI_THREAD_FUNNELED(): self = .funneled
        default: self = .single
        }
    }

    var mpiValue: Int32 {
        switch self {
        case .single: return swiftddp_MPI_THREAD_SINGLE()
        case .funneled: return swiftddp_MPI_THREAD_FUNNELED()
        case .serialized: return swiftddp_MPI_THREAD_SERIALIZED()
        case .multiple: return swiftddp_MPI_THREAD_MULTIPLE()
        }
    }

    /// Orders levels by the support they give: `.single` < `.funneled` < `.serialized` < `.multiple`.
    public static func < (a: ThreadLevel, b: ThreadLevel) -> Bool { a.rawValue < b.rawValue }
    /// The level as MPI names it without its prefix ("single", "funneled", "serialized", "multiple").
    public var description: String { ["single", "funneled", "serialized", "multiple"][rawValue] }
}

/// The process-wide MPI environment. MPI may be initialised once per process and finalised once;
/// this type enforces that and hands out the world communicator.
///
/// It works both under `mpirun` and in a process started alone (MPI's singleton mode, world size 1),
/// which is what local mode uses.
///
/// Not `Sendable`: the world communicator it owns must be used from one thread at a time unless MPI
/// provided `.multiple`.
public final class MPIRuntime {
    /// `started`: MPI_Init_thread was called and failed (MPI cannot be started again).
    private enum Phase { case fresh, started, running, finalized }
    private static let phase = Mutex(Phase.fresh)
    private static let level = Mutex<ThreadLevel?>(nil)

    /// The thread level MPI provides in this process, or nil before `initialize` (for code that only holds a
    /// communicator and must know whether another thread may make MPI calls).
    public static var threadLevel: ThreadLevel? { level.withLock { $0 } }

    /// The thread level asked for, and what the MPI library actually provides (it may be lower).
    public let requestedThreadLevel: ThreadLevel
    /// The thread level the MPI library provides (MPI_Query_thread after MPI_Init_thread), which may be below the one
    /// requested.
    public let providedThreadLevel: ThreadLevel
    /// MPI_COMM_WORLD, with errors returned rather than fatal.
    public let world: Communicator

    private init(requested: ThreadLevel, provided: ThreadLevel, world: Communicator) {
        self.requestedThreadLevel = requested
        self.providedThreadLevel = provided
        self.world = world
    }

    /// Open MPI's nonblocking allreduce (coll/libnbc) uses a binomial tree for fewer than 4 ranks or an in-place
    /// buffer, which is every gradient bucket: the tree sends the whole bucket up, then the sum back down, so each
    /// direction of a link is idle half the time and the last bucket after backward takes twice as long as in a
    /// ring (2 hosts at 1 Gbit/s, bf16: about 9% of each step waiting for communication instead of 3-5%).
    /// `initialize` asks for the ring unless the environment already chooses an algorithm; other MPI libraries
    /// ignore the variable.
    public static let ringAllreduceSetting = (parameter: "coll_libnbc_iallreduce_algorithm", value: 1)
    /// Where Open MPI reads that parameter from: the environment variable OMPI_MCA_ + its name.
    public static var ringAllreduceVariable: String { "OMPI_MCA_" + ringAllreduceSetting.parameter }

    /// Initialises MPI with the requested thread level. A second call in the same process throws
    /// `.alreadyInitialized` (also after a failed call or `finalize()`: MPI cannot be initialised again).
    public static func initialize(threadLevel: ThreadLevel = .funneled) throws(MPIError) -> MPIRuntime {
        try phase.withLock { (phase: inout Phase) throws(MPIError) in
            guard phase == .fresh else {
                throw MPIError(.alreadyInitialized, operation: "MPI_Init_thread",
                               message: "MPI is already initialised in this process (it can be initialised once)")
            }
            var alreadyUp: Int32 = 0
            try mpiCheck(MPI_Initialized(&alreadyUp), "MPI_Initialized")
            guard alreadyUp == 0 else {
                throw MPIError(.alreadyInitialized, operation: "MPI_Init_thread",
                               message: "MPI was initialised outside MPIRuntime")
            }
            // Read by Open MPI during MPI_Init_thread; 0: a value the user set wins.
            setenv(ringAllreduceVariable, String(ringAllreduceSetting.value), 0)
            var provided: Int32 = 0
            phase = .started
            try mpiCheck(MPI_Init_thread(nil, nil, threadLevel.mpiValue, &provided), "MPI_Init_thread")
            phase = .running
        }
        var provided: Int32 = 0
        try mpiCheck(MPI_Query_thread(&provided), "MPI_Query_thread")
        let world = try Communicator(world: ())
        level.withLock { $0 = ThreadLevel(mpiValue: provided) }
        return MPIRuntime(requested: threadLevel, provided: ThreadLevel(mpiValue: provided), world: world)
    }

    /// The value of one of the MPI library's integer control variables (MPI_T), such as an Open MPI MCA parameter
    /// (`coll_libnbc_iallreduce_algorithm`), or nil when the library has no variable of that name. Shows what the
    /// library actually uses, whatever the environment says.
    public static func integerControlVariable(named name: String) throws(MPIError) -> Int? {
        let operation = "reading MPI control variable '\(name)'"
        var provided: Int32 = 0
        try mpiCheck(MPI_T_init_thread(swiftddp_MPI_THREAD_SINGLE(), &provided), operation)
        defer { MPI_T_finalize() }
        var index: Int32 = 0
        let found = MPI_T_cvar_get_index(name, &index)
        if found == swiftddp_MPI_T_ERR_INVALID_NAME() { return nil }
        try mpiCheck(found, operation)
        var datatype: MPI_Datatype? = nil
        var verbosity: Int32 = 0, binding: Int32 = 0, scope: Int32 = 0
        try mpiCheck(MPI_T_cvar_get_info(index, nil, nil, &verbosity, &datatype, nil, nil, nil, &binding, &scope), operation)
        guard datatype == swiftddp_MPI_INT(), binding == Int32(MPI_T_BIND_NO_OBJECT) else {
            throw MPIError(.invalidArgument, operation: operation, message: "it is not a single integer")
        }
        var handle: MPI_T_cvar_handle? = nil
        var count: Int32 = 0
        try mpiCheck(MPI_T_cvar_handle_alloc(index, nil, &handle, &count), operation)
        defer { MPI_T_cvar_handle_free(&handle) }
        guard count == 1 else {
            throw MPIError(.invalidArgument, operation: operation, message: "it holds \(count) values, not one")
        }
        var value: Int32 = 0
        try mpiCheck(MPI_T_cvar_read(handle, &value), operation)
        return Int(value)
    }

    /// True while MPI is initialised and not yet finalised in this process.
    public static var isRunning: Bool {
        phase.withLock { $0 == .running }
    }

    /// True once `initialize` has called MPI_Init_thread in this process, whether it succeeded or not, also after
    /// `finalize`: MPI cannot be started again.
    public static var hasStarted: Bool {
        phase.withLock { $0 != .fresh }
    }

    /// Finalises MPI (collective: every rank must call it). Calling it again does nothing.
    public func finalize() throws(MPIError) {
        try Self.phase.withLock { (phase: inout Phase) throws(MPIError) in
            guard phase == .running else { return }
            phase = .finalized
            try mpiCheck(MPI_Finalize(), "MPI_Finalize", rank: world.rank)
        }
    }
}
