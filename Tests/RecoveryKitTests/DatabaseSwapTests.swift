@testable import RecoveryKit
import XCTest

final class DatabaseSwapTests: XCTestCase {
    /// List-valued settings split as PostgreSQL's SplitGUCList does, so each element is restored as
    /// its own literal (`search_path` restored as one quoted string would name a schema `"$user", public`).
    func testSettingListsSplitLikeTheServer() {
        XCTAssertEqual(DatabaseSwap.splitSettingList("\"$user\", public"), ["$user", "public"])
        XCTAssertEqual(DatabaseSwap.splitSettingList("a,b ,  c"), ["a", "b", "c"])
        XCTAssertEqual(DatabaseSwap.splitSettingList("\"Odd, schema\", \"with \"\"quote\"\"\""), ["Odd, schema", "with \"quote\""])
        XCTAssertEqual(DatabaseSwap.splitSettingList(""), [])
    }
}
