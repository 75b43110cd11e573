import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// Issue 21 item 2: `dbprune` reads the newest backup in full once, records it
/// (`backups/<id>/verified-at.json`), and trusts that record on later runs until it is older than
/// `[prune] reverify_after` or a file's size or modification time changed.
final class PruneVerificationRecordTests: XCTestCase {
    var cluster: PostgresCluster!
    var repository: String!
    var id: String!

    override func setUpWithError() throws {
        cluster = try PostgresCluster.shared()
        let database = try cluster.createDatabase(prefix: "reverify")
        try cluster.connect(database: database).execute(script: "CREATE TABLE t AS SELECT g AS x, md5(g::text) AS y FROM generate_series(1, 5000) g")
        repository = TestPaths.temporaryDirectory(prefix: "repo") + "/repo"
        let result = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository], cluster: cluster)
        XCTAssertEqual(result.status, 0, result.standardError)
        id = result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func prune(config: String? = nil, dryRun: Bool = false) throws -> [String: Any] {
        var environment: [String: String] = [:]
        if let config {
            let path = TestPaths.temporaryDirectory(prefix: "config") + "/config.toml"
            try config.write(toFile: path, atomically: true, encoding: .utf8)
            environment["DBRECOVERY_CONFIG"] = path
        }
        let result = try TestProcess.tool("dbprune", ["--repo", repository, "--yes", "--json"] + (dryRun ? ["--dry-run"] : []), environment: environment)
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

    func testABadIntervalIsAConfigurationError() throws {
        let path = TestPaths.temporaryDirectory(prefix: "config") + "/config.toml"
        try "[prune]\nreverify_after = \"soon\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        let result = try TestProcess.tool("dbprune", ["--repo", repository, "--yes"], environment: ["DBRECOVERY_CONFIG": path])
        XCTAssertEqual(result.status, ExitStatus.configuration.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("reverify_after"), result.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: recordPath))
    }
}
