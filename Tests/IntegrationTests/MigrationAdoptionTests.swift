import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// `dbmigrate` on databases that already keep the runbooks' `schema_version (version, applied_at)`.
final class MigrationAdoptionTests: IntegrationTestCase {

    static let files: [String: String] = MigrationTests.files.merging([
        "0005_rooms.up.sql": "CREATE TABLE rooms (id int PRIMARY KEY, name text);",
        "0005_rooms.down.sql": "DROP TABLE rooms;",
    ]) { first, _ in first }

    static let runbookQuery = "SELECT version FROM schema_version ORDER BY applied_at DESC LIMIT 1"

    override func setUpWithError() throws {
        try useDatabase(prefix: "adopt")
        try useMigrations(Self.files)
    }

    /// A database brought to version 3 by hand, as the runbooks did: the up files run with psql and
    /// one row per version in their own `schema_version`.
    private func databaseAtVersion3ByHand(versionType: String = "int") throws {
        let connection = try cluster.connect(database: database)
        for version in 1...3 {
            let file = try XCTUnwrap(Self.files.first { $0.key.hasPrefix("000\(version)_") && $0.key.hasSuffix(".up.sql") })
            try connection.execute(script: file.value)
        }
        try connection.execute(script: """
            CREATE TABLE schema_version (version \(versionType) PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
            INSERT INTO schema_version VALUES (1, '2026-01-05 10:00+00'), (2, '2026-02-05 10:00+00'), (3, '2026-03-05 10:00+00');
            """)
    }

    private func dump(_ arguments: [String], database name: String) throws -> String {
        let result = try TestProcess.run(try PostgresTools().path(of: "pg_dump"), ["--schema-only", "--no-owner"] + arguments + [cluster.url(database: name)],
                                         environment: cluster.environment)
        XCTAssertEqual(result.status, 0, result.standardError)
        return result.standardOutput.split(separator: "\n").filter { !$0.hasPrefix("--") && !$0.hasPrefix("\\restrict") && !$0.hasPrefix("\\unrestrict") }
            .joined(separator: "\n")
    }

    /// The application's schema, without dbmigrate's bookkeeping.
    private func applicationSchema(_ name: String) throws -> String {
        try dump(["--exclude-table=schema_version*", "--exclude-table=dbmigrate_versions"], database: name)
    }

    func testAnExistingSchemaVersionIsAdoptedNeverAlteredAndTheRunbookQueryStaysRight() throws {
        try databaseAtVersion3ByHand()
        let userTable = try dump(["--table=schema_version"], database: database)
        let userRows = try cluster.connect(database: database).query("SELECT version, applied_at FROM schema_version ORDER BY version").rows.map(\.values)

        let status = try migrate(["status"])
        XCTAssertEqual(status.status, 0, status.standardError)
        let lines = status.standardOutput.split(separator: "\n").map(String.init)
        for version in 1...3 {
            XCTAssertTrue(lines.contains { $0.hasPrefix("\(version) ") && $0.contains("applied (adopted)") }, status.standardOutput)
        }
        for version in 4...5 { XCTAssertTrue(lines.contains { $0.hasPrefix("\(version) ") && $0.contains("pending") }, status.standardOutput) }
        let json = try migrate(["status", "--json"])
        let rows = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.standardOutput.utf8)) as? [[String: Any]])
        XCTAssertEqual(rows.map { $0["adopted"] as? Bool }, [true, true, true, false, false])
        XCTAssertEqual(rows.map { $0["state"] as? String }, ["applied", "applied", "applied", "pending", "pending"])
        let dryRun = try migrate(["up", "--dry-run"])
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        XCTAssertTrue(dryRun.standardOutput.contains("note: keeps public.schema_version as it is and adopts version(s) 1, 2, 3 found there; creates public.dbmigrate_versions and public.schema_version_log"),
                      dryRun.standardOutput)
        XCTAssertNil(try cluster.scalar("SELECT to_regclass('dbmigrate_versions')::text", database: database), "status and dry runs change nothing")

        // A failing first run leaves the database exactly as it was: no column, no table, no row.
        try "CREATE TABLE audit (id int); SELECT 1 / 0;".write(toFile: migrations + "/0004_audit.up.sql", atomically: true, encoding: .utf8)
        let failed = try migrate(["up"])
        XCTAssertEqual(failed.status, ExitStatus.migrationFailed.rawValue, failed.standardError)
        XCTAssertTrue(failed.standardError.contains("the whole plan was rolled back; the database is unchanged"), failed.standardError)
        XCTAssertTrue(failed.standardError.contains("up step 4 (audit) failed at statement 2 `SELECT 1 / 0` (0004_audit.up.sql line 1)"), failed.standardError)
        XCTAssertEqual(try dump(["--table=schema_version"], database: database), userTable)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM pg_class WHERE relname IN ('dbmigrate_versions', 'schema_version_log', 'audit')", database: database), "0")
        try Self.files["0004_audit.up.sql"]?.write(toFile: migrations + "/0004_audit.up.sql", atomically: true, encoding: .utf8)

        let up = try migrate(["up", "--release", "v2"])
        XCTAssertEqual(up.status, 0, up.standardError)
        XCTAssertTrue(up.standardOutput.contains("upgraded from 3 to 5 (2 steps"), up.standardOutput)
        XCTAssertEqual(try cluster.scalar("SELECT string_agg(version || ':' || coalesce(release, '-'), ',' ORDER BY version) FROM dbmigrate_versions", database: database),
                       "1:-,2:-,3:-,4:v2,5:v2", "release v2 applied 4 and 5, not the adopted versions")
        XCTAssertEqual(try cluster.scalar(Self.runbookQuery, database: database), "5")
        XCTAssertEqual(try dump(["--table=schema_version"], database: database), userTable, "the user's table is never altered")
        let kept = try cluster.connect(database: database).query("SELECT version, applied_at FROM schema_version WHERE version <= 3 ORDER BY version").rows.map(\.values)
        XCTAssertEqual(kept, userRows, "the user's rows are never rewritten")
        XCTAssertEqual(try cluster.scalar("SELECT string_agg(version || ':' || adopted, ',' ORDER BY version) FROM dbmigrate_versions", database: database),
                       "1:true,2:true,3:true,4:false,5:false")
        XCTAssertEqual(try cluster.scalar("SELECT string_agg(version::text, ',' ORDER BY id) FROM schema_version_log WHERE action = 'adopt'", database: database), "1,2,3")

        let down = try migrate(["down", "--to", "3", "--no-backup", "--yes"])
        XCTAssertEqual(down.status, 0, down.standardError)
        XCTAssertEqual(try cluster.scalar(Self.runbookQuery, database: database), "3")
        XCTAssertEqual(try cluster.connect(database: database).query("SELECT version, applied_at FROM schema_version ORDER BY version").rows.map(\.values), userRows)

        let fresh = try cluster.createDatabase(prefix: "fresh")
        XCTAssertEqual(try migrate(["up", "--to", "3"], database: fresh).status, 0)
        XCTAssertEqual(try applicationSchema(database), try applicationSchema(fresh))
        XCTAssertEqual(try cluster.scalar(Self.runbookQuery, database: fresh), "3")

        // Drift of an adopted file explains itself and the way out works.
        try "CREATE TABLE meetings (id serial PRIMARY KEY, user_id bigint REFERENCES users, title text); -- reformatted".write(
            toFile: migrations + "/0002_meetings.up.sql", atomically: true, encoding: .utf8)
        let refused = try migrate(["up"])
        XCTAssertEqual(refused.status, ExitStatus.migrationRefused.rawValue, refused.standardError)
        for expected in ["0002_meetings.up.sql was edited after it was applied", "applied 2026-02-05T10:00:00", "sha256 then ", ", now ",
                         "dbmigrate resolve 2 --mark-applied", "git checkout -- "] {
            XCTAssertTrue(refused.standardError.contains(expected), "missing '\(expected)' in \(refused.standardError)")
        }
        XCTAssertEqual(try migrate(["resolve", "2", "--mark-applied"]).status, 0)
        let again = try migrate(["up"])
        XCTAssertEqual(again.status, 0, again.standardError)
        XCTAssertEqual(try cluster.scalar(Self.runbookQuery, database: database), "5")
    }

    func testAFirstRunKilledMidPlanLeavesTheUsersTableAsItWas() throws {
        try databaseAtVersion3ByHand()
        let before = try dump([], database: database)
        let killed = try TestProcess.tool("dbmigrate", ["up", "--database-url", cluster.url(database: database), "--dir", migrations],
                                          cluster: cluster, environment: ["DBRECOVERY_CRASH_AT": "migrate:between-steps"])
        XCTAssertEqual(killed.status, 128 + SIGKILL, killed.standardError)
        XCTAssertEqual(try dump([], database: database), before, "no bookkeeping table, no row, no column")
        let next = try migrate(["up"])
        XCTAssertEqual(next.status, 0, next.standardError)
        XCTAssertEqual(try cluster.scalar(Self.runbookQuery, database: database), "5")
    }

    func testRowsWithoutAppliedAtAreWarnedAboutBecauseTheRunbookQueryWouldListThemFirst() throws {
        try databaseAtVersion3ByHand()
        try cluster.connect(database: database).execute(script: "ALTER TABLE schema_version ALTER COLUMN applied_at DROP NOT NULL; UPDATE schema_version SET applied_at = NULL WHERE version = 2")
        let plan = try migrate(["up", "--dry-run"])
        XCTAssertEqual(plan.status, 0, plan.standardError)
        XCTAssertTrue(plan.standardOutput.contains("WARNING: public.schema_version has no applied_at for version(s) 2"), plan.standardOutput)
        XCTAssertTrue(plan.standardOutput.contains("UPDATE public.schema_version SET applied_at = '<when>' WHERE version = 2"), plan.standardOutput)
        let up = try migrate(["up"])
        XCTAssertEqual(up.status, 0, up.standardError)
        XCTAssertTrue(up.standardError.contains("WARNING: public.schema_version has no applied_at for version(s) 2"), up.standardError)
    }

    func testAnUnusableTableIsRefusedShowingTheTableAndTheCommandThatAdoptsIt() throws {
        try cluster.connect(database: database).execute(script: """
            CREATE TABLE schema_version (version text, installed_on timestamptz);
            INSERT INTO schema_version VALUES ('1', '2026-01-01'), ('2', '2026-02-01');
            """)
        let before = try dump([], database: database)
        for arguments in [["status"], ["up"], ["down", "--to", "0", "--no-backup", "--yes"], ["baseline", "--version", "2"]] {
            let result = try migrate(arguments)
            XCTAssertEqual(result.status, ExitStatus.migrationRefused.rawValue, "\(arguments): \(result.standardError)")
            XCTAssertTrue(result.standardError.contains("public.schema_version (version text, installed_on timestamp with time zone)"), result.standardError)
            XCTAssertTrue(result.standardError.contains("column version is text, not an integer type"), result.standardError)
            XCTAssertTrue(result.standardError.contains("RENAME COLUMN installed_on TO applied_at"), result.standardError)
        }
        XCTAssertEqual(try dump([], database: database), before, "refused in pre-flight: nothing changed")

        // The command from the hint adopts the table.
        let result = try migrate(["status"])
        let hint = try XCTUnwrap(result.standardError.split(separator: "\n").first { $0.hasPrefix("HINT: ") })
        let start = try XCTUnwrap(hint.range(of: "psql -c '")), end = try XCTUnwrap(hint.range(of: "' — then"))
        let sql = String(hint[start.upperBound..<end.lowerBound])
        try cluster.connect(database: database).execute(script: sql)
        let status = try migrate(["status", "--json"])
        XCTAssertEqual(status.status, 0, status.standardError)
        let rows = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(status.standardOutput.utf8)) as? [[String: Any]])
        XCTAssertEqual(rows.filter { $0["adopted"] as? Bool == true }.map { $0["version"] as? Int }, [1, 2])
    }

    func testAVersionTheUsersColumnCannotHoldIsRefusedBeforeAnythingRuns() throws {
        try databaseAtVersion3ByHand(versionType: "int")
        try "CREATE TABLE stamped (x int);".write(toFile: migrations + "/20261126093000_stamped.up.sql", atomically: true, encoding: .utf8)
        let before = try dump([], database: database)
        let result = try migrate(["up"])
        XCTAssertEqual(result.status, ExitStatus.migrationRefused.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("version 20261126093000 does not fit public.schema_version.version, which is integer"), result.standardError)
        XCTAssertTrue(result.standardError.contains("ALTER COLUMN version TYPE bigint"), result.standardError)
        XCTAssertEqual(try dump([], database: database), before)
    }

    func testBaselineRecordsAMissingTableAndRefusesAFilledOne() throws {
        let connection = try cluster.connect(database: database)
        for version in 1...2 {
            let file = try XCTUnwrap(Self.files.first { $0.key.hasPrefix("000\(version)_") && $0.key.hasSuffix(".up.sql") })
            try connection.execute(script: file.value)
        }
        let baseline = try migrate(["baseline", "--version", "2"])
        XCTAssertEqual(baseline.status, 0, baseline.standardError)
        XCTAssertTrue(baseline.standardOutput.contains("recorded version(s) 1, 2 as applied (baseline)"), baseline.standardOutput)
        XCTAssertEqual(try cluster.scalar(Self.runbookQuery, database: database), "2")
        XCTAssertEqual(try cluster.scalar("SELECT string_agg(version || ':' || adopted, ',' ORDER BY version) FROM dbmigrate_versions", database: database), "1:true,2:true")

        let again = try migrate(["baseline", "--version", "3"])
        XCTAssertEqual(again.status, ExitStatus.migrationRefused.rawValue, again.standardError)
        XCTAssertTrue(again.standardError.contains("schema_version already holds version(s) 1, 2"), again.standardError)

        let up = try migrate(["up"])
        XCTAssertEqual(up.status, 0, up.standardError)
        XCTAssertEqual(try cluster.scalar(Self.runbookQuery, database: database), "5")
        XCTAssertEqual(try migrate(["baseline", "--version", "-1"]).status, ExitStatus.usage.rawValue)
    }

    func testADatabaseFromAnEarlierDbmigrateKeepsItsRecords() throws {
        // The layout dbmigrate used before it kept its own table: extra columns in schema_version.
        let connection = try cluster.connect(database: database)
        try connection.execute(script: Self.files["0001_users.up.sql"] ?? "")
        let sha = try XCTUnwrap(try MigrationDirectory.load(migrations).first?.up.sha256)
        try connection.execute(script: """
            CREATE TABLE schema_version (version bigint PRIMARY KEY, name text NOT NULL DEFAULT '', up_sha256 text NOT NULL DEFAULT '',
                down_sha256 text, applied_at timestamptz NOT NULL DEFAULT clock_timestamp(), applied_by text NOT NULL DEFAULT current_user,
                execution_ms bigint, release text, state text NOT NULL DEFAULT 'applied');
            INSERT INTO schema_version (version, name, up_sha256, release) VALUES (1, 'users', '\(sha)', 'v1');
            """)
        let status = try migrate(["status", "--json"])
        let rows = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(status.standardOutput.utf8)) as? [[String: Any]])
        XCTAssertEqual(rows.first?["adopted"] as? Bool, false, status.standardOutput)
        XCTAssertEqual(rows.first?["release"] as? String, "v1")
        XCTAssertEqual(try migrate(["up", "--to", "2"]).status, 0)
        XCTAssertEqual(try cluster.scalar("SELECT string_agg(version || ':' || up_sha256 || ':' || adopted, ',' ORDER BY version) FROM dbmigrate_versions", database: database)?.hasPrefix("1:\(sha):false,2:"), true)
        XCTAssertEqual(try cluster.scalar(Self.runbookQuery, database: database), "2")
    }
}
