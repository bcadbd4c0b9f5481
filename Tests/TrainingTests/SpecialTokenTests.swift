import Transformer
import XCTest

/// Data and Transformer each define the special ids (neither may import the other); the trainer hands batches
/// from one to the other unchanged, so they must agree.
final class SpecialTokenTests: XCTestCase {
    func testDataAndModelAgreeOnSpecialTokens() {
        XCTAssertEqual(dataSpecialTokens, [SpecialToken.pad, SpecialToken.bos, SpecialToken.eos, SpecialToken.unk])
        XCTAssertEqual(dataSpecialTokens, [0, 1, 2, 3], "DESIGN.md: PAD=0, BOS=1, EOS=2, UNK=3")
    }
}
