import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// `dbbackup --physical` ends by waiting for the server to archive the backup's last WAL segment.
/// An archive_command that keeps failing held that wait forever, in silence; now the failure is said
/// at once, the wait is bounded by `--archive-timeout` (exit 14, nothing stored, no walsender left
/// waiting), a signal ends it, and an archiver that recovers lets the backup finish.
/// Also: a role refused a control-data function gets one line with the GRANT that fixes it.
final class ArchiveWaitTests: XCTestCase {
    /// A cluster whose archive_command (`dbbackup wal-push`) fails while `flag` exists, takes 2 s
    /// more per segment while `flag.slow` exists, and hangs for 20 s while `flag.hang` exists.
    private func flakyArchiver(_ prefix: String) throws -> (cluster: PostgresCluster, repository: String, database: String, flag: String) {
        let directory = ownedDirectory(prefix)
        let repository = directory + "/repo", flag = directory + "/archive-fails"
        let cluster = try PostgresCluster(archiveCommand: "if [ -e \(flag).slow ]; then sleep 2; fi; if [ -e \(flag).hang ]; then sleep 20; fi; "
                                                          + "test ! -e \(flag) && \(walPush(into: repository))")
        addTeardownBlock { cluster.stop() }
        let (database, _) = try itemsDatabase(prefix.replacingOccurrences(of: "-", with: "_"), on: cluster)
        return (cluster, repository, database, flag)
    }

    /// Starts `dbbackup` as the server's OS user, its stderr collected.
    private func startBackup(_ arguments: [String], cluster: PostgresCluster, environment extra: [String: String] = [:]) throws -> (ChildProcess, OutputCollector) {
        let environment = cluster.environment.merging(extra) { _, new in new }
        let (executable, prefix) = getuid() == 0
            ? ("/usr/bin/setpriv", ["--reuid=postgres", "--regid=postgres", "--init-groups", TestPaths.executable("dbbackup")])
            : (TestPaths.executable("dbbackup"), [])
        let process = try ChildProcess(executable: executable, arguments: prefix + arguments, environment: environment,
                                       stdin: .null, stdout: .null, stderr: .pipe)
        return (process, OutputCollector(descriptor: process.standardError, limit: 1 << 20))
    }

    private func waitForLine(_ text: String, in output: OutputCollector, within seconds: TimeInterval = 60) {
        let deadline = Date().addingTimeInterval(seconds)
        while !output.soFar.contains(text) && !output.ended && Date() < deadline { usleep(20_000) }
        XCTAssertTrue(output.soFar.contains(text), "never printed '\(text)': \(output.soFar)")
    }

    /// `dbbackup --physical` expected to give up the wait after `--archive-timeout timeout`: exit 14.
    /// Returns its stderr.
    private func backupGivingUp(_ cluster: PostgresCluster, database: String, repository: String, timeout: String, file: StaticString = #filePath,
                                line: UInt = #line) throws -> String {
        let (process, output) = try startBackup(["--physical", "--database-url", cluster.url(database: database), "--repo", repository,
                                                 "--archive-timeout", timeout], cluster: cluster)
        let termination = process.waitForExit(within: 90, orFail: "dbbackup --physical still waits for the archiver: \(output.soFar)")
        let stderr = output.finish()
        XCTAssertEqual(termination.exitCode, ExitStatus.archiveTimeout.rawValue, stderr, file: file, line: line)
        return stderr
    }

    /// The backups the repository lists (`backups/<id>/manifest.json`), and any files under backups/.
    private func backupEntries(_ repository: String) -> [String] {
        (FileManager.default.enumerator(atPath: repository + "/backups")?.allObjects as? [String] ?? []).sorted()
    }

    /// pg_basebackup's walsenders on `cluster`: none is left waiting on the archiver after a run ends.
    private func assertNoWalsenderLeft(_ cluster: PostgresCluster, file: StaticString = #filePath, line: UInt = #line) throws {
        let connection = try cluster.connect()
        let deadline = Date().addingTimeInterval(10)
        var senders = "?"
        while Date() < deadline {
            senders = try connection.query("SELECT count(*)::text FROM pg_stat_progress_basebackup").scalar ?? "?"
            if senders == "0" { return }
            usleep(50_000)
        }
        XCTFail("a base backup is still running on the server (its walsender was left waiting): \(senders)", file: file, line: line)
    }

    func testAlwaysFailingArchiveCommandFailsWithinTheTimeoutNamingTheSegmentAndStoresNothing() throws {
        let (cluster, repository, database, flag) = try flakyArchiver("archive-fails")
        _ = FileManager.default.createFile(atPath: flag, contents: Data())
        let started = Date()
        let stderr = try backupGivingUp(cluster, database: database, repository: repository, timeout: "5s")
        XCTAssertLessThan(Date().timeIntervalSince(started), 60, "the wait was not bounded by --archive-timeout 5s: \(stderr)")
        // Said at once, while waiting: which segment, that archive_command fails, where to look.
        XCTAssertTrue(stderr.contains("archive_command is failing on 0000"), stderr)
        XCTAssertTrue(stderr.contains("the server log says why"), stderr)
        // The error: one line naming the segment, and the fix.
        let errors = stderr.split(separator: "\n").filter { $0.contains(": error: ") }
        XCTAssertEqual(errors.count, 1, stderr)
        XCTAssertTrue(errors.first?.contains("archive_command failed on WAL segment 0000") == true, stderr)
        XCTAssertTrue(errors.first?.contains("--archive-timeout 5 s") == true, stderr)
        XCTAssertTrue(stderr.contains("HINT: the server log says why archive_command fails"), stderr)
        // Nothing stored, nothing listed, no walsender left waiting on the archiver.
        XCTAssertEqual(backupEntries(repository), [], stderr)
        let list = try TestProcess.tool("dbrestore", ["list", "--repo", repository, "--json"])
        XCTAssertFalse(list.standardOutput.contains("\"physical\""), list.standardOutput + list.standardError)
        try assertNoWalsenderLeft(cluster)
    }

    /// The outside attack's case: a second server archiving into the first one's repository, whose
    /// segment names are the first's with other content; `wal-push` refuses each retry (exit 20).
    func testASecondServerArchivingIntoTheSameRepositoryGetsExit14NamingTheRefusedSegment() throws {
        let (_, repository, _, first) = try archivingCluster("archive_shared")
        try waitForArchive(first)
        let second = try PostgresCluster(archiveCommand: walPush(into: repository))
        addTeardownBlock { second.stop() }
        let (database, _) = try itemsDatabase("archive_shared_b", on: second)
        let before = backupEntries(repository)
        let stderr = try backupGivingUp(second, database: database, repository: repository, timeout: "5s")
        XCTAssertTrue(stderr.contains("archive_command is failing on 0000"), stderr)
        XCTAssertTrue(stderr.contains("error: the base backup's WAL never reached the archive: archive_command failed on WAL segment 0000"), stderr)
        XCTAssertTrue(second.serverLogTail(400).contains("DIFFERENT content"), "the refusal is in the server log the message points at")
        XCTAssertEqual(backupEntries(repository), before, stderr)
        try assertNoWalsenderLeft(second)
    }

    /// archive_command failed on a segment before the backup (the server's statistics still say so),
    /// then its retry hangs: the wait is given up calling the command hung, not failing (PostgreSQL
    /// 15's ArchiveCommand wait event on the archiver), and leaves nothing behind.
    func testAHungArchiveCommandAfterAnEarlierFailureIsReportedAsHung() throws {
        let (cluster, repository, database, flag) = try flakyArchiver("archive-hung")
        _ = FileManager.default.createFile(atPath: flag, contents: Data())
        let connection = try cluster.connect(database: database)
        _ = try connection.query("SELECT pg_logical_emit_message(false, 'dbrecovery-tests', 'fail')")
        _ = try connection.query("SELECT pg_switch_wal()")
        let deadline = Date().addingTimeInterval(30)
        while try connection.query("SELECT failed_count::text FROM pg_stat_archiver").scalar == "0", Date() < deadline { usleep(100_000) }
        XCTAssertNotEqual(try connection.query("SELECT failed_count::text FROM pg_stat_archiver").scalar, "0", "archive_command never failed")
        try FileManager.default.removeItem(atPath: flag)
        _ = FileManager.default.createFile(atPath: flag + ".hang", contents: Data())
        let stderr = try backupGivingUp(cluster, database: database, repository: repository, timeout: "8s")
        XCTAssertTrue(stderr.contains("archive_command has been running for"), stderr)
        let errors = stderr.split(separator: "\n").filter { $0.contains(": error: ") }
        XCTAssertEqual(errors.count, 1, stderr)
        XCTAssertTrue(errors.first?.contains("without returning") == true, stderr)
        XCTAssertTrue(errors.first?.contains("hung, not failing") == true, stderr)
        XCTAssertFalse(errors.first?.contains("archive_command failed on") == true, stderr)
        XCTAssertEqual(backupEntries(repository), [], stderr)
        try assertNoWalsenderLeft(cluster)
    }

    func testArchiverThatRecoversDuringTheWaitLetsTheBackupFinishAfterTheWarning() throws {
        let (cluster, repository, database, flag) = try flakyArchiver("archive-recovers")
        _ = FileManager.default.createFile(atPath: flag, contents: Data())
        let (process, output) = try startBackup(["--physical", "--database-url", cluster.url(database: database), "--repo", repository,
                                                 "--archive-timeout", "5m"], cluster: cluster)
        waitForLine("archive_command is failing on", in: output)
        // archive_command works again; a new segment wakes the archiver from its pause after failures.
        try FileManager.default.removeItem(atPath: flag)
        let connection = try cluster.connect(database: database)
        _ = try connection.query("SELECT pg_logical_emit_message(false, 'dbrecovery-tests', 'wake')")
        _ = try connection.query("SELECT pg_switch_wal()")
        let termination = process.waitForExit(within: 120, orFail: "the backup did not finish once archiving worked: \(output.soFar)")
        let stderr = output.finish()
        XCTAssertEqual(termination.exitCode, 0, stderr)
        XCTAssertTrue(stderr.contains("warning: base backup"), stderr)
        let list = try TestProcess.tool("dbrestore", ["list", "--repo", repository, "--json"])
        XCTAssertTrue(list.standardOutput.contains("\"physical\""), list.standardOutput + list.standardError)
    }

    func testSlowArchiverGetsProgressLinesAndTheBackupFinishes() throws {
        let (cluster, repository, database, flag) = try flakyArchiver("archive-slow")
        _ = FileManager.default.createFile(atPath: flag + ".slow", contents: Data())
        let backup = try physicalBackup(of: database, on: cluster, into: repository, ["--archive-timeout", "2m"],
                                        environment: ["DBRECOVERY_ARCHIVE_WAIT_REPORT": "1"])
        XCTAssertTrue(backup.standardError.contains("s for the server to archive its last WAL segment (last archived: "), backup.standardError)
        XCTAssertFalse(backup.standardError.contains("warning:"), backup.standardError)
    }

    func testSignalDuringTheWaitEndsItPromptlyAndLeavesNothing() throws {
        let (cluster, repository, database, flag) = try flakyArchiver("archive-signal")
        _ = FileManager.default.createFile(atPath: flag, contents: Data())
        for signal in [SIGTERM, SIGINT] {
            let (process, output) = try startBackup(["--physical", "--database-url", cluster.url(database: database), "--repo", repository,
                                                     "--archive-timeout", "10m"], cluster: cluster)
            waitForLine("archive_command is failing on", in: output)
            process.send(signal)
            let termination = process.waitForExit(within: 30, orFail: "signal \(signal) did not end the wait: \(output.soFar)")
            let stderr = output.finish()
            XCTAssertEqual(termination.exitCode, ExitStatus.interrupted.rawValue, stderr)
            XCTAssertEqual(backupEntries(repository), [], stderr)
            try assertNoWalsenderLeft(cluster)
        }
    }

    func testRoleWithoutControlFunctionGetsTheGrantThatFixesIt() throws {
        let cluster = try PostgresCluster()
        addTeardownBlock { cluster.stop() }
        let admin = try cluster.connect()
        let role = "app_\(UInt32.random(in: 0...UInt32.max))"
        try admin.execute(script: "CREATE ROLE \(role) LOGIN CREATEDB PASSWORD '\(cluster.password)'")
        let database = try cluster.createDatabase(prefix: "hardened", seed: "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        try admin.execute(script: "ALTER DATABASE \(database) OWNER TO \(role)")
        try cluster.connect(database: database).execute(script: "ALTER TABLE t OWNER TO \(role)")
        // Functions' privileges belong to each database's catalogue: revoked in the one backed up.
        let owner = try cluster.connect(database: database)
        try owner.execute(script: "REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
        let repository = TestPaths.temporaryDirectory(prefix: "hardened-repo") + "/repo"
        let url = "postgresql://\(role)@127.0.0.1:\(cluster.port)/\(database)"
        let refused = try TestProcess.tool("dbbackup", ["--database-url", url, "--repo", repository], cluster: cluster)
        XCTAssertEqual(refused.status, ExitStatus.databaseError.rawValue, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("role \(role) lacks EXECUTE on pg_control_system()"), refused.standardError)
        XCTAssertTrue(refused.standardError.contains("GRANT EXECUTE ON FUNCTION pg_catalog.pg_control_system() TO \"\(role)\""), refused.standardError)
        XCTAssertFalse(refused.standardError.contains("permission denied for function"), refused.standardError)
        XCTAssertEqual(refused.standardError.split(separator: "\n").filter { $0.contains(": error: ") }.count, 1, refused.standardError)
        // The grant named is the one that fixes it.
        try owner.execute(script: "GRANT EXECUTE ON FUNCTION pg_catalog.pg_control_system() TO \"\(role)\"")
        let backup = try TestProcess.tool("dbbackup", ["--database-url", url, "--repo", repository], cluster: cluster)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        // pg_control_checkpoint() (the timeline) likewise.
        try owner.execute(script: "REVOKE EXECUTE ON FUNCTION pg_control_checkpoint() FROM PUBLIC")
        let noCheckpoint = try TestProcess.tool("dbbackup", ["--database-url", url, "--repo", repository], cluster: cluster)
        XCTAssertEqual(noCheckpoint.status, ExitStatus.databaseError.rawValue, noCheckpoint.standardError)
        XCTAssertTrue(noCheckpoint.standardError.contains("GRANT EXECUTE ON FUNCTION pg_catalog.pg_control_checkpoint() TO \"\(role)\""), noCheckpoint.standardError)
        try owner.execute(script: "GRANT EXECUTE ON FUNCTION pg_catalog.pg_control_checkpoint() TO \"\(role)\"")
        // A base backup also needs REPLICATION: named with its ALTER ROLE.
        let physical = try TestProcess.tool("dbbackup", ["--physical", "--database-url", url, "--repo", repository], cluster: cluster)
        XCTAssertEqual(physical.status, ExitStatus.databaseError.rawValue, physical.standardError)
        XCTAssertTrue(physical.standardError.contains("ALTER ROLE \"\(role)\" REPLICATION"), physical.standardError)
    }
}
