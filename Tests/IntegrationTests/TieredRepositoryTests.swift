@testable import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// One backup run writing to a local and an S3 repository at once.
final class TieredRepositoryTests: IntegrationTestCase {
    var local: String!

    override func setUpWithError() throws {
        try useBucket()
        local = TestPaths.temporaryDirectory(prefix: "tier") + "/local"
        try useDatabase(prefix: "tier", seed: """
            CREATE TABLE blobs (id int PRIMARY KEY, data bytea);
            INSERT INTO blobs SELECT g, decode(string_agg(md5(g::text || ':' || i::text), ''), 'hex')
            FROM generate_series(1, 2000) g, generate_series(1, 400) i GROUP BY g;
            """)
    }

    private var offsite: String { "s3://\(bucket!)/offsite" }
    private var store: S3Store { get throws { try bucketStore(prefix: "offsite") } }

    private func tool(_ name: String, _ arguments: [String], endpoint: String) throws -> TestProcess.Result {
        try TestProcess.tool(name, arguments, cluster: cluster, environment: s3.environment(endpoint: endpoint))
    }

    func testOneDumpIsWrittenToBothRepositoriesIdentically() throws {
        let process = try TestProcess.start("dbbackup", ["--database-url", cluster.url(database: database), "--repo", local, "--repo", offsite],
                                            cluster: cluster, environment: s3.environment())
        let output = OutputCollector(descriptor: process.standardError)
        var mostDumps = 0
        while kill(process.pid, 0) == 0 && !waitpidNoHang(process.pid) {
            // The data dump; the schema-only dump beside it (the schema fingerprint) is not one.
            let dumps = childPIDs(of: process.pid).filter {
                let command = (try? String(contentsOfFile: "/proc/\($0)/cmdline", encoding: .utf8)) ?? ""
                return command.contains("pg_dump") && !command.contains("--schema-only")
            }.count
            mostDumps = max(mostDumps, dumps)
            usleep(5_000)
        }
        XCTAssertEqual(process.waitForExit().exitCode, 0, output.finish())
        XCTAssertEqual(mostDumps, 1, "pg_dump must run exactly once for both repositories")

        let id = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: local + "/backups").first)
        let localBytes = try Data(contentsOf: URL(fileURLWithPath: "\(local!)/backups/\(id)/dump.sql.gz"))
        XCTAssertEqual(try store.read("backups/\(id)/dump.sql.gz"), localBytes, "both copies byte-identical")
        let localManifest = try BackupManifest.decode(try Data(contentsOf: URL(fileURLWithPath: "\(local!)/backups/\(id)/manifest.json")), source: id)
        XCTAssertEqual(localManifest.otherRepositories, [offsite])
        XCTAssertEqual(try BackupManifest.decode(try store.read("backups/\(id)/manifest.json"), source: id).otherRepositories, [local])
        XCTAssertEqual(try tool("dbverify", ["--files", id, "--repo", local]).status, 0)
        XCTAssertEqual(try tool("dbverify", ["--files", id, "--repo", offsite]).status, 0)

        // Each repository pruned by its own tier, one plan each.
        let prune = try tool("dbprune", ["--repo", local, "--repo", offsite, "--dry-run"])
        XCTAssertEqual(prune.status, 0, prune.standardError)
        XCTAssertTrue(prune.standardOutput.contains("== \(local!) (local tier)") && prune.standardOutput.contains("(s3 tier)"), prune.standardOutput)
    }

    func testS3FailingMidRunLeavesACompleteLocalCopyAndThePartialCode() throws {
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--fail-parts-after", "1"])
        defer { proxy.stop() }
        let result = try tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", local, "--repo", offsite], endpoint: proxy.endpoint)
        XCTAssertEqual(result.status, ExitStatus.partial.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("FAILED in \(offsite)"), result.standardError)
        let id = result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(BackupID.isValid(id), "the id is still printed: '\(id)'")
        XCTAssertEqual(try tool("dbverify", ["--files", id, "--repo", local]).status, 0)
        XCTAssertFalse(try store.list(prefix: "backups/").contains { $0.key.hasSuffix("manifest.json") }, "no S3 manifest")
        XCTAssertEqual(try store.openMultipartUploads(), [])

        let unreachable = try tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", local, "--repo", offsite],
                                   endpoint: "http://127.0.0.1:1")
        XCTAssertEqual(unreachable.status, ExitStatus.partial.rawValue, unreachable.standardError)
    }

    func testEmergencyFallsBackToS3AndReportsArchivedCopies() throws {
        let first = try tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", local, "--repo", offsite])
        XCTAssertEqual(first.status, 0, first.standardError)
        let older = first.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        sleep(1)
        let second = try tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", local, "--repo", offsite])
        XCTAssertEqual(second.status, 0, second.standardError)
        let newer = second.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)

        // The local copies are lost; the newest S3 copy is in GLACIER.
        try FileManager.default.removeItem(atPath: local + "/backups")
        try store.changeStorageClass("backups/\(newer)/dump.sql.gz", to: "GLACIER")
        try cluster.connect(database: database).execute(script: "DELETE FROM blobs")

        let result = try tool("dbrestore", ["--emergency", "--repo", local, "--repo", offsite, "--database-url", cluster.url(database: database)])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertTrue(result.standardOutput.contains("from backup \(older)") && result.standardOutput.contains("read from \(offsite)"), result.standardOutput)
        XCTAssertTrue(result.standardError.contains("archived: needs a restore request"), result.standardError)
        XCTAssertTrue(result.standardError.contains("restore-object"), result.standardError)
        XCTAssertEqual(try cluster.rowCounts(database: database)["public.blobs"], 2000)
    }
}
