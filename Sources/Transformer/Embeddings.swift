import Basics
import Kernels

/// Token embedding and positions (§3.4, §3.5): x = table[token] · scale + positions[t], then dropout. The table is
/// `embed.weight` [V, C] (shared by encoder, decoder and, when tied, the output head); positions are the paper's
/// sinusoids [max_length, C] (a fixed table in the activation arena) or learned `pos_embed.weight`.
struct Embedding {
    let table: TensorView
    /// Learned positions (`pos_embed.weight`), or nil for the sinusoidal table.
    let learnedPositions: TensorView?
    /// √C when the model scales embeddings (the paper), else 1.
    let scale: Float
    let vocabulary: Int, channels: Int

    init(config: ModelConfig, layout: ParameterLayout) {
        table = layout.view("embed.weight")!
        learnedPositions = layout.view("pos_embed.weight")
        scale = config.scaleEmbedding ? Float(config.dModel).squareRoot() : 1
        vocabulary = config.vocabSize
        channels = config.dModel
    }

    /// The arena range the embeddings' gradients cover (the table and learned positions, at the arena's start).
    var parameterRange: Range<Int> { table.offset..<((learnedPositions ?? table).offset + (learnedPositions ?? table).count) }

    /// x[B·T, C] = table[tokens] · scale + positions[0..<T]; `positions` is the sinusoid table or the learned one.
    func forward(out x: FloatBuffer, tokens: [Int32], batch: Int, time: Int, positions: FloatBuffer, dropout: Dropout, parameters: Arena) {
        tokens.withUnsafeBufferPointer { ids in
            embeddingForward(out: x, tokens: ids, table: parameters[table], vocabulary: vocabulary, channels: channels, scale: scale)
        }
        addPositionsForward(out: x, positions: positions, batch: batch, time: time, channels: channels)
        dropout.forward(x, count: batch * time * channels)
    }

    /// Adds the embeddings' gradients given ∂L/∂x `dX` (`dropped`, when dropout is on, receives ∂L/∂x before it).
    func backward(dX: FloatBuffer, tokens: [Int32], batch: Int, time: Int, dropout: Dropout, dropped: FloatBuffer, gradients: Arena) {
        let count = batch * time * channels
        var current = dX
        if dropout.isOn {
            dropped.baseAddress!.update(repeating: 0, count: count)
            dropout.backward(dInp: dropped, dOut: current, count: count)
            current = dropped
        }
        if let learnedPositions {
            addPositionsBackward(dPositions: gradients[learnedPositions], dOut: current, batch: batch, time: time, channels: channels)
        }
        tokens.withUnsafeBufferPointer { ids in
            embeddingBackward(dTable: gradients[table], dOut: current, tokens: ids, channels: channels, scale: scale)
        }
    }

    /// One decoding position for `rows` sequences: x[R, C] = table[tokens] · scale + positions[position].
    func step(out x: FloatBuffer, tokens: [Int32], position: Int, positions: FloatBuffer, parameters: Arena) {
        tokens.withUnsafeBufferPointer { ids in
            embeddingForward(out: x, tokens: ids, table: parameters[table], vocabulary: vocabulary, channels: channels, scale: scale)
        }
        addPositionsForward(out: x, positions: FloatBuffer(rebasing: positions[(position * channels)..<((position + 1) * channels)]),
                            batch: tokens.count, time: 1, channels: channels)
    }
}

/// The output projection (§3.4): logits[N, V] = hidden[N, C] · Wᵀ (+ b), W the embedding table when tied, else
/// `lm_head.weight` [V, C]; a bias `mlm_head.bias` [V] only in an encoder-only model's masked-LM head (as BERT's).
struct OutputHead {
    let projection: Linear
    /// Whether the projection is the embedding table (`model.tied_embeddings`).
    let isTied: Bool

    init(config: ModelConfig, layout: ParameterLayout) {
        isTied = config.tiedEmbeddings
        projection = Linear(weight: layout.view(isTied ? "embed.weight" : "lm_head.weight")!, bias: layout.view("mlm_head.bias"))
    }

    /// The arena range of `lm_head.weight` (the last tensor of a model that has it), or nil when tied to the embedding
    /// (whose gradient is final only once the embeddings' backward has run).
    var ownParameterRange: Range<Int>? {
        isTied ? nil : projection.weight.offset..<(projection.weight.offset + projection.weight.count)
    }
}
