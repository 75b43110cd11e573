import RecoveryKit
import XCTest

/// Names in suggested commands (an outside attack copied `dbrestore list --from-database x; rm -rf ~`
/// out of a hint).
final class ShellWordTests: XCTestCase {
    func testAWordIsQuotedWhenAShellWouldReadItOtherwise() {
        XCTAssertEqual(ShellWord.quoted("app_2"), "app_2")
        XCTAssertEqual(ShellWord.quoted("x; rm -rf ~"), "'x; rm -rf ~'")
        XCTAssertEqual(ShellWord.quoted("we ird"), "'we ird'")
        XCTAssertEqual(ShellWord.quoted("app "), "'app '")
        XCTAssertEqual(ShellWord.quoted("a'b"), #"'a'\''b'"#)
        XCTAssertEqual(ShellWord.quoted(""), "''")
        XCTAssertEqual(ShellWord.quoted("café"), "'café'")
    }
}
