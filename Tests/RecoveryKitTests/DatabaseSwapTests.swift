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

final class SQLTextTests: XCTestCase {
    func testLiteralsQuoteLikeQuoteLiteral() {
        XCTAssertEqual(SQLText.literal("plain"), "'plain'")
        XCTAssertEqual(SQLText.literal("it's"), "'it''s'")
        XCTAssertEqual(SQLText.literal("a\\b"), "E'a\\\\b'")
        XCTAssertEqual(SQLText.literal("crème"), "'crème'")
    }

    func testArrayLiteralsEscapeQuotesAndBackslashes() {
        XCTAssertEqual(SQLText.arrayLiteral(["a", "b \"c\"", "d\\e"]), "{\"a\",\"b \\\"c\\\"\",\"d\\\\e\"}")
        XCTAssertEqual(SQLText.arrayLiteral([]), "{}")
    }
}
