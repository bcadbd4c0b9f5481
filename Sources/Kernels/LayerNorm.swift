/// torch.nn.LayerNorm's default epsilon.
public let layerNormEpsilon: Float = 1e-5

/// out[N,C] = (inp - mean) * rstd * weight[C] + bias[C], per row; saves mean[N] and rstd[N] for backward.
public func layerNormForward(out: FloatBuffer, mean: FloatBuffer, rstd: FloatBuffer, inp: FloatBuffer,
                             weight: FloatBuffer, bias: FloatBuffer, rows: Int, channels: Int) {
    requireCount(out, rows * channels, "out")
    requireCount(inp, rows * channels, "inp")
    requireCount(mean, rows, "mean")
    requireCount(rstd, rows, "rstd")
    let c = Float(channels)
    parallelFor(rows, tile: 16) { rowRange in
      for row in rowRange {
        let x = inp.baseAddress! + row * channels
        let y = out.baseAddress! + row * channels
        var sum: Float = 0
        for i in 0..<channels { sum += x[i] }
        let m = sum / c
        var variance: Float = 0
        for i in 0..<channels {
            let d = x[i] - m
            variance += d * d
        }
        let s = 1 / (variance / c + layerNormEpsilon).squareRoot()
        for i in 0..<channels { y[i] = (x[i] - m) * s * weight[i] + bias[i] }
        mean[row] = m
        rstd[row] = s
      }
    }
}

/// dInp[N,C] += ∂L/∂inp;  dWeight[C] += Σₙ dOut·x̂;  dBias[C] += Σₙ dOut   (x̂ = normalised input)
public func layerNormBackward(dInp: FloatBuffer, dWeight: FloatBuffer, dBias: FloatBuffer, dOut: FloatBuffer,
                              inp: FloatBuffer, weight: FloatBuffer, mean: FloatBuffer, rstd: FloatBuffer,
                              rows: Int, channels: Int) {
    requireCount(dInp, rows * channels, "dInp")
    requireCount(dOut, rows * channels, "dOut")
    let c = Float(channels)
    parallelFor(rows, tile: 16) { rowRange in
      for row in rowRange {
        let x = inp.baseAddress! + row * channels
        let dy = dOut.baseAddress! + row * channels
        let dx = dInp.baseAddress! + row * channels
        let m = mean[row], s = rstd[row]
        // The two row means of the normalised-input gradient that the closed form needs.
        var meanDNorm: Float = 0
        var meanDNormXHat: Float = 0
        for i in 0..<channels {
            let xHat = (x[i] - m) * s
            let dNorm = dy[i] * weight[i]
            meanDNorm += dNorm
            meanDNormXHat += dNorm * xHat
        }
        meanDNorm /= c
        meanDNormXHat /= c
        for i in 0..<channels {
            let xHat = (x[i] - m) * s
            dx[i] += (dy[i] * weight[i] - meanDNorm - xHat * meanDNormXHat) * s
        }
      }
    }
    // Parameter gradients sum over rows: split by channel, rows in order, so the sum's order never changes.
    parallelFor(channels, tile: 16) { channelRange in
        for row in 0..<rows {
            let x = inp.baseAddress! + row * channels
            let dy = dOut.baseAddress! + row * channels
            let m = mean[row], s = rstd[row]
            for i in channelRange {
                dBias[i] += dy[i]
                dWeight[i] += dy[i] * ((x[i] - m) * s)
            }
        }
    }
}
