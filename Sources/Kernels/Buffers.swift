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
