import Kernels
import XCTest

final class BFloat16Tests: XCTestCase {
    private func compress(_ values: [Float]) -> [UInt16] {
        var out = [UInt16](repeating: 0, count: values.count)
        values.withUnsafeBufferPointer { source in out.withUnsafeMutableBufferPointer { bfloat16Compress(source, into: $0) } }
        return out
    }

    private func decompress(_ values: [UInt16]) -> [Float] {
        var out = [Float](repeating: 0, count: values.count)
        values.withUnsafeBufferPointer { source in out.withUnsafeMutableBufferPointer { bfloat16Decompress(source, into: $0) } }
        return out
    }

    /// A reference in plain integer arithmetic: round to nearest, ties to even, on the upper 16 bits.
    private func reference(_ value: Float) -> UInt16 {
        if value.isNaN { return UInt16(value.bitPattern >> 16) | 0x0040 }
        let bits = value.bitPattern
        let upper = bits >> 16, lower = bits & 0xFFFF
        let roundUp = lower > 0x8000 || (lower == 0x8000 && upper & 1 == 1)
        return UInt16(truncatingIfNeeded: upper + (roundUp ? 1 : 0))
    }

    func testRoundsToNearestEvenInTheVectorAndScalarPaths() {
        var random = SystemRandomNumberGenerator()
        // 37 values: two SIMD16 blocks and a scalar tail.
        var values: [Float] = (0..<29).map { _ in Float.random(in: -1e4...1e4, using: &random) }
        values += [0, -0, 1, 1 + 0x1p-8, 1 + 0x1p-7 + 0x1p-8, .infinity, -.infinity, .greatestFiniteMagnitude]
        let compressed = compress(values)
        for (value, bits) in zip(values, compressed) { XCTAssertEqual(bits, reference(value), "\(value)") }
        // Exactly halfway: 1 + 2^-8 is a tie between 1 and 1 + 2^-7; the even one (1) wins. 1 + 2^-7 + 2^-8 rounds up.
        XCTAssertEqual(decompress([compressed[32]])[0], 1)
        XCTAssertEqual(decompress([compressed[33]])[0], 1 + 0x1p-6)
        XCTAssertEqual(decompress([compressed[34]])[0], .infinity)
        XCTAssertEqual(decompress([compressed[35]])[0], -.infinity)
        XCTAssertEqual(decompress([compressed[36]])[0], .infinity, "the largest float rounds past bfloat16's largest")
        // 8 significant bits: at most half a unit in the last place, 2^-8 relative.
        for (value, back) in zip(values, decompress(compressed)) where value.isFinite && abs(value) < 1e38 {
            XCTAssertLessThanOrEqual(abs(back - value), abs(value) * 0x1p-8, "\(value)")
        }
    }

    func testNaNStaysNaNAndRepresentableValuesRoundTrip() {
        let nans: [Float] = [.nan, -.nan, Float(bitPattern: 0x7F80_0001), Float(bitPattern: 0xFF80_FFFF)] + [Float](repeating: .nan, count: 16)
        XCTAssertTrue(decompress(compress(nans)).allSatisfy(\.isNaN))
        let exact: [Float] = (0..<40).map { Float(bitPattern: UInt32($0 * 977 + 0x3F00) << 16) }.filter(\.isFinite)
        XCTAssertEqual(decompress(compress(exact)), exact)
    }
}
