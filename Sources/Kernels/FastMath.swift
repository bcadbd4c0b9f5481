// Vectorised transcendentals for the memory-bound kernels. A scalar expf/erff costs 20-40 cycles per element and
// a W2 step needs tens of millions; these polynomials cost a few cycles per element (with the CPU target set, see
// README "Building for speed"). Both are accurate to a few ulp / 1.5e-7 absolute, well inside the PyTorch
// golden-file tolerances; the tests compare them with libm.
//
// They take one Float, and kernels call them in plain loops over contiguous memory, which LLVM's loop vectorizer
// turns into vector code at the target's width (8 lanes with AVX2), clamps included. Written on Float32x16 instead,
// the same arithmetic depended on the SLP vectorizer: its clamps (pointwiseMin/Max loop over lanes) came out as
// 4-lane or scalar code, and GELU's forward took 3.3-4.9 ns per element against 1.6-1.9 ns as a loop (measured
// beside other work). Every lane computes the same IEEE operations in the same order either way, and the clamps
// keep pointwiseMin/Max's handling of NaN (it becomes the lower bound), so results are bitwise those of before.

/// Sixteen Float lanes, the vector width of the kernels' chunked loops and sums.
public typealias Float32x16 = SIMD16<Float>

/// e^x for x in [-87.3, 88.7] (clamped outside): Cephes' expf — x = k·ln2 + r, e^r by a degree-6 polynomial,
/// 2^k built in the exponent bits. Relative error about 2e-7.
@inline(__always)
public func fastExp(_ input: Float) -> Float {
    // Comparisons, not Swift.max/min: a NaN input becomes the lower bound, as pointwiseMax/Min made it.
    let low: Float = -87.336_54, high: Float = 88.722_83
    let raised = input > low ? input : low
    var x = raised < high ? raised : high
    // Round x·log2(e) to the nearest integer by the 1.5·2^23 trick (no rounding instruction needed).
    let magic: Float = 12_582_912
    let shifted = x * 1.442_695_04 + magic
    let k = shifted - magic
    x = x - k * 0.693_359_375
    x = x - k * -2.121_944_4e-4
    var y: Float = 1.987_569_15e-4
    y = y * x + 1.398_199_95e-3
    y = y * x + 8.333_451_9e-3
    y = y * x + 4.166_579_6e-2
    y = y * x + 1.666_666_5e-1
    y = y * x + 5.000_000_1e-1
    y = y * x * x + x + 1
    let integer = Int32(bitPattern: shifted.bitPattern) &- Int32(bitPattern: magic.bitPattern)
    return y * Float(bitPattern: UInt32(bitPattern: (integer &+ 127) &<< 23))
}

/// erf(z) and e^(−z²) together (GELU needs both): Abramowitz & Stegun 7.1.26, |error| ≤ 1.5e-7.
@inline(__always)
public func fastErfAndGaussian(_ z: Float) -> (erf: Float, gaussian: Float) {
    let a = Float(bitPattern: z.bitPattern & 0x7FFF_FFFF)  // |z|
    let t = 1 / (1 + 0.327_591_1 * a)
    var poly: Float = 1.061_405_429
    poly = poly * t - 1.453_152_027
    poly = poly * t + 1.421_413_741
    poly = poly * t - 0.284_496_736
    poly = poly * t + 0.254_829_592
    poly = poly * t
    let gaussian = fastExp(-(a * a))
    let magnitude = 1 - poly * gaussian
    // erf is odd: copy z's sign bit onto the magnitude.
    return (Float(bitPattern: magnitude.bitPattern | (z.bitPattern & 0x8000_0000)), gaussian)
}

/// values[j] = fastExp(values[j] − shift) for j < count, in place, then 0 where `padding` is set: the loop every
/// softmax shares (in place, so the compiler vectorizes it without an overlap check).
@inline(__always)
func fastExpInPlace(_ values: UnsafeMutablePointer<Float>, count: Int, minus shift: Float,
                    padding: UnsafeBufferPointer<Bool>? = nil) {
    for j in 0..<count { values[j] = fastExp(values[j] - shift) }
    if let padding { for j in 0..<count where padding[j] { values[j] = 0 } }
}

/// Applies `body` to `count` elements 16 at a time; the tail is padded with zeros, so every element goes
/// through the same arithmetic wherever it sits.
@inline(__always)
func forEachChunk(_ count: Int, _ body: (_ start: Int, _ width: Int) -> Void) {
    var start = 0
    while start < count {
        body(start, min(16, count - start))
        start += 16
    }
}

@inline(__always)
func load(_ pointer: UnsafePointer<Float>, _ width: Int) -> Float32x16 {
    if width == 16 { return UnsafeRawPointer(pointer).loadUnaligned(as: Float32x16.self) }
    var value = Float32x16()
    for i in 0..<width { value[i] = pointer[i] }
    return value
}

@inline(__always)
func store(_ value: Float32x16, _ pointer: UnsafeMutablePointer<Float>, _ width: Int) {
    if width == 16 {
        UnsafeMutableRawPointer(pointer).storeBytes(of: value, as: Float32x16.self)
        return
    }
    for i in 0..<width { pointer[i] = value[i] }
}
