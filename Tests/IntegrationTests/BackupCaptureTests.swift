import Foundation
import RecoveryKit
import BackupStorage
import TestSupport
import XCTest

/// `dbbackup` against a real PostgreSQL cluster.
final class BackupCaptureTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useDatabase(prefix: "capture")
        useLocalRepository()
    }

    private func seed(rows: Int = 1_000) throws {
        let connection = try cluster.connect(database: database)
        try connection.execute(script: """
            CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);
            CREATE TABLE meetings (id serial PRIMARY KEY, user_id bigint REFERENCES users, at timestamptz);
            CREATE SCHEMA billing;
            CREATE TABLE billing."Invoice Lines" (id int, amount numeric);
            INSERT INTO users SELECT g, 'user' || g || '@example.com' FROM generate_series(1, \(rows)) g;
            INSERT INTO meetings (user_id, at) SELECT (g % \(rows)) + 1, now() FROM generate_series(1, \(rows * 2)) g;
            INSERT INTO billing."Invoice Lines" VALUES (1, 9.99), (2, 10.01);
            CREATE TABLE schema_version (version int, applied_at timestamptz);
            INSERT INTO schema_version VALUES (7, now() - interval '1 day'), (8, now());
            """)
    }

    private func backup(_ extra: [String] = []) throws -> TestProcess.Result {
        try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository] + extra,
                             cluster: cluster)
    }

    private func manifest(_ id: String) throws -> BackupManifest {
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(repository!)/backups/\(id)/manifest.json"))
        return try BackupManifest.decode(data, source: id)
    }

    private func listing() -> [String] {
        (FileManager.default.enumerator(atPath: repository)?.allObjects as? [String] ?? []).filter { !$0.hasPrefix("locks") }.sorted()
    }

    func testDumpRestoresByHandAndMatchesManifestCounts() throws {
        try seed()
        let result = try backup(["--tag", "nightly", "--release", "v1.2.3", "--pin"])
        XCTAssertEqual(result.status, 0, result.standardError)
        let id = result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(BackupID.isValid(id), "stdout should be the backup id, got '\(id)'")

        let manifest = try manifest(id)
        XCTAssertEqual(manifest.schemaVersion, "8")
        XCTAssertEqual(manifest.tags, ["nightly"])
        XCTAssertEqual(manifest.release, "v1.2.3")
        XCTAssertTrue(manifest.pinned)
        let expected: [String: Int64] = ["billing.Invoice Lines": 2, "public.meetings": 2_000, "public.users": 1_000, "public.schema_version": 2]
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: manifest.tables.map { ($0.qualifiedName, $0.rows) }), expected)

        let dump = "\(repository!)/backups/\(id)/dump.sql.gz"
        XCTAssertEqual(try TestProcess.shell("gzip -t '\(dump)'").status, 0)
        let sha = try TestProcess.shell("sha256sum '\(dump)' | cut -d' ' -f1").standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(sha, manifest.files[0].sha256)
        let size = try FileManager.default.attributesOfItem(atPath: dump)[.size] as? UInt64
        XCTAssertEqual(size, manifest.files[0].storedBytes)

        // The operator's by-hand restore: gunzip -c | psql into an empty database.
        let empty = try cluster.createDatabase(prefix: "byhand")
        let restore = try TestProcess.shell("gunzip -c '\(dump)' | psql -v ON_ERROR_STOP=1 -q -X '\(cluster.url(database: empty))'",
                                            environment: cluster.environment)
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertEqual(try cluster.rowCounts(database: empty), expected)

        // Files 0600, directories 0700.
        for path in [repository!, "\(repository!)/backups", "\(repository!)/backups/\(id)"] {
            XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int, 0o700, path)
        }
        for path in [dump, "\(repository!)/backups/\(id)/manifest.json"] {
            XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int, 0o600, path)
        }
    }

    func testJSONSummaryDescribesTheBackup() throws {
        try seed(rows: 10)
        let result = try backup(["--json", "--compression-level", "1"])
        XCTAssertEqual(result.status, 0, result.standardError)
        let object = try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
        XCTAssertEqual(object?["total_rows"] as? Int, 10 + 20 + 2 + 2)
        XCTAssertEqual(object?["kind"] as? String, "logical")
        let id = try XCTUnwrap(object?["id"] as? String)
        XCTAssertEqual(try manifest(id).files[0].compressionLevel, 1)
    }

    func testConcurrentWritesDuringTheDumpChangeNeitherDumpNorCounts() throws {
        // Large enough that pg_dump runs for more than a second at the slowest compression.
        let connection = try cluster.connect(database: database)
        try connection.execute(script: """
            CREATE TABLE events (id bigserial PRIMARY KEY, payload text);
            INSERT INTO events (payload) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 600000) g;
            """)
        let before = try cluster.rowCounts(database: database)
        let process = try TestProcess.start("dbbackup", ["--database-url", cluster.url(database: database),
                                                         "--repo", repository, "--compression-level", "9"], cluster: cluster)
        let writer = try cluster.connect(database: database)
        let watcher = try cluster.connect()
        // The snapshot is exported before pg_dump starts: once pg_dump is seen, every later
        // write is after the snapshot and must appear neither in the dump nor in the counts.
        let deadline = Date().addingTimeInterval(120)
        var dumpSeen = false
        while !dumpSeen && !waitpidNoHang(process.pid) && Date() < deadline {
            dumpSeen = try watcher.query("SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_dump' AND datname = $1",
                                         [database]).rows.count == 1
        }
        XCTAssertTrue(dumpSeen, "pg_dump never showed up in pg_stat_activity")
        var writesWhileDumping = 0
        var deletedIDs: [Int] = []
        while !waitpidNoHang(process.pid) && Date() < deadline {
            let id = 1 + deletedIDs.count * 37
            try writer.execute(script: "INSERT INTO events (payload) VALUES ('late'), ('late'); DELETE FROM events WHERE id = \(id)")
            deletedIDs.append(id)
            let dumping = try watcher.query("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' AND datname = $1",
                                            [database]).scalar
            if dumping == "1" { writesWhileDumping += 1 }
        }
        let termination = process.waitForExit()
        XCTAssertEqual(termination.exitCode, 0)
        XCTAssertGreaterThan(writesWhileDumping, 3, "the dump finished too quickly to prove snapshot consistency")

        let id = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: repository + "/backups").first)
        let manifest = try manifest(id)
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: manifest.tables.map { ($0.qualifiedName, $0.rows) }), before)

        let restored = try cluster.createDatabase(prefix: "snap")
        let restore = try TestProcess.shell(
            "gunzip -c '\(repository!)/backups/\(id)/dump.sql.gz' | psql -v ON_ERROR_STOP=1 -q -X '\(cluster.url(database: restored))'",
            environment: cluster.environment)
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertEqual(try cluster.rowCounts(database: restored), before)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM events WHERE payload = 'late'", database: restored), "0")
        let deletedList = deletedIDs.map(String.init).joined(separator: ",")
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM events WHERE id IN (\(deletedList))", database: restored),
                       String(deletedIDs.count), "rows deleted after the snapshot must still be in the dump")
        XCTAssertNotEqual(try cluster.rowCounts(database: database)["public.events"], before["public.events"])
    }

    func testKilledBackupLeavesNoManifestAndTheNextRunSucceeds() throws {
        let connection = try cluster.connect(database: database)
        try connection.execute(script: """
            CREATE TABLE events (id bigserial PRIMARY KEY, payload text);
            INSERT INTO events (payload) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 400000) g;
            """)
        let process = try TestProcess.start("dbbackup", ["--database-url", cluster.url(database: database),
                                                         "--repo", repository, "--compression-level", "9"], cluster: cluster)
        // Wait until compressed data is being written, then kill without warning.
        let deadline = Date().addingTimeInterval(60)
        var sawPartial = false
        while Date() < deadline && !sawPartial {
            sawPartial = listing().contains { $0.contains(".partial-") && ((try? FileManager.default.attributesOfItem(atPath: repository + "/" + $0)[.size] as? Int) ?? 0) > 0 }
            if !sawPartial { usleep(20_000) }
        }
        XCTAssertTrue(sawPartial, "backup never started writing")
        process.send(SIGKILL)
        XCTAssertEqual(process.waitForExit().signal, SIGKILL)

        XCTAssertFalse(listing().contains { $0.hasSuffix("manifest.json") }, "a killed backup must not leave a manifest")
        let store = try LocalStore(root: repository, create: false)
        XCTAssertEqual(try Catalog(store: store).entries().count, 0)

        let next = try backup()
        XCTAssertEqual(next.status, 0, next.standardError)
        XCTAssertEqual(try Catalog(store: store).entries().count, 1)
    }

    func testFailuresAreOneLineWithDocumentedCodesAndLeaveTheRepositoryUnchanged() throws {
        try seed(rows: 5)
        XCTAssertEqual(try backup().status, 0)
        let before = listing()

        let wrongPassword = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository],
                                                 environment: ["PGPASSWORD": "not-the-password"])
        XCTAssertEqual(wrongPassword.status, ExitStatus.databaseUnavailable.rawValue)
        XCTAssertTrue(wrongPassword.standardError.contains("password authentication failed"), wrongPassword.standardError)
        XCTAssertTrue(wrongPassword.standardError.contains("HINT:"))
        XCTAssertFalse(wrongPassword.standardError.contains("not-the-password"))

        let unreachable = try TestProcess.tool("dbbackup", ["--database-url", "postgresql://postgres@127.0.0.1:1/app", "--repo", repository],
                                               cluster: cluster)
        XCTAssertEqual(unreachable.status, ExitStatus.databaseUnavailable.rawValue)
        XCTAssertTrue(unreachable.standardError.contains("Connection refused"), unreachable.standardError)

        let missingDump = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository,
                                                            "--pg-bin", "/nonexistent"], cluster: cluster)
        XCTAssertEqual(missingDump.status, ExitStatus.toolFailed.rawValue)
        XCTAssertTrue(missingDump.standardError.contains("pg_dump not found"), missingDump.standardError)

        let badLevel = try backup(["--compression-level", "12"])
        XCTAssertEqual(badLevel.status, ExitStatus.usage.rawValue)
        XCTAssertTrue(badLevel.standardError.contains("--compression-level"), badLevel.standardError)

        let missingDatabase = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: "no_such_db"), "--repo", repository],
                                                   cluster: cluster)
        XCTAssertEqual(missingDatabase.status, ExitStatus.databaseUnavailable.rawValue)
        XCTAssertTrue(missingDatabase.standardError.contains("no_such_db"), missingDatabase.standardError)

        for result in [wrongPassword, unreachable, missingDump, badLevel, missingDatabase] {
            XCTAssertLessThanOrEqual(result.standardError.split(separator: "\n").count, 2, result.standardError)
        }
        XCTAssertEqual(listing(), before, "a failed backup must leave the repository as it was")
    }

    func testUnwritableRepositoryFailsWithPermissionError() throws {
        try seed(rows: 5)
        let parent = TestPaths.temporaryDirectory(prefix: "locked")
        let locked = parent + "/repo"
        try FileManager.default.createDirectory(atPath: locked, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o500])
        defer { chmod(locked, 0o700) }
        // Root ignores permission bits, so as root run the tool as the unprivileged postgres user.
        let asOtherUser = getuid() == 0
        let executable = asOtherUser ? "/usr/bin/setpriv" : TestPaths.executable("dbbackup")
        var arguments = ["--database-url", cluster.url(database: database), "--repo", locked]
        if asOtherUser {
            chmod(locked, 0o700)
            arguments = ["--reuid=postgres", "--regid=postgres", "--init-groups", TestPaths.executable("dbbackup")] + arguments
        }
        let result = try TestProcess.run(executable, arguments, environment: cluster.environment)
        XCTAssertEqual(result.status, ExitStatus.repositoryError.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("permission denied"), result.standardError)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: locked), [])
    }

    func testSecondBackupFailsFastWhileTheRepositoryIsLocked() throws {
        try seed(rows: 5)
        let store = try LocalStore(root: repository, create: true)
        let lock = try store.lock(holder: LockHolder(command: "dbbackup", pid: 4242, host: "db1"))
        defer { try? lock.release() }   // released below; this only covers a failed assertion
        let started = Date()
        let result = try backup()
        XCTAssertEqual(result.status, ExitStatus.repositoryLocked.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("pid 4242"), result.standardError)
        XCTAssertLessThan(Date().timeIntervalSince(started), 10)
        try lock.release()
        XCTAssertEqual(try backup().status, 0)
    }

    func testPasswordNeverReachesChildArgvOrOutput() throws {
        let connection = try cluster.connect(database: database)
        try connection.execute(script: """
            CREATE TABLE events (id bigserial PRIMARY KEY, payload text);
            INSERT INTO events (payload) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 200000) g;
            """)
        let process = try ChildProcess(executable: TestPaths.executable("dbbackup"),
                                       arguments: ["--database-url", cluster.urlWithPassword(database: database),
                                                   "--repo", repository, "--compression-level", "9", "--json"],
                                       environment: ["PGPASSWORD": ""], stdin: .null, stdout: .pipe, stderr: .pipe)
        let output = OutputCollector(descriptor: process.standardOutput, limit: 1 << 20)
        let errors = OutputCollector(descriptor: process.standardError)
        var sawDump = false
        while kill(process.pid, 0) == 0 && !waitpidNoHang(process.pid) {
            for pid in childPIDs(of: process.pid) {
                let arguments = (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? ""
                if arguments.contains("pg_dump") { sawDump = true }
                XCTAssertFalse(arguments.contains(cluster.password), "password on argv of child \(pid)")
            }
            usleep(10_000)
        }
        XCTAssertEqual(process.waitForExit().exitCode, 0, errors.finish())
        XCTAssertTrue(sawDump, "never saw pg_dump running")
        XCTAssertFalse(output.finish().contains(cluster.password))
        let id = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: repository + "/backups").first)
        let manifestText = try String(contentsOfFile: "\(repository!)/backups/\(id)/manifest.json", encoding: .utf8)
        XCTAssertFalse(manifestText.contains(cluster.password))
    }

    func testMemoryDoesNotGrowWithDatabaseSize() throws {
        let connection = try cluster.connect(database: database)
        try connection.execute(script: "CREATE TABLE events (id bigserial PRIMARY KEY, payload text)")
        try connection.execute(script: "INSERT INTO events (payload) SELECT repeat(md5(g::text), 4) FROM generate_series(1, 20000) g")
        let small = try backup(["--compression-level", "1"])
        XCTAssertEqual(small.status, 0, small.standardError)
        try connection.execute(script: "INSERT INTO events (payload) SELECT repeat(md5(g::text), 4) FROM generate_series(1, 800000) g")
        let large = try backup(["--compression-level", "1"])
        XCTAssertEqual(large.status, 0, large.standardError)
        let manifests = try Catalog(store: try LocalStore(root: repository, create: false)).manifests()
        XCTAssertGreaterThan(manifests[0].rawBytes, manifests[1].rawBytes * 30, "the second dump should be much larger")
        // Peak RSS may differ by allocator noise, not by the dump's size (over 100 MiB here).
        XCTAssertLessThan(large.maxResidentKilobytes, small.maxResidentKilobytes + 16 * 1024,
                          "peak RSS grew from \(small.maxResidentKilobytes) KiB to \(large.maxResidentKilobytes) KiB")
    }
}

/// True once `pid` has exited (reaps nothing: peeks with WNOWAIT).
func waitpidNoHang(_ pid: pid_t) -> Bool {
    var info = siginfo_t()
    return waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info._sifields._sigchld.si_pid == pid
}

/// Direct children of a process, from /proc.
func childPIDs(of parent: pid_t) -> [pid_t] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap(Int32.init).filter { pid in
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 2 && Int32(fields[1]) == parent
    }
}
