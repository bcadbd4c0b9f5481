import Kernels
import XCTest

/// A test-owned buffer (kernels take views; tests need owners).
final class Tensor {
    let buffer: FloatBuffer
    var count: Int { buffer.count }

    init(_ values: [Float]) {
        buffer = .allocate(capacity: max(1, values.count))
        _ = buffer.initialize(from: values)
    }

    convenience init(zeros count: Int) { self.init([Float](repeating: 0, count: count)) }

    /// Deterministic values in [-scale, scale).
    convenience init(random count: Int, seed: UInt64, scale: Float = 1) {
        var state = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        self.init((0..<count).map { _ in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return (Float(state >> 40) / Float(1 << 24) * 2 - 1) * scale
        })
    }

    var array: [Float] { Array(buffer.prefix(count)) }
    func zero() { buffer.update(repeating: 0) }
    subscript(index: Int) -> Float {
        get { buffer[index] }
        set { buffer[index] = newValue }
    }

    deinit { buffer.deallocate() }
}

/// Checks an analytic gradient against central finite differences of `loss` (computed in Double), element by
/// element, and reports the largest error relative to the gradient's largest magnitude.
func assertGradient(_ name: String, of input: Tensor, analytic: Tensor, epsilon: Float = 1e-2, tolerance: Double = 1e-2,
                    loss: () -> Double, file: StaticString = #filePath, line: UInt = #line) {
    var worst = 0.0
    var largest = 0.0
    for index in 0..<input.count {
        let saved = input[index]
        input[index] = saved + epsilon
        let plus = loss()
        input[index] = saved - epsilon
        let minus = loss()
        input[index] = saved
        let numeric = (plus - minus) / (2 * Double(epsilon))
        worst = max(worst, abs(numeric - Double(analytic[index])))
        largest = max(largest, abs(numeric))
    }
    let relative = worst / max(largest, 1e-6)
    XCTAssertLessThan(relative, tolerance, "\(name): finite-difference error \(worst) (relative \(relative))", file: file, line: line)
    XCTAssertGreaterThan(largest, 0, "\(name): the gradient is all zero, nothing was checked", file: file, line: line)
}

/// Σ out·weights in Double: a scalar loss whose gradient with respect to `out` is `weights`.
func weightedSum(_ out: Tensor, _ weights: Tensor) -> Double {
    (0..<out.count).reduce(0.0) { $0 + Double(out[$1]) * Double(weights[$1]) }
}
