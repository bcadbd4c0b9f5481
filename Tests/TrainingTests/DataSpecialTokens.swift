import Data

/// Data's special token ids (this file imports only Data, so the names are unambiguous).
let dataSpecialTokens: [Int32] = [SpecialToken.pad, SpecialToken.bos, SpecialToken.eos, SpecialToken.unk]
