import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// Incremental base backups (issue 17 item 4) on real PostgreSQL 17 and 18 clusters: a table of
/// 1 GiB on disk, a full backup, two incrementals chained on it (the first under 10 % of the full
/// after 1 % of the blocks changed), point-in-time recovery through pg_combinebackup, prune keeping
/// the chain, dbverify --files checking every member; and the refusals on 15 and with
/// summarize_wal off.
final class IncrementalBackupTests: XCTestCase {
    func testFullThenTwoIncrementalsRecoverExactlyAndStayWholeOn17() throws {
        try fullThenTwoIncrementals(major: 17, s3: false)
    }

    /// 18 with an S3 repository: every chain member is streamed from S3 for pg_combinebackup.
    func testFullThenTwoIncrementalsRecoverExactlyAndStayWholeOn18FromS3() throws {
        try fullThenTwoIncrementals(major: 18, s3: true)
    }

    /// On 15 the server cannot take one: refused with the reason, before anything is stored.
    func testIncrementalIsRefusedBeforePostgreSQL17() throws {
        let work = ownedDirectory("incr15")
        let repository = work + "/repo"
        let cluster = try PostgresCluster(archiveCommand: walPush(into: repository))
        defer { cluster.stop() }
        let refused = try asOwner("dbbackup", ["--physical", "--incremental", "--database-url", cluster.url(database: "postgres"), "--repo", repository],
                                  cluster: cluster)
        XCTAssertEqual(refused.status, ExitStatus.databaseError.rawValue, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("incremental base backups need PostgreSQL 17 or newer; this server is 15."), refused.standardError)
        XCTAssertEqual(try backupIDs(repository, cluster: cluster), [])

        let alone = try asOwner("dbbackup", ["--incremental", "--database-url", cluster.url(database: "postgres"), "--repo", repository], cluster: cluster)
        XCTAssertEqual(alone.status, ExitStatus.usage.rawValue, alone.standardError)
        XCTAssertTrue(alone.standardError.contains("--incremental goes with --physical"), alone.standardError)
    }

    private func fullThenTwoIncrementals(major: Int, s3: Bool) throws {
        let testStarted = Date()
        defer { print("PostgreSQL \(major): the incremental acceptance test took \(String(format: "%.0f", Date().timeIntervalSince(testStarted))) s") }
        let work = ownedDirectory("incr\(major)")
        let temporary = work + "/tmp"
        try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: true)
        chownToPostgres(temporary)
        var environment = ["TMPDIR": temporary]
        let repository: String
        if s3 {
            let server = try S3Server.shared()
            repository = "s3://\(try server.createBucket())/incremental"
            environment.merge(server.environment()) { _, new in new }
        } else {
            repository = work + "/repo"
        }
        let cluster = try PostgresCluster(major: major, archiveCommand: walPush(into: repository, environment: environment))
        defer { cluster.stop() }
        XCTAssertEqual(cluster.major, major)
        let database = try cluster.createDatabase(prefix: "incr")
        let connection = try cluster.connect(database: database)
        func backup(_ extra: [String]) throws -> (result: TestProcess.Result, seconds: Double, summary: [String: Any]) {
            let started = Date()
            let result = try asOwner("dbbackup", ["--physical", "--json", "--database-url", cluster.url(database: database), "--repo", repository,
                                                  "--pg-bin", cluster.binDirectory] + extra, cluster: cluster, environment: environment)
            let summary = (try? JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8))) as? [String: Any] ?? [:]
            return (result, Date().timeIntervalSince(started), summary)
        }

        // summarize_wal is off by default: refused with the reason and the fix, nothing stored.
        let off = try backup(["--incremental"])
        XCTAssertEqual(off.result.status, ExitStatus.databaseError.rawValue, off.result.standardError)
        XCTAssertTrue(off.result.standardError.contains("summarize_wal is off"), off.result.standardError)
        XCTAssertTrue(off.result.standardError.contains("ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf();"), off.result.standardError)
        XCTAssertEqual(try backupIDs(repository, cluster: cluster, environment: environment), [])
        // A full backup taken while summarize_wal was off cannot be a parent: the summaries start later.
        let early = try backup([])
        XCTAssertEqual(early.result.status, 0, early.result.standardError)
        let admin = try cluster.connect()
        try admin.execute(script: "CHECKPOINT")
        try admin.execute(script: "ALTER SYSTEM SET summarize_wal = on")
        try admin.query("SELECT pg_reload_conf()")
        let unsummarized = try backup(["--incremental"])
        XCTAssertEqual(unsummarized.result.status, ExitStatus.toolFailed.rawValue, unsummarized.result.standardError)
        XCTAssertTrue(unsummarized.result.standardError.contains("WAL summaries are required"), unsummarized.result.standardError)
        XCTAssertTrue(unsummarized.result.standardError.contains("take a full base backup (dbbackup --physical) now that summarize_wal is on"),
                      unsummarized.result.standardError)
        XCTAssertEqual(try backupIDs(repository, cluster: cluster, environment: environment), [early.summary["id"] as? String ?? "?"])

        // No base backup to chain on (another repository): refused, naming the full backup to take first.
        let orphan = try asOwner("dbbackup", ["--physical", "--incremental", "--database-url", cluster.url(database: database),
                                              "--repo", work + "/empty-repo", "--pg-bin", cluster.binDirectory], cluster: cluster, environment: environment)
        XCTAssertEqual(orphan.status, ExitStatus.backupNotFound.rawValue, orphan.standardError)
        XCTAssertTrue(orphan.standardError.contains("dbbackup --physical"), orphan.standardError)

        // A table of at least 1 GiB on disk (the issue's size), made cheaply enough for CI: with
        // fillfactor 10 a row of about 420 bytes fills a block's share, so each row starts a new 8 KiB
        // block. The server writes, WAL-logs and archives only about 60 MB of rows, yet the table has
        // 131,072 blocks that the full backup reads and ships (the free nine tenths compress away).
        // Unlogged-then-logged would change the WAL, so it is not used. VACUUM FREEZE before the full
        // backup sets every hint bit and visibility-map bit now, so that no later read dirties blocks
        // (with data checksums, PostgreSQL 18's default, a hint bit is WAL-logged as a full page image).
        let rows = 131_072
        try connection.execute(script: """
            CREATE TABLE items (id int PRIMARY KEY, batch text NOT NULL, payload text NOT NULL) WITH (fillfactor = 10);
            INSERT INTO items SELECT i, 'A', (SELECT string_agg(md5((i * 16 + k)::text), '') FROM generate_series(1, 12) AS k)
              FROM generate_series(1, \(rows)) AS i;
            """)
        try connection.execute(script: "VACUUM (FREEZE, ANALYZE) items")   // not in the same transaction block as the script above
        try connection.execute(script: "CHECKPOINT")
        let tableBytes = Int(try connection.query("SELECT pg_total_relation_size('items')").scalar ?? "") ?? 0
        XCTAssertGreaterThanOrEqual(tableBytes, 1 << 30, "the acceptance test needs a table of at least 1 GiB on disk")
        let tableBlocks = Int(try connection.query("SELECT pg_relation_size('items') / current_setting('block_size')::int").scalar ?? "") ?? 0

        let full = try backup([])
        XCTAssertEqual(full.result.status, 0, full.result.standardError)
        let fullID = try XCTUnwrap(full.summary["id"] as? String)
        let fullBytes = try XCTUnwrap(full.summary["stored_bytes"] as? Int)
        XCTAssertNil(full.summary["incremental"])
        let fullFiles = (full.summary["files"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        // base.index.json.gz: the index the extraction reads base.tar.gz in parallel from.
        XCTAssertEqual(fullFiles, [PhysicalCapture.baseFileName, IncrementalChain.serverManifestFileName, "base.index.json.gz"])

        // 1 % of the rows change, in place (HOT updates: the blocks have room and no indexed column
        // changes), so 1 % of the table's blocks change; then the first incremental.
        let changedBlocks = "SELECT count(DISTINCT (ctid::text::point)[0]) || ' ' || min((ctid::text::point)[0]) || ' ' || max((ctid::text::point)[0]) "
            + "FROM items WHERE id <= \(rows / 100)"
        let blocksBefore = try connection.query(changedBlocks).scalar ?? ""
        try connection.execute(script: "UPDATE items SET batch = 'B' WHERE id <= \(rows / 100)")
        XCTAssertEqual(try connection.query(changedBlocks).scalar ?? "", blocksBefore, "the 1 % update moved rows to other blocks")
        let touched = Double(Int(blocksBefore.split(separator: " ").first ?? "") ?? 0) / Double(max(tableBlocks, 1))
        XCTAssertEqual(touched, 0.01, accuracy: 0.001, "the change must touch 1 % of the table's \(tableBlocks) blocks")
        /// An incremental on `parent`, checked to chain on it (and on the full): its id, stored bytes and time.
        func incremental(on parent: String) throws -> (id: String, bytes: Int, seconds: Double) {
            let taken = try backup(["--incremental"])
            XCTAssertEqual(taken.result.status, 0, taken.result.standardError)
            let chain = taken.summary["incremental"] as? [String: String]
            XCTAssertEqual(chain?["parent"], parent)
            XCTAssertEqual(chain?["chain_root"], fullID)
            return (try XCTUnwrap(taken.summary["id"] as? String), try XCTUnwrap(taken.summary["stored_bytes"] as? Int), taken.seconds)
        }
        let first = try incremental(on: fullID)
        let firstID = first.id, firstBytes = first.bytes
        print("PostgreSQL \(major): table \(tableBytes / 1_048_576) MiB on disk (\(tableBlocks) blocks); "
              + "full backup \(fullBytes / 1024) KiB stored in \(String(format: "%.1f", full.seconds)) s; "
              + "incremental after a 1 % change (\(String(format: "%.2f", touched * 100)) % of the blocks) \(firstBytes / 1024) KiB stored "
              + "in \(String(format: "%.1f", first.seconds)) s (\(String(format: "%.1f", Double(firstBytes) * 100 / Double(fullBytes))) % of the full)")
        XCTAssertLessThan(Double(firstBytes), Double(fullBytes) * 0.10, "the incremental after a 1 % change must be under 10 % of the full")

        // More changes, then a second incremental on the first.
        try connection.execute(script: """
            UPDATE items SET batch = 'C' WHERE id > \(rows / 100) AND id <= \(rows / 10);
            INSERT INTO items SELECT i, 'D', md5(i::text) FROM generate_series(\(rows + 1), \(rows + 1000)) AS i;
            """)
        let second = try incremental(on: firstID)
        let secondID = second.id, secondBytes = second.bytes
        print("PostgreSQL \(major): second incremental after a further 9 % change \(secondBytes / 1024) KiB stored in \(String(format: "%.1f", second.seconds)) s")

        // Rows after the second incremental, the target time, then rows the recovery must not show.
        try connection.execute(script: "INSERT INTO items SELECT i, 'E', md5(i::text) FROM generate_series(\(rows + 1001), \(rows + 1500)) AS i")
        usleep(300_000)
        let targetTime = try connection.query("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')").scalar ?? ""
        let expectedCounts = try counts(port: cluster.port, database: database, cluster: cluster)
        // Every row's whole text, hashed and summed: equal only if the recovered rows are exactly the source's at the target time.
        let fingerprint = "SELECT count(*) || ':' || sum(hashtext(t::text)::bigint) FROM items AS t"
        let expectedFingerprint = try connection.query(fingerprint).scalar
        usleep(1_100_000)
        try connection.execute(script: "INSERT INTO items SELECT i, 'F', 'late' FROM generate_series(\(rows + 1501), \(rows + 1700)) AS i; "
                               + "UPDATE items SET payload = 'late' WHERE id <= 100")
        try waitForArchive(connection)

        // The plan names the chain and the disk it needs; without pg_combinebackup it refuses, writing nothing.
        let planned = try asOwner("dbrestore", ["--pitr", "--dry-run", "--pgdata", work + "/never", "--repo", repository, "--target-time", targetTime,
                                                "--pg-bin", cluster.binDirectory], cluster: cluster, environment: environment)
        XCTAssertEqual(planned.status, 0, planned.standardError)
        XCTAssertTrue(planned.standardOutput.contains("chain:       \(fullID) → \(firstID) → \(secondID)"), planned.standardOutput)
        XCTAssertTrue(planned.standardOutput.contains("disk:        about "), planned.standardOutput)
        let noTools = work + "/no-tools"
        try FileManager.default.createDirectory(atPath: noTools, withIntermediateDirectories: true)
        let toolless = try asOwner("dbrestore", ["--pitr", "--pgdata", work + "/never", "--repo", repository, "--target-time", targetTime,
                                                 "--pg-bin", noTools], cluster: cluster, environment: environment)
        XCTAssertEqual(toolless.status, ExitStatus.toolFailed.rawValue, toolless.standardError)
        XCTAssertTrue(toolless.standardError.contains("pg_combinebackup not found"), toolless.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: work + "/never"))

        let (recovered, directory, port) = try recover(["--target-time", targetTime, "--pg-bin", cluster.binDirectory], repository: repository,
                                                       cluster: cluster, environment: environment)
        defer { stopServer(directory) }
        XCTAssertEqual(recovered.status, 0, recovered.standardError)
        let report = (try? JSONSerialization.jsonObject(with: Data(recovered.standardOutput.utf8))) as? [String: Any]
        let plan = report?["plan"] as? [String: Any]
        XCTAssertEqual(plan?["backup_id"] as? String, secondID)
        XCTAssertEqual(plan?["chain"] as? [String], [fullID, firstID, secondID])
        print("PostgreSQL \(major): point-in-time recovery through the chain of 3 (\(s3 ? "S3" : "local") repository, pg_combinebackup, replay, row counts) "
              + "in \(String(format: "%.1f", report?["duration_seconds"] as? Double ?? -1)) s; plan's peak disk estimate \(plan?["peak_disk_bytes"] as? Int ?? -1) bytes")
        // One member at a time: two pairwise combines (hard links where pg_combinebackup has --link), then pg_verifybackup.
        let steps = (report?["steps"] as? [[String: Any]] ?? []).compactMap { $0["step"] as? String }
        let combines = steps.filter { $0.hasPrefix("pg_combinebackup") }
        XCTAssertEqual(combines.count, 2, "\(steps)")
        XCTAssertEqual(combines.allSatisfy { $0.hasSuffix("(--link)") }, major >= 18, "\(combines)")
        XCTAssertTrue(steps.contains("pg_verifybackup the rebuilt data directory"), "\(steps)")
        XCTAssertEqual(try counts(port: port, database: database, cluster: cluster), expectedCounts)
        let restored = try PostgresConnection(target: try ConnectionTarget("postgresql://postgres@127.0.0.1:\(port)/\(database)").with("password", cluster.password))
        XCTAssertEqual(try restored.query(fingerprint).scalar, expectedFingerprint, "the recovered rows differ from the source's at the target time")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: (directory as NSString).deletingLastPathComponent), ["data"],
                       "pg_combinebackup's staging was not removed")

        // Prune keeping only the newest backup keeps the whole chain, and says why.
        let policy = work + "/policy.toml"
        try "[local]\nkeep_last = 1\nsnapshots = false\n[s3]\nkeep_last = 1\nkeep_within = \"0h\"\nsnapshots = false\n"
            .write(toFile: policy, atomically: true, encoding: .utf8)
        chownToPostgres(policy)
        let dryRun = try asOwner("dbprune", ["--dry-run", "--repo", repository, "--policy", policy], cluster: cluster, environment: environment)
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        let said = dryRun.standardOutput + dryRun.standardError
        XCTAssertTrue(said.contains("kept \(firstID): parent of \(secondID)") || said.contains("keep \(firstID): parent of \(secondID)"), said)
        XCTAssertTrue(said.contains("\(fullID): parent of \(firstID)"), said)
        let pruned = try asOwner("dbprune", ["--yes", "--repo", repository, "--policy", policy], cluster: cluster, environment: environment)
        XCTAssertEqual(pruned.status, 0, pruned.standardError)
        XCTAssertEqual(try backupIDs(repository, cluster: cluster, environment: environment), [fullID, firstID, secondID])

        // dbverify --files on the newest incremental checks every member of its chain.
        let verified = try asOwner("dbverify", ["--files", secondID, "--repo", repository], cluster: cluster, environment: environment)
        XCTAssertEqual(verified.status, 0, verified.standardError)
        for id in [fullID, firstID, secondID] { XCTAssertTrue(verified.standardOutput.contains(id), verified.standardOutput) }
        guard !s3 else { return }

        // A chain missing a member: the plan skips the incrementals that need it (an older base backup
        // with the WAL still reaches the target), and dbverify --files all names the gap.
        let broken = work + "/repo-without-\(firstID)"
        XCTAssertEqual(try TestProcess.run("/bin/cp", ["-a", repository, broken]).status, 0)
        try FileManager.default.removeItem(atPath: "\(broken)/backups/\(firstID)")
        let gapPlan = try asOwner("dbrestore", ["--pitr", "--dry-run", "--json", "--pgdata", work + "/never", "--repo", broken, "--target-time", targetTime],
                                  cluster: cluster, environment: environment)
        XCTAssertEqual(gapPlan.status, 0, gapPlan.standardError)
        let gap = (try? JSONSerialization.jsonObject(with: Data(gapPlan.standardOutput.utf8))) as? [String: Any]
        XCTAssertEqual(gap?["backup_id"] as? String, fullID)
        let skipped = (gap?["skipped"] as? [[String: Any]] ?? []).compactMap { $0["reason"] as? String }
        XCTAssertTrue(skipped.contains { $0.contains("needs \(firstID)") }, "\(skipped)")
        let gapVerify = try asOwner("dbverify", ["--files", "all", "--repo", broken], cluster: cluster)
        XCTAssertEqual(gapVerify.status, ExitStatus.backupCorrupt.rawValue, gapVerify.standardError)
        XCTAssertTrue(gapVerify.standardOutput.contains("needs \(firstID)"), gapVerify.standardOutput)
        XCTAssertFalse(FileManager.default.fileExists(atPath: work + "/never"))

        let base = "\(repository)/backups/\(fullID)/\(PhysicalCapture.baseFileName)"
        var damaged = try Data(contentsOf: URL(fileURLWithPath: base))
        damaged[damaged.count / 2] ^= 0xFF
        try damaged.write(to: URL(fileURLWithPath: base))
        let damagedChain = try asOwner("dbverify", ["--files", secondID, "--repo", repository], cluster: cluster)
        XCTAssertEqual(damagedChain.status, ExitStatus.backupCorrupt.rawValue, damagedChain.standardError)
        XCTAssertTrue(damagedChain.standardError.contains("backup \(fullID) is damaged"), damagedChain.standardError)
    }

    /// A run killed (SIGKILL) once a chain's last pg_combinebackup has written the data directory
    /// (which has no marker of its own then) and before its staging was removed: the same command
    /// run again knows both as its own by the staging directory's marker, removes them, says so, and
    /// restores. Before, the rerun refused the data directory as not empty and the staging stayed.
    func testARerunAfterAKillDuringTheChainsLastCombineRemovesItAndItsStaging() throws {
        let work = ownedDirectory("chainkill")
        let repository = work + "/repo"
        // As in the acceptance test above: a temporary directory the server's user may write.
        let temporary = work + "/tmp"
        try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: true)
        chownToPostgres(temporary)
        let cluster = try PostgresCluster(major: 17, archiveCommand: walPush(into: repository, environment: ["TMPDIR": temporary]))
        defer { cluster.stop() }
        let admin = try cluster.connect()
        try admin.execute(script: "ALTER SYSTEM SET summarize_wal = on")
        try admin.query("SELECT pg_reload_conf()")
        let (database, connection) = try itemsDatabase("chainkill", on: cluster)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 20000)")
        for extra in [[], ["--incremental"]] {
            try connection.execute(script: "INSERT INTO items (batch) SELECT 'B' FROM generate_series(1, 100)")
            try physicalBackup(of: database, on: cluster, into: repository, ["--pg-bin", cluster.binDirectory] + extra, environment: ["TMPDIR": temporary])
        }
        try waitForArchive(connection)
        let directory = work + "/restored/data"
        let arguments = ["--pitr", "--pgdata", directory, "--repo", repository, "--target", "latest", "--pg-bin", cluster.binDirectory]
        let killed = try asOwner("dbrestore", arguments, cluster: cluster, environment: ["DBRECOVERY_CRASH_AT": "pitr:combined", "TMPDIR": temporary])
        XCTAssertEqual(killed.status, 128 + SIGKILL, killed.standardError)
        let siblings = { (try? FileManager.default.contentsOfDirectory(atPath: work + "/restored")) ?? [] }
        let staging = siblings().filter { $0.hasPrefix("data.dbrestore-chain-") }
        XCTAssertEqual(staging.count, 1, "the killed run left its staging: \(siblings())")
        guard let left = staging.first else { return }
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory + "/.dbrecovery-extracting"), "no marker of its own while combined into")
        XCTAssertTrue(FileManager.default.fileExists(atPath: directory + "/global/pg_control"), "pg_combinebackup wrote it")

        let dryRun = try asOwner("dbrestore", arguments + ["--dry-run"], cluster: cluster, environment: ["TMPDIR": temporary])
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        let planned = dryRun.standardOutput + dryRun.standardError
        XCTAssertTrue(planned.contains("remove the partial extraction in \(directory) left by") && planned.contains("while pg_combinebackup wrote it"), planned)
        XCTAssertTrue(planned.contains("remove \(work)/restored/\(left), staging left by a killed run"), planned)
        let chain = try backupIDs(repository, cluster: cluster)
        XCTAssertTrue(planned.contains("hold:        keep base backup \(chain.joined(separator: ", ")) and WAL from"), "the dry run names the hold: \(planned)")
        let holds = { ((try? FileManager.default.contentsOfDirectory(atPath: repository + "/locks/holds")) ?? []).sorted() }
        let killedHold = holds()
        XCTAssertEqual(killedHold.count, 1, "the SIGKILLed run could not remove its hold: \(killedHold)")
        XCTAssertEqual(siblings().filter { $0.hasPrefix("data.dbrestore-chain-") }, staging, "the dry run removed nothing")

        let again = try asOwner("dbrestore", arguments, cluster: cluster, environment: ["TMPDIR": temporary])
        XCTAssertEqual(again.status, 0, again.standardError)
        XCTAssertTrue(again.standardError.contains("remove the partial extraction in \(directory)"), again.standardError)
        // The killed run's hold went with its partial directory; the rerun's names the whole chain.
        XCTAssertTrue(again.standardError.contains("releasing hold \(killedHold.first?.dropLast(5) ?? "")"), again.standardError)
        let rerunHolds = holds()
        XCTAssertEqual(rerunHolds.count, 1, "\(rerunHolds)")
        XCTAssertNotEqual(rerunHolds, killedHold)
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: repository + "/locks/holds/" + (rerunHolds.first ?? "")))) as? [String: Any]
        XCTAssertEqual(record?["backups"] as? [String], chain, "\(record ?? [:])")
        XCTAssertEqual(record?["dataDirectory"] as? String, directory)
        XCTAssertEqual(siblings(), ["data"], "no staging left: \(siblings())")
        XCTAssertTrue(FileManager.default.fileExists(atPath: directory + "/recovery.signal"), "recovery configured")
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory + "/.dbrecovery-extracting"), "the marker goes last")
    }

    /// The ids `dbrestore list` shows (backups with a manifest), oldest first; none for a repository not yet made.
    private func backupIDs(_ repository: String, cluster: PostgresCluster, environment: [String: String] = [:]) throws -> [String] {
        let listing = try asOwner("dbrestore", ["list", "--json", "--repo", repository], cluster: cluster, environment: environment)
        let items = (try? JSONSerialization.jsonObject(with: Data(listing.standardOutput.utf8))) as? [[String: Any]] ?? []
        return items.compactMap { $0["id"] as? String }.sorted()
    }
}
