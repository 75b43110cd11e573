import Foundation
import PostgresClient
@testable import RecoveryKit
import TestSupport
import XCTest

/// What `dbmigrate` refuses before running anything, and the run-time guard of its transaction.
final class MigrationPreflightTests: IntegrationTestCase {

    override func setUpWithError() throws {
        try useDatabase(prefix: "preflight")
        try useMigrations()
    }

    private func relations() throws -> String {
        try cluster.scalar("SELECT coalesce(string_agg(relname, ',' ORDER BY relname), '') FROM pg_class WHERE relnamespace = 'public'::regnamespace", database: database) ?? ""
    }

    func testAFileThatCommitsIsRefusedBeforeAnythingRunsAndSoAreItsSynonyms() throws {
        try writeMigrations(["0001_a.up.sql": "BEGIN;\nCREATE TABLE a (x int);\nCOMMIT;", "0002_b.up.sql": "CREATE TABLE b (x int);\nSELECT 1/0;"])
        let result = try migrate(["up"])
        XCTAssertEqual(result.status, ExitStatus.migrationRefused.rawValue, result.standardError)
        for expected in ["0001_a.up.sql line 1: `BEGIN`", "0001_a.up.sql line 3: `COMMIT` would end or split dbmigrate's transaction",
                         "-- dbmigrate:no-transaction"] {
            XCTAssertTrue(result.standardError.contains(expected), "missing '\(expected)' in \(result.standardError)")
        }
        XCTAssertEqual(try relations(), "", "nothing ran, nothing was recorded")

        for synonym in ["END", "ABORT", "COMMIT AND CHAIN", "START TRANSACTION", "SAVEPOINT s", "ROLLBACK TO SAVEPOINT s", "RELEASE s"] {
            try writeMigrations(["0001_a.up.sql": "CREATE TABLE a (x int);\n\(synonym);\nCREATE TABLE c (x int);"])
            let refused = try migrate(["up"])
            XCTAssertEqual(refused.status, ExitStatus.migrationRefused.rawValue, "\(synonym): \(refused.standardError)")
            XCTAssertTrue(refused.standardError.contains("0001_a.up.sql line 2: `"), "\(synonym): \(refused.standardError)")
            XCTAssertEqual(try relations(), "", synonym)
        }

        try writeMigrations(["0001_a.up.sql": "CREATE TABLE a (x int);\nCREATE INDEX CONCURRENTLY a_x ON a (x);"])
        let concurrently = try migrate(["up"])
        XCTAssertEqual(concurrently.status, ExitStatus.migrationRefused.rawValue, concurrently.standardError)
        XCTAssertTrue(concurrently.standardError.contains("0001_a.up.sql line 2: `CREATE INDEX CONCURRENTLY` cannot run inside a transaction; move it to a file of its own whose first line is -- dbmigrate:no-transaction"),
                      concurrently.standardError)

        // The file marked as managing its own transactions runs as written.
        try writeMigrations(["0001_a.up.sql": "-- dbmigrate:no-transaction\nBEGIN;\nCREATE TABLE a (x int);\nCOMMIT;", "0002_b.up.sql": "CREATE TABLE b (x int);"])
        let perStep = try migrate(["up", "--per-step"])
        XCTAssertEqual(perStep.status, 0, perStep.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_version", database: database), "1,2")
    }

    private func runDirectly(_ steps: [MigrationStep]) throws -> RecoveryError {
        let configuration = MigrationConfiguration(target: try ConnectionTarget(cluster.url(database: database)).with("password", cluster.password),
                                                   directory: migrations)
        let runner = try MigrationRunner(configuration)
        do {
            try runner.withLock { try runner.run(steps, backupID: nil, available: []) }
        } catch let error as RecoveryError {
            return error
        }
        XCTFail("the run should have stopped")
        return RecoveryError(.failure, "")
    }

    private func step(_ version: Int64, _ sql: String) -> MigrationStep {
        MigrationStep(version: version, name: "s\(version)", direction: .up, path: "/m/000\(version)_s\(version).up.sql", sql: sql,
                      sha256: "sha\(version)", noTransaction: false, downSHA256: nil)
    }

    /// The run-time guard on its own (pre-flight bypassed): a statement that ends the runner's
    /// transaction is noticed at once, the run stops, and the message says what was and was not applied.
    func testATransactionEndedBehindTheRunnersBackIsDetectedAndExplained() throws {
        let committed = try runDirectly([step(1, "CREATE TABLE a (x int);"),
                                         step(2, "CREATE TABLE b (x int);\nCOMMIT;\nCREATE TABLE c (x int);"),
                                         step(3, "CREATE TABLE d (x int);")])
        XCTAssertEqual(committed.code, .migrationFailed)
        for expected in ["up step 2 (s2) ended dbmigrate's transaction at statement 2 `COMMIT` (0002_s2.up.sql line 2), which was committed",
                         "applied and recorded: version(s) 1", "statements 1–2 of 0002_s2.up.sql took effect but version 2 is not recorded as applied (marked applying)",
                         "not run: the rest of 0002_s2.up.sql, version(s) 3"] {
            XCTAssertTrue(committed.message.contains(expected), "missing '\(expected)' in \(committed.message)")
        }
        XCTAssertTrue(committed.hint?.contains("dbmigrate resolve 2 --mark-applied") ?? false, committed.hint ?? "")
        XCTAssertEqual(try relations().split(separator: ",").filter { ["a", "b", "c", "d"].contains($0) }, ["a", "b"])
        XCTAssertEqual(try cluster.scalar("SELECT string_agg(version::text, ',') FROM schema_version", database: database), "1")
        XCTAssertEqual(try cluster.scalar("SELECT state FROM dbmigrate_versions WHERE version = 2", database: database), "applying")

        // Mid-flight now: every plan is refused until the operator resolves it.
        try writeMigrations(["0001_s1.up.sql": "CREATE TABLE a (x int);", "0002_s2.up.sql": "CREATE TABLE b (x int);", "0003_s3.up.sql": "CREATE TABLE d (x int);"])
        let blocked = try migrate(["up"])
        XCTAssertEqual(blocked.status, ExitStatus.migrationRefused.rawValue, blocked.standardError)
        XCTAssertTrue(blocked.standardError.contains("dbmigrate resolve 2"), blocked.standardError)

        let other = try cluster.createDatabase(prefix: "rolledback")
        database = other
        let rolledBack = try runDirectly([step(1, "CREATE TABLE a (x int);"), step(2, "CREATE TABLE b (x int);\nROLLBACK AND CHAIN;\nCREATE TABLE c (x int);")])
        XCTAssertTrue(rolledBack.message.contains("at statement 2 `ROLLBACK AND CHAIN` (0002_s2.up.sql line 2), which was rolled back; nothing of the plan is applied"),
                      rolledBack.message)
        XCTAssertEqual(try relations(), "", "rolled back: not even the bookkeeping remains")
    }

    func testAProcedureThatCommitsFailsCleanlyAndPointsToNoTransaction() throws {
        try cluster.connect(database: database).execute(script: "CREATE PROCEDURE committing() LANGUAGE plpgsql AS $$ BEGIN CREATE TABLE p (x int); COMMIT; END $$")
        try writeMigrations(["0001_a.up.sql": "CREATE TABLE a (x int);\nCALL committing();"])
        let result = try migrate(["up"])
        XCTAssertEqual(result.status, ExitStatus.migrationFailed.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("SQLSTATE 2D000"), result.standardError)
        XCTAssertTrue(result.standardError.contains("the whole plan was rolled back; the database is unchanged; this statement must run outside a transaction"), result.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM pg_class WHERE relname IN ('a', 'p', 'schema_version')", database: database), "0")
    }

    func testAFailingStatementWithAPasswordNeverShowsIt() throws {
        try writeMigrations(["0001_a.up.sql": "CREATE TABLE a (x int);", "0002_role.up.sql": "CREATE ROLE pg_reserved_name LOGIN PASSWORD 'hunter2-secret';"])
        XCTAssertEqual(try migrate(["up", "--to", "1"]).status, 0)
        let result = try migrate(["up"], fails: .migrationFailed, saying: ["PASSWORD '…'"])
        XCTAssertFalse(result.standardError.contains("hunter2"), result.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM schema_version_log WHERE detail LIKE '%hunter2%'", database: database), "0")
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM schema_version_log WHERE action = 'failed'", database: database), "1")
    }

    func testServerWarningsAndNoticesAreShown() throws {
        try writeMigrations(["0001_a.up.sql": "CREATE TABLE a (x int);\nDO $$ BEGIN RAISE WARNING 'careful: %', 42; RAISE NOTICE 'fyi'; END $$;"])
        let result = try migrate(["up", "--json"])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertTrue(result.standardError.contains("server WARNING from 0001_a.up.sql statement 2 (line 2): careful: 42"), result.standardError)
        XCTAssertTrue(result.standardError.contains("server NOTICE from 0001_a.up.sql statement 2 (line 2): fyi"), result.standardError)
        XCTAssertTrue(result.standardOutput.contains("careful: 42"), "in the --json report too: \(result.standardOutput)")

        // A loop of notices is shown as it comes, and the report keeps a bounded number of them.
        try writeMigrations(["0002_loop.up.sql": "DO $$ BEGIN FOR i IN 1..250 LOOP RAISE NOTICE 'n %', i; END LOOP; END $$;"])
        let loop = try migrate(["up", "--json"])
        XCTAssertEqual(loop.status, 0, loop.standardError)
        XCTAssertTrue(loop.standardError.contains("statement 1 (line 1): n 250"), loop.standardError.suffix(300).description)
        let report = (try JSONSerialization.jsonObject(with: Data(loop.standardOutput.utf8)) as? [String: Any])?["report"] as? [String: Any]
        let messages = try XCTUnwrap(report?["server_messages"] as? [String])
        XCTAssertEqual(messages.count, 201)
        XCTAssertEqual(messages.last, "… and 50 more")
    }

    func testDuplicateOrphanedAndEmptyMigrationFilesAreRefusedBeforeConnecting() throws {
        let cases: [([String: String], String)] = [
            (["0001_a.up.sql": "CREATE TABLE a (x int);", "0001_a.down.sql": "DROP TABLE a;", "0001_a_v2.down.sql": "DROP TABLE a CASCADE;"],
             "version 1 has 2 down files: 0001_a.down.sql, 0001_a_v2.down.sql"),
            (["0001_a.up.sql": "CREATE TABLE a (x int);", "0002_b.down.sql": "DROP TABLE b;"], "0002_b.down.sql has no up file (0002_b.up.sql)"),
            (["0001_a.up.sql": "CREATE TABLE a (x int);", "0002_b.up.sql": "-- to do\n"], "0002_b.up.sql has no SQL statement"),
        ]
        for (files, expected) in cases {
            try? FileManager.default.removeItem(atPath: migrations)
            try FileManager.default.createDirectory(atPath: migrations, withIntermediateDirectories: true)
            try writeMigrations(files)
            for arguments in [["up"], ["status"], ["down", "--to", "0", "--no-backup", "--yes"]] {
                let result = try migrate(arguments)
                XCTAssertEqual(result.status, ExitStatus.migrationRefused.rawValue, "\(arguments): \(result.standardError)")
                XCTAssertTrue(result.standardError.contains(expected), "missing '\(expected)' in \(result.standardError)")
                XCTAssertTrue(result.standardError.contains("HINT: "), result.standardError)
            }
            XCTAssertEqual(try relations(), "")
        }
    }

    func testDownWithoutATerminalNeedsYes() throws {
        try writeMigrations(["0001_a.up.sql": "CREATE TABLE a (x int);", "0001_a.down.sql": "DROP TABLE a;"])
        XCTAssertEqual(try migrate(["up"]).status, 0)
        let refused = try migrate(["down", "--to", "0", "--no-backup"])
        XCTAssertEqual(refused.status, ExitStatus.usage.rawValue, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("stdin is not a terminal to confirm it"), refused.standardError)
        XCTAssertTrue(refused.standardError.contains("HINT: add --yes"), refused.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT to_regclass('a') IS NOT NULL", database: database), "t")
        XCTAssertEqual(try migrate(["down", "--to", "0", "--no-backup", "--dry-run"]).status, 0, "a dry run needs no yes")
        let done = try migrate(["down", "--to", "0", "--no-backup", "--yes"])
        XCTAssertEqual(done.status, 0, done.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT to_regclass('a') IS NULL", database: database), "t")
    }

    func testTheDryRunNamesTheGrantsARoleLacksForTheRestorePointAndTheBackup() throws {
        let role = "migrator_\(UUID().uuidString.prefix(8).lowercased())"
        let admin = try cluster.connect(database: database)
        try admin.execute(script: """
            CREATE ROLE \(role) LOGIN PASSWORD '\(cluster.password)';
            ALTER DATABASE "\(database!)" OWNER TO \(role);
            """)
        addTeardownBlock { [cluster, database] in
            _ = try? cluster?.connect(database: database ?? "postgres").execute(script: "REASSIGN OWNED BY \(role) TO postgres; DROP OWNED BY \(role)")
            _ = try? cluster?.connect().execute(script: "DROP ROLE IF EXISTS \(role)")
        }
        let url = cluster.url(database: database).replacingOccurrences(of: "postgres@", with: "\(role)@")
        try writeMigrations(["0001_a.up.sql": "CREATE TABLE a (x int);", "0001_a.down.sql": "DROP TABLE a;"])
        XCTAssertEqual(try migrate(["up"], url: url).status, 0)
        let repository = TestPaths.repositoryPath()

        let dryRun = try migrate(["down", "--to", "0", "--dry-run", "--repo", repository], url: url)
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        XCTAssertTrue(dryRun.standardOutput.contains("WARNING: no restore point will be created: role \(role) may not call pg_create_restore_point"), dryRun.standardOutput)
        XCTAssertTrue(dryRun.standardOutput.contains("GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO \(role)"), dryRun.standardOutput)
        XCTAssertTrue(dryRun.standardOutput.contains("first: a backup (tag pre-downgrade); no restore point"), dryRun.standardOutput)

        let required = try migrate(["down", "--to", "0", "--yes", "--require-restore-point", "--repo", repository], url: url)
        XCTAssertEqual(required.status, ExitStatus.migrationRefused.rawValue, required.standardError)
        XCTAssertTrue(required.standardError.contains("GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO \(role)"), required.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT to_regclass('a') IS NOT NULL", database: database), "t")
        XCTAssertFalse(FileManager.default.fileExists(atPath: repository + "/backups"), "refused before the backup")

        // A table the role cannot read would make the pre-downgrade backup fail: said before anything runs.
        try admin.execute(script: "CREATE TABLE secrets (x int)")
        let unreadable = try migrate(["down", "--to", "0", "--dry-run", "--repo", repository], url: url)
        XCTAssertEqual(unreadable.status, ExitStatus.migrationRefused.rawValue, unreadable.standardError)
        XCTAssertTrue(unreadable.standardError.contains("the pre-downgrade backup would fail: role \(role) cannot read public.secrets"), unreadable.standardError)
        XCTAssertTrue(unreadable.standardError.contains("GRANT pg_read_all_data TO \(role)"), unreadable.standardError)

        try admin.execute(script: "GRANT pg_read_all_data TO \(role); GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO \(role)")
        // A repository that cannot be created is named before anything runs, too.
        let file = TestPaths.temporaryDirectory(prefix: "notadir") + "/file"
        try "x".write(toFile: file, atomically: true, encoding: .utf8)
        let blocked = try migrate(["down", "--to", "0", "--dry-run", "--repo", file + "/repo"], url: url)
        XCTAssertEqual(blocked.status, ExitStatus.migrationRefused.rawValue, blocked.standardError)
        XCTAssertTrue(blocked.standardError.contains("the pre-downgrade backup would fail: \(file) is a file"), blocked.standardError)

        let granted = try migrate(["down", "--to", "0", "--dry-run", "--repo", repository], url: url)
        XCTAssertEqual(granted.status, 0, granted.standardError)
        XCTAssertFalse(granted.standardOutput.contains("WARNING"), granted.standardOutput)
        XCTAssertTrue(granted.standardOutput.contains("first: a backup (tag pre-downgrade), then a restore point"), granted.standardOutput)
    }
}
