@testable import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// S3 requests under a server that stalls or trickles (attack report on the libcurl transport, items
/// 1 and 2): every request of the run's own work — a WAL GET, a single-object PUT, a listing — ends
/// at a SIGTERM within seconds, starts no retry after it, and the tool exits 130 with its clean-up
/// done; a body that keeps moving but slower than DBRECOVERY_S3_LOW_SPEED_LIMIT counts as a stall.
final class S3StallTests: IntegrationTestCase {
    /// A table small enough that its compressed dump is one PUT (under the 5 MiB test part size).
    private static let smallSeed = "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 200) g;"

    override func setUpWithError() throws {
        try useDatabase(prefix: "stall", seed: Self.smallSeed)
        try useS3Repository(prefix: "app")
    }

    func testASignalDuringAHeldWALFetchEndsItAtOnceAndInstallsNothing() throws {
        let name = "000000010000000000000007"
        let destination = TestPaths.temporaryDirectory(prefix: "walfetch") + "/RECOVERYXLOG"
        let run = try interruptHeld("dbrestore", ["wal-fetch", name, destination, "--repo", repository],
                                    hold: ["--hold-match", name, "--hold-method", "GET"])
        XCTAssertEqual(run.status, ExitStatus.interrupted.rawValue, run.errors)
        XCTAssertLessThan(run.seconds, 15, "the held GET was abandoned at the signal, not retried: \(run.errors)")
        XCTAssertTrue(run.errors.contains("interrupted by SIGTERM"), run.errors)
        XCTAssertFalse(run.errors.contains("S3 attempt"), "no retry after the signal: \(run.errors)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: destination), "nothing installed for recovery to replay")
    }

    func testASignalDuringAHeldSinglePutOfTheDumpEndsTheBackupAtOnceAndLeavesNothing() throws {
        let run = try interruptHeld("dbbackup", common, hold: ["--hold-match", "/dump.sql.gz", "--hold-method", "PUT"])
        XCTAssertEqual(run.status, ExitStatus.interrupted.rawValue, run.errors)
        XCTAssertLessThan(run.seconds, 15, "the held PUT was abandoned at the signal: \(run.errors)")
        XCTAssertFalse(run.errors.contains("S3 attempt"), "no retry after the signal: \(run.errors)")
        XCTAssertEqual(try bucketStore(prefix: "app").list(prefix: "backups/").map(\.key), [], "the interrupted backup left objects")
        XCTAssertEqual(try bucketStore(prefix: "app").openMultipartUploads(), [], "a multipart upload was left open")
        XCTAssertFalse(try bucketStore(prefix: "app").list(prefix: "locks/").contains { $0.key.hasSuffix("repository.lock") }, "the lock was released after the signal")
        // What the backup before it looks like is unchanged: the next run succeeds.
        try backup()
    }

    /// The server took the whole dump (it is stored) but its answer is held: the signal ends the wait, and
    /// the clean-up removes the object that landed, so no data without a manifest is left behind.
    func testASignalWhileTheAnswerToALandedPutIsHeldRemovesTheObjectThatLanded() throws {
        let run = try interruptHeld("dbbackup", common, hold: ["--hold-match", "/dump.sql.gz", "--hold-method", "PUT", "--hold-reply"])
        XCTAssertEqual(run.status, ExitStatus.interrupted.rawValue, run.errors)
        XCTAssertLessThan(run.seconds, 15, "the wait for the answer was abandoned at the signal: \(run.errors)")
        XCTAssertEqual(try bucketStore(prefix: "app").list(prefix: "backups/").map(\.key), [], "the dump that landed was removed")
        XCTAssertFalse(try bucketStore(prefix: "app").list(prefix: "locks/").contains { $0.key.hasSuffix("repository.lock") }, "the lock was released after the signal")
    }

    func testASignalWhileTheListingIsHeldEndsAnEmergencyRestoreAtOnce() throws {
        try backup()
        let before = try cluster.scalar("SELECT count(*) FROM t", database: database)
        let run = try interruptHeld("dbrestore", common + ["--emergency"], hold: ["--hold-match", "list-type=2", "--hold-method", "GET"])
        XCTAssertEqual(run.status, ExitStatus.interrupted.rawValue, run.errors)
        XCTAssertLessThan(run.seconds, 15, "the held listing was abandoned at the signal: \(run.errors)")
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM t", database: database), before, "the target was not touched")
        XCTAssertEqual(try databases(like: "\(database!)_%"), [], "no scratch database left behind")
    }

    /// A server that sends a WAL segment a few bytes a second never goes idle for the timeout: the
    /// speed floor ends each attempt after DBRECOVERY_S3_TIMEOUT_SECONDS instead of letting it run for hours.
    func testABodyTrickledBelowTheSpeedFloorFailsWithinTheBoundInsteadOfHanging() throws {
        let work = TestPaths.temporaryDirectory(prefix: "trickle")
        let name = "000000010000000000000003"
        // Random bytes at the front (zeros after, a segment's size): the stored (gzipped) segment is
        // about 64 KiB, hours at 50 bytes a second.
        var bytes = [UInt8](repeating: 0, count: 1_048_576)
        for index in 0..<65_536 { bytes[index] = UInt8.random(in: 0...255) }
        try Data(bytes).write(to: URL(fileURLWithPath: "\(work)/\(name)"))
        let pushed = try tool("dbbackup", ["wal-push", "\(work)/\(name)", "--repo", repository])
        XCTAssertEqual(pushed.status, 0, pushed.standardError)

        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--trickle-match", name, "--trickle-rate", "50"])
        defer { proxy.stop() }
        var environment = s3.environment(endpoint: proxy.endpoint)
        environment["DBRECOVERY_S3_TIMEOUT_SECONDS"] = "2"
        environment["DBRECOVERY_S3_MAX_ATTEMPTS"] = "2"
        let started = Date()
        let fetch = try TestProcess.tool("dbrestore", ["wal-fetch", name, "\(work)/fetched", "--repo", repository], cluster: cluster,
                                         environment: environment)
        let seconds = Date().timeIntervalSince(started)
        XCTAssertEqual(fetch.status, ExitStatus.walFetchFailed.rawValue, fetch.standardError)
        XCTAssertLessThan(seconds, 30, "two attempts of about 2 s each, not the hours the trickle would take: \(fetch.standardError)")
        XCTAssertTrue(fetch.standardError.contains("S3 attempt 1 of 2"), "the slow transfer was retried like a timeout: \(fetch.standardError)")
        XCTAssertTrue(fetch.standardError.contains("too slow"), "libcurl's reason: \(fetch.standardError)")
        XCTAssertTrue(fetch.standardError.contains("DBRECOVERY_S3_LOW_SPEED_LIMIT"), "the hint names the setting: \(fetch.standardError)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(work)/fetched"))

        // The same trickle with the floor turned off is not cut: it is still going when the floor's run was long over.
        environment["DBRECOVERY_S3_LOW_SPEED_LIMIT"] = "0"
        environment["DBRECOVERY_S3_MAX_ATTEMPTS"] = "1"
        let unbounded = try TestProcess.start("dbrestore", ["wal-fetch", name, "\(work)/fetched", "--repo", repository], cluster: cluster,
                                              environment: environment)
        let errors = OutputCollector(descriptor: unbounded.standardError, limit: 1 << 16)
        Thread.sleep(forTimeInterval: 8)
        XCTAssertFalse(errors.ended, "with DBRECOVERY_S3_LOW_SPEED_LIMIT=0 a moving body is waited for: \(errors.soFar)")
        unbounded.send(SIGTERM)
        let termination = unbounded.waitForExit(within: 15, orFail: "wal-fetch did not stop at SIGTERM mid-trickle: \(errors.soFar)")
        XCTAssertEqual(termination.exitCode, ExitStatus.interrupted.rawValue, errors.finish())
    }

    /// Item 13: a malformed number is refused before anything runs (usage, exit 2, naming the variable and
    /// the form to write); `--print-config` shows the S3 bounds in effect and where each came from.
    func testMalformedS3NumbersAreRefusedAndPrintConfigShowsTheBoundsInEffect() throws {
        for (name, value) in [("DBRECOVERY_S3_TIMEOUT_SECONDS", "30s"), ("DBRECOVERY_S3_MAX_ATTEMPTS", "three"), ("DBRECOVERY_S3_TIMEOUT_SECONDS", "0.001")] {
            let run = try tool("dbbackup", common, environment: [name: value])
            XCTAssertEqual(run.status, ExitStatus.usage.rawValue, "\(name)=\(value): \(run.standardError)")
            XCTAssertTrue(run.standardError.contains("\(name)=\(value) is not"), run.standardError)
            XCTAssertTrue(run.standardError.contains("write a plain number"), run.standardError)
        }
        XCTAssertEqual(try bucketStore(prefix: "app").list(prefix: "").map(\.key), [], "a refused run stores nothing")
        let printed = try tool("dbbackup", common + ["--print-config"], environment: ["DBRECOVERY_S3_TIMEOUT_SECONDS": "20"])
        XCTAssertEqual(printed.status, 0, printed.standardError)
        let lines = printed.standardOutput.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ") }
        XCTAssertTrue(lines.contains("DBRECOVERY_S3_TIMEOUT_SECONDS 20 environment DBRECOVERY_S3_TIMEOUT_SECONDS"), printed.standardOutput)
        XCTAssertTrue(lines.contains("DBRECOVERY_S3_MAX_ATTEMPTS 8 default"), printed.standardOutput)
        XCTAssertTrue(lines.contains("DBRECOVERY_S3_LOW_SPEED_LIMIT 1024 default"), printed.standardOutput)
    }
}
