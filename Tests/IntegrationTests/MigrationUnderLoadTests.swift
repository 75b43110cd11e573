import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// `dbmigrate` while an application holds and takes locks (attack mig/, run under pgbench): a
/// deadlock with the application, an index build that times out, a lock timeout. Each failure must
/// say what was and was not applied, who was in the way, and the exact way out.
final class MigrationUnderLoadTests: IntegrationTestCase {
    /// The four migrations of `MigrationTests` (users, meetings, user names, audit) are applied first;
    /// each test adds its own from version 5 on.
    override func setUpWithError() throws {
        try useDatabase(prefix: "migload")
        try useMigrations(MigrationTests.files)
        XCTAssertEqual(try migrate(["up"]).status, 0)
    }

    /// Reproduction (attack mig/ 2 and 3): `CREATE INDEX CONCURRENTLY` hit lock_timeout waiting for an
    /// application transaction, left an INVALID index and the version `applying`; the message named
    /// neither the index nor the blocker, and after `resolve --mark-reverted` the next `up` failed with
    /// "relation already exists".
    func testAnIndexBuildThatTimesOutNamesTheInvalidIndexTheBlockerAndTheWayOut() throws {
        try writeMigrations(["0005_email_index.up.sql": "-- dbmigrate:no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);"])
        try writeMigrations(["0005_email_index.down.sql": "-- dbmigrate:no-transaction\nDROP INDEX CONCURRENTLY users_email;"])
        let application = try cluster.connect(database: database)
        try application.execute(script: "BEGIN; INSERT INTO users VALUES (1, 'a@example.com')")

        let failed = try migrate(["up", "--lock-timeout", "1s"])
        XCTAssertEqual(failed.status, ExitStatus.migrationFailed.rawValue, failed.standardError)
        XCTAssertTrue(failed.standardError.contains("left invalid index(es) public.users_email"), failed.standardError)
        XCTAssertTrue(failed.standardError.contains("version 5 stays marked applying"), failed.standardError)
        XCTAssertTrue(failed.standardError.contains("pid \(application.backendPID)"), "the blocking session is named: \(failed.standardError)")
        XCTAssertTrue(failed.standardError.contains("run `DROP INDEX CONCURRENTLY public.users_email`, then `dbmigrate resolve 5 --mark-reverted`"),
                      failed.standardError)
        XCTAssertTrue(failed.standardError.contains("--lock-timeout"), failed.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM pg_index WHERE NOT indisvalid", database: database), "1")

        let resolved = try migrate(["resolve", "5", "--mark-reverted"])
        XCTAssertEqual(resolved.status, 0, resolved.standardError)
        XCTAssertTrue(resolved.standardError.contains("warning: invalid index(es) public.users_email"), resolved.standardError)
        XCTAssertTrue(resolved.standardError.contains("run `DROP INDEX CONCURRENTLY public.users_email` first"), resolved.standardError)

        // The way out the messages gave, once the application's transaction ended.
        try application.execute(script: "COMMIT")
        try cluster.connect(database: database).execute(script: "DROP INDEX CONCURRENTLY public.users_email")
        let again = try migrate(["up"])
        XCTAssertEqual(again.status, 0, again.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT indisvalid::text FROM pg_index WHERE indexrelid = 'users_email'::regclass", database: database), "true")
        let clean = try migrate(["resolve", "5", "--mark-reverted"])
        XCTAssertFalse(clean.standardError.contains("warning"), "a valid index is no leftover: \(clean.standardError)")
    }

    /// Starts psql running `script` on the test database, without waiting.
    private func startPsql(_ script: String) throws -> (ChildProcess, OutputCollector) {
        let psql = try ChildProcess(executable: try PostgresTools().path(of: "psql"),
                                    arguments: ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", cluster.url(database: database)],
                                    environment: cluster.environment, stdin: .pipe, stdout: .null, stderr: .pipe)
        let errors = OutputCollector(descriptor: psql.standardError)
        try Data(script.utf8).withUnsafeBytes { try psql.writeToStandardInput($0) }
        psql.closeStandardInput()
        return (psql, errors)
    }

    /// The application locks audit then users; the migration users then audit. The migration joins
    /// the cycle last, so the server aborts it.
    private func deadlockingApplication() throws -> (ChildProcess, OutputCollector) {
        let application = try startPsql("""
            BEGIN;
            LOCK TABLE audit IN EXCLUSIVE MODE;
            DO $$ BEGIN
              WHILE NOT EXISTS (SELECT 1 FROM pg_locks WHERE relation = 'users'::regclass AND mode = 'ExclusiveLock' AND granted AND pid <> pg_backend_pid()) LOOP
                PERFORM pg_sleep(0.05);
              END LOOP;
            END $$;
            LOCK TABLE users IN EXCLUSIVE MODE;
            COMMIT;
            """)
        try waitFor("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = 'audit'::regclass AND mode = 'ExclusiveLock' AND granted)")
        return application
    }

    private static let lockingMigration = "LOCK TABLE users IN EXCLUSIVE MODE;\nSELECT pg_sleep(2);\nLOCK TABLE audit IN EXCLUSIVE MODE;\nCREATE TABLE after_locks (x int);"

    /// Reproduction (attack mig/ 1): a migration that deadlocked with the application exited 40 with
    /// "fix the migration". The whole plan was one transaction the server rolled back, so it is run
    /// again (a note says so) and succeeds once the application's transaction is through.
    func testAPlanThatDeadlocksWithTheApplicationIsRunAgainAndApplies() throws {
        try writeMigrations(["0005_locks.up.sql": Self.lockingMigration])
        try writeMigrations(["0005_locks.down.sql": "DROP TABLE after_locks;"])
        let (application, applicationErrors) = try deadlockingApplication()
        let result = try migrate(["up"])
        XCTAssertEqual(application.waitForExit().exitCode, 0, applicationErrors.finish())
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertTrue(result.standardError.contains("attempt 1 of 4 ended in a deadlock the server broke by rolling the migration back (nothing applied); running it again"),
                      result.standardError)
        XCTAssertTrue(result.standardError.contains("40P01"), result.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT max(version)::text FROM schema_version", database: database), "5")
        XCTAssertEqual(try cluster.scalar("SELECT to_regclass('after_locks') IS NOT NULL", database: database), "t")
    }

    /// With --per-step after an earlier step committed, the plan is no longer one transaction: no
    /// retry, and the hint says the truth — this step was rolled back whole, the earlier one stays.
    func testADeadlockAfterACommittedStepSaysWhatWasRolledBackAndIsNotRetried() throws {
        try writeMigrations(["0005_table.up.sql": "CREATE TABLE third (x int);"])
        try writeMigrations(["0005_table.down.sql": "DROP TABLE third;"])
        try writeMigrations(["0006_locks.up.sql": Self.lockingMigration])
        try writeMigrations(["0006_locks.down.sql": "DROP TABLE after_locks;"])
        let (application, applicationErrors) = try deadlockingApplication()
        let result = try migrate(["up", "--per-step"])
        XCTAssertEqual(application.waitForExit().exitCode, 0, applicationErrors.finish())
        XCTAssertEqual(result.status, ExitStatus.migrationFailed.rawValue, result.standardError)
        XCTAssertFalse(result.standardError.contains("running it again"), result.standardError)
        XCTAssertTrue(result.standardError.contains("deadlock detected"), result.standardError)
        XCTAssertTrue(result.standardError.contains("rolling back this step's transaction whole: version 6 was not applied"), result.standardError)
        XCTAssertTrue(result.standardError.contains("order its statements to lock tables in the order the application does"), result.standardError)
        XCTAssertFalse(result.standardError.contains("fix it"), result.standardError)
        XCTAssertTrue(result.standardError.contains("version(s) 5 were applied in transactions of their own (--per-step) and stay applied"), result.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT max(version)::text FROM schema_version", database: database), "5")
        XCTAssertEqual(try cluster.scalar("SELECT to_regclass('after_locks') IS NULL", database: database), "t")
    }
}
