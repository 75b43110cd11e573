import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// Issue 21 (attack on the single-read restore): a restore applies its dump as it streams, and the
/// sha256 is known only at the end. A same-size replacement of the newest dump must neither act
/// outside the scratch database (finding 1) nor, when it fails as SQL, pass for a replay failure
/// instead of a damaged copy (finding 4).
final class UnverifiedStreamTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useDatabase(prefix: "unverified", seed: "CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 200) g")
        useLocalRepository()
    }

    private func backup(into repositories: [String]) throws -> String {
        sleep(1)   // ids sort by the second they were taken
        let result = try tool("dbbackup", ["--database-url", cluster.url(database: database)] + repositories.flatMap { ["--repo", $0] })
        XCTAssertEqual(result.status, 0, result.standardError)
        return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Replaces a stored dump with a valid gzip of `sql` of exactly the same size (padded in the
    /// gzip header's FEXTRA field): only the sha256 can tell, and only at the end of the stream.
    private func replaceDump(_ id: String, in repository: String, with sql: String) throws {
        let url = URL(fileURLWithPath: "\(repository)/backups/\(id)/dump.sql.gz")
        let size = try Data(contentsOf: url).count
        let plain = TestPaths.temporaryDirectory(prefix: "replacement") + "/dump.sql"
        try Data(sql.utf8).write(to: URL(fileURLWithPath: plain))
        let compressed = try TestProcess.run("/usr/bin/gzip", ["-6", "-n", plain])
        XCTAssertEqual(compressed.status, 0, compressed.standardError)
        let gzip = [UInt8](try Data(contentsOf: URL(fileURLWithPath: plain + ".gz")))
        let padding = size - gzip.count - 2
        XCTAssertGreaterThanOrEqual(padding, 0, "the replacement fits")
        XCTAssertEqual(gzip[3] & 0x04, 0, "no FEXTRA yet")
        var replaced = Array(gzip[0..<3]) + [gzip[3] | 0x04] + Array(gzip[4..<10])
        replaced += [UInt8(padding & 0xFF), UInt8(padding >> 8)] + [UInt8](repeating: 0, count: padding) + gzip[10...]
        XCTAssertEqual(replaced.count, size)
        try Data(replaced).write(to: url)
    }

    private func roleExists(_ role: String) throws -> Bool {
        try cluster.connect().query("SELECT 1 FROM pg_roles WHERE rolname = $1", [role]).rows.count == 1
    }

    /// Finding 1: the attacker's dump (`DROP DATABASE other`, `CREATE ROLE … SUPERUSER`) replayed by `latest --yes`, `--drill` and `--emergency`: nothing of it runs; the
    /// copy is reported damaged (exit 23) and the fallbacks restore the older backup.
    func testStatementsOutsideTheScratchDatabaseNeverRunBeforeTheDigestIsKnown() throws {
        let good = try backup(into: [repository])
        let newest = try backup(into: [repository])
        let victim = try cluster.createDatabase(prefix: "victim")
        let role = "evil_\(UInt32.random(in: 0...UInt32.max))"
        try replaceDump(newest, in: repository, with: """
            SELECT pg_catalog.set_config('search_path', '', false);
            CREATE TABLE public.t (x integer);
            DROP DATABASE \(victim);
            CREATE ROLE \(role) SUPERUSER LOGIN PASSWORD 'Sup3rS3cret';

            """)
        let target: [String] = ["--database-url", cluster.url(database: database), "--repo", repository!]

        let normal = try tool("dbrestore", ["latest", "--yes"] + target)
        XCTAssertEqual(normal.status, 23, normal.standardError)
        XCTAssertFalse(normal.standardError.contains("Sup3rS3cret"))
        XCTAssertTrue(try cluster.databaseExists(victim), "DROP DATABASE of another database never ran")
        XCTAssertFalse(try roleExists(role), "CREATE ROLE never ran")
        XCTAssertEqual(try cluster.rowCounts(database: database)["public.t"], 200, "the target is untouched")

        let drill = try tool("dbrestore", ["--drill"] + target)
        XCTAssertEqual(drill.status, 0, drill.standardError)
        let emergency = try tool("dbrestore", ["--emergency", "--json"] + target)
        XCTAssertEqual(emergency.status, 0, emergency.standardError)
        let report = try JSONSerialization.jsonObject(with: Data(emergency.standardOutput.utf8)) as? [String: Any]
        XCTAssertEqual((report?["plan"] as? [String: Any])?["backup_id"] as? String, good)
        XCTAssertEqual(try cluster.rowCounts(database: database)["public.t"], 200)
        XCTAssertTrue(try cluster.databaseExists(victim))
        XCTAssertFalse(try roleExists(role))
    }

    /// Finding 4: a same-size replacement that fails as SQL part-way (before the digest is known)
    /// is a damaged copy, as a digest mismatch found first would be: a normal restore goes on with
    /// the second repository's copy, and `--emergency` skips the candidate naming the sha256.
    func testDamageThatFailsAsSQLIsADamagedCopy() throws {
        let second = TestPaths.repositoryPath(prefix: "repo2")
        let good = try backup(into: [repository])
        let newest = try backup(into: [repository, second])
        let failing = """
            CREATE TABLE public.t (x integer);
            ALTER TABLE public.no_such_table OWNER TO no_such_role;

            """
        try replaceDump(newest, in: repository, with: failing)

        let restored = try tool("dbrestore", [newest, "--yes", "--json", "--database-url", cluster.url(database: database),
                                              "--repo", repository, "--repo", second])
        XCTAssertEqual(restored.status, 0, restored.standardError)
        let plan = (try JSONSerialization.jsonObject(with: Data(restored.standardOutput.utf8)) as? [String: Any])?["plan"] as? [String: Any]
        XCTAssertEqual(plan?["backup_id"] as? String, newest)
        XCTAssertEqual(plan?["repository"] as? String, second, "the second repository's copy was used")
        XCTAssertEqual(try cluster.rowCounts(database: database)["public.t"], 200)

        let emergency = try tool("dbrestore", ["--emergency", "--json", "--database-url", cluster.url(database: database), "--repo", repository])
        XCTAssertEqual(emergency.status, 0, emergency.standardError)
        let report = (try JSONSerialization.jsonObject(with: Data(emergency.standardOutput.utf8)) as? [String: Any])?["plan"] as? [String: Any]
        XCTAssertEqual(report?["backup_id"] as? String, good)
        let skipped = (report?["skipped"] as? [[String: String]] ?? []).first { $0["id"]?.hasPrefix(newest) ?? false }
        XCTAssertTrue(skipped?["reason"]?.contains("sha256") ?? false, "damaged, not a replay failure: \(report ?? [:])")
    }
}
