import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// What the archived WAL tells about a `--target-name` restore point, said before anything is
/// extracted (found by an outside attack: each of these was learnt only from a failed full restore,
/// or not at all): a point made before every base backup, a name made several times (the base backup
/// decides which one recovery stops at), a point only on a timeline the recovery does not follow, an
/// encrypted repository without its key; and the hold the real run takes, in the dry run's JSON.
final class PointInTimeRestorePointChoiceTests: XCTestCase {
    private func plan(_ repository: String, _ extra: [String], cluster: PostgresCluster, environment: [String: String] = [:]) throws
        -> (result: TestProcess.Result, json: [String: Any]) {
        let result = try asOwner("dbrestore", ["--pitr", "--pgdata", ownedDirectory("rpchoice-plan") + "/data", "--repo", repository, "--dry-run"] + extra,
                                 cluster: cluster, environment: environment)
        return (result, (try? JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8))) as? [String: Any] ?? [:])
    }

    private func backupIDs(_ repository: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: repository + "/backups").sorted()
    }

    private func lsn(_ text: Any?) -> UInt64 { (text as? String).flatMap(WALSegmentName.parseLSN) ?? 0 }

    /// A restore point made before the oldest base backup: refused before extracting (exit 22, nothing
    /// written), naming the point's LSN and time, the oldest base backup's start and the earliest
    /// reachable target; `--base-backup` of that base backup is refused the same way. Before, a
    /// full restore ended in exit 31 suggesting `--base-backup <oldest>`, which failed again.
    func testARestorePointBeforeEveryBaseBackupIsRefusedBeforeExtracting() throws {
        let (cluster, repository, database, connection) = try archivingCluster("rpbefore", baseBackup: false)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 10)")
        let pointEnd = try connection.query("SELECT pg_create_restore_point('before_every_backup')::text").scalar ?? ""
        try waitForArchive(connection)
        try physicalBackup(of: database, on: cluster, into: repository)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'B' FROM generate_series(1, 5)")
        try waitForArchive(connection)
        let oldest = try XCTUnwrap(try backupIDs(repository).first)
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: repository + "/backups/\(oldest)/manifest.json"))) as? [String: Any]
        let physical = manifest?["physical"] as? [String: Any] ?? [:]
        let (startLsn, stopLsn) = (physical["start_lsn"] as? String ?? "?", physical["stop_lsn"] as? String ?? "?")

        let nowhere = ownedDirectory("rpbefore-target") + "/data"
        for extra in [["--dry-run"], [], ["--base-backup", oldest]] {
            let refused = try asOwner("dbrestore", ["--pitr", "--pgdata", nowhere, "--repo", repository, "--target-name", "before_every_backup"] + extra,
                                      cluster: cluster)
            XCTAssertEqual(refused.status, ExitStatus.backupNotFound.rawValue, "\(extra): " + refused.standardError)
            for words in ["restore point 'before_every_backup' (LSN ", ", made 20", "precedes the oldest base backup of this server, \(oldest) (started ",
                          "LSN \(startLsn)): no base backup precedes it, so recovery cannot reach it", "--target-lsn \(stopLsn) or --target-time '",
                          "nothing was written"] {
                XCTAssertTrue(refused.standardError.contains(words), "\(extra) \(words): \(refused.standardError)")
            }
            // The LSN named is the record's, which ends where pg_create_restore_point said.
            let named = refused.standardError.components(separatedBy: "(LSN ").dropFirst().first?.prefix { $0 != "," }.map(String.init)
            XCTAssertLessThan(lsn(named), lsn(pointEnd), refused.standardError)
            XCTAssertFalse(FileManager.default.fileExists(atPath: nowhere), "\(extra)")
        }
    }

    /// The same name made three times, twice after the first base backup and once more after the
    /// second: the plan reaches the first one after the newest base backup that precedes any, says
    /// which (LSN, time), lists all three with the base backup that reaches each, and that
    /// `--base-backup` decides; `--base-backup` of the older one plans (and recovers) to the first.
    /// Recovery confirms the plan. The dry run's JSON carries them, and the hold the real run writes.
    func testANameMadeSeveralTimesSaysWhichOneIsReachedAndTheDryRunCarriesTheHold() throws {
        let (cluster, repository, database, connection) = try archivingCluster("rpdup")
        func point() throws -> UInt64 {
            WALSegmentName.parseLSN(try connection.query("SELECT pg_create_restore_point('twice')::text").scalar ?? "") ?? 0
        }
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 10)")
        let firstEnd = try point()
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'B' FROM generate_series(1, 5)")
        try waitForArchive(connection)
        try physicalBackup(of: database, on: cluster, into: repository)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'C' FROM generate_series(1, 3)")
        let secondEnd = try point()
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'D' FROM generate_series(1, 2)")
        let thirdEnd = try point()
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'E' FROM generate_series(1, 1)")
        try waitForArchive(connection)
        let ids = try backupIDs(repository)
        XCTAssertEqual(ids.count, 2, "\(ids)")
        let (older, newest) = (ids[0], ids[1])

        let (newestPlan, json) = try plan(repository, ["--target-name", "twice", "--json"], cluster: cluster)
        XCTAssertEqual(newestPlan.status, 0, newestPlan.standardError)
        XCTAssertEqual(json["backup_id"] as? String, newest, newestPlan.standardOutput)
        let reached = lsn(json["restore_point_lsn"])
        XCTAssertTrue(reached > firstEnd && reached < secondEnd, "the second point: \(newestPlan.standardOutput)")
        XCTAssertNotNil(json["restore_point_time"] as? String, newestPlan.standardOutput)
        let points = json["restore_points"] as? [[String: Any]] ?? []
        XCTAssertEqual(points.count, 3, newestPlan.standardOutput)
        XCTAssertEqual(points.map { $0["reached_from"] as? String }, [older, newest, nil], newestPlan.standardOutput)
        XCTAssertEqual(points.map { $0["timeline"] as? Int }, [1, 1, 1], newestPlan.standardOutput)
        XCTAssertTrue(zip(points.map { lsn($0["lsn"]) }, [firstEnd, secondEnd, thirdEnd]).allSatisfy { $0 < $1 }, newestPlan.standardOutput)
        let warning = json["restore_point_warning"] as? String ?? ""
        for words in ["restore point 'twice' was made 3 times: LSN ", "reached from base backup \(older)", "reached from no base backup",
                      "from base backup \(newest) the one at LSN \(json["restore_point_lsn"] as? String ?? "?") (made ", "--base-backup ID decides which one"] {
            XCTAssertTrue(warning.contains(words), "\(words): \(warning)")
        }
        // The hold the real run writes: its base backup and WAL from its first segment on timeline 1.
        let hold = json["hold"] as? [String: Any]
        XCTAssertEqual(hold?["backups"] as? [String], [newest], newestPlan.standardOutput)
        XCTAssertEqual(hold?["timelines"] as? [Int], [1], newestPlan.standardOutput)
        XCTAssertEqual(hold?["first_segment"] as? String, json["first_segment"] as? String, newestPlan.standardOutput)
        XCTAssertEqual(hold?["target"] as? String, "restore point 'twice'", newestPlan.standardOutput)

        // The text plan says it too.
        let (text, _) = try plan(repository, ["--target-name", "twice"], cluster: cluster)
        XCTAssertEqual(text.status, 0, text.standardError)
        XCTAssertTrue(text.standardOutput.contains("warning:     restore point 'twice' was made 3 times"), text.standardOutput)

        // --base-backup of the older one decides: the first point.
        let (olderPlan, olderJSON) = try plan(repository, ["--target-name", "twice", "--base-backup", older, "--json"], cluster: cluster)
        XCTAssertEqual(olderPlan.status, 0, olderPlan.standardError)
        XCTAssertLessThan(lsn(olderJSON["restore_point_lsn"]), firstEnd, olderPlan.standardOutput)
        XCTAssertTrue((olderJSON["restore_point_warning"] as? String ?? "").contains("from base backup \(older) the one at LSN \(olderJSON["restore_point_lsn"] as? String ?? "?")"),
                      olderPlan.standardOutput)

        // Recovery stops where each plan said.
        try assertRecovers(["--target-name", "twice"], repository: repository, cluster: cluster, database: database, holding: ["A": "10", "B": "5", "C": "3"])
        try assertRecovers(["--target-name", "twice", "--base-backup", older], repository: repository, cluster: cluster, database: database, holding: ["A": "10"])
    }

    /// A restore point made while a base backup was taken (between its start and end LSN): recovery
    /// from that base backup stops there before the data is consistent and the server does not start
    /// ("requested recovery stop point is before consistent recovery point"). The plan skips it saying
    /// so and takes the older base backup, which reaches the point; `--base-backup` of it is refused.
    func testARestorePointMadeWhileABaseBackupWasTakenIsReachedFromTheOlderOne() throws {
        let (cluster, repository, database, connection) = try archivingCluster("rpinside")
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 10)")
        // The second base backup runs as a child while restore points are made, each under a name of its own.
        let tool = [TestPaths.executable("dbbackup"), "--physical", "--database-url", cluster.url(database: database), "--repo", repository]
        let backup = Process()
        backup.executableURL = URL(fileURLWithPath: getuid() == 0 ? "/usr/bin/setpriv" : tool[0])
        backup.arguments = getuid() == 0 ? ["--reuid=postgres", "--regid=postgres", "--init-groups"] + tool : Array(tool.dropFirst())
        backup.environment = ProcessInfo.processInfo.environment.merging(cluster.environment) { _, new in new }
        backup.standardOutput = FileHandle.nullDevice
        try backup.run()
        var ends: [UInt64] = []
        while backup.isRunning {
            ends.append(WALSegmentName.parseLSN(try connection.query("SELECT pg_create_restore_point('during_\(ends.count)')::text").scalar ?? "") ?? 0)
        }
        backup.waitUntilExit()
        XCTAssertEqual(backup.terminationStatus, 0)
        try waitForArchive(connection)
        let ids = try backupIDs(repository)
        XCTAssertEqual(ids.count, 2, "\(ids)")
        let (older, newest) = (ids[0], ids[1])
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: repository + "/backups/\(newest)/manifest.json"))) as? [String: Any]
        let physical = manifest?["physical"] as? [String: Any] ?? [:]
        let (start, stop) = (lsn(physical["start_lsn"]), lsn(physical["stop_lsn"]))
        // A point whose record begins after the start (the previous one ended there or later) and ends before the stop.
        let inside = try XCTUnwrap(ends.indices.dropFirst().first { ends[$0 - 1] >= start && ends[$0] < stop },
                                   "no restore point inside \(start)…\(stop) among \(ends.count)")
        let name = "during_\(inside)"

        let (chosen, json) = try plan(repository, ["--target-name", name, "--json"], cluster: cluster)
        XCTAssertEqual(chosen.status, 0, chosen.standardError)
        XCTAssertEqual(json["backup_id"] as? String, older, chosen.standardOutput)
        let reason = (json["skipped"] as? [[String: Any]] ?? []).first { $0["id"] as? String == newest }?["reason"] as? String ?? ""
        XCTAssertTrue(reason.contains("was made while it was taken") && reason.contains("before the base backup is consistent"), chosen.standardOutput)
        XCTAssertEqual((json["restore_points"] as? [[String: Any]])?.first?["reached_from"] as? String, older, chosen.standardOutput)

        let nowhere = ownedDirectory("rpinside-target") + "/data"
        let refused = try asOwner("dbrestore", ["--pitr", "--pgdata", nowhere, "--repo", repository, "--target-name", name, "--base-backup", newest], cluster: cluster)
        XCTAssertEqual(refused.status, ExitStatus.backupNotFound.rawValue, refused.standardError)
        for words in ["was made while base backup \(newest) was taken", "before the base backup is consistent", "run with --base-backup \(older)"] {
            XCTAssertTrue(refused.standardError.contains(words), "\(words): \(refused.standardError)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: nowhere))

        try assertRecovers(["--target-name", name], repository: repository, cluster: cluster, database: database, holding: ["A": "10"])
    }

    /// A restore point made on timeline 1 after the point timeline 2 branched off (a PITR copy promoted
    /// and archiving into the same repository): the default (latest) recovery follows timeline 2 and
    /// never replays it. Refused before extracting, naming the switch and `--timeline 1`, which plans to it.
    func testARestorePointOnlyOnAnAbandonedBranchNamesTheTimelineThatReachesIt() throws {
        let (cluster, repository, database, connection) = try archivingCluster("rpbranch")
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 10)")
        try connection.query("SELECT pg_create_restore_point('fork')")
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'B' FROM generate_series(1, 5)")
        try connection.query("SELECT pg_create_restore_point('only_on_one')")
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'C' FROM generate_series(1, 3)")
        try waitForArchive(connection)

        // The copy recovered to 'fork', archiving into the same repository, promoted onto timeline 2.
        let copy = ownedDirectory("rpbranch-copy") + "/data"
        let copyPort = try freePort()
        let prepared = try asOwner("dbrestore", ["--pitr", "--pgdata", copy, "--repo", repository, "--target-name", "fork", "--port", String(copyPort)],
                                   cluster: cluster)
        XCTAssertEqual(prepared.status, 0, prepared.standardError)
        let settings = try String(contentsOfFile: copy + "/postgresql.auto.conf", encoding: .utf8)
        try (settings + "archive_mode = 'on'\narchive_command = '\(walPush(into: repository))'\n").write(toFile: copy + "/postgresql.auto.conf", atomically: true, encoding: .utf8)
        defer { stopServer(copy) }
        let copyConnection = try startRecovered(copy, port: copyPort, database: database, cluster: cluster)
        XCTAssertEqual(try copyConnection.query("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)").scalar, "00000002")
        try copyConnection.execute(script: "INSERT INTO items (batch) SELECT 'D' FROM generate_series(1, 7)")
        try waitForArchive(copyConnection)
        XCTAssertTrue(FileManager.default.fileExists(atPath: repository + "/wal/00000002/00000002.history.gz"))

        let nowhere = ownedDirectory("rpbranch-target") + "/data"
        for extra in [["--dry-run"], []] {
            let refused = try asOwner("dbrestore", ["--pitr", "--pgdata", nowhere, "--repo", repository, "--target-name", "only_on_one"] + extra, cluster: cluster)
            XCTAssertEqual(refused.status, ExitStatus.backupNotFound.rawValue, "\(extra): " + refused.standardError)
            for words in ["restore point 'only_on_one' is not in the history of timeline 2 (the newest, which recovery follows by default)",
                          "it was made on timeline 1 at LSN ", "after timeline 1 switched to timeline 2 at LSN ", "--timeline 1"] {
                XCTAssertTrue(refused.standardError.contains(words), "\(extra) \(words): \(refused.standardError)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: nowhere))
        }
        // --timeline 1 reaches it; 'fork', before the switch, is on both.
        let (branch, branchJSON) = try plan(repository, ["--target-name", "only_on_one", "--timeline", "1", "--json"], cluster: cluster)
        XCTAssertEqual(branch.status, 0, branch.standardError)
        XCTAssertNotNil(branchJSON["restore_point_lsn"] as? String, branch.standardOutput)
        XCTAssertEqual(branchJSON["timeline"] as? Int, 1, branch.standardOutput)
        let (fork, forkJSON) = try plan(repository, ["--target-name", "fork", "--json"], cluster: cluster)
        XCTAssertEqual(fork.status, 0, fork.standardError)
        XCTAssertEqual(forkJSON["timeline"] as? Int, 2, fork.standardOutput)
        XCTAssertEqual((forkJSON["restore_points"] as? [[String: Any]])?.count, 1, fork.standardOutput)
    }

    /// `--pitr --dry-run --target-name` against an encrypted repository without the key, or with
    /// another key: the error the restore gives (exit 3, naming the key's fingerprint), not "restore
    /// point not found"; the real run gives it before extracting. With the key, the point is found.
    func testAnEncryptedRepositoryWithoutItsKeySaysSoInTheDryRun() throws {
        let parent = ownedDirectory("rpenc")
        let repository = parent + "/repo"
        let keyFile = parent + "/key", otherKeyFile = parent + "/other-key"
        try ("rp-key-" + UUID().uuidString).write(toFile: keyFile, atomically: true, encoding: .utf8)
        try ("rp-other-" + UUID().uuidString).write(toFile: otherKeyFile, atomically: true, encoding: .utf8)
        chmod(keyFile, 0o600)
        chmod(otherKeyFile, 0o600)
        chownToPostgres(parent)
        let cluster = try PostgresCluster(archiveCommand: "\(TestPaths.executable("dbbackup")) wal-push %p --repo \(repository) --encryption-key-file \(keyFile)")
        addTeardownBlock { cluster.stop() }
        let (database, connection) = try itemsDatabase("rpenc", on: cluster)
        try physicalBackup(of: database, on: cluster, into: repository, ["--encryption-key-file", keyFile])
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 10)")
        try connection.query("SELECT pg_create_restore_point('sealed_point')")
        try waitForArchive(connection)
        let id = try XCTUnwrap(try backupIDs(repository).first)

        let nowhere = ownedDirectory("rpenc-target") + "/data"
        for (keyArguments, words) in [([String](), "backup \(id) is encrypted (key "), (["--encryption-key-file", otherKeyFile], "backup \(id) was encrypted with another key")] {
            var messages: [String] = []
            for extra in [["--dry-run"], []] {
                let refused = try asOwner("dbrestore", ["--pitr", "--pgdata", nowhere, "--repo", repository, "--target-name", "sealed_point"] + keyArguments + extra,
                                          cluster: cluster)
                XCTAssertEqual(refused.status, ExitStatus.configuration.rawValue, "\(keyArguments) \(extra): " + refused.standardError)
                XCTAssertTrue(refused.standardError.contains(words), "\(keyArguments) \(extra): " + refused.standardError)
                XCTAssertFalse(refused.standardError.contains("not found"), refused.standardError)
                messages.append(refused.standardError.split(separator: "\n").first { $0.contains(words) }.map(String.init) ?? "")
                XCTAssertFalse(FileManager.default.fileExists(atPath: nowhere))
            }
            XCTAssertEqual(messages[0], messages[1], "the dry run says what the restore says")
        }
        let (found, json) = try plan(repository, ["--target-name", "sealed_point", "--encryption-key-file", keyFile, "--json"], cluster: cluster)
        XCTAssertEqual(found.status, 0, found.standardError)
        XCTAssertNotNil(json["restore_point_lsn"] as? String, found.standardOutput)

        // With a timeline history archived (sealed with the key), another key failed that file's
        // authentication first: "tampered" (exit 23). The key is checked against the base backup before.
        let historyDirectory = ownedDirectory("rpenc-history")
        try "1\t0/F0000000\tno recovery target specified\n".write(toFile: historyDirectory + "/00000002.history", atomically: true, encoding: .utf8)
        chownToPostgres(historyDirectory)
        let pushed = try asOwner("dbbackup", ["wal-push", historyDirectory + "/00000002.history", "--repo", repository, "--encryption-key-file", keyFile], cluster: cluster)
        XCTAssertEqual(pushed.status, 0, pushed.standardError)
        let (other, _) = try plan(repository, ["--target-name", "sealed_point", "--encryption-key-file", otherKeyFile], cluster: cluster)
        XCTAssertEqual(other.status, ExitStatus.configuration.rawValue, other.standardError)
        XCTAssertTrue(other.standardError.contains("backup \(id) was encrypted with another key"), other.standardError)
        let (along, alongJSON) = try plan(repository, ["--target-name", "sealed_point", "--encryption-key-file", keyFile, "--json"], cluster: cluster)
        XCTAssertEqual(along.status, 0, along.standardError)
        XCTAssertEqual(alongJSON["restore_point_lsn"] as? String, json["restore_point_lsn"] as? String, along.standardOutput)
        XCTAssertEqual(alongJSON["timeline"] as? Int, 2, along.standardOutput)
    }
}
