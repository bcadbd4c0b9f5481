// Vectorised transcendentals for the memory-bound kernels. A scalar expf/erff costs 20-40 cycles per element and
// a W2 step needs tens of millions; these SIMD16 polynomials cost a few cycles per element (with the CPU target
// set, see README "Building for speed"). Both are accurate to a few ulp / 1.5e-7 absolute, well inside the
// PyTorch golden-file tolerances; the scalar definitions stay beside them as references for the tests.

/// Sixteen Float lanes, the vector width of the fast transcendentals.
public typealias Float32x16 = SIMD16<Float>

/// e^x for x in [-87.3, 88.7] (clamped outside): Cephes' expf — x = k·ln2 + r, e^r by a degree-6 polynomial,
/// 2^k built in the exponent bits. Relative error about 2e-7.
@inline(__always)
public func fastExp(_ input: Float32x16) -> Float32x16 {
    // pointwiseMin/Max compile to vector instructions; `clamped` and mask-based `replacing` are scalarised per lane.
    var x = pointwiseMin(pointwiseMax(input, Float32x16(repeating: -87.336_54)), Float32x16(repeating: 88.722_83))
    // Round x·log2(e) to the nearest integer by the 1.5·2^23 trick (no rounding instruction needed).
    let magic = Float32x16(repeating: 12_582_912)
    let shifted = x * 1.442_695_04 + magic
    let k = shifted - magic
    x = x - k * 0.693_359_375
    x = x - k * -2.121_944_4e-4
    var y = Float32x16(repeating: 1.987_569_15e-4)
    y = y * x + 1.398_199_95e-3
    y = y * x + 8.333_451_9e-3
    y = y * x + 4.166_579_6e-2
    y = y * x + 1.666_666_5e-1
    y = y * x + 5.000_000_1e-1
    y = y * x * x + x + 1
    let integer = unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- unsafeBitCast(magic, to: SIMD16<Int32>.self)
    let twoToK = unsafeBitCast((integer &+ 127) &<< 23, to: Float32x16.self)
    return y * twoToK
}

/// erf(z) and e^(−z²) together (GELU needs both): Abramowitz & Stegun 7.1.26, |error| ≤ 1.5e-7.
@inline(__always)
public func fastErfAndGaussian(_ z: Float32x16) -> (erf: Float32x16, gaussian: Float32x16) {
    let a = unsafeBitCast(unsafeBitCast(z, to: SIMD16<UInt32>.self) & 0x7FFF_FFFF, to: Float32x16.self)  // |z|
    let one = Float32x16(repeating: 1)
    let t = one / (one + 0.327_591_1 * a)
    var poly = Float32x16(repeating: 1.061_405_429)
    poly = poly * t - 1.453_152_027
    poly = poly * t + 1.421_413_741
    poly = poly * t - 0.284_496_736
    poly = poly * t + 0.254_829_592
    poly = poly * t
    let gaussian = fastExp(-(a * a))
    let magnitude = one - poly * gaussian
    // erf is odd: copy z's sign bit onto the magnitude.
    let sign = unsafeBitCast(z, to: SIMD16<UInt32>.self) & 0x8000_0000
    let erf = unsafeBitCast(unsafeBitCast(magnitude, to: SIMD16<UInt32>.self) | sign, to: Float32x16.self)
    return (erf, gaussian)
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
