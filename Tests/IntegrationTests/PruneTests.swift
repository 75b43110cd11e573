import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// `dbprune` on a local repository of real backups.
final class PruneTests: IntegrationTestCase {

    override func setUpWithError() throws {
        try useDatabase(prefix: "prune", seed: "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")
        useLocalRepository()
        // 40 real backups, then dated every third day over four months (ids renamed to match).
        let now = Date()
        for index in 0..<40 {
            let result = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository,
                                                           "--compression-level", "1"], cluster: cluster)
            XCTAssertEqual(result.status, 0, result.standardError)
            let id = result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
            let takenAt = now.addingTimeInterval(-Double(index) * 3 * 86_400 - 3600)
            try redate(id, to: takenAt, newID: BackupID.make(at: takenAt), pinned: index == 25)
        }
    }

    private func redate(_ id: String, to date: Date, newID: String, pinned: Bool) throws {
        let folder = "\(repository!)/backups/"
        var manifest = try BackupManifest.decode(try Data(contentsOf: URL(fileURLWithPath: folder + id + "/manifest.json")), source: id)
        manifest.id = newID
        manifest.startedAt = date
        manifest.finishedAt = date
        manifest.pinned = pinned
        try FileManager.default.moveItem(atPath: folder + id, toPath: folder + newID)
        try manifest.encoded().write(to: URL(fileURLWithPath: folder + newID + "/manifest.json"))
    }

    private func listing() -> [String] {
        (FileManager.default.enumerator(atPath: repository + "/backups")?.allObjects as? [String] ?? []).sorted()
    }

    private func ids() throws -> [String] {
        try Catalog(store: try LocalStore(root: repository, create: false)).entries().map(\.id)
    }

    func testLocalTierKeepsTheTenNewestAndPinnedAndCollectsGarbage() throws {
        let all = try ids()
        XCTAssertEqual(all.count, 40)
        let expected = Array(all.prefix(10)) + [all[25]]

        // Garbage: an interrupted backup from two days ago (removed) and one from a minute ago (kept).
        let oldGarbage = "\(repository!)/backups/20200101T000000Z-dead"
        let newGarbage = "\(repository!)/backups/20200101T000001Z-beef"
        for folder in [oldGarbage, newGarbage] {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            _ = FileManager.default.createFile(atPath: folder + "/dump.sql.gz.partial-1", contents: Data([1]))
        }
        var times = [timeval(tv_sec: Int(Date().timeIntervalSince1970) - 48 * 3600, tv_usec: 0),
                     timeval(tv_sec: Int(Date().timeIntervalSince1970) - 48 * 3600, tv_usec: 0)]
        XCTAssertEqual(utimes(oldGarbage + "/dump.sql.gz.partial-1", &times), 0)

        let before = listing()
        let dryRun = try TestProcess.tool("dbprune", ["--repo", repository, "--dry-run", "--json"])
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        XCTAssertEqual(listing(), before, "--dry-run must change nothing")
        let plan = try JSONSerialization.jsonObject(with: Data(dryRun.standardOutput.utf8)) as? [String: Any]
        let decisions = plan?["decisions"] as? [[String: Any]] ?? []
        XCTAssertEqual(decisions.filter { $0["action"] as? String == "keep" }.compactMap { $0["id"] as? String }, expected)
        XCTAssertEqual(decisions.first { $0["id"] as? String == all[25] }?["kept_by"] as? [String], ["pinned"])
        XCTAssertEqual(decisions.first { $0["id"] as? String == all[0] }?["kept_by"] as? [String], ["last #1", "newest verified"])

        let result = try TestProcess.tool("dbprune", ["--yes", "--repo", repository])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertTrue(result.standardOutput.contains("last #10"), result.standardOutput)
        XCTAssertEqual(try ids(), expected)
        XCTAssertFalse(FileManager.default.fileExists(atPath: oldGarbage), "garbage past the grace period is removed")
        XCTAssertTrue(FileManager.default.fileExists(atPath: newGarbage), "recent garbage may be a running backup: kept")
        for id in expected {
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(repository!)/backups/\(id)/dump.sql.gz"))
        }

        // A second run has nothing left to delete.
        let again = try TestProcess.tool("dbprune", ["--yes", "--repo", repository, "--json"])
        XCTAssertEqual(again.status, 0)
        XCTAssertEqual(try ids(), expected)
    }

    func testNewestVerifiedUnreadableAndLockedAreRespected() throws {
        let all = try ids()
        // Damage the 10 newest: the newest backup that verifies is the 11th, and it must survive.
        for id in all.prefix(10) {
            _ = FileManager.default.createFile(atPath: "\(repository!)/backups/\(id)/dump.sql.gz", contents: Data("damaged".utf8))
        }
        // And one backup has a manifest that cannot be read.
        try Data("{ not json".utf8).write(to: URL(fileURLWithPath: "\(repository!)/backups/\(all[30])/manifest.json"))

        let store = try LocalStore(root: repository, create: false)
        let lock = try store.lock(holder: LockHolder(command: "dbbackup", pid: 999, host: "db1"))
        let locked = try TestProcess.tool("dbprune", ["--yes", "--repo", repository])
        XCTAssertEqual(locked.status, ExitStatus.repositoryLocked.rawValue)
        XCTAssertTrue(locked.standardError.contains("pid 999"), locked.standardError)
        XCTAssertEqual(try ids(), all)
        try lock.release()

        let result = try TestProcess.tool("dbprune", ["--yes", "--repo", repository])
        XCTAssertEqual(result.status, ExitStatus.backupCorrupt.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains(all[30]), result.standardError)
        XCTAssertEqual(Set(try ids()), Set(Array(all.prefix(11)) + [all[25], all[30]]))
    }

    func testDryRunSaysWhyEachDeleteGoesAndShowsARunningBackupAsInProgress() throws {
        let all = try ids()
        // A backup that has been writing for three days (a live lock holder on another host, so never
        // stale), its folder last changed two days ago: past the grace period, yet not garbage.
        let store = try LocalStore(root: repository, create: false)
        let lock = try store.lock(holder: LockHolder(command: "dbbackup", pid: 999, host: "db1", since: Date().addingTimeInterval(-72 * 3600)))
        let running = "\(repository!)/backups/20200101T000000Z-cafe"
        try FileManager.default.createDirectory(atPath: running, withIntermediateDirectories: true)
        XCTAssertTrue(FileManager.default.createFile(atPath: running + "/dump.sql.gz.partial-1", contents: Data([1])))
        var times = [timeval(tv_sec: Int(Date().timeIntervalSince1970) - 48 * 3600, tv_usec: 0),
                     timeval(tv_sec: Int(Date().timeIntervalSince1970) - 48 * 3600, tv_usec: 0)]
        XCTAssertEqual(utimes(running + "/dump.sql.gz.partial-1", &times), 0)

        let text = try TestProcess.tool("dbprune", ["--repo", repository, "--dry-run"])
        XCTAssertEqual(text.status, 0, text.standardError)
        let rows = text.standardOutput.split(separator: "\n").map(String.init)
        for id in all.dropFirst(10) where id != all[25] {
            let row = rows.first { $0.hasPrefix(id) } ?? ""
            XCTAssertTrue(row.contains("delete") && row.contains("older than the 10 newest"), "delete row without its reason: \(row)")
        }
        let runningRow = rows.first { $0.hasPrefix("20200101T000000Z-cafe") } ?? ""
        XCTAssertTrue(runningRow.contains("in progress") && runningRow.contains("pid 999"), "a backup being written is not garbage: \(runningRow)")
        XCTAssertFalse(runningRow.contains("garbage"), runningRow)
        XCTAssertFalse(text.standardError.contains("debug:"), "decisions are logged only with -vv: \(text.standardError)")

        // -v says what was passed over, -vv every decision; on stderr only, without colour when piped.
        let verbose = try TestProcess.tool("dbprune", ["--repo", repository, "--dry-run", "-vv"])
        XCTAssertEqual(verbose.standardOutput, text.standardOutput, "logging never changes stdout")
        XCTAssertTrue(verbose.standardError.contains("dbprune: info: skipped backups/20200101T000000Z-cafe: no manifest yet"), verbose.standardError)
        XCTAssertTrue(verbose.standardError.contains("dbprune: debug: delete backup \(all[12]): older than the 10 newest"), verbose.standardError)
        XCTAssertTrue(verbose.standardError.contains("dbprune: debug: keep backup \(all[25]): pinned"), verbose.standardError)
        XCTAssertFalse(verbose.standardError.contains("\u{1B}["), verbose.standardError)

        let json = try TestProcess.tool("dbprune", ["--repo", repository, "--dry-run", "--json"])
        let plan = try JSONSerialization.jsonObject(with: Data(json.standardOutput.utf8)) as? [String: Any]
        let garbage = plan?["garbage"] as? [[String: Any]] ?? []
        XCTAssertEqual(garbage.first?["action"] as? String, "in progress", json.standardOutput)
        let deletes = (plan?["decisions"] as? [[String: Any]] ?? []).filter { $0["action"] as? String == "delete" }
        XCTAssertEqual(deletes.count, 29)
        XCTAssertTrue(deletes.allSatisfy { $0["reason"] as? String == "older than the 10 newest of database \(database!)" }, json.standardOutput)

        // Once the writer is gone, the same folder is garbage past its grace period.
        try lock.release()
        let after = try TestProcess.tool("dbprune", ["--repo", repository, "--dry-run"])
        let leftover = after.standardOutput.split(separator: "\n").first { $0.hasPrefix("20200101T000000Z-cafe") } ?? ""
        XCTAssertTrue(leftover.contains("garbage: delete"), String(leftover))
        XCTAssertTrue(FileManager.default.fileExists(atPath: running), "--dry-run deletes nothing")
    }

    func testAPolicyTypoDeletesNothing() throws {
        let policy = TestPaths.temporaryDirectory(prefix: "policy") + "/p.toml"
        try "[local]\nkeep_last = 2\nkeep_monthy = 3\n".write(toFile: policy, atomically: true, encoding: .utf8)
        let before = listing()
        let result = try TestProcess.tool("dbprune", ["--yes", "--repo", repository, "--policy", policy])
        XCTAssertEqual(result.status, ExitStatus.configuration.rawValue)
        XCTAssertTrue(result.standardError.contains("unknown key [local] keep_monthy"), result.standardError)
        XCTAssertEqual(listing(), before)
    }
}
