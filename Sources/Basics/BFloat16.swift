/// bfloat16, the upper 16 bits of a float32 (8 exponent bits like float32, so no overflow or scaling; 8 significant
/// bits, a relative rounding error of at most 2^-8): the one rounding rule of compressed gradient all-reduce, used by
/// the compression kernel and by the MPI sum operator alike.
public enum BFloat16 {
    /// `value` rounded to the nearest bfloat16, ties to even; NaN stays NaN (quiet bit set), never rounding into
    /// infinity.
    @inline(__always)
    public static func bits(rounding value: Float) -> UInt16 {
        let bits = value.bitPattern
        if (bits & 0x7FFF_FFFF) > 0x7F80_0000 { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
        return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
    }

    /// The float32 a bfloat16 stands for (exact).
    @inline(__always)
    public static func float(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }
}
