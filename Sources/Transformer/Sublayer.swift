import Kernels

/// One residual sublayer: self-attention, cross-attention or feed-forward, with its LayerNorm.
///   post-norm: y = LN(x + f(x))      pre-norm: y = x + f(LN(x))
/// Holds the names of its parameters and the handles of its activations; the model runs it.
final class Sublayer {
    enum Kind: Equatable { case selfAttention(causal: Bool), crossAttention, feedForward }

    let kind: Kind
    /// Distinguishes this sublayer's dropout mask from every other's.
    let dropoutSite: UInt64

    /// Parameter views, resolved once so a step builds no names and looks nothing up.
    struct Linear {
        let weight: TensorView
        let bias: TensorView
    }
    /// q, k, v, o projections (attention) or fc1, fc2 (feed-forward).
    let linears: [Linear]
    let normWeight: TensorView
    let normBias: TensorView
    /// Where this sublayer's parameters start in the arena (its first linear's weight).
    var firstParameterOffset: Int { linears[0].weight.offset }

    // Activations ([rows, C] unless noted); handles into the activation arena.
    let normOut: Int, mean: Int, rstd: Int, sum: Int, output: Int
    // Attention: q [Nq,C], k/v [Nk,C], context [Nq,C], probabilities [B,H,Tq,Tk]. Feed-forward: hidden/activated [N,F].
    let q: Int, k: Int, v: Int, context: Int, probabilities: Int
    let hidden: Int, activated: Int

    /// `prefix` names the parameters ("decoder.layers.0.self_attn"), `norm` the LayerNorm ("decoder.layers.0.norm1").
    init(kind: Kind, prefix: String, norm: String, dropoutSite: UInt64, layout: ParameterLayout, arena: ActivationArena,
         rows: Int, keyRows: Int, queryTime: Int, keyTime: Int, batch: Int, config: ModelConfig) {
        self.kind = kind
        self.dropoutSite = dropoutSite
        let names = kind == .feedForward ? ["fc1", "fc2"] : ["q_proj", "k_proj", "v_proj", "o_proj"]
        linears = names.map { Linear(weight: layout.view("\(prefix).\($0).weight")!, bias: layout.view("\(prefix).\($0).bias")!) }
        normWeight = layout.view("\(norm).weight")!
        normBias = layout.view("\(norm).bias")!
        let c = config.dModel
        normOut = arena.reserve(rows * c)
        mean = arena.reserve(rows)
        rstd = arena.reserve(rows)
        sum = arena.reserve(rows * c)
        output = arena.reserve(rows * c)
        let isAttention = kind != .feedForward
        q = arena.reserve(isAttention ? rows * c : 0)
        k = arena.reserve(isAttention ? keyRows * c : 0)
        v = arena.reserve(isAttention ? keyRows * c : 0)
        context = arena.reserve(isAttention ? rows * c : 0)
        probabilities = arena.reserve(isAttention ? batch * config.heads * queryTime * keyTime : 0)
        hidden = arena.reserve(isAttention ? 0 : rows * config.dFF)
        activated = arena.reserve(isAttention ? 0 : rows * config.dFF)
    }

    /// Parameter names of this sublayer, in forward order.
    static func parameters(_ kind: Kind, prefix: String, norm: String, config: ModelConfig) -> [(String, [Int])] {
        let c = config.dModel, f = config.dFF
        var entries: [(String, [Int])]
        switch kind {
        case .selfAttention, .crossAttention:
            entries = ["q", "k", "v", "o"].flatMap { name in
                [("\(prefix).\(name)_proj.weight", [c, c]), ("\(prefix).\(name)_proj.bias", [c])]
            }
        case .feedForward:
            entries = [("\(prefix).fc1.weight", [f, c]), ("\(prefix).fc1.bias", [f]),
                       ("\(prefix).fc2.weight", [c, f]), ("\(prefix).fc2.bias", [c])]
        }
        return entries + [("\(norm).weight", [c]), ("\(norm).bias", [c])]
    }
}
