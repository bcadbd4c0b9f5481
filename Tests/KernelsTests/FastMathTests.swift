import Foundation
import Kernels
import XCTest

/// The vectorised transcendentals against libm over the ranges the model uses.
final class FastMathTests: XCTestCase {
    func testFastExpRelativeError() {
        var worst: Float = 0
        for x in stride(from: -87.0 as Float, to: 88, by: 0.0231) {
            let exact = Float(Foundation.exp(Double(x)))
            worst = max(worst, abs(fastExp(x) - exact) / exact)
        }
        XCTAssertLessThan(worst, 5e-7, "largest relative error of fastExp")
        XCTAssertEqual(fastExp(0), 1)
        XCTAssertGreaterThanOrEqual(fastExp(-.infinity), 0, "clamped, never NaN")
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

    /// Both GELU forms keep their derivative in place of the input (as training does) over several 256-element
    /// blocks and a partial one: values and derivatives equal bitwise those written to separate buffers, and NaN
    /// inputs come out as they always did (fastExp's clamp makes a NaN its lower bound: GELU's value stays NaN).
    func testGELUDerivativeInPlaceOfTheInput() {
        let count = 3 * 256 + 37
        let values = (0..<count).map { Float($0 - count / 2) * 0.011 } + [.nan, .infinity, -.infinity]
        for (name, forward) in [("gelu", geluForward), ("gelu_tanh", geluTanhForward)] as [(String, (FloatBuffer, FloatBuffer, Int, FloatBuffer?) -> Void)] {
            let inp = Tensor(values), out = Tensor(zeros: values.count), derivative = Tensor(zeros: values.count)
            forward(out.buffer, inp.buffer, values.count, derivative.buffer)
            let inPlace = Tensor(values), outInPlace = Tensor(zeros: values.count)
            forward(outInPlace.buffer, inPlace.buffer, values.count, inPlace.buffer)
            for i in 0..<values.count {
                XCTAssertEqual(outInPlace[i].bitPattern, out[i].bitPattern, "\(name) value at \(values[i])")
                XCTAssertEqual(inPlace[i].bitPattern, derivative[i].bitPattern, "\(name) derivative at \(values[i])")
            }
            XCTAssertTrue(out[count].isNaN, "\(name) of NaN")
        }
    }

    /// Evaluation (no dLogits: exponentials through a 1024-float stack block) and training (in place in dLogits) give
    /// bitwise the same loss over a vocabulary of three blocks and a partial one.
    func testCrossEntropyEvaluationEqualsTraining() {
        let vocabulary = 3 * 1024 + 77
        let logits = Tensor(random: 2 * vocabulary, seed: 9, scale: 6), dLogits = Tensor(zeros: 2 * vocabulary)
        [Int32(5), Int32(vocabulary - 1)].withUnsafeBufferPointer { targets in
            let evaluation = crossEntropy(logits: logits.buffer, targets: targets, vocabulary: vocabulary, smoothing: 0.1, ignored: -1)
            let training = crossEntropy(logits: logits.buffer, targets: targets, vocabulary: vocabulary, smoothing: 0.1, ignored: -1,
                                        dLogits: dLogits.buffer)
            XCTAssertEqual(evaluation.loss.bitPattern, training.loss.bitPattern)
            XCTAssertEqual(evaluation.correct, training.correct)
        }
    }

    /// The row maximum (which the softmax subtracts) and the arg-max (accuracy) over logits all negative, all positive,
    /// or both signs with ±0, the largest in the first, a middle or the last (tail) position: the loss, gradient and
    /// correct count equal the definition's in every case.
    func testCrossEntropyMaximumOverSignsAndPositions() {
        let vocabulary = 37
        for (offset, scale) in [(-50 as Float, 1 as Float), (50, 1), (0, 3)] {
            for top in [0, 18, 36] {
                var values = (0..<vocabulary).map { offset + scale * Float(($0 * 7) % 11) - scale * 11 }
                if offset == 0 { values[3] = -0.0; values[4] = 0 }
                values[top] = offset + scale * 2
                let logits = Tensor(values), dLogits = Tensor(zeros: vocabulary)
                [Int32(top)].withUnsafeBufferPointer { targets in
                    let result = crossEntropy(logits: logits.buffer, targets: targets, vocabulary: vocabulary, smoothing: 0, ignored: -1,
                                              dLogits: dLogits.buffer)
                    let x = values.map(Double.init), peak = x.max()!
                    let lse = peak + Foundation.log(x.map { Foundation.exp($0 - peak) }.reduce(0, +))
                    XCTAssertEqual(result.loss, lse - x[top], accuracy: 1e-5, "offset \(offset), largest at \(top)")
                    XCTAssertEqual(result.correct, 1, "offset \(offset), largest at \(top)")
                    XCTAssertEqual(Double(dLogits[top]), Foundation.exp(x[top] - lse) - 1, accuracy: 1e-6)
                }
            }
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
