@testable import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// Repository locks (issue 16 E4) on a local directory and on a real S3 server: races, lost
/// replies, stale records, and releases that delete only their own lock.
final class LockTests: XCTestCase {
    var s3: S3Server!

    override func setUpWithError() throws {
        s3 = try S3Server.shared()
    }

    private func localStore() throws -> LocalStore {
        try LocalStore(root: TestPaths.temporaryDirectory(prefix: "locks"), create: true)
    }

    private func s3Store(endpoint: String? = nil, bucket: String? = nil) throws -> S3Store {
        let name = try bucket ?? s3.createBucket()
        var environment = s3.environment(endpoint: endpoint)
        environment["DBRECOVERY_S3_MAX_ATTEMPTS"] = "4"
        return S3Store(configuration: try S3Settings.configuration(bucket: name, environment: environment), prefix: "repo")
    }

    /// Eight processes' worth of lock attempts at once: one holder; every loser names the winner;
    /// the losers leave the winner's lock alone; the winner's release removes it.
    private func assertRaceHasOneWinner(_ makeStore: @escaping @Sendable () throws -> BackupStore, file: StaticString = #filePath, line: UInt = #line) throws {
        final class Results: @unchecked Sendable {   // guarded by `lock`
            let lock = NSLock()
            var winners: [(RepositoryLock, LockHolder)] = []
            var losers: [String] = []
        }
        let results = Results()
        DispatchQueue.concurrentPerform(iterations: 8) { index in
            // Every racer is a live process on this host (ours), so none may judge another's lock stale.
            let holder = LockHolder(command: "racer-\(index)")
            do {
                let store = try makeStore()
                let lock = try store.lock(holder: holder)
                results.lock.lock(); results.winners.append((lock, holder)); results.lock.unlock()
            } catch {
                results.lock.lock(); results.losers.append("\(error)"); results.lock.unlock()
            }
        }
        XCTAssertEqual(results.winners.count, 1, "exactly one holder; losers: \(results.losers)", file: file, line: line)
        guard let (lock, winner) = results.winners.first else { return }
        for message in results.losers {
            XCTAssertTrue(message.contains("locked by \(winner.command) (pid"), message, file: file, line: line)
        }
        // The losers are gone (their objects released): the winner's record must still be there.
        let store = try makeStore()
        let record = try store.read(StoreLock.writerKey)
        XCTAssertTrue(String(decoding: record, as: UTF8.self).contains(winner.token), "a loser removed the winner's lock", file: file, line: line)
        XCTAssertThrowsError(try store.lock(holder: LockHolder(command: "third")), "a third run got in while the winner holds the lock",
                             file: file, line: line)
        try lock.release()
        XCTAssertThrowsError(try store.read(StoreLock.writerKey), "release removes the lock", file: file, line: line)
        try store.lock(holder: LockHolder(command: "next")).release()
    }

    func testLocalRaceHasOneWinnerAndLosersNeverDeleteIt() throws {
        let root = try localStore().root
        try assertRaceHasOneWinner { try LocalStore(root: root, create: false) }
    }

    func testS3RaceHasOneWinnerAndLosersNeverDeleteIt() throws {
        let bucket = try s3.createBucket()
        let environment = s3.environment()
        try assertRaceHasOneWinner {
            S3Store(configuration: try S3Settings.configuration(bucket: bucket, environment: environment), prefix: "repo")
        }
    }

    /// Every second reply is lost after the server acted on the request: the lock PUT took effect,
    /// its retry finds our own record (not "locked by ourselves"), and the release still works.
    func testS3LostRepliesAreRecognisedAsOurOwnLock() throws {
        let bucket = try s3.createBucket()
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--lose-reply-every", "2"])
        defer { proxy.stop() }
        let direct = try s3Store(bucket: bucket)
        for round in 0..<4 {
            let store = try s3Store(endpoint: proxy.endpoint, bucket: bucket)
            let lock = try store.lock(holder: LockHolder(command: "lost-reply-\(round)"))
            XCTAssertNoThrow(try direct.read(StoreLock.writerKey))
            try lock.release()
            XCTAssertThrowsError(try direct.read(StoreLock.writerKey), "round \(round): the release left the lock behind")
        }
    }

    /// A holder whose record was replaced (someone deleted it by hand and another run took the lock)
    /// does not delete the new owner's lock, and says so.
    func testReleaseDeletesOnlyItsOwnLock() throws {
        for store in [try localStore() as BackupStore, try s3Store()] {
            let first = try store.lock(holder: LockHolder(command: "first"))
            try store.delete([StoreLock.writerKey])
            let second = try StoreLock.exclusive(in: store, holder: LockHolder(command: "second"))
            XCTAssertThrowsError(try first.release()) { error in
                XCTAssertTrue("\(error)".contains("now belongs to second"), "\(error)")
            }
            XCTAssertTrue(String(decoding: try store.read(StoreLock.writerKey), as: UTF8.self).contains(second.holder.token))
            try second.release()
        }
    }

    /// Stale records are reclaimed only by the README's rules: written on this host by a process
    /// that is gone (or an empty record of an older version); another host's lock is never taken.
    func testStaleLocksAreReclaimedOnlyByTheStatedRules() throws {
        let finished = try TestProcess.start("dbbackup", ["--version"])
        let deadPID = finished.pid
        _ = finished.waitForExit()
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        for store in [try localStore() as BackupStore, try s3Store()] {
            let dead = LockHolder(command: "dbbackup", pid: deadPID)
            XCTAssertTrue(try store.create(StoreLock.writerKey, contents: encoder.encode(dead)))
            let taken = try StoreLock.exclusive(in: store, holder: LockHolder(command: "dbprune"))
            XCTAssertEqual(taken.reclaimed.map(\.token), [dead.token])
            try taken.release()

            XCTAssertTrue(try store.create(StoreLock.writerKey, contents: Data()))
            try store.lock(holder: LockHolder(command: "after-empty")).release()

            let elsewhere = LockHolder(command: "dbbackup", pid: deadPID, host: "some-other-host")
            XCTAssertTrue(try store.create(StoreLock.writerKey, contents: encoder.encode(elsewhere)))
            XCTAssertThrowsError(try store.lock(holder: LockHolder(command: "dbprune"))) { error in
                XCTAssertEqual((error as? StorageError)?.kind, .locked)
                XCTAssertTrue((error as? StorageError)?.hint?.contains("never reclaimed automatically") ?? false, "\(error)")
            }
            // A live process on this host (ourselves) is never stale either.
            try store.delete([StoreLock.writerKey])
            let live = try store.lock(holder: LockHolder(command: "live"))
            XCTAssertThrowsError(try store.lock(holder: LockHolder(command: "other")))
            try live.release()
        }
    }

    /// Issue 19: an S3 lock release or multipart abort that fails is reported to the caller, never
    /// swallowed (the server goes away between taking the lock and releasing it).
    func testFailedReleasesAndAbortsAreReported() throws {
        let bucket = try s3.createBucket()
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: [])
        var environment = s3.environment(endpoint: proxy.endpoint)
        environment["DBRECOVERY_S3_MAX_ATTEMPTS"] = "2"
        let store = S3Store(configuration: try S3Settings.configuration(bucket: bucket, environment: environment), prefix: "gone")
        let lock = try store.lock(holder: LockHolder(command: "dbbackup"))
        let writer = try store.makeWriter("backups/x/dump.sql.gz")
        let part = Data(repeating: 1, count: 5 * 1024 * 1024 + 1)
        try part.withUnsafeBytes { try writer.write($0) }
        Thread.sleep(forTimeInterval: 1)
        proxy.stop()
        XCTAssertThrowsError(try writer.abort()) { error in
            XCTAssertTrue("\(error)".contains("could not be aborted"), "\(error)")
            XCTAssertTrue((error as? StorageError)?.hint?.contains("next dbbackup or dbprune") ?? false, "\(error)")
        }
        XCTAssertThrowsError(try lock.release(), "a failed release must be reported")
        // The server itself still holds both: the next writer removes the upload and says so.
        let next = S3Store(configuration: try S3Settings.configuration(bucket: bucket, environment: s3.environment()), prefix: "gone")
        try next.delete([StoreLock.writerKey])
        let again = try StoreLock.exclusive(in: next, holder: LockHolder(command: "dbprune"))
        XCTAssertEqual(again.leftovers.count, 1, "\(again.leftovers)")
        XCTAssertEqual(try next.openMultipartUploads(), [])
        try again.release()
    }

    /// Issue 16 E5: a restore streaming a backup holds a reader lock; dbprune keeps that backup and
    /// says so, and deletes it on its next run once the restore is done.
    func testPruneSkipsABackupThatARestoreIsReading() throws {
        let cluster = try PostgresCluster.shared()
        let fixture = try S3PruneFixture(backups: 2, prefix: "readers", rows: 1000, s3: s3, cluster: cluster)
        let (repository, ids, policy, store) = (fixture.repository, fixture.ids, fixture.policy, fixture.store)

        // The restore of the older backup goes through a proxy that answers slowly.
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--delay", "0.4"])
        defer { proxy.stop() }
        let target = "reader_target_\(UInt32.random(in: 0...UInt32.max))"
        let restore = try TestProcess.start("dbrestore", [ids[0], "--yes", "--repo", repository, "--database-url", cluster.url(database: target)],
                                            cluster: cluster, environment: s3.environment(endpoint: proxy.endpoint))
        let restoreErrors = OutputCollector(descriptor: restore.standardError, limit: 1 << 20)
        guard try fixture.waitUntil(restore, reads: ids[0], errors: restoreErrors, name: "the restore") else { return }
        try fixture.pruneKeeps(ids[0], readBy: "dbrestore", s3: s3)
        XCTAssertNoThrow(try store.read("backups/\(ids[0])/manifest.json"), "prune deleted a backup a restore was reading")

        let ended = restore.waitForExit()
        XCTAssertEqual(ended.exitCode, 0, restoreErrors.finish())
        XCTAssertEqual(try cluster.rowCounts(database: target), ["public.t": 1000])
        XCTAssertEqual(try store.list(prefix: "locks/readers/").map(\.key), [], "the restore released its reader lock")

        let again = try TestProcess.tool("dbprune", ["--yes", "--repo", repository, "--policy", policy], environment: s3.environment())
        XCTAssertEqual(again.status, 0, again.standardError)
        XCTAssertThrowsError(try store.read("backups/\(ids[0])/manifest.json"), "the next prune deletes it")
    }
}
