import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// "The same database" is the same server's and the same bytes. One repository (a shared bucket)
/// holds backups of `app` from two servers, and of two databases whose names are canonically
/// equivalent Unicode (NFC and NFD `café`: one String to Swift, two databases to PostgreSQL):
/// `latest`, `--emergency`, `dbverify latest` and `dbprune` take each database's own backups, and
/// a new server restoring the only server's backups after a disaster needs no flag.
final class DatabaseIdentityTests: SharedRepositoryTestCase {
    /// A second cluster of the test's own (stopped at teardown).
    private func secondServer() throws -> PostgresCluster {
        let server = try PostgresCluster()
        addTeardownBlock { server.stop() }
        return server
    }

    /// A database `app_<random>` with a table `t (id, who)` on two servers: `rowsA` rows 'A' on this
    /// class's cluster, `rowsB` rows 'B' on a second one; a local repository for both.
    private func appOnTwoServers(repository prefix: String, rowsA: Int, rowsB: Int) throws -> (serverB: PostgresCluster, name: String) {
        try useCluster()
        useLocalRepository(prefix: prefix)
        let serverB = try secondServer()
        let name = "app_\(UInt32.random(in: 0...UInt32.max))"
        for (server, rows, who) in [(cluster!, rowsA, "A"), (serverB, rowsB, "B")] {
            try server.connect().execute(script: "CREATE DATABASE \(name)")
            try server.connect(database: name).execute(script: "CREATE TABLE t (id int, who text); INSERT INTO t SELECT g, '\(who)' FROM generate_series(1, \(rows)) g")
        }
        return (serverB, name)
    }

    /// A backup of `name` on `server` (not this class's cluster) into the repository; its id.
    private func backup(of name: String, onOther server: PostgresCluster) throws -> String {
        let result = try tool("dbbackup", ["--database-url", server.url(database: name), "--repo", repository!, "--compression-level", "1"],
                              environment: server.environment)
        XCTAssertEqual(result.status, 0, result.standardError)
        return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func keepLastOne() throws -> String {
        let policy = TestPaths.temporaryDirectory(prefix: "policy") + "/keep1.toml"
        try "[local]\nkeep_last = 1\nsnapshots = false\n".write(toFile: policy, atomically: true, encoding: .utf8)
        return policy
    }

    /// `dbprune --dry-run --json`: the ids it would delete and its groups.
    private func prunePlan(policy: String) throws -> (deleted: [String], groups: [[String: Any]]) {
        let prune = try tool("dbprune", ["--repo", repository!, "--policy", policy, "--dry-run", "--json"])
        XCTAssertEqual(prune.status, 0, prune.standardError)
        let plan = json(prune.standardOutput)
        let decisions = plan["decisions"] as? [[String: Any]] ?? []
        return (decisions.filter { $0["action"] as? String == "delete" }.compactMap { $0["id"] as? String },
                plan["groups"] as? [[String: Any]] ?? [])
    }

    /// `app` on server A (3 rows) and on server B (7 rows, backed up last): against A, `latest`,
    /// `dbverify latest` and `--emergency` take A's backup; `dbprune` keeps each server's newest;
    /// without a target server (`dbrestore contents latest`, `dbverify --files latest`) the two are
    /// not merged: refused (exit 22) naming both servers, or each checked in its own row, as on a third
    /// server (the id chooses); a new server with no backups of its own restores the one server's
    /// backups of a database without a flag.
    func testSameNamedDatabasesOfTwoServersAreEachTheirOwn() throws {
        let (serverB, name) = try appOnTwoServers(repository: "two-servers", rowsA: 3, rowsB: 7)
        let systemA = try XCTUnwrap(try cluster.scalar("SELECT system_identifier::text FROM pg_control_system()", database: "postgres"))
        let systemB = try XCTUnwrap(try serverB.scalar("SELECT system_identifier::text FROM pg_control_system()", database: "postgres"))
        XCTAssertNotEqual(systemA, systemB)

        let idA = try backup(of: name)
        let idB = try backup(of: name, onOther: serverB)
        XCTAssertGreaterThan(idB, idA, "B's backup is the repository's newest of the name")
        let urlA = cluster.url(database: name)

        try assertLatestAndVerifyTake(idA, url: urlA)
        let table = try tool("dbrestore", ["latest", "--table", "public.t", "--into-schema", "rescue", "--dry-run", "--json",
                                           "--database-url", urlA, "--repo", repository!])
        XCTAssertEqual(table.status, 0, table.standardError)
        XCTAssertEqual(json(table.standardOutput)["backup_id"] as? String, idA, table.standardOutput)

        // A third server, neither's: nothing says whose `app` it is: refused naming both; the id chooses.
        let serverC = try secondServer()
        let systemC = try XCTUnwrap(try serverC.scalar("SELECT system_identifier::text FROM pg_control_system()", database: "postgres"))
        // `latest` says so too (it said "no logical backup of database app" and pointed at --pitr).
        for mode in ["--emergency", "latest"] {
            let neither = try tool("dbrestore", [mode, "--dry-run", "--database-url", serverC.url(database: name), "--repo", repository!],
                                   environment: serverC.environment)
            XCTAssertEqual(neither.status, ExitStatus.backupNotFound.rawValue, neither.standardError)
            for words in ["from 2 servers, none of them the target server (system \(systemC))", "system \(systemA) (newest backup \(idA))",
                          "system \(systemB) (newest backup \(idB))", "by its id"] {
                XCTAssertTrue(neither.standardError.contains(words), "\(mode): \(words): \(neither.standardError)")
            }
        }
        let chosen = try tool("dbrestore", [idA, "--dry-run", "--json", "--database-url", serverC.url(database: name), "--repo", repository!],
                              environment: serverC.environment)
        XCTAssertEqual(chosen.status, 0, chosen.standardError)
        XCTAssertEqual(json(chosen.standardOutput)["backup_id"] as? String, idA, chosen.standardOutput)

        // A's data changed since its backup: --emergency brings back A's 3 rows, never B's 7.
        try cluster.connect(database: name).execute(script: "DELETE FROM t WHERE id = 1")
        let emergency = try tool("dbrestore", ["--emergency", "--database-url", urlA, "--repo", repository!])
        XCTAssertEqual(emergency.status, 0, emergency.standardError)
        XCTAssertTrue(emergency.standardOutput.contains("restored \(name) from backup \(idA)"), emergency.standardOutput)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) || ' ' || string_agg(DISTINCT who, ',') FROM t", database: name), "3 A")

        // Each server's database is its own retention group: keeping one each deletes nothing.
        let (deleted, groups) = try prunePlan(policy: try keepLastOne())
        XCTAssertEqual(deleted, [], "\(groups)")
        let named = groups.filter { $0["database"] as? String == name }
        XCTAssertEqual(Set(named.compactMap { $0["group"] as? String }),
                       ["database \(name) of server \(systemA)", "database \(name) of server \(systemB)"], "\(groups)")
        XCTAssertEqual(Set(named.compactMap { $0["system_identifier"] as? String }), [systemA, systemB], "\(groups)")

        // No target server: the name alone does not say whose; refused naming both, or both checked.
        let contents = try tool("dbrestore", ["contents", "latest", "--from-database", name, "--repo", repository!])
        XCTAssertEqual(contents.status, ExitStatus.backupNotFound.rawValue, contents.standardError)
        for words in ["from 2 servers", "system \(systemA) (newest backup \(idA))", "system \(systemB) (newest backup \(idB))", "by its id"] {
            XCTAssertTrue(contents.standardError.contains(words), "\(words): \(contents.standardError)")
        }
        let byID = try tool("dbrestore", ["contents", idA, "--repo", repository!])
        XCTAssertEqual(byID.status, 0, byID.standardError)
        let files = try tool("dbverify", ["--files", "latest", "--json", "--repo", repository!])
        XCTAssertEqual(files.status, 0, files.standardError)
        XCTAssertTrue(files.standardOutput.contains(idA) && files.standardOutput.contains(idB), files.standardOutput)

        // The 3 a.m. case: server B has no backup of A's other database; the only server's backups restore there, no flag.
        let solo = try cluster.createDatabase(prefix: "solo", seed: "CREATE TABLE s (id int); INSERT INTO s VALUES (1), (2)")
        let soloID = try backup(of: solo)
        let rebuilt = try tool("dbrestore", ["--emergency", "--database-url", serverB.url(database: solo), "--repo", repository!],
                               environment: serverB.environment)
        XCTAssertEqual(rebuilt.status, 0, rebuilt.standardError)
        XCTAssertTrue(rebuilt.standardOutput.contains("restored \(solo) from backup \(soloID)"), rebuilt.standardOutput)
        XCTAssertEqual(try serverB.scalar("SELECT count(*) FROM s", database: solo), "2")
    }

    /// After a pg_upgrade (a new server, so a new system identifier) the database's older backups are
    /// the old server's. When every backup of the new server fails, `--emergency` does not take the old
    /// server's on its own (a same-named database elsewhere may be another database), but its error
    /// names them and the restore by id that takes one.
    func testEmergencyWhoseServerBackupsAllFailNamesTheOldServersBackups() throws {
        let (upgraded, name) = try appOnTwoServers(repository: "upgraded", rowsA: 4, rowsB: 9)
        let before = try backup(of: name)
        let after = try backup(of: name, onOther: upgraded)
        let dump = "\(repository!)/backups/\(after)/dump.sql.gz"
        var data = try Data(contentsOf: URL(fileURLWithPath: dump))
        data[data.count / 2] ^= 0x20
        try data.write(to: URL(fileURLWithPath: dump))
        let system = try XCTUnwrap(try cluster.scalar("SELECT system_identifier::text FROM pg_control_system()", database: "postgres"))

        let url = upgraded.url(database: name)
        let emergency = try tool("dbrestore", ["--emergency", "--database-url", url, "--repo", repository!], environment: upgraded.environment)
        XCTAssertEqual(emergency.status, ExitStatus.backupNotFound.rawValue, emergency.standardError)
        for words in ["from another server were passed over (system \(system), newest \(before)", "dbrestore \(before) --yes"] {
            XCTAssertTrue(emergency.standardError.contains(words), "\(words): \(emergency.standardError)")
        }
        XCTAssertEqual(try upgraded.scalar("SELECT count(*) FROM t", database: name), "9", "the failed emergency touched the database")
        let byID = try tool("dbrestore", [before, "--yes", "--database-url", url, "--repo", repository!], environment: upgraded.environment)
        XCTAssertEqual(byID.status, 0, byID.standardError)
        XCTAssertEqual(try upgraded.scalar("SELECT count(*) FROM t", database: name), "4")
    }

    /// NFC `café…` (3 rows) and NFD `café…` (5 rows, backed up last) on one server: the NFC database's
    /// `latest`, `dbverify latest` and `--emergency` take its own backup; `dbprune` counts them apart.
    func testCanonicallyEquivalentNamesAreTwoDatabases() throws {
        try useCluster()
        useLocalRepository(prefix: "nfc-nfd")
        let suffix = "_\(UInt32.random(in: 0...UInt32.max))"
        let nfc = String(decoding: [0x63, 0x61, 0x66, 0xC3, 0xA9] as [UInt8], as: UTF8.self) + suffix
        let nfd = String(decoding: [0x63, 0x61, 0x66, 0x65, 0xCC, 0x81] as [UInt8], as: UTF8.self) + suffix
        XCTAssertEqual(nfc, nfd, "Swift compares them as one String")
        XCTAssertFalse(nfc.utf8.elementsEqual(nfd.utf8))
        for (database, rows) in [(nfc, 3), (nfd, 5)] {
            try cluster.connect().execute(script: "CREATE DATABASE \"\(database)\"")
            try cluster.connect(database: encoded(database)).execute(
                script: "CREATE TABLE t (id int); INSERT INTO t SELECT g FROM generate_series(1, \(rows)) g")
        }
        XCTAssertEqual(try cluster.connect().query("SELECT count(*) FROM pg_database WHERE datname LIKE 'caf%\(suffix)'").scalar, "2")
        let nfcID = try backup(of: encoded(nfc))
        let nfdID = try backup(of: encoded(nfd))
        XCTAssertGreaterThan(nfdID, nfcID)
        let urlNFC = cluster.url(database: encoded(nfc))

        try assertLatestAndVerifyTake(nfcID, url: urlNFC)

        try cluster.connect(database: encoded(nfc)).execute(script: "DELETE FROM t WHERE id = 1")
        let emergency = try tool("dbrestore", ["--emergency", "--database-url", urlNFC, "--repo", repository!])
        XCTAssertEqual(emergency.status, 0, emergency.standardError)
        XCTAssertTrue(emergency.standardOutput.contains("from backup \(nfcID)"), emergency.standardOutput)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM t", database: encoded(nfc)), "3")
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM t", database: encoded(nfd)), "5")

        let (deleted, groups) = try prunePlan(policy: try keepLastOne())
        XCTAssertEqual(deleted, [], "\(groups)")
        let labels = groups.compactMap { $0["group"] as? String }.filter { $0.hasSuffix(")") && $0.contains(suffix) }
        XCTAssertEqual(Set(labels), ["database \(nfc) (UTF-8 636166c3a9\(hex(suffix)))", "database \(nfd) (UTF-8 63616665cc81\(hex(suffix)))"], "\(groups)")
    }

    /// A database name as it goes into a URL's path: its bytes percent-encoded.
    private func encoded(_ name: String) -> String {
        name.utf8.map { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x61 && byte <= 0x7A) || byte == 0x5F ? String(UnicodeScalar(byte)) : String(format: "%%%02X", byte)
        }.joined()
    }

    private func hex(_ text: String) -> String {
        text.utf8.map { String(format: "%02x", $0) }.joined()
    }

    /// `dbrestore latest --dry-run` and `dbverify latest` against `url` both take backup `id`.
    private func assertLatestAndVerifyTake(_ id: String, url: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let latest = try tool("dbrestore", ["latest", "--dry-run", "--json", "--database-url", url, "--repo", repository!])
        XCTAssertEqual(latest.status, 0, latest.standardError, file: file, line: line)
        XCTAssertEqual(json(latest.standardOutput)["backup_id"] as? String, id, latest.standardOutput, file: file, line: line)
        let verify = try tool("dbverify", ["latest", "--database-url", url, "--repo", repository!])
        XCTAssertEqual(verify.status, 0, verify.standardError, file: file, line: line)
        XCTAssertTrue(verify.standardError.contains("matches backup \(id)"), verify.standardError, file: file, line: line)
    }
}
