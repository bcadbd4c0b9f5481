extension TransformerModel {
    /// Greedy decoding of a batch of sources (encoder-decoder) or prompts' continuations: each step reruns the
    /// decoder over the prefix and takes the most likely next token, until EOS or `maxLength` tokens.
    /// Without a key/value cache this costs O(maxLength²) decoder positions; it serves bounded evaluation samples.
    public func greedyDecode(source: [Int32], batchSize: Int, sourceLength: Int, maxLength: Int) -> [[Int32]] {
        let wasTraining = training
        training = false
        defer { training = wasTraining }
        let limit = min(maxLength, maxTargetLength - 1)
        var outputs = [[Int32]](repeating: [], count: batchSize)
        var finished = [Bool](repeating: false, count: batchSize)
        for length in 1...(limit + 1) where finished.contains(false) {
            var decoderInput: [Int32] = []
            decoderInput.reserveCapacity(batchSize * length)
            for row in 0..<batchSize {
                let prefix = [SpecialToken.bos] + outputs[row]
                decoderInput += prefix + [Int32](repeating: SpecialToken.pad, count: length - prefix.count)
            }
            forward(Batch(batchSize: batchSize, sourceLength: sourceLength, targetLength: length, source: source,
                          decoderInput: decoderInput, labels: [Int32](repeating: SpecialToken.pad, count: batchSize * length)))
            withLogits { logits in
                let v = config.vocabSize
                for row in 0..<batchSize where !finished[row] {
                    let position = outputs[row].count  // the last real input position of this row
                    let offset = (row * length + position) * v
                    var best = 0
                    for token in 1..<v where logits[offset + token] > logits[offset + best] { best = token }
                    if Int32(best) == SpecialToken.eos || outputs[row].count == limit {
                        finished[row] = true
                    } else {
                        outputs[row].append(Int32(best))
                    }
                }
            }
        }
        return outputs
    }
}
