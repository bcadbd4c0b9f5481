// Shape letters used in every kernel comment:
//   B batch, T time (Tq queries, Tk keys), C channels (d_model), H heads, D head size (C / H),
//   F feed-forward width, V vocabulary, N rows (B x T flattened).
// Buffers are row-major. Forward kernels overwrite their outputs; backward kernels ACCUMULATE (+=) into
// gradient buffers, so a tensor used twice (tied embeddings, residual branches) sums its gradients.

/// The one buffer type kernels take: a view into an arena (parameters, gradients, activations).
/// Inputs are read, outputs written; each kernel's comment says which is which.
public typealias FloatBuffer = UnsafeMutableBufferPointer<Float>

@inline(__always)
func requireCount(_ buffer: FloatBuffer, _ count: Int, _ name: StaticString, function: StaticString = #function) {
    precondition(buffer.count >= count, "\(function): \(name) holds \(buffer.count) floats, needs \(count)")
}

#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// How much memory this process may still allocate: the smallest of the machine's physical memory, what its
/// address-space limit (`ulimit -v`) leaves beside what the process already maps, and what its control group's
/// memory limit (a container's, a job's: cgroup v2 `memory.max`, or v1 `memory.limit_in_bytes`) leaves beside what
/// the group uses. Sizes read from files are checked against it before they allocate: a failed allocation traps (or
/// the kernel kills the process), a refused one is an error with a sentence.
public enum MemoryBudget {
    /// Bytes this process can still allocate, at best.
    public static var availableBytes: Double { limits.map(\.bytes).min() ?? 0 }

    /// `availableBytes` in GiB with the limit that sets it: "3.20 GiB (ulimit -v)".
    public static var availableDescription: String {
        let smallest = limits.min { $0.bytes < $1.bytes }
        return gibibytes(smallest?.bytes ?? 0) + " (\(smallest?.name ?? "physical memory"))"
    }

    /// "2.73 GiB", or below 1 GiB "41.2 MiB" (so a small amount is not "0.00 GiB").
    static func gibibytes(_ bytes: Double) -> String {
        bytes >= 1_073_741_824 ? String(format: "%.2f GiB", bytes / 1_073_741_824) : String(format: "%.1f MiB", bytes / 1_048_576)
    }

    /// Each limit that applies, by name, with the bytes it leaves (never negative).
    static var limits: [(name: String, bytes: Double)] {
        var limits = [(name: "physical memory", bytes: Double(ProcessInfo.processInfo.physicalMemory))]
        var limit = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &limit) == 0 && limit.rlim_cur != rlim_t.max {
            limits.append((name: "ulimit -v, beside \(blasBufferBytes >> 20) MiB per compute thread kept for OpenBLAS",
                           bytes: max(0, Double(limit.rlim_cur) - mappedBytes - openBLASReserve)))
        }
        if let group = controlGroupBytesLeft { limits.append((name: "the control group's memory limit", bytes: max(0, group))) }
        return limits
    }

    /// What this process's control group may still allocate (its limit less its use), or nil without a limit.
    static var controlGroupBytesLeft: Double? {
        func number(_ path: String) -> Double? {
            (try? String(contentsOfFile: path, encoding: .utf8)).flatMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        // The groups /proc/self/cgroup names: "0::/path" (v2), "N:memory:/path" (v1's memory controller). Inside a
        // container the path may not exist under its own /sys/fs/cgroup, whose root is then the group itself.
        let membership = ((try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) ?? "").split(separator: "\n")
            .map { $0.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false).map(String.init) }.filter { $0.count == 3 }
        func path(controllers: String) -> String? { membership.first { $0[0] != "0" ? $0[1] == controllers : controllers.isEmpty }?[2] }
        // cgroup v2 ("max", no limit, is not a number).
        if let path = path(controllers: "") {
            for directory in ["/sys/fs/cgroup" + path, "/sys/fs/cgroup"] {
                if let limit = number(directory + "/memory.max") { return limit - (number(directory + "/memory.current") ?? 0) }
            }
        }
        // cgroup v1 (a limit near 2^63 is none).
        for directory in [path(controllers: "memory").map { "/sys/fs/cgroup/memory" + $0 }, "/sys/fs/cgroup/memory"].compactMap({ $0 }) {
            if let limit = number(directory + "/memory.limit_in_bytes") {
                return limit < 1e18 ? limit - (number(directory + "/memory.usage_in_bytes") ?? 0) : nil
            }
        }
        return nil
    }

    /// The address space OpenBLAS maps for its work buffer in each thread that calls it (BUFFER_SIZE in its build:
    /// 128 MiB on x86-64), kept out of what `ulimit -v` leaves: when that map fails, OpenBLAS retries it forever, so a
    /// model that took the room would hang the process at its first matrix product instead of being refused. (Kept
    /// whether or not the buffers are mapped yet: an overestimate by up to this much once they are.)
    public static let blasBufferBytes = 128 << 20
    static var openBLASReserve: Double { Double(blasBufferBytes) * Double(max(1, computeThreads)) }

    /// Bytes the process maps now (virtual size, /proc/self/statm), or 0 where that cannot be read.
    static var mappedBytes: Double {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
              let pages = text.split(separator: " ").first.flatMap({ Double($0) }) else { return 0 }
        return pages * Double(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// Nil when `bytes` fit in what is available, else a sentence saying what `purpose` needs and what there is.
    public static func shortfall(_ bytes: Double, for purpose: String) -> String? {
        let available = availableBytes
        guard bytes > available * 0.9 else { return nil }
        return "\(purpose) needs \(gibibytes(bytes)), more than 90% of the " + availableDescription
            + " this process can still allocate"
    }
}
