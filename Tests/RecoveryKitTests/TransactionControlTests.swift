import Foundation
@testable import RecoveryKit
import XCTest

final class TransactionControlTests: XCTestCase {
    private func what(_ statement: String, serverVersion: Int? = 150_000) -> String? {
        TransactionControl.classify(statement, serverVersion: serverVersion)?.1
    }

    func testTransactionControlAndItsSynonymsAreFound() {
        XCTAssertEqual(what("COMMIT"), "COMMIT")
        XCTAssertEqual(what("commit work"), "COMMIT")
        XCTAssertEqual(what("END"), "END")
        XCTAssertEqual(what("end transaction"), "END")
        XCTAssertEqual(what("ABORT"), "ABORT")
        XCTAssertEqual(what("COMMIT AND CHAIN"), "COMMIT AND CHAIN")
        XCTAssertEqual(what("START TRANSACTION ISOLATION LEVEL SERIALIZABLE"), "START TRANSACTION")
        XCTAssertEqual(what("BEGIN"), "BEGIN")
        XCTAssertEqual(what("/* c */ BEGIN WORK"), "BEGIN")
        XCTAssertEqual(what("ROLLBACK"), "ROLLBACK")
        XCTAssertEqual(what("ROLLBACK TO SAVEPOINT a"), "ROLLBACK TO SAVEPOINT")
        XCTAssertEqual(what("SAVEPOINT a"), "SAVEPOINT")
        XCTAssertEqual(what("RELEASE SAVEPOINT a"), "RELEASE SAVEPOINT")
        XCTAssertEqual(what("PREPARE TRANSACTION 'x'"), "PREPARE TRANSACTION")
        XCTAssertEqual(TransactionControl.classify("COMMIT", serverVersion: nil)?.0, .transactionControl)
        XCTAssertTrue(TransactionControl.rollsBack("ABORT"))
        XCTAssertTrue(TransactionControl.rollsBack("rollback"))
        XCTAssertFalse(TransactionControl.rollsBack("ROLLBACK TO SAVEPOINT a"))
        XCTAssertFalse(TransactionControl.rollsBack("COMMIT"))
    }

    /// psql meta-commands reach the splitter glued to the statement after them; the server would
    /// read a syntax error at run time (an outside attack: pre-flight passed, the run failed).
    func testPsqlMetaCommandsAreFoundBeforeTheRun() {
        XCTAssertEqual(what("\\set ON_ERROR_STOP on\nCREATE TABLE t (x int)"), "\\set")
        XCTAssertEqual(what("-- setup\n  \\i other.sql\nSELECT 1"), "\\i")
        XCTAssertEqual(TransactionControl.classify("\\connect app", serverVersion: nil)?.0, .psqlMetaCommand)
        XCTAssertNil(what("SELECT E'\\\\n'"), "a backslash inside a string is SQL")
        XCTAssertNil(what("/* \\set x */ SELECT 1"), "inside a comment too")
        let problems = MigrationPlanner.transactionProblems(
            [MigrationStep(version: 7, name: "x", direction: .up, path: "/m/0007_x.up.sql", sql: "\\set ON_ERROR_STOP on\nCREATE TABLE t (x int);", sha256: "", noTransaction: true)],
            singleTransaction: false, serverVersion: 150_000)
        XCTAssertEqual(problems.count, 1, "\(problems)")
        XCTAssertTrue(problems.first?.contains("0007_x.up.sql line 1: `\\set` is a psql meta-command") ?? false, "\(problems)")
    }

    func testStatementsThatCannotRunInATransactionAreFound() {
        XCTAssertEqual(what("CREATE INDEX CONCURRENTLY i ON t (x)"), "CREATE INDEX CONCURRENTLY")
        XCTAssertEqual(what("create unique index concurrently i on t (x)"), "CREATE INDEX CONCURRENTLY")
        XCTAssertEqual(what("DROP INDEX CONCURRENTLY i"), "DROP INDEX CONCURRENTLY")
        XCTAssertEqual(what("REINDEX (VERBOSE) TABLE CONCURRENTLY t"), "REINDEX CONCURRENTLY")
        XCTAssertEqual(what("REINDEX DATABASE app"), "REINDEX DATABASE")
        XCTAssertEqual(what("VACUUM ANALYZE t"), "VACUUM")
        XCTAssertEqual(what("CREATE DATABASE x"), "CREATE DATABASE")
        XCTAssertEqual(what("ALTER SYSTEM SET work_mem = '64MB'"), "ALTER SYSTEM")
        XCTAssertEqual(what("ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY"), "ALTER TABLE … DETACH PARTITION CONCURRENTLY")
        XCTAssertEqual(what("ALTER TYPE mood ADD VALUE 'meh'", serverVersion: 110_000), "ALTER TYPE … ADD VALUE (before PostgreSQL 12)")
        XCTAssertNil(what("ALTER TYPE mood ADD VALUE 'meh'", serverVersion: 150_000))
        XCTAssertEqual(TransactionControl.classify("VACUUM", serverVersion: nil)?.0, .cannotRunInTransaction)
        XCTAssertNil(TransactionControl.classify("COPY t (x) FROM stdin", serverVersion: nil), "its rows are the file's next lines, as in psql")
        XCTAssertEqual(TransactionControl.classify("COPY t (x) TO stdout", serverVersion: nil)?.0, .needsClientData)
        XCTAssertEqual(what("COPY (SELECT 1) TO STDOUT WITH (FORMAT csv)"), "COPY … TO STDOUT")
        XCTAssertNil(what("COPY t FROM '/srv/data.csv'"))
    }

    func testOrdinaryStatementsAndLookAlikesPass() {
        for statement in [
            "CREATE TABLE commit (x int)",
            "SELECT 'COMMIT'",
            "INSERT INTO t VALUES ($$COMMIT$$)",
            "DO $$ BEGIN PERFORM 1; END $$",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
            "CREATE INDEX i ON t (x)",
            "REFRESH MATERIALIZED VIEW CONCURRENTLY v",
            "REINDEX TABLE t",
            "CLUSTER t USING i",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "ALTER TABLE t ADD COLUMN concurrently int",
            "-- COMMIT\nSELECT 1",
            "BEGIN ATOMIC SELECT 1; END",
        ] {
            XCTAssertNil(what(statement), statement)
        }
    }

    func testViolationsNameTheLineOfEachStatement() {
        let sql = """
            -- header
            BEGIN;
            CREATE TABLE a (x int);

            /* done */ COMMIT;
            SELECT 1; VACUUM a;
            """
        let found = TransactionControl.violations(in: sql, serverVersion: 150_000)
        XCTAssertEqual(found.map(\.what), ["BEGIN", "COMMIT", "VACUUM"])
        XCTAssertEqual(found.map(\.line), [2, 5, 6])
        XCTAssertEqual(found.map(\.statement), [1, 3, 5])

        // A statement that still carries its leading comment is placed at its code, not at the comment.
        var locator = TransactionControl.LineLocator("SELECT 1;\n-- why\nCOMMIT;\n")
        XCTAssertEqual(locator.line(of: "SELECT 1"), 1)
        XCTAssertEqual(locator.line(of: "-- why\nCOMMIT"), 3)
    }

    func testAKeywordInAnEarlierCommentIsNotTakenForTheStatement() {
        let sql = "CREATE TABLE a (x int); -- then COMMIT\n\nCOMMIT;\r\n/* BEGIN; was here */\r\nBEGIN;\nSELECT 1;;\nEND;"
        XCTAssertEqual(TransactionControl.violations(in: sql, serverVersion: 150_000).map(\.line), [3, 5, 7])
    }
}
