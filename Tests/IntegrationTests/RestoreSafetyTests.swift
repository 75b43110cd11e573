import BackupStorage
import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// The restore touches only what it made, the swap is safe to interrupt and bounded, and a restored
/// database says which backup it came from (issue 14.6, issue 16 E9/E10, issue 19 pre-restore copies).
final class RestoreSafetyTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useDatabase(prefix: "safety", seed: "CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 500) g")
        useLocalRepository()
    }

    private func allowsConnections(_ name: String) throws -> String? {
        try cluster.connect().query("SELECT datallowconn::text FROM pg_database WHERE datname = $1", [name]).scalar
    }

    private func count(_ name: String) throws -> String? {
        try cluster.scalar("SELECT count(*) FROM t", database: name)
    }

    /// Reproduction: a user database named `<target>_restore_2023` was dropped by the next restore of
    /// `<target>` as "the scratch database of a restore that was killed". Neither it nor one named
    /// like a pre-restore copy may be touched by a restore or by `dbrestore cleanup`.
    func testForeignDatabasesNamedLikeOursAreNeverTouched() throws {
        let foreign = ["\(database!)_restore_2023", "\(database!)_restore_20230101_000000", "\(database!)_pre_restore_20230101_000000",
                       "\(database!)_drill_20230101_000000"]
        for name in foreign {
            try cluster.connect().execute(script: "CREATE DATABASE \(name)")
            try cluster.connect(database: name).execute(script: "CREATE TABLE precious AS SELECT 1 AS keep")
        }
        try backup()
        let restore = try tool("dbrestore", common + ["latest", "--yes"])
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertFalse(restore.standardError.contains("dropped"), restore.standardError)
        let drill = try tool("dbrestore", common + ["--drill"])
        XCTAssertEqual(drill.status, 0, drill.standardError)
        let cleanup = try tool("dbrestore", ["cleanup", "--yes", "--database-url", cluster.url(database: database), "--keep", "0", "--keep-within", "0h"])
        XCTAssertEqual(cleanup.status, 0, cleanup.standardError)
        for name in foreign {
            XCTAssertEqual(try cluster.scalar("SELECT keep FROM precious", database: name), "1", "\(name) must be untouched")
        }
    }

    /// A restore of a database whose name fills PostgreSQL's 63 bytes, killed during the swap: the
    /// truncated scratch name is found by its marker and dropped, and the target is reopened.
    func testKilledRestoreOfALongNameIsRepairedByMarker() throws {
        let long = "long_" + String(repeating: "x", count: 50) + "_\(UInt32.random(in: 0...99_999))"
        try cluster.connect().execute(script: "CREATE DATABASE \(long)")
        try cluster.connect(database: long).execute(script: "CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 10) g")
        let arguments = ["latest", "--yes", "--repo", repository!, "--database-url", cluster.url(database: long)]
        XCTAssertEqual(try tool("dbbackup", ["--database-url", cluster.url(database: long), "--repo", repository!]).status, 0)
        let killed = try TestProcess.tool("dbrestore", arguments, cluster: cluster, environment: ["DBRECOVERY_CRASH_AT": "restore:during-swap"])
        XCTAssertEqual(killed.status, 128 + SIGKILL)
        XCTAssertEqual(try allowsConnections(long), "false")
        let prefix = String(long.prefix(20))
        let leftovers = try databases(like: "\(prefix)%_restore_%").filter { !$0.contains("_pre_restore_") }
        XCTAssertEqual(leftovers.count, 1, "the killed run left its scratch database")
        XCTAssertLessThan(leftovers[0].utf8.count, long.utf8.count + "_restore_20260101_000000".utf8.count, "its name was truncated")

        let next = try tool("dbrestore", arguments)
        XCTAssertEqual(next.status, 0, next.standardError)
        XCTAssertTrue(next.standardError.contains("dropped \(leftovers[0])"), next.standardError)
        XCTAssertTrue(next.standardError.contains("reopened \(long)"), next.standardError)
        XCTAssertFalse(try cluster.databaseExists(leftovers[0]))
        XCTAssertEqual(try allowsConnections(long), "true")
    }

    /// Reproduction (issue 19): a killed `--drill` left `<db>_drill_<time>` forever. It is marked, so
    /// the next drill (or restore, or cleanup) drops it.
    func testKilledDrillLeavesAMarkedDatabaseTheNextRunDrops() throws {
        try backup()
        let killed = try TestProcess.tool("dbrestore", common + ["--drill"], cluster: cluster, environment: ["DBRECOVERY_CRASH_AT": "restore:after-verify"])
        XCTAssertEqual(killed.status, 128 + SIGKILL)
        let left = try databases(like: "\(database!)_drill_%")
        XCTAssertEqual(left.count, 1, "the killed drill left its database")
        let next = try tool("dbrestore", common + ["--drill"])
        XCTAssertEqual(next.status, 0, next.standardError)
        XCTAssertTrue(next.standardError.contains("dropped \(left[0]), the drill database"), next.standardError)
        XCTAssertEqual(try databases(like: "\(database!)_%"), [])
    }

    /// A marked database renamed by hand since (a scratch database an operator put in place after a
    /// killed restore, a pre-restore copy renamed to keep it) is never dropped by repair or clean-up.
    func testMarkedDatabasesRenamedByHandAreLeftAlone() throws {
        try backup()
        let killed = try TestProcess.tool("dbrestore", common + ["latest", "--yes"], cluster: cluster, environment: ["DBRECOVERY_CRASH_AT": "restore:after-verify"])
        XCTAssertEqual(killed.status, 128 + SIGKILL)
        let scratch = try databases(like: "\(database!)_restore_%")
        XCTAssertEqual(scratch.count, 1)
        let rescued = "\(database!)_rescued"
        try cluster.connect().execute(script: "ALTER DATABASE \(scratch[0]) RENAME TO \(rescued)")
        XCTAssertEqual(try tool("dbrestore", common + ["latest", "--yes"]).status, 0)
        let copies = try databases(like: "\(database!)_pre_restore_%")
        XCTAssertEqual(copies.count, 1)
        let kept = "\(database!)_kept_copy"
        try cluster.connect().execute(script: "ALTER DATABASE \(copies[0]) RENAME TO \(kept)")
        let cleanup = try tool("dbrestore", ["cleanup", "--yes", "--database-url", cluster.url(database: database), "--keep", "0", "--keep-within", "0h"])
        XCTAssertEqual(cleanup.status, 0, cleanup.standardError)
        XCTAssertTrue(cleanup.standardOutput.contains("renamed since it was set aside"), cleanup.standardOutput)
        XCTAssertTrue(try cluster.databaseExists(rescued), "a scratch database renamed by hand stays")
        XCTAssertTrue(try cluster.databaseExists(kept), "a pre-restore copy renamed by hand stays")
        XCTAssertEqual(try count(rescued), "500")
    }

    /// A restoring role that is no superuser (CREATEDB, owner of the target) must be allowed to mark
    /// what it creates, or it is refused before anything changes; granted, it restores, and database
    /// settings it may not set are named as warnings.
    func testANonSuperuserRestoresOnceItMayMarkItsDatabases() throws {
        let role = "restorer_\(UInt32.random(in: 0...UInt32.max))"
        let owned = "owned_\(UInt32.random(in: 0...UInt32.max))"
        let admin = try cluster.connect()
        try admin.execute(script: "CREATE ROLE \(role) LOGIN CREATEDB PASSWORD '\(cluster.password)'")
        try admin.execute(script: "CREATE DATABASE \(owned) OWNER \(role)")
        try admin.execute(script: "ALTER DATABASE \(owned) SET log_statement = 'ddl'")
        let url = cluster.url(database: owned).replacingOccurrences(of: "postgres@", with: "\(role)@")
        try cluster.connect(database: owned).execute(script: "CREATE TABLE t AS SELECT 1 AS x; ALTER TABLE t OWNER TO \(role)")
        let arguments = ["--database-url", url, "--repo", repository!]
        XCTAssertEqual(try tool("dbbackup", arguments).status, 0)

        let refused = try tool("dbrestore", arguments + ["latest", "--yes"])
        XCTAssertEqual(refused.status, ExitStatus.databaseError.rawValue, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("GRANT SET ON PARAMETER dbrecovery.marker TO \(role)"), refused.standardError)
        XCTAssertEqual(try databases(like: "\(owned)_%"), [], "refused before anything changed")

        try admin.execute(script: "GRANT SET ON PARAMETER dbrecovery.marker TO \(role)")
        let restore = try tool("dbrestore", arguments + ["latest", "--yes"])
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertTrue(restore.standardError.contains("setting log_statement=ddl not restored: permission denied"), restore.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM t", database: owned), "1")
        XCTAssertEqual(try databases(like: "\(owned)_pre_restore_%").count, 1)
    }

    /// Holds the target with a prepared transaction, which `pg_terminate_backend` cannot end.
    private func prepareTransaction(on name: String) throws -> String {
        let gid = "held_by_test_\(UInt32.random(in: 0...UInt32.max))"
        try cluster.connect(database: name).execute(script: "BEGIN; INSERT INTO t VALUES (-1); PREPARE TRANSACTION '\(gid)'")
        return gid
    }

    private func rollbackPrepared(_ gid: String, on name: String) {
        _ = try? cluster.connect(database: name).execute(script: "ROLLBACK PREPARED '\(gid)'")
    }

    /// Reproduction: a session that cannot be terminated (a prepared transaction) kept the target
    /// closed for ~104 s, then exit 31 with a hint blaming application sessions.
    func testPreparedTransactionBlockingTheSwapGivesABoundedWaitAndNamesIt() throws {
        try backup()
        let gid = try prepareTransaction(on: database)
        defer { rollbackPrepared(gid, on: database) }
        let started = Date()
        let result = try tool("dbrestore", common + ["latest", "--yes", "--swap-timeout", "3"])
        let elapsed = Date().timeIntervalSince(started)
        XCTAssertEqual(result.status, ExitStatus.restoreFailed.rawValue, result.standardError)
        XCTAssertLessThan(elapsed, 20, "the wait is bounded by --swap-timeout")
        XCTAssertTrue(result.standardError.contains("did not end within 3 s"), result.standardError)
        XCTAssertTrue(result.standardError.contains("prepared transaction '\(gid)'"), result.standardError)
        XCTAssertTrue(result.standardError.contains("ROLLBACK PREPARED '\(gid)'"), "names the query that ends it: \(result.standardError)")
        XCTAssertEqual(try allowsConnections(database), "true", "the target accepts connections again")
        XCTAssertEqual(try count(database), "500", "the target is unchanged")
        XCTAssertEqual(try databases(like: "\(database!)_%"), [], "no scratch or aside database left")
    }

    /// Reproduction: SIGTERM during the swap left the production database refusing all connections
    /// (`datallowconn = false`) until another restore ran.
    func testSIGTERMDuringTheSwapLeavesTheTargetAcceptingConnections() throws {
        try backup()
        let gid = try prepareTransaction(on: database)   // keeps the swap waiting, with the target closed
        defer { rollbackPrepared(gid, on: database) }
        let process = try TestProcess.start("dbrestore", common + ["latest", "--yes", "--swap-timeout", "120"], cluster: cluster)
        let errors = OutputCollector(descriptor: process.standardError, limit: 64 * 1024)
        var closed = false
        for _ in 0..<300 where !closed {
            usleep(100_000)
            closed = try allowsConnections(database) == "false"
        }
        XCTAssertTrue(closed, "the restore reached the swap")
        process.send(SIGTERM)
        let termination = process.waitForExit()
        let stderr = errors.finish()
        XCTAssertEqual(termination.exitCode, ExitStatus.interrupted.rawValue, stderr)
        XCTAssertTrue(stderr.contains("interrupted by SIGTERM"), stderr)
        XCTAssertEqual(try allowsConnections(database), "true", "the target accepts connections")
        XCTAssertEqual(try count(database), "500")
        XCTAssertEqual(try databases(like: "\(database!)_%"), [], "the scratch database was dropped")
    }

    /// Another session's open transaction after `COMMENT ON DATABASE <target>`, connected to another
    /// database (so the swap does not end it): its lock on the database object holds up the swap's
    /// `ALTER DATABASE … RENAME`. Returns the session (keep it open) and its backend pid.
    private func holdDatabaseLock(on name: String, with statement: String = "COMMENT ON DATABASE %@ IS 'being edited'") throws -> (PostgresConnection, String) {
        let holder = try cluster.connect(database: "postgres")
        let pid = try holder.query("SELECT pg_backend_pid()::text").scalar ?? "?"
        try holder.execute(script: "BEGIN")
        try holder.execute(script: statement.replacingOccurrences(of: "%@", with: holder.quoteIdentifier(name)))
        return (holder, pid)
    }

    /// Waits until a dbrestore session waits for a lock (the swap is held up).
    private func waitForBlockedRestore() throws -> Bool {
        for _ in 0..<600 {
            let waiting = try cluster.connect().query("""
                SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbrestore' AND wait_event_type = 'Lock'
                """).scalar
            if waiting != "0" { return true }
            usleep(100_000)
        }
        return false
    }

    /// SIGTERM while the swap waits for the lock another session took with `statement` (see
    /// `holdDatabaseLock`): exit 130 within seconds, the target unchanged and open, no scratch left.
    /// Returns dbrestore's stderr.
    @discardableResult
    private func assertSIGTERMAbandonsTheSwap(whileWaitingFor statement: String, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        try backup()
        try cluster.connect(database: database).execute(script: "INSERT INTO t SELECT g FROM generate_series(501, 507) g")
        let (holder, _) = try holdDatabaseLock(on: database, with: statement)
        defer { holder.close() }
        let process = try TestProcess.start("dbrestore", common + ["latest", "--yes", "--swap-timeout", "120", "--lock-wait", "60s"], cluster: cluster)
        let errors = OutputCollector(descriptor: process.standardError, limit: 64 * 1024)
        XCTAssertTrue(try waitForBlockedRestore(), "the swap waits for the lock", file: file, line: line)
        let signalled = Date()
        process.send(SIGTERM)
        let termination = process.waitForExit(within: 30, orFail: "dbrestore still waits for the lock 30 s after SIGTERM")
        let elapsed = Date().timeIntervalSince(signalled)
        let stderr = errors.finish()
        XCTAssertEqual(termination.exitCode, ExitStatus.interrupted.rawValue, stderr, file: file, line: line)
        XCTAssertLessThan(elapsed, 15, "the signal ends the lock wait, not the other session: \(stderr)", file: file, line: line)
        XCTAssertEqual(try count(database), "507", "the target is unchanged", file: file, line: line)
        XCTAssertEqual(try allowsConnections(database), "true", "the target accepts connections", file: file, line: line)
        XCTAssertEqual(try databases(like: "\(database!)_%"), [], "the scratch database was dropped", file: file, line: line)
        return stderr
    }

    /// Reproduction: with the swap's rename waiting for another session's lock, SIGTERM was held off
    /// until that session ended (~20 s later), then the swap completed and dbrestore exited 0 saying
    /// "SIGTERM arrived as the swap committed" — the target was replaced after the operator stopped it.
    func testSIGTERMWhileTheSwapWaitsForALockAbandonsItAtOnce() throws {
        let stderr = try assertSIGTERMAbandonsTheSwap(whileWaitingFor: "COMMENT ON DATABASE %@ IS 'being edited'")
        XCTAssertTrue(stderr.contains("interrupted by SIGTERM"), stderr)
        XCTAssertFalse(stderr.contains("arrived as the swap committed"), stderr)
    }

    /// The variant: another session's open transaction after `ALTER DATABASE <target> SET …` holds
    /// the target's settings row, which the swap's closing of the target (its marker) waits for.
    func testSIGTERMWhileClosingTheTargetWaitsForASettingsChangeAbandonsTheSwap() throws {
        try assertSIGTERMAbandonsTheSwap(whileWaitingFor: "ALTER DATABASE %@ SET work_mem = '5MB'")
    }

    /// Found with the variant above: when that session commits instead, the closing of the target hit
    /// the server's race on the database's first setting (both inserted its `pg_db_role_setting`
    /// row: "duplicate key value violates unique constraint", exit 11). The closing is run again.
    func testTheSwapGoesOnWhenASettingsChangeItWaitedForCommits() throws {
        try backup()
        let (holder, _) = try holdDatabaseLock(on: database, with: "ALTER DATABASE %@ SET work_mem = '5MB'")
        defer { holder.close() }
        let process = try TestProcess.start("dbrestore", common + ["latest", "--yes", "--swap-timeout", "120", "--lock-wait", "60s"], cluster: cluster)
        let errors = OutputCollector(descriptor: process.standardError, limit: 64 * 1024)
        XCTAssertTrue(try waitForBlockedRestore(), "the swap waits for the lock")
        try holder.execute(script: "COMMIT")
        let termination = process.waitForExit(within: 60, orFail: "dbrestore did not finish")
        let stderr = errors.finish()
        XCTAssertEqual(termination.exitCode, 0, stderr)
        XCTAssertEqual(try count(database), "500")
        XCTAssertEqual(try allowsConnections(database), "true")
    }

    /// Reproduction: with the swap's rename waiting for another session's lock, the swap waited
    /// silently past `--swap-timeout` (53.6 s with 30 s), bounded only by `--lock-wait`.
    func testASwapWaitingForALockStopsAtTheSwapTimeoutNamingTheBlocker() throws {
        try backup()
        try cluster.connect(database: database).execute(script: "INSERT INTO t SELECT g FROM generate_series(501, 507) g")
        let (holder, pid) = try holdDatabaseLock(on: database)
        defer { holder.close() }
        let started = Date()
        let process = try TestProcess.start("dbrestore", common + ["latest", "--yes", "--swap-timeout", "6", "--lock-wait", "60s"], cluster: cluster)
        let errors = OutputCollector(descriptor: process.standardError, limit: 64 * 1024)
        let termination = process.waitForExit(within: 90, orFail: "dbrestore still waits for the lock")
        let elapsed = Date().timeIntervalSince(started)
        let stderr = errors.finish()
        XCTAssertEqual(termination.exitCode, ExitStatus.lockTimeout.rawValue, stderr)
        XCTAssertLessThan(elapsed, 40, "bounded by --swap-timeout, not --lock-wait: \(stderr)")
        XCTAssertTrue(stderr.contains("waited longer than --swap-timeout (6 s) for a lock"), stderr)
        XCTAssertTrue(stderr.contains("pid \(pid) ("), "names the blocking session: \(stderr)")
        XCTAssertTrue(stderr.contains("COMMENT ON DATABASE"), "with its statement: \(stderr)")
        XCTAssertTrue(stderr.contains("SELECT pg_terminate_backend(\(pid))"), stderr)
        XCTAssertTrue(stderr.contains("has waited 3 s for a lock held by pid \(pid)"), "said while waiting: \(stderr)")
        XCTAssertEqual(try count(database), "507", "the target is unchanged")
        XCTAssertEqual(try allowsConnections(database), "true", "the target accepts connections")
        XCTAssertEqual(try databases(like: "\(database!)_%"), [], "the scratch database was dropped")
    }

    /// Reproduction: `dbverify latest` after `dbrestore <older-id>` checked the newest backup and
    /// advised to "restore again". With no id it checks the backup the database was restored from.
    func testVerifyAfterRestoringAnOlderBackupChecksThatBackup() throws {
        let older = try backup()
        try cluster.connect(database: database).execute(script: "INSERT INTO t SELECT g FROM generate_series(1, 25) g")
        sleep(1)
        let newer = try backup()
        let restore = try tool("dbrestore", common + [older, "--yes"])
        XCTAssertEqual(restore.status, 0, restore.standardError)

        let implicit = try tool("dbverify", common)
        XCTAssertEqual(implicit.status, 0, implicit.standardError + implicit.standardOutput)
        XCTAssertTrue(implicit.standardError.contains("comparing \(database!) with backup \(older) (restored from it"), implicit.standardError)
        let json = try tool("dbverify", common + ["--json"])
        let object = try JSONSerialization.jsonObject(with: Data(json.standardOutput.utf8)) as? [String: Any]
        XCTAssertEqual(object?["backup_id"] as? String, older)

        let named = try tool("dbverify", common + [newer])
        XCTAssertEqual(named.status, ExitStatus.verificationMismatch.rawValue, "an id given is still the one checked")
    }

    /// Reproduction: `dbrestore --dry-run` did not read the files it would restore.
    func testDryRunChecksTheFilesItWouldRestore() throws {
        let id = try backup()
        let good = try tool("dbrestore", common + [id, "--dry-run"])
        XCTAssertEqual(good.status, 0, good.standardError)
        let files = good.standardOutput.split(separator: "\n").first { $0.hasPrefix("files:") } ?? ""
        XCTAssertTrue(files.contains("dump.sql.gz") && files.contains("verified: size, sha256 and the whole gzip stream"), good.standardOutput)

        let path = "\(repository!)/backups/\(id)/dump.sql.gz"
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        data[data.count / 2] ^= 0x20
        try data.write(to: URL(fileURLWithPath: path))
        let bad = try tool("dbrestore", common + [id, "--dry-run"])
        XCTAssertEqual(bad.status, ExitStatus.backupCorrupt.rawValue, bad.standardError)
        XCTAssertTrue(bad.standardError.contains("sha256"), bad.standardError)
    }

    /// Reproduction: after a double Ctrl-C, for ~8 s `dbrestore cleanup` refused with "another restore
    /// of app is running (pid N, application dbrestore)": N was the server session of the stopped
    /// dbrestore, still running its `DROP DATABASE`. Such a session (here psql named dbrestore, busy
    /// for 4 s with the target's lock held) ends with its statement: cleanup waits for it and runs.
    func testCleanupWaitsForTheServerSessionOfAStoppedRestoreToFinishItsStatement() throws {
        let leftover = try ChildProcess(executable: try PostgresTools().path(of: "psql"),
                                        arguments: ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", cluster.url(database: "postgres")],
                                        environment: cluster.environment.merging(["PGAPPNAME": "dbrestore"]) { $1 },
                                        stdin: .pipe, stdout: .null, stderr: .pipe)
        let script = "SELECT pg_advisory_lock(hashtext('dbrestore:\(database!)'));\nSELECT pg_sleep(4);\n"
        try Data(script.utf8).withUnsafeBytes { try leftover.writeToStandardInput($0) }
        leftover.closeStandardInput()
        var busy = false
        for _ in 0..<300 where !busy {
            busy = try cluster.connect().query("""
                SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbrestore' AND state = 'active' AND query LIKE '%pg_sleep%'
                """).scalar == "1"
            if !busy { usleep(50_000) }
        }
        XCTAssertTrue(busy, "the stand-in session holds the lock and is busy")
        let cleanup = try tool("dbrestore", ["cleanup", "--yes", "--database-url", cluster.url(database: database)])
        XCTAssertEqual(cleanup.status, 0, cleanup.standardError)
        XCTAssertFalse(cleanup.standardError.contains("another restore"), cleanup.standardError)
        XCTAssertEqual(leftover.waitForExit(within: 30, orFail: "psql did not end").exitCode, 0)
    }

    /// Reproduction: every restore keeps a `<db>_pre_restore_<time>` copy and nothing lists or
    /// removes them. `dbrestore cleanup` drops old ones — only those a restore marked.
    /// A restore killed while the server creates its scratch database leaves it without a marker (the
    /// marker is the next statement). Cleanup names it, with the statement that drops it, and never drops
    /// it: a database named like ours may still be someone else's.
    func testCleanupNamesAnUnmarkedDatabaseNamedLikeAScratchDatabaseAndKeepsIt() throws {
        let leftover = "\(database!)_restore_20261127_002450"
        let someoneElses = "\(database!)_restore_archive"
        for name in [leftover, someoneElses] { try cluster.connect().execute(script: "CREATE DATABASE \(name)") }
        defer { for name in [leftover, someoneElses] { _ = try? cluster.connect().execute(script: "DROP DATABASE IF EXISTS \(name)") } }
        let arguments = ["cleanup", "--database-url", cluster.url(database: database)]
        let dryRun = try tool("dbrestore", arguments + ["--dry-run", "--json"])
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        let report = try JSONSerialization.jsonObject(with: Data(dryRun.standardOutput.utf8)) as? [String: Any]
        XCTAssertEqual(report?["unmarked"] as? [String], [leftover], dryRun.standardOutput)
        let run = try tool("dbrestore", arguments + ["--yes"])
        XCTAssertEqual(run.status, 0, run.standardError)
        XCTAssertTrue(run.standardError.contains("\(leftover) carries no marker") && run.standardError.contains("DROP DATABASE \"\(leftover)\""), run.standardError)
        XCTAssertTrue(try cluster.databaseExists(leftover), "an unmarked database is never dropped")
        XCTAssertTrue(try cluster.databaseExists(someoneElses))
    }

    func testCleanupDropsOnlyMarkedPreRestoreCopies() throws {
        try backup()
        for round in 0..<3 {   // within one second or not: each kept copy gets a name of its own
            let restore = try tool("dbrestore", common + ["latest", "--yes"])
            XCTAssertEqual(restore.status, 0, restore.standardError)
            if round == 2 { XCTAssertTrue(restore.standardError.contains("3 pre-restore copies of \(database!) exist"), restore.standardError) }
        }
        let marked = try databases(like: "\(database!)_pre_restore_%")
        XCTAssertEqual(marked.count, 3)
        let lookalike = "\(database!)_pre_restore_19990101_000000"
        try cluster.connect().execute(script: "CREATE DATABASE \(lookalike)")
        let plan = try tool("dbrestore", common + ["latest", "--dry-run"])
        XCTAssertTrue(plan.standardOutput.contains("3 pre-restore copies of \(database!) kept by earlier restores"), plan.standardOutput)

        let cleanupArguments = ["cleanup", "--database-url", cluster.url(database: database), "--keep", "1", "--keep-within", "0h"]
        let dryRun = try tool("dbrestore", cleanupArguments + ["--dry-run", "--json"])
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        let report = try JSONSerialization.jsonObject(with: Data(dryRun.standardOutput.utf8)) as? [String: Any]
        let copies = report?["copies"] as? [[String: Any]] ?? []
        XCTAssertEqual(copies.compactMap { $0["action"] as? String }, ["kept", "would-drop", "would-drop"])
        XCTAssertFalse(copies.contains { $0["name"] as? String == lookalike }, "an unmarked database is not even listed")
        XCTAssertEqual(try databases(like: "\(database!)_pre_restore_%").count, 4, "--dry-run drops nothing")

        let unconfirmed = try tool("dbrestore", cleanupArguments)
        XCTAssertEqual(unconfirmed.status, ExitStatus.usage.rawValue, "dropping needs --yes: \(unconfirmed.standardError)")
        XCTAssertTrue(unconfirmed.standardError.contains("--yes"), unconfirmed.standardError)
        XCTAssertEqual(try databases(like: "\(database!)_pre_restore_%").count, 4)
        let cleanup = try tool("dbrestore", cleanupArguments + ["--yes"])
        XCTAssertEqual(cleanup.status, 0, cleanup.standardError)
        XCTAssertEqual(try databases(like: "\(database!)_pre_restore_%"), [lookalike, marked.sorted().last ?? ""].sorted(),
                       "the newest marked copy and the look-alike remain")
        XCTAssertEqual(try count(database), "500")
    }

    /// `[restore] keep_pre_restore` in the config file sets the default of `dbrestore cleanup`.
    func testCleanupReadsKeepPreRestoreFromTheConfigFile() throws {
        try backup()
        for _ in 0..<2 {
            XCTAssertEqual(try tool("dbrestore", common + ["latest", "--yes"]).status, 0)
        }
        let config = TestPaths.temporaryDirectory(prefix: "config") + "/config.toml"
        try "[restore]\nkeep_pre_restore = 0\nkeep_pre_restore_within = \"0h\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        let cleanup = try tool("dbrestore", ["cleanup", "--yes", "--database-url", cluster.url(database: database), "--config", config])
        XCTAssertEqual(cleanup.status, 0, cleanup.standardError)
        XCTAssertEqual(try databases(like: "\(database!)_pre_restore_%"), [])

        try "[restore]\nkeep_pre_restore = \"many\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        let bad = try tool("dbrestore", ["cleanup", "--yes", "--database-url", cluster.url(database: database), "--config", config])
        XCTAssertEqual(bad.status, ExitStatus.configuration.rawValue, bad.standardError)
        XCTAssertTrue(bad.standardError.contains("keep_pre_restore must be a whole number"), bad.standardError)
    }

    /// Reproduction (attack a11): a whole-database restore SIGKILLed during its swap left the target
    /// closed to connections; `cleanup --dry-run` listed only pre-restore copies and plain `cleanup`
    /// refused without `--yes`. Now the dry run (text and JSON) names the closed database, and plain
    /// `cleanup` reopens it (destroying nothing) and still refuses to drop the killed run's scratch
    /// database without `--yes`.
    func testCleanupNamesAndReopensATargetAKilledSwapLeftClosed() throws {
        try backup()
        let killed = try TestProcess.tool("dbrestore", common + ["latest", "--yes"], cluster: cluster, environment: ["DBRECOVERY_CRASH_AT": "restore:during-swap"])
        XCTAssertEqual(killed.status, 128 + SIGKILL)
        XCTAssertEqual(try allowsConnections(database), "false")
        let scratch = try databases(like: "\(database!)_restore_%")
        XCTAssertEqual(scratch.count, 1, "the killed run left its scratch database")
        let arguments = ["cleanup", "--database-url", cluster.url(database: database)]

        let dryRun = try tool("dbrestore", arguments + ["--dry-run"])
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        XCTAssertTrue(dryRun.standardError.contains("\(database!) is closed to connections by a killed restore"), dryRun.standardError)
        XCTAssertTrue(dryRun.standardError.contains("cleanup reopens it"), dryRun.standardError)
        XCTAssertTrue(dryRun.standardError.contains("would drop \(scratch[0])"), dryRun.standardError)
        let json = try tool("dbrestore", arguments + ["--dry-run", "--json"])
        let report = try JSONSerialization.jsonObject(with: Data(json.standardOutput.utf8)) as? [String: Any]
        XCTAssertEqual(report?["closed"] as? [String], [database!], json.standardOutput)
        XCTAssertTrue((report?["pending"] as? [String] ?? []).contains { $0.contains("closed to connections") }, json.standardOutput)
        XCTAssertEqual(try allowsConnections(database), "false", "--dry-run changes nothing")

        let plain = try tool("dbrestore", arguments)
        XCTAssertEqual(plain.status, ExitStatus.usage.rawValue, "the scratch database is dropped only with --yes: \(plain.standardError)")
        XCTAssertTrue(plain.standardError.contains("reopened \(database!)"), plain.standardError)
        XCTAssertTrue(plain.standardError.contains("--yes"), plain.standardError)
        XCTAssertEqual(try allowsConnections(database), "true", "reopening needs no --yes")
        XCTAssertEqual(try count(database), "500")
        XCTAssertTrue(try cluster.databaseExists(scratch[0]), "nothing dropped without --yes")

        let confirmed = try tool("dbrestore", arguments + ["--yes"])
        XCTAssertEqual(confirmed.status, 0, confirmed.standardError)
        XCTAssertFalse(try cluster.databaseExists(scratch[0]))
        let again = try tool("dbrestore", arguments)
        XCTAssertEqual(again.status, 0, "nothing left to drop: plain cleanup succeeds: \(again.standardError)")
    }
}
