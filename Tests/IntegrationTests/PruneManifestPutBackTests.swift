import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// `dbprune` deletes a backup's manifest, then finds a restore reading it and puts the manifest back.
/// That write can fail on S3: every answer lost although it landed, or never landed at all. Either way
/// the backup being read must never be left without its manifest for good (invisible to list and
/// restore, then deleted as garbage).
final class PruneManifestPutBackTests: IntegrationTestCase {
    var store: S3Store!

    override func setUpWithError() throws {
        try useDatabase(prefix: "putback", seed: "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        try useS3Repository(prefix: "nightly")
        store = try bucketStore(prefix: "nightly")
    }

    /// Two backups and a policy that keeps one: the older is planned for deletion.
    private func twoBackups() throws -> (older: String, policy: String) {
        let older = try backup()
        sleep(1)   // backup ids have whole seconds
        try backup()
        let policy = TestPaths.temporaryDirectory(prefix: "policy") + "/p.toml"
        try "[s3]\nkeep_last = 1\nkeep_within = \"0h\"\nsnapshots = false\n".write(toFile: policy, atomically: true, encoding: .utf8)
        return (older, policy)
    }

    /// Runs `dbprune` through a fault proxy (`proxyArguments`), frozen right after it deleted the
    /// older backup's manifest; a restore registers as that backup's reader meanwhile (a live lock of
    /// this process). Returns the prune's status and stderr, and the reader lock (still held).
    private func pruneWhileAReaderArrives(_ id: String, policy: String, proxyArguments: [String]) throws -> (status: Int32?, errors: String, reader: StoreLock) {
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: proxyArguments)
        defer { proxy.stop() }
        var environment = s3.environment(endpoint: proxy.endpoint)
        environment["DBRECOVERY_S3_MAX_ATTEMPTS"] = "2"
        environment["DBRECOVERY_SIGNAL_AT"] = "prune:between-deletes"
        environment["DBRECOVERY_SIGNAL"] = "STOP"
        let prune = try TestProcess.start("dbprune", ["--yes", "--repo", repository, "--policy", policy], environment: environment)
        let errors = OutputCollector(descriptor: prune.standardError, limit: 1 << 20)
        let deadline = Date().addingTimeInterval(120)
        while !isStopped(prune.pid) {
            guard !errors.ended, Date() < deadline else {
                prune.send(SIGKILL)
                XCTFail("dbprune never reached prune:between-deletes: \(errors.soFar)")
                throw XCTSkipFailure.message("no stop")
            }
            usleep(20_000)
        }
        XCTAssertFalse(try exists("backups/\(id)/manifest.json"), "frozen after the manifest's delete")
        let reader = try StoreLock.shared(in: store, backupID: id, holder: LockHolder(command: "dbrestore"))
        prune.send(SIGCONT)
        let termination = prune.waitForExit(within: 120, orFail: "dbprune did not finish: \(errors.soFar)")
        return (termination.exitCode, errors.finish(), reader)
    }

    private func isStopped(_ pid: pid_t) -> Bool {
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        guard let close = stat.lastIndex(of: ")") else { return false }
        return stat[stat.index(after: close)...].split(separator: " ").first == "T"
    }

    private func exists(_ key: String) throws -> Bool {
        try store.list(prefix: key).contains { $0.key == key }
    }

    private func listed() throws -> String {
        let list = try tool("dbrestore", ["list", "--repo", repository])
        XCTAssertEqual(list.status, 0, list.standardError)
        return list.standardOutput
    }

    /// Every answer to the put-back lost, the write landed: read back, the backup kept whole, the run goes on (exit 0).
    func testAPutBackWhoseEveryAnswerWasLostIsReadBackAndTheRunGoesOn() throws {
        let (older, policy) = try twoBackups()
        let run = try pruneWhileAReaderArrives(older, policy: policy, proxyArguments: [
            "--lose-match", "backups/\(older)/manifest.json", "--lose-method", "PUT", "--lose-first", "1000"])
        XCTAssertEqual(run.status, 0, run.errors)
        XCTAssertTrue(run.errors.contains("putting back the manifest of backup \(older) reported a failure"), run.errors)
        XCTAssertTrue(run.errors.contains("stored as written"), run.errors)
        XCTAssertTrue(try exists("backups/\(older)/manifest.json"))
        XCTAssertTrue(try listed().contains(older))
        XCTAssertEqual(try store.list(prefix: "pruning/").map(\.key), [], "nothing left to repair")
        try run.reader.release()
        XCTAssertEqual(try tool("dbverify", ["--files", older, "--repo", repository]).status, 0)
    }

    /// The put-back never lands: exit 20 naming the backup and the way out; its files stay, and the next
    /// prune puts the manifest back first (the restore still reading it keeps it), then deletes it once
    /// nobody reads it, leaving nothing behind.
    func testAPutBackThatNeverLandedIsRepairedByTheNextPrune() throws {
        let (older, policy) = try twoBackups()
        let files = try store.list(prefix: "backups/\(older)/").map(\.key).filter { !$0.hasSuffix("manifest.json") }
        XCTAssertFalse(files.isEmpty)
        let run = try pruneWhileAReaderArrives(older, policy: policy, proxyArguments: [
            "--fail-match", "backups/\(older)/manifest.json", "--fail-method", "PUT", "--fail-first", "1000"])
        XCTAssertEqual(run.status, ExitStatus.repositoryError.rawValue, run.errors)
        XCTAssertTrue(run.errors.contains("the manifest of backup \(older) (being read by"), run.errors)
        XCTAssertTrue(run.errors.contains("run dbprune again"), run.errors)
        XCTAssertFalse(try exists("backups/\(older)/manifest.json"), "the proxy refused the put-back")
        for key in files { XCTAssertTrue(try exists(key), "\(key) is still there") }

        // The next run (S3 well again) puts the manifest back before planning; the reader keeps the backup.
        let next = try tool("dbprune", ["--yes", "--repo", repository, "--policy", policy])
        XCTAssertEqual(next.status, 0, next.standardError)
        XCTAssertTrue(next.standardError.contains("put back the manifest of backup \(older)"), next.standardError)
        XCTAssertTrue(try exists("backups/\(older)/manifest.json"))
        XCTAssertTrue(try listed().contains(older), "listed again, restorable")
        XCTAssertEqual(try tool("dbverify", ["--files", older, "--repo", repository]).status, 0)

        // Once the restore is done, the policy deletes it as planned, record and all.
        try run.reader.release()
        let last = try tool("dbprune", ["--yes", "--repo", repository, "--policy", policy])
        XCTAssertEqual(last.status, 0, last.standardError)
        XCTAssertEqual(try store.list(prefix: "backups/\(older)/").map(\.key), [])
        XCTAssertEqual(try store.list(prefix: "pruning/").map(\.key), [])
        XCTAssertFalse(try listed().contains(older))
    }
}
