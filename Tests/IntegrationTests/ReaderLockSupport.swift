import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// Backups of one small database in a new S3 bucket, each a second after the last (distinct ids), a
/// retention policy that keeps only the newest, and the store to look into: what the reader-lock
/// tests prune while a restore or a verify reads one of them.
struct S3PruneFixture {
    let repository: String
    let ids: [String]
    let policy: String
    let store: S3Store

    init(backups count: Int, prefix: String, rows: Int, s3: S3Server, cluster: PostgresCluster) throws {
        let bucket = try s3.createBucket()
        repository = "s3://\(bucket)/\(prefix)"
        let database = try cluster.createDatabase(prefix: prefix.replacingOccurrences(of: "-", with: ""),
                                                  seed: "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, \(rows))")
        var ids: [String] = []
        for _ in 0..<count {
            let backup = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository],
                                              cluster: cluster, environment: s3.environment())
            XCTAssertEqual(backup.status, 0, backup.standardError)
            ids.append(backup.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines))
            Thread.sleep(forTimeInterval: 1.1)
        }
        self.ids = ids
        policy = TestPaths.temporaryDirectory(prefix: "\(prefix)-policy") + "/policy.toml"
        try Data("[s3]\nkeep_last = 1\nkeep_within = \"0h\"\nsnapshots = false\n".utf8).write(to: URL(fileURLWithPath: policy))
        store = S3Store(configuration: try S3Settings.configuration(bucket: bucket, environment: s3.environment()), prefix: prefix)
    }

    /// Waits until `process` holds a reader lock on backup `id`; kills it and fails the test if it
    /// ends first or does not within 90 s.
    func waitUntil(_ process: ChildProcess, reads id: String, errors: OutputCollector, name: String) throws -> Bool {
        let deadline = Date().addingTimeInterval(90)
        while try store.list(prefix: StoreLock.readerPrefix(id)).isEmpty {
            guard Date() < deadline, !errors.ended else {
                process.send(SIGKILL)
                _ = process.waitForExit()
                XCTFail("\(name) never registered as a reader of \(id): \(errors.finish())")
                return false
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return true
    }

    /// Runs dbprune (keep 1) while backup `id` is being read: it succeeds and keeps that backup,
    /// naming its reader.
    func pruneKeeps(_ id: String, readBy reader: String, s3: S3Server) throws {
        let prune = try TestProcess.tool("dbprune", ["--yes", "--repo", repository, "--policy", policy], environment: s3.environment())
        XCTAssertEqual(prune.status, 0, prune.standardError)
        XCTAssertTrue(prune.standardError.contains("kept backup \(id): being read by \(reader)"), prune.standardError)
    }
}
