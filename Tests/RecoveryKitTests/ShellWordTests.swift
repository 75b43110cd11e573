import RecoveryKit
import XCTest

/// Names in suggested commands (an outside attack copied `dbrestore list --from-database x; rm -rf ~`
/// out of a hint).
final class ShellWordTests: XCTestCase {
    func testAWordIsQuotedWhenAShellWouldReadItOtherwise() {
        let cases = [("app_2", "app_2"), ("x; rm -rf ~", "'x; rm -rf ~'"), ("we ird", "'we ird'"), ("app ", "'app '"),
                     ("a'b", #"'a'\''b'"#), ("", "''"), ("café", "'café'")]
        for (word, shown) in cases { XCTAssertEqual(ShellWord.quoted(word), shown, word) }
    }
}
