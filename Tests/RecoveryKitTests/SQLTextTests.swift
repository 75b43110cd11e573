@testable import RecoveryKit
import XCTest

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
