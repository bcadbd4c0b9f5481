import Foundation

/// out[N,C] = table[tokens[n], :] · scale   (scale = √C in the paper); a token of -1 (padding of a tokenizer without a
/// pad token, `SpecialTokens.none`) embeds as zeros.
public func embeddingForward(out: FloatBuffer, tokens: UnsafeBufferPointer<Int32>, table: FloatBuffer,
                             vocabulary: Int, channels: Int, scale: Float) {
    let rows = tokens.count
    requireCount(out, rows * channels, "out")
    requireCount(table, vocabulary * channels, "table")
    for row in 0..<rows {
        let token = Int(tokens[row])
        if token == -1 {
            (out.baseAddress! + row * channels).update(repeating: 0, count: channels)
            continue
        }
        precondition(token >= 0 && token < vocabulary, "token id \(token) outside vocabulary \(vocabulary)")
        let source = table.baseAddress! + token * channels
        let target = out.baseAddress! + row * channels
        for i in 0..<channels { target[i] = source[i] * scale }
    }
}

/// dTable[tokens[n], :] += dOut[n, :] · scale   (a token of -1 has no row)
public func embeddingBackward(dTable: FloatBuffer, dOut: FloatBuffer, tokens: UnsafeBufferPointer<Int32>,
                              channels: Int, scale: Float) {
    for row in 0..<tokens.count where tokens[row] != -1 {
        let target = dTable.baseAddress! + Int(tokens[row]) * channels
        let source = dOut.baseAddress! + row * channels
        for i in 0..<channels { target[i] += source[i] * scale }
    }
}

/// The paper's table: PE[t, 2i] = sin(t / 10000^(2i/C)), PE[t, 2i+1] = cos(t / 10000^(2i/C)); [T,C].
/// Computed in Double and rounded once to Float.
public func sinusoidalPositions(into table: FloatBuffer, length: Int, channels: Int) {
    requireCount(table, length * channels, "table")
    for t in 0..<length {
        for i in stride(from: 0, to: channels, by: 2) {
            let angle = Double(t) / pow(10_000, Double(i) / Double(channels))
            table[t * channels + i] = Float(sin(angle))
            if i + 1 < channels { table[t * channels + i + 1] = Float(cos(angle)) }
        }
    }
}

/// out[B,T,C] += positions[t, :] for every batch row (sinusoidal table or learned pos_embed.weight)
public func addPositionsForward(out: FloatBuffer, positions: FloatBuffer, batch: Int, time: Int, channels: Int) {
    requireCount(out, batch * time * channels, "out")
    requireCount(positions, time * channels, "positions")
    for b in 0..<batch {
        let target = out.baseAddress! + b * time * channels
        for i in 0..<(time * channels) { target[i] += positions[i] }
    }
}

/// dPositions[t, :] += Σ_b dOut[b, t, :]   (learned positions only)
public func addPositionsBackward(dPositions: FloatBuffer, dOut: FloatBuffer, batch: Int, time: Int, channels: Int) {
    for b in 0..<batch {
        let source = dOut.baseAddress! + b * time * channels
        for i in 0..<(time * channels) { dPositions[i] += source[i] }
    }
}
