import Kernels

/// Decodes one position at a time for `rows` sequences side by side, keeping every decoder self-attention's keys
/// and values (and, for an encoder-decoder model, the cross-attention keys and values of the encoded source), so
/// step t costs O(t) instead of rerunning the decoder over the whole prefix.
///
/// Reads the model's parameters in place (it must not be trained meanwhile); owns its caches and workspace, sized
/// at construction. Not `Sendable`, like the model.
public final class IncrementalDecoder {
    public let model: TransformerModel
    /// Sequences decoded side by side (batch x beams).
    public let rows: Int
    /// Decoder positions the cache holds (at most the model's max_length).
    public let capacity: Int
    /// Positions decoded so far (the next step writes position `length`).
    public private(set) var length = 0
    /// Source positions of the encoded memory (encoder-decoder only; 0 before `encode`).
    public private(set) var sourceLength = 0

    private let buffers = ActivationArena()
    private let x: Int, normOut: Int, mean: Int, rstd: Int, q: Int, k: Int, v: Int, context: Int, output: Int, sum: Int
    private let hidden: Int, activated: Int, logits: Int, scratch: Int, reorderScratch: Int
    private let maxSourceLength: Int
    private let sourcePadding: UnsafeMutableBufferPointer<Bool>
    /// Per decoder sublayer: the cache handles of its keys and values (nil for feed-forward sublayers).
    private let caches: [(keys: Int, values: Int)?]

    /// A decoder for `rows` sequences of up to `capacity` positions; encoder-decoder models also take sources of up
    /// to `maxSourceLength` tokens (framed: source + EOS).
    public init(model: TransformerModel, rows: Int, capacity: Int, maxSourceLength: Int = 0) throws(ModelConfigError) {
        let config = model.config
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
        self.maxSourceLength = isEncoderDecoder ? maxSourceLength : 0
        let c = config.dModel, f = config.dFF
        x = buffers.reserve(rows * c)
        normOut = buffers.reserve(rows * c)
        mean = buffers.reserve(rows)
        rstd = buffers.reserve(rows)
        q = buffers.reserve(rows * c)
        k = buffers.reserve(rows * c)
        v = buffers.reserve(rows * c)
        context = buffers.reserve(rows * c)
        output = buffers.reserve(rows * c)
        sum = buffers.reserve(rows * c)
        hidden = buffers.reserve(rows * f)
        activated = buffers.reserve(rows * f)
        logits = buffers.reserve(rows * config.vocabSize)
        scratch = buffers.reserve(rows * config.heads * max(capacity, self.maxSourceLength))
        reorderScratch = buffers.reserve(rows * capacity * c)
        let buffers = self.buffers
        let sourceCapacity = self.maxSourceLength
        caches = model.decoder.map { sublayer in
            switch sublayer.kind {
            case .selfAttention: return (buffers.reserve(rows * capacity * c), buffers.reserve(rows * capacity * c))
            case .crossAttention: return (buffers.reserve(rows * sourceCapacity * c), buffers.reserve(rows * sourceCapacity * c))
            case .feedForward: return nil
            }
        }
        buffers.allocate()
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
        for first in stride(from: 0, to: batch, by: model.maxBatch) {
            let count = min(model.maxBatch, batch - first)
            let chunk = Array(source[(first * sourceLength)..<((first + count) * sourceLength)])
            let memory = model.encodeForDecoding(source: chunk, batch: count, time: sourceLength)
            for b in 0..<count {
                let memoryRows = UnsafeMutableBufferPointer(rebasing: memory[(b * sourceLength * c)..<((b + 1) * sourceLength * c)])
                for copy in 0..<copies {
                    let row = (first + b) * copies + copy
                    for t in 0..<sourceLength { sourcePadding[row * maxSourceLength + t] = chunk[b * sourceLength + t] == SpecialToken.pad }
                    // Cross-attention keys and values of this source, once per layer, into the row's cache slots.
                    for (sublayer, cache) in zip(model.decoder, caches) where sublayer.kind == .crossAttention {
                        for (linear, handle) in [(sublayer.linears[1], cache!.keys), (sublayer.linears[2], cache!.values)] {
                            let slot = UnsafeMutableBufferPointer(rebasing: buffers[handle][(row * maxSourceLength * c)...])
                            linearForward(out: slot, inp: memoryRows, weight: model.parameters[linear.weight],
                                          bias: model.parameters[linear.bias], rows: sourceLength, inFeatures: c, outFeatures: c)
                        }
                    }
                }
            }
        }
    }

    /// Starts over without a source (decoder-only models, or a new prompt).
    public func reset() { length = 0 }

    /// Feeds one token per row at position `length` and computes the next-token logits of every row.
    public func step(_ tokens: [Int32]) {
        let config = model.config, c = config.dModel, parameters = model.parameters
        precondition(tokens.count == rows, "a step takes one token per row (\(rows)), got \(tokens.count)")
        precondition(length < capacity, "the decoding cache is full (\(capacity) positions)")
        precondition(config.kind == .decoderOnly || sourceLength > 0, "encode a source before decoding")
        let position = length
        var x = buffers[self.x]
        tokens.withUnsafeBufferPointer { ids in
            embeddingForward(out: x, tokens: ids, table: parameters[model.embedView], vocabulary: config.vocabSize, channels: c,
                             scale: config.scaleEmbedding ? Float(c).squareRoot() : 1)
        }
        let positions = model.positionTable()
        addPositionsForward(out: x, positions: UnsafeMutableBufferPointer(rebasing: positions[(position * c)..<((position + 1) * c)]),
                            batch: rows, time: 1, channels: c)
        let isPost = config.norm == .post
        for (sublayer, cache) in zip(model.decoder, caches) {
            if !isPost { norm(sublayer, x) }
            let input = isPost ? x : buffers[normOut]
            let out = buffers[output]
            switch sublayer.kind {
            case .selfAttention:
                project(sublayer.linears[0], input, into: buffers[q])
                project(sublayer.linears[1], input, into: buffers[k])
                project(sublayer.linears[2], input, into: buffers[v])
                store(k, into: cache!.keys, at: position)
                store(v, into: cache!.values, at: position)
                cachedAttentionForward(out: buffers[context], scratch: buffers[scratch], q: buffers[q], keys: buffers[cache!.keys],
                                       values: buffers[cache!.values], keyPadding: nil, rows: rows, length: position + 1,
                                       capacity: capacity, channels: c, heads: config.heads)
                project(sublayer.linears[3], buffers[context], into: out)
            case .crossAttention:
                project(sublayer.linears[0], input, into: buffers[q])
                cachedAttentionForward(out: buffers[context], scratch: buffers[scratch], q: buffers[q], keys: buffers[cache!.keys],
                                       values: buffers[cache!.values], keyPadding: UnsafeBufferPointer(sourcePadding), rows: rows,
                                       length: sourceLength, capacity: maxSourceLength, channels: c, heads: config.heads)
                project(sublayer.linears[3], buffers[context], into: out)
            case .feedForward:
                let f = config.dFF, (fc1, fc2) = (sublayer.linears[0], sublayer.linears[1])
                linearForward(out: buffers[hidden], inp: input, weight: parameters[fc1.weight], bias: parameters[fc1.bias],
                              rows: rows, inFeatures: c, outFeatures: f)
                switch config.activation {
                case .relu: reluForward(out: buffers[activated], inp: buffers[hidden], count: rows * f)
                case .gelu: geluForward(out: buffers[activated], inp: buffers[hidden], count: rows * f)
                }
                linearForward(out: out, inp: buffers[activated], weight: parameters[fc2.weight], bias: parameters[fc2.bias],
                              rows: rows, inFeatures: f, outFeatures: c)
            }
            residualForward(out: buffers[sum], a: x, b: out, count: rows * c)
            if isPost {
                norm(sublayer, buffers[sum])
                _ = buffers[self.x].update(fromContentsOf: buffers[normOut])
            } else {
                _ = buffers[self.x].update(fromContentsOf: buffers[sum])
            }
            x = buffers[self.x]
        }
        var hiddenState = x
        if let final = model.decoderFinal {
            layerNormForward(out: buffers[normOut], mean: buffers[mean], rstd: buffers[rstd], inp: x, weight: parameters[final.weight],
                             bias: parameters[final.bias], rows: rows, channels: c)
            hiddenState = buffers[normOut]
        }
        linearForward(out: buffers[logits], inp: hiddenState, weight: parameters[model.outputView], bias: nil, rows: rows,
                      inFeatures: c, outFeatures: config.vocabSize)
        length += 1
    }

    /// The last step's logits, [rows, V].
    public func withLogits<R>(_ body: (UnsafeMutableBufferPointer<Float>) throws -> R) rethrows -> R { try body(buffers[logits]) }

    /// Row r continues the sequence that row order[r] held (beam search keeps the surviving hypotheses).
    public func reorder(_ order: [Int]) {
        precondition(order.count == rows, "reorder takes one source row per row (\(rows)), got \(order.count)")
        if order.elementsEqual(0..<rows) { return }
        let c = model.config.dModel
        for (sublayer, cache) in zip(model.decoder, caches) where sublayer.kind != .crossAttention && sublayer.kind != .feedForward {
            for handle in [cache!.keys, cache!.values] {
                gatherRows(buffers[handle], order: order, rowWidth: capacity * c, used: length * c, scratch: buffers[reorderScratch])
            }
        }
    }

    /// Copies this step's keys or values [R,C] into their cache [R,capacity,C] at `position`.
    private func store(_ fresh: Int, into cache: Int, at position: Int) {
        let c = model.config.dModel, source = buffers[fresh], target = buffers[cache]
        for r in 0..<rows {
            let slot = (r * capacity + position) * c
            _ = UnsafeMutableBufferPointer(rebasing: target[slot..<(slot + c)])
                .update(fromContentsOf: UnsafeMutableBufferPointer(rebasing: source[(r * c)..<((r + 1) * c)]))
        }
    }

    private func project(_ linear: Sublayer.Linear, _ input: UnsafeMutableBufferPointer<Float>, into out: UnsafeMutableBufferPointer<Float>) {
        let c = model.config.dModel
        linearForward(out: out, inp: input, weight: model.parameters[linear.weight], bias: model.parameters[linear.bias],
                      rows: rows, inFeatures: c, outFeatures: c)
    }

    private func norm(_ sublayer: Sublayer, _ input: UnsafeMutableBufferPointer<Float>) {
        layerNormForward(out: buffers[normOut], mean: buffers[mean], rstd: buffers[rstd], inp: input,
                         weight: model.parameters[sublayer.normWeight], bias: model.parameters[sublayer.normBias],
                         rows: rows, channels: model.config.dModel)
    }
}
