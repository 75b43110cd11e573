import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// A recovery `dbrestore --pitr` prepared holds its base backup and WAL in the repository
/// (`locks/holds/`) until it ends: the nightly `dbprune --yes` keeps them, says why, and the
/// server's recovery_end_command releases the hold at promotion. Real clusters, real repositories.
final class RecoveryHoldTests: XCTestCase {
    /// A cluster archiving into a local repository with two base backups: the first, rows A, a
    /// target time, the second, rows B. A policy keeping one backup would delete the first and the
    /// WAL before the second.
    private struct Setup {
        var cluster: PostgresCluster
        var repository: String
        var database: String
        var target: String
        var first: String
        var second: String
        var policy: String
    }

    private func twoBaseBackups(_ prefix: String, repository given: String? = nil, environment: [String: String] = [:]) throws -> Setup {
        let (cluster, repository, database, connection) = try archivingCluster(prefix, repository: given, environment: environment)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 10)")
        let target = try connection.query("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')").scalar ?? ""
        try waitForArchive(connection)
        usleep(1_100_000)
        try physicalBackup(of: database, on: cluster, into: repository, environment: environment)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'B' FROM generate_series(1, 5)")
        try waitForArchive(connection)
        let listed = try TestProcess.tool("dbrestore", ["list", "--repo", repository, "--json"], environment: environment)
        let ids = ((try JSONSerialization.jsonObject(with: Data(listed.standardOutput.utf8)) as? [[String: Any]]) ?? []).compactMap { $0["id"] as? String }
        XCTAssertEqual(ids.count, 2, listed.standardOutput + listed.standardError)
        let policy = TestPaths.temporaryDirectory(prefix: prefix + "-policy") + "/keep-one.toml"
        try "[local]\nkeep_last = 1\nsnapshots = false\n".write(toFile: policy, atomically: true, encoding: .utf8)
        return Setup(cluster: cluster, repository: repository, database: database, target: target,
                     first: ids.last ?? "", second: ids.first ?? "", policy: policy)
    }

    /// `dbrestore --pitr` without `--start` to the target between the two backups (the first backup's).
    private func prepare(_ setup: Setup) throws -> (directory: String, port: Int, hold: String) {
        let directory = ownedDirectory("hold-target") + "/data"
        let port = try freePort()
        let prepared = try asOwner("dbrestore", ["--pitr", "--pgdata", directory, "--repo", setup.repository, "--target-time", setup.target,
                                                 "--port", String(port), "--json"], cluster: setup.cluster)
        XCTAssertEqual(prepared.status, 0, prepared.standardError)
        let report = try JSONSerialization.jsonObject(with: Data(prepared.standardOutput.utf8)) as? [String: Any]
        let plan = report?["plan"] as? [String: Any]
        XCTAssertEqual(plan?["backup_id"] as? String, setup.first, prepared.standardOutput)
        let hold = (report?["hold"] as? [String: Any])?["id"] as? String ?? ""
        XCTAssertFalse(hold.isEmpty, "no hold in the report: \(prepared.standardOutput)")
        XCTAssertTrue(FileManager.default.fileExists(atPath: setup.repository + "/locks/holds/\(hold).json"))
        let settings = try String(contentsOfFile: directory + "/postgresql.auto.conf", encoding: .utf8)
        XCTAssertTrue(settings.contains("recovery_end_command = '''\(TestPaths.executable("dbrestore"))'' wal-release ''\(hold)'' --repo"), settings)
        return (directory, port, hold)
    }

    private func prune(_ setup: Setup, _ extra: [String]) throws -> TestProcess.Result {
        try asOwner("dbprune", ["--repo", setup.repository, "--policy", setup.policy] + extra, cluster: setup.cluster)
    }

    private func json(_ result: TestProcess.Result) throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any], result.standardError)
    }

    private func decision(_ id: String, in report: [String: Any]) -> [String: Any]? {
        (report["decisions"] as? [[String: Any]])?.first { $0["id"] as? String == id }
    }

    private func walFiles(_ repository: String) -> [String] {
        ((try? FileManager.default.subpathsOfDirectory(atPath: repository + "/wal")) ?? []).filter { $0.hasSuffix(".gz") }.sorted()
    }

    /// The 02:00 restore is prepared without `--start`; the nightly prune with a policy that would
    /// delete its base backup and WAL keeps both and says why; the server started afterwards
    /// recovers to the target from that WAL, and its recovery_end_command releases the hold at
    /// promotion, after which the next prune deletes what the rules say.
    func testAPreparedRecoveryKeepsItsBaseBackupAndWALThroughAPruneUntilItIsPromoted() throws {
        let setup = try twoBaseBackups("hold")
        let (directory, port, hold) = try prepare(setup)
        let place = "held by the recovery prepared at \(ProcessInfo.processInfo.hostName):\(directory) at "

        // The dry run says what is kept and why, in text and in JSON.
        let dryRun = try prune(setup, ["--dry-run"])
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        XCTAssertTrue(dryRun.standardOutput.contains(place), dryRun.standardOutput)
        XCTAssertTrue(dryRun.standardOutput.contains(hold), "the HOLDS table lists it: \(dryRun.standardOutput)")
        XCTAssertTrue(dryRun.standardError.contains("would keep") && dryRun.standardError.contains("WAL file(s) from"), dryRun.standardError)
        XCTAssertTrue(dryRun.standardError.contains("warning: \(place)") && dryRun.standardError.contains("stops protecting at"), dryRun.standardError)
        let planned = try json(try prune(setup, ["--dry-run", "--json"]))
        let first = try XCTUnwrap(decision(setup.first, in: planned))
        XCTAssertEqual(first["action"] as? String, "keep")
        XCTAssertTrue(((first["kept_by"] as? [String]) ?? []).contains { $0.hasPrefix(place) }, "\(first)")
        let holds = planned["holds"] as? [[String: Any]]
        XCTAssertEqual(holds?.count, 1)
        XCTAssertEqual(holds?.first?["id"] as? String, hold)
        XCTAssertEqual(holds?.first?["protecting"] as? Bool, true)
        let firstSegment = try XCTUnwrap((holds?.first?["hold"] as? [String: Any])?["first_segment"] as? String)
        // Only WAL before the held recovery's first segment may go (the second backup alone would free everything before its own).
        let wal = planned["wal"] as? [String: Any]
        XCTAssertEqual(wal?["oldest_needed"] as? String, firstSegment, "\(wal ?? [:])")
        XCTAssertTrue(((wal?["delete"] as? [String]) ?? []).allSatisfy { ($0 as NSString).lastPathComponent < firstSegment }, "\(wal ?? [:])")
        XCTAssertTrue(((wal?["held"] as? [String]) ?? []).first?.contains("from \(firstSegment) on: \(place)") == true, "\(wal ?? [:])")
        XCTAssertTrue(((planned["notes"] as? [String]) ?? []).contains { $0.hasPrefix("warning: \(place)") }, "\(planned["notes"] ?? "")")
        let jsonRun = try prune(setup, ["--dry-run", "--json"])
        XCTAssertTrue(jsonRun.standardError.contains("warning: \(place)"), "loud on stderr with --json too: \(jsonRun.standardError)")

        // The nightly prune deletes nothing the recovery needs, even told to judge ages 30 days on: a
        // run that deletes judges holds by the real clock (`--as-of` used to expire them, and deleted).
        let walBefore = walFiles(setup.repository)
        let metrics = ownedDirectory("hold-metrics") + "/prune.prom"
        let nightly = try prune(setup, ["--yes", "--metrics-file", metrics, "--as-of", Timestamp.format(Date().addingTimeInterval(30 * 86_400))])
        XCTAssertEqual(nightly.status, 0, nightly.standardError)
        let exported = (try? String(contentsOfFile: metrics, encoding: .utf8)) ?? ""
        // (The series carry the repository as a label too: one metrics file may serve several repositories.)
        let series = exported.split(separator: "\n").filter { $0.contains("tool=\"dbprune\"") }
        XCTAssertTrue(series.contains { $0.hasPrefix("dbrecovery_prune_holds{") && $0.hasSuffix("} 1") }
                      && series.contains { $0.hasPrefix("dbrecovery_prune_holds_expired{") && $0.hasSuffix("} 0") }, exported)
        XCTAssertTrue(FileManager.default.fileExists(atPath: setup.repository + "/backups/\(setup.first)/manifest.json"), nightly.standardOutput)
        let needed = walBefore.filter { ($0 as NSString).lastPathComponent >= firstSegment }
        XCTAssertGreaterThanOrEqual(needed.count, 3, "\(walBefore)")
        XCTAssertEqual(walFiles(setup.repository).filter { ($0 as NSString).lastPathComponent >= firstSegment }, needed, nightly.standardError)

        // Started afterwards, the server recovers to the target from that WAL; the hold goes at promotion.
        let connection = try startRecovered(directory, port: port, database: setup.database, cluster: setup.cluster)
        defer { stopServer(directory) }
        XCTAssertEqual(try connection.query("SELECT pg_is_in_recovery()").scalar, "f")
        XCTAssertEqual(try counts(port: port, database: setup.database, cluster: setup.cluster), ["A": "10"])
        let deadline = Date().addingTimeInterval(30)
        while FileManager.default.fileExists(atPath: setup.repository + "/locks/holds/\(hold).json") && Date() < deadline { usleep(200_000) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: setup.repository + "/locks/holds/\(hold).json"), "recovery_end_command did not release the hold")
        let log = (try? String(contentsOfFile: (directory as NSString).deletingLastPathComponent + "/server.log", encoding: .utf8)) ?? ""
        XCTAssertTrue(log.contains("released hold \(hold)"), log)

        // Released: the next prune deletes the first backup and the WAL before the second.
        let after = try prune(setup, ["--yes", "--json"])
        XCTAssertEqual(after.status, 0, after.standardError)
        XCTAssertEqual(decision(setup.first, in: try json(after))?["action"] as? String, "delete")
        XCTAssertFalse(FileManager.default.fileExists(atPath: setup.repository + "/backups/\(setup.first)/manifest.json"))
        XCTAssertLessThan(walFiles(setup.repository).filter { ($0 as NSString).lastPathComponent >= firstSegment }.count, needed.count)
    }

    /// A hold released by hand (`dbprune --release-hold`, with `--dry-run` first) protects nothing
    /// more; an unknown or malformed id is refused naming the holds there are; a hold past
    /// `--hold-expiry` protects nothing and every run warns of it; a `--pitr` that fails leaves no hold.
    func testAHoldIsReleasedByHandExpiresLoudlyAndGoesWithAFailedRun() throws {
        let setup = try twoBaseBackups("release")
        let (_, _, hold) = try prepare(setup)
        let key = setup.repository + "/locks/holds/\(hold).json"

        let unknown = try prune(setup, ["--release-hold", "20200101T000000Z-00000000"])
        XCTAssertEqual(unknown.status, 2, unknown.standardError)
        XCTAssertTrue(unknown.standardError.contains("no hold 20200101T000000Z-00000000") && unknown.standardError.contains(hold), unknown.standardError)
        let malformed = try prune(setup, ["--release-hold", "../../backups/\(setup.first)/manifest"])
        XCTAssertEqual(malformed.status, 2, malformed.standardError)
        XCTAssertTrue(FileManager.default.fileExists(atPath: key))

        // Expired (judged a week and a day from now): it protects nothing, and the run says so loudly.
        let later = Timestamp.format(Date().addingTimeInterval(8 * 86400))
        let expired = try prune(setup, ["--dry-run", "--json", "--as-of", later])
        XCTAssertEqual(expired.status, 0, expired.standardError)
        let expiredReport = try json(expired)
        XCTAssertEqual(decision(setup.first, in: expiredReport)?["action"] as? String, "delete")
        XCTAssertEqual((expiredReport["holds"] as? [[String: Any]])?.first?["protecting"] as? Bool, false)
        XCTAssertFalse(((expiredReport["wal"] as? [String: Any])?["delete"] as? [String] ?? []).isEmpty)
        let expiredText = try prune(setup, ["--dry-run", "--hold-expiry", "1h", "--as-of", Timestamp.format(Date().addingTimeInterval(7200))])
        XCTAssertTrue(expiredText.standardError.contains("warning: hold \(hold)") && expiredText.standardError.contains("protects nothing any more")
                      && expiredText.standardError.contains("dbprune --release-hold \(hold)"), expiredText.standardError)
        XCTAssertTrue(expiredText.standardOutput.contains("expired: protects nothing"), expiredText.standardOutput)

        // By hand: the dry run names it and keeps it; the release deletes it; the server's call later is no error.
        let wouldRelease = try prune(setup, ["--release-hold", hold, "--dry-run"])
        XCTAssertEqual(wouldRelease.status, 0, wouldRelease.standardError)
        XCTAssertTrue(wouldRelease.standardOutput.contains("would release hold \(hold)"), wouldRelease.standardOutput)
        XCTAssertTrue(FileManager.default.fileExists(atPath: key))
        let released = try prune(setup, ["--release-hold", hold])
        XCTAssertEqual(released.status, 0, released.standardError)
        XCTAssertTrue(released.standardOutput.contains("released hold \(hold)"), released.standardOutput)
        XCTAssertFalse(FileManager.default.fileExists(atPath: key))
        let serverCall = try asOwner("dbrestore", ["wal-release", hold, "--repo", setup.repository], cluster: setup.cluster)
        XCTAssertEqual(serverCall.status, 0, serverCall.standardError)
        XCTAssertTrue(serverCall.standardError.contains("already released"), serverCall.standardError)
        let now = try json(try prune(setup, ["--dry-run", "--json"]))
        XCTAssertEqual(decision(setup.first, in: now)?["action"] as? String, "delete")

        // A run that fails after writing its hold (a damaged base backup: exit 23) takes it away again.
        let copy = ownedDirectory("release-damaged") + "/repo"
        let copied = try TestProcess.run("/bin/cp", ["-a", setup.repository, copy])
        XCTAssertEqual(copied.status, 0, copied.standardError)
        let base = copy + "/backups/\(setup.first)/base.tar.gz"
        let handle = try XCTUnwrap(FileHandle(forUpdatingAtPath: base))
        let size = try handle.seekToEnd()
        try handle.seek(toOffset: size / 2)
        let byte = try XCTUnwrap(handle.readData(ofLength: 1).first)
        try handle.seek(toOffset: size / 2)
        handle.write(Data([byte ^ 0xFF]))
        try handle.close()
        let failed = try asOwner("dbrestore", ["--pitr", "--pgdata", ownedDirectory("release-failed") + "/data", "--repo", copy,
                                               "--target-time", setup.target], cluster: setup.cluster)
        XCTAssertEqual(failed.status, 23, failed.standardError)
        let left = (try? FileManager.default.contentsOfDirectory(atPath: copy + "/locks/holds")) ?? []
        XCTAssertEqual(left, [], "the failed run's hold stayed")
    }

    /// A repository this user cannot write (mounted read-only) is still recovered from, as a restore
    /// reads it without a reader lock: without a hold, which the run says (stderr and `hold_problem`),
    /// and without a recovery_end_command that would fail.
    func testAReadOnlyRepositoryIsRecoveredFromWithoutAHoldAndSaysSo() throws {
        guard getuid() == 0 else {
            XCTFail("the test remounts a tmpfs read-only and needs root (run the suite as root, as CI does)")
            return
        }
        let mountPoint = TestPaths.temporaryDirectory(prefix: "hold-tmpfs")
        XCTAssertEqual(try TestProcess.run("/bin/mount", ["-t", "tmpfs", "-o", "size=256m", "tmpfs", mountPoint]).status, 0)
        defer { _ = try? TestProcess.run("/bin/umount", [mountPoint]) }
        chownToPostgres(mountPoint)
        let repository = mountPoint + "/repo"
        let cluster = try PostgresCluster(archiveCommand: walPush(into: repository))
        defer { cluster.stop() }
        let (database, connection) = try itemsDatabase("holdro", on: cluster)
        try physicalBackup(of: database, on: cluster, into: repository)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 10)")
        try waitForArchive(connection)
        XCTAssertEqual(try TestProcess.run("/bin/mount", ["-o", "remount,ro", mountPoint]).status, 0)

        let directory = ownedDirectory("hold-ro-target") + "/data"
        let prepared = try asOwner("dbrestore", ["--pitr", "--pgdata", directory, "--repo", repository, "--target", "latest", "--json"], cluster: cluster)
        XCTAssertEqual(prepared.status, 0, prepared.standardError)
        let report = try json(prepared)
        XCTAssertNil(report["hold"], prepared.standardOutput)
        XCTAssertTrue((report["hold_problem"] as? String)?.contains("no hold written") == true, prepared.standardOutput)
        XCTAssertTrue(prepared.standardError.contains("no hold written") && prepared.standardError.contains("may delete the WAL this recovery reads"),
                      prepared.standardError)
        let settings = try String(contentsOfFile: directory + "/postgresql.auto.conf", encoding: .utf8)
        XCTAssertTrue(settings.contains("restore_command"), settings)
        XCTAssertFalse(settings.contains("recovery_end_command"), settings)
    }

    /// On S3: the hold is an object beside the lock records, `dbprune --dry-run` keeps the base
    /// backup for it, and the server started with the S3 settings releases it at promotion.
    func testOnS3TheHoldKeepsTheBaseBackupAndGoesAtPromotion() throws {
        let s3 = try S3Server.shared()
        let repository = "s3://\(try s3.createBucket())/hold"
        let environment = s3.environment()
        let setup = try twoBaseBackups("holds3", repository: repository, environment: environment)
        let cluster = setup.cluster
        defer { cluster.stop() }
        let parent = ownedDirectory("hold-s3-target")
        let directory = parent + "/data"
        let port = try freePort()
        let prepared = try asOwner("dbrestore", ["--pitr", "--pgdata", directory, "--repo", repository, "--target-time", setup.target,
                                                 "--port", String(port), "--json"], cluster: cluster, environment: environment)
        XCTAssertEqual(prepared.status, 0, prepared.standardError)
        let hold = ((try json(prepared))["hold"] as? [String: Any])?["id"] as? String ?? ""
        XCTAssertFalse(hold.isEmpty, prepared.standardOutput)
        let backup = setup.first

        let policy = TestPaths.temporaryDirectory(prefix: "hold-s3-policy") + "/p.toml"
        // Three hours on, both backups are due for GLACIER: the held one stays where wal-fetch and a rerun read it quickly.
        try "[s3]\nkeep_last = 0\nkeep_within = \"1d\"\nglacier_after = \"1h\"\nsnapshots = false\n".write(toFile: policy, atomically: true, encoding: .utf8)
        let later = Timestamp.format(Date().addingTimeInterval(3 * 3600))
        let planned = try asOwner("dbprune", ["--repo", repository, "--policy", policy, "--dry-run", "--json", "--as-of", later],
                                  cluster: cluster, environment: environment)
        XCTAssertEqual(planned.status, 0, planned.standardError)
        let report = try json(planned)
        XCTAssertEqual(decision(backup, in: report)?["action"] as? String, "keep", planned.standardOutput)
        XCTAssertTrue(((decision(backup, in: report)?["kept_by"] as? [String]) ?? []).contains { $0.hasPrefix("held by the recovery prepared at") })
        XCTAssertEqual((report["holds"] as? [[String: Any]])?.first?["id"] as? String, hold)
        XCTAssertEqual(decision(setup.second, in: report)?["action"] as? String, "move-to-glacier", planned.standardOutput)
        let tiered = try asOwner("dbprune", ["--repo", repository, "--policy", policy, "--yes", "--json", "--as-of", later],
                                 cluster: cluster, environment: environment)
        XCTAssertEqual(tiered.status, 0, tiered.standardError)
        let after = try json(try asOwner("dbprune", ["--repo", repository, "--policy", policy, "--dry-run", "--json"], cluster: cluster, environment: environment))
        XCTAssertEqual(decision(setup.second, in: after)?["storage_class"] as? String, "GLACIER", "\(after["decisions"] ?? "")")
        XCTAssertNotEqual(decision(backup, in: after)?["storage_class"] as? String, "GLACIER", "\(after["decisions"] ?? "")")
        XCTAssertTrue(((report["notes"] as? [String]) ?? []).contains { $0.contains("expires backups/ objects after 1 days on S3's own") },
                      "\(report["notes"] ?? "")")

        // The server, started with the S3 settings as its restore_command needs, releases the hold at promotion.
        let connection = try startRecovered(directory, port: port, database: setup.database, cluster: cluster, environment: environment)
        defer { stopServer(directory) }
        XCTAssertEqual(try connection.query("SELECT pg_is_in_recovery()").scalar, "f")
        let deadline = Date().addingTimeInterval(30)
        var remaining: [[String: Any]]? = nil
        while Date() < deadline {
            let listing = try asOwner("dbprune", ["--repo", repository, "--policy", policy, "--dry-run", "--json"], cluster: cluster, environment: environment)
            remaining = (try? json(listing))?["holds"] as? [[String: Any]]
            if remaining?.isEmpty == true { break }
            usleep(500_000)
        }
        XCTAssertEqual(remaining?.count, 0, "recovery_end_command did not release the hold: \(remaining ?? [])")
        XCTAssertEqual(try counts(port: port, database: setup.database, cluster: cluster), ["A": "10"])
    }
}
