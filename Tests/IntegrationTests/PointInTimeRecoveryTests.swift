import BackupStorage
import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// Base backups, WAL archiving through `dbbackup wal-push`, and `dbrestore --pitr` on real clusters.
final class PointInTimeRecoveryTests: XCTestCase {
    func testTheWholeFlowWorksWithAnS3Repository() throws {
        let s3 = try S3Server.shared()
        let bucket = try s3.createBucket()
        let repository = "s3://\(bucket)/pitr"
        let environment = s3.environment()
        let cluster = try PostgresCluster(archiveCommand: walPush(into: repository, environment: environment))
        defer { cluster.stop() }
        let (database, connection) = try itemsDatabase("pitrs3", on: cluster)
        try physicalBackup(of: database, on: cluster, into: repository, environment: environment)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 10)")
        try connection.query("SELECT pg_create_restore_point('before_b')")
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'B' FROM generate_series(1, 5)")
        try waitForArchive(connection)

        let (result, directory, port) = try recover(["--target-name", "before_b"], repository: repository, cluster: cluster, environment: environment)
        defer { stopServer(directory) }
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertEqual(try counts(port: port, database: database, cluster: cluster), ["A": "10"])
    }

    /// A segment deleted from the archive under a restored server still replaying (found by an outside
    /// attack: `dbprune` ran while a `dbrestore --pitr` without `--start` waited to be started):
    /// `wal-fetch` used to answer "not found" and PostgreSQL ended recovery there, promoting the
    /// server minutes short of the archive without a word. Later segments being archived, it is a hole:
    /// recovery stops with the segment named, the server is not promoted.
    func testAHoleInTheArchiveStopsRecoveryInsteadOfPromotingShort() throws {
        let (cluster, repository, _, connection) = try archivingCluster("hole")
        for batch in ["A", "B", "C"] {
            try connection.execute(script: "INSERT INTO items (batch) SELECT '\(batch)' FROM generate_series(1, 100)")
            try waitForArchive(connection)
        }
        let parent = ownedDirectory("hole-target")
        let directory = parent + "/data"
        let port = try freePort()
        let prepared = try asOwner("dbrestore", ["--pitr", "--pgdata", directory, "--repo", repository, "--target", "latest", "--port", String(port)],
                                   cluster: cluster)
        XCTAssertEqual(prepared.status, 0, prepared.standardError)
        // The segment B was written in goes, as under a prune (later ones stay).
        let segments = try FileManager.default.contentsOfDirectory(atPath: repository + "/wal/00000001")
            .filter { $0.count == 27 && $0.hasSuffix(".gz") }.sorted()
        XCTAssertGreaterThanOrEqual(segments.count, 4, "\(segments)")
        let removed = segments[segments.count - 2]
        try FileManager.default.removeItem(atPath: repository + "/wal/00000001/" + removed)

        let log = parent + "/server.log"
        _ = try TestProcess.run("/usr/bin/setpriv", ["--reuid=postgres", "--regid=postgres", "--init-groups", cluster.binDirectory + "/pg_ctl",
                                                    "-D", directory, "-l", log, "-w", "-t", "60", "start"],
                                environment: ["DBRECOVERY_WAL_HOLE_WAIT": "1"])
        defer { stopServer(directory) }
        let deadline = Date().addingTimeInterval(60)
        var text = ""
        while Date() < deadline {
            text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            if text.contains("database system is shut down") || text.contains("archive recovery complete") || text.contains("selected new timeline") { break }
            usleep(200_000)
        }
        XCTAssertFalse(text.contains("selected new timeline") || text.contains("archive recovery complete"), "promoted short of the archive: \(text)")
        XCTAssertTrue(text.contains("WAL file \(removed.dropLast(3)) is missing from"), text)
        XCTAssertTrue(text.contains("later segments of its timeline are archived"), text)
    }

    /// A tablespace outside the data directory would be missing from the one tar `--physical` stores:
    /// refused up front (before pg_basebackup's checkpoint), naming it and what to do, nothing stored.
    func testAClusterWithATablespaceIsRefusedBeforeItsCheckpoint() throws {
        let repository = ownedDirectory("tablespace-repo") + "/repo"
        let cluster = try PostgresCluster(archiveCommand: walPush(into: repository))
        defer { cluster.stop() }
        let location = ownedDirectory("tablespace")
        let (database, connection) = try itemsDatabase("tablespace", on: cluster)
        try cluster.connect().execute(script: "CREATE TABLESPACE extra LOCATION '\(location)'")
        try connection.execute(script: "CREATE TABLE elsewhere (v int) TABLESPACE extra; INSERT INTO elsewhere VALUES (1)")
        let checkpoints = try connection.query("SELECT checkpoints_req FROM pg_stat_bgwriter").scalar
        let result = try asOwner("dbbackup", ["--physical", "--database-url", cluster.url(database: database), "--repo", repository], cluster: cluster)
        XCTAssertEqual(result.status, ExitStatus.toolFailed.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("has tablespaces outside its data directory: extra (\(location))"), result.standardError)
        XCTAssertTrue(result.standardError.contains("HINT: take logical backups of its databases"), result.standardError)
        XCTAssertEqual(try connection.query("SELECT checkpoints_req FROM pg_stat_bgwriter").scalar, checkpoints)
        XCTAssertEqual((try? FileManager.default.contentsOfDirectory(atPath: repository + "/backups")) ?? [], [])
    }

    func testRecoverToTimeNameAndLatestThenRefuseWhatCannotBeReached() throws {
        let repository = ownedDirectory("wal-repo") + "/repo"
        let cluster = try PostgresCluster(archiveCommand: walPush(into: repository))
        defer { cluster.stop() }
        let (database, connection) = try itemsDatabase("pitr", on: cluster)

        let base = try physicalBackup(of: database, on: cluster, into: repository, ["--json"])
        let summary = try JSONSerialization.jsonObject(with: Data(base.standardOutput.utf8)) as? [String: Any]
        XCTAssertEqual(summary?["kind"] as? String, "physical")

        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 100)")
        usleep(300_000)
        let targetTime = try connection.query("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')").scalar ?? ""
        usleep(1_100_000)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'B' FROM generate_series(1, 50)")
        try connection.query("SELECT pg_create_restore_point('after_b')")
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'C' FROM generate_series(1, 25)")
        try waitForArchive(connection)

        // Archiving the same segment twice succeeds; different content under its name fails, original kept.
        let archived = try FileManager.default.contentsOfDirectory(atPath: repository + "/wal/00000001").sorted().first { $0.hasSuffix(".gz") && !$0.contains(".backup") }!
        let segmentName = String(archived.dropLast(3))
        let original = try Data(contentsOf: URL(fileURLWithPath: repository + "/wal/00000001/" + archived))
        let scratch = ownedDirectory("wal-copy")
        XCTAssertEqual(try asOwner("dbrestore", ["wal-fetch", segmentName, scratch + "/" + segmentName, "--repo", repository], cluster: cluster).status, 0)
        let again = try asOwner("dbbackup", ["wal-push", scratch + "/" + segmentName, "--repo", repository], cluster: cluster)
        XCTAssertEqual(again.status, 0, again.standardError)
        var forged = try Data(contentsOf: URL(fileURLWithPath: scratch + "/" + segmentName))
        forged[100] ^= 0xFF
        try forged.write(to: URL(fileURLWithPath: scratch + "/" + segmentName))
        let conflict = try asOwner("dbbackup", ["wal-push", scratch + "/" + segmentName, "--repo", repository], cluster: cluster)
        XCTAssertNotEqual(conflict.status, 0)
        XCTAssertTrue(conflict.standardError.contains("DIFFERENT content"), conflict.standardError)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: repository + "/wal/00000001/" + archived)), original)
        let missing = try asOwner("dbrestore", ["wal-fetch", "0000000100000000000000FF", scratch + "/x", "--repo", repository], cluster: cluster)
        XCTAssertEqual(missing.status, 1)
        // A usage error, even one the argument parser catches (a flag without its value), stops recovery.
        for arguments in [["wal-fetch", "0000000100000000000000FF", scratch + "/x", "--repo"], ["wal-fetch"], ["wal-fetch", "a", "b", "--no-such-flag"]] {
            XCTAssertEqual(try asOwner("dbrestore", arguments, cluster: cluster).status, ExitStatus.walFetchFailed.rawValue, "\(arguments)")
        }

        // To the time between A and B.
        let (toTime, timeDirectory, timePort) = try recover(["--target-time", targetTime], repository: repository, cluster: cluster)
        defer { stopServer(timeDirectory) }
        XCTAssertEqual(toTime.status, 0, toTime.standardError)
        XCTAssertEqual(try counts(port: timePort, database: database, cluster: cluster), ["A": "100"])
        let report = try JSONSerialization.jsonObject(with: Data(toTime.standardOutput.utf8)) as? [String: Any]
        XCTAssertEqual(report?["promoted"] as? Bool, true)
        XCTAssertNotNil(report?["last_replayed_transaction"] as? String)

        // To the named restore point: A and B, not C.
        let (toName, nameDirectory, namePort) = try recover(["--target-name", "after_b"], repository: repository, cluster: cluster)
        defer { stopServer(nameDirectory) }
        XCTAssertEqual(toName.status, 0, toName.standardError)
        XCTAssertEqual(try counts(port: namePort, database: database, cluster: cluster), ["A": "100", "B": "50"])

        // To the end of the archive: everything.
        let (latest, latestDirectory, latestPort) = try recover(["--target", "latest"], repository: repository, cluster: cluster)
        defer { stopServer(latestDirectory) }
        XCTAssertEqual(latest.status, 0, latest.standardError)
        XCTAssertEqual(try counts(port: latestPort, database: database, cluster: cluster), ["A": "100", "B": "50", "C": "25"])
        // Promoted at the end of the archive, the server's recovery_end_command released the run's hold itself.
        let hold = ((try JSONSerialization.jsonObject(with: Data(latest.standardOutput.utf8)) as? [String: Any])?["hold"] as? [String: Any])?["id"] as? String ?? "?"
        let serverLog = (try? String(contentsOfFile: latestDirectory + "/dbrestore-recovery.log", encoding: .utf8)) ?? ""
        XCTAssertTrue(serverLog.contains("released hold \(hold)"), serverLog)
        XCTAssertFalse(FileManager.default.fileExists(atPath: repository + "/locks/holds/\(hold).json"))

        // A password the restored server refuses (its pg_hba.conf came with the backup): said at once,
        // not waited out for the hour --start allows recovery (found by an outside attack).
        let started = Date()
        let (refused, refusedDirectory, _) = try recover(["--target", "latest"], repository: repository, cluster: cluster,
                                                         environment: ["PGPASSWORD": "not-the-password"])
        defer { stopServer(refusedDirectory) }
        XCTAssertEqual(refused.status, ExitStatus.databaseUnavailable.rawValue, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("refused our connection") && refused.standardError.contains("password"), refused.standardError)
        XCTAssertLessThan(Date().timeIntervalSince(started), 120)

        // Refusals, each before anything is written.
        let nowhere = ownedDirectory("pitr-refused") + "/data"
        let before = try asOwner("dbrestore", ["--pitr", "--pgdata", nowhere, "--repo", repository, "--target-time", "2001-01-01 00:00:00"], cluster: cluster)
        XCTAssertEqual(before.status, ExitStatus.backupNotFound.rawValue, before.standardError)
        XCTAssertTrue(before.standardError.contains("before the oldest base backup"), before.standardError)
        let future = try asOwner("dbrestore", ["--pitr", "--pgdata", nowhere, "--repo", repository, "--target-time", "2999-01-01 00:00:00"], cluster: cluster)
        XCTAssertEqual(future.status, ExitStatus.backupNotFound.rawValue, future.standardError)
        XCTAssertTrue(future.standardError.contains("beyond the archived WAL"), future.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: nowhere))

        // The restored server runs from latestDirectory: refused as a live server's, even with --move-aside.
        let live = try asOwner("dbrestore", ["--pitr", "--pgdata", latestDirectory, "--repo", repository, "--target", "latest", "--move-aside"], cluster: cluster)
        XCTAssertEqual(live.status, ExitStatus.usage.rawValue, live.standardError)
        XCTAssertTrue(live.standardError.contains("a PostgreSQL server is running from it"), live.standardError)
        let occupiedDirectory = ownedDirectory("pitr-occupied") + "/data"
        try FileManager.default.createDirectory(atPath: occupiedDirectory, withIntermediateDirectories: true)
        try "someone else's".write(toFile: occupiedDirectory + "/notes.txt", atomically: true, encoding: .utf8)
        let occupied = try asOwner("dbrestore", ["--pitr", "--pgdata", occupiedDirectory, "--repo", repository, "--target", "latest"], cluster: cluster)
        XCTAssertEqual(occupied.status, ExitStatus.usage.rawValue, occupied.standardError)
        XCTAssertTrue(occupied.standardError.contains("--move-aside"), occupied.standardError)

        // A segment missing in the middle of the archive is found by the plan.
        let gapped = ownedDirectory("wal-gap") + "/repo"
        XCTAssertEqual(try TestProcess.run("/bin/cp", ["-a", repository, gapped]).status, 0)
        let segments = try FileManager.default.contentsOfDirectory(atPath: gapped + "/wal/00000001").filter { $0.count == 27 }.sorted()
        XCTAssertGreaterThanOrEqual(segments.count, 3, "\(segments)")
        try FileManager.default.removeItem(atPath: gapped + "/wal/00000001/" + segments[segments.count - 2])
        let gap = try asOwner("dbrestore", ["--pitr", "--pgdata", nowhere, "--repo", gapped, "--target", "latest", "--dry-run"], cluster: cluster)
        XCTAssertEqual(gap.status, ExitStatus.backupNotFound.rawValue, gap.standardError)
        XCTAssertTrue(gap.standardError.contains(String(segments[segments.count - 2].dropLast(3))), gap.standardError)
    }

    /// Issue 16 E6: the restore_command --pitr writes works wherever the tool works: dbrestore found
    /// on PATH and run from another directory, an encrypted repository whose key came from a file,
    /// a repository path with spaces, quotes and a percent sign.
    func testRestoreCommandWorksFromPATHWithAKeyFileAndAnAwkwardPath() throws {
        let parent = ownedDirectory("pitr-quoting")
        let plain = parent + "/plain-repo"
        // archive_command sits inside a single-quoted setting: it archives into the plain name, and
        // the restore reads the same directory through a name that needs every kind of quoting.
        let awkward = parent + "/it's a \"repo\" 100% done"
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: awkward, withDestinationPath: plain)
        let keyFile = parent + "/wal key.txt"
        try ("pitr-key-" + UUID().uuidString).write(toFile: keyFile, atomically: true, encoding: .utf8)
        chmod(keyFile, 0o600)
        chownToPostgres(parent)
        let archive = "\"\(TestPaths.executable("dbbackup"))\" wal-push %p --repo \"\(plain)\" --encryption-key-file \"\(keyFile)\""
        let cluster = try PostgresCluster(archiveCommand: archive)
        defer { cluster.stop() }
        let (database, connection) = try itemsDatabase("pitrq", on: cluster)
        try physicalBackup(of: database, on: cluster, into: plain, ["--encryption-key-file", keyFile])
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 20)")
        try waitForArchive(connection)

        // The key by value cannot reach restore_command: refused before anything is written.
        let byValue = ownedDirectory("pitr-by-value") + "/data"
        let refused = try asOwner("dbrestore", ["--pitr", "--pgdata", byValue, "--repo", awkward, "--target", "latest"], cluster: cluster,
                                  environment: ["DBRECOVERY_ENCRYPTION_KEY": try String(contentsOfFile: keyFile, encoding: .utf8)])
        XCTAssertEqual(refused.status, ExitStatus.usage.rawValue, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("--encryption-key-file"), refused.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: byValue))

        // dbrestore found on PATH, started from / (argv[0] is the bare name).
        let directory = ownedDirectory("pitr-target") + "/data"
        let port = try freePort()
        let quoted = ["dbrestore", "--pitr", "--pgdata", directory, "--repo", awkward, "--encryption-key-file", keyFile, "--target", "latest",
                      "--port", String(port), "--start", "--database-url", "postgresql://postgres@127.0.0.1/postgres"]
            .map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        var environment = cluster.environment
        environment["PATH"] = TestPaths.productsDirectory + ":/usr/bin:/bin"
        let launcher = getuid() == 0 ? ["/usr/bin/setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "/bin/sh"] : ["/bin/sh"]
        let result = try TestProcess.run(launcher[0], Array(launcher.dropFirst()) + ["-c", "cd / && exec " + quoted], environment: environment)
        defer { stopServer(directory) }
        XCTAssertEqual(result.status, 0, result.standardError)
        let settings = (try? String(contentsOfFile: directory + "/postgresql.auto.conf", encoding: .utf8)) ?? ""
        XCTAssertTrue(settings.contains("restore_command = '''\(TestPaths.productsDirectory)"), settings)
        XCTAssertTrue(settings.contains("--encryption-key-file"), settings)
        XCTAssertEqual(try counts(port: port, database: database, cluster: cluster), ["A": "20"])
        // recovery_end_command is quoted the same way: the server itself released the hold through the awkward name.
        XCTAssertTrue(settings.contains("recovery_end_command = '''\(TestPaths.productsDirectory)"), settings)
        let serverLog = (try? String(contentsOfFile: directory + "/dbrestore-recovery.log", encoding: .utf8)) ?? ""
        XCTAssertTrue(serverLog.contains("released hold "), serverLog)
        XCTAssertEqual((try? FileManager.default.contentsOfDirectory(atPath: plain + "/locks/holds")) ?? [], [])
    }
}
