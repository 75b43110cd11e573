import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// What the next `dbprune` does with what a stopped one left (`pruning/<id>.json` records), as an
/// outside attack found it: the dry run must plan what the real run will, and a backup the stopped
/// prune had begun deleting goes at once instead of lingering as "in progress" for the grace period.
final class PruneRepairTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useDatabase(prefix: "repair", seed: "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        useLocalRepository()
    }

    /// Three backups and a policy keeping one; returns their ids, newest first, and the policy.
    private func threeBackups() throws -> (ids: [String], policy: String) {
        var ids: [String] = []
        for _ in 0..<3 {
            ids.insert(try backup(), at: 0)
            sleep(1)   // backup ids have whole seconds
        }
        let policy = TestPaths.temporaryDirectory(prefix: "policy") + "/p.toml"
        try "[local]\nkeep_last = 1\nsnapshots = false\n".write(toFile: policy, atomically: true, encoding: .utf8)
        return (ids, policy)
    }

    /// What a prune SIGKILLed after deleting backup `id`'s manifest (and `files`) leaves.
    private func stoppedPrune(deleting id: String, files: [String] = []) throws {
        let folder = repository + "/backups/" + id
        try FileManager.default.createDirectory(atPath: repository + "/pruning", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: folder + "/manifest.json", toPath: repository + "/pruning/\(id).json")
        for file in ["manifest.json"] + files { try FileManager.default.removeItem(atPath: folder + "/" + file) }
    }

    private func plan(_ arguments: [String], policy: String) throws -> [String: Any] {
        let result = try tool("dbprune", ["--repo", repository, "--policy", policy, "--json"] + arguments)
        XCTAssertEqual(result.status, 0, result.standardError)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any], result.standardOutput)
    }

    private func kept(_ report: [String: Any]) -> [String] {
        ((report["decisions"] as? [[String: Any]]) ?? []).filter { $0["action"] as? String == "keep" }.compactMap { $0["id"] as? String }
    }

    func testTheDryRunPlansABackupItWouldPutBackAsTheRealRunDoes() throws {
        let (ids, policy) = try threeBackups()
        try stoppedPrune(deleting: ids[0])
        let dryRun = try plan(["--dry-run"], policy: policy)
        let real = try plan(["--yes"], policy: policy)
        XCTAssertEqual(kept(dryRun), [ids[0]], "the dry run kept the one it would not have: \(dryRun["decisions"] ?? "")")
        XCTAssertEqual(kept(real), [ids[0]])
        XCTAssertEqual((dryRun["decisions"] as? [Any])?.count, (real["decisions"] as? [Any])?.count)
        XCTAssertEqual(try tool("dbverify", ["--files", ids[0], "--repo", repository]).status, 0)
    }

    /// A restore or verify by the id of a backup a stopped prune left in `pruning/` says so (and what
    /// to run), not merely "no backup".
    func testARestoreByTheIdOfABackupBeingDeletedSaysSo() throws {
        let id = try backup()
        try stoppedPrune(deleting: id)
        func check(_ command: String, _ arguments: [String]) throws {
            let result = try tool(command, arguments + common)
            XCTAssertEqual(result.status, ExitStatus.backupNotFound.rawValue, result.standardError)
            XCTAssertTrue(result.standardError.contains("is being deleted by dbprune (its manifest waits in pruning/\(id).json)"), result.standardError)
            XCTAssertTrue(result.standardError.contains("dbprune --dry-run"), result.standardError)
        }
        try check("dbrestore", [id, "--dry-run"])
        try check("dbverify", [id])
        // With another backup beside it (the id is then merely unknown to the listing), and by a prefix.
        sleep(1)
        _ = try backup()
        try check("dbrestore", [id, "--dry-run"])
        try check("dbverify", [String(id.prefix(17))])
    }

    func testABackupAStoppedPruneHadBegunDeletingGoesAtOnce() throws {
        let (ids, policy) = try threeBackups()
        try stoppedPrune(deleting: ids[2], files: ["dump.sql.gz"])
        let dryRun = try plan(["--dry-run"], policy: policy)
        let folder = "backups/\(ids[2])"
        let planned = ((dryRun["garbage"] as? [[String: Any]]) ?? []).first { $0["folder"] as? String == folder }
        XCTAssertEqual(planned?["action"] as? String, "delete", "\(dryRun["garbage"] ?? "")")
        _ = try plan(["--yes"], policy: policy)
        XCTAssertFalse(FileManager.default.fileExists(atPath: repository + "/" + folder), "left for the grace period")
        XCTAssertFalse(FileManager.default.fileExists(atPath: repository + "/pruning/\(ids[2]).json"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: repository + "/backups").sorted(), [ids[0]])
    }
}
