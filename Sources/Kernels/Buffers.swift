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

/// How much memory this process may still allocate: the smaller of the machine's physical memory and what its
/// address-space limit (`ulimit -v`) leaves beside what the process already maps. Sizes read from files are
/// checked against it before they allocate: a failed allocation traps, a refused one is an error with a sentence.
public enum MemoryBudget {
    /// Bytes this process can still allocate, at best.
    public static var availableBytes: Double {
        var available = Double(ProcessInfo.processInfo.physicalMemory)
        var limit = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &limit) == 0 && limit.rlim_cur != rlim_t.max {
            available = min(available, Double(limit.rlim_cur) - mappedBytes)
        }
        return max(0, available)
    }

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
        func gib(_ value: Double) -> String { String(format: "%.2f GiB", value / 1_073_741_824) }
        return "\(purpose) needs \(gib(bytes)), more than 90% of the \(gib(available)) this process can still allocate"
    }
}
