/// SplitMix64 (Steele, Lea and Flood 2014): small, fast, and the same sequence on every rank and machine — for
/// initialisation, epoch permutations, synthetic data, sampling and test data.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    /// The generator's whole state: the same state gives the same sequence.
    public var state: UInt64

    /// A generator whose sequence is determined by `seed`.
    public init(seed: UInt64) { state = seed }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1), from 24 random bits.
    public mutating func nextUnitFloat() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }
}
