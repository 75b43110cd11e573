import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// `dbprune` on an S3 repository: Standard → GLACIER at 30 days, deleted at 90 unless a snapshot keeps it.
final class S3PruneTests: IntegrationTestCase {
    var store: S3Store!
    let now = "2026-06-30T12:00:00Z"

    override func setUpWithError() throws {
        try useCluster()
        try useS3Repository(prefix: "nightly")
        store = try bucketStore(prefix: "nightly")
    }

    /// Real backups, moved to the given ages (days before `now`) with matching ids.
    private func makeBackups(ages: [Int]) throws -> [Int: String] {
        let database = try cluster.createDatabase(prefix: "s3prune", seed: "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        let reference = Timestamp.parse(now)!
        var ids: [Int: String] = [:]
        for age in ages {
            let result = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository],
                                              cluster: cluster, environment: s3.environment())
            XCTAssertEqual(result.status, 0, result.standardError)
            let old = result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
            var manifest = try BackupManifest.decode(try store.read("backups/\(old)/manifest.json"), source: old)
            let date = reference.addingTimeInterval(-Double(age) * 86_400)
            manifest.id = BackupID.make(at: date)
            manifest.startedAt = date
            manifest.finishedAt = date
            // Every file the manifest lists (the dump and its table of contents) moves with it.
            for file in manifest.files {
                try store.write("backups/\(manifest.id)/\(file.name)", contents: try store.read("backups/\(old)/\(file.name)"))
            }
            try store.write("backups/\(manifest.id)/manifest.json", contents: try manifest.encoded())
            try store.delete(["backups/\(old)/manifest.json"] + manifest.files.map { "backups/\(old)/\($0.name)" })
            ids[age] = manifest.id
        }
        return ids
    }

    private func classes() throws -> [String: String] {
        var result: [String: String] = [:]
        for object in try store.list(prefix: "backups/") where object.key.hasSuffix("dump.sql.gz") {
            result[String(object.key.split(separator: "/")[1])] = object.storageClass ?? "STANDARD"
        }
        return result
    }

    func testTiersMoveToGlacierAndDeleteAtNinetyDaysUnlessASnapshotKeeps() throws {
        let ages = [1, 5, 10, 20, 29, 31, 45, 60, 89, 91, 120, 200, 400]
        let ids = try makeBackups(ages: ages)
        let before = try classes()

        let dryRun = try TestProcess.tool("dbprune", ["--repo", repository, "--as-of", now, "--dry-run"], environment: s3.environment())
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        XCTAssertEqual(try classes(), before, "--dry-run changes nothing")

        let result = try TestProcess.tool("dbprune", ["--yes", "--repo", repository, "--as-of", now, "--json"], environment: s3.environment())
        XCTAssertEqual(result.status, 0, result.standardError)
        let after = try classes()
        // 120 days: past 90, and March's monthly slot goes to the newer 91-day backup.
        XCTAssertNil(after[ids[120]!])
        XCTAssertEqual(after.count, ages.count - 1)
        for age in [1, 5, 10, 20, 29] { XCTAssertEqual(after[ids[age]!], "STANDARD", "age \(age)") }
        for age in [31, 45, 60, 89, 91, 200, 400] { XCTAssertEqual(after[ids[age]!], "GLACIER", "age \(age)") }

        let report = try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
        let decisions = report?["decisions"] as? [[String: Any]] ?? []
        let kept = { (age: Int) in decisions.first { $0["id"] as? String == ids[age] }?["kept_by"] as? [String] ?? [] }
        XCTAssertEqual(kept(200), ["monthly #5"])
        XCTAssertEqual(kept(400), ["monthly #6"])
        XCTAssertEqual(kept(1), ["within 90d", "daily #1", "weekly #1", "monthly #1", "newest verified"])

        // An archived backup is reported as archived by restore and verify, never as corrupt.
        let verify = try TestProcess.tool("dbverify", ["--files", ids[200]!, "--repo", repository], environment: s3.environment())
        XCTAssertEqual(verify.status, ExitStatus.backupArchived.rawValue, verify.standardError)
        XCTAssertTrue(verify.standardOutput.contains("archived: needs a restore request"), verify.standardOutput)
        XCTAssertTrue(verify.standardOutput.contains("restore-object"), verify.standardOutput)

        // A second run changes nothing more (already GLACIER, nothing new to delete).
        let again = try TestProcess.tool("dbprune", ["--yes", "--repo", repository, "--as-of", now], environment: s3.environment())
        XCTAssertEqual(again.status, 0, again.standardError)
        XCTAssertEqual(try classes(), after)
    }

    /// Found by an outside attack: once a bucket lifecycle rule had moved one old backup's manifest to
    /// GLACIER (the rule dbprune --apply-lifecycle wrote took every object under backups/), every
    /// `dbrestore list`, `--emergency` and `dbprune` of the repository failed with exit 24 on that one
    /// manifest. It is now one archived entry: listed as such, passed over, never in the way.
    func testAManifestInGlacierIsListedAsArchivedAndHoldsUpNothing() throws {
        let ids = try makeBackups(ages: [1, 5, 40])
        try store.changeStorageClass("backups/\(ids[40]!)/manifest.json", to: "GLACIER")
        let list = try TestProcess.tool("dbrestore", ["list", "--repo", repository], environment: s3.environment())
        XCTAssertEqual(list.status, 0, list.standardError)
        XCTAssertTrue(list.standardOutput.contains(ids[40]! + "  -") && list.standardOutput.contains("ARCHIVED: its manifest is in GLACIER"), list.standardOutput)
        XCTAssertTrue(list.standardOutput.contains(ids[1]!) && list.standardOutput.contains(ids[5]!), list.standardOutput)
        // dbprune plans the others and names the archived one, which it cannot date: it is left alone.
        let prune = try TestProcess.tool("dbprune", ["--repo", repository, "--as-of", now, "--dry-run"], environment: s3.environment())
        XCTAssertEqual(prune.status, ExitStatus.backupArchived.rawValue, prune.standardError)
        XCTAssertTrue(prune.standardError.contains("have their manifest in GLACIER and were left alone") && prune.standardError.contains(ids[40]!),
                      prune.standardError)
        XCTAssertTrue(prune.standardOutput.contains(ids[1]!) && prune.standardOutput.contains(ids[5]!), prune.standardOutput)
        // The newest backup is restored as if the archived one were not there.
        let target = try cluster.createDatabase(prefix: "s3target")
        let source = try BackupManifest.decode(try store.read("backups/\(ids[1]!)/manifest.json"), source: "manifest").database.name
        let emergency = try TestProcess.tool("dbrestore", ["--from-database", source, "--emergency", "--repo", repository, "--database-url", cluster.url(database: target)],
                                             cluster: cluster, environment: s3.environment())
        XCTAssertEqual(emergency.status, 0, emergency.standardError)
        XCTAssertTrue(emergency.standardOutput.contains(ids[1]!), emergency.standardOutput)
    }

    func testApplyLifecycleWritesTheRuleAndShowsTheDifference() throws {
        let preview = try TestProcess.tool("dbprune", ["--repo", repository, "--apply-lifecycle", "--dry-run"], environment: s3.environment())
        XCTAssertEqual(preview.status, 0, preview.standardError)
        XCTAssertTrue(preview.standardOutput.contains("current rule: (none)"), preview.standardOutput)
        XCTAssertNil(try store.lifecycleConfiguration())

        let apply = try TestProcess.tool("dbprune", ["--repo", repository, "--apply-lifecycle"], environment: s3.environment())
        XCTAssertEqual(apply.status, 0, apply.standardError)
        let configuration = try XCTUnwrap(try store.lifecycleConfiguration())
        XCTAssertTrue(configuration.contains("nightly/backups/"), configuration)
        XCTAssertTrue(configuration.contains("<AbortIncompleteMultipartUpload>"), configuration)
        XCTAssertFalse(configuration.contains("<Expiration>"), "snapshot rules keep some backups past 90 days: no blanket expiration")
        // Nothing moves to GLACIER by the bucket's rule: it would take the manifests too (dbprune moves the data files).
        XCTAssertFalse(configuration.contains("<Transition>"), configuration)

        let again = try TestProcess.tool("dbprune", ["--repo", repository, "--apply-lifecycle"], environment: s3.environment())
        XCTAssertTrue(again.standardOutput.contains("already up to date"), again.standardOutput)
    }
}
