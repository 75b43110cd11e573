import BackupStorage
import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// `dbrestore --pitr` where a wrong move loses data: a live server's directory, two runs into one
/// directory, a gap in the archive, a target time's microseconds, an LSN past the archive
/// (found by an outside attack, round 7).
final class PointInTimeSafetyTests: XCTestCase {
    private func archivingCluster(_ prefix: String) throws -> (PostgresCluster, String) {
        let repository = ownedDirectory(prefix) + "/repo"
        let cluster = try PostgresCluster(archiveCommand: walPush(into: repository))
        return (cluster, repository)
    }

    /// A copy of `repository` (the server's user's) with one byte in the middle of `file` flipped.
    private func copyWithAByteFlipped(_ repository: String, prefix: String, in file: String) throws -> String {
        let copy = ownedDirectory(prefix) + "/repo"
        XCTAssertEqual(try TestProcess.run("/bin/cp", ["-a", repository, copy]).status, 0)
        let path = copy + "/" + file
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        data[data.count / 2] ^= 0xFF
        try data.write(to: URL(fileURLWithPath: path))
        chownToPostgres(copy)
        return copy
    }

    /// An archiving cluster with a base backup of a new `items` database and ten 'A' rows archived
    /// after it: what most of these tests start from. The caller stops the cluster.
    private func clusterWithABaseBackup(_ prefix: String, database databasePrefix: String) throws
        -> (cluster: PostgresCluster, repository: String, database: String, connection: PostgresConnection) {
        let (cluster, repository) = try archivingCluster(prefix)
        do {
            let (database, connection) = try itemsDatabase(databasePrefix, on: cluster)
            try physicalBackup(of: database, on: cluster, into: repository)
            try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 10)")
            try waitForArchive(connection)
            return (cluster, repository, database, connection)
        } catch {
            cluster.stop()
            throw error
        }
    }

    /// Issue 5: `--move-aside` (and `--dry-run`) refuses the data directory of a running server and
    /// a directory holding one, naming its postmaster PID; the server keeps running from where it was.
    func testARunningServersDataDirectoryIsNeverMovedAsideOrRestoredInto() throws {
        let (cluster, repository, _, connection) = try clusterWithABaseBackup("pitr-live", database: "pitrlive")
        defer { cluster.stop() }
        let data = cluster.directory + "/data"
        let pid = try XCTUnwrap(String(contentsOfFile: data + "/postmaster.pid", encoding: .utf8).split(separator: "\n").first.map(String.init))

        for (pgdata, extra) in [(data, ["--move-aside"]), (data, ["--move-aside", "--dry-run"]), (data, []), (cluster.directory, ["--move-aside"])] {
            let result = try asOwner("dbrestore", ["--pitr", "--pgdata", pgdata, "--repo", repository, "--target", "latest"] + extra, cluster: cluster)
            XCTAssertEqual(result.status, ExitStatus.usage.rawValue, "\(pgdata) \(extra): " + result.standardError)
            XCTAssertTrue(result.standardError.contains("a PostgreSQL server is running from it, postmaster PID \(pid)"), result.standardError)
            XCTAssertTrue(result.standardError.contains("pg_ctl -D \(data) stop"), result.standardError)
        }
        let siblings = try FileManager.default.contentsOfDirectory(atPath: cluster.directory)
        XCTAssertFalse(siblings.contains { $0.contains(".moved-") }, "\(siblings)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: cluster.directory + ".moved-"), "nothing renamed")
        XCTAssertEqual(try connection.query("SELECT count(*) FROM items").scalar, "10", "the server still runs from its directory")
        let resolved = { (path: String) in URL(fileURLWithPath: path).resolvingSymlinksInPath().path }
        XCTAssertEqual(try connection.query("SELECT current_setting('data_directory')").scalar.map(resolved), resolved(data))

        // A stale postmaster.pid (its server gone) does not block: a directory a server left behind
        // after a crash is moved aside as before.
        let stale = ownedDirectory("pitr-stale") + "/data"
        try FileManager.default.createDirectory(atPath: stale, withIntermediateDirectories: true)
        try "999999\n\(stale)\n".write(toFile: stale + "/postmaster.pid", atomically: true, encoding: .utf8)
        chownToPostgres((stale as NSString).deletingLastPathComponent)
        let moved = try asOwner("dbrestore", ["--pitr", "--pgdata", stale, "--repo", repository, "--target", "latest", "--move-aside", "--dry-run"], cluster: cluster)
        XCTAssertEqual(moved.status, 0, moved.standardError)
        XCTAssertTrue(moved.standardOutput.contains("move the existing \(stale) aside"), moved.standardOutput)
    }

    /// Issue 6: two runs that both planned one empty directory cannot both fill it. The second is
    /// refused (exit 2) when the first holds it (its marker, created with O_EXCL) and when the first
    /// has already filled it (looked at again once the marker is created); the first's restore is intact.
    func testTwoRunsIntoOneEmptyDirectoryCannotBothFillIt() throws {
        let (cluster, repository, database, _) = try clusterWithABaseBackup("pitr-twice", database: "pitrtwice")
        defer { cluster.stop() }

        for firstStopsWhile in ["pitr:extracting", nil] {
            let directory = ownedDirectory("pitr-twice") + "/data"
            let port = try freePort()
            let arguments = ["--pitr", "--pgdata", directory, "--repo", repository, "--target", "latest", "--port", String(port)]
            // The second run plans the empty directory and freezes before writing anything.
            let second = try startOwner("dbrestore", arguments, cluster: cluster,
                                        environment: ["DBRECOVERY_SIGNAL_AT": "pitr:planned", "DBRECOVERY_SIGNAL": "STOP"])
            try waitUntilStopped(second)
            // The first runs: frozen halfway through its extraction (alive, holding the directory), or to the end.
            var environment: [String: String] = [:]
            if let firstStopsWhile { environment = ["DBRECOVERY_SIGNAL_AT": firstStopsWhile, "DBRECOVERY_SIGNAL": "STOP"] }
            let first = try startOwner("dbrestore", arguments, cluster: cluster,
                                       environment: environment)
            if firstStopsWhile != nil { try waitUntilStopped(first) } else { first.waitUntilExit() }

            kill(second.processIdentifier, SIGCONT)
            second.waitUntilExit()
            let secondError = second.errors
            XCTAssertEqual(second.terminationStatus, ExitStatus.usage.rawValue, secondError)
            XCTAssertTrue(secondError.contains(firstStopsWhile == nil ? "was filled by another run after this one planned it" : "a live run holds it"), secondError)
            if firstStopsWhile != nil {
                kill(first.processIdentifier, SIGCONT)
                first.waitUntilExit()
            }
            let firstError = first.errors
            XCTAssertEqual(first.terminationStatus, 0, firstError)
            let settings = try String(contentsOfFile: directory + "/postgresql.auto.conf", encoding: .utf8)
            XCTAssertEqual(settings.components(separatedBy: "restore_command = ").count, 2, "one run's recovery settings: " + settings)
            XCTAssertFalse(FileManager.default.fileExists(atPath: directory + "/" + ".dbrecovery-extracting"))
            let restored = try startRecovered(directory, port: port, database: database, cluster: cluster)
            defer { stopServer(directory) }
            XCTAssertEqual(try restored.query("SELECT count(*) FROM items").scalar, "10")
        }
    }

    /// Issue 8: a missing segment refuses `latest`, times, restore points and LSNs at or after it,
    /// but an LSN before it recovers (exactly the rows committed before that LSN). Issue 11: an LSN
    /// past the last archived segment is refused before anything is written.
    func testATargetBeforeAGapInTheArchiveRecoversAndOnesAtOrAfterItAreRefused() throws {
        let (cluster, repository) = try archivingCluster("pitr-gap")
        defer { cluster.stop() }
        let (database, connection) = try itemsDatabase("pitrgap", on: cluster)
        try physicalBackup(of: database, on: cluster, into: repository)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 10)")
        let beforeGap = try XCTUnwrap(connection.query("SELECT pg_current_wal_insert_lsn()").scalar)
        try waitForArchive(connection)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'B' FROM generate_series(1, 10)")
        let missing = try XCTUnwrap(connection.query("SELECT pg_walfile_name(pg_current_wal_insert_lsn())").scalar)
        try waitForArchive(connection)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'C' FROM generate_series(1, 10)")
        try waitForArchive(connection)
        let afterGap = try XCTUnwrap(connection.query("SELECT pg_current_wal_insert_lsn()").scalar)
        let timeline = String(missing.prefix(8))
        let segmentFile = repository + "/wal/" + timeline + "/" + missing + ".gz"
        XCTAssertTrue(FileManager.default.fileExists(atPath: segmentFile), segmentFile)

        // Before the gap: an LSN past the archive is refused, plainly.
        let nowhere = ownedDirectory("pitr-gap-target") + "/data"
        let beyond = try asOwner("dbrestore", ["--pitr", "--pgdata", nowhere, "--repo", repository, "--target-lsn", "FF/0", "--dry-run"], cluster: cluster)
        XCTAssertEqual(beyond.status, ExitStatus.backupNotFound.rawValue, beyond.standardError)
        XCTAssertTrue(beyond.standardError.contains("target LSN FF/0 is beyond the archived WAL"), beyond.standardError)

        try FileManager.default.removeItem(atPath: segmentFile)
        for target in [["--target", "latest"], ["--target-lsn", afterGap], ["--target-time", "2999-01-01 00:00:00"], ["--target-name", "anything"]] {
            let refused = try asOwner("dbrestore", ["--pitr", "--pgdata", nowhere, "--repo", repository, "--dry-run"] + target, cluster: cluster)
            XCTAssertEqual(refused.status, ExitStatus.backupNotFound.rawValue, "\(target): " + refused.standardError)
            XCTAssertTrue(refused.standardError.contains("\(missing) is missing"), "\(target): " + refused.standardError)
            XCTAssertTrue(refused.standardError.contains("--target-lsn below"), "\(target): " + refused.standardError)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: nowhere))

        try assertRecovers(["--target-lsn", beforeGap], repository: repository, cluster: cluster, database: database, holding: ["A": "10"])
    }

    /// Issue 4: a target time keeps its microseconds (typed, or as psql prints a timestamptz):
    /// recovery to a commit's exact time includes that commit.
    func testATargetTimeKeepsItsMicroseconds() throws {
        let (cluster, repository) = try archivingCluster("pitr-micro")
        defer { cluster.stop() }
        let (database, connection) = try itemsDatabase("pitrmicro", on: cluster)
        try physicalBackup(of: database, on: cluster, into: repository)
        let start = try XCTUnwrap(connection.query("SELECT pg_current_wal_insert_lsn()").scalar)
        let xid = try XCTUnwrap(connection.query("INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 10) RETURNING txid_current()").scalar)
        let end = try XCTUnwrap(connection.query("SELECT pg_current_wal_insert_lsn()").scalar)
        usleep(20_000)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'B' FROM generate_series(1, 10)")
        try waitForArchive(connection)
        // The commit's own time, to the microsecond, from the WAL (pg_waldump on the server's pg_wal).
        let dump = try TestProcess.run(cluster.binDirectory + "/pg_waldump", ["-p", cluster.directory + "/data/pg_wal", "-s", start, "-e", end, "-r", "Transaction"],
                                       environment: ["TZ": "UTC"])
        let line = try XCTUnwrap(dump.standardOutput.split(separator: "\n").first { $0.range(of: #"tx:\s+\#(xid),"#, options: .regularExpression) != nil && $0.contains("COMMIT ") },
                                 dump.standardOutput + dump.standardError)
        let commit = try XCTUnwrap(line.range(of: "COMMIT ").map { String(line[$0.upperBound...].prefix(26)) })
        XCTAssertEqual(commit.count, 26, String(line))
        for typed in [commit, commit + "+00"] {
            let (result, directory, port) = try recover(["--target-time", typed], repository: repository, cluster: cluster)
            defer { stopServer(directory) }
            XCTAssertEqual(result.status, 0, result.standardError)
            let settings = try String(contentsOfFile: directory + "/postgresql.auto.conf", encoding: .utf8)
            XCTAssertTrue(settings.contains("recovery_target_time = '\(commit)+00'"), settings)
            XCTAssertEqual(try counts(port: port, database: database, cluster: cluster), ["A": "10"], typed)
        }
    }

    /// Issue 11: a recovery that ends before its target names the server's reason, not the FATAL
    /// our own connection attempts got meanwhile.
    func testARecoveryThatEndsBeforeItsTargetNamesTheServersReason() throws {
        let (cluster, repository, _, _) = try clusterWithABaseBackup("pitr-fatal", database: "pitrfatal")
        defer { cluster.stop() }
        let (result, directory, _) = try recover(["--target-name", "never_created"], repository: repository, cluster: cluster)
        defer { stopServer(directory) }
        XCTAssertEqual(result.status, ExitStatus.restoreFailed.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("recovery ended before configured recovery target was reached"), result.standardError)
    }

    /// Issues 10, 12, 13: a failed extraction says exactly what it left (the directory stays, emptied,
    /// under a parent this user cannot write, or when it is a mount point); a full disk is exit 20 with
    /// what the base backup needs, on the threads and through `tar -x` (tar's own line kept), and so is
    /// a marker that cannot be written for want of space; `--move-aside` under an unwritable parent is
    /// refused in the plan. The tmpfs cases need root (mount).
    func testFailedExtractionsSayWhatTheyLeftAndAFullDiskIsExit20() throws {
        let (cluster, repository, _, _) = try clusterWithABaseBackup("pitr-left", database: "pitrleft")
        defer { cluster.stop() }
        let id = try XCTUnwrap(FileManager.default.contentsOfDirectory(atPath: repository + "/backups").sorted().last)

        // A damaged base.tar.gz under a parent the server's user cannot write (root's, 0755).
        let damaged = try copyWithAByteFlipped(repository, prefix: "pitr-left-damaged", in: "backups/\(id)/base.tar.gz")
        let rootParent = TestPaths.temporaryDirectory(prefix: "pitr-root-parent")
        chmod(rootParent, 0o755)
        let kept = rootParent + "/data"
        try FileManager.default.createDirectory(atPath: kept, withIntermediateDirectories: false)
        chownToPostgres(kept)
        if getuid() == 0 {
            let failed = try asOwner("dbrestore", ["--pitr", "--pgdata", kept, "--repo", damaged, "--target", "latest"], cluster: cluster)
            XCTAssertEqual(failed.status, ExitStatus.backupCorrupt.rawValue, failed.standardError)
            XCTAssertTrue(failed.standardError.contains("what was extracted into \(kept) was removed; the empty directory stays (its parent \(rootParent) is not writable by this user)"),
                          failed.standardError)
            XCTAssertFalse(failed.standardError.contains("the data directory was removed"), failed.standardError)
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: kept), [])

            // --move-aside there: refused by the plan, nothing renamed.
            try "x".write(toFile: kept + "/PG_VERSION", atomically: true, encoding: .utf8)
            chownToPostgres(kept)
            for extra in [["--dry-run"], []] {
                let aside = try asOwner("dbrestore", ["--pitr", "--pgdata", kept, "--repo", repository, "--target", "latest", "--move-aside"] + extra, cluster: cluster)
                XCTAssertEqual(aside.status, ExitStatus.failure.rawValue, aside.standardError)
                XCTAssertTrue(aside.standardError.contains("cannot move \(kept) aside: its parent \(rootParent) is not writable by this user"), aside.standardError)
            }
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: rootParent), ["data"])
        }

        guard getuid() == 0 else { throw XCTSkip("the full-disk cases mount a small tmpfs, which needs root") }
        // The same backup with a damaged (optional) index: extracted through tar -x.
        let noIndex = try copyWithAByteFlipped(repository, prefix: "pitr-left-noindex", in: "backups/\(id)/base.index.json.gz")
        for (label, source) in [("threads", repository), ("tar -x", noIndex)] {
            let mount = try smallTmpfs("pitr-full", megabytes: 4)
            defer { unmount(mount) }
            let result = try asOwner("dbrestore", ["--pitr", "--pgdata", mount, "--repo", source, "--target", "latest"], cluster: cluster)
            XCTAssertEqual(result.status, ExitStatus.repositoryError.rawValue, "\(label): " + result.standardError)
            XCTAssertTrue(result.standardError.contains("no space left on device"), "\(label): " + result.standardError)
            XCTAssertTrue(result.standardError.contains("free space where --pgdata lies"), "\(label): " + result.standardError)
            XCTAssertTrue(result.standardError.contains("the empty directory stays (it is a mount point)"), "\(label): " + result.standardError)
            XCTAssertFalse(result.standardError.contains("backup \(id): backup \(id):"), "\(label): " + result.standardError)
            if label == "tar -x" { XCTAssertTrue(result.standardError.contains("No space left on device"), "tar's own line: " + result.standardError) }
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: mount), [], label)
        }

        // No room even for the marker.
        let full = try smallTmpfs("pitr-full-marker", megabytes: 1)
        defer { unmount(full) }
        _ = try TestProcess.run("/bin/dd", ["if=/dev/zero", "of=\(full)/filler", "bs=64k"])
        let marker = try asOwner("dbrestore", ["--pitr", "--pgdata", full + "/data", "--repo", repository, "--target", "latest"], cluster: cluster)
        XCTAssertEqual(marker.status, ExitStatus.repositoryError.rawValue, marker.standardError)
        XCTAssertTrue(marker.standardError.contains("no space left on device writing \(full)/data/.dbrecovery-extracting"), marker.standardError)
        XCTAssertTrue(marker.standardError.contains("the base backup needs about"), marker.standardError)
    }

    // MARK: - Helpers

    /// A tool started without waiting, its stderr in a file (read once it has exited).
    private struct Started {
        let process: Process
        let errorFile: String
        var processIdentifier: Int32 { process.processIdentifier }
        var terminationStatus: Int32 { process.terminationStatus }
        var isRunning: Bool { process.isRunning }
        func waitUntilExit() { process.waitUntilExit() }
        var errors: String { (try? String(contentsOfFile: errorFile, encoding: .utf8)) ?? "" }
    }

    /// Starts one of our tools as the server's OS user without waiting.
    private func startOwner(_ tool: String, _ arguments: [String], cluster: PostgresCluster, environment: [String: String]) throws -> Started {
        let process = Process()
        var merged = ProcessInfo.processInfo.environment.merging(cluster.environment) { _, new in new }
        merged.merge(environment) { _, new in new }
        process.environment = merged
        if getuid() == 0 {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            process.arguments = ["--reuid=postgres", "--regid=postgres", "--init-groups", TestPaths.executable(tool)] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: TestPaths.executable(tool))
            process.arguments = arguments
        }
        let errorFile = TestPaths.temporaryDirectory(prefix: "stderr") + "/stderr.txt"
        _ = FileManager.default.createFile(atPath: errorFile, contents: nil)
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle(forWritingAtPath: errorFile)
        try process.run()
        return Started(process: process, errorFile: errorFile)
    }

    /// A tmpfs of `megabytes` mounted on a new directory the server's user owns (root only).
    private func smallTmpfs(_ prefix: String, megabytes: Int) throws -> String {
        let mount = TestPaths.temporaryDirectory(prefix: prefix)
        let mounted = try TestProcess.run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(megabytes)m,mode=0700", "tmpfs", mount])
        guard mounted.status == 0 else { throw XCTSkip("cannot mount a tmpfs here: \(mounted.standardError)") }
        chownToPostgres(mount)
        return mount
    }

    private func unmount(_ mount: String) {
        _ = try? TestProcess.run("/bin/umount", [mount])
    }

    /// Waits until `process` is stopped (state T in /proc), as the STOP hook leaves it.
    private func waitUntilStopped(_ process: Started) throws {
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            let stat = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8)) ?? ""
            if let close = stat.lastIndex(of: ")"), stat[stat.index(after: close)...].split(separator: " ").first == "T" { return }
            guard process.isRunning else { return XCTFail("the run ended before reaching its hook: " + process.errors) }
            usleep(50_000)
        }
        XCTFail("the run never reached its hook")
    }
}
