import Kernels

/// Multi-head scaled dot-product attention ("Attention Is All You Need" §3.2.2; torch.nn.MultiheadAttention with
/// separate q/k/v/o projections and biases):
///   Q = x·Wqᵀ + bq, K = m·Wkᵀ + bk, V = m·Wvᵀ + bv;  headᵢ = softmax(QᵢKᵢᵀ/√D + mask)·Vᵢ;  out = [head₁…head_H]·Woᵀ + bo
/// with m = x for self-attention (causal in a decoder) and m = the encoder's output for cross-attention.
struct MultiHeadAttention {
    enum Kind: Equatable {
        /// Queries and keys from the same sequence; causal: position i sees keys 0...i (a decoder).
        case selfAttention(causal: Bool)
        /// Queries from the decoder, keys and values from the encoder's output (its padding masked).
        case cross
    }

    let kind: Kind
    /// The projections' name prefix: `decoder.layers.0.self_attn`.
    let prefix: String
    let q: Linear, k: Linear, v: Linear, o: Linear
    let heads: Int

    /// `prefix` names the projections: "decoder.layers.0.self_attn" → `...q_proj.weight` and so on.
    init(kind: Kind, prefix: String, heads: Int, layout: ParameterLayout) {
        self.kind = kind
        self.prefix = prefix
        (q, k, v, o) = (Linear("\(prefix).q_proj", layout: layout), Linear("\(prefix).k_proj", layout: layout),
                        Linear("\(prefix).v_proj", layout: layout), Linear("\(prefix).o_proj", layout: layout))
        self.heads = heads
    }

    /// Parameter names and shapes, in layout order.
    static func parameters(prefix: String, channels c: Int) -> [(String, [Int])] {
        ["q", "k", "v", "o"].flatMap { [("\(prefix).\($0)_proj.weight", [c, c]), ("\(prefix).\($0)_proj.bias", [c])] }
    }

    /// Where the attention's parameters start in the arena.
    var firstParameterOffset: Int { q.weight.offset }

    struct Activations {
        let q: FloatBuffer              // [B·Tq, C]
        let k: FloatBuffer              // [B·Tk, C]
        let v: FloatBuffer              // [B·Tk, C]
        let context: FloatBuffer        // [B·Tq, C] the heads' outputs, side by side
        let logSumExp: FloatBuffer      // [B, H, Tq] each query's softmax normaliser (the tiled kernel keeps no probabilities)
        let output: FloatBuffer         // [B·Tq, C]

        init(batch: Int, queryTime: Int, keyTime: Int, channels c: Int, heads: Int, arena: ActivationArena) {
            q = arena.carve(batch * queryTime * c)
            k = arena.carve(batch * keyTime * c)
            v = arena.carve(batch * keyTime * c)
            context = arena.carve(batch * queryTime * c)
            logSumExp = arena.carve(batch * heads * queryTime)
            output = arena.carve(batch * queryTime * c)
        }
    }

    /// a.output[B·Tq, C] from queries of `queriesFrom` [B·Tq, C] and keys and values of `keysFrom` [B·Tk, C].
    /// `keyPadding` [B·Tk]: true where a key is padding (self-attention in an encoder, cross-attention).
    func forward(queriesFrom: FloatBuffer, keysFrom: FloatBuffer, _ a: Activations, batch: Int, queryTime: Int, keyTime: Int,
                 keyPadding: UnsafeBufferPointer<Bool>?, parameters: Arena) -> FloatBuffer {
        let c = q.outFeatures, queryRows = batch * queryTime, keyRows = batch * keyTime
        q.forward(out: a.q, inp: queriesFrom, rows: queryRows, parameters: parameters)
        k.forward(out: a.k, inp: keysFrom, rows: keyRows, parameters: parameters)
        v.forward(out: a.v, inp: keysFrom, rows: keyRows, parameters: parameters)
        flashAttentionForward(out: a.context, logSumExp: a.logSumExp, q: a.q, k: a.k, v: a.v, mask: mask(keyPadding: keyPadding),
                              batch: batch, queryTime: queryTime, keyTime: keyTime, channels: c, heads: heads)
        o.forward(out: a.output, inp: a.context, rows: queryRows, parameters: parameters)
        return a.output
    }

    private func mask(keyPadding: UnsafeBufferPointer<Bool>?) -> AttentionMask {
        switch kind {
        case .selfAttention(let causal): return AttentionMask(causal: causal, keyPadding: causal ? nil : keyPadding)
        case .cross: return AttentionMask(causal: false, keyPadding: keyPadding)
        }
    }

    /// Adds ∂L/∂(queriesFrom) to `dQueriesFrom` and ∂L/∂(keysFrom) to `dKeysFrom` (the same buffer for self-attention)
    /// given ∂L/∂(output) `dOut`, and every projection's gradients; `keyPadding` is the forward's.
    func backward(dOut: FloatBuffer, queriesFrom: FloatBuffer, dQueriesFrom: FloatBuffer, keysFrom: FloatBuffer,
                  dKeysFrom: FloatBuffer, _ a: Activations, batch: Int, queryTime: Int, keyTime: Int,
                  keyPadding: UnsafeBufferPointer<Bool>?, scratch: BackwardScratch, parameters: Arena, gradients: Arena) {
        let c = q.outFeatures, queryRows = batch * queryTime, keyRows = batch * keyTime
        func zero(_ buffer: FloatBuffer, _ count: Int) { buffer.baseAddress!.update(repeating: 0, count: count) }
        zero(scratch.dContext, queryRows * c)
        o.backward(dInp: scratch.dContext, dOut: dOut, inp: a.context, rows: queryRows, parameters: parameters, gradients: gradients)
        zero(scratch.dQ, queryRows * c)
        zero(scratch.dK, keyRows * c)
        zero(scratch.dV, keyRows * c)
        flashAttentionBackward(dQ: scratch.dQ, dK: scratch.dK, dV: scratch.dV, dOut: scratch.dContext, q: a.q, k: a.k, v: a.v,
                               out: a.context, logSumExp: a.logSumExp, mask: mask(keyPadding: keyPadding), batch: batch,
                               queryTime: queryTime, keyTime: keyTime, channels: c, heads: heads)
        q.backward(dInp: dQueriesFrom, dOut: scratch.dQ, inp: queriesFrom, rows: queryRows, parameters: parameters, gradients: gradients)
        k.backward(dInp: dKeysFrom, dOut: scratch.dK, inp: keysFrom, rows: keyRows, parameters: parameters, gradients: gradients)
        v.backward(dInp: dKeysFrom, dOut: scratch.dV, inp: keysFrom, rows: keyRows, parameters: parameters, gradients: gradients)
    }

    /// The softmax weights of the last forward through `a` [B, H, Tq, Tk], recomputed from the tiled kernel's
    /// log-sum-exp under this attention's own mask (`keyPadding` the forward's), for pictures of attention.
    func probabilities(_ a: Activations, batch: Int, queryTime: Int, keyTime: Int, keyPadding: UnsafeBufferPointer<Bool>?) -> [Float] {
        var probabilities = [Float](repeating: 0, count: batch * heads * queryTime * keyTime)
        probabilities.withUnsafeMutableBufferPointer { probs in
            flashAttentionProbabilities(probs: probs, q: a.q, k: a.k, logSumExp: a.logSumExp, mask: mask(keyPadding: keyPadding),
                                        batch: batch, queryTime: queryTime, keyTime: keyTime, channels: q.outFeatures, heads: heads)
        }
        return probabilities
    }

    // MARK: Decoding (one position, cached keys and values)

    /// Keys and values kept across decoding steps, per row: [R, capacity, C] each.
    struct Cache {
        let keys: FloatBuffer
        let values: FloatBuffer
        let capacity: Int

        init(rows: Int, capacity: Int, channels: Int, arena: ActivationArena) {
            keys = arena.carve(rows * capacity * channels)
            values = arena.carve(rows * capacity * channels)
            self.capacity = capacity
        }
    }

    /// The workspace of one decoding step, shared by every layer in turn.
    struct StepActivations {
        let q: FloatBuffer, k: FloatBuffer, v: FloatBuffer  // [R, C]
        let context: FloatBuffer                            // [R, C]
        let output: FloatBuffer                             // [R, C]
        let scores: FloatBuffer                             // [R, H, longest cache]

        init(rows: Int, channels c: Int, heads: Int, longestCache: Int, arena: ActivationArena) {
            (q, k, v) = (arena.carve(rows * c), arena.carve(rows * c), arena.carve(rows * c))
            context = arena.carve(rows * c)
            output = arena.carve(rows * c)
            scores = arena.carve(rows * heads * longestCache)
        }
    }

    /// Cross-attention: the keys and values of one encoded source `memory` [S, C] into row `row` of `cache`.
    func cacheSource(_ memory: FloatBuffer, length: Int, row: Int, in cache: Cache, parameters: Arena) {
        let c = q.outFeatures, start = row * cache.capacity * c
        k.forward(out: FloatBuffer(rebasing: cache.keys[start...]), inp: memory, rows: length, parameters: parameters)
        v.forward(out: FloatBuffer(rebasing: cache.values[start...]), inp: memory, rows: length, parameters: parameters)
    }

    /// One new query per row at `position` (self-attention: its key and value join the cache first) attending over
    /// `length` cached keys; returns s.output [R, C].
    func step(input: FloatBuffer, rows: Int, position: Int, length: Int, cache: Cache, keyPadding: UnsafeBufferPointer<Bool>?,
              _ s: StepActivations, parameters: Arena) -> FloatBuffer {
        let c = q.outFeatures
        q.forward(out: s.q, inp: input, rows: rows, parameters: parameters)
        if case .selfAttention = kind {
            k.forward(out: s.k, inp: input, rows: rows, parameters: parameters)
            v.forward(out: s.v, inp: input, rows: rows, parameters: parameters)
            for r in 0..<rows {
                let slot = (r * cache.capacity + position) * c
                (cache.keys.baseAddress! + slot).update(from: s.k.baseAddress! + r * c, count: c)
                (cache.values.baseAddress! + slot).update(from: s.v.baseAddress! + r * c, count: c)
            }
        }
        cachedAttentionForward(out: s.context, scratch: s.scores, q: s.q, keys: cache.keys, values: cache.values,
                               keyPadding: keyPadding, rows: rows, length: length, capacity: cache.capacity, channels: c,
                               heads: heads)
        o.forward(out: s.output, inp: s.context, rows: rows, parameters: parameters)
        return s.output
    }
}
