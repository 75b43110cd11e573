import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// SIGKILL at the worst moments (DBRECOVERY_CRASH_AT); the next run must find a state it handles:
/// no backup that looks valid but is not, no lost database, no stuck lock.
final class CrashTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useDatabase(prefix: "crash", seed: "CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 1000) g")
        useLocalRepository()
    }

    private func run(_ tool: String, _ arguments: [String], crashAt: String? = nil) throws -> TestProcess.Result {
        try TestProcess.tool(tool, arguments, cluster: cluster, environment: crashAt.map { ["DBRECOVERY_CRASH_AT": $0] } ?? [:])
    }

    private var backupArguments: [String] { ["--database-url", cluster.url(database: database), "--repo", repository] }

    func testBackupKilledBetweenDataAndManifestLeavesNoBackupAndNoLock() throws {
        let killed = try run("dbbackup", backupArguments, crashAt: "capture:after-data")
        XCTAssertEqual(killed.status, 128 + SIGKILL)
        let store = try LocalStore(root: repository, create: false)
        XCTAssertTrue(try store.list(prefix: "backups/").contains { $0.key.hasSuffix("dump.sql.gz") }, "the data was committed")
        XCTAssertEqual(try Catalog(store: store).entries().count, 0, "without its manifest it is no backup")
        XCTAssertEqual(try run("dbbackup", backupArguments).status, 0, "the lock died with the process")
        XCTAssertEqual(try Catalog(store: store).entries().count, 1)
        let prune = try run("dbprune", ["--repo", repository, "--dry-run"])
        XCTAssertTrue(prune.standardOutput.contains("no manifest"), "the leftover is reported as garbage: \(prune.standardOutput)")
    }

    func testPruneKilledBetweenDeletesLeavesGarbageNeverAHalfBackup() throws {
        for _ in 0..<3 { XCTAssertEqual(try run("dbbackup", backupArguments).status, 0); sleep(1) }
        let policy = TestPaths.temporaryDirectory(prefix: "policy") + "/p.toml"
        try "[local]\nkeep_last = 1\n".write(toFile: policy, atomically: true, encoding: .utf8)
        let killed = try run("dbprune", ["--yes", "--repo", repository, "--policy", policy], crashAt: "prune:between-deletes")
        XCTAssertEqual(killed.status, 128 + SIGKILL)
        let store = try LocalStore(root: repository, create: false)
        let entries = try Catalog(store: store).entries()
        XCTAssertEqual(entries.count, 2, "one manifest went first; its data is now invisible garbage")
        for entry in entries {
            XCTAssertEqual(try TestProcess.tool("dbverify", ["--files", entry.id, "--repo", repository]).status, 0, "what still looks like a backup is one")
        }
        let again = try run("dbprune", ["--yes", "--repo", repository, "--policy", policy])
        XCTAssertEqual(again.status, 0, again.standardError)
        XCTAssertEqual(try Catalog(store: store).entries().count, 1)
    }

    func testRestoreKilledDuringTheSwapLosesNothingAndTheNextRunRepairs() throws {
        XCTAssertEqual(try run("dbbackup", backupArguments).status, 0)
        try cluster.connect(database: database).execute(script: "INSERT INTO t VALUES (-1)")
        let killed = try run("dbrestore", ["latest", "--yes", "--repo", repository, "--database-url", cluster.url(database: database)],
                             crashAt: "restore:during-swap")
        XCTAssertEqual(killed.status, 128 + SIGKILL)
        XCTAssertTrue(try cluster.databaseExists(database), "the target database is never lost")
        let admin = try cluster.connect()
        XCTAssertEqual(try admin.query("SELECT datallowconn FROM pg_database WHERE datname = $1", [database]).scalar, "f")
        let afterKill = try admin.query("SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE $1", ["\(database!)_%"]).scalar ?? ""
        XCTAssertTrue(afterKill.contains("_restore_"), "the killed run left its scratch database: \(afterKill)")

        let next = try run("dbrestore", ["latest", "--yes", "--repo", repository, "--database-url", cluster.url(database: database)])
        XCTAssertEqual(next.status, 0, next.standardError)
        XCTAssertTrue(next.standardError.contains("dropped \(database!)_restore_"), next.standardError)
        XCTAssertEqual(try cluster.rowCounts(database: database)["public.t"], 1000)
        let names = try admin.query("SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY 1", ["\(database!)_%"]).rows.compactMap { $0[0] }
        XCTAssertEqual(names.filter { $0.contains("_restore_") && !$0.contains("_pre_restore_") }, [], "no scratch database left")
        XCTAssertEqual(names.filter { $0.contains("_pre_restore_") }.count, 1)
        XCTAssertEqual(try admin.query("SELECT bool_and(datallowconn)::text FROM pg_database WHERE datname LIKE $1", ["\(database!)%"]).scalar, "true")
    }

    func testMigrationKilledMidPlanChangesNothingAndLeavesNoLock() throws {
        let migrations = TestPaths.temporaryDirectory(prefix: "migrations")
        try "CREATE TABLE a (x int);".write(toFile: migrations + "/0001_a.up.sql", atomically: true, encoding: .utf8)
        try "CREATE TABLE b (x int);".write(toFile: migrations + "/0002_b.up.sql", atomically: true, encoding: .utf8)
        let arguments = ["up", "--database-url", cluster.url(database: database), "--dir", migrations, "--lock-wait", "2"]
        let killed = try run("dbmigrate", arguments, crashAt: "migrate:between-steps")
        XCTAssertEqual(killed.status, 128 + SIGKILL)
        XCTAssertEqual(try cluster.scalar("SELECT to_regclass('a') IS NULL AND to_regclass('b') IS NULL", database: database), "t")
        let next = try run("dbmigrate", arguments)
        XCTAssertEqual(next.status, 0, next.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_version", database: database), "1,2")
    }
}
