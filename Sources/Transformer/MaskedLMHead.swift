import Kernels

/// The transform of BERT's masked-language-model head (Devlin et al. 2019; Hugging Face's
/// `BertPredictionHeadTransform`): y = LayerNorm(GELU(x·Wᵀ + b)), before the output projection (the embedding table,
/// or `lm_head.weight` when untied, plus the bias `mlm_head.bias` [V]). Parameters `mlm_head.dense.{weight,bias}`
/// [C, C], [C] and `mlm_head.norm.{weight,bias}` [C].
struct MaskedLMTransform {
    let dense: Linear
    let norm: LayerNorm

    init(layout: ParameterLayout) {
        dense = Linear("mlm_head.dense", layout: layout)
        norm = LayerNorm("mlm_head.norm", layout: layout)
    }

    /// Parameter names and shapes, in layout order.
    static func parameters(channels c: Int) -> [(String, [Int])] {
        [("mlm_head.dense.weight", [c, c]), ("mlm_head.dense.bias", [c])] + normParameters("mlm_head.norm", c)
    }

    /// Where the head's parameters start in the arena (the transform, then the output bias and an untied projection).
    var firstParameterOffset: Int { dense.weight.offset }

    struct Activations {
        let hidden: FloatBuffer                  // [N,C] x·Wᵀ + b; while training, GELU's derivative there instead
        let activated: FloatBuffer               // [N,C] GELU(hidden)
        let normalized: LayerNorm.Activations    // [N,C] the transform's output y
        let dNormalized: FloatBuffer             // [N,C] ∂L/∂y (from the output projection)
        let dActivated: FloatBuffer              // [N,C]

        init(rows: Int, channels: Int, arena: ActivationArena) {
            hidden = arena.carve(rows * channels)
            activated = arena.carve(rows * channels)
            normalized = LayerNorm.Activations(rows: rows, channels: channels, arena: arena)
            dNormalized = arena.carve(rows * channels)
            dActivated = arena.carve(rows * channels)
        }
    }

    /// y[N,C] = LayerNorm(GELU(x[N,C]·Wᵀ + b)), in a.normalized.out.
    func forward(input: FloatBuffer, _ a: Activations, rows: Int, keepingDerivative: Bool, parameters: Arena) -> FloatBuffer {
        let count = rows * dense.outFeatures
        dense.forward(out: a.hidden, inp: input, rows: rows, parameters: parameters)
        geluForward(out: a.activated, inp: a.hidden, count: count, derivative: keepingDerivative ? a.hidden : nil)
        norm.forward(a.normalized, inp: a.activated, rows: rows, parameters: parameters)
        return a.normalized.out
    }

    /// Adds ∂L/∂x to `dInput` given ∂L/∂y in a.dNormalized, and the gradients of the dense layer and the norm.
    /// Needs the forward to have kept GELU's derivative.
    func backward(input: FloatBuffer, dInput: FloatBuffer, _ a: Activations, rows: Int, scratch: BackwardScratch, parameters: Arena,
                  gradients: Arena) {
        let count = rows * dense.outFeatures
        a.dActivated.baseAddress!.update(repeating: 0, count: count)
        norm.backward(dInp: a.dActivated, dOut: a.dNormalized, inp: a.activated, a.normalized, rows: rows, parameters: parameters,
                      gradients: gradients)
        let dHidden = scratch.dContext  // [N,C], free while no attention backward runs
        dHidden.baseAddress!.update(repeating: 0, count: count)
        scaleByDerivativeBackward(dInp: dHidden, dOut: a.dActivated, derivative: a.hidden, count: count)
        dense.backward(dInp: dInput, dOut: dHidden, inp: input, rows: rows, parameters: parameters, gradients: gradients)
    }
}
