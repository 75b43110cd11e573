import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// Whose WAL `dbrestore --pitr` relies on (found by an outside attack): segment names say nothing
/// about the server, so another server's segments whose names continue this one's were counted as
/// its own (the plan promised targets recovery could not reach) and handed to PostgreSQL, which
/// refused them mid-replay. And a damaged segment was reported after recovery as "not in the archive".
final class WALOwnershipTests: XCTestCase {
    private func lastArchived(_ connection: PostgresConnection) throws -> String {
        try connection.query("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").scalar ?? ""
    }

    private func systemIdentifier(of cluster: PostgresCluster) throws -> String {
        try XCTUnwrap(try cluster.scalar("SELECT system_identifier::text FROM pg_control_system()", database: "postgres"))
    }

    /// Segment `name` of `repository` as PostgreSQL wrote it, at `path` (no data directory around it: not checked).
    private func fetch(_ name: String, from repository: String, to path: String, cluster: PostgresCluster) throws {
        let result = try asOwner("dbrestore", ["wal-fetch", name, path, "--repo", repository], cluster: cluster)
        XCTAssertEqual(result.status, 0, result.standardError)
    }

    func testAnotherServersSegmentsAfterThisOnesEndThePlanAndAreNeitherFetchedNorPushed() throws {
        // Server A archives into its repository; server B (initdb'd on its own) into another.
        let (first, repository, database, connectionA) = try archivingCluster("owna")
        try connectionA.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 10)")
        try waitForArchive(connectionA)
        let (second, otherRepository, _, connectionB) = try archivingCluster("ownb")
        let systemA = try systemIdentifier(of: first), systemB = try systemIdentifier(of: second)
        XCTAssertNotEqual(systemA, systemB)
        // Both have archived the same segment name last: the one behind switches until it is so.
        for _ in 0..<20 {
            let (a, b) = (try lastArchived(connectionA), try lastArchived(connectionB))
            if a == b { break }
            try waitForArchive(a < b ? connectionA : connectionB)
        }
        let ownLast = try lastArchived(connectionA)
        XCTAssertEqual(try lastArchived(connectionB), ownLast)
        // B archives two more, and they reach A's repository (B's archive_command given A's --repo):
        // names that continue A's WAL, each pushed by wal-push as B's archive_command would.
        try waitForArchive(connectionB)
        try waitForArchive(connectionB)
        let foreign = try XCTUnwrap(WALSegmentName.next(after: ownLast)), beyondForeign = try XCTUnwrap(WALSegmentName.next(after: foreign))
        let work = ownedDirectory("own-work")
        for name in [foreign, beyondForeign] {
            try fetch(name, from: otherRepository, to: work + "/" + name, cluster: second)
            let push = try asOwner("dbbackup", ["wal-push", work + "/" + name, "--repo", repository], cluster: second)
            XCTAssertEqual(push.status, 0, push.standardError)
        }

        // The plan ends A's WAL before B's segments, names them and both servers, and refuses targets past them.
        let target = ownedDirectory("own-target") + "/data"
        func plan(_ extra: [String]) throws -> TestProcess.Result {
            try asOwner("dbrestore", ["--pitr", "--pgdata", target, "--repo", repository, "--dry-run", "--json"] + extra, cluster: first)
        }
        let latest = try plan(["--target", "latest"])
        XCTAssertEqual(latest.status, 0, latest.standardError)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(latest.standardOutput.utf8)) as? [String: Any])
        XCTAssertEqual(json["last_archived_segment"] as? String, ownLast, latest.standardOutput)
        let named = "WAL segment \(foreign) and later in the archive were written by another server (system \(systemB)), not this one (system \(systemA))"
        XCTAssertTrue((json["wal_warning"] as? String ?? "").contains(named), latest.standardOutput)
        let beyondStart = try XCTUnwrap(WALSegmentName.segmentNumber(of: beyondForeign)) * WALSegmentName.defaultSegmentSize
        for extra in [["--target-lsn", WALSegmentName.formatLSN(beyondStart)], ["--target-time", "2999-01-01 00:00:00"]] {
            let refused = try plan(extra)
            XCTAssertEqual(refused.status, ExitStatus.backupNotFound.rawValue, "\(extra): " + refused.standardError)
            XCTAssertTrue(refused.standardError.contains("beyond this server's archived WAL"), "\(extra): " + refused.standardError)
            XCTAssertTrue(refused.standardError.contains(named), "\(extra): " + refused.standardError)
            XCTAssertTrue(refused.standardError.contains("give each its own --repo"), "\(extra): " + refused.standardError)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: target), "nothing written")

        // wal-fetch in A's data directory (its pg_control): B's segment is "not found" (exit 1) and
        // named as B's in the log; A's own comes as before.
        let recovering = ownedDirectory("own-fetch")
        for directory in ["global", "pg_wal"] {
            try FileManager.default.createDirectory(atPath: recovering + "/" + directory, withIntermediateDirectories: true)
        }
        try FileManager.default.copyItem(atPath: first.directory + "/data/global/pg_control", toPath: recovering + "/global/pg_control")
        chownToPostgres(recovering)
        let destination = recovering + "/pg_wal/RECOVERYXLOG"
        let refused = try asOwner("dbrestore", ["wal-fetch", foreign, destination, "--repo", repository], cluster: first)
        XCTAssertEqual(refused.status, 1, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("WAL file \(foreign) in the archive was written by another server (system \(systemB)), "
                                                      + "not the one being recovered (system \(systemA))"), refused.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: destination), "nothing left where PostgreSQL looks")
        // The same through the prefetcher's spool (--prefetch): checked where both paths end.
        let prefetched = try asOwner("dbrestore", ["wal-fetch", foreign, destination, "--prefetch", "2", "--repo", repository], cluster: first)
        XCTAssertEqual(prefetched.status, 1, prefetched.standardError)
        XCTAssertTrue(prefetched.standardError.contains("written by another server (system \(systemB))"), prefetched.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: destination))
        let own = try asOwner("dbrestore", ["wal-fetch", ownLast, destination, "--repo", repository], cluster: first)
        XCTAssertEqual(own.status, 0, own.standardError)
        XCTAssertTrue(FileManager.default.fileExists(atPath: destination))

        // wal-push of B's segment under a name A's WAL holds: refused, naming both servers.
        try fetch(ownLast, from: otherRepository, to: work + "/" + ownLast, cluster: second)
        let collision = try asOwner("dbbackup", ["wal-push", work + "/" + ownLast, "--repo", repository], cluster: second)
        XCTAssertEqual(collision.status, ExitStatus.repositoryError.rawValue, collision.standardError)
        XCTAssertTrue(collision.standardError.contains("WAL file \(ownLast) is already archived in \(repository) with DIFFERENT content, "
                                                       + "written by another server (system \(systemA)), not this one (system \(systemB))"),
                      collision.standardError)

        // Recovery to the end of A's WAL: A's rows, promoted before B's segment, which wal-fetch refused in the log.
        let (result, directory, port) = try recover(["--target", "latest"], repository: repository, cluster: first)
        defer { stopServer(directory) }
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertEqual(try counts(port: port, database: database, cluster: first), ["A": "10"])
        let log = (try? String(contentsOfFile: directory + "/dbrestore-recovery.log", encoding: .utf8)) ?? ""
        XCTAssertTrue(log.contains("WAL file \(foreign) in the archive was written by another server (system \(systemB))"), log)
    }

    func testADamagedSegmentIsNamedAsDamagedWhenRecoveryStopsAtIt() throws {
        let (cluster, repository, _, connection) = try archivingCluster("owndamaged")
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 10)")
        try waitForArchive(connection)
        let damaged = try XCTUnwrap(connection.query("SELECT pg_walfile_name(pg_current_wal_insert_lsn())").scalar)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'B' FROM generate_series(1, 10)")
        try waitForArchive(connection)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'C' FROM generate_series(1, 10)")
        try waitForArchive(connection)
        let path = repository + "/wal/" + String(damaged.prefix(8)) + "/" + damaged + ".gz"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        for offset in (bytes.count / 2)..<(bytes.count / 2 + 16) { bytes[offset] ^= 0xFF }
        try bytes.write(to: URL(fileURLWithPath: path))
        chownToPostgres(repository)

        // --dry-run says what it does not read.
        let dryRun = try asOwner("dbrestore", ["--pitr", "--pgdata", ownedDirectory("own-damaged-plan") + "/data", "--repo", repository,
                                               "--target", "latest", "--dry-run"], cluster: cluster)
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        XCTAssertTrue(dryRun.standardOutput.contains("their contents are not read here: wal-fetch checks each as recovery reads it"), dryRun.standardOutput)

        let (result, directory, _) = try recover(["--target", "latest"], repository: repository, cluster: cluster)
        defer { stopServer(directory) }
        XCTAssertEqual(result.status, ExitStatus.restoreFailed.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("archived WAL file \(damaged) is damaged"), result.standardError)
        XCTAssertTrue(result.standardError.contains("put an intact copy of \(damaged) into the archive"), result.standardError)
        XCTAssertTrue(result.standardError.contains("or recover to a target before it"), result.standardError)
        XCTAssertFalse(result.standardError.contains("was not in the archive"), result.standardError)
        let log = (try? String(contentsOfFile: directory + "/dbrestore-recovery.log", encoding: .utf8)) ?? ""
        XCTAssertTrue(log.contains("archived WAL file \(damaged) is damaged"), log)
    }
}
