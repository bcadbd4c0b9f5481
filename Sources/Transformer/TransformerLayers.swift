import Kernels

/// What one forward or backward pass of the model shares with every layer.
struct Pass {
    let parameters: Arena
    let gradients: Arena
    let scratch: BackwardScratch
    /// Dropout probability while training (0 while evaluating), and this step's seed.
    let dropoutProbability: Float
    let dropoutSeed: UInt64
    /// Training: GELU keeps its derivative for backward.
    let keepDerivatives: Bool
    /// Called during backward with the arena range of parameters whose gradients are final for this pass.
    let gradientsFinal: ((Range<Int>) -> Void)?

    /// The dropout of one site of the model for this step (off while evaluating).
    func dropout(site: UInt64) -> Dropout {
        guard dropoutProbability > 0 else { return .off }
        return Dropout(probability: dropoutProbability, seed: dropoutSeed &* 0x9E37_79B9_7F4A_7C15 &+ site &* 0xD1B5_4A32_D192_ED03)
    }
}

/// Zeroed gradient buffers handed out in turn during a stack's backward: each block writes ∂L/∂(its input) into a
/// fresh one while reading ∂L/∂(its output) from the previous one.
struct GradientPingPong {
    let first: FloatBuffer, second: FloatBuffer
    let count: Int

    /// A zeroed buffer that is not `current`.
    func next(after current: FloatBuffer) -> FloatBuffer {
        let buffer = first.baseAddress == current.baseAddress ? second : first
        buffer.baseAddress!.update(repeating: 0, count: count)
        return buffer
    }
}

extension ResidualConnection {
    /// The block's output y in `a`: LN(x + f) (post-norm) or x + f (pre-norm).
    func output(_ a: Activations) -> FloatBuffer { placement == .post ? a.normalized.out : a.sum }

    /// The arena range of the block's parameters: its sublayer's, from `firstParameterOffset`, through its norm's.
    func parameterRange(from firstParameterOffset: Int) -> Range<Int> {
        firstParameterOffset..<norm.parameterRange.upperBound
    }
}

/// Multi-head attention in its residual connection: self-attention (keys from the block's own input, causal in a
/// decoder) or cross-attention (keys from the encoder's memory).
struct AttentionBlock {
    let attention: MultiHeadAttention
    let residual: ResidualConnection

    struct Activations {
        let residual: ResidualConnection.Activations  // [B·Tq, C]
        let attention: MultiHeadAttention.Activations

        init(batch: Int, queryTime: Int, keyTime: Int, config: ModelConfig, arena: ActivationArena) {
            residual = ResidualConnection.Activations(rows: batch * queryTime, channels: config.dModel, arena: arena)
            attention = MultiHeadAttention.Activations(batch: batch, queryTime: queryTime, keyTime: keyTime, channels: config.dModel,
                                                       heads: config.heads, arena: arena)
        }
    }

    /// The block's output in `a` [B·T, C].
    func output(_ a: Activations) -> FloatBuffer { residual.output(a.residual) }

    /// y[B·T, C] of x[B·T, C]: keys from x itself (masking `keyPadding` [B·T] when given), or from `memory`.
    func forward(x: FloatBuffer, _ a: Activations, batch: Int, time: Int, keyPadding: UnsafeBufferPointer<Bool>? = nil,
                 memory: DecoderLayer.Memory? = nil, pass: Pass) -> FloatBuffer {
        residual.forward(x: x, a.residual, rows: batch * time, channels: attention.q.outFeatures,
                         dropout: pass.dropout(site: residual.dropoutSite), parameters: pass.parameters) { input in
            attention.forward(queriesFrom: input, keysFrom: memory?.states ?? input, a.attention, batch: batch, queryTime: time,
                              keyTime: memory?.time ?? time, keyPadding: memory?.padding ?? keyPadding, parameters: pass.parameters)
        }
    }

    /// Adds ∂L/∂x to `dX` given ∂L/∂y (and ∂L/∂memory to `memory.gradient`), then reports the block's parameters;
    /// `keyPadding` and `memory` are the forward's.
    func backward(dY: FloatBuffer, dX: FloatBuffer, x: FloatBuffer, _ a: Activations, batch: Int, time: Int,
                  keyPadding: UnsafeBufferPointer<Bool>? = nil, memory: DecoderLayer.Memory? = nil, pass: Pass) {
        residual.backward(dY: dY, dX: dX, x: x, a.residual, rows: batch * time, channels: attention.q.outFeatures,
                          dropout: pass.dropout(site: residual.dropoutSite), scratch: pass.scratch, parameters: pass.parameters,
                          gradients: pass.gradients) { dOutput, input, dInput in
            attention.backward(dOut: dOutput, queriesFrom: input, dQueriesFrom: dInput, keysFrom: memory?.states ?? input,
                               dKeysFrom: memory?.gradient ?? dInput, a.attention, batch: batch, queryTime: time,
                               keyTime: memory?.time ?? time, keyPadding: memory?.padding ?? keyPadding, scratch: pass.scratch,
                               parameters: pass.parameters, gradients: pass.gradients)
        }
        pass.gradientsFinal?(residual.parameterRange(from: attention.firstParameterOffset))
    }
}

/// The position-wise feed-forward network in its residual connection.
struct FeedForwardBlock {
    let feedForward: FeedForward
    let residual: ResidualConnection

    struct Activations {
        let residual: ResidualConnection.Activations  // [N, C]
        let feedForward: FeedForward.Activations

        init(rows: Int, config: ModelConfig, arena: ActivationArena) {
            residual = ResidualConnection.Activations(rows: rows, channels: config.dModel, arena: arena)
            feedForward = FeedForward.Activations(rows: rows, channels: config.dModel, hidden: config.dFF, arena: arena)
        }
    }

    /// The block's output in `a` [N, C].
    func output(_ a: Activations) -> FloatBuffer { residual.output(a.residual) }

    /// y[N, C] of x[N, C].
    func forward(x: FloatBuffer, _ a: Activations, rows: Int, pass: Pass) -> FloatBuffer {
        residual.forward(x: x, a.residual, rows: rows, channels: feedForward.fc2.outFeatures, dropout: pass.dropout(site: residual.dropoutSite),
                         parameters: pass.parameters) { input in
            feedForward.forward(input: input, a.feedForward, rows: rows, keepingDerivative: pass.keepDerivatives, parameters: pass.parameters)
        }
    }

    /// Adds ∂L/∂x to `dX` given ∂L/∂y, then reports the block's parameters.
    func backward(dY: FloatBuffer, dX: FloatBuffer, x: FloatBuffer, _ a: Activations, rows: Int, pass: Pass) {
        residual.backward(dY: dY, dX: dX, x: x, a.residual, rows: rows, channels: feedForward.fc2.outFeatures,
                          dropout: pass.dropout(site: residual.dropoutSite), scratch: pass.scratch, parameters: pass.parameters,
                          gradients: pass.gradients) { dOutput, input, dInput in
            feedForward.backward(dOut: dOutput, input: input, dInput: dInput, a.feedForward, rows: rows, scratch: pass.scratch,
                                 parameters: pass.parameters, gradients: pass.gradients)
        }
        pass.gradientsFinal?(residual.parameterRange(from: feedForward.firstParameterOffset))
    }
}

/// One encoder layer (§3.1): bidirectional self-attention over the source (padding masked), then the feed-forward
/// network, each in a residual connection (norm1, norm2).
struct EncoderLayer {
    let selfAttention: AttentionBlock
    let feedForward: FeedForwardBlock

    /// Dropout sites an encoder layer uses (its two residual connections).
    static let sites: UInt64 = 2

    /// Layer `index` of the encoder; its two dropout sites start at `firstSite`.
    init(index: Int, config: ModelConfig, layout: ParameterLayout, firstSite: UInt64) {
        let prefix = "encoder.layers.\(index)"
        func residual(_ norm: Int, site: UInt64) -> ResidualConnection {
            ResidualConnection(norm: LayerNorm("\(prefix).norm\(norm)", layout: layout), placement: config.norm, dropoutSite: site)
        }
        selfAttention = AttentionBlock(attention: MultiHeadAttention(kind: .selfAttention(causal: false), prefix: "\(prefix).self_attn",
                                                                     heads: config.heads, layout: layout),
                                       residual: residual(1, site: firstSite))
        feedForward = FeedForwardBlock(feedForward: FeedForward(prefix: "\(prefix).ffn", activation: config.activation, layout: layout),
                                       residual: residual(2, site: firstSite + 1))
    }

    /// Parameter names and shapes of layer `index`, in layout order.
    static func parameters(index: Int, config: ModelConfig) -> [(String, [Int])] {
        let prefix = "encoder.layers.\(index)", c = config.dModel
        return MultiHeadAttention.parameters(prefix: "\(prefix).self_attn", channels: c) + normParameters("\(prefix).norm1", c)
            + FeedForward.parameters(prefix: "\(prefix).ffn", channels: c, hidden: config.dFF) + normParameters("\(prefix).norm2", c)
    }

    struct Activations {
        let selfAttention: AttentionBlock.Activations  // [B·T, C] and [B, H, T] (log-sum-exp)
        let feedForward: FeedForwardBlock.Activations  // [B·T, C] and [B·T, F]

        init(batch: Int, time: Int, config: ModelConfig, arena: ActivationArena) {
            selfAttention = AttentionBlock.Activations(batch: batch, queryTime: time, keyTime: time, config: config, arena: arena)
            feedForward = FeedForwardBlock.Activations(rows: batch * time, config: config, arena: arena)
        }
    }

    /// The layer's output in `a`, y[B·T, C].
    func output(_ a: Activations) -> FloatBuffer { feedForward.output(a.feedForward) }

    /// y[B·T, C] of x[B·T, C]; `padding` [B·T] marks the source's padding.
    func forward(x: FloatBuffer, _ a: Activations, batch: Int, time: Int, padding: UnsafeBufferPointer<Bool>, pass: Pass) -> FloatBuffer {
        let attended = selfAttention.forward(x: x, a.selfAttention, batch: batch, time: time, keyPadding: padding, pass: pass)
        return feedForward.forward(x: attended, a.feedForward, rows: batch * time, pass: pass)
    }

    /// ∂L/∂x (a buffer from `buffers`) given ∂L/∂y and the forward's `padding`; each block reports its parameters as
    /// their gradients become final.
    func backward(dY: FloatBuffer, x: FloatBuffer, _ a: Activations, batch: Int, time: Int, padding: UnsafeBufferPointer<Bool>,
                  buffers: GradientPingPong, pass: Pass) -> FloatBuffer {
        let dAttended = buffers.next(after: dY)
        feedForward.backward(dY: dY, dX: dAttended, x: selfAttention.output(a.selfAttention), a.feedForward, rows: batch * time, pass: pass)
        let dX = buffers.next(after: dAttended)
        selfAttention.backward(dY: dAttended, dX: dX, x: x, a.selfAttention, batch: batch, time: time, keyPadding: padding, pass: pass)
        return dX
    }
}

/// One decoder layer (§3.1): causal self-attention, then (encoder-decoder models) cross-attention over the encoder's
/// output, then the feed-forward network, each in a residual connection (norm1, norm2 and norm3, or norm1 and norm2
/// for a decoder-only model).
struct DecoderLayer {
    let selfAttention: AttentionBlock
    let crossAttention: AttentionBlock?
    let feedForward: FeedForwardBlock

    /// Layer `index` of the decoder; its dropout sites start at `firstSite`.
    init(index: Int, config: ModelConfig, layout: ParameterLayout, firstSite: UInt64) {
        let prefix = "decoder.layers.\(index)", hasCross = Self.hasCrossAttention(config)
        func residual(_ norm: Int, site: UInt64) -> ResidualConnection {
            ResidualConnection(norm: LayerNorm("\(prefix).norm\(norm)", layout: layout), placement: config.norm, dropoutSite: site)
        }
        selfAttention = AttentionBlock(attention: MultiHeadAttention(kind: .selfAttention(causal: true), prefix: "\(prefix).self_attn",
                                                                     heads: config.heads, layout: layout),
                                       residual: residual(1, site: firstSite))
        crossAttention = hasCross
            ? AttentionBlock(attention: MultiHeadAttention(kind: .cross, prefix: "\(prefix).cross_attn", heads: config.heads, layout: layout),
                             residual: residual(2, site: firstSite + 1))
            : nil
        feedForward = FeedForwardBlock(feedForward: FeedForward(prefix: "\(prefix).ffn", activation: config.activation, layout: layout),
                                       residual: residual(Int(Self.sites(config)), site: firstSite + Self.sites(config) - 1))
    }

    /// Whether the decoder layers of `config` attend to an encoder's output.
    static func hasCrossAttention(_ config: ModelConfig) -> Bool { config.kind == .encoderDecoder }

    /// Dropout sites, and residual connections (norm1 ... normN), a decoder layer has.
    static func sites(_ config: ModelConfig) -> UInt64 { hasCrossAttention(config) ? 3 : 2 }

    /// Parameter names and shapes of layer `index`, in layout order.
    static func parameters(index: Int, config: ModelConfig) -> [(String, [Int])] {
        let prefix = "decoder.layers.\(index)", c = config.dModel
        var entries = MultiHeadAttention.parameters(prefix: "\(prefix).self_attn", channels: c) + normParameters("\(prefix).norm1", c)
        if hasCrossAttention(config) {
            entries += MultiHeadAttention.parameters(prefix: "\(prefix).cross_attn", channels: c) + normParameters("\(prefix).norm2", c)
        }
        let last = sites(config)
        return entries + FeedForward.parameters(prefix: "\(prefix).ffn", channels: c, hidden: config.dFF)
            + normParameters("\(prefix).norm\(last)", c)
    }

    struct Activations {
        let selfAttention: AttentionBlock.Activations    // [B·T, C] and [B, H, T] (log-sum-exp)
        let crossAttention: AttentionBlock.Activations?  // [B·T, C] and [B, H, T] (log-sum-exp)
        let feedForward: FeedForwardBlock.Activations    // [B·T, C] and [B·T, F]

        init(batch: Int, time: Int, sourceTime: Int, config: ModelConfig, arena: ActivationArena) {
            selfAttention = AttentionBlock.Activations(batch: batch, queryTime: time, keyTime: time, config: config, arena: arena)
            crossAttention = DecoderLayer.hasCrossAttention(config)
                ? AttentionBlock.Activations(batch: batch, queryTime: time, keyTime: sourceTime, config: config, arena: arena) : nil
            feedForward = FeedForwardBlock.Activations(rows: batch * time, config: config, arena: arena)
        }
    }

    /// The encoder's output for cross-attention: memory [B·S, C], its padding [B·S], and where ∂L/∂memory goes.
    struct Memory {
        let states: FloatBuffer
        let padding: UnsafeBufferPointer<Bool>
        let time: Int
        let gradient: FloatBuffer
    }

    /// The layer's output in `a`, y[B·T, C].
    func output(_ a: Activations) -> FloatBuffer { feedForward.output(a.feedForward) }

    /// y[B·T, C] of x[B·T, C].
    func forward(x: FloatBuffer, _ a: Activations, batch: Int, time: Int, memory: Memory?, pass: Pass) -> FloatBuffer {
        var y = selfAttention.forward(x: x, a.selfAttention, batch: batch, time: time, pass: pass)
        if let crossAttention, let activations = a.crossAttention, let memory {
            y = crossAttention.forward(x: y, activations, batch: batch, time: time, memory: memory, pass: pass)
        }
        return feedForward.forward(x: y, a.feedForward, rows: batch * time, pass: pass)
    }

    /// ∂L/∂x (a buffer from `buffers`) given ∂L/∂y, adding ∂L/∂memory to `memory.gradient`; each block reports its
    /// parameters as their gradients become final.
    func backward(dY: FloatBuffer, x: FloatBuffer, _ a: Activations, batch: Int, time: Int, memory: Memory?, buffers: GradientPingPong,
                  pass: Pass) -> FloatBuffer {
        let afterSelf = selfAttention.output(a.selfAttention)
        let cross = crossAttention.flatMap { block in a.crossAttention.flatMap { activations in memory.map { (block, activations, $0) } } }
        var dCurrent = buffers.next(after: dY)
        feedForward.backward(dY: dY, dX: dCurrent, x: cross.map { $0.0.output($0.1) } ?? afterSelf, a.feedForward, rows: batch * time,
                             pass: pass)
        if let (block, activations, memory) = cross {
            let dAfterSelf = buffers.next(after: dCurrent)
            block.backward(dY: dCurrent, dX: dAfterSelf, x: afterSelf, activations, batch: batch, time: time, memory: memory, pass: pass)
            dCurrent = dAfterSelf
        }
        let dX = buffers.next(after: dCurrent)
        selfAttention.backward(dY: dCurrent, dX: dX, x: x, a.selfAttention, batch: batch, time: time, pass: pass)
        return dX
    }

    // MARK: Decoding

    /// Per layer: the self-attention's growing key/value cache and, for an encoder-decoder model, the cross-attention's
    /// keys and values of the encoded source.
    struct Cache {
        let selfAttention: MultiHeadAttention.Cache
        let crossAttention: MultiHeadAttention.Cache?
    }

    /// The workspace of one decoding step, shared by every layer in turn.
    struct StepActivations {
        let block: ResidualConnection.Activations  // [R, C]
        let attention: MultiHeadAttention.StepActivations
        let feedForward: FeedForward.Activations   // [R, ·]
        let x: FloatBuffer                         // [R, C] the running hidden state

        init(rows: Int, longestCache: Int, config: ModelConfig, arena: ActivationArena) {
            let c = config.dModel
            block = ResidualConnection.Activations(rows: rows, channels: c, arena: arena)
            attention = MultiHeadAttention.StepActivations(rows: rows, channels: c, heads: config.heads, longestCache: longestCache,
                                                           arena: arena)
            feedForward = FeedForward.Activations(rows: rows, channels: c, hidden: config.dFF, arena: arena)
            x = arena.carve(rows * c)
        }
    }

    /// One position for `rows` sequences: s.x [R, C] in, s.x out (the same layers as training, no dropout).
    func step(_ s: StepActivations, rows: Int, position: Int, cache: Cache, sourceLength: Int, sourcePadding: UnsafeBufferPointer<Bool>,
              parameters: Arena) {
        let c = selfAttention.attention.q.outFeatures
        /// Runs one block on s.x and leaves its output in s.x.
        func run(_ block: ResidualConnection, _ sublayer: (FloatBuffer) -> FloatBuffer) {
            let y = block.forward(x: s.x, s.block, rows: rows, channels: c, dropout: .off, parameters: parameters, sublayer: sublayer)
            s.x.baseAddress!.update(from: y.baseAddress!, count: rows * c)
        }
        run(selfAttention.residual) { input in
            selfAttention.attention.step(input: input, rows: rows, position: position, length: position + 1, cache: cache.selfAttention,
                                         keyPadding: nil, s.attention, parameters: parameters)
        }
        if let crossAttention, let crossCache = cache.crossAttention {
            run(crossAttention.residual) { input in
                crossAttention.attention.step(input: input, rows: rows, position: position, length: sourceLength, cache: crossCache,
                                              keyPadding: sourcePadding, s.attention, parameters: parameters)
            }
        }
        run(feedForward.residual) { input in
            feedForward.feedForward.forward(input: input, s.feedForward, rows: rows, keepingDerivative: false, parameters: parameters)
        }
    }
}

/// A LayerNorm's parameter names and shapes.
func normParameters(_ name: String, _ channels: Int) -> [(String, [Int])] {
    [("\(name).weight", [channels]), ("\(name).bias", [channels])]
}
