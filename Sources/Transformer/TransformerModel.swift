import Basics
import Foundation
import Kernels

/// The transformer of "Attention Is All You Need" (encoder-decoder), its decoder-only variant (GPT) or its
/// encoder-only variant with a masked-language-model head (BERT), on CPU, composed of the layer types in this module:
/// `Embedding`, `EncoderLayer` and `DecoderLayer` (each of `MultiHeadAttention`, `FeedForward` and
/// `ResidualConnection`s with their `LayerNorm`s), final norms (pre-norm), `MaskedLMTransform` (encoder-only) and the
/// `OutputHead`.
///
/// Parameters, gradients and activations are each one buffer, sized at construction for the largest batch and
/// lengths; `forward` and `forwardBackward` allocate nothing. Parameters are named and shaped as torch.nn names and
/// shapes them (`weight` is [out, in]) and laid out in forward order (`parameterLayout(for:)`). Gradients are those
/// of the SUMMED token loss and accumulate across calls (gradient accumulation); the trainer zeroes them and
/// divides by the token count.
///
/// Not `Sendable`: a model and its buffers belong to one training loop.
public final class TransformerModel {
    /// What the model is.
    public let config: ModelConfig
    /// Every parameter's name, shape and place in the arenas.
    public let layout: ParameterLayout
    /// The parameters.
    public let parameters: Arena

    /// The model's config and every parameter, bit for bit, as a hash (`ContentDigest`): what ranks that each loaded a
    /// checkpoint (`ddp eval`, `ddp embed`) compare before they combine their results.
    public var contentDigest: UInt64 {
        var digest = ContentDigest()
        digest.add("\(config)")
        digest.add(UnsafeBufferPointer(parameters.storage))
        return digest.value
    }
    /// ∂(summed loss)/∂parameters, accumulated by `forwardBackward` until zeroed.
    public let gradients: Arena
    /// Sequences per batch at most.
    public let maxBatch: Int
    /// Encoder positions at most (source + EOS; an encoder-only model's context, which equals `maxTargetLength`;
    /// 0 for decoder-only models).
    public let maxSourceLength: Int
    /// Decoder positions at most (BOS + target, or the language model's context); an encoder-only model's context.
    public let maxTargetLength: Int

    /// Which ids are padding (masked as keys, ignored by the loss, embedded as zeros when `none`), BOS and EOS (for
    /// decoding): the tokenizer's (`Tokenizer.specialTokens`). Whoever builds the model for a tokenizer sets them;
    /// `Checkpoint.loadModel` and the trainer do. Batches given to `forward` must be padded with this `pad`.
    public var specialTokens: SpecialTokens = .standard

    /// Dropout is applied only while training.
    public var training = true
    /// Seeds this step's dropout masks; the trainer sets it per step so a resumed run draws the same masks.
    public var dropoutSeed: UInt64 = 0

    /// Called during backward with the arena range of parameters whose gradients are final for this call: each
    /// layer reports its own as it finishes (from the end of the arena towards its start; the embeddings, which
    /// encoder, decoder and a tied head all add to, come last). The trainer starts all-reducing them meanwhile.
    public var onGradientsFinal: ((Range<Int>) -> Void)?

    let embedding: Embedding
    let encoderLayers: [EncoderLayer]
    let encoderNorm: LayerNorm?
    let decoderLayers: [DecoderLayer]
    let decoderNorm: LayerNorm?
    /// Encoder-only models: the masked-LM head's transform, before `head`.
    let maskedLM: MaskedLMTransform?
    let head: OutputHead
    /// The buffers of the shape `carved` (re-carved from the arena, after the position table, for a batch of
    /// another shape: `fit`).
    private var buffers: Buffers
    private var carved: BatchShape
    /// The batch shape of the most floats, for which the arena was sized.
    private let arenaShape: BatchShape
    private let activationArena: ActivationArena
    /// [max_length, C] at the arena's start (sinusoidal positions only; empty otherwise): it never moves.
    private let sinusoids: FloatBuffer

    /// Every activation and scratch buffer of a step, carved from the activation arena.
    private struct Buffers {
        let encoderEmbedded: FloatBuffer              // [B·S, C]
        let encoderLayers: [EncoderLayer.Activations]
        let encoderNorm: LayerNorm.Activations?       // [B·S, C]
        let decoderEmbedded: FloatBuffer              // [B·T, C]
        let decoderLayers: [DecoderLayer.Activations]
        let decoderNorm: LayerNorm.Activations?       // [B·T, C]
        let maskedLM: MaskedLMTransform.Activations?  // [B·S, C] (encoder-only)
        let logits: FloatBuffer                       // [B·T, V] ([B·S, V] encoder-only); dLogits in place during backward
                                                      // (encoder-only training: the first R rows, the labelled positions)
        let dHidden: FloatBuffer, dOther: FloatBuffer // [max(B·S, B·T), C] the stacks' gradient ping-pong
        let dMemory: FloatBuffer                      // [B·S, C] ∂L/∂(encoder output), from every cross-attention
        let scratch: BackwardScratch
        let sourcePadding: UnsafeMutableBufferPointer<Bool>  // [B·S] true where the source is PAD

        init(config: ModelConfig, shape: BatchShape, arena: ActivationArena) {
            let batch = shape.batch, sourceLength = config.kind.hasEncoder ? shape.sourceLength : 0
            let targetLength = config.kind.hasDecoder ? shape.targetLength : 0
            let c = config.dModel, sourceRows = batch * sourceLength, targetRows = batch * targetLength
            let maxRows = max(sourceRows, targetRows), isPre = config.norm == .pre
            let headRows = config.kind == .encoderOnly ? sourceRows : targetRows
            encoderEmbedded = arena.carve(sourceRows * c)
            encoderLayers = (0..<config.encoderLayers).map { _ in
                EncoderLayer.Activations(batch: batch, time: sourceLength, config: config, arena: arena)
            }
            encoderNorm = isPre && sourceRows > 0 ? LayerNorm.Activations(rows: sourceRows, channels: c, arena: arena) : nil
            decoderEmbedded = arena.carve(targetRows * c)
            decoderLayers = (0..<config.decoderLayers).map { _ in
                DecoderLayer.Activations(batch: batch, time: targetLength, sourceTime: sourceLength, config: config, arena: arena)
            }
            decoderNorm = isPre && config.decoderLayers > 0 ? LayerNorm.Activations(rows: targetRows, channels: c, arena: arena) : nil
            maskedLM = config.kind == .encoderOnly ? MaskedLMTransform.Activations(rows: sourceRows, channels: c, arena: arena) : nil
            logits = arena.carve(headRows * config.vocabSize)
            dHidden = arena.carve(maxRows * c)
            dOther = arena.carve(maxRows * c)
            dMemory = arena.carve(sourceRows * c)
            scratch = BackwardScratch(rows: maxRows, config: config, arena: arena)
            // Padding flags live beside the arena: not floats (and nothing while only counting).
            sourcePadding = .allocate(capacity: arena.counting ? 0 : max(1, sourceRows))
            sourcePadding.initialize(repeating: false)
        }
    }

    /// Parameter names and shapes in forward order (torch `[out, in]` weights): `embed.weight`, `pos_embed.weight`
    /// (learned positions), `encoder.layers.{i}.self_attn.{q,k,v,o}_proj.{weight,bias}`, `.norm1`, `.ffn.fc1`, `.ffn.fc2`,
    /// `.norm2`, `encoder.norm` (pre-norm), `decoder.layers.{i}.self_attn`, `.norm1`, `.cross_attn`, `.norm2`, `.ffn`,
    /// `.norm3` (decoder-only: self_attn, norm1, ffn, norm2), `decoder.norm` (pre-norm); encoder-only:
    /// `mlm_head.dense.{weight,bias}`, `mlm_head.norm.{weight,bias}`, `mlm_head.bias` [V]; last `lm_head.weight` (untied).
    public static func parameterLayout(for config: ModelConfig) -> ParameterLayout {
        let c = config.dModel
        var entries: [(String, [Int])] = [("embed.weight", [config.vocabSize, c])]
        if config.positions == .learned { entries.append(("pos_embed.weight", [config.maxLength, c])) }
        for i in 0..<config.encoderLayers { entries += EncoderLayer.parameters(index: i, config: config) }
        if config.norm == .pre && config.encoderLayers > 0 { entries += normParameters("encoder.norm", c) }
        for i in 0..<config.decoderLayers { entries += DecoderLayer.parameters(index: i, config: config) }
        if config.norm == .pre && config.decoderLayers > 0 { entries += normParameters("decoder.norm", c) }
        if config.kind == .encoderOnly { entries += MaskedLMTransform.parameters(channels: c) + [("mlm_head.bias", [config.vocabSize])] }
        if !config.tiedEmbeddings { entries.append(("lm_head.weight", [config.vocabSize, c])) }
        return ParameterLayout(entries)
    }

    /// A model whose buffers fit batches of up to `maxBatch` rows, sources of up to `maxSourceLength` tokens
    /// (encoder-decoder only) and decoder sequences of up to `maxTargetLength` (an encoder-only model's inputs: its
    /// `maxSourceLength` is set to this). Throws `ModelConfigError` for a config
    /// that cannot work or a model that would not fit in the memory this process can still allocate (checked before
    /// anything is allocated).
    ///
    /// `shapes`, when given, are the only batch shapes the caller will use (rows at most `maxBatch`, lengths clamped
    /// to the limits above): the activation arena is then sized for the largest of them, not for `maxBatch` rows of
    /// the longest lengths, which is what token-budget batches (many short rows or a few long ones) need. Buffers are
    /// re-carved from the arena whenever a batch does not fit the current ones; a batch that fits in no listed shape
    /// is a precondition failure.
    ///
    /// `optimizerState`: the memory check also counts what AdamW will allocate for this model (two moments, as many
    /// floats as the parameters), for a caller that trains it. A shortfall is charged to key `d_model` when the
    /// parameters, gradients and moments alone do not fit or `maxBatch` is 1, else to `batch_size` (the activations of
    /// `maxBatch` rows push it over).
    public init(config: ModelConfig, maxBatch: Int, maxSourceLength: Int = 0, maxTargetLength: Int,
                shapes: [BatchShape] = [], optimizerState: Bool = false) throws(ModelConfigError) {
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
        self.maxSourceLength = isEncoderDecoder ? maxSourceLength : config.kind == .encoderOnly ? maxTargetLength : 0
        self.maxTargetLength = maxTargetLength
        let layout = Self.parameterLayout(for: config)
        self.layout = layout
        embedding = Embedding(config: config, layout: layout)
        // Dropout sites: 0 and 1 the two embeddings, then each residual block in layout order.
        encoderLayers = (0..<config.encoderLayers).map { EncoderLayer(index: $0, config: config, layout: layout, firstSite: 2 + UInt64($0) * EncoderLayer.sites) }
        encoderNorm = config.norm == .pre && config.encoderLayers > 0 ? LayerNorm("encoder.norm", layout: layout) : nil
        let decoderSites = 2 + UInt64(config.encoderLayers) * EncoderLayer.sites
        decoderLayers = (0..<config.decoderLayers).map {
            DecoderLayer(index: $0, config: config, layout: layout, firstSite: decoderSites + UInt64($0) * DecoderLayer.sites(config))
        }
        decoderNorm = config.norm == .pre && config.decoderLayers > 0 ? LayerNorm("decoder.norm", layout: layout) : nil
        maskedLM = config.kind == .encoderOnly ? MaskedLMTransform(layout: layout) : nil
        head = OutputHead(config: config, layout: layout)

        // Everything at once is checked before anything is allocated: a failed allocation would trap.
        let box = BatchShape(batch: maxBatch, sourceLength: self.maxSourceLength, targetLength: maxTargetLength)
        let listed = shapes.isEmpty ? [box] : shapes.map {
            BatchShape(batch: min($0.batch, maxBatch), sourceLength: min($0.sourceLength, box.sourceLength),
                       targetLength: min($0.targetLength, box.targetLength))
        }
        let tableFloats = config.positions == .sinusoidal ? config.maxLength * config.dModel : 0
        // The arena holds the largest shape's buffers (`used`, aligned); the memory check adds up sizes in Double, which
        // cannot overflow for sizes from an untrusted config.
        var largest = (floats: 0, countedFloats: 0.0, shape: box)
        for shape in Set(listed) {
            let counting = ActivationArena.counting()
            Buffers(config: config, shape: shape, arena: counting).sourcePadding.deallocate()
            if counting.used > largest.floats { largest.floats = counting.used; largest.shape = shape }
            largest.countedFloats = max(largest.countedFloats, counting.usedFloats)
        }
        let fixedBytes = ((optimizerState ? 4 : 2) * Double(layout.count) + Double(tableFloats)) * Double(MemoryLayout<Float>.stride)
        let bytes = fixedBytes + largest.countedFloats * Double(MemoryLayout<Float>.stride)
        let parts = optimizerState ? "parameters, gradients, AdamW moments" : "parameters, gradients"
        if let shortfall = MemoryBudget.shortfall(bytes, for: "the model (\(parts) and activations for batches of \(maxBatch))") {
            // (A batch of one row is the model's own need: nothing smaller to ask for.)
            throw ModelConfigError(key: maxBatch > 1 && MemoryBudget.shortfall(fixedBytes, for: "") == nil ? "batch_size" : "d_model",
                                   message: shortfall, isMemoryShortfall: true)
        }
        parameters = Arena(layout: layout)
        gradients = Arena(layout: layout)
        activationArena = ActivationArena(floats: ((tableFloats + 15) & ~15) + largest.floats)
        sinusoids = activationArena.carve(tableFloats)
        if config.positions == .sinusoidal { sinusoidalPositions(into: sinusoids, length: config.maxLength, channels: config.dModel) }
        activationArena.keepCarved()
        carved = largest.shape
        arenaShape = largest.shape
        buffers = Buffers(config: config, shape: largest.shape, arena: activationArena)
    }

    deinit { buffers.sourcePadding.deallocate() }

    /// The rows, source and decoder positions of a batch (decoder positions are ignored by an encoder-only model,
    /// source positions by a decoder-only one).
    public struct BatchShape: Hashable, Sendable, CustomStringConvertible {
        /// Sequences.
        public var batch: Int
        /// Encoder positions per sequence.
        public var sourceLength: Int
        /// Decoder positions per sequence.
        public var targetLength: Int

        /// A shape of `batch` rows.
        public init(batch: Int, sourceLength: Int, targetLength: Int) {
            self.batch = batch
            self.sourceLength = sourceLength
            self.targetLength = targetLength
        }

        /// "16x(12, 13)": rows x (source, decoder positions).
        public var description: String { "\(batch)x(\(sourceLength), \(targetLength))" }

        /// Whether a batch of this shape fits in buffers carved for `other`.
        func fits(in other: BatchShape) -> Bool {
            batch <= other.batch && sourceLength <= other.sourceLength && targetLength <= other.targetLength
        }
    }

    /// Makes the buffers fit a batch of `shape`, re-carving them from the arena when the current ones do not: for the
    /// larger of the two shapes in each dimension when that fits (so that batches alternating between many short rows
    /// and a few long ones stop re-carving), else for `shape` alone.
    private func fit(_ shape: BatchShape) {
        let shape = BatchShape(batch: shape.batch, sourceLength: config.kind.hasEncoder ? shape.sourceLength : 0,
                               targetLength: config.kind.hasDecoder ? shape.targetLength : 0)
        guard !shape.fits(in: carved) else { return }
        let available = activationArena.storage.count - activationArena.kept
        let union = BatchShape(batch: max(shape.batch, carved.batch), sourceLength: max(shape.sourceLength, carved.sourceLength),
                               targetLength: max(shape.targetLength, carved.targetLength))
        let chosen = floats(for: union) <= available ? union : shape
        precondition(chosen == union || floats(for: shape) <= available,
                     "a batch of \(shape) does not fit the activation arena the model was sized for")
        buffers.sourcePadding.deallocate()
        activationArena.releaseToKept()
        buffers = Buffers(config: config, shape: chosen, arena: activationArena)
        carved = chosen
    }

    /// Floats the buffers of a batch of `shape` take.
    private func floats(for shape: BatchShape) -> Int {
        let counting = ActivationArena.counting()
        Buffers(config: config, shape: shape, arena: counting).sourcePadding.deallocate()
        return counting.used
    }

    /// The most sources of `sourceLength` positions one encoder pass can take (decoding encodes in chunks of it).
    func rowsThatFit(sourceLength: Int) -> Int {
        let available = activationArena.storage.count - activationArena.kept
        var rows = maxBatch
        while rows > 1 && floats(for: BatchShape(batch: rows, sourceLength: sourceLength, targetLength: 0)) > available { rows = (rows + 1) / 2 }
        return rows
    }

    /// Decoder-only: runs the decoder stack (no dropout, no head, no loss) over one sequence of `tokens`, leaving
    /// every layer's keys and values in its activations (prefilling a decoding cache).
    func runDecoderStack(_ tokens: [Int32]) {
        precondition(config.kind == .decoderOnly && !tokens.isEmpty && tokens.count <= maxTargetLength,
                     "a prompt of \(tokens.count) tokens for buffers of \(maxTargetLength)")
        fit(BatchShape(batch: 1, sourceLength: 0, targetLength: tokens.count))
        withoutTraining { _ = decode(tokens, batch: 1, time: tokens.count, memory: nil, pass: pass(backward: false)) }
    }

    /// Decoder layer `index`'s self-attention keys and values from the last forward, [B·T, C] each (prefilling a
    /// decoding cache).
    func decoderSelfAttentionKeysValues(_ index: Int) -> (keys: FloatBuffer, values: FloatBuffer) {
        let attention = buffers.decoderLayers[index].selfAttention.attention
        return (attention.k, attention.v)
    }

    /// Floats held for activations and scratch (for memory accounting).
    public var activationFloats: Int { activationArena.storage.count }

    /// Of `activationFloats`, those the attention kernels keep between forward and backward besides the projections
    /// (for memory accounting): one log-sum-exp per row, head and query in every attention layer, B·H·T per layer for
    /// the largest batch shape the arena holds. The tiled kernels store no probabilities (that would be B·H·T² per
    /// layer); the kernels allocate `attentionScratchFloats` more while they run.
    public var attentionStateFloats: Int {
        let shape = arenaShape, perQuery = shape.batch * config.heads
        let encoder = config.kind.hasEncoder ? config.encoderLayers * perQuery * shape.sourceLength : 0
        let perDecoderLayer = DecoderLayer.hasCrossAttention(config) ? 2 : 1
        let decoder = config.kind.hasDecoder ? config.decoderLayers * perDecoderLayer * perQuery * shape.targetLength : 0
        return encoder + decoder
    }

    /// Floats the attention kernels allocate while they run on `threads` compute threads, at most, for the batch shape
    /// the arena holds: the largest `flashAttentionScratchFloats` of its attentions (encoder self, decoder self,
    /// cross). It is freed when each call returns and does not grow with T².
    public func attentionScratchFloats(threads: Int) -> Int {
        let shape = arenaShape
        var lengths: [(queries: Int, keys: Int)] = []
        if config.kind.hasEncoder { lengths.append((shape.sourceLength, shape.sourceLength)) }
        if config.kind.hasDecoder { lengths.append((shape.targetLength, shape.targetLength)) }
        if DecoderLayer.hasCrossAttention(config) { lengths.append((shape.targetLength, shape.sourceLength)) }
        return lengths.map {
            flashAttentionScratchFloats(batch: shape.batch, queryTime: $0.queries, keyTime: $0.keys, channels: config.dModel,
                                        heads: config.heads, threads: threads)
        }.max() ?? 0
    }

    /// The position table the embeddings add: learned `pos_embed.weight` or the sinusoids, [max_length, C].
    func positionTable() -> FloatBuffer {
        embedding.learnedPositions.map { parameters[$0] } ?? sinusoids
    }

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
    public func forward(_ batch: TokenBatch, labelSmoothing: Float = 0) -> LossSum {
        precondition(batch.pad == specialTokens.pad, "a batch padded with \(batch.pad) for a model whose pad is \(specialTokens.pad)")
        return run(batch, labelSmoothing: labelSmoothing, backward: false)
    }

    /// Training: the summed loss, and its gradient ADDED to `gradients`.
    @discardableResult
    public func forwardBackward(_ batch: TokenBatch, labelSmoothing: Float = 0) -> LossSum {
        precondition(batch.pad == specialTokens.pad, "a batch padded with \(batch.pad) for a model whose pad is \(specialTokens.pad)")
        return run(batch, labelSmoothing: labelSmoothing, backward: true)
    }

    /// The last `forward`'s logits, [B·T, V] ([B·S, V] encoder-only). After `forwardBackward` the buffer holds
    /// gradients (and, encoder-only, only the labelled positions' rows): read it after `forward`.
    public func withLogits<R>(_ body: (UnsafeMutableBufferPointer<Float>) throws -> R) rethrows -> R {
        try body(buffers.logits)
    }

    private func pass(backward: Bool) -> Pass {
        Pass(parameters: parameters, gradients: gradients, scratch: buffers.scratch,
             dropoutProbability: training ? config.dropout : 0, dropoutSeed: dropoutSeed, keepDerivatives: backward,
             gradientsFinal: backward ? onGradientsFinal : nil)
    }

    /// One forward (and, with `backward`, backward) pass over a batch: encoder, decoder, head and loss.
    private func run(_ batch: TokenBatch, labelSmoothing: Float, backward: Bool) -> LossSum {
        if config.kind == .encoderOnly { return runMaskedLM(batch, labelSmoothing: labelSmoothing, backward: backward) }
        let b = batch.batchSize, s = batch.sourceLength, t = batch.targetLength
        precondition(b >= 1 && b <= maxBatch && t >= 1 && t <= maxTargetLength, "batch \(b)x\(t) exceeds the model's buffers")
        precondition(batch.decoderInput.count == b * t && batch.labels.count == b * t, "decoder input/labels are not [B,T]")
        precondition(config.kind != .encoderDecoder || (s >= 1 && s <= maxSourceLength && batch.source.count == b * s),
                     "source is not [B,S] within the model's buffers")
        fit(BatchShape(batch: b, sourceLength: s, targetLength: t))
        let pass = pass(backward: backward)
        var memory: DecoderLayer.Memory?
        if config.kind == .encoderDecoder { memory = encode(batch.source, batch: b, time: s, pass: pass) }
        let hidden = decode(batch.decoderInput, batch: b, time: t, memory: memory, pass: pass)
        let logits = buffers.logits, c = config.dModel
        head.projection.forward(out: logits, inp: hidden, rows: b * t, parameters: parameters)
        let result = loss(logits: logits, labels: batch.labels, smoothing: labelSmoothing, backward: backward)
        if backward {
            let dHidden = buffers.dHidden
            dHidden.baseAddress!.update(repeating: 0, count: b * t * c)
            head.projection.backward(dInp: dHidden, dOut: logits, inp: hidden, rows: b * t, parameters: parameters, gradients: gradients)
            if let range = head.ownParameterRange { pass.gradientsFinal?(range) }
            if let memory {
                memory.gradient.baseAddress!.update(repeating: 0, count: b * s * c)
                backwardDecoder(dHidden, tokens: batch.decoderInput, batch: b, time: t, memory: memory, pass: pass)
                backwardEncoder(memory.gradient, tokens: batch.source, batch: b, time: s, pass: pass)
            } else {
                backwardDecoder(dHidden, tokens: batch.decoderInput, batch: b, time: t, memory: nil, pass: pass)
            }
            pass.gradientsFinal?(embedding.parameterRange)
        }
        return result
    }

    /// An encoder-only model's pass: the (masked) input in `batch.source` [B,S], labels [B,S] that are PAD except at
    /// the positions the loss is taken over. Encoder, masked-LM transform, output projection with its bias, loss.
    private func runMaskedLM(_ batch: TokenBatch, labelSmoothing: Float, backward: Bool) -> LossSum {
        let b = batch.batchSize, s = batch.sourceLength, rows = b * s, c = config.dModel
        precondition(b >= 1 && b <= maxBatch && s >= 1 && s <= maxSourceLength && batch.source.count == rows && batch.labels.count == rows,
                     "an encoder-only batch is inputs and labels of [B,S] within the model's buffers")
        fit(BatchShape(batch: b, sourceLength: s, targetLength: 0))
        guard let transform = maskedLM, let a = buffers.maskedLM else { preconditionFailure("an encoder-only model has a masked-LM head") }
        let pass = pass(backward: backward)
        let memory = encode(batch.source, batch: b, time: s, pass: pass)
        let logits = buffers.logits
        guard backward else {
            // Evaluation keeps every position's logits readable (`withLogits`: fill-mask reads the masks' rows).
            let transformed = transform.forward(input: memory.states, a, rows: rows, keepingDerivative: false, parameters: parameters)
            head.projection.forward(out: logits, inp: transformed, rows: rows, parameters: parameters)
            return loss(logits: logits, labels: batch.labels, smoothing: labelSmoothing, backward: false)
        }
        // Training: only the R positions the loss reads go through the head, as in BERT's own code (`gather_indexes`
        // in Devlin et al.'s run_pretraining.py); the other rows' logits would be computed and thrown away (85% of them
        // with BERT's 15% masking). Rows in order, so the products are a function of the batch alone.
        let chosen = batch.labels.indices.filter { batch.labels[$0] != specialTokens.pad }
        let picked = chosen.count
        // The encoder's output at those positions [R,C] and its gradient: the stacks' gradient ping-pong holds them,
        // free until `backwardEncoder` starts, after the scatter below.
        let gathered = buffers.dOther, dGathered = buffers.dHidden
        for (row, position) in chosen.enumerated() {
            (gathered.baseAddress! + row * c).update(from: memory.states.baseAddress! + position * c, count: c)
        }
        var result = LossSum()
        dGathered.baseAddress!.update(repeating: 0, count: picked * c)
        if picked > 0 {
            let transformed = transform.forward(input: gathered, a, rows: picked, keepingDerivative: true, parameters: parameters)
            head.projection.forward(out: logits, inp: transformed, rows: picked, parameters: parameters)
            result = loss(logits: logits, labels: chosen.map { batch.labels[$0] }, smoothing: labelSmoothing, backward: true)
            a.dNormalized.baseAddress!.update(repeating: 0, count: picked * c)
            head.projection.backward(dInp: a.dNormalized, dOut: logits, inp: transformed, rows: picked, parameters: parameters,
                                     gradients: gradients)
            transform.backward(input: gathered, dInput: dGathered, a, rows: picked, scratch: buffers.scratch,
                               parameters: parameters, gradients: gradients)
        }
        memory.gradient.baseAddress!.update(repeating: 0, count: rows * c)
        for (row, position) in chosen.enumerated() {
            (memory.gradient.baseAddress! + position * c).update(from: dGathered.baseAddress! + row * c, count: c)
        }
        // The head: its transform, the output bias and an untied projection, the arena's last tensors.
        pass.gradientsFinal?(transform.firstParameterOffset..<layout.count)
        backwardEncoder(memory.gradient, tokens: batch.source, batch: b, time: s, pass: pass)
        pass.gradientsFinal?(embedding.parameterRange)
        return result
    }

    /// The summed cross-entropy of `logits` [N, V] against `labels` [N] (PAD ignored); with `backward`, ∂L/∂logits
    /// overwrite the logits in place (each row is read before it is written).
    private func loss(logits: FloatBuffer, labels: [Int32], smoothing: Float, backward: Bool) -> LossSum {
        let result = labels.withUnsafeBufferPointer { labels in
            crossEntropy(logits: logits, targets: labels, vocabulary: config.vocabSize, smoothing: smoothing, ignored: specialTokens.pad,
                         dLogits: backward ? logits : nil)
        }
        return LossSum(loss: result.loss, targetTokens: result.targetTokens, correct: result.correct)
    }

    // MARK: Stacks

    /// The encoder over framed sources [B,S]: its output [B·S, C] with the padding mask, as the decoder's memory.
    private func encode(_ tokens: [Int32], batch: Int, time: Int, pass: Pass) -> DecoderLayer.Memory {
        let padding = buffers.sourcePadding
        for i in 0..<(batch * time) { padding[i] = tokens[i] == specialTokens.pad }
        var x = buffers.encoderEmbedded
        embedding.forward(out: x, tokens: tokens, batch: batch, time: time, positions: positionTable(), dropout: pass.dropout(site: 0),
                          parameters: parameters)
        for (layer, a) in zip(encoderLayers, buffers.encoderLayers) {
            x = layer.forward(x: x, a, batch: batch, time: time, padding: UnsafeBufferPointer(padding), pass: pass)
        }
        if let norm = encoderNorm, let a = buffers.encoderNorm {
            norm.forward(a, inp: x, rows: batch * time, parameters: parameters)
            x = a.out
        }
        return DecoderLayer.Memory(states: x, padding: UnsafeBufferPointer(padding), time: time, gradient: buffers.dMemory)
    }

    /// The decoder over decoder inputs [B,T] (attending to `memory` when there is an encoder): hidden states [B·T, C].
    private func decode(_ tokens: [Int32], batch: Int, time: Int, memory: DecoderLayer.Memory?, pass: Pass) -> FloatBuffer {
        var x = buffers.decoderEmbedded
        embedding.forward(out: x, tokens: tokens, batch: batch, time: time, positions: positionTable(), dropout: pass.dropout(site: 1),
                          parameters: parameters)
        for (layer, a) in zip(decoderLayers, buffers.decoderLayers) {
            x = layer.forward(x: x, a, batch: batch, time: time, memory: memory, pass: pass)
        }
        if let norm = decoderNorm, let a = buffers.decoderNorm {
            norm.forward(a, inp: x, rows: batch * time, parameters: parameters)
            x = a.out
        }
        return x
    }

    /// The input of decoder layer `index` (the embeddings for the first, the previous layer's output after that;
    /// `index` = the layer count gives the stack's output before its final norm).
    private func decoderInput(_ index: Int) -> FloatBuffer {
        index == 0 ? buffers.decoderEmbedded : decoderLayers[index - 1].output(buffers.decoderLayers[index - 1])
    }

    /// The input of encoder layer `index` (as `decoderInput`).
    private func encoderInput(_ index: Int) -> FloatBuffer {
        index == 0 ? buffers.encoderEmbedded : encoderLayers[index - 1].output(buffers.encoderLayers[index - 1])
    }

    private func backwardDecoder(_ dOutput: FloatBuffer, tokens: [Int32], batch: Int, time: Int, memory: DecoderLayer.Memory?, pass: Pass) {
        backwardStack(dOutput, tokens: tokens, batch: batch, time: time, layers: decoderLayers.count, input: decoderInput,
                      finalNorm: decoderNorm.flatMap { norm in buffers.decoderNorm.map { (norm, $0) } }, embeddingSite: 1,
                      pass: pass) { index, dY, x, pingPong in
            decoderLayers[index].backward(dY: dY, x: x, buffers.decoderLayers[index], batch: batch, time: time, memory: memory,
                                          buffers: pingPong, pass: pass)
        }
    }

    private func backwardEncoder(_ dOutput: FloatBuffer, tokens: [Int32], batch: Int, time: Int, pass: Pass) {
        backwardStack(dOutput, tokens: tokens, batch: batch, time: time, layers: encoderLayers.count, input: encoderInput,
                      finalNorm: encoderNorm.flatMap { norm in buffers.encoderNorm.map { (norm, $0) } }, embeddingSite: 0,
                      pass: pass) { index, dY, x, pingPong in
            encoderLayers[index].backward(dY: dY, x: x, buffers.encoderLayers[index], batch: batch, time: time,
                                          padding: UnsafeBufferPointer(buffers.sourcePadding), buffers: pingPong, pass: pass)
        }
    }

    /// Backward through one stack given ∂L/∂(its output) [B·T, C]: the final norm (pre-norm models), the layers from the
    /// last to the first (`layerBackward(index, dY, x, buffers)` returns ∂L/∂x), then the embeddings (dropout `embeddingSite`).
    private func backwardStack(_ dOutput: FloatBuffer, tokens: [Int32], batch: Int, time: Int, layers: Int, input: (Int) -> FloatBuffer,
                               finalNorm: (LayerNorm, LayerNorm.Activations)?, embeddingSite: UInt64, pass: Pass,
                               layerBackward: (Int, FloatBuffer, FloatBuffer, GradientPingPong) -> FloatBuffer) {
        let rows = batch * time
        let pingPong = GradientPingPong(first: buffers.dHidden, second: buffers.dOther, count: rows * config.dModel)
        var dX = dOutput
        if let (norm, a) = finalNorm {
            let next = pingPong.next(after: dX)
            norm.backward(dInp: next, dOut: dX, inp: input(layers), a, rows: rows, parameters: parameters, gradients: gradients)
            dX = next
            pass.gradientsFinal?(norm.parameterRange)
        }
        for index in (0..<layers).reversed() {
            dX = layerBackward(index, dX, input(index), pingPong)
        }
        embedding.backward(dX: dX, tokens: tokens, batch: batch, time: time, dropout: pass.dropout(site: embeddingSite),
                           dropped: buffers.scratch.dDropped, gradients: gradients)
    }

    /// The encoder alone, for decoding: framed sources [B,S] → memory [B·S, C] (valid until the next call).
    func encodeForDecoding(source: [Int32], batch: Int, time: Int) -> FloatBuffer {
        precondition(config.kind.hasEncoder, "only a model with an encoder encodes")
        precondition(batch >= 1 && batch <= maxBatch && time >= 1 && time <= maxSourceLength && source.count == batch * time,
                     "source \(batch)x\(time) does not fit the model's buffers")
        fit(BatchShape(batch: batch, sourceLength: time, targetLength: 0))
        let evaluation = Pass(parameters: parameters, gradients: gradients, scratch: buffers.scratch, dropoutProbability: 0,
                              dropoutSeed: 0, keepDerivatives: false, gradientsFinal: nil)
        return encode(source, batch: batch, time: time, pass: evaluation).states
    }
}

extension TransformerModel {
    /// The encoder's output, the contextual representation of every position, for tokens [B,S] (PAD after each
    /// sequence, masked as keys): hidden states [B·S, C], after the final norm of a pre-norm model. Throws
    /// `ModelConfigError` for a model without an encoder or a batch beyond its buffers.
    public func encoderHiddenStates(_ tokens: [Int32], batch: Int, time: Int) throws(ModelConfigError) -> [Float] {
        guard config.kind.hasEncoder else {
            throw ModelConfigError(key: "kind", message: "a \(config.kind.rawValue) model has no encoder to take hidden states from")
        }
        guard batch >= 1, batch <= maxBatch, time >= 1, time <= maxSourceLength, tokens.count == batch * time else {
            throw ModelConfigError(key: "max_length", message: "\(batch) sequences of \(time) tokens do not fit the model's buffers "
                                                             + "(\(maxBatch) of \(maxSourceLength))")
        }
        return Array(encodeForDecoding(source: tokens, batch: batch, time: time).prefix(batch * time * config.dModel))
    }

    /// Fill-mask (Hugging Face's `fill-mask` pipeline) for an encoder-only model: for each position of `tokens` [T]
    /// holding `maskToken`, the `topK` (0: all) most likely of the `candidates` (the tokenizer's ordinary tokens)
    /// with their probabilities under the softmax over the whole vocabulary, most likely first. Throws
    /// `ModelConfigError` for a model of another kind or a sequence beyond its context.
    public func fillMask(_ tokens: [Int32], maskToken: Int32, candidates: Range<Int32>,
                         topK: Int) throws(ModelConfigError) -> [[(token: Int32, probability: Double)]] {
        guard config.kind == .encoderOnly else {
            throw ModelConfigError(key: "kind", message: "fill-mask needs an encoder-only model, not \(config.kind.rawValue)")
        }
        guard !tokens.isEmpty, tokens.count <= maxSourceLength else {
            throw ModelConfigError(key: "max_length", message: "\(tokens.count) tokens do not fit the model's context of \(maxSourceLength)")
        }
        let wasTraining = training
        training = false
        defer { training = wasTraining }
        let t = tokens.count, v = config.vocabSize
        forward(TokenBatch(batchSize: 1, sourceLength: t, targetLength: t, source: tokens, decoderInput: [],
                           labels: [Int32](repeating: specialTokens.pad, count: t), pad: specialTokens.pad))
        let positions = tokens.indices.filter { tokens[$0] == maskToken }
        return withLogits { logits in
            positions.map { position in
                Self.mostLikely(FloatBuffer(rebasing: logits[(position * v)..<((position + 1) * v)]),
                                candidates: candidates.clamped(to: 0..<Int32(v)), excluding: maskToken, count: topK)
            }
        }
    }
}

extension TransformerModel {
    /// The `count` (0: all) most likely `candidates` of one row of logits [V] (never `excluded`), with their
    /// probabilities under the softmax over the whole row; ties go to the smaller id.
    static func mostLikely(_ row: FloatBuffer, candidates: Range<Int32>, excluding excluded: Int32,
                           count: Int) -> [(token: Int32, probability: Double)] {
        let largest = Double(row.max() ?? 0)
        var total = 0.0
        for logit in row { total += exp(Double(logit) - largest) }
        var ranked: [(token: Int32, logit: Float)] = []
        for id in candidates where id != excluded { ranked.append((id, row[Int(id)])) }
        ranked.sort { $0.logit != $1.logit ? $0.logit > $1.logit : $0.token < $1.token }
        return ranked.prefix(count > 0 ? count : ranked.count).map { ($0.token, exp(Double($0.logit) - largest) / total) }
    }
}

/// Summed loss over a batch and what it was summed over.
public struct LossSum: Sendable, Equatable {
    /// Σ of the token losses (nats).
    public var loss: Double
    /// Real target tokens counted.
    public var targetTokens: Int
    /// Of those, the ones whose most likely prediction is the target.
    public var correct: Int

    /// A sum (zero unless given).
    public init(loss: Double = 0, targetTokens: Int = 0, correct: Int = 0) {
        self.loss = loss
        self.targetTokens = targetTokens
        self.correct = correct
    }
}

// MARK: Attention maps

/// One attention layer's probabilities from the last forward pass, for pictures of attention.
public struct AttentionMap: Sendable {
    /// Which attention of the layer.
    public enum Kind: String, Sendable, CaseIterable {
        case encoderSelfAttention = "encoder self-attention"
        case decoderSelfAttention = "decoder self-attention"
        case crossAttention = "cross-attention"

        /// A name for files and HDF5 datasets: `encoder_self_attention`, ...
        public var identifier: String { rawValue.replacingOccurrences(of: "-", with: "_").replacingOccurrences(of: " ", with: "_") }
    }

    /// Which attention of the layer it is.
    public let kind: Kind
    /// The layer's index in its stack, from 0.
    public let layer: Int
    /// The attention's parameter prefix, as its projections are named: `encoder.layers.0.self_attn`,
    /// `decoder.layers.1.self_attn`, `decoder.layers.1.cross_attn`.
    public let module: String
    /// The shape of `probabilities`: rows, heads, queries and keys.
    public let batch: Int, heads: Int, queryTime: Int, keyTime: Int
    /// [B, H, Tq, Tk]: softmax weights of each query over the keys (rows sum to 1; masked keys 0).
    public let probabilities: [Float]
}

extension TransformerModel {
    /// Every attention layer's probabilities for `batch`, after running the model on it without training: encoder
    /// layers first, then each decoder layer's self-attention and cross-attention. They are computed from the
    /// training kernels' own forward (its log-sum-exp per query), as its backward recomputes them.
    public func attentionMaps(_ batch: TokenBatch) -> [AttentionMap] {
        forwardWithoutTraining(batch)
        let b = batch.batchSize, source = batch.sourceLength, target = batch.targetLength
        let padding = UnsafeBufferPointer(buffers.sourcePadding)
        func map(_ kind: AttentionMap.Kind, layer: Int, _ block: AttentionBlock, _ a: AttentionBlock.Activations, queryTime: Int,
                 keyTime: Int) -> AttentionMap {
            AttentionMap(kind: kind, layer: layer, module: block.attention.prefix, batch: b, heads: block.attention.heads,
                         queryTime: queryTime, keyTime: keyTime,
                         probabilities: block.attention.probabilities(a.attention, batch: b, queryTime: queryTime, keyTime: keyTime,
                                                                      keyPadding: padding))
        }
        var maps: [AttentionMap] = []
        if config.kind.hasEncoder {
            for (index, (layer, a)) in zip(encoderLayers, buffers.encoderLayers).enumerated() {
                maps.append(map(.encoderSelfAttention, layer: index, layer.selfAttention, a.selfAttention, queryTime: source, keyTime: source))
            }
        }
        if config.kind.hasDecoder {
            for (index, (layer, a)) in zip(decoderLayers, buffers.decoderLayers).enumerated() {
                maps.append(map(.decoderSelfAttention, layer: index, layer.selfAttention, a.selfAttention, queryTime: target, keyTime: target))
                if let block = layer.crossAttention, let cross = a.crossAttention {
                    maps.append(map(.crossAttention, layer: index, block, cross, queryTime: target, keyTime: source))
                }
            }
        }
        return maps
    }
}
