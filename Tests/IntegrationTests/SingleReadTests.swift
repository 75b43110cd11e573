@testable import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// Issue 21 item 2: a restore reads every stored byte of its backup once. The candidate is chosen
/// from its manifest and a HEAD/stat of its files; the sha256 is checked on the one streaming pass;
/// a damaged candidate found that way is read at most once before the next one is read once.
/// Counted independently of the tool on S3 (GET bytes through the proxy), and by the tool's own
/// read counter (`bytes_read` in `--json`) on a local repository.
final class SingleReadTests: IntegrationTestCase {
    override func setUpWithError() throws {
        // About 6 MB after gzip: two ranged GETs at the tests' 5 MiB part size.
        try useDatabase(prefix: "readonce", seed: """
            CREATE TABLE blobs (id int PRIMARY KEY, data bytea);
            INSERT INTO blobs SELECT g, decode(string_agg(md5(g::text || ':' || i::text), ''), 'hex')
            FROM generate_series(1, 1500) g, generate_series(1, 250) i GROUP BY g;
            """)
    }

    /// - Returns: the dump's stored size, and what a full restore reads: the dump and its table of
    ///   contents (which tells where each table's rows start, for loading them at once).
    private func backup(_ repository: String, environment: [String: String] = [:]) throws -> (id: String, stored: Int, read: Int) {
        sleep(1)   // ids sort by the second they were taken
        let result = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository, "--json"],
                                          cluster: cluster, environment: environment)
        XCTAssertEqual(result.status, 0, result.standardError)
        let summary = try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
        let files = summary?["files"] as? [[String: Any]] ?? []
        let dump = files.first { $0["name"] as? String == "dump.sql.gz" }
        let toc = files.first { $0["name"] as? String == "toc.json.gz" }
        let stored = try XCTUnwrap(dump?["stored_bytes"] as? Int)
        return (try XCTUnwrap(summary?["id"] as? String), stored, stored + (try XCTUnwrap(toc?["stored_bytes"] as? Int)))
    }

    private func restore(_ arguments: [String], repository: String, environment: [String: String] = [:]) throws -> [String: Any] {
        let target = "readonce_\(UInt32.random(in: 0...UInt32.max))"
        let result = try TestProcess.tool("dbrestore", arguments + ["--from-database", database, "--repo", repository,
                                                                    "--database-url", cluster.url(database: target), "--json"],
                                          cluster: cluster, environment: environment)
        XCTAssertEqual(result.status, 0, result.standardError)
        if !arguments.contains("--drill") { XCTAssertEqual(try cluster.rowCounts(database: target)["public.blobs"], 1500) }
        return try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any] ?? [:]
    }

    private func proxyStats(_ path: String) throws -> [String: [String: Int]] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: [String: Int]] ?? [:]
    }

    /// Flips one byte in the middle: same size, so only the sha256 (on the stream) can tell.
    private func damage(_ data: Data) -> Data {
        var damaged = data
        damaged[damaged.count / 2] ^= 0x20
        return damaged
    }

    func testRestoreAndEmergencyFromS3GetEachStoredByteOnce() throws {
        try useBucket()
        let bucket: String = self.bucket
        let repository = "s3://\(bucket)/app"
        let good = try backup(repository, environment: s3.environment())
        let newest = try backup(repository, environment: s3.environment())
        XCTAssertGreaterThan(good.stored, 5 * 1024 * 1024, "more than one ranged GET")

        // A plain restore of the newest backup: its dump GETs exactly its stored size.
        let statsFile = TestPaths.temporaryDirectory(prefix: "proxy") + "/stats.json"
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--stats", statsFile])
        let report = try restore([newest.id, "--yes"], repository: repository, environment: s3.environment(endpoint: proxy.endpoint))
        let dumpKey = { (id: String) in "\(bucket)/app/backups/\(id)/dump.sql.gz" }
        var stats = try proxyStats(statsFile)
        XCTAssertEqual(stats[dumpKey(newest.id)]?["get_bytes"], newest.stored, "\(stats)")
        XCTAssertEqual(stats[dumpKey(good.id)]?["get_bytes"] ?? 0, 0, "the other backup is not read: \(stats)")
        XCTAssertEqual(report["bytes_read"] as? Int, newest.read, "the tool's own count agrees (the dump and its table of contents)")
        proxy.stop()

        // The newest copy is damaged in place (same size): --emergency streams it once, finds the
        // sha256 wrong, drops the scratch database and streams the older one once.
        let store = try bucketStore(prefix: "app")
        try store.write("backups/\(newest.id)/dump.sql.gz", contents: damage(try store.read("backups/\(newest.id)/dump.sql.gz")))
        let emergencyStats = TestPaths.temporaryDirectory(prefix: "proxy") + "/stats.json"
        let second = try FaultProxy(upstreamPort: s3.port, arguments: ["--stats", emergencyStats])
        defer { second.stop() }
        let emergency = try restore(["--emergency"], repository: repository, environment: s3.environment(endpoint: second.endpoint))
        stats = try proxyStats(emergencyStats)
        XCTAssertLessThanOrEqual(stats[dumpKey(newest.id)]?["get_bytes"] ?? 0, newest.stored, "the damaged one at most once: \(stats)")
        XCTAssertEqual(stats[dumpKey(good.id)]?["get_bytes"], good.stored, "the good one exactly once: \(stats)")
        let plan = emergency["plan"] as? [String: Any]
        XCTAssertEqual(plan?["backup_id"] as? String, good.id)
        let skipped = (plan?["skipped"] as? [[String: String]] ?? []).first { $0["id"] == newest.id }
        XCTAssertTrue(skipped?["reason"]?.contains("sha256") ?? false, "\(plan ?? [:])")
    }

    func testLocalRestoreCountsTheBytesItReads() throws {
        let repository = TestPaths.repositoryPath()
        let good = try backup(repository)
        let newest = try backup(repository)
        let normal = try restore([newest.id, "--yes"], repository: repository)
        XCTAssertEqual(normal["bytes_read"] as? Int, newest.read)
        XCTAssertEqual((normal["plan"] as? [String: Any])?["backup_stored_bytes"] as? Int, newest.read)

        let drill = try restore(["--drill"], repository: repository)
        XCTAssertEqual(drill["bytes_read"] as? Int, newest.read, "a drill reads its backup once, no separate checksum pass")

        let path = "\(repository)/backups/\(newest.id)/dump.sql.gz"
        try damage(try Data(contentsOf: URL(fileURLWithPath: path))).write(to: URL(fileURLWithPath: path))
        let emergency = try restore(["--emergency"], repository: repository)
        XCTAssertEqual((emergency["plan"] as? [String: Any])?["backup_id"] as? String, good.id)
        let read = emergency["bytes_read"] as? Int ?? 0
        XCTAssertGreaterThanOrEqual(read, good.read)
        XCTAssertLessThanOrEqual(read, good.read + newest.read, "each candidate read at most once")
        XCTAssertEqual(try cluster.connect().query("SELECT count(*) FROM pg_database WHERE datname LIKE 'readonce_%restore%'").scalar, "0",
                       "the damaged candidate's scratch database was dropped")
    }
}
