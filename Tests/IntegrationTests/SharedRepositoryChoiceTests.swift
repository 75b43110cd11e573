import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// The siblings of `SharedRepositoryTests`: every other place that takes "the newest backup" —
/// a selective restore's `latest`, `dbrestore contents latest`, `dbverify --files` without a backup
/// named — chooses among the backups of the database it is about, never the newest of another
/// database sharing the repository; the metrics of several databases' runs sharing one file each
/// keep their own series; and tables whose names read the same joined with a dot are two tables.
final class SharedRepositoryChoiceTests: SharedRepositoryTestCase {
    /// `app` (`public.shared`: 3 rows) and `billing` (`public.shared`: 2 rows): one table name in both,
    /// so that a table restored from the wrong database's backup restores, with the wrong rows.
    private func useTwoDatabases() throws -> (app: String, billing: String) {
        try useTwoDatabases(prefix: "shared-choice", appTable: "shared", billingTable: "shared")
    }

    /// billing's backup first, then app's (the repository's newest): `dbrestore latest --table` into
    /// billing restores billing's own table (2 rows), the plan naming whose backup it is;
    /// `--from-database app` takes app's, saying it is not billing's.
    func testSelectiveRestoreOfLatestTakesTheTargetsOwnNewestBackup() throws {
        let (app, billing) = try useTwoDatabases()
        let billingID = try backup(of: billing)
        let appID = try backup(of: app)
        let into = ["--database-url", cluster.url(database: billing), "--repo", repository!]

        let plan = try tool("dbrestore", ["latest", "--table", "public.shared", "--into-schema", "rescue", "--dry-run"] + into)
        XCTAssertEqual(plan.status, 0, plan.standardError)
        XCTAssertTrue(plan.standardOutput.contains("backup: \(billingID) of database \(billing) ("), plan.standardOutput)

        let restored = try tool("dbrestore", ["latest", "--table", "public.shared", "--into-schema", "rescue"] + into)
        XCTAssertEqual(restored.status, 0, restored.standardError)
        XCTAssertTrue(restored.standardOutput.contains("from backup \(billingID)"), restored.standardOutput)
        XCTAssertEqual(try cluster.connect(database: billing).query("SELECT count(*) FROM rescue.shared").scalar, "2",
                       "billing's own table, not app's 3 rows")

        let fromApp = try tool("dbrestore", ["latest", "--table", "public.shared", "--into-schema", "rescue_app", "--from-database", app, "--dry-run", "--json"] + into)
        XCTAssertEqual(fromApp.status, 0, fromApp.standardError)
        let fromAppPlan = json(fromApp.standardOutput)
        XCTAssertEqual(fromAppPlan["backup_id"] as? String, appID, fromApp.standardOutput)
        XCTAssertEqual(fromAppPlan["backup_database"] as? String, app, fromApp.standardOutput)
        let fromAppText = try tool("dbrestore", ["latest", "--table", "public.shared", "--from-database", app, "--dry-run"] + into)
        XCTAssertTrue(fromAppText.standardOutput.contains("backup: \(appID) of database \(app), not of \(billing)"), fromAppText.standardOutput)

        // A database with no backup in the repository: refused, naming what it holds; nothing created.
        let empty = try cluster.createDatabase(prefix: "empty", seed: "CREATE TABLE shared (id int)")
        let none = try tool("dbrestore", ["latest", "--table", "public.shared", "--into-schema", "rescue",
                                          "--database-url", cluster.url(database: empty), "--repo", repository])
        XCTAssertEqual(none.status, ExitStatus.backupNotFound.rawValue, none.standardError)
        XCTAssertTrue(none.standardError.contains("no logical backup of database \(empty)"), none.standardError)
        XCTAssertTrue(none.standardError.contains("--from-database \(app)"), none.standardError)
        XCTAssertEqual(try cluster.connect(database: empty).query("SELECT count(*) FROM pg_namespace WHERE nspname = 'rescue'").scalar, "0")
    }

    /// `dbrestore contents latest` in a repository of two databases does not say whose: refused
    /// (exit 2) naming both and `--from-database`; with it, that database's newest, said in the listing.
    func testContentsOfLatestNamesTheDatabaseOrIsRefused() throws {
        let (app, billing) = try useTwoDatabases()
        let billingID = try backup(of: billing)
        let appID = try backup(of: app)

        let ambiguous = try tool("dbrestore", ["contents", "latest", "--repo", repository])
        XCTAssertEqual(ambiguous.status, ExitStatus.usage.rawValue, ambiguous.standardError)
        XCTAssertTrue(ambiguous.standardError.contains("holds logical backups of 2 databases"), ambiguous.standardError)
        XCTAssertTrue(ambiguous.standardError.contains("--from-database \(app)"), ambiguous.standardError)
        XCTAssertTrue(ambiguous.standardOutput.isEmpty, ambiguous.standardOutput)

        let billings = try tool("dbrestore", ["contents", "latest", "--from-database", billing, "--repo", repository])
        XCTAssertEqual(billings.status, 0, billings.standardError)
        XCTAssertTrue(billings.standardOutput.hasPrefix("backup \(billingID) of database \(billing) ("), billings.standardOutput)
        let listed = json(try tool("dbrestore", ["contents", "--from-database", billing, "--repo", repository, "--json"]).standardOutput)
        XCTAssertEqual(listed["backup_id"] as? String, billingID)
        XCTAssertEqual(listed["database"] as? String, billing)
        let rows = (listed["tables"] as? [[String: Any]])?.first { $0["name"] as? String == "shared" }?["rows"] as? Int
        XCTAssertEqual(rows, 2)

        // An id needs no database; a repository of one database needs none either.
        let byID = try tool("dbrestore", ["contents", appID, "--repo", repository])
        XCTAssertTrue(byID.standardOutput.hasPrefix("backup \(appID) of database \(app) ("), byID.standardOutput + byID.standardError)
        let single = repository!
        useLocalRepository(prefix: "single")
        let onlyID = try backup(of: billing)
        let only = try tool("dbrestore", ["contents", "latest", "--repo", repository])
        XCTAssertTrue(only.standardOutput.hasPrefix("backup \(onlyID) of database \(billing) ("), only.standardOutput + only.standardError)
        XCTAssertNotEqual(single, repository)
    }

    /// billing's newest backup is damaged and app's, newer still, is fine: `dbverify --files` (no
    /// backup named, `latest`) checks each database's newest and fails naming billing's (it checked
    /// only app's: exit 0); `--from-database` checks that database's newest alone.
    func testVerifyFilesOfLatestChecksEachDatabasesNewestBackup() throws {
        let (app, billing) = try useTwoDatabases()
        let billingID = try backup(of: billing)
        let appID = try backup(of: app)
        let dump = "\(repository!)/backups/\(billingID)/dump.sql.gz"
        var data = try Data(contentsOf: URL(fileURLWithPath: dump))
        data[data.count / 2] ^= 0x20
        try data.write(to: URL(fileURLWithPath: dump))

        let all = try tool("dbverify", ["--files", "--repo", repository, "--json"])
        XCTAssertEqual(all.status, ExitStatus.backupCorrupt.rawValue, all.standardError)
        XCTAssertTrue(all.standardError.contains("backup \(billingID) of database \(billing) is damaged"), all.standardError)
        let reports = (try? JSONSerialization.jsonObject(with: Data(all.standardOutput.utf8))) as? [[String: Any]] ?? []
        XCTAssertEqual(Set(reports.compactMap { $0["id"] as? String }), [billingID, appID], all.standardOutput)
        XCTAssertEqual(Set(reports.compactMap { $0["database"] as? String }), [billing, app], all.standardOutput)

        let appOnly = try tool("dbverify", ["--files", "latest", "--from-database", app, "--repo", repository])
        XCTAssertEqual(appOnly.status, 0, appOnly.standardError)
        XCTAssertTrue(appOnly.standardOutput.contains(appID) && !appOnly.standardOutput.contains(billingID), appOnly.standardOutput)
        let billingOnly = try tool("dbverify", ["--files", "--from-database", billing, "--repo", repository])
        XCTAssertEqual(billingOnly.status, ExitStatus.backupCorrupt.rawValue, billingOnly.standardError)
        let allOfApp = try tool("dbverify", ["--files", "all", "--from-database", app, "--repo", repository])
        XCTAssertEqual(allOfApp.status, 0, allOfApp.standardError)
        XCTAssertTrue(allOfApp.standardOutput.contains(appID) && !allOfApp.standardOutput.contains(billingID), allOfApp.standardOutput)

        // Row counts: the target's own newest, or --from-database's (app_copy compared with app's).
        let rows = try tool("dbverify", ["--database-url", cluster.url(database: billing), "--repo", repository])
        XCTAssertEqual(rows.status, 0, rows.standardError)
        XCTAssertTrue(rows.standardError.contains("backup \(billingID) (newest backup of database \(billing))"), rows.standardError)
        let copy = try cluster.createDatabase(prefix: "appcopy", seed: "CREATE TABLE shared (id int); INSERT INTO shared VALUES (1), (2), (3)")
        let copyRows = try tool("dbverify", ["--database-url", cluster.url(database: copy), "--repo", repository, "--from-database", app])
        XCTAssertEqual(copyRows.status, 0, copyRows.standardError)
        XCTAssertTrue(copyRows.standardError.contains("backup \(appID) (newest backup of database \(app))"), copyRows.standardError)
        // The schema too: the copy against app's newest fingerprint, then drifted from it.
        let schema = try tool("dbverify", ["--schema", "--database-url", cluster.url(database: copy), "--repo", repository, "--from-database", app])
        XCTAssertEqual(schema.status, 0, schema.standardError)
        try cluster.connect(database: copy).execute(script: "ALTER TABLE shared ADD COLUMN note text")
        let drifted = try tool("dbverify", ["--schema", "--database-url", cluster.url(database: copy), "--repo", repository, "--from-database", app])
        XCTAssertEqual(drifted.status, ExitStatus.verificationMismatch.rawValue, drifted.standardError)
        XCTAssertTrue(drifted.standardError.contains("schema of \(copy) does not match backup \(appID) (of database \(app))"), drifted.standardError)
        // Another database's backup named by its id: compared, and the mismatch says whose backup it is.
        let byID = try tool("dbverify", [appID, "--database-url", cluster.url(database: billing), "--repo", repository])
        XCTAssertEqual(byID.status, ExitStatus.verificationMismatch.rawValue, byID.standardError)
        XCTAssertTrue(byID.standardError.contains("\(billing) does not match backup \(appID) (of database \(app)): public.shared: expected 3, found 2"),
                      byID.standardError)
    }

    /// Tables `"a.b"."c"` and `"a"."b.c"` both read `a.b.c` joined with a dot: keyed by that text,
    /// one's count stood for the other's. Each is counted, compared and listed on its own.
    func testTablesWhoseNamesReadTheSameWithADotAreComparedEachOnItsOwn() throws {
        try useDatabase(prefix: "dots", seed: """
            CREATE SCHEMA "a.b"; CREATE TABLE "a.b"."c" (id int); INSERT INTO "a.b"."c" SELECT generate_series(1, 5);
            CREATE SCHEMA a; CREATE TABLE a."b.c" (id int); INSERT INTO a."b.c" SELECT generate_series(1, 7);
            """)
        useLocalRepository(prefix: "dots")
        let id = try backup()
        let contents = json(try tool("dbrestore", ["contents", id, "--repo", repository, "--json"]).standardOutput)
        let listed = (contents["tables"] as? [[String: Any]] ?? []).map { "\($0["qualified"] as? String ?? "") \($0["rows"] as? Int ?? -1)" }
        XCTAssertEqual(Set(listed), ["\"a.b\".c 5", "a.\"b.c\" 7"], "\(contents)")

        XCTAssertEqual(try tool("dbverify", common).status, 0)
        // The 7-row table loses 2 rows: the other table's 5 must not stand in for its count.
        try cluster.connect(database: database).execute(script: #"DELETE FROM a."b.c" WHERE id > 5"#)
        let drifted = try tool("dbverify", common + ["latest"])
        XCTAssertEqual(drifted.status, ExitStatus.verificationMismatch.rawValue, drifted.standardOutput + drifted.standardError)
        XCTAssertTrue(drifted.standardError.contains(#"a."b.c": expected 7, found 5"#), drifted.standardError)
    }

    /// Two databases' nightly backups write one metrics file (`metrics_file` in the config file, one
    /// `METRICS_DIR`): app's succeeds, billing's fails. Each keeps its own series, billing's failure
    /// carries no success time of app's, and app's series survive billing's run; promtool reads the file.
    func testTwoDatabasesRunsSharingAMetricsFileKeepTheirOwnSeries() throws {
        let (app, billing) = try useTwoDatabases()
        let metrics = TestPaths.temporaryDirectory(prefix: "metrics") + "/dbrecovery.prom"
        // What an older release wrote for app's backups: no database label. Replaced, not left to go stale.
        try """
            # HELP dbrecovery_last_run_success 1 if the last run succeeded, else 0.
            # TYPE dbrecovery_last_run_success gauge
            dbrecovery_last_run_success{kind="logical",tool="dbbackup"} 1
            """.write(toFile: metrics, atomically: true, encoding: .utf8)
        _ = try backup(of: app, ["--metrics-file", metrics])
        let appText = try String(contentsOfFile: metrics, encoding: .utf8)
        XCTAssertFalse(appText.contains(#"{kind="logical",tool="dbbackup"}"#), appText)
        let appSuccess = appText.split(separator: "\n").first { $0.hasPrefix(#"dbrecovery_last_success_timestamp_seconds{database="\#(app)""#) }
        XCTAssertNotNil(appSuccess, appText)

        try cluster.connect().execute(script: "ALTER DATABASE \(billing) WITH ALLOW_CONNECTIONS false")
        defer { _ = try? cluster.connect().execute(script: "ALTER DATABASE \(billing) WITH ALLOW_CONNECTIONS true") }
        let failed = try tool("dbbackup", ["--database-url", cluster.url(database: billing), "--repo", repository, "--metrics-file", metrics])
        XCTAssertNotEqual(failed.status, 0)
        let text = try String(contentsOfFile: metrics, encoding: .utf8)
        let lines = text.split(separator: "\n").map(String.init)
        let billingLabels = #"database="\#(billing)",kind="logical",tool="dbbackup""#
        XCTAssertTrue(lines.contains("dbrecovery_last_run_success{\(billingLabels)} 0"), text)
        XCTAssertTrue(lines.contains("dbrecovery_last_exit_code{\(billingLabels)} \(failed.status)"), text)
        XCTAssertFalse(text.contains("dbrecovery_last_success_timestamp_seconds{\(billingLabels)}"), "billing never succeeded:\n\(text)")
        XCTAssertTrue(lines.contains(#"dbrecovery_last_run_success{database="\#(app)",kind="logical",tool="dbbackup"} 1"#), text)
        XCTAssertTrue(lines.contains(String(appSuccess ?? "")), "app's success time kept:\n\(text)")
        XCTAssertEqual(lines.filter { $0 == "# TYPE dbrecovery_last_run_success gauge" }.count, 1, text)

        let promtool = try TestProcess.shell("command -v promtool").standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertFalse(promtool.isEmpty, "promtool is missing: install the Debian package prometheus (scripts/setup.sh does)")
        let check = try TestProcess.run(promtool, ["check", "metrics"], input: Data(text.utf8))
        XCTAssertEqual(check.status, 0, check.standardOutput + check.standardError)
        // The alert rules group by database: billing's stale backups alert although app's are fresh.
        let rules = try TestProcess.run(promtool, ["test", "rules", TestPaths.repositoryRoot + "/contrib/prometheus/dbrecovery.rules.test.yml"])
        XCTAssertEqual(rules.status, 0, rules.standardOutput + rules.standardError)
    }
}
