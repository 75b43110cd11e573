import Foundation
@testable import RecoveryKit
import XCTest

/// The one line of a PostgreSQL program's stderr that a failure message carries.
final class OutputCollectorTests: XCTestCase {
    /// Reproduction (attack a9): a dbbackup whose server session was ended (a restore's swap,
    /// pg_terminate_backend) said only `PQgetCopyData() failed.`; pg_dump's next lines say why.
    func testPgDumpsDetailLinesFollowItsErrorButNotTheStatement() {
        let stderr = """
            pg_dump: error: Dumping the contents of table "orders" failed: PQgetCopyData() failed.
            pg_dump: detail: Error message from server: FATAL:  terminating connection due to administrator command
            pg_dump: detail: Command was: COPY public.orders (id, account, amount) TO stdout;
            """
        XCTAssertEqual(OutputCollector.mostRelevantLine(of: stderr),
                       "pg_dump: error: Dumping the contents of table \"orders\" failed: PQgetCopyData() failed. Error message from server: FATAL: terminating connection due to administrator command")
    }

    /// pg_dump 14 prints the same as further `error:` lines.
    func testPgDump14sErrorMessageFromServerLineFollowsToo() {
        let stderr = """
            pg_dump: error: Dumping the contents of table "orders" failed: PQgetCopyData() failed.
            pg_dump: error: Error message from server: FATAL:  terminating connection due to administrator command
            pg_dump: error: The command was: COPY public.orders (id, account, amount) TO stdout;
            """
        XCTAssertEqual(OutputCollector.mostRelevantLine(of: stderr),
                       "pg_dump: error: Dumping the contents of table \"orders\" failed: PQgetCopyData() failed. Error message from server: FATAL: terminating connection due to administrator command")
    }

    func testWithoutDetailsTheErrorLineOrTheLastLineIsKept() {
        XCTAssertEqual(OutputCollector.mostRelevantLine(of: "psql:x.sql:3: ERROR:  relation \"t\" does not exist\nDETAIL: Key (id)=(5) already exists.\n"),
                       "psql:x.sql:3: ERROR:  relation \"t\" does not exist", "psql's DETAIL (row values) stays out")
        XCTAssertEqual(OutputCollector.mostRelevantLine(of: "starting\nsomething odd happened\n"), "something odd happened")
    }
}
