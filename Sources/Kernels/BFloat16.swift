import Basics

// bfloat16 compression of gradient buckets: `BFloat16.bits(rounding:)` sixteen values at a time.

/// out[i] = bf16(inp[i]), rounding to nearest even; NaN stays NaN.   inp[N] → out[N]
public func bfloat16Compress(_ inp: UnsafeBufferPointer<Float>, into out: UnsafeMutableBufferPointer<UInt16>) {
    precondition(out.count >= inp.count, "bfloat16Compress: out holds \(out.count), needs \(inp.count)")
    let source = UnsafeRawPointer(inp.baseAddress!).assumingMemoryBound(to: UInt32.self)
    let target = out.baseAddress!
    var i = 0
    while i + 16 <= inp.count {
        let bits = UnsafeRawPointer(source + i).loadUnaligned(as: SIMD16<UInt32>.self)
        let rounded = (bits &+ 0x7FFF &+ ((bits &>> 16) & 1)) &>> 16
        // The same rule as BFloat16.bits(rounding:): NaN keeps its quiet bit instead of rounding into infinity.
        let isNaN = (bits & 0x7FFF_FFFF) .> 0x7F80_0000
        let quietNaN = (bits &>> 16) | 0x0040
        let result = rounded.replacing(with: quietNaN, where: isNaN)
        UnsafeMutableRawPointer(target + i).storeBytes(of: SIMD16<UInt16>(truncatingIfNeeded: result), as: SIMD16<UInt16>.self)
        i += 16
    }
    while i < inp.count {
        target[i] = BFloat16.bits(rounding: inp[i])
        i += 1
    }
}

/// out[i] = float(inp[i]) (exact).   inp[N] → out[N]
public func bfloat16Decompress(_ inp: UnsafeBufferPointer<UInt16>, into out: UnsafeMutableBufferPointer<Float>) {
    precondition(out.count >= inp.count, "bfloat16Decompress: out holds \(out.count), needs \(inp.count)")
    for i in 0..<inp.count { out[i] = BFloat16.float(inp[i]) }
}
