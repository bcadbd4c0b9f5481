import Basics
import Kernels

/// Decodes one position at a time for `rows` sequences side by side, keeping every decoder self-attention's keys
/// and values (and, for an encoder-decoder model, the cross-attention keys and values of the encoded source), so
/// step t costs O(t) instead of rerunning the decoder over the whole prefix. It runs the model's own layers
/// (`Embedding.step`, `DecoderLayer.step`, the final norm and the head) on one position.
///
/// Reads the model's parameters in place (it must not be trained meanwhile); owns its caches and workspace, sized
/// at construction. Not `Sendable`, like the model.
public final class IncrementalDecoder {
    /// The model whose parameters it reads.
    public let model: TransformerModel
    /// Sequences decoded side by side (batch x beams).
    public let rows: Int
    /// Decoder positions the cache holds (at most the model's max_length).
    public let capacity: Int
    /// Positions decoded so far (the next step writes position `length`).
    public private(set) var length = 0
    /// Source positions of the encoded memory (encoder-decoder only; 0 before `encode`).
    public private(set) var sourceLength = 0

    private let arena: ActivationArena
    private let step: DecoderLayer.StepActivations
    private let caches: [DecoderLayer.Cache]
    private let finalNorm: LayerNorm.Activations      // [R, C]
    private let logits: FloatBuffer                    // [R, V]
    private let reorderScratch: FloatBuffer            // [R, capacity·C]
    private let maxSourceLength: Int
    private let sourcePadding: UnsafeMutableBufferPointer<Bool>  // [R, maxSourceLength]

    /// A decoder for `rows` sequences of up to `capacity` positions; encoder-decoder models also take sources of up
    /// to `maxSourceLength` tokens (framed: source + EOS).
    public init(model: TransformerModel, rows: Int, capacity: Int, maxSourceLength: Int = 0) throws(ModelConfigError) {
        let config = model.config
        guard config.kind.hasDecoder else {
            throw ModelConfigError(key: "kind", message: "an encoder-only model does not decode token by token (fill its masks instead)")
        }
        guard rows >= 1 else { throw ModelConfigError(key: "rows", message: "decoding needs at least one sequence, got \(rows)") }
        guard capacity >= 1, capacity <= config.maxLength else {
            throw ModelConfigError(key: "max_length", message: "decoding \(capacity) positions exceeds max_length \(config.maxLength)")
        }
        let isEncoderDecoder = config.kind == .encoderDecoder
        guard !isEncoderDecoder || (maxSourceLength >= 1 && maxSourceLength <= config.maxLength) else {
            throw ModelConfigError(key: "max_length", message: "source length \(maxSourceLength) is outside 1...\(config.maxLength)")
        }
        self.model = model
        self.rows = rows
        self.capacity = capacity
        let sourceCapacity = isEncoderDecoder ? maxSourceLength : 0
        self.maxSourceLength = sourceCapacity
        func carve(_ arena: ActivationArena)
            -> (DecoderLayer.StepActivations, [DecoderLayer.Cache], LayerNorm.Activations, FloatBuffer, FloatBuffer) {
            let c = config.dModel
            let step = DecoderLayer.StepActivations(rows: rows, longestCache: max(capacity, sourceCapacity), config: config, arena: arena)
            let caches = model.decoderLayers.map { layer in
                DecoderLayer.Cache(selfAttention: MultiHeadAttention.Cache(rows: rows, capacity: capacity, channels: c, arena: arena),
                                   crossAttention: layer.crossAttention == nil ? nil
                                       : MultiHeadAttention.Cache(rows: rows, capacity: sourceCapacity, channels: c, arena: arena))
            }
            return (step, caches, LayerNorm.Activations(rows: rows, channels: c, arena: arena), arena.carve(rows * config.vocabSize),
                    arena.carve(rows * capacity * c))
        }
        let counting = ActivationArena.counting()
        _ = carve(counting)
        if let shortfall = MemoryBudget.shortfall(counting.usedFloats * 4, for: "decoding \(rows) sequence(s) of \(capacity) positions") {
            throw ModelConfigError(key: "rows", message: shortfall)
        }
        arena = ActivationArena(floats: counting.used)
        (step, caches, finalNorm, logits, reorderScratch) = carve(arena)
        sourcePadding = .allocate(capacity: max(1, rows * sourceCapacity))
        sourcePadding.initialize(repeating: false)
    }

    deinit { sourcePadding.deallocate() }

    /// Encoder-decoder: encodes framed, padded sources [B,S] (source + EOS, then PAD) and gives source b to rows
    /// b·(rows/B) ..< (b+1)·(rows/B) (beams of one source share it). Clears the decoder cache.
    public func encode(source: [Int32], batch: Int, sourceLength: Int) {
        let config = model.config, c = config.dModel
        precondition(config.kind == .encoderDecoder, "only an encoder-decoder model encodes a source")
        precondition(batch >= 1 && rows % batch == 0, "\(rows) decoding rows cannot be split evenly over \(batch) sources")
        precondition(sourceLength >= 1 && sourceLength <= maxSourceLength && source.count == batch * sourceLength,
                     "source \(batch)x\(sourceLength) does not fit the decoder (at most \(maxSourceLength) positions)")
        let copies = rows / batch
        self.sourceLength = sourceLength
        length = 0
        // The model's buffers may hold fewer rows than there are sources: encode in chunks.
        let rowsPerPass = model.rowsThatFit(sourceLength: sourceLength)
        for first in stride(from: 0, to: batch, by: rowsPerPass) {
            let count = min(rowsPerPass, batch - first)
            let chunk = Array(source[(first * sourceLength)..<((first + count) * sourceLength)])
            let memory = model.encodeForDecoding(source: chunk, batch: count, time: sourceLength)
            for b in 0..<count {
                let states = FloatBuffer(rebasing: memory[(b * sourceLength * c)..<((b + 1) * sourceLength * c)])
                for copy in 0..<copies {
                    let row = (first + b) * copies + copy
                    for t in 0..<sourceLength { sourcePadding[row * maxSourceLength + t] = chunk[b * sourceLength + t] == model.specialTokens.pad }
                    // Cross-attention keys and values of this source, once per layer, into the row's cache slots.
                    for (layer, cache) in zip(model.decoderLayers, caches) {
                        guard let crossAttention = layer.crossAttention, let crossCache = cache.crossAttention else { continue }
                        crossAttention.attention.cacheSource(states, length: sourceLength, row: row, in: crossCache, parameters: model.parameters)
                    }
                }
            }
        }
    }

    /// Starts over without a source (decoder-only models, or a new prompt).
    public func reset() { length = 0 }

    /// Decoder-only: starts over with `tokens` (a prompt, the same for every row) in the cache, ready to `step` its next
    /// token. The first tokens the model's buffers hold (`maxTargetLength`) go through one pass of the decoder stack,
    /// whose tiled attention covers the whole prompt at once (no head: no logits), and each layer's keys and values
    /// are copied into the cache; any further tokens are stepped one at a time.
    public func prefill(_ tokens: [Int32]) {
        let config = model.config, c = config.dModel
        precondition(config.kind == .decoderOnly, "only a decoder-only model takes a prompt")
        precondition(tokens.count <= capacity, "a prompt of \(tokens.count) tokens exceeds the decoding cache (\(capacity) positions)")
        length = 0
        let direct = min(tokens.count, model.maxTargetLength)
        if direct > 0 {
            model.runDecoderStack(Array(tokens[..<direct]))
            for (index, cache) in caches.enumerated() {
                let (keys, values) = model.decoderSelfAttentionKeysValues(index)
                for row in 0..<rows {
                    let slot = row * cache.selfAttention.capacity * c
                    (cache.selfAttention.keys.baseAddress! + slot).update(from: keys.baseAddress!, count: direct * c)
                    (cache.selfAttention.values.baseAddress! + slot).update(from: values.baseAddress!, count: direct * c)
                }
            }
            length = direct
        }
        for token in tokens[direct...] { step([Int32](repeating: token, count: rows)) }
    }

    /// Feeds one token per row at position `length` and computes the next-token logits of every row.
    public func step(_ tokens: [Int32]) {
        let config = model.config, parameters = model.parameters
        precondition(tokens.count == rows, "a step takes one token per row (\(rows)), got \(tokens.count)")
        precondition(length < capacity, "the decoding cache is full (\(capacity) positions)")
        precondition(config.kind == .decoderOnly || sourceLength > 0, "encode a source before decoding")
        model.embedding.step(out: step.x, tokens: tokens, position: length, positions: model.positionTable(), parameters: parameters)
        for (layer, cache) in zip(model.decoderLayers, caches) {
            layer.step(step, rows: rows, position: length, cache: cache, sourceLength: sourceLength,
                       sourcePadding: UnsafeBufferPointer(sourcePadding), parameters: parameters)
        }
        var hidden = step.x
        if let norm = model.decoderNorm {
            norm.forward(finalNorm, inp: step.x, rows: rows, parameters: parameters)
            hidden = finalNorm.out
        }
        model.head.projection.forward(out: logits, inp: hidden, rows: rows, parameters: parameters)
        length += 1
    }

    /// The last step's logits, [rows, V].
    public func withLogits<R>(_ body: (UnsafeMutableBufferPointer<Float>) throws -> R) rethrows -> R { try body(logits) }

    /// Row r continues the sequence that row order[r] held (beam search keeps the surviving hypotheses).
    public func reorder(_ order: [Int]) {
        precondition(order.count == rows, "reorder takes one source row per row (\(rows)), got \(order.count)")
        if order.elementsEqual(0..<rows) { return }
        let c = model.config.dModel
        for cache in caches {
            for buffer in [cache.selfAttention.keys, cache.selfAttention.values] {
                gatherRows(buffer, order: order, rowWidth: capacity * c, used: length * c, scratch: reorderScratch)
            }
        }
    }
}
