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

    /// `dbbackup` with `extra` arguments, whatever its outcome.
    private func capture(_ extra: [String] = []) throws -> TestProcess.Result {
        try tool("dbbackup", common + extra)
    }

    private func listing() -> [String] {
        (FileManager.default.enumerator(atPath: repository)?.allObjects as? [String] ?? []).filter { !$0.hasPrefix("locks") }.sorted()
    }

    func testDumpRestoresByHandAndMatchesManifestCounts() throws {
        try seed()
        let result = try capture(["--tag", "nightly", "--release", "v1.2.3", "--pin"])
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
        let result = try capture(["--json", "--compression-level", "1"])
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
            // pg_dump, or dbbackup's own sessions, which COPY the tables (pg_dump may be done with the schema first).
            let dumping = try watcher.query("SELECT count(*) FROM pg_stat_activity WHERE application_name IN ('pg_dump', 'dbbackup') AND datname = $1",
                                            [database]).scalar
            if dumping != "0" { writesWhileDumping += 1 }
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

    /// A backup of 400 000 rows at level 9: long enough to be caught in the middle.
    private func startSlowBackup() throws -> ChildProcess {
        try cluster.connect(database: database).execute(script: """
            CREATE TABLE events (id bigserial PRIMARY KEY, payload text);
            INSERT INTO events (payload) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 400000) g;
            """)
        // zlib's one member: libdeflate's members would finish before the test catches the run midway.
        return try TestProcess.start("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository, "--compression-level", "9"],
                                     cluster: cluster, environment: ["DBRECOVERY_DUMP_LAYOUT": "single-member"])
    }

    func testKilledBackupLeavesNoManifestAndTheNextRunSucceeds() throws {
        let process = try startSlowBackup()
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

        let next = try capture()
        XCTAssertEqual(next.status, 0, next.standardError)
        XCTAssertEqual(try Catalog(store: store).entries().count, 1)
    }

    /// Reproduction (attack a9): pg_dump's session ended by the server (here pg_terminate_backend, there
    /// a whole-database restore's swap) gave only `PQgetCopyData() failed.`; the server's reason, on
    /// pg_dump's next line, is kept in the message.
    func testABackupWhoseSessionTheServerEndsSaysWhy() throws {
        let process = try startSlowBackup()
        let errors = OutputCollector(descriptor: process.standardError)
        let watcher = try cluster.connect()
        let deadline = Date().addingTimeInterval(60)
        var ended = false
        while !ended && !waitpidNoHang(process.pid) && Date() < deadline {
            ended = try watcher.query("""
                SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                WHERE application_name = 'pg_dump' AND datname = $1 AND query LIKE 'COPY %events%'
                """, [database]).rows.first?[0] == "t"
            if !ended { usleep(5_000) }
        }
        XCTAssertTrue(ended, "pg_dump's COPY of events was never seen")
        XCTAssertEqual(process.waitForExit().exitCode, ExitStatus.toolFailed.rawValue)
        let message = errors.finish()
        XCTAssertTrue(message.contains("terminating connection due to administrator command"), message)
        XCTAssertFalse(message.contains("COPY public.events"), "pg_dump's 'Command was' line stays out: \(message)")
        XCTAssertFalse(listing().contains { $0.hasSuffix("manifest.json") })
    }

    func testFailuresAreOneLineWithDocumentedCodesAndLeaveTheRepositoryUnchanged() throws {
        try seed(rows: 5)
        XCTAssertEqual(try capture().status, 0)
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

        let badLevel = try capture(["--compression-level", "12"])
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
        let result = try capture()
        XCTAssertEqual(result.status, ExitStatus.repositoryLocked.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("pid 4242"), result.standardError)
        XCTAssertLessThan(Date().timeIntervalSince(started), 10)
        try lock.release()
        XCTAssertEqual(try capture().status, 0)
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
            // A child between fork and exec still shows dbbackup's own argv (which this test gives the
            // password). Read each time: read once at the start, it could be this test runner's argv,
            // from before dbbackup's exec (the one failure this test had, once in many runs).
            let parentArguments = (try? String(contentsOfFile: "/proc/\(process.pid)/cmdline", encoding: .utf8)) ?? ""
            for pid in childPIDs(of: process.pid) {
                let arguments = (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? ""
                if arguments == parentArguments { continue }
                if arguments.contains("pg_dump") { sawDump = true }
                XCTAssertFalse(arguments.contains(cluster.password), "password on argv of child \(pid): \(arguments.replacingOccurrences(of: "\0", with: " "))")
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

    // MARK: Row counts from the dump's COPY blocks (issue 21 item 5)

    /// Tables whose rows test how COPY text carries them: empty, rows with newlines, CR, tabs,
    /// backslashes and a lone `\.`, odd and keyword names, a table without columns, two levels of
    /// partitions, three levels of inheritance (count(*) of a parent includes its children), unlogged.
    private func seedAwkwardTables() throws -> [String: Int64] {
        try cluster.connect(database: database).execute(script: #"""
            CREATE TABLE empty_one (id int);
            CREATE TABLE texts (id int, body text, raw bytea);
            INSERT INTO texts SELECT g, E'line one\nline two\r\n\\.\nnot the end\ttab \\ backslash', '\x0a5c2e0a'::bytea FROM generate_series(1, 50) g;
            INSERT INTO texts VALUES (51, E'\\.', NULL), (52, '', ''), (53, NULL, NULL), (54, E'\n', E'\\x0a');
            CREATE SCHEMA "Odd ""Schema"".x";
            CREATE TABLE "Odd ""Schema"".x".U&"Caf\00E9. Tab\0009Name" (v int);
            INSERT INTO "Odd ""Schema"".x".U&"Caf\00E9. Tab\0009Name" SELECT generate_series(1, 7);
            CREATE TABLE "Odd ""Schema"".x".empty_one (v int);
            INSERT INTO "Odd ""Schema"".x".empty_one VALUES (1), (2), (3);
            CREATE TABLE "select" (v int);
            INSERT INTO "select" VALUES (1), (2);
            CREATE TABLE "UPPER" (v int);
            INSERT INTO "UPPER" VALUES (1), (2), (3), (4);
            CREATE TABLE no_columns ();
            INSERT INTO no_columns SELECT FROM generate_series(1, 5);
            CREATE TABLE measurements (at date NOT NULL, v int) PARTITION BY RANGE (at);
            CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01') PARTITION BY LIST (v);
            CREATE TABLE measurements_2025_even PARTITION OF measurements_2025 FOR VALUES IN (0);
            CREATE TABLE measurements_2025_rest PARTITION OF measurements_2025 DEFAULT;
            CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
            CREATE TABLE measurements_other PARTITION OF measurements DEFAULT;
            INSERT INTO measurements SELECT date '2025-01-01' + g, g % 2 FROM generate_series(0, 399) g;
            CREATE TABLE animals (name text);
            CREATE TABLE dogs (breed text) INHERITS (animals);
            CREATE TABLE puppies (age int) INHERITS (dogs);
            INSERT INTO animals VALUES ('tom');
            INSERT INTO dogs VALUES ('rex', 'lab'), ('fido', 'pug');
            INSERT INTO puppies VALUES ('bit', 'pug', 1);
            CREATE UNLOGGED TABLE cache (k text);
            INSERT INTO cache VALUES ('a'), ('b'), ('c');
            """#)
        return ["public.empty_one": 0, "public.texts": 54, "Odd \"Schema\".x.Café. Tab\tName": 7, "Odd \"Schema\".x.empty_one": 3,
                "public.select": 2, "public.UPPER": 4, "public.no_columns": 5, "public.measurements_2025_even": 183,
                "public.measurements_2025_rest": 182, "public.measurements_2026": 35, "public.measurements_other": 0,
                "public.animals": 4, "public.dogs": 3, "public.puppies": 1, "public.cache": 3]
    }

    func testRowCountsFromTheDumpEqualCountStarAndWhatARestoreGives() throws {
        let expected = try seedAwkwardTables()
        let counted = try TableCounter.countRows(on: try cluster.connect(database: database))
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: counted.map { ($0.qualifiedName, $0.rows) }), expected, "the seed is what the test thinks")

        let result = try capture()
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertFalse(result.standardError.contains("warning"), result.standardError)
        let manifest = try manifest(result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines))
        XCTAssertEqual(manifest.tables, counted, "same tables, names, counts and order as count(*) in the snapshot")

        // What a restore produces: the operator's by-hand replay and dbrestore (which checks the counts).
        let byHand = try cluster.createDatabase(prefix: "byhand")
        let replay = try TestProcess.shell("gunzip -c '\(repository!)/backups/\(manifest.id)/dump.sql.gz' | psql -v ON_ERROR_STOP=1 -q -X '\(cluster.url(database: byHand))'",
                                           environment: cluster.environment)
        XCTAssertEqual(replay.status, 0, replay.standardError)
        XCTAssertEqual(try cluster.rowCounts(database: byHand), expected)
        let restored = "copycounts_\(UInt32.random(in: 0...UInt32.max))"
        let restore = try tool("dbrestore", [manifest.id, "--yes", "--repo", repository, "--database-url", cluster.url(database: restored)])
        XCTAssertEqual(restore.status, 0, restore.standardError)

        // The cross-check agrees on the same data.
        let checked = try capture(["--count-check"])
        XCTAssertEqual(checked.status, 0, checked.standardError)
        XCTAssertEqual(try self.manifest(checked.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)).tables, counted)
    }

    /// A parent whose inheritance child is a foreign table counts its own rows and its local
    /// descendants' only: the remote rows are neither dumped nor restored, and may change after the
    /// backup (an attacker's case: the backup then never restored, "expected 5, found 6"). The same
    /// meaning on both sides: `--count-check` agrees, and the restore verifies after the remote grew.
    func testAParentWithAForeignChildCountsItsLocalRowsAndRestoresAfterTheRemoteChanges() throws {
        let directory = TestPaths.temporaryDirectory(prefix: "foreign-rows")
        try "fox\nwolf\n".write(toFile: directory + "/wild.csv", atomically: true, encoding: .utf8)
        chmod(directory, 0o755)
        chmod(directory + "/wild.csv", 0o644)
        try cluster.connect(database: database).execute(script: """
            CREATE EXTENSION file_fdw;
            CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
            CREATE TABLE animals (name text);
            INSERT INTO animals VALUES ('tom');
            CREATE FOREIGN TABLE wild () INHERITS (animals) SERVER files OPTIONS (filename '\(directory)/wild.csv', format 'csv');
            CREATE TABLE pets () INHERITS (animals);
            INSERT INTO pets VALUES ('rex');
            """)
        let result = try capture(["--count-check"])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertFalse(result.standardError.contains("count(*)"), "no second scan, no note: \(result.standardError)")
        let manifest = try manifest(result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines))
        XCTAssertEqual(manifest.tables.map { "\($0.name):\($0.rows)" }, ["animals:2", "pets:1"])

        try "fox\nwolf\nbear\n".write(toFile: directory + "/wild.csv", atomically: true, encoding: .utf8)
        let restored = "\(database!)_foreign_copy"
        defer { _ = try? cluster.connect().execute(script: "DROP DATABASE IF EXISTS \(restored) WITH (FORCE)") }
        let restore = try tool("dbrestore", [manifest.id, "--yes", "--repo", repository, "--database-url", cluster.url(database: restored)])
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM animals", database: restored), "5", "the restored parent still reads the remote rows")
        let verify = try tool("dbverify", [manifest.id, "--repo", repository, "--database-url", cluster.url(database: restored)])
        XCTAssertEqual(verify.status, 0, verify.standardError + verify.standardOutput)
    }

    /// No `count(*)` by default: pg_dump's COPY is the one scan of each table; `--count-check` adds one.
    func testNoSecondScanUnlessCountCheckIsAsked() throws {
        let observer = try cluster.connect(database: database)
        try observer.execute(script: "CREATE TABLE watched (v int) WITH (autovacuum_enabled = off); INSERT INTO watched SELECT generate_series(1, 100)")
        func scans() throws -> Int {
            _ = try observer.query("SELECT pg_stat_clear_snapshot()")
            return Int(try observer.query("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'watched'").scalar ?? "") ?? -1
        }
        /// The count once the backup's sessions have flushed their statistics (at exit, or within a second).
        func settled(after start: Int) throws -> Int {
            let deadline = Date().addingTimeInterval(15)
            while try scans() == start, Date() < deadline { usleep(100_000) }
            usleep(2_000_000)
            return try scans()
        }
        let start = try scans()
        XCTAssertGreaterThanOrEqual(start, 0)
        XCTAssertEqual(try capture().status, 0)
        let afterPlain = try settled(after: start)
        XCTAssertEqual(afterPlain - start, 1, "pg_dump's COPY only: no count(*)")
        let checked = try capture(["--count-check"])
        XCTAssertEqual(checked.status, 0, checked.standardError)
        XCTAssertEqual(try settled(after: afterPlain) - afterPlain, 2, "--count-check adds one count(*)")
    }

    /// The repository's secrets are ours: pg_dump (like every PostgreSQL tool we start) never sees the S3
    /// credentials or the cipher key in its environment, which its user can read in /proc/PID/environ.
    /// Reproduction: pg_dump's environment held AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and DBRECOVERY_ENCRYPTION_KEY.
    func testPostgresToolsNeverInheritTheRepositorysSecrets() throws {
        let real = try PostgresTools().path(of: "pg_dump")
        let bin = TestPaths.temporaryDirectory(prefix: "env-pg-dump")
        try "#!/bin/sh\nenv >> '\(bin)/seen'\nexec '\(real)' \"$@\"\n".write(toFile: bin + "/pg_dump", atomically: true, encoding: .utf8)
        chmod(bin + "/pg_dump", 0o755)
        let secrets = ["AWS_SECRET_ACCESS_KEY": "secret-\(UUID().uuidString)", "AWS_SESSION_TOKEN": "token-\(UUID().uuidString)",
                       "DBRECOVERY_ENCRYPTION_KEY": "key-\(UUID().uuidString)"]
        let result = try tool("dbbackup", common, environment: secrets.merging(["PG_BIN": bin, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"]) { _, new in new })
        XCTAssertEqual(result.status, 0, result.standardError)
        let seen = try String(contentsOfFile: bin + "/seen", encoding: .utf8)
        XCTAssertTrue(seen.contains("PGPASSWORD="), "the wrapper saw pg_dump's own environment: \(seen)")
        for (name, value) in secrets {
            XCTAssertFalse(seen.contains(value), "\(name) reached pg_dump")
        }
    }

    /// A pg_dump (a wrapper in --pg-bin) whose data stream has been changed by `awk program`.
    private func filteredPgDump(_ awk: String) throws -> [String: String] {
        let real = try PostgresTools().path(of: "pg_dump")
        let bin = TestPaths.temporaryDirectory(prefix: "filtered-pg-dump")
        try """
            #!/bin/bash
            set -o pipefail
            case " $* " in *" --schema-only "*|*" --version "*) exec '\(real)' "$@" ;; esac
            '\(real)' "$@" | awk '\(awk)'

            """.write(toFile: bin + "/pg_dump", atomically: true, encoding: .utf8)
        chmod(bin + "/pg_dump", 0o755)
        return ["PG_BIN": bin]
    }

    /// Reproduction: with `--data-by copy`, an `ALTER TABLE` on a copied table while the backup ran queued
    /// for the backup's own lock, and a copying connection's next read of that table queued behind the
    /// ALTER: the backup waited out --lock-wait and failed (pg_dump -j's workers fail at once). The read
    /// now runs on the backup's own connection, which holds the lock already; the ALTER waits for the
    /// backup to end, as it does beside pg_dump, and the backup holds the rows of its snapshot.
    func testACopiedTableThatAnAlterWaitsForIsReadOnTheBackupsOwnConnection() throws {
        let application = try cluster.connect(database: database)
        // About 13 000 pages: read in some 25 block ranges, one at a time, by the one copying connection.
        // Types whose text the session settings decide, and a database whose sessions write them otherwise than pg_dump.
        try application.execute(script: """
            CREATE TABLE big (id int, note text, at timestamptz, ratio float8, span interval, raw bytea);
            INSERT INTO big SELECT g, repeat(md5(g::text), 3), timestamptz '2024-01-01 00:00:00+00' + g * interval '37.5 seconds',
                                   g / 7.0::float8, g * interval '1 day 3 minutes', decode(md5(g::text), 'hex')
            FROM generate_series(1, 600000) g;
            ALTER DATABASE \(database!) SET DateStyle = 'SQL, DMY';
            ALTER DATABASE \(database!) SET IntervalStyle = 'sql_standard';
            ALTER DATABASE \(database!) SET extra_float_digits = -3;
            """)
        let byPgDump = try copyBlockDigest("'\(try PostgresTools().path(of: "pg_dump"))' --data-only --table=public.big '\(cluster.url(database: database))'")
        let process = try TestProcess.start("dbbackup", common + ["--data-by", "copy", "--jobs", "1", "--lock-wait", "5", "--compression-level", "9"],
                                            cluster: cluster)
        let errors = OutputCollector(descriptor: process.standardError, limit: 256 * 1024)
        // Once both pg_dumps (the dump's and the schema fingerprint's) have locked `big` (a pg_dump that
        // locks after the ALTER queues behind it, as it would beside pg_dump alone) and `big` is being copied:
        // the pg_dumps seen so far are remembered, since the schema one may come and go between two looks.
        let watcher = try cluster.connect(database: database)
        var pgDumps: Set<String> = []
        let deadline = Date().addingTimeInterval(60)
        while true {
            let rows = try watcher.query("""
                SELECT a.pid::text, EXISTS (SELECT FROM pg_locks l WHERE l.pid = a.pid AND l.relation = 'big'::regclass AND l.granted)::text,
                       EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'COPY (SELECT % FROM ONLY public.big %')::text
                FROM pg_stat_activity a WHERE a.datname = current_database() AND a.application_name = 'pg_dump'
                """).rows
            pgDumps.formUnion(rows.compactMap { $0[0] })
            if pgDumps.count >= 2 && !rows.isEmpty && rows.allSatisfy({ $0[1] == "true" && $0[2] == "true" }) { break }
            guard Date() < deadline else { return XCTFail("the backup never reached the copy of big with both pg_dumps locked: \(errors.finish())") }
            usleep(10_000)
        }
        watcher.close()
        let alter = Background { try application.execute(script: "ALTER TABLE big ADD COLUMN added int") }
        defer { alter.join() }
        try waitFor("SELECT EXISTS (SELECT FROM pg_locks WHERE relation = 'big'::regclass AND mode = 'AccessExclusiveLock' AND NOT granted)")
        let termination = process.waitForExit(within: 120, orFail: "the backup ended")
        let stderr = errors.finish()
        XCTAssertEqual(termination.exitCode, 0, stderr)
        XCTAssertTrue(stderr.contains("a session waits behind the backup for a lock on public.big"), stderr)
        XCTAssertTrue(alter.finished(within: 30), "the ALTER ran once the backup ended")
        XCTAssertNoThrow(try alter.wait())
        let latest = try manifest("latest")
        XCTAssertEqual(latest.tables.first { $0.name == "big" }?.rows, 600_000)
        // The rows read on the backup's own connection are written as pg_dump writes them.
        XCTAssertEqual(try copyBlockDigest("gunzip -c '\(repository!)/backups/\(latest.id)/dump.sql.gz'"), byPgDump)
    }

    /// The sha256 and line count of `public.big`'s COPY block (its COPY line to its `\.`) in the plain
    /// dump a shell command writes (too big to hold as a string).
    private func copyBlockDigest(_ command: String) throws -> String {
        let block = TestPaths.temporaryDirectory(prefix: "block") + "/big.copy"
        let result = try TestProcess.run("/bin/bash", ["-c", "set -o pipefail; \(command) | sed -n '/^COPY public\\.big /,/^\\\\\\.$/p' > '\(block)' "
                                                       + "&& wc -l < '\(block)' && sha256sum < '\(block)'"], environment: cluster.environment)
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertTrue(result.standardOutput.hasPrefix("600002\n"), "the COPY line, 600 000 rows and its end: \(result.standardOutput)")
        return result.standardOutput
    }

    /// `--data-by copy` leaves the rows to pg_dump (and says why) where copying them would cost the server
    /// what pg_dump alone would not: half its shared lock table (the snapshot's connection locks every
    /// copied table beside pg_dump), or names quoted by another major's keywords.
    func testCopyLeavesTheRowsToPgDumpWhereCopyingWouldCostTheServerMore() throws {
        // 64 × (50 + 10) = 3 840 lock slots in the test cluster: 1 000 tables locked twice is more than half.
        let many = try cluster.createDatabase(prefix: "locks", seed: """
            DO $$ BEGIN FOR i IN 1..1000 LOOP EXECUTE format('CREATE TABLE t%s (id int)', i); END LOOP; END $$;
            INSERT INTO t1 SELECT generate_series(1, 10);
            """)
        let copied = try tool("dbbackup", ["--data-by", "copy", "--database-url", cluster.url(database: many), "--repo", repository!])
        XCTAssertEqual(copied.status, 0, copied.standardError)
        XCTAssertTrue(copied.standardError.contains("--data-by copy: copying 1000 tables would take") && copied.standardError.contains("locks beside pg_dump's")
                      && copied.standardError.contains("pg_dump reads the rows instead"), copied.standardError)
        XCTAssertEqual(try manifest(copied.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)).tables.first { $0.name == "t1" }?.rows, 10)

        try seed(rows: 10)
        let bin = try TestProcess.run(TestPaths.repositoryRoot + "/scripts/pg-majors.sh", ["bin", "17"])
        XCTAssertEqual(bin.status, 0, "pg_dump 17 is installed (scripts/pg-majors.sh install 17): \(bin.standardError)")
        let newer = try tool("dbbackup", ["--data-by", "copy"] + common, environment: ["PG_BIN": bin.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)])
        XCTAssertEqual(newer.status, 0, newer.standardError)
        XCTAssertTrue(newer.standardError.contains("is PostgreSQL 17's and the server is 15") && newer.standardError.contains("pg_dump reads the rows instead"),
                      newer.standardError)
        let same = try tool("dbbackup", ["--data-by", "copy"] + common)
        XCTAssertEqual(same.status, 0, same.standardError)
        XCTAssertFalse(same.standardError.contains("--data-by copy:"), "a small database of the server's own major is copied: \(same.standardError)")
    }

    /// pg_dump's data stream (`--data-by pg_dump`) checked against count(*) when it lost a row.
    func testCountCheckFailsTheBackupWhenTheDumpLostARow() throws {
        try seed(rows: 10)
        let common = ["--data-by", "pg_dump"] + common
        let before = try cluster.rowCounts(database: database)
        let dropsARow = try filteredPgDump(#"{ print } /^COPY public\.users / { getline }"#)
        // Without the check the manifest says what the dump holds: what a restore of it gives.
        let plain = try tool("dbbackup", common, environment: dropsARow)
        XCTAssertEqual(plain.status, 0, plain.standardError)
        XCTAssertEqual(try manifest(plain.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)).tables.first { $0.name == "users" }?.rows, 9)
        let stored = listing()

        let checked = try tool("dbbackup", ["--count-check"] + common, environment: dropsARow)
        XCTAssertEqual(checked.status, ExitStatus.verificationMismatch.rawValue, checked.standardError)
        XCTAssertTrue(checked.standardError.contains("the rows pg_dump wrote differ from count(*) in the same snapshot (expected: the dump's, found: count(*)): public.users: expected 9, found 10; nothing was stored"),
                      checked.standardError)
        XCTAssertLessThanOrEqual(checked.standardError.split(separator: "\n").count, 2, "one line and its hint: \(checked.standardError)")
        XCTAssertEqual(listing(), stored, "the failed backup left nothing behind")
        XCTAssertEqual(try cluster.rowCounts(database: database), before)
    }

    /// pg_dump's data stream (`--data-by pg_dump`) without one table's COPY block.
    func testATableTheDumpHasNoRowsForFailsTheBackup() throws {
        try seed(rows: 10)
        let common = ["--data-by", "pg_dump"] + common
        let dropsTheBlock = try filteredPgDump(#"/^COPY public\.meetings / { skip = 1; next } skip && /^\\\.$/ { skip = 0; next } !skip { print }"#)
        let result = try tool("dbbackup", common, environment: dropsTheBlock)
        XCTAssertEqual(result.status, ExitStatus.toolFailed.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("pg_dump wrote no rows for table public.meetings, which its snapshot holds; a restore would create it empty, so nothing was stored"),
                      result.standardError)
        XCTAssertEqual(listing().filter { $0.hasPrefix("backups/") }, [], "no backup was stored")
    }

    func testCountCheckIsRefusedWithPhysical() throws {
        let result = try capture(["--physical", "--count-check"])
        XCTAssertEqual(result.status, ExitStatus.usage.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("--count-check checks a logical backup's row counts"), result.standardError)
    }

    func testMemoryDoesNotGrowWithDatabaseSize() throws {
        let connection = try cluster.connect(database: database)
        try connection.execute(script: "CREATE TABLE events (id bigserial PRIMARY KEY, payload text)")
        try connection.execute(script: "INSERT INTO events (payload) SELECT repeat(md5(g::text), 4) FROM generate_series(1, 20000) g")
        let small = try capture(["--compression-level", "1"])
        XCTAssertEqual(small.status, 0, small.standardError)
        try connection.execute(script: "INSERT INTO events (payload) SELECT repeat(md5(g::text), 4) FROM generate_series(1, 800000) g")
        let large = try capture(["--compression-level", "1"])
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
