import BackupStorage
import Foundation
import PostgresClient
import RecoveryKit
import Synchronization
import TestSupport
import XCTest

/// Issue 17: the version matrix. For each major from 14 to 18, on a server of that major: a logical
/// backup → `dbrestore` → `dbverify` (rows and schema), and a base backup → point-in-time recovery to
/// a time between two batches of rows; plus what crosses majors (a 14 backup into 17 says so; a 17
/// backup into 14 is refused) and which client programs are chosen.
///
/// Majors other than 15 come from `scripts/pg-majors.sh install`. A missing one fails under CI=true
/// (naming the install command) and is skipped elsewhere.
final class VersionMatrixTests: XCTestCase {
    // MARK: - The matrix, one method per major so that a failure names it

    func testPostgreSQL14() throws { try backupRestoreVerifyAndRecover(major: 14) }
    func testPostgreSQL15() throws { try backupRestoreVerifyAndRecover(major: 15) }
    func testPostgreSQL16() throws { try backupRestoreVerifyAndRecover(major: 16) }
    func testPostgreSQL17() throws { try backupRestoreVerifyAndRecover(major: 17) }
    func testPostgreSQL18() throws { try backupRestoreVerifyAndRecover(major: 18) }

    // MARK: - Across majors

    /// A logical backup of 14 restores into 17 and says so (stderr and --json); one of 17 into 14 is
    /// refused before anything is created, and the target stays as it was.
    func testLogicalBackupRestoresIntoANewerMajorOnlyAndSaysSo() throws {
        let (old, new, repository, source, oldID) = try backedUpOnTheOlder(14, newer: 17, prefix: "cross")

        let target = try new.cluster.createDatabase(prefix: "cross")
        let dryRun = try TestProcess.tool("dbrestore", [oldID, "--database-url", new.cluster.url(database: target), "--repo", repository, "--dry-run", "--json"],
                                          cluster: new.cluster)
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        let plan = try JSONSerialization.jsonObject(with: Data(dryRun.standardOutput.utf8)) as? [String: Any]
        XCTAssertEqual(plan?["version_note"] as? String, "restoring a PostgreSQL 14 backup into 17")
        XCTAssertEqual(plan?["backup_server_major"] as? Int, 14)
        XCTAssertEqual(plan?["target_server_major"] as? Int, 17)

        let restored = try TestProcess.tool("dbrestore", [oldID, "--database-url", new.cluster.url(database: target), "--repo", repository, "--yes"],
                                            cluster: new.cluster)
        XCTAssertEqual(restored.status, 0, restored.standardError)
        XCTAssertTrue(restored.standardError.contains("restoring a PostgreSQL 14 backup into 17"), restored.standardError)
        // 16+ no longer qualifies the columns of a one-table view: the view is there, its text is 17's.
        XCTAssertTrue(restored.standardError.contains("view busy_users in schema public differs as the newer server writes it (tolerated)"),
                      restored.standardError)
        XCTAssertEqual(try new.cluster.rowCounts(database: target), try old.cluster.rowCounts(database: source))
        let schema = try TestProcess.tool("dbverify", ["--schema", oldID, "--database-url", new.cluster.url(database: target), "--repo", repository],
                                          cluster: new.cluster)
        XCTAssertEqual(schema.status, 0, schema.standardOutput + schema.standardError)

        // 17 → 14: refused, the 14 database untouched, no scratch database made.
        let newID = try backup(new.cluster, database: target, repository: repository)
        let before = try old.cluster.rowCounts(database: source)
        let refused = try TestProcess.tool("dbrestore", [newID, "--database-url", old.cluster.url(database: source), "--repo", repository, "--yes"],
                                           cluster: old.cluster)
        XCTAssertEqual(refused.status, ExitStatus.restoreFailed.rawValue, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("taken from PostgreSQL 17; the target server is PostgreSQL 14"), refused.standardError)
        XCTAssertTrue(refused.standardError.contains("only into the same or a newer major"), refused.standardError)
        XCTAssertEqual(try old.cluster.rowCounts(database: source), before)
        let leftovers = try old.cluster.connect().query("SELECT datname FROM pg_database WHERE datname LIKE $1", [source + "_%"]).rows
        XCTAssertTrue(leftovers.isEmpty, "\(leftovers.map { $0[0] ?? "" })")
    }

    /// The 3 a.m. path into a 15 server, with the newest backup taken from 16: `--emergency` and
    /// `--drill` pass over it with the reason and restore the older one from 15; with only the 16
    /// backup, the error names both majors and the fix, and the target stays as it was; a plain
    /// `dbrestore` of the 16 backup is still refused with the reason.
    func testEmergencyAndDrillPassOverABackupFromANewerMajor() throws {
        let (old, new, repository, source, oldID) = try backedUpOnTheOlder(15, newer: 16, prefix: "older")
        let expected = try old.cluster.rowCounts(database: source)
        // The same database on the newer server (as after an upgrade): its backups are that database's.
        let upgraded = try filledDatabase("newer", on: new.cluster, major: 16)
        try new.cluster.connect().execute(script: "ALTER DATABASE \(upgraded) RENAME TO \(source)")
        try new.cluster.connect(database: source).execute(script: "INSERT INTO users (email) VALUES ('only-in-16@example.com')")
        sleep(1)   // ids sort by the second they were taken
        let newID = try backup(new.cluster, database: source, repository: repository)
        XCTAssertGreaterThan(newID, oldID)
        // pg_upgrade gives the new cluster a system identifier of its own, so recorded backups of the two are two
        // servers' (DatabaseIdentityTests): the 15 server takes only its own. Backups written before servers
        // were recorded are the name's alone, and there the 16 backup is a candidate to pass over.
        for id in [oldID, newID] {
            let path = "\(repository)/backups/\(id)/manifest.json"
            var object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
            var database = object["database"] as? [String: Any] ?? [:]
            XCTAssertNotNil(database.removeValue(forKey: "system_identifier"), "\(database)")
            object["database"] = database
            try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: path))
        }

        // The 15 database has moved on since its backup; the emergency restore brings back the 15 backup.
        try old.cluster.connect(database: source).execute(script: "DELETE FROM events WHERE id % 2 = 0")
        let common = ["--database-url", old.cluster.url(database: source), "--repo", repository]
        let passedOver = "skip backup \(newID): taken from PostgreSQL 16, newer than the target server's 15"
        let drill = try TestProcess.tool("dbrestore", common + ["--drill"], cluster: old.cluster)
        XCTAssertEqual(drill.status, 0, drill.standardError)
        XCTAssertTrue(drill.standardOutput.contains("drill passed: backup \(oldID)"), drill.standardOutput)
        XCTAssertTrue(drill.standardError.contains(passedOver), drill.standardError)
        let incident = TestPaths.temporaryDirectory(prefix: "incident") + "/incident.json"
        let emergency = try TestProcess.tool("dbrestore", common + ["--emergency", "--incident-file", incident], cluster: old.cluster)
        XCTAssertEqual(emergency.status, 0, emergency.standardError)
        XCTAssertTrue(emergency.standardOutput.contains("from backup \(oldID)"), emergency.standardOutput)
        XCTAssertTrue(emergency.standardError.contains(passedOver), emergency.standardError)
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: incident))) as? [String: Any]
        let plan = record?["plan"] as? [String: Any]
        XCTAssertEqual(plan?["backup_id"] as? String, oldID)
        let skipped = (plan?["skipped"] as? [[String: String]] ?? []).map { "\($0["id"] ?? ""): \($0["reason"] ?? "")" }
        XCTAssertEqual(skipped, ["\(newID): taken from PostgreSQL 16, newer than the target server's 15 (a logical backup restores only into the same or a newer major)"])
        XCTAssertEqual(try old.cluster.rowCounts(database: source), expected)
        XCTAssertEqual(try old.cluster.scalar("SELECT count(*) FROM users WHERE email = 'only-in-16@example.com'", database: source), "0")

        // Only the 16 backup: no usable candidate; the error names the majors and the way out; nothing touched.
        let onlyNewer = TestPaths.repositoryPath(prefix: "newer-only")
        XCTAssertEqual(try TestProcess.run("/bin/cp", ["-a", repository, onlyNewer]).status, 0)
        try FileManager.default.removeItem(atPath: "\(onlyNewer)/backups/\(oldID)")
        try old.cluster.connect(database: source).execute(script: "DELETE FROM events WHERE id % 3 = 0")
        let before = try old.cluster.rowCounts(database: source)
        let databases = "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database"
        let databasesBefore = try old.cluster.scalar(databases, database: "postgres")
        for mode in ["--emergency", "--drill"] {
            let none = try TestProcess.tool("dbrestore", ["--database-url", old.cluster.url(database: source), "--repo", onlyNewer, mode],
                                            cluster: old.cluster)
            XCTAssertEqual(none.status, ExitStatus.backupNotFound.rawValue, "\(mode): \(none.standardError)")
            XCTAssertTrue(none.standardError.contains("\(newID): taken from PostgreSQL 16, newer than the target server's 15"), none.standardError)
            XCTAssertTrue(none.standardError.contains("backups from PostgreSQL 16 need a server of that major or newer, and the target server is PostgreSQL 15"),
                          none.standardError)
            XCTAssertTrue(none.standardError.contains("restore into a PostgreSQL 16 or newer server (its --database-url, and --pg-bin"), none.standardError)
        }
        XCTAssertEqual(try old.cluster.rowCounts(database: source), before)
        XCTAssertEqual(try old.cluster.scalar(databases, database: "postgres"), databasesBefore, "no scratch database may be left")

        // Named, the 16 backup is refused into 15 with the reason, as before.
        let named = try TestProcess.tool("dbrestore", [newID, "--yes"] + common, cluster: old.cluster)
        XCTAssertEqual(named.status, ExitStatus.restoreFailed.rawValue, named.standardError)
        XCTAssertTrue(named.standardError.contains("taken from PostgreSQL 16; the target server is PostgreSQL 15"), named.standardError)
        XCTAssertEqual(try old.cluster.rowCounts(database: source), before)
    }

    /// pg_dump of the server's own major is chosen and recorded; a newer one named with --pg-bin is
    /// used as asked, and its dump (which sets transaction_timeout, unknown to 14) restores into 14;
    /// an older one named with --pg-bin is refused with the reason and the fix.
    func testClientProgramsMatchTheServerAndAnOlderPgDumpIsRefused() throws {
        let old = try Self.cluster(major: 14)
        let new = try Self.cluster(major: 17)
        let repository = TestPaths.repositoryPath(prefix: "pgbin-repo")
        let database = try filledDatabase("pgbin", on: old.cluster, major: 14)

        let newer = try backup(old.cluster, database: database, repository: repository, extra: ["--pg-bin", new.cluster.binDirectory])
        let manifest = try Catalog(store: try LocalStore(root: repository, create: false)).resolve(newer)
        XCTAssertEqual(manifest.clientPrograms?.map(\.major), [17])
        XCTAssertEqual(manifest.clientPrograms?.first?.path, new.cluster.binDirectory + "/pg_dump")
        XCTAssertEqual(manifest.serverMajor, PostgresMajor(14))
        let dump = try TestProcess.shell("gunzip -c '\(repository)/backups/\(newer)/dump.sql.gz' | head -30").standardOutput
        XCTAssertTrue(dump.contains("SET transaction_timeout = 0;"), dump)
        let restored = try TestProcess.tool("dbrestore", [newer, "--database-url", old.cluster.url(database: database), "--repo", repository, "--yes"],
                                            cluster: old.cluster)
        XCTAssertEqual(restored.status, 0, restored.standardError)
        XCTAssertEqual(try old.cluster.rowCounts(database: database), Dictionary(uniqueKeysWithValues: manifest.tables.map { ($0.qualifiedName, $0.rows) }))

        let tooOld = try TestProcess.tool("dbbackup", ["--database-url", new.cluster.url(database: "postgres"), "--repo", repository,
                                                       "--pg-bin", old.cluster.binDirectory], cluster: new.cluster)
        XCTAssertEqual(tooOld.status, ExitStatus.toolFailed.rawValue, tooOld.standardError)
        XCTAssertTrue(tooOld.standardError.contains("the server is PostgreSQL 17, which needs pg_dump 17 or newer"), tooOld.standardError)
        XCTAssertTrue(tooOld.standardError.contains("is 14, older than the server's"), tooOld.standardError)
        XCTAssertTrue(tooOld.standardError.contains("scripts/pg-majors.sh install 17"), tooOld.standardError)
        let physical = try TestProcess.tool("dbbackup", ["--physical", "--database-url", new.cluster.url(database: "postgres"), "--repo", repository,
                                                         "--pg-bin", old.cluster.binDirectory], cluster: new.cluster)
        XCTAssertEqual(physical.status, ExitStatus.toolFailed.rawValue, physical.standardError)
        XCTAssertTrue(physical.standardError.contains("needs pg_basebackup 17;"), physical.standardError)
        XCTAssertEqual(try Catalog(store: try LocalStore(root: repository, create: false)).manifests().count, 1, "a refused backup stores nothing")
    }

    /// A base backup starts only under its own major: `--pitr --start` with another major's programs
    /// is refused before anything is written, naming the programs it needs; the plan names them too.
    func testPhysicalBackupRecoversOnlyUnderItsOwnMajor() throws {
        let (cluster, walRepository) = try Self.cluster(major: 17)
        let old = try Self.installedBin(major: 14)
        let base = try asOwner("dbbackup", ["--physical", "--database-url", cluster.url(database: "postgres"), "--repo", walRepository], cluster: cluster)
        XCTAssertEqual(base.status, 0, base.standardError)
        let connection = try cluster.connect()
        try connection.execute(script: "CREATE TEMPORARY TABLE nudge AS SELECT 1")   // WAL after the backup's own, so pg_switch_wal switches
        try waitForArchive(connection)
        let directory = ownedDirectory("matrix-refused") + "/data"
        let refused = try asOwner("dbrestore", ["--pitr", "--pgdata", directory, "--repo", walRepository, "--port", String(try freePort()), "--start",
                                                "--target", "latest", "--pg-bin", old, "--database-url", "postgresql://postgres@127.0.0.1/postgres"],
                                  cluster: cluster)
        XCTAssertEqual(refused.status, ExitStatus.toolFailed.rawValue, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("the server is PostgreSQL 17, which needs pg_ctl 17; pg_ctl in \(old) (flag --pg-bin) is 14"),
                      refused.standardError)
        XCTAssertTrue(refused.standardError.contains("apt-get install postgresql-17"), refused.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory), "nothing may be written")

        let plan = try asOwner("dbrestore", ["--pitr", "--pgdata", directory, "--repo", walRepository, "--target", "latest", "--dry-run"], cluster: cluster)
        XCTAssertEqual(plan.status, 0, plan.standardError)
        XCTAssertTrue(plan.standardOutput.contains("server:      PostgreSQL 17 only"), plan.standardOutput)
        XCTAssertTrue(plan.standardOutput.contains("/17/bin/pg_ctl -D \(directory) start"), plan.standardOutput)
    }

    /// The search asks each program its version (a directory's name proves nothing), prefers the
    /// server's own major, then the nearest newer one, and says what it found when nothing fits.
    func testProgramSearchPrefersTheServersMajorThenTheNearestNewer() throws {
        let bin14 = try Self.installedBin(major: 14)
        let bin17 = try Self.installedBin(major: 17)
        let bin18 = try Self.installedBin(major: 18)
        let cache = TestPaths.temporaryDirectory(prefix: "pg-cache")
        for (name, bin) in [("14", bin14), ("17", bin17), ("18", bin18), ("16", bin17)] {
            try FileManager.default.createDirectory(atPath: "\(cache)/\(name)", withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: "\(cache)/\(name)/bin", withDestinationPath: bin)
        }
        let tools = PostgresTools(environment: ["PATH": "/nonexistent", "DBRECOVERY_PG_CACHE": cache])

        let same = try tools.program("pg_dump", for: PostgresMajor(14), fit: .sameOrNewer)
        XCTAssertEqual(same.major, 14)
        XCTAssertEqual(same.path, "\(cache)/14/bin/pg_dump")
        XCTAssertTrue(same.version.hasPrefix("pg_dump (PostgreSQL) 14."), same.version)
        // 16's directory holds 17's programs: pg_dump 17 serves a 16 server, pg_basebackup 17 does not.
        let newer = try tools.program("pg_dump", for: PostgresMajor(16), fit: .sameOrNewer)
        XCTAssertEqual(newer.major, 17, "the nearest newer major, not 18")
        XCTAssertThrowsError(try tools.program("pg_basebackup", for: PostgresMajor(16), fit: .same)) { error in
            let message = (error as? RecoveryError)?.message ?? "\(error)"
            XCTAssertTrue(message.contains("the server is PostgreSQL 16, which needs pg_basebackup 16; found"), message)
            XCTAssertTrue(message.contains("17 (\(cache)/16/bin/pg_basebackup)"), message)
            XCTAssertEqual((error as? RecoveryError)?.code, .toolFailed)
            let hint = (error as? RecoveryError)?.hint ?? ""
            XCTAssertTrue(hint.contains("scripts/pg-majors.sh install 16") && hint.contains("postgresql-client-16") && hint.contains("--pg-bin"), hint)
        }
        XCTAssertEqual(try tools.program("pg_ctl", for: PostgresMajor(18), fit: .same).path, "\(cache)/18/bin/pg_ctl")

        // A named directory is the only place looked at, and a pg_dump there older than the server is refused.
        let named = PostgresTools(directory: bin14, source: "flag --pg-bin", environment: ["PATH": "/nonexistent", "DBRECOVERY_PG_CACHE": cache])
        XCTAssertThrowsError(try named.program("pg_dump", for: PostgresMajor(17), fit: .sameOrNewer)) { error in
            let message = (error as? RecoveryError)?.message ?? "\(error)"
            XCTAssertTrue(message.contains("pg_dump in \(bin14) (flag --pg-bin) is 14, older than the server's"), message)
        }
        let fromEnvironment = PostgresTools(environment: ["PG_BIN": bin18, "PATH": "/nonexistent", "DBRECOVERY_PG_CACHE": cache])
        XCTAssertEqual(try fromEnvironment.program("pg_dump", for: PostgresMajor(14), fit: .sameOrNewer).major, 18, "PG_BIN is used as named")
    }

    // MARK: - One major

    private func backupRestoreVerifyAndRecover(major: Int) throws {
        let (cluster, walRepository) = try Self.cluster(major: major)
        XCTAssertEqual(cluster.major, major)
        let database = try filledDatabase("matrix\(major)", on: cluster, major: major)

        // Logical: backup → damage → dbrestore → dbverify rows and schema.
        let repository = TestPaths.repositoryPath(prefix: "matrix-repo")
        let id = try backup(cluster, database: database, repository: repository)
        let manifest = try Catalog(store: try LocalStore(root: repository, create: false)).resolve(id)
        XCTAssertEqual(manifest.serverMajor, PostgresMajor(major))
        XCTAssertEqual(manifest.clientPrograms?.map(\.name), ["pg_dump"])
        XCTAssertEqual(manifest.clientPrograms?.first?.major, major, "pg_dump of the server's own major is preferred")
        XCTAssertEqual(manifest.tables.first { $0.name == "users" }?.rows, 200)
        try cluster.connect(database: database).execute(script: "DROP VIEW busy_users; DELETE FROM events WHERE id % 3 = 0; DROP FUNCTION bump(int)")
        let restored = try TestProcess.tool("dbrestore", [id, "--database-url", cluster.url(database: database), "--repo", repository, "--yes"],
                                            cluster: cluster)
        XCTAssertEqual(restored.status, 0, restored.standardError)
        XCTAssertFalse(restored.standardError.contains("restoring a PostgreSQL"), "same major: nothing to say")
        XCTAssertEqual(try cluster.rowCounts(database: database), Dictionary(uniqueKeysWithValues: manifest.tables.map { ($0.qualifiedName, $0.rows) }))
        XCTAssertEqual(try cluster.scalar("SELECT bump(41)", database: database), "42")
        let rows = try TestProcess.tool("dbverify", [id, "--database-url", cluster.url(database: database), "--repo", repository], cluster: cluster)
        XCTAssertEqual(rows.status, 0, rows.standardOutput + rows.standardError)
        let schema = try TestProcess.tool("dbverify", ["--schema", id, "--database-url", cluster.url(database: database), "--repo", repository], cluster: cluster)
        XCTAssertEqual(schema.status, 0, schema.standardOutput + schema.standardError)

        // Physical: base backup → batch A → target time → batch B → PITR to the time: A only.
        let (pitr, connection) = try itemsDatabase("pitr\(major)", on: cluster)
        let base = try physicalBackup(of: pitr, on: cluster, into: walRepository, ["--json"])
        let baseID = (try JSONSerialization.jsonObject(with: Data(base.standardOutput.utf8)) as? [String: Any])?["id"] as? String ?? ""
        let baseManifest = try Catalog(store: try LocalStore(root: walRepository, create: false)).resolve(baseID)
        XCTAssertEqual(baseManifest.clientPrograms?.map(\.name), ["pg_basebackup"])
        XCTAssertEqual(baseManifest.clientPrograms?.first?.major, major)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 40)")
        usleep(300_000)
        let targetTime = try connection.query("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')").scalar ?? ""
        usleep(1_100_000)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'B' FROM generate_series(1, 20)")
        try waitForArchive(connection)

        let parent = ownedDirectory("matrix-pitr")
        let directory = parent + "/data"
        let port = try freePort()
        let recovered = try asOwner("dbrestore", ["--pitr", "--pgdata", directory, "--repo", walRepository, "--port", String(port), "--start", "--json",
                                                  "--database-url", "postgresql://postgres@127.0.0.1/postgres", "--target-time", targetTime], cluster: cluster)
        defer { stopServer(directory) }
        XCTAssertEqual(recovered.status, 0, recovered.standardError)
        let version = try PostgresConnection(target: try ConnectionTarget("postgresql://postgres@127.0.0.1:\(port)/\(pitr)").with("password", cluster.password))
        XCTAssertEqual(PostgresMajor(serverVersionNumber: version.serverVersionNumber), PostgresMajor(major), "started by pg_ctl of the backup's major")
        let counts = try version.query("SELECT batch, count(*)::text FROM items GROUP BY batch").rows.map { "\($0[0] ?? ""):\($0[1] ?? "")" }
        XCTAssertEqual(counts, ["A:40"])
    }

    /// Objects whose dump text differs between majors: an identity column, a SQL-standard function
    /// body, an enum, a view, a materialized view, a partitioned table; on 18 a virtual generated column.
    /// Clusters of two majors, one repository, and a backup of a filled database taken on the older.
    private func backedUpOnTheOlder(_ older: Int, newer: Int, prefix: String) throws
        -> (old: (cluster: PostgresCluster, walRepository: String), new: (cluster: PostgresCluster, walRepository: String),
            repository: String, source: String, oldID: String) {
        let old = try Self.cluster(major: older)
        let new = try Self.cluster(major: newer)
        let repository = TestPaths.repositoryPath(prefix: "\(prefix)-repo")
        let source = try filledDatabase(prefix, on: old.cluster, major: older)
        return (old, new, repository, source, try backup(old.cluster, database: source, repository: repository))
    }

    private func filledDatabase(_ prefix: String, on cluster: PostgresCluster, major: Int) throws -> String {
        var script = """
            CREATE TYPE mood AS ENUM ('calm', 'busy');
            CREATE TABLE users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL UNIQUE, mood mood DEFAULT 'calm');
            CREATE TABLE events (id bigserial, user_id bigint REFERENCES users, at date NOT NULL, note text) PARTITION BY RANGE (at);
            CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
            CREATE INDEX events_user ON events (user_id);
            CREATE FUNCTION bump(n int) RETURNS int LANGUAGE sql IMMUTABLE BEGIN ATOMIC SELECT n + 1; END;
            CREATE VIEW busy_users AS SELECT id, email FROM users WHERE mood = 'busy';
            CREATE MATERIALIZED VIEW user_count AS SELECT count(*) AS n FROM users;
            COMMENT ON TABLE users IS 'people';
            INSERT INTO users (email, mood) SELECT 'u' || g || '@example.com', CASE WHEN g % 4 = 0 THEN 'busy' ELSE 'calm' END::mood FROM generate_series(1, 200) g;
            INSERT INTO events (user_id, at, note) SELECT 1 + g % 200, DATE '2026-01-01' + g % 300, 'e' || g FROM generate_series(1, 600) g;
            REFRESH MATERIALIZED VIEW user_count;
            """
        if major >= 18 {
            script += "\nCREATE TABLE shapes (w int, h int, area int GENERATED ALWAYS AS (w * h) VIRTUAL);\nINSERT INTO shapes VALUES (2, 3), (4, 5);"
        }
        return try cluster.createDatabase(prefix: prefix, seed: script)
    }

    private func backup(_ cluster: PostgresCluster, database: String, repository: String, extra: [String] = []) throws -> String {
        let result = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository] + extra, cluster: cluster)
        XCTAssertEqual(result.status, 0, result.standardError)
        return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    // MARK: - Clusters, one per major for the whole class (each archives into its own repository)

    private static let clusters = Mutex<[Int: (cluster: PostgresCluster, walRepository: String)]>([:])

    /// The cluster of `major`, started on first use with archive_command = dbbackup wal-push.
    ///
    /// - Throws: a failure naming `scripts/pg-majors.sh install N` under CI=true when the major is not
    ///   installed, else `XCTSkip` with the same words.
    private static func cluster(major: Int) throws -> (cluster: PostgresCluster, walRepository: String) {
        try clusters.withLock { clusters in
            if let existing = clusters[major] { return existing }
            _ = try installedBin(major: major)
            let parent = TestPaths.temporaryDirectory(prefix: "matrix-wal")
            if getuid() == 0 { _ = try? TestProcess.run("/bin/chown", ["-R", "postgres:postgres", parent]) }
            let walRepository = parent + "/repo"
            let cluster = try PostgresCluster(major: major, archiveCommand: walPush(into: walRepository))
            clusters[major] = (cluster, walRepository)
            return (cluster, walRepository)
        }
    }

    /// The bin directory of an installed major.
    ///
    /// - Throws: under CI=true a failure naming `scripts/pg-majors.sh install N`, else `XCTSkip` saying the same.
    private static func installedBin(major: Int) throws -> String {
        let installed = try TestProcess.run(TestPaths.repositoryRoot + "/scripts/pg-majors.sh", ["bin", String(major)])
        guard installed.status == 0 else {
            let message = "PostgreSQL \(major) is not installed; install it with: scripts/pg-majors.sh install \(major)"
            if ProcessInfo.processInfo.environment["CI"] == "true" {
                throw NSError(domain: "dbrecovery.tests", code: 1, userInfo: [NSLocalizedDescriptionKey: message])
            }
            throw XCTSkip(message)
        }
        return installed.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    // Running as the server's OS user, owned directories, ports, archive waits: PhysicalRecoverySupport.swift.
}
