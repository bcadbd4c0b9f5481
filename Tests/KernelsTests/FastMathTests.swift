import Foundation
import Kernels
import XCTest

/// The vectorised transcendentals against libm over the ranges the model uses.
final class FastMathTests: XCTestCase {
    func testFastExpRelativeError() {
        var worst: Float = 0
        for start in stride(from: -87.0 as Float, to: 88, by: 0.37) {
            let x = Float32x16((0..<16).map { start + Float($0) * 0.0231 })
            let fast = fastExp(x)
            for i in 0..<16 {
                let exact = Float(Foundation.exp(Double(x[i])))
                worst = max(worst, abs(fast[i] - exact) / exact)
            }
        }
        XCTAssertLessThan(worst, 5e-7, "largest relative error of fastExp")
        XCTAssertEqual(fastExp(Float32x16(repeating: 0))[0], 1)
        XCTAssertGreaterThanOrEqual(fastExp(Float32x16(repeating: -.infinity))[0], 0, "clamped, never NaN")
    }

    func testGELUAgainstErfDefinition() {
        let values = stride(from: -12 as Float, through: 12, by: 0.0137).map { $0 }
        let inp = Tensor(values), out = Tensor(zeros: values.count), ones = Tensor([Float](repeating: 1, count: values.count))
        let derivatives = Tensor(zeros: values.count)
        geluForward(out: out.buffer, inp: inp.buffer, count: values.count)
        geluBackward(dInp: derivatives.buffer, dOut: ones.buffer, inp: inp.buffer, count: values.count)
        var worstValue: Float = 0, worstDerivative: Float = 0
        for (i, x) in values.enumerated() {
            let reference = geluReference(x)
            worstValue = max(worstValue, abs(out[i] - reference.value) / max(1, abs(reference.value)))
            worstDerivative = max(worstDerivative, abs(derivatives[i] - reference.derivative))
        }
        XCTAssertLessThan(worstValue, 1e-6)
        XCTAssertLessThan(worstDerivative, 1e-6)
    }

    func testTanhGELUAgainstItsDefinition() {
        let values = stride(from: -12 as Float, through: 12, by: 0.0137).map { $0 } + [-1e30, 1e30, 1e-30]
        let inp = Tensor(values), out = Tensor(zeros: values.count), ones = Tensor([Float](repeating: 1, count: values.count))
        let derivatives = Tensor(zeros: values.count)
        geluTanhForward(out: out.buffer, inp: inp.buffer, count: values.count)
        geluTanhBackward(dInp: derivatives.buffer, dOut: ones.buffer, inp: inp.buffer, count: values.count)
        var worstValue: Float = 0, worstDerivative: Float = 0, worstAt: Float = 0
        for (i, x) in values.enumerated() {
            let reference = geluTanhReference(max(-10, min(10, x)))
            let value = abs(x) > 10 ? (x > 0 ? x : 0) : reference.value
            XCTAssertTrue(out[i].isFinite && derivatives[i].isFinite, "finite at \(x)")
            worstValue = max(worstValue, abs(out[i] - value) / max(1, abs(value)))
            if abs(derivatives[i] - reference.derivative) > worstDerivative { worstAt = x }
            worstDerivative = max(worstDerivative, abs(derivatives[i] - reference.derivative))
        }
        XCTAssertLessThan(worstValue, 1e-6)
        XCTAssertLessThan(worstDerivative, 1e-6, "at \(worstAt)")
    }

    /// Cross-entropy over a vocabulary that is not a multiple of 16 (chunks plus a tail) against the definition.
    func testCrossEntropyWideVocabulary() {
        let vocabulary = 37
        let logits = Tensor(random: 3 * vocabulary, seed: 5, scale: 8), dLogits = Tensor(zeros: 3 * vocabulary)
        let targets: [Int32] = [36, 0, 17]
        targets.withUnsafeBufferPointer { targets in
            let result = crossEntropy(logits: logits.buffer, targets: targets, vocabulary: vocabulary, smoothing: 0.2, ignored: 0,
                                      dLogits: dLogits.buffer, scale: 0.5)
            var expected = 0.0
            for row in [0, 2] {
                let x = (0..<vocabulary).map { Double(logits[row * vocabulary + $0]) }
                let lse = Foundation.log(x.map { Foundation.exp($0) }.reduce(0, +))
                let target = Int(targets[row])
                expected += 0.8 * (lse - x[target]) + 0.2 * (lse - x.reduce(0, +) / Double(vocabulary))
                for v in 0..<vocabulary {
                    let p = Foundation.exp(x[v] - lse)
                    let gradient = 0.5 * (p - 0.2 / Double(vocabulary) - (v == target ? 0.8 : 0))
                    XCTAssertEqual(Double(dLogits[row * vocabulary + v]), gradient, accuracy: 1e-6)
                }
            }
            XCTAssertEqual(result.loss, expected, accuracy: 1e-4)
            XCTAssertEqual(result.targetTokens, 2)
        }
    }

    /// A diverged model's NaN logits give a NaN loss (which the trainer reports), never a read past the row.
    func testCrossEntropyOfNaNLogitsIsNaN() {
        let vocabulary = 33
        let logits = Tensor([Float](repeating: .nan, count: 2 * vocabulary))
        [Int32(5), 7].withUnsafeBufferPointer { targets in
            let result = crossEntropy(logits: logits.buffer, targets: targets, vocabulary: vocabulary, smoothing: 0.1, ignored: 0)
            XCTAssertTrue(result.loss.isNaN)
            XCTAssertEqual(result.targetTokens, 2)
        }
    }
}
