import Kernels

/// The transformer of "Attention Is All You Need" (encoder-decoder) or its decoder-only variant, on CPU.
///
/// Parameters, gradients and activations are each one buffer, sized at construction for the largest batch and
/// lengths; `forward` and `forwardBackward` allocate nothing. Gradients are those of the SUMMED token loss and
/// accumulate across calls (gradient accumulation); the trainer zeroes them and divides by the token count.
///
/// Not `Sendable`: a model and its buffers belong to one training loop.
public final class TransformerModel {
    public let config: ModelConfig
    public let layout: ParameterLayout
    public let parameters: Arena
    public let gradients: Arena
    public let maxBatch: Int
    public let maxSourceLength: Int
    public let maxTargetLength: Int

    /// Dropout is applied only while training.
    public var training = true
    /// Seeds this step's dropout masks; the trainer sets it per step so a resumed run draws the same masks.
    public var dropoutSeed: UInt64 = 0

    /// Called during backward with an arena offset: every gradient at or after it is final for this call
    /// (backward walks the arena roughly in reverse; the offset only decreases, and ends at 0). The trainer starts
    /// all-reducing those gradients while backward continues.
    public var onGradientsFinal: ((Int) -> Void)?

    private let activations: ActivationArena
    private let encoder: [Sublayer]
    let decoder: [Sublayer]
    private let encoderEmbedded: Int, decoderEmbedded: Int
    private let encoderFinal: FinalNorm?
    let decoderFinal: FinalNorm?
    private let logits: Int
    let embedView: TensorView, positionView: TensorView?, outputView: TensorView
    private let sinusoidTable: Int
    private let sourcePadding: UnsafeMutableBufferPointer<Bool>
    // Gradient scratch, reused by every sublayer in turn.
    private let gradientA: Int, gradientB: Int, gradientMemory: Int, gradientSublayer: Int, gradientDropped: Int
    private let gradientContext: Int, gradientQ: Int, gradientK: Int, gradientV: Int
    private let gradientHidden: Int, gradientActivated: Int, attentionScratch: Int

    struct FinalNorm {
        let weight: TensorView, bias: TensorView
        let output: Int, mean: Int, rstd: Int
    }

    /// Parameter names and shapes in forward order (DESIGN.md names, torch `[out, in]` weights).
    public static func parameterLayout(for config: ModelConfig) -> ParameterLayout {
        let c = config.dModel
        var entries: [(String, [Int])] = [("embed.weight", [config.vocabSize, c])]
        if config.positions == .learned { entries.append(("pos_embed.weight", [config.maxLength, c])) }
        let stacks = sublayerPlan(config)
        for sublayer in stacks.encoder {
            entries += Sublayer.parameters(sublayer.kind, prefix: sublayer.prefix, norm: sublayer.norm, config: config)
        }
        if config.norm == .pre && !stacks.encoder.isEmpty { entries += [("encoder.norm.weight", [c]), ("encoder.norm.bias", [c])] }
        for sublayer in stacks.decoder {
            entries += Sublayer.parameters(sublayer.kind, prefix: sublayer.prefix, norm: sublayer.norm, config: config)
        }
        if config.norm == .pre { entries += [("decoder.norm.weight", [c]), ("decoder.norm.bias", [c])] }
        if !config.tiedEmbeddings { entries.append(("lm_head.weight", [config.vocabSize, c])) }
        return ParameterLayout(entries)
    }

    private typealias Plan = (kind: Sublayer.Kind, prefix: String, norm: String)

    private static func sublayerPlan(_ config: ModelConfig) -> (encoder: [Plan], decoder: [Plan]) {
        let encoder: [Plan] = (0..<config.encoderLayers).flatMap { i -> [Plan] in
            [(.selfAttention(causal: false), "encoder.layers.\(i).self_attn", "encoder.layers.\(i).norm1"),
             (.feedForward, "encoder.layers.\(i).ffn", "encoder.layers.\(i).norm2")]
        }
        let decoder: [Plan] = (0..<config.decoderLayers).flatMap { i -> [Plan] in
            config.kind == .decoderOnly
                ? [(.selfAttention(causal: true), "decoder.layers.\(i).self_attn", "decoder.layers.\(i).norm1"),
                   (.feedForward, "decoder.layers.\(i).ffn", "decoder.layers.\(i).norm2")]
                : [(.selfAttention(causal: true), "decoder.layers.\(i).self_attn", "decoder.layers.\(i).norm1"),
                   (.crossAttention, "decoder.layers.\(i).cross_attn", "decoder.layers.\(i).norm2"),
                   (.feedForward, "decoder.layers.\(i).ffn", "decoder.layers.\(i).norm3")]
        }
        return (encoder, decoder)
    }

    /// A model whose buffers fit batches of up to `maxBatch` rows, sources of up to `maxSourceLength` tokens
    /// (encoder-decoder only) and decoder sequences of up to `maxTargetLength`.
    public init(config: ModelConfig, maxBatch: Int, maxSourceLength: Int = 0, maxTargetLength: Int) throws(ModelConfigError) {
        try config.validate()
        let isEncoderDecoder = config.kind == .encoderDecoder
        guard maxBatch >= 1 && maxBatch <= 1 << 15 else {
            throw ModelConfigError(key: "batch_size", message: "batches of \(maxBatch) sequences: must be 1 to \(1 << 15)")
        }
        guard maxTargetLength >= 1, maxTargetLength <= config.maxLength else {
            throw ModelConfigError(key: "max_length", message: "decoder length \(maxTargetLength) exceeds max_length \(config.maxLength)")
        }
        guard !isEncoderDecoder || (maxSourceLength >= 1 && maxSourceLength <= config.maxLength) else {
            throw ModelConfigError(key: "max_length", message: "source length \(maxSourceLength) exceeds max_length \(config.maxLength)")
        }
        self.config = config
        self.maxBatch = maxBatch
        self.maxSourceLength = isEncoderDecoder ? maxSourceLength : 0
        self.maxTargetLength = maxTargetLength
        let layout = Self.parameterLayout(for: config)
        self.layout = layout
        embedView = layout.view("embed.weight")!
        positionView = layout.view("pos_embed.weight")
        outputView = layout.view(config.tiedEmbeddings ? "embed.weight" : "lm_head.weight")!

        let c = config.dModel
        let sourceLength = isEncoderDecoder ? maxSourceLength : 0
        let activations = ActivationArena()
        let sourceRows = maxBatch * sourceLength, targetRows = maxBatch * maxTargetLength
        let maxRows = max(sourceRows, targetRows)
        let plan = Self.sublayerPlan(config)
        var site: UInt64 = 2  // 0 and 1 are the two embedding dropouts
        func build(_ plans: [Plan], rows: Int, time: Int) -> [Sublayer] {
            plans.map { item in
                defer { site += 1 }
                let isCross = item.kind == .crossAttention
                return Sublayer(kind: item.kind, prefix: item.prefix, norm: item.norm, dropoutSite: site, layout: layout, arena: activations,
                                rows: rows, keyRows: isCross ? sourceRows : rows, queryTime: time,
                                keyTime: isCross ? sourceLength : time, batch: maxBatch, config: config)
            }
        }
        encoder = build(plan.encoder, rows: sourceRows, time: sourceLength)
        decoder = build(plan.decoder, rows: targetRows, time: maxTargetLength)
        encoderEmbedded = activations.reserve(sourceRows * c)
        decoderEmbedded = activations.reserve(targetRows * c)
        func finalNorm(_ name: String, rows: Int) -> FinalNorm {
            FinalNorm(weight: layout.view("\(name).weight")!, bias: layout.view("\(name).bias")!,
                      output: activations.reserve(rows * c), mean: activations.reserve(rows), rstd: activations.reserve(rows))
        }
        encoderFinal = config.norm == .pre && isEncoderDecoder ? finalNorm("encoder.norm", rows: sourceRows) : nil
        decoderFinal = config.norm == .pre ? finalNorm("decoder.norm", rows: targetRows) : nil
        logits = activations.reserve(targetRows * config.vocabSize)
        sinusoidTable = activations.reserve(config.positions == .sinusoidal ? config.maxLength * c : 0)
        gradientA = activations.reserve(maxRows * c)
        gradientB = activations.reserve(maxRows * c)
        gradientMemory = activations.reserve(sourceRows * c)
        gradientSublayer = activations.reserve(maxRows * c)
        gradientDropped = activations.reserve(config.dropout > 0 ? maxRows * c : 0)
        gradientContext = activations.reserve(maxRows * c)
        gradientQ = activations.reserve(maxRows * c)
        gradientK = activations.reserve(maxRows * c)
        gradientV = activations.reserve(maxRows * c)
        gradientHidden = activations.reserve(maxRows * config.dFF)
        gradientActivated = activations.reserve(maxRows * config.dFF)
        let longest = max(sourceLength, maxTargetLength)
        attentionScratch = activations.reserve(maxBatch * config.heads * longest * longest)
        // Everything at once is checked before anything is allocated: a failed allocation would trap.
        let bytes = (2 * Double(layout.count) + activations.reservedFloats) * Double(MemoryLayout<Float>.stride)
        if let shortfall = MemoryBudget.shortfall(bytes, for: "the model (parameters, gradients and activations for batches of \(maxBatch))") {
            throw ModelConfigError(key: "d_model", message: shortfall)
        }
        parameters = Arena(layout: layout)
        gradients = Arena(layout: layout)
        activations.allocate()
        self.activations = activations
        sourcePadding = .allocate(capacity: max(1, sourceRows))
        sourcePadding.initialize(repeating: false)
        if config.positions == .sinusoidal {
            sinusoidalPositions(into: activations[sinusoidTable], length: config.maxLength, channels: c)
        }
    }

    deinit { sourcePadding.deallocate() }

    /// Floats held for activations and scratch (for memory accounting).
    public var activationFloats: Int { activations.floatCount }

    // MARK: Initialisation

    /// Xavier-uniform weights (as torch's nn.Transformer initialises them), zero biases, unit LayerNorm gains;
    /// embeddings uniform with standard deviation d_model^-0.5, learned positions 0.02. Deterministic in `seed`.
    public func initializeParameters(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        for view in layout.views {
            let tensor = parameters[view]
            let name = view.name
            if name.hasSuffix(".bias") {
                tensor.update(repeating: 0)
            } else if name.contains("norm") {
                tensor.update(repeating: 1)
            } else {
                let bound: Float
                switch name {
                case "embed.weight", "lm_head.weight": bound = (3 / Float(config.dModel)).squareRoot()
                case "pos_embed.weight": bound = 0.02 * Float(3).squareRoot()
                default: bound = (6 / Float(view.shape[0] + view.shape[1])).squareRoot()
                }
                for i in 0..<tensor.count { tensor[i] = (random.nextUnitFloat() * 2 - 1) * bound }
            }
        }
    }

    // MARK: Steps

    /// Evaluation: the summed loss (plain cross-entropy unless `labelSmoothing` is given), no gradients.
    /// The logits stay readable through `withLogits` until the next call.
    @discardableResult
    public func forward(_ batch: Batch, labelSmoothing: Float = 0) -> LossSum {
        run(batch, labelSmoothing: labelSmoothing, backward: false)
    }

    /// Training: the summed loss, and its gradient ADDED to `gradients`.
    @discardableResult
    public func forwardBackward(_ batch: Batch, labelSmoothing: Float = 0) -> LossSum {
        run(batch, labelSmoothing: labelSmoothing, backward: true)
    }

    /// The last forward's logits, [B*T, V].
    public func withLogits<R>(_ body: (UnsafeMutableBufferPointer<Float>) throws -> R) rethrows -> R {
        try body(activations[logits])
    }

    /// Set while a forward pass will be followed by backward (kernels may then keep derivatives instead of inputs).
    private var keepDerivatives = false

    private func run(_ batch: Batch, labelSmoothing: Float, backward: Bool) -> LossSum {
        keepDerivatives = backward
        let b = batch.batchSize, s = batch.sourceLength, t = batch.targetLength
        precondition(b >= 1 && b <= maxBatch && t >= 1 && t <= maxTargetLength, "batch \(b)x\(t) exceeds the model's buffers")
        precondition(batch.decoderInput.count == b * t && batch.labels.count == b * t, "decoder input/labels are not [B,T]")
        let c = config.dModel, v = config.vocabSize
        var memory: UnsafeMutableBufferPointer<Float>?
        if config.kind == .encoderDecoder {
            precondition(s >= 1 && s <= maxSourceLength && batch.source.count == b * s, "source is not [B,S] within the model's buffers")
            for i in 0..<(b * s) { sourcePadding[i] = batch.source[i] == SpecialToken.pad }
            memory = forwardStack(encoder, tokens: batch.source, batch: b, time: s, embedded: encoderEmbedded, final: encoderFinal,
                                  memory: nil, memoryTime: 0, site: 0)
        }
        let hidden = forwardStack(decoder, tokens: batch.decoderInput, batch: b, time: t, embedded: decoderEmbedded,
                                  final: decoderFinal, memory: memory, memoryTime: s, site: 1)
        let logitsBuffer = activations[logits]
        linearForward(out: logitsBuffer, inp: hidden, weight: parameters[outputView], bias: nil,
                      rows: b * t, inFeatures: c, outFeatures: v)
        let result = batch.labels.withUnsafeBufferPointer { labels in
            // Backward: dLogits overwrite the logits in place (each row is read before it is written).
            crossEntropy(logits: logitsBuffer, targets: labels, vocabulary: v, smoothing: labelSmoothing,
                         ignored: SpecialToken.pad, dLogits: backward ? logitsBuffer : nil)
        }
        if backward {
            let dHidden = activations[gradientA]
            zero(dHidden, b * t * c)
            linearBackward(dInp: dHidden, dWeight: gradients[outputView], dBias: nil, dOut: logitsBuffer, inp: hidden,
                           weight: parameters[outputView], rows: b * t, inFeatures: c, outFeatures: v)
            if !config.tiedEmbeddings { onGradientsFinal?(outputView.offset) }
            if let memory {
                zero(activations[gradientMemory], b * s * c)
                backwardStack(decoder, gradient: dHidden, tokens: batch.decoderInput, batch: b, time: t, embedded: decoderEmbedded,
                              final: decoderFinal, memory: memory, memoryTime: s, site: 1)
                backwardStack(encoder, gradient: activations[gradientMemory], tokens: batch.source, batch: b, time: s,
                              embedded: encoderEmbedded, final: encoderFinal, memory: nil, memoryTime: 0, site: 0)
            } else {
                backwardStack(decoder, gradient: dHidden, tokens: batch.decoderInput, batch: b, time: t, embedded: decoderEmbedded,
                              final: decoderFinal, memory: nil, memoryTime: 0, site: 1)
            }
            onGradientsFinal?(0)
        }
        return LossSum(loss: result.loss, tokens: result.tokens, correct: result.correct)
    }

    /// The encoder alone, for decoding: framed sources [B,S] → memory [B*S, C] (valid until the next call).
    func encodeForDecoding(source: [Int32], batch: Int, time: Int) -> UnsafeMutableBufferPointer<Float> {
        precondition(config.kind == .encoderDecoder, "only an encoder-decoder model has an encoder")
        precondition(batch >= 1 && batch <= maxBatch && time >= 1 && time <= maxSourceLength && source.count == batch * time,
                     "source \(batch)x\(time) does not fit the model's buffers")
        let wasTraining = training
        training = false
        keepDerivatives = false
        defer { training = wasTraining }
        for i in 0..<(batch * time) { sourcePadding[i] = source[i] == SpecialToken.pad }
        return forwardStack(encoder, tokens: source, batch: batch, time: time, embedded: encoderEmbedded, final: encoderFinal,
                            memory: nil, memoryTime: 0, site: 0)
    }

    // MARK: Forward

    private func seed(_ site: UInt64) -> UInt64 { dropoutSeed &* 0x9E37_79B9_7F4A_7C15 &+ site &* 0xD1B5_4A32_D192_ED03 }
    private var dropping: Bool { training && config.dropout > 0 }

    func positionTable() -> UnsafeMutableBufferPointer<Float> {
        positionView.map { parameters[$0] } ?? activations[sinusoidTable]
    }

    private func forwardStack(_ sublayers: [Sublayer], tokens: [Int32], batch: Int, time: Int, embedded: Int, final: FinalNorm?,
                              memory: UnsafeMutableBufferPointer<Float>?, memoryTime: Int, site: UInt64) -> UnsafeMutableBufferPointer<Float> {
        let c = config.dModel, rows = batch * time
        let x0 = activations[embedded]
        tokens.withUnsafeBufferPointer { ids in
            embeddingForward(out: x0, tokens: ids, table: parameters[embedView], vocabulary: config.vocabSize, channels: c,
                             scale: config.scaleEmbedding ? Float(c).squareRoot() : 1)
        }
        addPositionsForward(out: x0, positions: positionTable(), batch: batch, time: time, channels: c)
        if dropping { dropoutForward(out: x0, inp: x0, count: rows * c, probability: config.dropout, seed: seed(site)) }
        var x = x0
        for sublayer in sublayers {
            x = forwardSublayer(sublayer, input: x, batch: batch, time: time, memory: memory, memoryTime: memoryTime)
        }
        if let final {
            layerNormForward(out: activations[final.output], mean: activations[final.mean], rstd: activations[final.rstd], inp: x,
                             weight: parameters[final.weight], bias: parameters[final.bias], rows: rows, channels: c)
            x = activations[final.output]
        }
        return x
    }

    private func forwardSublayer(_ s: Sublayer, input x: UnsafeMutableBufferPointer<Float>, batch: Int, time: Int,
                                 memory: UnsafeMutableBufferPointer<Float>?, memoryTime: Int) -> UnsafeMutableBufferPointer<Float> {
        let c = config.dModel, rows = batch * time
        let isPost = config.norm == .post
        if !isPost { normForward(s, x, rows: rows) }
        let fIn = isPost ? x : activations[s.normOut]
        let fOut = activations[s.output]
        switch s.kind {
        case .selfAttention(let causal):
            attentionForward(s, fIn, keysFrom: fIn, batch: batch, queryTime: time, keyTime: time,
                             mask: AttentionMask(causal: causal, keyPadding: causal ? nil : UnsafeBufferPointer(sourcePadding)))
        case .crossAttention:
            attentionForward(s, fIn, keysFrom: memory!, batch: batch, queryTime: time, keyTime: memoryTime,
                             mask: AttentionMask(causal: false, keyPadding: UnsafeBufferPointer(sourcePadding)))
        case .feedForward:
            let f = config.dFF
            let (fc1, fc2) = (s.linears[0], s.linears[1])
            linearForward(out: activations[s.hidden], inp: fIn, weight: parameters[fc1.weight], bias: parameters[fc1.bias],
                          rows: rows, inFeatures: c, outFeatures: f)
            switch config.activation {
            case .relu: reluForward(out: activations[s.activated], inp: activations[s.hidden], count: rows * f)
            case .gelu:
                // Training keeps GELU's derivative in place of its input: backward needs nothing else.
                geluForward(out: activations[s.activated], inp: activations[s.hidden], count: rows * f,
                            derivative: keepDerivatives ? activations[s.hidden] : nil)
            }
            linearForward(out: fOut, inp: activations[s.activated], weight: parameters[fc2.weight], bias: parameters[fc2.bias],
                          rows: rows, inFeatures: f, outFeatures: c)
        }
        if dropping { dropoutForward(out: fOut, inp: fOut, count: rows * c, probability: config.dropout, seed: seed(s.dropoutSite)) }
        residualForward(out: activations[s.sum], a: x, b: fOut, count: rows * c)
        if isPost { normForward(s, activations[s.sum], rows: rows) }
        return isPost ? activations[s.normOut] : activations[s.sum]
    }

    private func normForward(_ s: Sublayer, _ input: UnsafeMutableBufferPointer<Float>, rows: Int) {
        layerNormForward(out: activations[s.normOut], mean: activations[s.mean], rstd: activations[s.rstd], inp: input,
                         weight: parameters[s.normWeight], bias: parameters[s.normBias], rows: rows, channels: config.dModel)
    }

    private func attentionForward(_ s: Sublayer, _ queriesFrom: UnsafeMutableBufferPointer<Float>, keysFrom: UnsafeMutableBufferPointer<Float>,
                                  batch: Int, queryTime: Int, keyTime: Int, mask: AttentionMask) {
        let c = config.dModel
        let queryRows = batch * queryTime, keyRows = batch * keyTime
        func project(_ linear: Sublayer.Linear, _ out: Int, _ inp: UnsafeMutableBufferPointer<Float>, rows: Int) {
            linearForward(out: activations[out], inp: inp, weight: parameters[linear.weight], bias: parameters[linear.bias],
                          rows: rows, inFeatures: c, outFeatures: c)
        }
        project(s.linears[0], s.q, queriesFrom, rows: queryRows)
        project(s.linears[1], s.k, keysFrom, rows: keyRows)
        project(s.linears[2], s.v, keysFrom, rows: keyRows)
        Kernels.attentionForward(out: activations[s.context], probs: activations[s.probabilities], q: activations[s.q],
                                 k: activations[s.k], v: activations[s.v], mask: mask, batch: batch, queryTime: queryTime,
                                 keyTime: keyTime, channels: c, heads: config.heads)
        project(s.linears[3], s.output, activations[s.context], rows: queryRows)
    }

    // MARK: Backward

    /// `gradient` holds ∂L/∂(stack output); accumulates parameter gradients and, for the decoder, ∂L/∂memory.
    private func backwardStack(_ sublayers: [Sublayer], gradient: UnsafeMutableBufferPointer<Float>, tokens: [Int32], batch: Int,
                               time: Int, embedded: Int, final: FinalNorm?, memory: UnsafeMutableBufferPointer<Float>?,
                               memoryTime: Int, site: UInt64) {
        let c = config.dModel, rows = batch * time, isPost = config.norm == .post
        var current = gradient
        func spare() -> UnsafeMutableBufferPointer<Float> {
            let a = activations[gradientA]
            let next = a.baseAddress == current.baseAddress ? activations[gradientB] : a
            zero(next, rows * c)
            return next
        }
        func input(_ index: Int) -> UnsafeMutableBufferPointer<Float> {
            guard index > 0 else { return activations[embedded] }
            return isPost ? activations[sublayers[index - 1].normOut] : activations[sublayers[index - 1].sum]
        }
        if let final {
            let next = spare()
            layerNormBackward(dInp: next, dWeight: gradients[final.weight], dBias: gradients[final.bias], dOut: current,
                              inp: input(sublayers.count), weight: parameters[final.weight], mean: activations[final.mean],
                              rstd: activations[final.rstd], rows: rows, channels: c)
            current = next
            onGradientsFinal?(final.weight.offset)
        }
        for index in sublayers.indices.reversed() {
            let next = spare()
            backwardSublayer(sublayers[index], dOutput: current, dInput: next, input: input(index), batch: batch, time: time,
                             memory: memory, memoryTime: memoryTime)
            current = next
            onGradientsFinal?(sublayers[index].firstParameterOffset)
        }
        if dropping {
            let dropped = activations[gradientDropped]
            zero(dropped, rows * c)
            dropoutBackward(dInp: dropped, dOut: current, count: rows * c, probability: config.dropout, seed: seed(site))
            current = dropped
        }
        if let positionView {
            addPositionsBackward(dPositions: gradients[positionView], dOut: current, batch: batch, time: time, channels: c)
        }
        tokens.withUnsafeBufferPointer { ids in
            embeddingBackward(dTable: gradients[embedView], dOut: current, tokens: ids, channels: c,
                              scale: config.scaleEmbedding ? Float(c).squareRoot() : 1)
        }
    }

    /// dInput (zeroed by the caller) receives ∂L/∂x of this sublayer's input x.
    private func backwardSublayer(_ s: Sublayer, dOutput: UnsafeMutableBufferPointer<Float>, dInput: UnsafeMutableBufferPointer<Float>,
                                  input x: UnsafeMutableBufferPointer<Float>, batch: Int, time: Int,
                                  memory: UnsafeMutableBufferPointer<Float>?, memoryTime: Int) {
        let c = config.dModel, rows = batch * time, count = rows * c
        let isPost = config.norm == .post
        let scratch = activations[gradientSublayer]
        zero(scratch, count)
        var dFOut: UnsafeMutableBufferPointer<Float>
        let fIn: UnsafeMutableBufferPointer<Float>, dFIn: UnsafeMutableBufferPointer<Float>
        if isPost {
            // y = LN(x + f(x)): the norm's input gradient flows to x directly and through f.
            normBackward(s, dInput: scratch, dOutput: dOutput, input: activations[s.sum], rows: rows)
            accumulate(into: dInput, from: scratch, count: count)
            dFOut = scratch
            fIn = x
            dFIn = dInput
        } else {
            // y = x + f(LN(x)): the output gradient flows to x directly and through f and the norm.
            accumulate(into: dInput, from: dOutput, count: count)
            dFOut = dOutput
            fIn = activations[s.normOut]
            dFIn = scratch
        }
        if dropping {
            let dropped = activations[gradientDropped]
            zero(dropped, count)
            dropoutBackward(dInp: dropped, dOut: dFOut, count: count, probability: config.dropout, seed: seed(s.dropoutSite))
            dFOut = dropped
        }
        switch s.kind {
        case .selfAttention:
            attentionBackward(s, dOut: dFOut, queriesFrom: fIn, dQueriesFrom: dFIn, keysFrom: fIn, dKeysFrom: dFIn,
                              batch: batch, queryTime: time, keyTime: time)
        case .crossAttention:
            attentionBackward(s, dOut: dFOut, queriesFrom: fIn, dQueriesFrom: dFIn, keysFrom: memory!,
                              dKeysFrom: activations[gradientMemory], batch: batch, queryTime: time, keyTime: memoryTime)
        case .feedForward:
            let f = config.dFF
            let (fc1, fc2) = (s.linears[0], s.linears[1])
            let dActivated = activations[gradientActivated], dHidden = activations[gradientHidden]
            zero(dActivated, rows * f)
            linearBackward(dInp: dActivated, dWeight: gradients[fc2.weight], dBias: gradients[fc2.bias], dOut: dFOut,
                           inp: activations[s.activated], weight: parameters[fc2.weight], rows: rows, inFeatures: f, outFeatures: c)
            zero(dHidden, rows * f)
            switch config.activation {
            case .relu: reluBackward(dInp: dHidden, dOut: dActivated, inp: activations[s.hidden], count: rows * f)
            case .gelu: scaleByDerivativeBackward(dInp: dHidden, dOut: dActivated, derivative: activations[s.hidden], count: rows * f)
            }
            linearBackward(dInp: dFIn, dWeight: gradients[fc1.weight], dBias: gradients[fc1.bias], dOut: dHidden, inp: fIn,
                           weight: parameters[fc1.weight], rows: rows, inFeatures: c, outFeatures: f)
        }
        if !isPost { normBackward(s, dInput: dInput, dOutput: scratch, input: x, rows: rows) }
    }

    private func normBackward(_ s: Sublayer, dInput: UnsafeMutableBufferPointer<Float>, dOutput: UnsafeMutableBufferPointer<Float>,
                              input: UnsafeMutableBufferPointer<Float>, rows: Int) {
        layerNormBackward(dInp: dInput, dWeight: gradients[s.normWeight], dBias: gradients[s.normBias], dOut: dOutput,
                          inp: input, weight: parameters[s.normWeight], mean: activations[s.mean], rstd: activations[s.rstd],
                          rows: rows, channels: config.dModel)
    }

    private func attentionBackward(_ s: Sublayer, dOut: UnsafeMutableBufferPointer<Float>,
                                   queriesFrom: UnsafeMutableBufferPointer<Float>, dQueriesFrom: UnsafeMutableBufferPointer<Float>,
                                   keysFrom: UnsafeMutableBufferPointer<Float>, dKeysFrom: UnsafeMutableBufferPointer<Float>,
                                   batch: Int, queryTime: Int, keyTime: Int) {
        let c = config.dModel, queryRows = batch * queryTime, keyRows = batch * keyTime
        let dContext = activations[gradientContext], dQ = activations[gradientQ], dK = activations[gradientK], dV = activations[gradientV]
        func projectBack(_ linear: Sublayer.Linear, dInp: UnsafeMutableBufferPointer<Float>, dOut: UnsafeMutableBufferPointer<Float>,
                         inp: UnsafeMutableBufferPointer<Float>, rows: Int) {
            linearBackward(dInp: dInp, dWeight: gradients[linear.weight], dBias: gradients[linear.bias], dOut: dOut, inp: inp,
                           weight: parameters[linear.weight], rows: rows, inFeatures: c, outFeatures: c)
        }
        zero(dContext, queryRows * c)
        projectBack(s.linears[3], dInp: dContext, dOut: dOut, inp: activations[s.context], rows: queryRows)
        zero(dQ, queryRows * c)
        zero(dK, keyRows * c)
        zero(dV, keyRows * c)
        Kernels.attentionBackward(dQ: dQ, dK: dK, dV: dV, scratch: activations[attentionScratch], dOut: dContext,
                                  q: activations[s.q], k: activations[s.k], v: activations[s.v], probs: activations[s.probabilities],
                                  causal: s.kind == .selfAttention(causal: true), batch: batch, queryTime: queryTime, keyTime: keyTime, channels: c, heads: config.heads)
        projectBack(s.linears[0], dInp: dQueriesFrom, dOut: dQ, inp: queriesFrom, rows: queryRows)
        projectBack(s.linears[1], dInp: dKeysFrom, dOut: dK, inp: keysFrom, rows: keyRows)
        projectBack(s.linears[2], dInp: dKeysFrom, dOut: dV, inp: keysFrom, rows: keyRows)
    }
}

@inline(__always)
private func zero(_ buffer: UnsafeMutableBufferPointer<Float>, _ count: Int) {
    buffer.baseAddress!.update(repeating: 0, count: count)
}

/// Deterministic random numbers (same seed, same sequence on every rank and machine): initialisation, test data.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    public mutating func nextUnitFloat() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }
}
