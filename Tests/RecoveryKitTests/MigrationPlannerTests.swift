import Foundation
@testable import RecoveryKit
import XCTest

final class MigrationPlannerTests: XCTestCase {
    private func script(_ sql: String, noTransaction: Bool = false, irreversible: Bool = false) -> Migration.Script {
        Migration.Script(path: "/m/x.sql", sql: sql, sha256: "sha-\(sql)", noTransaction: noTransaction, irreversible: irreversible)
    }

    private func migration(_ version: Int64, down: String? = "SELECT 1", irreversible: Bool = false) -> Migration {
        Migration(version: version, name: "m\(version)", up: script("up \(version)"),
                  down: down.map { script($0, irreversible: irreversible) })
    }

    private func applied(_ version: Int64, at seconds: Double, state: String = "applied") -> AppliedMigration {
        AppliedMigration(version: version, name: "m\(version)", upSHA256: "sha-up \(version)", appliedAt: Date(timeIntervalSince1970: seconds), state: state)
    }

    func testSplitsStatementsRespectingQuotesDollarQuotesAndCommentsLeavingLineCommentsOut() {
        let sql = """
            -- header; with a semicolon
            CREATE TABLE "a;b" (x text DEFAULT 'it''s; fine');
            /* block; comment */ CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT 1; $body$;
            SELECT $1;;
            SELECT E'it\\'s; escaped', a$b$c FROM t;
            -- trailing comment only
            """
        XCTAssertEqual(SQLStatements.split(sql), [
            "CREATE TABLE \"a;b\" (x text DEFAULT 'it''s; fine')",
            "/* block; comment */ CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT 1; $body$",
            "SELECT $1",
            "SELECT E'it\\'s; escaped', a$b$c FROM t",
        ])
        XCTAssertEqual(SQLStatements.split("-- only a comment\n"), [])
    }

    func testDownRevertsInAppliedOrderNewestFirst() throws {
        let available = [migration(1), migration(2), migration(3)]
        // Version 2 was applied after version 3 (e.g. resolved by hand): applied order wins.
        let rows = [applied(1, at: 10), applied(3, at: 20), applied(2, at: 30)]
        let steps = try MigrationPlanner.planDown(available: available, applied: rows, reverting: [2, 3], singleTransaction: true)
        XCTAssertEqual(steps.map(\.version), [2, 3])
        XCTAssertTrue(steps.allSatisfy { $0.direction == .down })
    }

    func testDownPreflightCollectsEveryProblem() {
        let available = [migration(1), migration(2, down: nil), migration(3, irreversible: true), migration(4, down: "-- nothing")]
        var rows = [applied(1, at: 1), applied(2, at: 2), applied(3, at: 3), applied(4, at: 4)]
        rows[0].upSHA256 = "edited"
        XCTAssertThrowsError(try MigrationPlanner.planDown(available: available, applied: rows, reverting: [1, 2, 3, 4], singleTransaction: true)) { error in
            let error = error as? RecoveryError
            XCTAssertEqual(error?.code, .migrationRefused)
            for expected in ["version 2 (m2): no down file", "version 3 (m3): marked -- dbmigrate:irreversible",
                             "version 4 (m4): down file is empty", "version 1 (m1): x.sql was edited"] {
                XCTAssertTrue(error?.message.contains(expected) ?? false, "\(expected) in \(error?.message ?? "")")
            }
        }
    }

    func testMidFlightBlocksEveryPlan() {
        let rows = [applied(1, at: 1, state: "applying")]
        XCTAssertThrowsError(try MigrationPlanner.planUp(available: [migration(1), migration(2)], applied: rows))
        XCTAssertThrowsError(try MigrationPlanner.planDown(available: [migration(1)], applied: rows, reverting: [], singleTransaction: true))
    }

    func testUpRefusesOutOfOrderAndPlansPending() throws {
        XCTAssertEqual(try MigrationPlanner.planUp(available: [migration(1), migration(2), migration(3)], applied: [applied(1, at: 1)], to: 2).map(\.version), [2])
        XCTAssertThrowsError(try MigrationPlanner.planUp(available: [migration(1), migration(2), migration(3)], applied: [applied(1, at: 1), applied(3, at: 2)]))
    }

    func testVersionsAtReleaseReplayTheLog() throws {
        let log = [
            MigrationLogEntry(id: 1, version: 1, action: "up", release: "v1"),
            MigrationLogEntry(id: 2, version: 2, action: "up", release: "v1"),
            MigrationLogEntry(id: 3, version: 3, action: "up", release: "v2"),
            MigrationLogEntry(id: 4, version: 3, action: "down", release: nil),
            MigrationLogEntry(id: 5, version: 2, action: "release", release: "v3"),
        ]
        XCTAssertEqual(try MigrationPlanner.versions(atRelease: "v1", log: log), [1, 2])
        XCTAssertEqual(try MigrationPlanner.versions(atRelease: "v2", log: log), [1, 2, 3])
        XCTAssertEqual(try MigrationPlanner.versions(atRelease: "v3", log: log), [1, 2])
        XCTAssertThrowsError(try MigrationPlanner.versions(atRelease: "v9", log: log))
    }

    /// The releases a backup records as the database's state: every release whose versions are the
    /// ones applied now (several share a schema; after a downgrade, the release it went back to is
    /// among them; none after a hand-run one no release had), never one whose deploy failed midway.
    func testRunningReleasesAreEveryReleaseWhoseVersionsAreAppliedNow() {
        var log = [
            MigrationLogEntry(id: 1, version: 1, action: "up", release: "v1.1.0"),
            MigrationLogEntry(id: 2, version: 1, action: "release", release: "v1.2.0"),   // nothing to migrate
            MigrationLogEntry(id: 3, version: 2, action: "up", release: "v1.3.0"),
        ]
        XCTAssertEqual(MigrationPlanner.runningReleases(log: log), ["v1.3.0"])
        XCTAssertEqual(MigrationPlanner.runningReleases(log: Array(log.prefix(2))), ["v1.2.0", "v1.1.0"], "v1.2.0 shares v1.1.0's schema")
        XCTAssertEqual(MigrationPlanner.runningReleases(log: []), [])
        log.append(MigrationLogEntry(id: 4, version: 2, action: "down", release: nil))
        XCTAssertEqual(MigrationPlanner.runningReleases(log: log), ["v1.2.0", "v1.1.0"], "down --to-release v1.1.0: its state again")
        log.append(MigrationLogEntry(id: 5, version: 1, action: "down", release: nil))
        XCTAssertEqual(MigrationPlanner.runningReleases(log: log), [], "no release had no versions")
        // A --per-step deploy that stopped after its first step: not a state v2.0.0 ever ran with.
        let stopped = [
            MigrationLogEntry(id: 1, version: 1, action: "up", release: "v1.0.0"),
            MigrationLogEntry(id: 2, version: 2, action: "up", release: "v2.0.0"),
            MigrationLogEntry(id: 3, version: 3, action: "failed", release: "v2.0.0"),
        ]
        XCTAssertEqual(MigrationPlanner.runningReleases(log: stopped), [])
    }

    func testDriftNamesTheFileWhenItWasAppliedBothChecksumsAndTheCommands() throws {
        var row = applied(1, at: 1_700_000_000)
        row.upSHA256 = "aaaa"
        let file = Migration(version: 1, name: "m1", up: Migration.Script(path: "/m/0001_m1.up.sql", sql: "x", sha256: "bbbb", noTransaction: false, irreversible: false), down: nil)
        let drift = try XCTUnwrap(MigrationPlanner.drift(row, file))
        for expected in ["0001_m1.up.sql was edited after it was applied", "applied 2023-11-14T22:13:20", "sha256 then aaaa, now bbbb",
                         "dbmigrate resolve 1 --mark-applied", "git checkout -- /m/0001_m1.up.sql"] {
            XCTAssertTrue(drift.contains(expected), "\(expected) in \(drift)")
        }
        row.upSHA256 = nil
        XCTAssertNil(MigrationPlanner.drift(row, file), "an adopted version without a checksum cannot drift")
        XCTAssertThrowsError(try MigrationPlanner.planUp(available: [file], applied: [applied(1, at: 1)])) { error in
            XCTAssertTrue((error as? RecoveryError)?.message.contains("dbmigrate resolve 1 --mark-applied") ?? false)
        }
    }

    func testTransactionControlAndNoTransactionStepsArePlannedSafely() {
        func migration(_ version: Int64, _ sql: String, noTransaction: Bool = false) -> Migration {
            Migration(version: version, name: "m\(version)",
                      up: Migration.Script(path: "/m/000\(version)_m\(version).up.sql", sql: sql, sha256: "s\(version)", noTransaction: noTransaction, irreversible: false),
                      down: nil)
        }
        let committing = [migration(1, "BEGIN;\nCREATE TABLE a (x int);\nCOMMIT;"), migration(2, "CREATE TABLE b (x int);")]
        XCTAssertThrowsError(try MigrationPlanner.planUp(available: committing, applied: [])) { error in
            let error = error as? RecoveryError
            XCTAssertEqual(error?.code, .migrationRefused)
            for expected in ["0001_m1.up.sql line 1: `BEGIN`", "0001_m1.up.sql line 3: `COMMIT`", "-- dbmigrate:no-transaction"] {
                XCTAssertTrue(error?.message.contains(expected) ?? false, "\(expected) in \(error?.message ?? "")")
            }
        }
        let concurrent = [migration(1, "CREATE TABLE a (x int);"), migration(2, "CREATE INDEX CONCURRENTLY i ON a (x);", noTransaction: true)]
        XCTAssertThrowsError(try MigrationPlanner.planUp(available: concurrent, applied: [])) { error in
            XCTAssertTrue((error as? RecoveryError)?.message.contains("--per-step") ?? false)
        }
        XCTAssertEqual(try MigrationPlanner.planUp(available: concurrent, applied: [], singleTransaction: false).map(\.version), [1, 2])
        var first = applied(1, at: 1)
        first.upSHA256 = "s1"
        XCTAssertEqual(try MigrationPlanner.planUp(available: concurrent, applied: [first]).map(\.version), [2],
                       "a no-transaction step alone is its own plan")
        XCTAssertThrowsError(try MigrationPlanner.planUp(available: [migration(1, "VACUUM;")], applied: []))
        XCTAssertEqual(try MigrationPlanner.planUp(available: [migration(1, "VACUUM;", noTransaction: true)], applied: []).count, 1)
        XCTAssertThrowsError(try MigrationPlanner.planUp(available: [migration(1, "COPY t TO STDOUT;", noTransaction: true)], applied: [])) { error in
            XCTAssertTrue((error as? RecoveryError)?.message.contains("line 1: `COPY … TO STDOUT` sends rows to the client") ?? false)
        }
        XCTAssertEqual(try MigrationPlanner.planUp(available: [migration(1, "COPY t FROM STDIN;\n1\n\\.\n")], applied: []).count, 1,
                       "COPY … FROM STDIN reads its rows from the file, as with psql")
    }

    func testAdoptedVersionsShowAsAppliedAndAdopted() {
        var adopted = applied(1, at: 1)
        adopted.adopted = true
        adopted.upSHA256 = nil
        adopted.name = ""
        let rows = MigrationPlanner.status(available: [migration(1), migration(2)], applied: [adopted, applied(3, at: 2)])
        XCTAssertEqual(rows.map(\.state), ["applied", "pending", "applied"])
        XCTAssertEqual(rows.map(\.adopted), [true, false, false])
        XCTAssertEqual(rows[0].name, "m1", "the file names an adopted version")
        XCTAssertEqual(rows[0].notes, ["adopted"])
        XCTAssertEqual(rows[2].notes, ["file missing"])
    }

    func testStatementExcerptsNeverShowPasswords() {
        XCTAssertEqual(MigrationRunner.excerpt("CREATE ROLE app LOGIN\nPASSWORD 's3cr''et' VALID UNTIL 'infinity'", length: 200),
                       "CREATE ROLE app LOGIN PASSWORD '…' VALID UNTIL 'infinity'")
        XCTAssertEqual(MigrationRunner.excerpt("ALTER USER MAPPING FOR app SERVER s OPTIONS (SET password 'x')", length: 200),
                       "ALTER USER MAPPING FOR app SERVER s OPTIONS (SET password '…')")
        XCTAssertEqual(MigrationRunner.excerpt("ALTER ROLE a PASSWORD $p$x$p$", length: 200), "ALTER ROLE a PASSWORD '…'")
        XCTAssertEqual(MigrationRunner.excerpt("SELECT 1", length: 5), "SELEC")
    }

    func testFindsDestructiveStatements() {
        XCTAssertEqual(DestructiveStatements.targets(in: "DROP TABLE IF EXISTS a, b CASCADE; ALTER TABLE ONLY users DROP COLUMN IF EXISTS name, DROP COLUMN age;"), [
            .init(table: "a"), .init(table: "b"), .init(table: "users", column: "name"), .init(table: "users", column: "age"),
        ])
    }

    func testPrintedMigrationSQLNeverShowsAPasswordOrAConnectionString() {
        let sql = "CREATE ROLE app PASSWORD 'hunter2'; CREATE SUBSCRIPTION s CONNECTION 'host=db password=Sup3r' PUBLICATION p; SELECT 'visible'"
        let masked = MigrationRunner.maskingPasswords(sql)
        XCTAssertFalse(masked.contains("hunter2") || masked.contains("Sup3r"), masked)
        XCTAssertTrue(masked.contains("CONNECTION '…'") && masked.contains("'visible'"), masked)
    }
}
