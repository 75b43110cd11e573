import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// A restore point made before the newest base backup (found by an outside attack: `dbmigrate`'s
/// restore point before a migration, then the nightly base backup): recovery replays WAL from a base
/// backup's start on only, so the point is reached only from an older base backup. The plan reads the
/// archived WAL for the point and takes the newest base backup that started before it; one it does
/// not find is warned about, naming the older base backups; `--base-backup ID` recovers from the one
/// named; a recovery that ends short of the point says why and what to run instead.
final class PointInTimeRestorePointTests: XCTestCase {
    func testARestorePointBeforeTheNewestBaseBackupIsFoundInTheWALAndReachedFromTheOlderOne() throws {
        let (cluster, repository, database, connection) = try archivingCluster("rpoint")
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 10)")
        try connection.query("SELECT pg_create_restore_point('before_nightly')")
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'B' FROM generate_series(1, 5)")
        try waitForArchive(connection)
        let beforeNightly = try connection.query("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')").scalar ?? ""
        usleep(1_100_000)
        // The nightly base backup, taken after the restore point; another point after it.
        try physicalBackup(of: database, on: cluster, into: repository)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'C' FROM generate_series(1, 3)")
        try connection.query("SELECT pg_create_restore_point('after_nightly')")
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'D' FROM generate_series(1, 2)")
        try waitForArchive(connection)
        let ids = try FileManager.default.contentsOfDirectory(atPath: repository + "/backups").sorted()
        XCTAssertEqual(ids.count, 2, "\(ids)")
        let (older, newest) = (ids[0], ids[1])

        func plan(_ extra: [String]) throws -> (TestProcess.Result, [String: Any]) {
            let result = try asOwner("dbrestore", ["--pitr", "--pgdata", ownedDirectory("rpoint-plan") + "/data", "--repo", repository, "--dry-run"] + extra,
                                     cluster: cluster)
            return (result, (try? JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8))) as? [String: Any] ?? [:])
        }

        // The point before the nightly base backup: found in the WAL, the older base backup taken, the newest skipped saying why.
        let (before, beforePlan) = try plan(["--target-name", "before_nightly", "--json"])
        XCTAssertEqual(before.status, 0, before.standardError)
        XCTAssertEqual(beforePlan["backup_id"] as? String, older, before.standardOutput)
        XCTAssertNotNil(beforePlan["restore_point_lsn"] as? String, before.standardOutput)
        let reason = (beforePlan["skipped"] as? [[String: Any]] ?? []).first { $0["id"] as? String == newest }?["reason"] as? String ?? ""
        XCTAssertTrue(reason.contains("restore point 'before_nightly'") && reason.contains("was made before it started"), before.standardOutput)
        try assertRecovers(["--target-name", "before_nightly"], repository: repository, cluster: cluster, database: database, holding: ["A": "10"])

        // The point after it: the newest base backup, as before.
        let (after, afterPlan) = try plan(["--target-name", "after_nightly", "--json"])
        XCTAssertEqual(after.status, 0, after.standardError)
        XCTAssertEqual(afterPlan["backup_id"] as? String, newest, after.standardOutput)
        XCTAssertNil(afterPlan["restore_point_warning"] as? String, after.standardOutput)

        // A point the archive does not hold: the newest, and the plan says the point must follow its start, naming the older one.
        let (unknownPoint, _) = try plan(["--target-name", "never_made"])
        XCTAssertEqual(unknownPoint.status, 0, unknownPoint.standardError)
        let warning = unknownPoint.standardOutput.split(separator: "\n").first { $0.hasPrefix("warning:") }.map(String.init) ?? ""
        XCTAssertTrue(warning.contains("restore point 'never_made' was not found in the archived WAL; it must have been made after base backup \(newest) started"),
                      unknownPoint.standardOutput)
        XCTAssertTrue(warning.contains("--base-backup ID of an older one: \(older) (started "), unknownPoint.standardOutput)

        // --base-backup the newest for the earlier point: the WAL says it precedes that base backup, refused before extracting naming the one that reaches it.
        let (named, _) = try plan(["--target-name", "before_nightly", "--base-backup", newest])
        XCTAssertEqual(named.status, ExitStatus.backupNotFound.rawValue, named.standardError)
        for words in ["restore point 'before_nightly' (LSN ", "precedes the start of base backup \(newest) (started ", "run with --base-backup \(older) (reaches the one at LSN "] {
            XCTAssertTrue(named.standardError.contains(words), "\(words): \(named.standardError)")
        }

        // A point the WAL does not hold: PostgreSQL ends recovery short of it; the error says why and what to run.
        let (short, shortDirectory, _) = try recover(["--target-name", "never_made"], repository: repository, cluster: cluster)
        defer { stopServer(shortDirectory) }
        XCTAssertEqual(short.status, ExitStatus.restoreFailed.rawValue, short.standardError)
        for words in ["recovery ended before reaching restore point 'never_made'", "may precede base backup \(newest) (taken ",
                      "run again with --base-backup \(older) (started "] {
            XCTAssertTrue(short.standardError.contains(words), "\(words): \(short.standardError)")
        }

        // Refused before anything is written: an unknown id, a logical backup, a base backup ending after the target.
        let nowhere = ownedDirectory("rpoint-refused") + "/data"
        func refused(_ extra: [String]) throws -> TestProcess.Result {
            try asOwner("dbrestore", ["--pitr", "--pgdata", nowhere, "--repo", repository] + extra, cluster: cluster)
        }
        let unknown = try refused(["--target", "latest", "--base-backup", "20010101T000000Z-0000"])
        XCTAssertEqual(unknown.status, ExitStatus.backupNotFound.rawValue, unknown.standardError)
        XCTAssertTrue(unknown.standardError.contains("holds no backup with that id") && unknown.standardError.contains(older), unknown.standardError)
        let logical = try asOwner("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository, "--json"], cluster: cluster)
        XCTAssertEqual(logical.status, 0, logical.standardError)
        let logicalID = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(logical.standardOutput.utf8)) as? [String: Any])?["id"] as? String)
        let notBase = try refused(["--target", "latest", "--base-backup", logicalID])
        XCTAssertEqual(notBase.status, ExitStatus.backupNotFound.rawValue, notBase.standardError)
        XCTAssertTrue(notBase.standardError.contains("is a logical backup of database \(database), not a physical base backup"), notBase.standardError)
        let tooNew = try refused(["--target-time", beforeNightly, "--base-backup", newest])
        XCTAssertEqual(tooNew.status, ExitStatus.usage.rawValue, tooNew.standardError)
        XCTAssertTrue(tooNew.standardError.contains("--base-backup \(newest) finished at") && tooNew.standardError.contains("after --target-time"), tooNew.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: nowhere))
    }

    /// A restore point whose name holds a line end (an outside attack): the setting dbrestore writes is
    /// one line PostgreSQL reads back as that name (it wrote the newline raw; the server refused its config).
    func testARestorePointNameWithALineEndIsWrittenAsPostgreSQLReadsIt() throws {
        let (cluster, repository, _, connection) = try archivingCluster("rpnl")
        let name = "line\none\\two 'q'"
        try connection.query("SELECT pg_create_restore_point($1)", [name])
        try waitForArchive(connection)
        let directory = ownedDirectory("rpnl-target") + "/data"
        let prepared = try asOwner("dbrestore", ["--pitr", "--pgdata", directory, "--repo", repository, "--target-name", name], cluster: cluster)
        XCTAssertEqual(prepared.status, 0, prepared.standardError)
        let postgres = [cluster.binDirectory + "/postgres", "-C", "recovery_target_name", "-D", directory]
        let read = getuid() == 0 ? try TestProcess.run("/usr/bin/setpriv", ["--reuid=postgres", "--regid=postgres", "--init-groups"] + postgres)
            : try TestProcess.run(postgres[0], Array(postgres.dropFirst()))
        XCTAssertEqual(read.status, 0, read.standardError)
        XCTAssertEqual(read.standardOutput, name + "\n", "what PostgreSQL reads from postgresql.auto.conf")
    }
}
