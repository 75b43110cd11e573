@testable import PostgresClient
import XCTest

final class SessionLimitsTests: XCTestCase {
    func testDurationsParseWithAndWithoutUnits() {
        XCTAssertEqual(SessionLimits.parseDuration("90"), 90)
        XCTAssertEqual(SessionLimits.parseDuration("90s"), 90)
        XCTAssertEqual(SessionLimits.parseDuration("5m"), 300)
        XCTAssertEqual(SessionLimits.parseDuration("1h"), 3600)
        for bad in ["", "0", "-5", "5x", "m", "1.5m", "99999999999999999999", "9223372036854775807h", "8d", "30 s"] {
            XCTAssertNil(SessionLimits.parseDuration(bad), bad)
        }
    }

    func testLimitsGoIntoTheOptionsAndKeepTheOperatorsOwn() throws {
        let plain = SessionLimits(lockWaitSeconds: 30).applied(to: try ConnectionTarget("postgresql://app@db/app"))
        let expected = "-c lock_timeout=30000 -c statement_timeout=43200000 -c idle_in_transaction_session_timeout=0"
        XCTAssertEqual(plain.value("options"), expected)
        XCTAssertEqual(plain.childEnvironment["PGOPTIONS"], expected)
        let own = SessionLimits(lockWaitSeconds: 30).applied(to: try ConnectionTarget("host=db options='-c lock_timeout=1s -c search_path=x'"))
        XCTAssertEqual(own.value("options"), "-c lock_timeout=1s -c search_path=x -c statement_timeout=43200000 -c idle_in_transaction_session_timeout=0")
    }
}

final class LockBlockersTests: XCTestCase {
    /// A blocker's statement is named by its keywords and names, never by a literal it holds.
    func testStatementHeadsStopBeforeAnyLiteral() {
        let heads = [
            ("ALTER TABLE orders ADD COLUMN flag boolean", "ALTER TABLE orders ADD"),
            ("UPDATE users SET password='hunter2' WHERE id = 1", "UPDATE users SET"),
            ("ALTER ROLE app PASSWORD 'hunter2'", "ALTER ROLE app PASSWORD"),
            ("SELECT 'hunter2'", "SELECT"),
            ("LOCK\ttable\npublic.t", "LOCK table public.t"),
        ]
        for (statement, head) in heads {
            XCTAssertEqual(LockBlockers.statementHead(statement), head, statement)
        }
    }
}
