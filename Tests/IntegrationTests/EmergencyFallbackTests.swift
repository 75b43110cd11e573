import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// Issue 16 E1: `--emergency` and `--drill` skip a candidate that fails in any way of its own and
/// take the next older one; `dbverify --files all` reports a bad manifest and goes on.
final class EmergencyFallbackTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useDatabase(prefix: "fallback", seed: "CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 200) g")
        useLocalRepository()
    }

    /// A backup at least a second after the one before it: ids sort by the second they were taken.
    private func nextBackup() throws -> String {
        sleep(1)
        return try backup()
    }

    /// A repository whose disk is full (a WAL archive filled it at night): the reader lock cannot be
    /// written, and `--emergency` reads the backup without one (saying so) instead of exit 20. As root
    /// only (a small tmpfs is mounted for it).
    func testEmergencyRestoresFromARepositoryWhoseDiskIsFull() throws {
        guard getuid() == 0 else { throw XCTSkip("mounts a small tmpfs: needs root") }
        let mountPoint = TestPaths.temporaryDirectory(prefix: "full-disk")
        let mounted = try TestProcess.run("/bin/mount", ["-t", "tmpfs", "-o", "size=4m", "tmpfs", mountPoint])
        guard mounted.status == 0 else { throw XCTSkip("cannot mount a tmpfs here: \(mounted.standardError)") }
        defer { _ = try? TestProcess.run("/bin/umount", [mountPoint]) }
        repository = mountPoint + "/repo"
        let id = try backup()
        try cluster.connect(database: database).execute(script: "DELETE FROM t WHERE x > 100")
        // Fill what is left, as a WAL archive would.
        _ = try TestProcess.run("/bin/dd", ["if=/dev/zero", "of=\(mountPoint)/filler", "bs=64k"])
        let probe = FileManager.default.createFile(atPath: mountPoint + "/repo/probe", contents: Data(repeating: 1, count: 8192))
        XCTAssertFalse(probe, "the disk is full")

        let run = try tool("dbrestore", common + ["--emergency", "--json"])
        XCTAssertEqual(run.status, 0, run.standardError)
        XCTAssertTrue(run.standardError.contains("backup \(id) is read without a reader lock") && run.standardError.contains("no space left on device"),
                      run.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM t", database: database), "200")
    }

    /// The reproductions of E1, newest first: a replay error (a role dropped since), a row count that
    /// does not match after the load, `files: []`, a file named `../../etc/passwd`, and a dump the
    /// process cannot open. Each stopped `--emergency` before; now each is skipped with its reason,
    /// the oldest (good) backup is restored, and the incident record names every candidate.
    func testEmergencyAndDrillSkipEveryKindOfBadCandidate() throws {
        let good = try nextBackup()
        let unreadable = try nextBackup()
        let escaping = try nextBackup()
        let noFiles = try nextBackup()
        let mismatch = try nextBackup()
        let role = "gone_\(UInt32.random(in: 0...UInt32.max))"
        let connection = try cluster.connect(database: database)
        try connection.execute(script: "CREATE ROLE \(role); CREATE TABLE owned_by_gone (x int); ALTER TABLE owned_by_gone OWNER TO \(role)")
        let replayError = try nextBackup()
        try connection.execute(script: "DROP OWNED BY \(role); DROP ROLE \(role); DELETE FROM t WHERE x > 100")

        // A dump the process cannot open (root reads a chmod 000 file, so make it a directory).
        let dump = "\(repository!)/backups/\(unreadable)/dump.sql.gz"
        try FileManager.default.removeItem(atPath: dump)
        try FileManager.default.createDirectory(atPath: dump, withIntermediateDirectories: false)
        try editManifest(escaping) { object in
            var files = object["files"] as? [[String: Any]] ?? []
            files[0]["name"] = "../../../../../../etc/passwd"
            object["files"] = files
        }
        try editManifest(noFiles) { $0["files"] = [] }
        try editManifest(mismatch) { object in
            var tables = object["tables"] as? [[String: Any]] ?? []
            tables[0]["rows"] = 201
            object["tables"] = tables
        }

        let verify = try tool("dbverify", ["--files", "all", "--repo", repository!])
        XCTAssertEqual(verify.status, ExitStatus.backupCorrupt.rawValue, verify.standardError)
        for id in [good, unreadable, escaping, noFiles, mismatch, replayError] {
            XCTAssertTrue(verify.standardOutput.contains(id), "dbverify --files all reports \(id) and goes on: \(verify.standardOutput)")
        }
        XCTAssertTrue(verify.standardOutput.contains("outside its backup folder"), verify.standardOutput)

        let drill = try tool("dbrestore", common + ["--drill"])
        XCTAssertEqual(drill.status, 0, drill.standardError)
        XCTAssertTrue(drill.standardOutput.contains("drill passed: backup \(good)"), drill.standardOutput)

        let incident = TestPaths.temporaryDirectory(prefix: "incident") + "/incident.json"
        let emergency = try tool("dbrestore", common + ["--emergency", "--incident-file", incident])
        XCTAssertEqual(emergency.status, 0, emergency.standardError)
        XCTAssertTrue(emergency.standardOutput.contains("from backup \(good)"), emergency.standardOutput)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM t", database: database), "200")

        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: incident))) as? [String: Any]
        let plan = record?["plan"] as? [String: Any]
        XCTAssertEqual(plan?["backup_id"] as? String, good)
        let skipped = Dictionary((plan?["skipped"] as? [[String: String]] ?? []).map { ($0["id"] ?? "", $0["reason"] ?? "") },
                                 uniquingKeysWith: { first, _ in first })
        let expected = [replayError: "role \"\(role)\" does not exist", mismatch: "expected 201, found 200", noFiles: "lists no files",
                        escaping: "outside its backup folder", unreadable: "cannot be read"]
        for (id, reason) in expected {
            XCTAssertTrue(skipped[id]?.contains(reason) ?? false, "\(id) skipped because \(reason): \(skipped[id] ?? "not listed")")
        }
        XCTAssertEqual(skipped.count, 5, "\(skipped)")
    }

    /// No candidate left to try: the run fails, and the incident record still names every backup
    /// passed over and why.
    func testEmergencyWithNoUsableBackupStillWritesTheIncidentRecord() throws {
        let ids = [try nextBackup(), try nextBackup()]
        for id in ids {
            let path = "\(repository!)/backups/\(id)/dump.sql.gz"
            var data = try Data(contentsOf: URL(fileURLWithPath: path))
            data[data.count / 2] ^= 0x20
            try data.write(to: URL(fileURLWithPath: path))
        }
        let incident = TestPaths.temporaryDirectory(prefix: "incident") + "/incident.json"
        let emergency = try tool("dbrestore", common + ["--emergency", "--incident-file", incident])
        XCTAssertEqual(emergency.status, ExitStatus.backupNotFound.rawValue, emergency.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM t", database: database), "200", "the target is untouched")
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: incident))) as? [String: Any]
        XCTAssertTrue((record?["outcome"] as? String)?.hasPrefix("failed: no backup") ?? false, "\(record ?? [:])")
        let steps = (record?["timeline"] as? [[String: Any]] ?? []).map { "\($0["step"] ?? ""): \($0["outcome"] ?? "")" }
        for id in ids {
            XCTAssertTrue(steps.contains { $0.contains("skip backup \(id)") && $0.contains("sha256") }, "\(id) in \(steps)")
        }
    }

    /// A signal during a candidate's restore ends the run (exit 130); it is not that candidate's
    /// failure, so no older backup is tried.
    func testASignalDuringACandidateEndsTheRunInsteadOfTryingTheNext() throws {
        let older = try nextBackup()
        let newer = try nextBackup()
        let incident = TestPaths.temporaryDirectory(prefix: "incident") + "/incident.json"
        let result = try TestProcess.tool("dbrestore", common + ["--emergency", "--incident-file", incident], cluster: cluster,
                                          environment: ["DBRECOVERY_SIGNAL_AT": "restore:after-verify"])
        XCTAssertEqual(result.status, ExitStatus.interrupted.rawValue, result.standardError)
        XCTAssertFalse(result.standardError.contains("skip backup \(newer)"), result.standardError)
        XCTAssertFalse(result.standardError.contains(older), "the older backup is not tried: \(result.standardError)")
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM t", database: database), "200")
        XCTAssertEqual(try cluster.connect().query("SELECT count(*) FROM pg_database WHERE datname LIKE $1", ["\(database!)_%"]).scalar, "0",
                       "the scratch database was dropped")
    }

    /// When the target server itself fails, the run stops instead of trying every candidate.
    func testAnUnreachableServerStopsTheSearch() throws {
        _ = try nextBackup()
        let result = try tool("dbrestore", ["--emergency", "--repo", repository!, "--database-url", "postgresql://postgres@127.0.0.1:1/\(database!)"])
        XCTAssertEqual(result.status, ExitStatus.databaseUnavailable.rawValue, result.standardError)
    }

    /// A server that runs out of a resource (disk, memory, temp_file_limit: SQLSTATE class 53) stops the
    /// search with what to fix: an older, smaller backup would fit and bring back older data where the
    /// newest backup was fine. (Before, this was taken for the candidate's fault and the older one restored.)
    func testServerTroubleStopsTheSearchInsteadOfRestoringAnOlderBackup() throws {
        let older = try nextBackup()
        // Only the newer backup spills to a temporary file when restored: its materialized view's REFRESH sorts 200k rows.
        try cluster.connect(database: database).execute(script: """
            INSERT INTO t VALUES (999);
            CREATE MATERIALIZED VIEW sorted AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g ORDER BY 2
            """)
        let newer = try nextBackup()
        let admin = try cluster.connect()
        try admin.execute(script: "ALTER SYSTEM SET temp_file_limit = '64kB'")
        _ = try admin.query("SELECT pg_reload_conf()")
        defer {
            _ = try? admin.execute(script: "ALTER SYSTEM RESET temp_file_limit")
            _ = try? admin.query("SELECT pg_reload_conf()")
        }

        for mode in ["--emergency", "--drill"] {
            let result = try tool("dbrestore", common + [mode])
            XCTAssertEqual(result.status, ExitStatus.restoreFailed.rawValue, "\(mode): \(result.standardError)")
            XCTAssertTrue(result.standardError.contains("temp_file_limit"), "\(mode) names the server's limit: \(result.standardError)")
            XCTAssertTrue(result.standardError.contains("an older backup would not help"), result.standardError)
            XCTAssertTrue(result.standardError.contains(newer), result.standardError)
            XCTAssertFalse(result.standardError.contains("skip backup"), "\(mode) does not pass over the newest: \(result.standardError)")
            XCTAssertFalse(result.standardError.contains(older), "\(mode) does not try the older backup: \(result.standardError)")
        }
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM t", database: database), "201", "the target database is untouched")
        XCTAssertEqual(try cluster.connect().query("SELECT count(*) FROM pg_database WHERE datname LIKE $1", ["\(database!)_%"]).scalar, "0",
                       "the scratch and drill databases were dropped")
    }
    /// Attack on issue 21 item 1: a loader session the server ends mid-COPY (pg_terminate_backend)
    /// left libpq only "server closed the connection unexpectedly", no SQLSTATE, and `--emergency`
    /// took that for the newest backup's damage and restored the older one. A lost session is the
    /// server's trouble: the run stops, the target untouched, the older backup never tried.
    func testASessionTheServerEndsMidCopyStopsTheSearch() throws {
        let older = try nextBackup()
        try cluster.connect(database: database).execute(script: """
            CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 6) AS body FROM generate_series(1, 600000) g
            """)
        let newer = try nextBackup()
        let admin = try cluster.connect()
        let run = Background { [self] in try tool("dbrestore", common + ["--emergency", "--jobs", "1"]) }
        // End the first session seen loading rows into a scratch database of this run.
        var terminated = false
        let deadline = Date().addingTimeInterval(120)
        while !terminated && !run.finished(within: 0.02) && Date() < deadline {
            terminated = try admin.query("""
                SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity
                WHERE datname LIKE $1 AND query LIKE 'COPY %' AND state = 'active' LIMIT 1
                """, ["\(database!)_%"]).scalar == "true"
        }
        let result = try run.wait()
        XCTAssertTrue(terminated, "no COPY session was seen to end: \(result.standardError)")
        guard terminated else { return }
        XCTAssertNotEqual(result.status, 0, result.standardError)
        XCTAssertTrue(result.standardError.contains("an older backup would not help"), result.standardError)
        XCTAssertTrue(result.standardError.contains(newer), result.standardError)
        XCTAssertFalse(result.standardError.contains("skip backup"), "does not pass over the newest: \(result.standardError)")
        XCTAssertFalse(result.standardError.contains(older), "does not try the older backup: \(result.standardError)")
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM big", database: database), "600000", "the target database is untouched")
    }
}
