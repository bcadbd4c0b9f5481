import Foundation

// MARK: Residual

/// out[n] = a[n] + b[n]
public func residualForward(out: FloatBuffer, a: FloatBuffer, b: FloatBuffer, count: Int) {
    requireCount(out, count, "out")
    parallelFor(count, tile: elementTile) { range in
        for i in range { out[i] = a[i] + b[i] }
    }
}

/// dA[n] += dOut[n];  dB[n] += dOut[n]
public func residualBackward(dA: FloatBuffer, dB: FloatBuffer, dOut: FloatBuffer, count: Int) {
    parallelFor(count, tile: elementTile) { range in
        for i in range {
            dA[i] += dOut[i]
            dB[i] += dOut[i]
        }
    }
}

// MARK: ReLU

/// out[n] = max(inp[n], 0)
public func reluForward(out: FloatBuffer, inp: FloatBuffer, count: Int) {
    requireCount(out, count, "out")
    for i in 0..<count { out[i] = inp[i] > 0 ? inp[i] : 0 }
}

/// dInp[n] += inp[n] > 0 ? dOut[n] : 0
public func reluBackward(dInp: FloatBuffer, dOut: FloatBuffer, inp: FloatBuffer, count: Int) {
    for i in 0..<count where inp[i] > 0 { dInp[i] += dOut[i] }
}

// MARK: GELU (PyTorch's exact form, approximate="none")

private let inverseSqrt2: Float = 0.707_106_781_186_547_5
private let inverseSqrt2Pi: Float = 0.398_942_280_401_432_7

/// out[n] = inp[n] · Φ(inp[n]) = 0.5·x·(1 + erf(x/√2));  derivative[n] = Φ(x) + x·φ(x) when given.
/// `derivative` may be `inp` itself: training keeps the derivative instead of the input, so backward
/// (`scaleByDerivativeBackward`) needs neither erf nor exp again and no extra memory.
public func geluForward(out: FloatBuffer, inp: FloatBuffer, count: Int, derivative: FloatBuffer? = nil) {
    requireCount(out, count, "out")
    let x = inp.baseAddress!, y = out.baseAddress!
    parallelFor(count, tile: elementTile) { range in
        guard let d = derivative?.baseAddress else {
            for i in range { y[i] = x[i] * (0.5 * (1 + fastErfAndGaussian(x[i] * inverseSqrt2).erf)) }
            return
        }
        inBlocks(range, y: y, d: d) { start, length, values, derivatives in
            let input = x + start
            for i in 0..<length {
                let value = input[i]
                let (erf, gaussian) = fastErfAndGaussian(value * inverseSqrt2)
                let cdf = 0.5 * (1 + erf)
                values[i] = value * cdf
                derivatives[i] = cdf + value * (gaussian * inverseSqrt2Pi)
            }
        }
    }
}

/// Runs `compute(start, length, values, derivatives)` over `range` in blocks of at most 256 elements, each filling two
/// stack buffers, then copies them to y and d. For the forward kernels that keep the derivative, where d may be x
/// itself (training keeps it in place of the input): a loop writing d while reading x through pointers the compiler
/// cannot tell apart vectorizes only behind a run-time overlap check, which d == x fails, and it ran scalar (about
/// 10x slower). Stack buffers alias nothing. (`compute` should index from pointers offset by `start`: an
/// overflow-checked `start + i` in the loop also keeps it scalar.)
@inline(__always)
private func inBlocks(_ range: Range<Int>, y: UnsafeMutablePointer<Float>, d: UnsafeMutablePointer<Float>,
                      _ compute: (_ start: Int, _ length: Int, _ values: UnsafeMutablePointer<Float>,
                                  _ derivatives: UnsafeMutablePointer<Float>) -> Void) {
    let block = 256
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * block) { scratch in
        let values = scratch.baseAddress!, derivatives = values + block
        for start in stride(from: range.lowerBound, to: range.upperBound, by: block) {
            let count = min(block, range.upperBound - start)
            compute(start, count, values, derivatives)
            (y + start).update(from: values, count: count)
            (d + start).update(from: derivatives, count: count)
        }
    }
}

/// dInp[n] += dOut[n] · derivative[n]   (the backward of any element-wise function whose derivative was kept)
public func scaleByDerivativeBackward(dInp: FloatBuffer, dOut: FloatBuffer, derivative: FloatBuffer, count: Int) {
    parallelFor(count, tile: elementTile) { range in
        for i in range { dInp[i] += dOut[i] * derivative[i] }
    }
}

/// dInp[n] += dOut[n] · (Φ(x) + x·φ(x)), with φ(x) = e^(−x²/2)/√(2π) — the same exponential erf used.
public func geluBackward(dInp: FloatBuffer, dOut: FloatBuffer, inp: FloatBuffer, count: Int) {
    let x = inp.baseAddress!, dy = dOut.baseAddress!, dx = dInp.baseAddress!
    parallelFor(count, tile: elementTile) { range in
        for i in range {
            let value = x[i]
            let (erf, gaussian) = fastErfAndGaussian(value * inverseSqrt2)
            dx[i] = dx[i] + dy[i] * (0.5 * (1 + erf) + value * (gaussian * inverseSqrt2Pi))
        }
    }
}

/// The definition with libm's erf and exp, for tests of the fast path.
public func geluReference(_ x: Float) -> (value: Float, derivative: Float) {
    let cdf = 0.5 * (1 + erf(x * inverseSqrt2))
    return (x * cdf, cdf + x * inverseSqrt2Pi * exp(-0.5 * x * x))
}

// MARK: GELU, tanh approximation (PyTorch's approximate="tanh"; GPT-2's "gelu_new")

private let sqrt2OverPi: Float = 0.797_884_560_802_865_4
private let geluTanhCubic: Float = 0.044_715

/// out[n] = 0.5·x·(1 + tanh(u)), u = √(2/π)·(x + 0.044715·x³);  derivative[n] = 0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 +
/// 3·0.044715·x²) when given (t = tanh(u); may be `inp` itself, as for `geluForward`). With e = e^(2u), 1 + t = 2e/(e + 1)
/// and 1 − t = 2/(e + 1), each without cancellation; u is computed from x clamped to ±10, where t is ±1 in Float already,
/// so no x³ overflows.
public func geluTanhForward(out: FloatBuffer, inp: FloatBuffer, count: Int, derivative: FloatBuffer? = nil) {
    requireCount(out, count, "out")
    let x = inp.baseAddress!, y = out.baseAddress!
    parallelFor(count, tile: elementTile) { range in
        guard let d = derivative?.baseAddress else {
            for i in range { y[i] = 0.5 * x[i] * tanhGELUTerms(x[i]).onePlusT }
            return
        }
        inBlocks(range, y: y, d: d) { start, length, values, derivatives in
            let input = x + start
            for i in 0..<length {
                let value = input[i]
                let (onePlusT, slope) = tanhGELUTerms(value)
                values[i] = 0.5 * value * onePlusT
                derivatives[i] = 0.5 * onePlusT + slope
            }
        }
    }
}

/// dInp[n] += dOut[n] · (0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²))
public func geluTanhBackward(dInp: FloatBuffer, dOut: FloatBuffer, inp: FloatBuffer, count: Int) {
    let x = inp.baseAddress!, dy = dOut.baseAddress!, dx = dInp.baseAddress!
    parallelFor(count, tile: elementTile) { range in
        for i in range {
            let (onePlusT, slope) = tanhGELUTerms(x[i])
            dx[i] = dx[i] + dy[i] * (0.5 * onePlusT + slope)
        }
    }
}

/// 1 + t (t = tanh(√(2/π)·(x + 0.044715·x³))) and the derivative's second term 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²),
/// from x clamped to ±10 (the term is 0 there in Float).
@inline(__always)
private func tanhGELUTerms(_ value: Float) -> (onePlusT: Float, slope: Float) {
    let raised: Float = value > -10 ? value : -10  // (a NaN becomes -10, as fastExp's clamp)
    let x: Float = raised < 10 ? raised : 10
    let square = x * x
    let e = fastExp(2 * sqrt2OverPi * x * (1 + geluTanhCubic * square))
    let r = 1 / (e + 1)
    let onePlusT = 2 * e * r, oneMinusT = 2 * r
    return (onePlusT, 0.5 * x * onePlusT * oneMinusT * sqrt2OverPi * (1 + 3 * geluTanhCubic * square))
}

/// The tanh-approximated GELU and its derivative with libm's tanh, for tests of the fast path.
public func geluTanhReference(_ x: Float) -> (value: Float, derivative: Float) {
    let t = tanh(sqrt2OverPi * (x + geluTanhCubic * x * x * x))
    return (0.5 * x * (1 + t), 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * sqrt2OverPi * (1 + 3 * geluTanhCubic * x * x))
}

// MARK: Dropout

/// Whether element `index` of dropout stream `seed` is kept: a counter-based hash, so the mask depends on
/// (seed, index) only — the same on any thread split, and recomputed in backward instead of stored.
@inline(__always)
public func dropoutKeeps(seed: UInt64, index: Int, probability: Float) -> Bool {
    var z = seed &+ UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    z ^= z >> 31
    return Float(z >> 40) * (1.0 / 16_777_216.0) >= probability  // 24 random bits, uniform in [0, 1)
}

/// out[n] = keep(n) ? inp[n] / (1 - p) : 0   (p = 0: a copy)
public func dropoutForward(out: FloatBuffer, inp: FloatBuffer, count: Int, probability: Float, seed: UInt64) {
    requireCount(out, count, "out")
    guard probability > 0 else {
        if out.baseAddress != inp.baseAddress { out.baseAddress!.update(from: inp.baseAddress!, count: count) }
        return
    }
    let scale = 1 / (1 - probability)
    parallelFor(count, tile: elementTile) { range in
        for i in range { out[i] = dropoutKeeps(seed: seed, index: i, probability: probability) ? inp[i] * scale : 0 }
    }
}

/// dInp[n] += keep(n) ? dOut[n] / (1 - p) : 0
public func dropoutBackward(dInp: FloatBuffer, dOut: FloatBuffer, count: Int, probability: Float, seed: UInt64) {
    let scale = probability > 0 ? 1 / (1 - probability) : 1
    parallelFor(count, tile: elementTile) { range in
        for i in range where probability == 0 || dropoutKeeps(seed: seed, index: i, probability: probability) {
            dInp[i] += dOut[i] * scale
        }
    }
}

/// into[n] += from[n]
public func accumulate(into: FloatBuffer, from: FloatBuffer, count: Int) {
    parallelFor(count, tile: elementTile) { range in
        for i in range { into[i] += from[i] }
    }
}
