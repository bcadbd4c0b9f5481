import Kernels

/// The position-wise feed-forward network ("Attention Is All You Need" §3.3): FFN(x) = act(x·W1ᵀ + b1)·W2ᵀ + b2,
/// act ReLU (the paper) or GELU (PyTorch's exact form, as GPT models use).
struct FeedForward {
    let fc1: Linear, fc2: Linear
    let activation: ModelConfig.Activation

    /// `prefix` names the layer: "encoder.layers.0.ffn" → `...fc1.weight` and so on.
    init(prefix: String, activation: ModelConfig.Activation, layout: ParameterLayout) {
        fc1 = Linear("\(prefix).fc1", layout: layout)
        fc2 = Linear("\(prefix).fc2", layout: layout)
        self.activation = activation
    }

    /// Parameter names and shapes, in layout order.
    static func parameters(prefix: String, channels c: Int, hidden f: Int) -> [(String, [Int])] {
        [("\(prefix).fc1.weight", [f, c]), ("\(prefix).fc1.bias", [f]), ("\(prefix).fc2.weight", [c, f]), ("\(prefix).fc2.bias", [c])]
    }

    /// Where the layer's parameters start in the arena.
    var firstParameterOffset: Int { fc1.weight.offset }

    struct Activations {
        let hidden: FloatBuffer     // [N,F] x·W1ᵀ + b1; while training with GELU, GELU's derivative there instead
        let activated: FloatBuffer  // [N,F] act(hidden)
        let output: FloatBuffer     // [N,C]

        init(rows: Int, channels: Int, hidden: Int, arena: ActivationArena) {
            self.hidden = arena.carve(rows * hidden)
            activated = arena.carve(rows * hidden)
            output = arena.carve(rows * channels)
        }
    }

    /// a.output[N,C] = FFN(input[N,C]). With `keepingDerivative` (training), GELU's derivative replaces its input in
    /// a.hidden, so backward needs neither erf nor exp again.
    func forward(input: FloatBuffer, _ a: Activations, rows: Int, keepingDerivative: Bool, parameters: Arena) -> FloatBuffer {
        let count = rows * fc1.outFeatures
        fc1.forward(out: a.hidden, inp: input, rows: rows, parameters: parameters)
        switch activation {
        case .relu: reluForward(out: a.activated, inp: a.hidden, count: count)
        case .gelu: geluForward(out: a.activated, inp: a.hidden, count: count, derivative: keepingDerivative ? a.hidden : nil)
        case .geluTanh: geluTanhForward(out: a.activated, inp: a.hidden, count: count, derivative: keepingDerivative ? a.hidden : nil)
        }
        fc2.forward(out: a.output, inp: a.activated, rows: rows, parameters: parameters)
        return a.output
    }

    /// Adds ∂L/∂input to `dInput` given ∂L/∂output `dOut`, and the gradients of fc1 and fc2.
    func backward(dOut: FloatBuffer, input: FloatBuffer, dInput: FloatBuffer, _ a: Activations, rows: Int, scratch: BackwardScratch,
                  parameters: Arena, gradients: Arena) {
        let count = rows * fc1.outFeatures
        scratch.dActivated.baseAddress!.update(repeating: 0, count: count)
        fc2.backward(dInp: scratch.dActivated, dOut: dOut, inp: a.activated, rows: rows, parameters: parameters, gradients: gradients)
        scratch.dHidden.baseAddress!.update(repeating: 0, count: count)
        switch activation {
        case .relu: reluBackward(dInp: scratch.dHidden, dOut: scratch.dActivated, inp: a.hidden, count: count)
        case .gelu, .geluTanh: scaleByDerivativeBackward(dInp: scratch.dHidden, dOut: scratch.dActivated, derivative: a.hidden, count: count)
        }
        fc1.backward(dInp: dInput, dOut: scratch.dHidden, inp: input, rows: rows, parameters: parameters, gradients: gradients)
    }
}
