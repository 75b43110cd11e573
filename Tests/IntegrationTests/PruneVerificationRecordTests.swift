import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// Issue 21 item 2: `dbprune` reads the newest backup in full once, records it
/// (`backups/<id>/verified-at.json`), and trusts that record on later runs until it is older than
/// `[prune] reverify_after` or a file's size or modification time changed.
final class PruneVerificationRecordTests: IntegrationTestCase {
    var id: String!

    override func setUpWithError() throws {
        try useDatabase(prefix: "reverify", seed: "CREATE TABLE t AS SELECT g AS x, md5(g::text) AS y FROM generate_series(1, 5000) g")
        useLocalRepository()
        let result = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository], cluster: cluster)
        XCTAssertEqual(result.status, 0, result.standardError)
        id = result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func prune(config: String? = nil, policy: String? = nil, dryRun: Bool = false) throws -> [String: Any] {
        var environment: [String: String] = [:]
        var arguments = dryRun ? ["--dry-run"] : []
        if let policy {
            let path = TestPaths.temporaryDirectory(prefix: "policy") + "/policy.toml"
            try policy.write(toFile: path, atomically: true, encoding: .utf8)
            arguments += ["--policy", path]
        }
        if let config {
            let path = TestPaths.temporaryDirectory(prefix: "config") + "/config.toml"
            try config.write(toFile: path, atomically: true, encoding: .utf8)
            environment["DBRECOVERY_CONFIG"] = path
        }
        let result = try TestProcess.tool("dbprune", ["--repo", repository, "--yes", "--json"] + arguments, environment: environment)
        XCTAssertEqual(result.status, 0, result.standardError)
        return try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any] ?? [:]
    }

    private var recordPath: String { "\(repository!)/backups/\(id!)/verified-at.json" }
    private var dumpPath: String { "\(repository!)/backups/\(id!)/dump.sql.gz" }

    func testTheRecordSparesTheReadUntilItIsStaleOrTheFileChanged() throws {
        let dryRun = try prune(dryRun: true)
        XCTAssertTrue((dryRun["verification"] as? String)?.contains("read in full") ?? false, "\(dryRun)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: recordPath), "--dry-run writes nothing")

        let first = try prune()
        XCTAssertTrue((first["verification"] as? String)?.contains("read in full") ?? false, "\(first)")
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: recordPath))) as? [String: Any]
        XCTAssertNotNil(record?["verified_at"], "\(record ?? [:])")
        XCTAssertFalse(try String(contentsOfFile: "\(repository!)/backups/\(id!)/manifest.json", encoding: .utf8).contains("verified"),
                       "the manifest is never changed")

        let second = try prune()
        XCTAssertTrue((second["verification"] as? String)?.contains("its record") ?? false, "\(second)")

        // Damage that keeps size and modification time is not seen while the record is fresh (the
        // read it spares is exactly what would see it) ...
        let attributes = try FileManager.default.attributesOfItem(atPath: dumpPath)
        var data = try Data(contentsOf: URL(fileURLWithPath: dumpPath))
        data[data.count / 2] ^= 0x20
        try data.write(to: URL(fileURLWithPath: dumpPath))
        try FileManager.default.setAttributes([.modificationDate: try XCTUnwrap(attributes[.modificationDate])], ofItemAtPath: dumpPath)
        let trusted = try prune()
        XCTAssertTrue((trusted["verification"] as? String)?.contains("its record") ?? false, "\(trusted)")
        XCTAssertEqual((trusted["unverified"] as? [String])?.count, 0)

        // ... and is found once the record is older than reverify_after,
        let stale = try prune(config: "[prune]\nreverify_after = \"0h\"\n")
        XCTAssertNil(stale["verification"] as? String, "nothing verifies now: \(stale)")
        XCTAssertTrue((stale["unverified"] as? [String] ?? []).contains { $0.contains("sha256 does not match") }, "\(stale)")

        // ... or at once when the file's modification time changed.
        try FileManager.default.setAttributes([.modificationDate: Date()], ofItemAtPath: dumpPath)
        let changed = try prune()
        XCTAssertTrue((changed["unverified"] as? [String] ?? []).contains { $0.contains("sha256 does not match") }, "\(changed)")
    }

    /// Flips a byte in the middle of a backup's dump, keeping its size and modification time (bit rot).
    private func rot(_ backup: String) throws {
        let path = "\(repository!)/backups/\(backup)/dump.sql.gz"
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        data[data.count / 2] ^= 0x20
        try data.write(to: URL(fileURLWithPath: path))
        try FileManager.default.setAttributes([.modificationDate: try XCTUnwrap(attributes[.modificationDate])], ofItemAtPath: path)
    }

    private func newerBackup() throws -> String {
        sleep(1)   // ids sort by the second they were taken
        let result = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository], cluster: cluster)
        XCTAssertEqual(result.status, 0, result.standardError)
        return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func decisions(_ report: [String: Any]) -> [String: String] {
        Dictionary(uniqueKeysWithValues: (report["decisions"] as? [[String: Any]] ?? []).compactMap { decision in
            (decision["id"] as? String).map { ($0, decision["action"] as? String ?? "") }
        })
    }

    private let keepOne = "[local]\nkeep_last = 1\nsnapshots = false\n"

    /// The attacker's scenario (issue 21 finding 2): the newest backup rots in place (size and
    /// modification time kept) while its record is fresh. With keep 1, prune would delete the only
    /// good backup on the record's word: it reads the newest in full first, and keeps the older.
    func testARecordAloneNeverLetsPruneDeleteTheLastGoodBackup() throws {
        let newest = try newerBackup()
        _ = try prune()   // the default policy keeps both; the newest is read and recorded
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(repository!)/backups/\(newest)/verified-at.json"))
        try rot(newest)

        let dryRun = try prune(policy: keepOne, dryRun: true)
        XCTAssertEqual(decisions(dryRun)[id], "keep", "the older, good backup is kept: \(dryRun)")
        XCTAssertTrue((dryRun["verification"] as? String)?.contains("backup \(id!)") ?? false, "\(dryRun)")
        XCTAssertTrue((dryRun["unverified"] as? [String] ?? []).contains { $0.hasPrefix(newest) }, "\(dryRun)")

        let pruned = try prune(policy: keepOne)
        XCTAssertNotEqual(decisions(pruned)[id], "delete", "\(pruned)")
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(repository!)/backups/\(id!)/manifest.json"), "the good backup is still there")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(repository!)/backups/\(newest)/verified-at.json"),
                       "the read that found the damage deleted the record")
    }

    /// Finding 2 (a): a restore that finds the damage deletes the record, so prune does not trust it.
    func testAnEmergencyRestoreThatFindsTheDamageDeletesTheRecord() throws {
        let newest = try newerBackup()
        _ = try prune()
        let record = "\(repository!)/backups/\(newest)/verified-at.json"
        XCTAssertTrue(FileManager.default.fileExists(atPath: record))
        try rot(newest)
        let target = try cluster.createDatabase(prefix: "reverify_target")
        let emergency = try TestProcess.tool("dbrestore", ["--from-database", database!, "--emergency", "--database-url", cluster.url(database: target), "--repo", repository],
                                             cluster: cluster)
        XCTAssertEqual(emergency.status, 0, emergency.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: record), "the damaged backup no longer has a record vouching for it")
        let verify = try TestProcess.tool("dbverify", ["--files", id, "--repo", repository])
        XCTAssertEqual(verify.status, 0, verify.standardError)
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(repository!)/backups/\(id!)/verified-at.json"), "a full read that passes records it")
        let damaged = try TestProcess.tool("dbverify", ["--files", newest, "--repo", repository])
        XCTAssertNotEqual(damaged.status, 0)
    }

    /// Finding 2 (c): a record that cannot be decoded is said to be corrupt, not missing.
    func testACorruptRecordIsReportedAndTheBackupReRead() throws {
        _ = try prune()
        try Data("{\"verified_at\":".utf8).write(to: URL(fileURLWithPath: recordPath))
        let report = try prune()
        XCTAssertTrue((report["verification"] as? String)?.contains("corrupt record, re-reading") ?? false, "\(report)")
    }

    func testABadIntervalIsAConfigurationError() throws {
        let path = TestPaths.temporaryDirectory(prefix: "config") + "/config.toml"
        try "[prune]\nreverify_after = \"soon\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        let result = try TestProcess.tool("dbprune", ["--repo", repository, "--yes"], environment: ["DBRECOVERY_CONFIG": path])
        XCTAssertEqual(result.status, ExitStatus.configuration.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("reverify_after"), result.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: recordPath))
    }
}
