import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// Backups that cannot proceed end within a bound, with the real cause and its own exit code.
final class BackupFailureTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useDatabase(prefix: "blocked", seed: """
            CREATE TABLE orders (id int PRIMARY KEY, note text);
            INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 1000) g;
            CREATE TABLE secrets (id int);
            """)
        useLocalRepository()
    }

    /// The nightly backup behind a queued `ALTER TABLE` (itself waiting for a long transaction): it
    /// used to wait forever; now it fails after `--lock-wait`, naming the session it waited for.
    func testABackupBlockedByAQueuedAccessExclusiveLockFailsWithinLockWaitNamingTheBlocker() throws {
        let longTransaction = try cluster.connect(database: database)
        try longTransaction.execute(script: "BEGIN; SELECT count(*) FROM orders;")
        let alter = try cluster.connect(database: database)
        let alterPID = alter.backendPID
        let altering = Background { _ = try? alter.execute(script: "ALTER TABLE orders ADD COLUMN flag boolean") }
        // Wait until the ALTER TABLE is queued behind the long transaction.
        let queued = Date().addingTimeInterval(10)
        while Date() < queued, try cluster.scalar("SELECT count(*) FROM pg_locks WHERE NOT granted AND pid = \(alterPID)", database: database) != "1" {
            usleep(50_000)
        }

        let started = Date()
        let backup = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository, "--lock-wait", "2s"],
                                          cluster: cluster)
        let elapsed = Date().timeIntervalSince(started)
        try longTransaction.execute(script: "ROLLBACK")
        altering.join()

        XCTAssertEqual(backup.status, ExitStatus.lockTimeout.rawValue, backup.standardError)
        XCTAssertLessThan(elapsed, 15, "a 2 s --lock-wait must not take \(elapsed) s")
        XCTAssertTrue(backup.standardError.contains("pid \(alterPID)"), "the blocker is named: \(backup.standardError)")
        XCTAssertTrue(backup.standardError.contains("ALTER TABLE"), backup.standardError)
        XCTAssertTrue(backup.standardError.contains("HINT: "), backup.standardError)
        XCTAssertEqual(backup.standardError.split(separator: "\n").filter { $0.contains(": error: ") }.count, 1, backup.standardError)
        let listed = try TestProcess.tool("dbrestore", ["list", "--repo", repository, "--json"])
        XCTAssertFalse(listed.standardOutput.contains("\"id\""), "nothing was stored: \(listed.standardOutput)")
    }

    /// A role without SELECT on one table: the server's own reason and exit 11, not pg_dump's
    /// "could not import the requested snapshot" (exit 12) that followed from it.
    func testAMissingSelectPrivilegeIsReportedAsTheServerSaidIt() throws {
        let role = "reader_\(UInt32.random(in: 0...UInt32.max))"
        try cluster.connect(database: database).execute(script: """
            CREATE ROLE \(role) LOGIN PASSWORD 'reader-password';
            GRANT SELECT ON orders TO \(role);
            """)
        let url = "postgresql://\(role)@127.0.0.1:\(cluster.port)/\(database!)"
        let backup = try TestProcess.tool("dbbackup", ["--database-url", url, "--repo", repository],
                                          environment: ["PGPASSWORD": "reader-password"])
        XCTAssertEqual(backup.status, ExitStatus.databaseError.rawValue, backup.standardError)
        XCTAssertTrue(backup.standardError.contains("permission denied"), backup.standardError)
        XCTAssertTrue(backup.standardError.contains("secrets"), backup.standardError)
        XCTAssertFalse(backup.standardError.contains("could not import"), backup.standardError)
    }

    /// A typo in the port is a usage error (2), not an unreachable server (10).
    func testAMalformedPortIsAUsageError() throws {
        let backup = try TestProcess.tool("dbbackup", ["--database-url", "postgresql://postgres@127.0.0.1:54x32/\(database!)", "--repo", repository],
                                          cluster: cluster)
        XCTAssertEqual(backup.status, ExitStatus.usage.rawValue, backup.standardError)
        XCTAssertTrue(backup.standardError.contains("HINT: "), backup.standardError)
    }
}
