import Kernels

// The model's building blocks, as types over the flat parameter arena. A layer holds the views of its parameters
// (resolved once: a step looks nothing up) and, where it keeps activations between forward and backward, a named
// `Activations` struct of buffers carved from the model's activation arena, each with its shape in a comment
// (B batch, T time, S source time, C d_model, F d_ff, H heads, V vocabulary, N rows = B·T). Forward overwrites its
// outputs; backward ACCUMULATES (+=) into gradients and into the gradient of its input.

/// torch.nn.Linear: out[N,O] = inp[N,I] · weight[O,I]ᵀ + bias[O].
struct Linear {
    let weight: TensorView
    let bias: TensorView?
    var inFeatures: Int { weight.shape[1] }
    var outFeatures: Int { weight.shape[0] }

    /// `name`.weight and, with `bias`, `name`.bias of `layout`.
    init(_ name: String, layout: ParameterLayout, bias: Bool = true) {
        weight = layout.view("\(name).weight")!
        self.bias = bias ? layout.view("\(name).bias")! : nil
    }

    init(weight: TensorView, bias: TensorView?) {
        self.weight = weight
        self.bias = bias
    }

    /// out[N,O] = inp[N,I] · Wᵀ + b
    func forward(out: FloatBuffer, inp: FloatBuffer, rows: Int, parameters: Arena) {
        linearForward(out: out, inp: inp, weight: parameters[weight], bias: bias.map { parameters[$0] }, rows: rows,
                      inFeatures: inFeatures, outFeatures: outFeatures)
    }

    /// dInp[N,I] += dOut · W;  dW += dOutᵀ · inp;  db += Σₙ dOut
    func backward(dInp: FloatBuffer?, dOut: FloatBuffer, inp: FloatBuffer, rows: Int, parameters: Arena, gradients: Arena) {
        linearBackward(dInp: dInp, dWeight: gradients[weight], dBias: bias.map { gradients[$0] }, dOut: dOut, inp: inp,
                       weight: parameters[weight], rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
    }
}

/// torch.nn.LayerNorm over the last dimension C (ε 1e-5), with a gain and a bias.
struct LayerNorm {
    let weight: TensorView
    let bias: TensorView

    init(_ name: String, layout: ParameterLayout) {
        weight = layout.view("\(name).weight")!
        bias = layout.view("\(name).bias")!
    }

    /// The arena range of the gain and the bias (laid out together).
    var parameterRange: Range<Int> { weight.offset..<(bias.offset + bias.count) }

    struct Activations {
        let out: FloatBuffer   // [N,C]
        let mean: FloatBuffer  // [N]
        let rstd: FloatBuffer  // [N]

        init(rows: Int, channels: Int, arena: ActivationArena) {
            out = arena.carve(rows * channels)
            mean = arena.carve(rows)
            rstd = arena.carve(rows)
        }
    }

    /// a.out[N,C] = (inp − mean) · rstd · weight + bias, per row
    func forward(_ a: Activations, inp: FloatBuffer, rows: Int, parameters: Arena) {
        layerNormForward(out: a.out, mean: a.mean, rstd: a.rstd, inp: inp, weight: parameters[weight], bias: parameters[bias],
                         rows: rows, channels: weight.count)
    }

    /// dInp[N,C] += ∂L/∂inp;  dWeight, dBias += their sums over rows
    func backward(dInp: FloatBuffer, dOut: FloatBuffer, inp: FloatBuffer, _ a: Activations, rows: Int, parameters: Arena,
                  gradients: Arena) {
        layerNormBackward(dInp: dInp, dWeight: gradients[weight], dBias: gradients[bias], dOut: dOut, inp: inp,
                          weight: parameters[weight], mean: a.mean, rstd: a.rstd, rows: rows, channels: weight.count)
    }
}

/// Dropout for one step (`torch.nn.Dropout`): counter-based masks, so backward recomputes the mask from the seed.
struct Dropout {
    let probability: Float
    /// This step's seed for one site of the model (masks differ between sites and between steps).
    let seed: UInt64

    /// A no-op while evaluating or with probability 0.
    static let off = Dropout(probability: 0, seed: 0)

    var isOn: Bool { probability > 0 }

    /// x[n] = keep(n) ? x[n] / (1 − p) : 0, in place
    func forward(_ x: FloatBuffer, count: Int) {
        if isOn { dropoutForward(out: x, inp: x, count: count, probability: probability, seed: seed) }
    }

    /// dInp[n] += keep(n) ? dOut[n] / (1 − p) : 0
    func backward(dInp: FloatBuffer, dOut: FloatBuffer, count: Int) {
        dropoutBackward(dInp: dInp, dOut: dOut, count: count, probability: probability, seed: seed)
    }
}

/// Gradient buffers the layers borrow during backward, one set for the whole model (each layer runs in turn):
/// they hold intermediate gradients, never results.
struct BackwardScratch {
    let dSublayerInput: FloatBuffer   // [N,C] ∂L/∂(the sublayer's input): the residual block's working buffer
    let dDropped: FloatBuffer         // [N,C] ∂L/∂(an output before dropout) (empty without dropout)
    let dContext: FloatBuffer         // [N,C] attention: ∂L/∂(heads' output before o_proj)
    let dQ: FloatBuffer, dK: FloatBuffer, dV: FloatBuffer  // [N,C] attention: ∂L/∂ of the projections
    let dHidden: FloatBuffer          // [N,F] feed-forward: ∂L/∂(fc1's output)
    let dActivated: FloatBuffer       // [N,F] feed-forward: ∂L/∂(the activation's output)

    init(rows: Int, config: ModelConfig, arena: ActivationArena) {
        let c = config.dModel
        dSublayerInput = arena.carve(rows * c)
        dDropped = arena.carve(config.dropout > 0 ? rows * c : 0)
        dContext = arena.carve(rows * c)
        dQ = arena.carve(rows * c)
        dK = arena.carve(rows * c)
        dV = arena.carve(rows * c)
        dHidden = arena.carve(rows * config.dFF)
        dActivated = arena.carve(rows * config.dFF)
    }
}

/// A sublayer f (attention or feed-forward) with its LayerNorm and residual connection, in the model's order:
///   post-norm (the paper): y = LN(x + Dropout(f(x)))
///   pre-norm:              y = x + Dropout(f(LN(x)))
/// It owns the norm; the sublayer's own forward and backward come in as closures.
struct ResidualConnection {
    let norm: LayerNorm
    let placement: ModelConfig.Norm
    /// Distinguishes this connection's dropout mask from every other's.
    let dropoutSite: UInt64

    struct Activations {
        let normalized: LayerNorm.Activations  // [N,C] LN(x) (pre) or LN(x + f) (post), with its row statistics
        let sum: FloatBuffer                   // [N,C] x + Dropout(f)

        init(rows: Int, channels: Int, arena: ActivationArena) {
            normalized = LayerNorm.Activations(rows: rows, channels: channels, arena: arena)
            sum = arena.carve(rows * channels)
        }
    }

    /// Runs y = block(x) with `sublayer` mapping its input to its output buffer [N,C] (which dropout then changes in
    /// place); returns y, one of `a`'s buffers.
    func forward(x: FloatBuffer, _ a: Activations, rows: Int, channels: Int, dropout: Dropout, parameters: Arena,
                 sublayer: (_ input: FloatBuffer) -> FloatBuffer) -> FloatBuffer {
        let count = rows * channels
        switch placement {
        case .post:
            let output = sublayer(x)
            dropout.forward(output, count: count)
            residualForward(out: a.sum, a: x, b: output, count: count)
            norm.forward(a.normalized, inp: a.sum, rows: rows, parameters: parameters)
            return a.normalized.out
        case .pre:
            norm.forward(a.normalized, inp: x, rows: rows, parameters: parameters)
            let output = sublayer(a.normalized.out)
            dropout.forward(output, count: count)
            residualForward(out: a.sum, a: x, b: output, count: count)
            return a.sum
        }
    }

    /// Adds ∂L/∂x to `dX` (zero on entry) given ∂L/∂y; `sublayer(dOutput, input, dInput)` must add ∂L/∂(its input) to
    /// dInput given ∂L/∂(its output).
    func backward(dY: FloatBuffer, dX: FloatBuffer, x: FloatBuffer, _ a: Activations, rows: Int, channels: Int, dropout: Dropout,
                  scratch: BackwardScratch, parameters: Arena, gradients: Arena,
                  sublayer: (_ dOutput: FloatBuffer, _ input: FloatBuffer, _ dInput: FloatBuffer) -> Void) {
        let count = rows * channels
        let dWork = scratch.dSublayerInput
        dWork.baseAddress!.update(repeating: 0, count: count)
        func droppedGradient(_ dOutput: FloatBuffer) -> FloatBuffer {
            guard dropout.isOn else { return dOutput }
            scratch.dDropped.baseAddress!.update(repeating: 0, count: count)
            dropout.backward(dInp: scratch.dDropped, dOut: dOutput, count: count)
            return scratch.dDropped
        }
        switch placement {
        case .post:
            // y = LN(x + f(x)): the norm's input gradient reaches x directly and through f.
            norm.backward(dInp: dWork, dOut: dY, inp: a.sum, a.normalized, rows: rows, parameters: parameters, gradients: gradients)
            accumulate(into: dX, from: dWork, count: count)
            sublayer(droppedGradient(dWork), x, dX)
        case .pre:
            // y = x + f(LN(x)): the output gradient reaches x directly and through f and the norm.
            accumulate(into: dX, from: dY, count: count)
            sublayer(droppedGradient(dY), a.normalized.out, dWork)
            norm.backward(dInp: dX, dOut: dWork, inp: x, a.normalized, rows: rows, parameters: parameters, gradients: gradients)
        }
    }
}
