import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// Issue 17 items 2 and 3: backups taken from a streaming standby, point-in-time recovery across
/// timeline switches, and clusters with a WAL segment size other than 16 MB.
extension PointInTimeRecoveryTests {
    private func manifest(_ id: String, in repository: String) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(repository)/backups/\(id)/manifest.json"))
        return try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
    }

    private func backupID(_ result: TestProcess.Result) -> String {
        let summary = try? JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
        return summary?["id"] as? String ?? ""
    }

    private func utcNow(_ connection: PostgresConnection) throws -> String {
        try connection.query("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')").scalar ?? ""
    }

    func testBackupsFromAStreamingStandbyRestoreExactlyOn15() throws {
        try standbyBackupsRestoreExactly(major: 15)
    }

    func testBackupsFromAStreamingStandbyRestoreExactlyOn18() throws {
        try standbyBackupsRestoreExactly(major: 18)
    }

    /// pg_dump never dumps an unlogged table's rows from a standby (the standby cannot read them): the
    /// backup records the table with 0 rows, which is what its restore creates, and says so.
    func testAStandbyBackupRecordsUnloggedTablesEmptyAsTheirRestore() throws {
        let primary = try PostgresCluster(major: 15)
        defer { primary.stop() }
        let database = try primary.createDatabase(prefix: "unlogged")
        try primary.connect(database: database).execute(script: """
            CREATE TABLE kept (v int);
            INSERT INTO kept SELECT generate_series(1, 5);
            CREATE UNLOGGED TABLE cache (v int);
            INSERT INTO cache SELECT generate_series(1, 3);
            """)
        let standby = try PostgresCluster.startStandby(of: primary)
        defer { standby.stop() }
        try standby.waitForReplay(of: primary)
        let repository = TestPaths.repositoryPath(prefix: "standby-unlogged")
        let pgBin = ["--pg-bin", primary.binDirectory]
        let backup = try TestProcess.tool("dbbackup", ["--database-url", standby.url(database: database), "--repo", repository, "--json"] + pgBin,
                                          cluster: standby)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        XCTAssertTrue(backup.standardError.contains("public.cache is recorded with 0 rows: pg_dump does not dump an unlogged table's rows from a standby"),
                      backup.standardError)
        let id = backupID(backup)
        let tables = (try manifest(id, in: repository)["tables"] as? [[String: Any]] ?? []).map { "\($0["name"] as? String ?? ""):\(($0["rows"] as? NSNumber)?.int64Value ?? -1)" }
        XCTAssertEqual(tables, ["cache:0", "kept:5"])

        let restored = "unlogged_restored_\(UInt32.random(in: 0...UInt32.max))"
        let restore = try TestProcess.tool("dbrestore", [id, "--yes", "--repo", repository, "--database-url", primary.url(database: restored)] + pgBin,
                                           cluster: primary)
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertEqual(try primary.rowCounts(database: restored), ["public.cache": 0, "public.kept": 5])
    }

    /// A primary archiving into a repository and a hot standby streaming from it: a logical backup
    /// of the standby taken while the primary writes restores with the standby snapshot's exact
    /// counts and verifies; a base backup of the standby recovers (PITR) to the primary's rows.
    private func standbyBackupsRestoreExactly(major: Int) throws {
        let repository = ownedDirectory("standby-wal") + "/repo"
        let primary = try PostgresCluster(major: major, archiveCommand: walPush(into: repository))
        defer { primary.stop() }
        let pgBin = ["--pg-bin", primary.binDirectory]
        let database = try primary.createDatabase(prefix: "standby")
        let writer = try primary.connect(database: database)
        try writer.execute(script: """
            CREATE TABLE items (id bigserial PRIMARY KEY, batch text, payload text);
            CREATE TABLE notes (id int PRIMARY KEY, body text);
            INSERT INTO items (batch, payload) SELECT 'A', repeat(md5(g::text), 8) FROM generate_series(1, 300000) g;
            INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 100000) g;
            """)
        let standby = try PostgresCluster.startStandby(of: primary)
        defer { standby.stop() }
        XCTAssertTrue(try standby.isInRecovery())
        try standby.waitForReplay(of: primary)

        // Logical, from the standby, while the primary keeps writing: the dump and the counts share
        // the standby's snapshot, taken before pg_dump starts there, so every write made once pg_dump
        // is seen on the standby is in neither, and the restore's own row check proves they agree.
        let before = try standby.rowCounts(database: database)
        let logicalRepository = TestPaths.repositoryPath(prefix: "standby-logical")
        let process = try TestProcess.start("dbbackup", ["--database-url", standby.url(database: database), "--repo", logicalRepository,
                                                         "--compression-level", "9"] + pgBin, cluster: standby)
        let watcher = try standby.connect()
        let deadline = Date().addingTimeInterval(120)
        var dumpSeen = false
        while !dumpSeen && !waitpidNoHang(process.pid) && Date() < deadline {
            dumpSeen = try watcher.query("SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_dump' AND datname = $1", [database]).rows.count == 1
        }
        XCTAssertTrue(dumpSeen, "pg_dump never showed up on the standby")
        var writes = 0
        while !waitpidNoHang(process.pid) && Date() < deadline {
            try writer.execute(script: "INSERT INTO items (batch, payload) VALUES ('W', 'written during the dump'); DELETE FROM notes WHERE id = \(writes + 1)")
            writes += 1
        }
        let termination = process.waitForExit()
        XCTAssertEqual(termination.exitCode, 0)
        XCTAssertGreaterThan(writes, 3, "the dump finished too quickly to prove snapshot consistency")
        let logicalID = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: logicalRepository + "/backups").first)
        let logicalManifest = try manifest(logicalID, in: logicalRepository)
        XCTAssertEqual(logicalManifest["from_standby"] as? Bool, true)
        XCTAssertEqual(logicalManifest["timeline"] as? Int, 1)
        let counted = (logicalManifest["tables"] as? [[String: Any]] ?? []).reduce(into: [String: Int64]()) {
            $0["\($1["schema"] as? String ?? "").\($1["name"] as? String ?? "")"] = ($1["rows"] as? NSNumber)?.int64Value
        }
        XCTAssertEqual(counted, before)

        let restored = "standby_restored_\(UInt32.random(in: 0...UInt32.max))"
        let restore = try TestProcess.tool("dbrestore", [logicalID, "--yes", "--repo", logicalRepository, "--database-url", primary.url(database: restored)] + pgBin,
                                           cluster: primary)
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertEqual(try primary.rowCounts(database: restored), before)
        XCTAssertEqual(try primary.scalar("SELECT count(*) FROM items WHERE batch = 'W'", database: restored), "0")
        let verify = try TestProcess.tool("dbverify", [logicalID, "--repo", logicalRepository, "--database-url", primary.url(database: restored)] + pgBin,
                                          cluster: primary)
        XCTAssertEqual(verify.status, 0, verify.standardError + verify.standardOutput)

        // Physical, from the standby: the primary archives the WAL; recovery reaches the primary's rows.
        try standby.waitForReplay(of: primary)
        let physical = try asOwner("dbbackup", ["--physical", "--database-url", standby.url(database: database), "--repo", repository, "--json"] + pgBin,
                                   cluster: standby)
        XCTAssertEqual(physical.status, 0, physical.standardError)
        let physicalSummary = try JSONSerialization.jsonObject(with: Data(physical.standardOutput.utf8)) as? [String: Any]
        XCTAssertEqual(physicalSummary?["from_standby"] as? Bool, true, physical.standardOutput)
        let physicalManifest = try manifest(backupID(physical), in: repository)
        XCTAssertEqual(physicalManifest["from_standby"] as? Bool, true)
        XCTAssertEqual(physicalManifest["timeline"] as? Int, 1)
        let range = physicalManifest["physical"] as? [String: Any]
        XCTAssertEqual((range?["wal_segment_size"] as? NSNumber)?.intValue, 16 << 20)
        XCTAssertEqual(range?["timeline"] as? Int, 1)
        try writer.execute(script: "INSERT INTO items (batch, payload) SELECT 'B', 'after the base backup' FROM generate_series(1, 77)")
        try waitForArchive(writer)
        let expected = try Dictionary(uniqueKeysWithValues: writer.query("SELECT batch, count(*)::text FROM items GROUP BY batch").rows.map { ($0[0] ?? "", $0[1] ?? "") })
        let (result, directory, port) = try recover(["--target", "latest"] + pgBin, repository: repository, cluster: primary)
        defer { stopServer(directory) }
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertEqual(try counts(port: port, database: database, cluster: primary), expected)
        XCTAssertEqual(expected["B"], "77")

        // Promoted, the standby archives the new timeline's history file and the old timeline's last,
        // partial segment; wal-fetch returns both.
        // (A switch point in the middle of a segment: right after a pg_switch_wal there would be none.)
        try writer.execute(script: "INSERT INTO notes VALUES (-1, 'before the failover')")
        try standby.waitForReplay(of: primary)
        XCTAssertEqual(try standby.scalar("SELECT count(*) FROM notes WHERE id = -1", database: database), "1",
                       "the standby is promoted before it replayed the last insert: the switch point would be a segment boundary")
        XCTAssertEqual(try standby.promote(), 2)
        // PostgreSQL's archiver retries a failed archive_command three times, then waits up to 60 s for its
        // next round: on a busy machine one transient failure costs a minute, so wait through two rounds.
        let promotedBy = Date().addingTimeInterval(150)
        var partial: String?
        while Date() < promotedBy {
            partial = (try? FileManager.default.contentsOfDirectory(atPath: repository + "/wal/00000001"))?.first { $0.hasSuffix(".partial.gz") }
            if partial != nil && FileManager.default.fileExists(atPath: repository + "/wal/00000002/00000002.history.gz") { break }
            usleep(100_000)
        }
        let archived = ["00000001", "00000002"].map { "\($0): " + ((try? FileManager.default.contentsOfDirectory(atPath: repository + "/wal/" + $0))?.sorted().joined(separator: " ") ?? "-") }
        let partialName = String(try XCTUnwrap(partial, "no .partial segment was archived in 150 s; archived: \(archived.joined(separator: "; "))\nthe promoted standby's log:\n\(standby.serverLogTail())").dropLast(3))
        let fetched = ownedDirectory("standby-fetch")
        for name in [partialName, "00000002.history"] {
            let fetch = try asOwner("dbrestore", ["wal-fetch", name, fetched + "/" + name, "--repo", repository], cluster: primary)
            XCTAssertEqual(fetch.status, 0, fetch.standardError)
        }
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: fetched + "/" + partialName)[.size] as? Int, 16 << 20)

        // After the failover: the promoted standby writes and archives on timeline 2, and recovery from
        // the standby's base backup (timeline 1) follows the history file to those rows.
        let promoted = try standby.connect(database: database)
        try promoted.execute(script: "INSERT INTO items (batch, payload) SELECT 'F', 'after the failover' FROM generate_series(1, 11)")
        try waitForArchive(promoted)
        let afterFailover = try Dictionary(uniqueKeysWithValues: promoted.query("SELECT batch, count(*)::text FROM items GROUP BY batch").rows.map { ($0[0] ?? "", $0[1] ?? "") })
        XCTAssertEqual(afterFailover["F"], "11")
        let (followed, followedDirectory, followedPort) = try recover(["--target", "latest"] + pgBin, repository: repository, cluster: primary)
        defer { stopServer(followedDirectory) }
        XCTAssertEqual(followed.status, 0, followed.standardError)
        XCTAssertEqual(try counts(port: followedPort, database: database, cluster: primary), afterFailover)
        XCTAssertTrue(((try? String(contentsOfFile: followedDirectory + "/postgresql.auto.conf", encoding: .utf8)) ?? "").contains("recovery_target_timeline = '2'"))
    }

    /// A PITR copy promoted onto timeline 2 archives into the same repository. Recovery to a time on
    /// timeline 2 follows the history file; a time after timeline 1 was left but before timeline 2
    /// began is refused with the reason, as is a time past timeline 1's end with --timeline 1.
    func testRecoveryFollowsATimelineSwitchAndRefusesTheAbandonedBranch() throws {
        let repository = ownedDirectory("timeline-wal") + "/repo"
        let archive = walPush(into: repository)
        let cluster = try PostgresCluster(archiveCommand: archive)
        defer { cluster.stop() }
        let (database, connection) = try itemsDatabase("timeline", on: cluster)
        try physicalBackup(of: database, on: cluster, into: repository)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 100)")
        usleep(300_000)
        let betweenAAndB = try utcNow(connection)
        usleep(1_100_000)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'B' FROM generate_series(1, 50)")
        usleep(300_000)
        let afterB = try utcNow(connection)
        try waitForArchive(connection)
        usleep(1_100_000)

        // The PITR copy: recovered to before B, archiving into the same repository, promoted (timeline 2).
        let parent = ownedDirectory("timeline-copy")
        let copy = parent + "/data"
        let copyPort = try freePort()
        let prepared = try asOwner("dbrestore", ["--pitr", "--pgdata", copy, "--repo", repository, "--target-time", betweenAAndB, "--port", String(copyPort)],
                                   cluster: cluster)
        XCTAssertEqual(prepared.status, 0, prepared.standardError)
        let settings = try String(contentsOfFile: copy + "/postgresql.auto.conf", encoding: .utf8)
        XCTAssertTrue(settings.contains("recovery_target_timeline = '1'"), settings)
        try (settings + "archive_mode = 'on'\narchive_command = '\(archive)'\n").write(toFile: copy + "/postgresql.auto.conf", atomically: true, encoding: .utf8)
        defer { stopServer(copy) }
        let copyConnection = try startRecovered(copy, port: copyPort, database: database, cluster: cluster)
        XCTAssertEqual(try copyConnection.query("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)").scalar, "00000002")
        usleep(1_100_000)
        try copyConnection.execute(script: "INSERT INTO items (batch) SELECT 'C' FROM generate_series(1, 30)")
        usleep(300_000)
        let onTimeline2 = try utcNow(copyConnection)
        usleep(1_100_000)
        try copyConnection.execute(script: "INSERT INTO items (batch) SELECT 'D' FROM generate_series(1, 7)")
        try waitForArchive(copyConnection)
        XCTAssertTrue(FileManager.default.fileExists(atPath: repository + "/wal/00000002/00000002.history.gz"))

        // wal-fetch of a history file that does not exist: "not found", quietly.
        let scratch = ownedDirectory("timeline-fetch")
        let absent = try asOwner("dbrestore", ["wal-fetch", "00000003.history", scratch + "/00000003.history", "--repo", repository], cluster: cluster)
        XCTAssertEqual(absent.status, 1)
        XCTAssertEqual(absent.standardError, "")
        let history = try asOwner("dbrestore", ["wal-fetch", "00000002.history", scratch + "/00000002.history", "--repo", repository], cluster: cluster)
        XCTAssertEqual(history.status, 0, history.standardError)
        let historyText = (try? String(contentsOfFile: scratch + "/00000002.history", encoding: .utf8)) ?? ""
        XCTAssertTrue(historyText.hasPrefix("1\t"), historyText)

        // A time on timeline 2: A and C (B was abandoned with timeline 1's branch, D comes later).
        let (onTwo, twoDirectory, twoPort) = try recover(["--target-time", onTimeline2], repository: repository, cluster: cluster)
        defer { stopServer(twoDirectory) }
        XCTAssertEqual(onTwo.status, 0, onTwo.standardError)
        XCTAssertEqual(try counts(port: twoPort, database: database, cluster: cluster), ["A": "100", "C": "30"])
        XCTAssertTrue(((try? String(contentsOfFile: twoDirectory + "/postgresql.auto.conf", encoding: .utf8)) ?? "").contains("recovery_target_timeline = '2'"))
        // Its hold named both timelines it followed, from the base backup's.
        let twoReport = try JSONSerialization.jsonObject(with: Data(onTwo.standardOutput.utf8)) as? [String: Any]
        XCTAssertEqual((twoReport?["hold"] as? [String: Any])?["timelines"] as? [Int], [1, 2], onTwo.standardOutput)

        // After B, before timeline 2 began: refused with the reason, nothing written.
        let nowhere = ownedDirectory("timeline-refused") + "/data"
        let abandoned = try asOwner("dbrestore", ["--pitr", "--pgdata", nowhere, "--repo", repository, "--target-time", afterB], cluster: cluster)
        XCTAssertEqual(abandoned.status, ExitStatus.backupNotFound.rawValue, "after B: \(afterB); history: \(historyText); " + abandoned.standardError)
        XCTAssertTrue(abandoned.standardError.contains("after timeline 1 ended at"), abandoned.standardError)
        XCTAssertTrue(abandoned.standardError.contains("switched to timeline 2"), abandoned.standardError)
        XCTAssertTrue(abandoned.standardError.contains("--timeline 1"), abandoned.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: nowhere))

        // The abandoned branch itself stays reachable on purpose: --timeline 1 plans to it.
        let branch = try asOwner("dbrestore", ["--pitr", "--pgdata", nowhere, "--repo", repository, "--target-time", afterB, "--timeline", "1", "--dry-run"], cluster: cluster)
        XCTAssertEqual(branch.status, 0, branch.standardError)
        XCTAssertTrue(branch.standardOutput.contains("timeline:    1"), branch.standardOutput)

        // Timeline 1 with a time only timeline 2 reaches: timeline 1 ended, use --timeline 2.
        let ended = try asOwner("dbrestore", ["--pitr", "--pgdata", nowhere, "--repo", repository, "--target-time", onTimeline2, "--timeline", "1"], cluster: cluster)
        XCTAssertEqual(ended.status, ExitStatus.backupNotFound.rawValue, ended.standardError)
        XCTAssertTrue(ended.standardError.contains("timeline 1's later WAL was abandoned"), ended.standardError)
        XCTAssertTrue(ended.standardError.contains("--timeline 2"), ended.standardError)

        let unknown = try asOwner("dbrestore", ["--pitr", "--pgdata", nowhere, "--repo", repository, "--target", "latest", "--timeline", "3"], cluster: cluster)
        XCTAssertEqual(unknown.status, ExitStatus.backupNotFound.rawValue, unknown.standardError)
        XCTAssertTrue(unknown.standardError.contains("00000003.history"), unknown.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: nowhere))
    }

    /// `initdb --wal-segsize=64`, its WAL starting just before a log boundary: segment names
    /// continue 3E, 3F, then 1/00 (64 segments per log), and the manifest records the size.
    func testA64MBSegmentClusterRecoversAcrossALogBoundary() throws {
        let repository = ownedDirectory("wal64") + "/repo"
        let cluster = try PostgresCluster(archiveCommand: walPush(into: repository),
                                          initdbOptions: ["--wal-segsize=64"], walStart: "00000001000000000000003E")
        defer { cluster.stop() }
        let (database, connection) = try itemsDatabase("wal64", on: cluster)
        let base = try physicalBackup(of: database, on: cluster, into: repository, ["--json"])
        let physical = try manifest(backupID(base), in: repository)["physical"] as? [String: Any]
        XCTAssertEqual((physical?["wal_segment_size"] as? NSNumber)?.intValue, 64 << 20)
        for batch in ["A", "B", "C"] {
            try connection.execute(script: "INSERT INTO items (batch) SELECT '\(batch)' FROM generate_series(1, 40)")
            try waitForArchive(connection)
        }
        let archived = try FileManager.default.contentsOfDirectory(atPath: repository + "/wal/00000001")
        XCTAssertTrue(archived.contains("000000010000000100000000.gz"), "\(archived.sorted())")
        XCTAssertFalse(archived.contains { $0.hasPrefix("000000010000000000000040") }, "\(archived.sorted())")

        let (result, directory, port) = try recover(["--target", "latest"], repository: repository, cluster: cluster)
        defer { stopServer(directory) }
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertEqual(try counts(port: port, database: database, cluster: cluster), ["A": "40", "B": "40", "C": "40"])
    }
}
