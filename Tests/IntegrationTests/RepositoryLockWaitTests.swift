import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// `--lock-wait` given: a backup or a prune waits for the repository lock another run holds (a
/// pre-deploy snapshot during the nightly backup), says once whom it waits for, and fails with exit
/// 21 naming the holder when the wait is over; a signal ends the wait at once. Without it, a locked
/// repository still fails at once (`BackupCaptureTests.testSecondBackupFailsFastWhileTheRepositoryIsLocked`).
final class RepositoryLockWaitTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useDatabase(prefix: "lockwait", seed: "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 50);")
        useLocalRepository()
    }

    /// The nightly backup's lock, held by a process on another host (never reclaimed as stale).
    private func holdLock() throws -> RepositoryLock {
        try LocalStore(root: repository, create: true).lock(holder: LockHolder(command: "dbbackup --tag nightly", pid: 4242, host: "db1"))
    }

    private func waitForLine(_ text: String, in output: OutputCollector, within seconds: TimeInterval = 60) {
        let deadline = Date().addingTimeInterval(seconds)
        while !output.soFar.contains(text) && !output.ended && Date() < deadline { usleep(20_000) }
        XCTAssertTrue(output.soFar.contains(text), "never printed '\(text)': \(output.soFar)")
    }

    private func backupIDs() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: repository + "/backups")) ?? [])
            .filter { FileManager.default.fileExists(atPath: "\(repository!)/backups/\($0)/manifest.json") }
    }

    func testBackupWithLockWaitWaitsForTheHolderAndThenSucceeds() throws {
        let lock = try holdLock()
        defer { try? lock.release() }
        let process = try TestProcess.start("dbbackup", common + ["--lock-wait", "2m", "--tag", "pre-deploy"], cluster: cluster)
        let errors = OutputCollector(descriptor: process.standardError, limit: 1 << 20)
        waitForLine("waiting up to 2 min for the repository lock", in: errors)
        XCTAssertTrue(errors.soFar.contains("dbbackup --tag nightly (pid 4242 on db1"), "the holder is named: \(errors.soFar)")
        XCTAssertEqual(backupIDs(), [], "nothing is written while the lock is held")
        try lock.release()
        let termination = process.waitForExit(within: 60, orFail: "dbbackup did not go on once the lock was released: \(errors.soFar)")
        XCTAssertEqual(termination.exitCode, 0, errors.finish())
        XCTAssertEqual(backupIDs().count, 1)
        XCTAssertEqual(errors.finish().components(separatedBy: "waiting up to").count, 2, "the wait is said once")
    }

    func testLockWaitThatRunsOutFailsWithExit21NamingTheHolder() throws {
        let lock = try holdLock()
        defer { try? lock.release() }
        let started = Date()
        let backup = try tool("dbbackup", common + ["--lock-wait", "2s"])
        XCTAssertEqual(backup.status, ExitStatus.repositoryLocked.rawValue, backup.standardError)
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(started), 2, "it waited the 2 s asked for")
        XCTAssertTrue(backup.standardError.contains("repository is locked by dbbackup --tag nightly (pid 4242 on db1"), backup.standardError)
        XCTAssertTrue(backup.standardError.contains("after waiting 2 s"), backup.standardError)

        let prune = try tool("dbprune", ["--repo", repository, "--yes", "--lock-wait", "1s"])
        XCTAssertEqual(prune.status, ExitStatus.repositoryLocked.rawValue, prune.standardError)
        XCTAssertTrue(prune.standardError.contains("waiting up to 1 s for the repository lock"), prune.standardError)
        XCTAssertTrue(prune.standardError.contains("pid 4242 on db1"), prune.standardError)
        XCTAssertEqual(backupIDs(), [])
    }

    func testPruneWithLockWaitWaitsForTheBackupToFinish() throws {
        XCTAssertEqual(try tool("dbbackup", common).status, 0)
        let lock = try holdLock()
        defer { try? lock.release() }
        let process = try TestProcess.start("dbprune", ["--repo", repository, "--yes", "--lock-wait", "5m"], cluster: cluster)
        let errors = OutputCollector(descriptor: process.standardError, limit: 1 << 20)
        waitForLine("waiting up to 5 min for the repository lock", in: errors)
        try lock.release()
        let termination = process.waitForExit(within: 60, orFail: "dbprune did not go on once the lock was released: \(errors.soFar)")
        XCTAssertEqual(termination.exitCode, 0, errors.finish())
    }

    func testMigrateDownsBackupWaitsForTheRepositoryLockWhenLockWaitIsGiven() throws {
        try useMigrations(["0001_a.up.sql": "CREATE TABLE a (x int);", "0001_a.down.sql": "DROP TABLE a;"])
        XCTAssertEqual(try migrate(["up"]).status, 0)
        let lock = try holdLock()
        defer { try? lock.release() }
        let refused = try migrate(["down", "--to", "0", "--yes", "--repo", repository])
        XCTAssertEqual(refused.status, ExitStatus.repositoryLocked.rawValue, "without --lock-wait it fails at once: \(refused.standardError)")
        let process = try TestProcess.start("dbmigrate", ["down", "--to", "0", "--yes", "--repo", repository, "--lock-wait", "2m",
                                                          "--database-url", cluster.url(database: database), "--dir", migrations], cluster: cluster)
        let errors = OutputCollector(descriptor: process.standardError, limit: 1 << 20)
        waitForLine("waiting up to 2 min for the repository lock", in: errors)
        try lock.release()
        let termination = process.waitForExit(within: 60, orFail: "dbmigrate did not go on once the lock was released: \(errors.soFar)")
        XCTAssertEqual(termination.exitCode, 0, errors.finish())
        XCTAssertEqual(backupIDs().count, 1, "the pre-downgrade backup was taken")
    }

    func testSignalEndsTheWaitForTheRepositoryLockAtOnce() throws {
        let lock = try holdLock()
        defer { try? lock.release() }
        let process = try TestProcess.start("dbbackup", common + ["--lock-wait", "10m"], cluster: cluster)
        let errors = OutputCollector(descriptor: process.standardError, limit: 1 << 20)
        waitForLine("waiting up to 10 min for the repository lock", in: errors)
        let signalled = Date()
        process.send(SIGTERM)
        let termination = process.waitForExit(within: 30, orFail: "dbbackup went on waiting after SIGTERM: \(errors.soFar)")
        XCTAssertEqual(termination.exitCode, 130, errors.finish())
        XCTAssertLessThan(Date().timeIntervalSince(signalled), 5)
        XCTAssertEqual(backupIDs(), [])
    }
}
