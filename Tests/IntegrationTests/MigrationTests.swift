import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// `dbmigrate` against a real PostgreSQL cluster.
final class MigrationTests: IntegrationTestCase {

    static let files: [String: String] = [
        "0001_users.up.sql": "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);",
        "0001_users.down.sql": "DROP TABLE users;",
        "0002_meetings.up.sql": "CREATE TABLE meetings (id serial PRIMARY KEY, user_id bigint REFERENCES users, title text);",
        "0002_meetings.down.sql": "DROP TABLE meetings;",
        "0003_user_names.up.sql": """
            ALTER TABLE users ADD COLUMN name text;
            CREATE INDEX users_name ON users (name);
            CREATE FUNCTION greet(u users) RETURNS text LANGUAGE sql AS $$ SELECT 'hi; ' || u.name $$;
            """,
        "0003_user_names.down.sql": "DROP FUNCTION greet(users);\nDROP INDEX users_name;\nALTER TABLE users DROP COLUMN name;",
        "0004_audit.up.sql": "CREATE TABLE audit (id bigserial PRIMARY KEY, note text);",
        "0004_audit.down.sql": "DROP TABLE audit;",
    ]

    override func setUpWithError() throws {
        try useDatabase(prefix: "migrate")
        try useMigrations(Self.files)
        useLocalRepository()
    }

    private func schema(_ name: String) throws -> String {
        let result = try TestProcess.run(try PostgresTools().path(of: "pg_dump"), ["--schema-only", "--no-owner", cluster.url(database: name)],
                                         environment: cluster.environment)
        XCTAssertEqual(result.status, 0, result.standardError)
        return result.standardOutput.split(separator: "\n").filter { !$0.hasPrefix("--") && !$0.hasPrefix("\\restrict") && !$0.hasPrefix("\\unrestrict") }
            .joined(separator: "\n")
    }

    private func versions(_ name: String? = nil) throws -> [String] {
        try cluster.connect(database: name ?? database).query("SELECT version FROM schema_version ORDER BY version").rows.compactMap { $0[0] }
    }

    func testUpDownUpMatchesTheSchemaBuiltDirectly() throws {
        XCTAssertEqual(try migrate(["up", "--release", "v1"]).status, 0)
        XCTAssertEqual(try versions(), ["1", "2", "3", "4"])
        // A fresh database gets the runbooks' two-column table; dbmigrate's own records live apart.
        XCTAssertEqual(try cluster.scalar("SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'schema_version'::regclass AND attnum > 0", database: database),
                       "version,applied_at")
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM dbmigrate_versions WHERE NOT adopted AND up_sha256 IS NOT NULL", database: database), "4")
        XCTAssertEqual(try cluster.scalar("SELECT version FROM schema_version ORDER BY applied_at DESC LIMIT 1", database: database), "4")
        let head = try schema(database)

        let down = try migrate(["down", "--to", "2", "--no-backup", "--yes"])
        XCTAssertEqual(down.status, 0, down.standardError)
        XCTAssertEqual(try versions(), ["1", "2"])
        // The runbook's own check gives the current version.
        XCTAssertEqual(try cluster.scalar("SELECT version FROM schema_version ORDER BY applied_at DESC LIMIT 1", database: database), "2")

        let direct = try cluster.createDatabase(prefix: "direct")
        XCTAssertEqual(try migrate(["up", "--to", "2"], database: direct).status, 0)
        XCTAssertEqual(try schema(database), try schema(direct))

        XCTAssertEqual(try migrate(["up"]).status, 0)
        XCTAssertEqual(try schema(database), head)
    }

    func testFailingDownStepLeavesSchemaAndVersionsExactlyAsBefore() throws {
        try "DROP FUNCTION greet(users);\nSELECT 1 / 0;\nALTER TABLE users DROP COLUMN name;".write(
            toFile: migrations + "/0003_user_names.down.sql", atomically: true, encoding: .utf8)
        // Applying with the broken down file recorded is fine: only the down file changed.
        XCTAssertEqual(try migrate(["up"]).status, 0)
        let schemaBefore = try schema(database)
        let bookkeeping = "SELECT s.version, s.applied_at, m.name, m.up_sha256, m.state FROM schema_version s JOIN dbmigrate_versions m USING (version) ORDER BY version"
        let rowsBefore = try cluster.connect(database: database).query(bookkeeping).rows.map(\.values)

        let result = try migrate(["down", "--to", "1", "--no-backup", "--yes"])
        XCTAssertEqual(result.status, ExitStatus.migrationFailed.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("down step 3 (user_names) failed at statement 2 `SELECT 1 / 0`"), result.standardError)
        XCTAssertTrue(result.standardError.contains("SQLSTATE 22012"), result.standardError)
        XCTAssertEqual(try schema(database), schemaBefore)
        XCTAssertEqual(try cluster.connect(database: database).query(bookkeeping).rows.map(\.values), rowsBefore)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM schema_version_log WHERE action = 'failed'", database: database), "1")
    }

    func testPreflightRefusesMissingIrreversibleAndEditedBeforeAnySQL() throws {
        XCTAssertEqual(try migrate(["up"]).status, 0)
        let before = try schema(database)
        let logBefore = try cluster.scalar("SELECT count(*) FROM schema_version_log", database: database)

        try FileManager.default.removeItem(atPath: migrations + "/0004_audit.down.sql")
        try "-- dbmigrate:irreversible\nSELECT 1;".write(toFile: migrations + "/0003_user_names.down.sql", atomically: true, encoding: .utf8)
        try "CREATE TABLE meetings (id serial PRIMARY KEY); -- edited".write(toFile: migrations + "/0002_meetings.up.sql", atomically: true, encoding: .utf8)

        let result = try TestProcess.tool("dbmigrate", ["down", "--to", "0", "--yes", "--database-url", cluster.url(database: database), "--dir", migrations,
                                                        "--repo", repository], cluster: cluster)
        XCTAssertEqual(result.status, ExitStatus.migrationRefused.rawValue, result.standardError)
        for expected in ["version 4 (audit): no down file", "version 3 (user_names): marked -- dbmigrate:irreversible",
                         "version 2 (meetings): 0002_meetings.up.sql was edited"] {
            XCTAssertTrue(result.standardError.contains(expected), "missing '\(expected)' in: \(result.standardError)")
        }
        XCTAssertEqual(try schema(database), before)
        XCTAssertEqual(try versions(), ["1", "2", "3", "4"])
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM schema_version_log", database: database), logBefore)
        XCTAssertFalse(FileManager.default.fileExists(atPath: repository + "/backups"), "no backup before a refused plan")

        let verify = try migrate(["verify"])
        XCTAssertEqual(verify.status, ExitStatus.verificationMismatch.rawValue)
        XCTAssertTrue(verify.standardOutput.contains("version 2 (meetings)"), verify.standardOutput)
    }

    func testASecondMigrationWaitsThenFailsNamingTheHolder() throws {
        let holder = try cluster.connect(database: database)
        try holder.query("SELECT pg_advisory_lock($1)", [String(MigrationRunner.advisoryLockKey)])
        let started = Date()
        let result = try migrate(["up", "--lock-wait", "1"])
        XCTAssertEqual(result.status, ExitStatus.migrationLocked.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("pid \(holder.backendPID)"), result.standardError)
        XCTAssertTrue(result.standardError.contains("dbrecovery-tests"), result.standardError)
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(started), 1)
        XCTAssertEqual(try cluster.scalar("SELECT to_regclass('schema_version') IS NULL", database: database), "t", "the loser changed nothing")
        try holder.query("SELECT pg_advisory_unlock($1)", [String(MigrationRunner.advisoryLockKey)])
        XCTAssertEqual(try migrate(["up"]).status, 0)

        // Two real processes at once: exactly the versions once, never both running the same step.
        let other = try cluster.createDatabase(prefix: "race")
        let first = try TestProcess.start("dbmigrate", ["up", "--database-url", cluster.url(database: other), "--dir", migrations], cluster: cluster)
        let second = try TestProcess.start("dbmigrate", ["up", "--database-url", cluster.url(database: other), "--dir", migrations], cluster: cluster)
        XCTAssertEqual(first.waitForExit().exitCode, 0)
        XCTAssertEqual(second.waitForExit().exitCode, 0)
        XCTAssertEqual(try versions(other), ["1", "2", "3", "4"])
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM schema_version_log WHERE action = 'up'", database: other), "4")
    }

    func testDownToReleaseReturnsToThatReleasesVersionsWithABackupFirst() throws {
        XCTAssertEqual(try migrate(["up", "--to", "2", "--release", "v1.2.3"]).status, 0)
        XCTAssertEqual(try migrate(["up", "--release", "v1.3.0"]).status, 0)
        try cluster.connect(database: database).execute(script: "INSERT INTO audit (note) VALUES ('a'), ('b')")

        let plan = try TestProcess.tool("dbmigrate", ["down", "--to-release", "v1.2.3", "--dry-run", "--database-url", cluster.url(database: database),
                                                      "--dir", migrations, "--repo", repository], cluster: cluster)
        XCTAssertEqual(plan.status, 0, plan.standardError)
        XCTAssertTrue(plan.standardOutput.contains("WARNING: down step 4 (audit) drops table audit, which holds 2 rows"), plan.standardOutput)
        XCTAssertTrue(plan.standardOutput.contains("DROP TABLE audit;"), "dry run prints the full SQL")
        XCTAssertEqual(try versions(), ["1", "2", "3", "4"], "dry run changes nothing")

        let result = try TestProcess.tool("dbmigrate", ["down", "--to-release", "v1.2.3", "--yes", "--database-url", cluster.url(database: database),
                                                        "--dir", migrations, "--repo", repository, "--json"], cluster: cluster)
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertEqual(try versions(), ["1", "2"])
        let object = try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
        let report = object?["report"] as? [String: Any]
        XCTAssertEqual(report?["steps"] as? [Int], [4, 3], "reverted newest first")
        let backupID = try XCTUnwrap(report?["backup_id"] as? String)
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(repository!)/backups/\(backupID)/manifest.json"))
        let manifest = try BackupManifest.decode(data, source: backupID)
        XCTAssertEqual(manifest.tags, ["pre-downgrade"])
        XCTAssertEqual(manifest.schemaVersion, "4")
        XCTAssertEqual(try cluster.scalar("SELECT backup_id FROM schema_version_log WHERE action = 'down' LIMIT 1", database: database), backupID)
    }

    func testTheBackupBeforeADowngradeShowsProgressOnATerminal() throws {
        XCTAssertEqual(try migrate(["up"]).status, 0)
        try cluster.connect(database: database).execute(script: "INSERT INTO audit (note) SELECT repeat('x', 200) FROM generate_series(1, 20000)")
        // script(1) gives the command a terminal, as an operator's shell would.
        let command = [TestPaths.executable("dbmigrate"), "down", "--steps", "1", "--yes", "--database-url", cluster.url(database: database),
                       "--dir", migrations, "--repo", repository].map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        let result = try TestProcess.run("/usr/bin/script", ["-qec", command, "/dev/null"], environment: cluster.environment)
        XCTAssertEqual(result.status, 0, result.standardOutput + result.standardError)
        XCTAssertTrue(result.standardOutput.contains("taking a backup (tag pre-downgrade) before reverting"), result.standardOutput)
        // The backup's id, and its share of the catalogue's size estimate.
        XCTAssertNotNil(result.standardOutput.range(of: #"dump \d{8}T\d{6}Z-\w+: .* of ~"#, options: .regularExpression),
                        "the dump's progress line: \(result.standardOutput)")
        XCTAssertTrue(result.standardOutput.contains("downgraded from 4 to 3"), result.standardOutput)
    }

    func testAMigrationThatChangesSearchPathCannotRedirectTheBookkeeping() throws {
        let other = TestPaths.temporaryDirectory(prefix: "migrations")
        try "CREATE SCHEMA app;\nCREATE TABLE app.schema_version (version int, applied_at timestamptz);\nSET search_path = app;".write(
            toFile: other + "/0001_app.up.sql", atomically: true, encoding: .utf8)
        try "CREATE TABLE t2 (x int);".write(toFile: other + "/0002_t2.up.sql", atomically: true, encoding: .utf8)
        let result = try TestProcess.tool("dbmigrate", ["up", "--per-step", "--database-url", cluster.url(database: database), "--dir", other], cluster: cluster)
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT string_agg(version::text, ',' ORDER BY version) FROM public.schema_version", database: database), "1,2")
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM app.schema_version", database: database), "0")
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM public.dbmigrate_versions", database: database), "2")
    }

    func testNonTransactionalFailureBlocksUntilResolved() throws {
        try "-- dbmigrate:no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);\nSELECT 1 / 0;".write(
            toFile: migrations + "/0005_email_index.up.sql", atomically: true, encoding: .utf8)
        try "DROP INDEX users_email;".write(toFile: migrations + "/0005_email_index.down.sql", atomically: true, encoding: .utf8)
        let failed = try migrate(["up", "--per-step"])
        XCTAssertEqual(failed.status, ExitStatus.migrationFailed.rawValue, failed.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT state FROM dbmigrate_versions WHERE version = 5", database: database), "applying")
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM schema_version WHERE version = 5", database: database), "0",
                       "the runbook table never shows a half-applied version")

        let blocked = try migrate(["up"])
        XCTAssertEqual(blocked.status, ExitStatus.migrationRefused.rawValue)
        XCTAssertTrue(blocked.standardError.contains("dbmigrate resolve 5"), blocked.standardError)

        XCTAssertEqual(try migrate(["resolve", "5", "--mark-applied"]).status, 0)
        XCTAssertEqual(try cluster.scalar("SELECT state FROM dbmigrate_versions WHERE version = 5", database: database), "applied")
        XCTAssertEqual(try cluster.scalar("SELECT version FROM schema_version ORDER BY applied_at DESC LIMIT 1", database: database), "5")
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM schema_version_log WHERE action = 'resolve-applied'", database: database), "1")
        let status = try migrate(["status", "--json"])
        XCTAssertEqual(status.status, 0)
        XCTAssertFalse(status.standardOutput.contains("applying"))
    }
}
