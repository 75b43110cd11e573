@testable import BackupStorage
import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// The kill matrix: SIGTERM and SIGINT at random points of every tool's run. Each cell checks that
/// the run exits 130 with one line saying what it removed and kept, that nothing of the run is left
/// (no partial file, no open multipart upload, no scratch or drill database), that the target database
/// accepts connections, and that the next run succeeds. Steps too short to hit from outside (the swap,
/// between two prune deletions) are hit with `DBRECOVERY_SIGNAL_AT`, which makes the tool signal itself
/// at that exact point through the same handler.
final class SignalTests: IntegrationTestCase {
    override func setUpWithError() throws {
        // About 40 MB of SQL: a dump at level 9 on one core (zlib, one member) takes a few seconds, long enough to interrupt.
        try useDatabase(prefix: "signals", seed: Self.eventsSeed + "\n" + """
            CREATE TABLE tags (id int PRIMARY KEY, name text);
            INSERT INTO tags SELECT g, 't' || g FROM generate_series(1, 1000) g;
            """)
        useLocalRepository()
    }

    // MARK: - Cells

    func testBackupInterruptedAtRandomPointsLeavesNothingAndTheNextRunSucceeds() throws {
        let slow = ["--database-url", cluster.url(database: database), "--repo", repository!, "--jobs", "1", "--compression-level", "9"]
        XCTAssertEqual(try tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository!]).status, 0)
        for signal in [SIGTERM, SIGINT] {
            let before = try localEntries()
            // The one-member zlib layout: libdeflate's members finish this dump before the signal could come.
            let run = try interrupt("dbbackup", slow, environment: ["DBRECOVERY_DUMP_LAYOUT": "single-member"], signal: signal, trigger: .after(0.2...1.2))
            assertInterrupted(run, signal: signal, cell: "backup local")
            XCTAssertEqual(try localEntries(), before, "backup local \(name(signal)): the run left files in the repository")
        }
        XCTAssertEqual(try tool("dbbackup", slow).status, 0, "backup local: the next run")
    }

    func testS3BackupInterruptedAbortsItsUploadAndTheNextRunSucceeds() throws {
        try useBucket()
        let address = "s3://\(bucket!)/prod"
        let store = try bucketStore(prefix: "prod")
        let slow = ["--database-url", cluster.url(database: database), "--repo", address, "--jobs", "1", "--compression-level", "9"]
        for signal in [SIGTERM, SIGINT] {
            let before = Set(try store.list(prefix: "backups/").map(\.key))
            let run = try interrupt("dbbackup", slow, environment: s3.environment().merging(["DBRECOVERY_DUMP_LAYOUT": "single-member"]) { _, new in new },
                                    signal: signal, trigger: .after(0.5...1.5))
            assertInterrupted(run, signal: signal, cell: "backup S3")
            XCTAssertEqual(Set(try store.list(prefix: "backups/").map(\.key)), before, "backup S3 \(name(signal)): objects left")
            XCTAssertEqual(try store.openMultipartUploads(), [], "backup S3 \(name(signal)): the multipart upload was not aborted")
        }
        XCTAssertEqual(try tool("dbbackup", slow, environment: s3.environment()).status, 0, "backup S3: the next run")
    }

    func testPhysicalBackupInterruptedStopsPgBasebackupAndLeavesNothing() throws {
        let physical = try PostgresCluster(archiveCommand: "/bin/true")
        defer { physical.stop() }
        let name = try physical.createDatabase(prefix: "base", seed: "CREATE TABLE filler AS SELECT g, md5(g::text) AS t FROM generate_series(1, 200000) g")
        let slow = ["--physical", "--database-url", physical.url(database: name), "--repo", repository!, "--jobs", "1", "--compression-level", "9"]
        for signal in [SIGTERM, SIGINT] {
            let before = try localEntries()
            let run = try interrupt("dbbackup", slow, environment: physical.environment, signal: signal, trigger: .after(0.3...1.0))
            assertInterrupted(run, signal: signal, cell: "backup physical")
            XCTAssertEqual(try localEntries(), before, "backup physical \(self.name(signal)): the run left files in the repository")
            // The WAL sender notices its client is gone within moments; a stuck one would stay.
            var senders: String?
            for _ in 0..<50 {
                senders = try physical.connect().query("SELECT count(*) FROM pg_stat_replication").scalar
                if senders == "0" { break }
                usleep(100_000)
            }
            XCTAssertEqual(senders, "0", "backup physical \(self.name(signal)): pg_basebackup still streaming 5 s later")
        }
        let next = try TestProcess.tool("dbbackup", slow, cluster: physical)
        XCTAssertEqual(next.status, 0, "backup physical: the next run: \(next.standardError)")
    }

    func testRestoreInterruptedWhileLoadingVerifyingOrSwappingKeepsTheTargetOpen() throws {
        XCTAssertEqual(try tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository!]).status, 0)
        let target = try cluster.createDatabase(prefix: "target", seed: "CREATE TABLE keep_me (id int); INSERT INTO keep_me VALUES (1)")
        let arguments = ["latest", "--from-database", database!, "--yes", "--jobs", "1", "--repo", repository!, "--database-url", cluster.url(database: target)]
        let cells: [(String, Int32, Trigger, [String: String])] = [
            ("restore load", SIGTERM, .line("create scratch database", jitter: 0.0...0.2), [:]),
            ("restore load", SIGINT, .line("create scratch database", jitter: 0.05...0.3), [:]),
            ("restore verify", SIGTERM, .line("replay backup", jitter: 0.0...0.0), [:]),
            ("restore swap", SIGTERM, .none, ["DBRECOVERY_SIGNAL_AT": "restore:during-swap"]),
            ("restore swap", SIGINT, .none, ["DBRECOVERY_SIGNAL_AT": "restore:during-swap", "DBRECOVERY_SIGNAL": "INT"]),
        ]
        for (cell, signal, trigger, environment) in cells {
            let databasesBefore = try databaseNames()
            let run = try interrupt("dbrestore", arguments, environment: environment, signal: signal, trigger: trigger)
            assertInterrupted(run, signal: signal, cell: cell)
            XCTAssertEqual(try databaseNames(), databasesBefore, "\(cell) \(name(signal)): databases created or dropped")
            try assertOpen(target, cell: "\(cell) \(name(signal))")
            XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM keep_me", database: target), "1", "\(cell): the target was changed")
        }
        let next = try tool("dbrestore", arguments)
        XCTAssertEqual(next.status, 0, "restore: the next run: \(next.standardError)")
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM events", database: target), "300000")
    }

    /// `--emergency` tries older backups when one fails, but an interruption is not a backup's failure:
    /// the run stops at once, and no second candidate is tried.
    func testEmergencyRestoreInterruptedTriesNoOtherCandidate() throws {
        for _ in 0..<2 {
            XCTAssertEqual(try tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository!]).status, 0)
            sleep(1)
        }
        let target = try cluster.createDatabase(prefix: "emergency")
        let databasesBefore = try databaseNames()
        let run = try interrupt("dbrestore", ["--from-database", database!, "--emergency", "--jobs", "1", "--repo", repository!, "--database-url", cluster.url(database: target)],
                                signal: SIGTERM, trigger: .line("create scratch database", jitter: 0.0...0.2))
        assertInterrupted(run, signal: SIGTERM, cell: "emergency")
        XCTAssertFalse(run.standardError.contains("skip backup"), "emergency: the interrupted candidate was skipped for the next: \(run.standardError)")
        XCTAssertEqual(run.standardError.components(separatedBy: "create scratch database").count - 1, 1,
                       "emergency: a second candidate was tried after the signal: \(run.standardError)")
        XCTAssertEqual(try databaseNames(), databasesBefore, "emergency: databases created or dropped")
        try assertOpen(target, cell: "emergency")
    }

    func testDrillInterruptedDropsItsDrillDatabase() throws {
        XCTAssertEqual(try tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository!]).status, 0)
        let arguments = ["--drill", "--jobs", "1", "--repo", repository!, "--database-url", cluster.url(database: database)]
        for signal in [SIGTERM, SIGINT] {
            let databasesBefore = try databaseNames()
            let run = try interrupt("dbrestore", arguments, signal: signal, trigger: .line("create scratch database", jitter: 0.0...0.3))
            assertInterrupted(run, signal: signal, cell: "drill")
            XCTAssertEqual(try databaseNames(), databasesBefore, "drill \(name(signal)): a drill database was left")
            try assertOpen(database, cell: "drill \(name(signal))")
        }
        let next = try tool("dbrestore", arguments)
        XCTAssertEqual(next.status, 0, "drill: the next run: \(next.standardError)")
    }

    /// The signal's PQcancel can land on the DROP DATABASE of a failed candidate's scratch database
    /// (an outside attacker hit it one run in ten). Made certain here: the test holds a lock the drop
    /// waits for and signals then; the clean-up must drop it again, not leave it behind and end with
    /// "nothing of this run needed removing" (round 6 brief f1 item 2).
    func testASignalThatCancelsTheScratchDropStillDropsIt() throws {
        let id = try backup()
        // A row count that cannot match: the only candidate fails after its load and its scratch database is dropped.
        try editManifest(id) { object in
            var tables = object["tables"] as? [[String: Any]] ?? []
            tables[0]["rows"] = ((tables[0]["rows"] as? Int) ?? 0) + 1
            object["tables"] = tables
        }
        let drill = try TestProcess.start("dbrestore", common + ["--drill", "--jobs", "1"], cluster: cluster)
        let output = OutputCollector(descriptor: drill.standardError, limit: 1 << 20)
        let watcher = try cluster.connect()
        defer { watcher.close() }
        let deadline = Date().addingTimeInterval(60)
        var scratch: String?
        while scratch == nil && !output.ended && Date() < deadline {
            scratch = try watcher.query("SELECT datname::text FROM pg_database WHERE datname LIKE $1", ["\(database!)\\_drill\\_%"]).scalar
            if scratch == nil { usleep(5_000) }
        }
        let name = try XCTUnwrap(scratch, "no drill database appeared: \(output.soFar)")
        // A lock on the database that DROP DATABASE waits for (the load and the count do not).
        let holder = try cluster.connect()
        defer { holder.close() }
        try holder.execute(script: "BEGIN; COMMENT ON DATABASE \(holder.quoteIdentifier(name)) IS 'held by the test'")
        var dropWaits = false
        while !dropWaits && !output.ended && Date() < deadline {
            dropWaits = try watcher.query("""
                SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'DROP DATABASE%' AND wait_event_type = 'Lock'
                """).scalar != "0"
            if !dropWaits { usleep(5_000) }
        }
        XCTAssertTrue(dropWaits, "the scratch drop never waited for the test's lock: \(output.soFar)")
        drill.send(SIGTERM)
        usleep(500_000)   // the PQcancel has ended the waiting drop by now
        try holder.execute(script: "COMMIT")
        let finished = drill.waitForExit(within: 60, orFail: "the drill did not stop: \(output.soFar)")
        _ = output.finish()
        XCTAssertEqual(finished.exitCode, ExitStatus.interrupted.rawValue, output.soFar)
        XCTAssertEqual(try databases(like: "\(database!)_%"), [], "the scratch database was left behind: \(output.soFar)")
        XCTAssertTrue(output.soFar.contains("dropped the scratch database \(name)"), output.soFar)
        XCTAssertFalse(output.soFar.contains("nothing of this run needed removing"), output.soFar)
    }

    func testPruneInterruptedBetweenBackupsLeavesOnlyWholeBackups() throws {
        let small = try cluster.createDatabase(prefix: "prune", seed: "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        for _ in 0..<3 {
            XCTAssertEqual(try tool("dbbackup", ["--database-url", cluster.url(database: small), "--repo", repository!]).status, 0)
            sleep(1)
        }
        let policy = TestPaths.temporaryDirectory(prefix: "policy") + "/p.toml"
        try "[local]\nkeep_last = 1\n".write(toFile: policy, atomically: true, encoding: .utf8)
        // A deleting dbprune without a terminal needs --yes where the tool knows the flag (issue 16).
        let confirm = try tool("dbprune", ["--help"]).standardOutput.contains("--yes") ? ["--yes"] : []
        let prune = ["--repo", repository!, "--policy", policy] + confirm
        let run = try interrupt("dbprune", prune, environment: ["DBRECOVERY_SIGNAL_AT": "prune:between-deletes"],
                                signal: SIGTERM, trigger: .none)
        assertInterrupted(run, signal: SIGTERM, cell: "prune")
        let entries = try Catalog(store: try LocalStore(root: repository, create: false)).entries()
        XCTAssertEqual(entries.count, 2, "prune: the run goes on to the end of the backup it was deleting, then stops")
        for entry in entries {
            XCTAssertEqual(try tool("dbverify", ["--files", entry.id, "--repo", repository!]).status, 0, "prune: \(entry.id) is no longer whole")
        }
        let next = try tool("dbprune", prune)
        XCTAssertEqual(next.status, 0, "prune: the next run: \(next.standardError)")
        XCTAssertEqual(try Catalog(store: try LocalStore(root: repository, create: false)).entries().count, 1)
    }

    func testMigrateDownInterruptedRollsBackAndReleasesItsLock() throws {
        let name = try cluster.createDatabase(prefix: "migsig")
        let migrations = TestPaths.temporaryDirectory(prefix: "migrations")
        let files = [
            "0001_a.up.sql": "CREATE TABLE a (id int);", "0001_a.down.sql": "DROP TABLE a;",
            "0002_b.up.sql": "CREATE TABLE b (id int);", "0002_b.down.sql": "SELECT pg_sleep(3);\nDROP TABLE b;",
        ]
        for (file, sql) in files { try sql.write(toFile: migrations + "/" + file, atomically: true, encoding: .utf8) }
        let common = ["--database-url", cluster.url(database: name), "--dir", migrations]
        XCTAssertEqual(try tool("dbmigrate", ["up"] + common).status, 0)
        let down = ["down", "--steps", "2", "--yes"] + common
        for (signal, arguments) in [(SIGTERM, down + ["--no-backup"]), (SIGINT, down + ["--repo", repository!])] {
            let run = try interrupt("dbmigrate", arguments, signal: signal, trigger: .after(0.4...1.5))
            assertInterrupted(run, signal: signal, cell: "migrate down")
            // schema_version holds one row per applied version (dbmigrate's own records live beside it).
            let versions = try cluster.connect(database: name).query("SELECT version::text FROM schema_version ORDER BY 1").rows.compactMap { $0[0] }
            XCTAssertEqual(versions, ["1", "2"], "migrate down \(self.name(signal)): not rolled back")
            XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM pg_tables WHERE tablename IN ('a', 'b')", database: name), "2")
        }
        let next = try tool("dbmigrate", down + ["--no-backup"])
        XCTAssertEqual(next.status, 0, "migrate down: the next run (the advisory lock must be free): \(next.standardError)")
    }

    /// A connect that hangs (a server that accepts TCP and never answers) cannot be cancelled: the
    /// first signal (SIGHUP here) waits for it, a second one ends the run at once, exit 130.
    func testASecondSignalExitsAtOnce() throws {
        let silent = try ChildProcess(executable: "/usr/bin/env", arguments: ["python3", "-c", """
            import socket, sys, time
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
            print(s.getsockname()[1], flush=True); time.sleep(60)
            """], stdin: .null, stdout: .pipe, stderr: .null)
        defer {
            silent.send(SIGKILL)
            silent.waitForExit()
        }
        var line = ""
        var byte: UInt8 = 0
        while read(silent.standardOutput, &byte, 1) == 1, byte != 10 { line.append(Character(UnicodeScalar(byte))) }
        let port = try XCTUnwrap(Int(line), "the silent server did not start")
        let process = try TestProcess.start("dbmigrate", ["status", "--database-url", "postgresql://app@127.0.0.1:\(port)/app",
                                                          "--dir", TestPaths.temporaryDirectory(prefix: "migrations")])
        let watcher = OutputCollector(descriptor: process.standardError, limit: 1 << 20)
        // SIGHUP, unless this test runs under nohup: an ignored SIGHUP is inherited, and stays ignored.
        var current = sigaction()
        sigaction(SIGHUP, nil, &current)
        let ignored = unsafeBitCast(current.__sigaction_handler.sa_handler, to: Int.self) == 1   // SIG_IGN
        usleep(500_000)
        process.send(ignored ? SIGTERM : SIGHUP)
        usleep(500_000)
        let second = Date()
        process.send(SIGINT)
        let termination = process.waitForExit()
        _ = watcher.finish()
        XCTAssertEqual(termination.exitCode, ExitStatus.interrupted.rawValue, watcher.soFar)
        XCTAssertLessThan(Date().timeIntervalSince(second), 2, "the second signal must end the run at once")
        XCTAssertTrue(watcher.soFar.contains("second signal"), watcher.soFar)
    }

    // MARK: - Running and interrupting

    enum Trigger {
        /// A random delay after the start.
        case after(ClosedRange<Double>)
        /// When stderr shows `text` (a timeline step that ended), then a random delay.
        case line(String, jitter: ClosedRange<Double>)
        /// The tool signals itself (`DBRECOVERY_SIGNAL_AT`); nothing is sent from here.
        case none
    }

    struct Interrupted {
        let status: Int32
        let standardError: String
    }

    /// Runs a tool, signals it at the trigger, and waits (at most 30 s) for it to end.
    private func interrupt(_ name: String, _ arguments: [String], environment: [String: String] = [:], signal: Int32,
                           trigger: Trigger) throws -> Interrupted {
        let process = try TestProcess.start(name, arguments, cluster: cluster, environment: environment)
        let watcher = OutputCollector(descriptor: process.standardError, limit: 1 << 20)
        switch trigger {
        case .after(let range):
            usleep(UInt32(Double.random(in: range) * 1_000_000))
            process.send(signal)
        case .line(let text, let jitter):
            let deadline = Date().addingTimeInterval(60)
            while !watcher.soFar.contains(text) && !watcher.ended && Date() < deadline { usleep(5_000) }
            XCTAssertTrue(watcher.soFar.contains(text), "\(name) never printed '\(text)': \(watcher.soFar)")
            usleep(UInt32(Double.random(in: jitter) * 1_000_000))
            process.send(signal)
        case .none:
            break
        }
        let termination = process.waitForExit(within: 30, orFail: "\(name) did not stop within 30 s of \(self.name(signal)): \(watcher.soFar)")
        _ = watcher.finish()
        return Interrupted(status: termination.exitCode ?? (128 + (termination.signal ?? 0)), standardError: watcher.soFar)
    }

    private func assertInterrupted(_ run: Interrupted, signal: Int32, cell: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(run.status, ExitStatus.interrupted.rawValue, "\(cell) \(name(signal)): \(run.standardError)", file: file, line: line)
        let errorLines = run.standardError.split(separator: "\n").filter { $0.contains(": error: ") }
        XCTAssertEqual(errorLines.count, 1, "\(cell) \(name(signal)): one error line: \(run.standardError)", file: file, line: line)
        XCTAssertTrue(errorLines.first?.contains("interrupted by \(name(signal))") == true, "\(cell): \(run.standardError)", file: file, line: line)
        XCTAssertTrue(run.standardError.contains("HINT: "), "\(cell): \(run.standardError)", file: file, line: line)
    }

    private func assertOpen(_ name: String, cell: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let allowed = try cluster.connect().query("SELECT datallowconn::text FROM pg_database WHERE datname = $1", [name]).scalar
        XCTAssertEqual(allowed, "true", "\(cell): \(name) refuses connections", file: file, line: line)
        XCTAssertEqual(try cluster.scalar("SELECT 1", database: name), "1", "\(cell): cannot connect to \(name)", file: file, line: line)
    }

    /// Every path under `<repo>/backups` (files and folders): a run that was interrupted adds none.
    private func localEntries() throws -> [String] {
        let root = repository + "/backups"
        guard FileManager.default.fileExists(atPath: root) else { return [] }
        return (FileManager.default.enumerator(atPath: root)?.allObjects as? [String] ?? []).sorted()
    }

    private func databaseNames() throws -> [String] {
        try cluster.connect().query("SELECT datname FROM pg_database ORDER BY 1").rows.compactMap { $0[0] }
    }

    private func name(_ signal: Int32) -> String {
        signal == SIGINT ? "SIGINT" : signal == SIGTERM ? "SIGTERM" : "signal \(signal)"
    }
}
