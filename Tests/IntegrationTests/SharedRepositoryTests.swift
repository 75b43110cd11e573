import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// One repository holding several databases' backups and physical base backups (a shared
/// `BACKUP_REPO`; the README's own examples use one repository for logical and `--physical`).
/// Found by an outside attack: `dbprune` counted every backup together (ten hourly backups of `app`
/// deleted `billing`'s only two, ten logical backups the only base backup), and `--emergency`,
/// `--drill` and `latest` restored the newest backup of any database into the target.
final class SharedRepositoryTests: SharedRepositoryTestCase {
    /// `app` (table `app_items`, 3 rows) and `billing` (table `invoices`, 2 rows) on the shared cluster.
    private func useTwoDatabases() throws -> (app: String, billing: String) {
        try useTwoDatabases(prefix: "shared", appTable: "app_items", billingTable: "invoices")
    }

    private func tables(of name: String) throws -> [String] {
        try cluster.connect(database: name).query("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").rows.compactMap { $0[0] }
    }

    /// The attack's two scripts in one repository: a base backup, then 2 backups of billing, then 11
    /// of app. Each group keeps its own newest 10: billing's two, the base backup and the WAL from its
    /// first segment on; only app's oldest goes, "older than the 10 newest of database app".
    func testPruneAppliesTheRulesToEachDatabaseAndToTheBaseBackupsOnTheirOwn() throws {
        let root = ownedDirectory("shared-prune")
        repository = root + "/repo"
        let server = try PostgresCluster(archiveCommand: walPush(into: repository))
        defer { server.stop() }
        let appDB = try server.createDatabase(prefix: "app", seed: "CREATE TABLE app_items (id int); INSERT INTO app_items VALUES (1)")
        let billingDB = try server.createDatabase(prefix: "billing", seed: "CREATE TABLE invoices (id int); INSERT INTO invoices VALUES (1)")

        let base = try physicalBackup(of: appDB, on: server, into: repository, ["--json"])
        let baseID = json(base.standardOutput)["id"] as? String ?? ""
        XCTAssertFalse(baseID.isEmpty, base.standardOutput)

        // Only a base backup: --emergency names it and the way to it, not "0 skipped" and dbverify.
        let physicalOnly = try asOwner("dbrestore", ["--emergency", "--database-url", server.url(database: billingDB), "--repo", repository],
                                       cluster: server)
        XCTAssertEqual(physicalOnly.status, ExitStatus.backupNotFound.rawValue, physicalOnly.standardError)
        XCTAssertTrue(physicalOnly.standardError.contains("no logical backup of database \(billingDB)"), physicalOnly.standardError)
        XCTAssertTrue(physicalOnly.standardError.contains("it holds 1 physical base backup"), physicalOnly.standardError)
        XCTAssertTrue(physicalOnly.standardError.contains("dbrestore --pitr --pgdata DIR --target latest"), physicalOnly.standardError)
        XCTAssertEqual(try server.connect(database: billingDB).query("SELECT count(*) FROM invoices").scalar, "1", "billing untouched")

        let billingIDs = [try backup(of: billingDB, on: server), try backup(of: billingDB, on: server)]
        var appIDs: [String] = []
        for _ in 0..<11 { appIDs.append(try backup(of: appDB, on: server)) }
        try waitForArchive(try server.connect(database: appDB))
        let baseManifest = try manifest(baseID)
        let firstSegment = baseManifest.physical?.firstWalSegment ?? ""
        func walNeeded() -> [String] {
            let files = (FileManager.default.enumerator(atPath: repository + "/wal")?.allObjects as? [String]) ?? []
            return files.filter { name in
                let file = String(name.split(separator: "/").last ?? "")
                return file.count >= 24 && !file.contains(".history") && String(file.prefix(24)) >= firstSegment
            }.sorted()
        }
        let walBefore = walNeeded()
        XCTAssertFalse(walBefore.isEmpty, "the base backup's WAL was archived")

        let dryRun = try asOwner("dbprune", ["--repo", repository, "--dry-run", "--json"], cluster: server)
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        let plan = json(dryRun.standardOutput)
        let decisions = plan["decisions"] as? [[String: Any]] ?? []
        let deleted = decisions.filter { $0["action"] as? String == "delete" }.compactMap { $0["id"] as? String }
        XCTAssertEqual(deleted, [appIDs[0]], "only app's oldest goes: \(decisions)")
        let oldest = decisions.first { $0["id"] as? String == appIDs[0] }
        XCTAssertEqual(oldest?["reason"] as? String, "older than the 10 newest of database \(appDB)")
        XCTAssertEqual(oldest?["group"] as? String, "database \(appDB)")
        XCTAssertEqual(decisions.first { $0["id"] as? String == billingIDs[0] }?["kept_by"] as? [String], ["last #2"])
        XCTAssertEqual(decisions.first { $0["id"] as? String == billingIDs[1] }?["kept_by"] as? [String], ["last #1", "newest verified"])
        let baseDecision = decisions.first { $0["id"] as? String == baseID }
        XCTAssertEqual(baseDecision?["kept_by"] as? [String], ["last #1", "newest verified"])
        XCTAssertTrue((baseDecision?["group"] as? String ?? "").hasPrefix("physical base backups of server "), "\(baseDecision ?? [:])")
        // Each group says what it holds and keeps, and which of its backups verified.
        let groups = plan["groups"] as? [[String: Any]] ?? []
        XCTAssertEqual(groups.compactMap { $0["group"] as? String }.prefix(2).sorted(), ["database \(appDB)", "database \(billingDB)"].sorted())
        let appGroup = groups.first { $0["database"] as? String == appDB }
        XCTAssertEqual(appGroup?["backups"] as? Int, 11)
        XCTAssertEqual(appGroup?["kept"] as? Int, 10)
        XCTAssertEqual(appGroup?["deleted"] as? Int, 1)
        XCTAssertEqual(appGroup?["newest_verified"] as? String, appIDs[10])
        XCTAssertEqual(groups.first { $0["kind"] as? String == "physical" }?["system_identifier"] as? String,
                       baseManifest.database.systemIdentifier)
        XCTAssertEqual((plan["wal"] as? [String: Any])?["oldest_needed"] as? String, firstSegment)

        // The text plan says the group of each row and each group's own count.
        let text = try asOwner("dbprune", ["--repo", repository, "--dry-run"], cluster: server)
        XCTAssertEqual(text.status, 0, text.standardError)
        let row = text.standardOutput.split(separator: "\n").first { $0.hasPrefix(appIDs[0]) } ?? ""
        XCTAssertTrue(row.contains("database \(appDB)") && row.contains("delete"), String(row))
        XCTAssertTrue(text.standardError.contains("database \(billingDB): 2 backup(s), would keep 2, would delete 0; newest verified: backup \(billingIDs[1])"),
                      text.standardError)

        let pruned = try asOwner("dbprune", ["--repo", repository, "--yes"], cluster: server)
        XCTAssertEqual(pruned.status, 0, pruned.standardError)
        let left = try Catalog(store: try LocalStore(root: repository, create: false)).entries().map(\.id)
        XCTAssertEqual(Set(left), Set([baseID] + billingIDs + appIDs.dropFirst()))
        XCTAssertEqual(walNeeded(), walBefore, "the base backup's WAL is kept")
        let verify = try asOwner("dbverify", ["--files", baseID, "--repo", repository], cluster: server)
        XCTAssertEqual(verify.status, 0, verify.standardError)
    }

    /// billing's backup is older than app's two: `--emergency`, `--drill`, `latest` and `dbverify`
    /// of billing use billing's own; app's newer ones are passed over with the reason.
    func testEmergencyDrillAndLatestRestoreTheTargetsOwnDatabasesNewestBackup() throws {
        let (app, billing) = try useTwoDatabases()
        let billingID = try backup(of: billing)
        let appIDs = [try backup(of: app), try backup(of: app)]
        let billingURL = cluster.url(database: billing)

        let dryRun = try tool("dbrestore", ["--emergency", "--dry-run", "--database-url", billingURL, "--repo", repository])
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        XCTAssertTrue(dryRun.standardOutput.contains("backup:   \(billingID)"), dryRun.standardOutput)
        XCTAssertTrue(dryRun.standardOutput.contains("skip backup \(appIDs[1]) and 1 more: of database \(app), not of \(billing) (--from-database \(app)"),
                      dryRun.standardOutput)

        let drill = try tool("dbrestore", ["--drill", "--json", "--database-url", billingURL, "--repo", repository])
        XCTAssertEqual(drill.status, 0, drill.standardError)
        XCTAssertEqual((json(drill.standardOutput)["plan"] as? [String: Any])?["backup_id"] as? String, billingID)

        let latest = try tool("dbrestore", ["latest", "--dry-run", "--database-url", billingURL, "--repo", repository])
        XCTAssertEqual(latest.status, 0, latest.standardError)
        XCTAssertTrue(latest.standardOutput.contains("backup:   \(billingID)"), latest.standardOutput)

        // The live database compared with its own newest backup, not app's.
        let verify = try tool("dbverify", ["latest", "--database-url", billingURL, "--repo", repository])
        XCTAssertEqual(verify.status, 0, verify.standardError)
        XCTAssertTrue(verify.standardError.contains("matches backup \(billingID)"), verify.standardError)

        try cluster.connect(database: billing).execute(script: "INSERT INTO invoices VALUES (3)")
        let emergency = try tool("dbrestore", ["--emergency", "--database-url", billingURL, "--repo", repository])
        XCTAssertEqual(emergency.status, 0, emergency.standardError)
        XCTAssertTrue(emergency.standardOutput.contains("restored \(billing) from backup \(billingID)"), emergency.standardOutput)
        XCTAssertEqual(try tables(of: billing), ["invoices"])
        XCTAssertEqual(try cluster.connect(database: billing).query("SELECT count(*) FROM invoices").scalar, "2")

        // `dbrestore list` says whose each backup is, in text and JSON.
        let list = try tool("dbrestore", ["list", "--repo", repository])
        XCTAssertEqual(list.status, 0, list.standardError)
        XCTAssertTrue(list.standardOutput.contains("DATABASE"), list.standardOutput)
        for (id, name) in [(billingID, billing), (appIDs[0], app), (appIDs[1], app)] {
            let row = list.standardOutput.split(separator: "\n").first { $0.hasPrefix(id) } ?? ""
            XCTAssertTrue(row.contains(" \(name) "), "row of \(id) without its database \(name): \(row)")
        }
        let listed = try tool("dbrestore", ["list", "--json", "--repo", repository])
        let items = (try? JSONSerialization.jsonObject(with: Data(listed.standardOutput.utf8))) as? [[String: Any]] ?? []
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: items.compactMap { item in (item["id"] as? String).map { ($0, item["database"] as? String ?? "") } }),
                       [billingID: billing, appIDs[0]: app, appIDs[1]: app])
    }

    /// A target with no backup of its own: refused naming what there is and `--from-database`, the
    /// target untouched; `--from-database` restores the other database's newest; an explicit id is
    /// the operator's choice, said in the plan, never refused.
    func testNoBackupOfTheTargetIsRefusedAndFromDatabaseOrAnIdChoosesAnother() throws {
        let (app, billing) = try useTwoDatabases()
        let appIDs = [try backup(of: app), try backup(of: app)]
        let copy = try cluster.createDatabase(prefix: "app_copy", seed: "CREATE TABLE mine (id int)")
        let copyURL = cluster.url(database: copy)

        for mode in [["--emergency"], ["--drill"], ["latest", "--yes"]] {
            let refused = try tool("dbrestore", mode + ["--database-url", copyURL, "--repo", repository])
            XCTAssertEqual(refused.status, ExitStatus.backupNotFound.rawValue, "\(mode): \(refused.standardError)")
            XCTAssertTrue(refused.standardError.contains("no logical backup of database \(copy)"), refused.standardError)
            XCTAssertTrue(refused.standardError.contains("it holds 2 logical backups of database \(app)"), refused.standardError)
            XCTAssertTrue(refused.standardError.contains("--from-database \(app)"), refused.standardError)
            XCTAssertEqual(try tables(of: copy), ["mine"], "\(mode): the target is untouched")
        }

        let from = try tool("dbrestore", ["--emergency", "--from-database", app, "--database-url", copyURL, "--repo", repository])
        XCTAssertEqual(from.status, 0, from.standardError)
        XCTAssertTrue(from.standardOutput.contains("restored \(copy) from backup \(appIDs[1])"), from.standardOutput)
        XCTAssertEqual(try tables(of: copy), ["app_items"])

        // Restoring app's older backup into the copy by its id: the plan says whose it is.
        let named = try tool("dbrestore", [appIDs[0], "--dry-run", "--database-url", copyURL, "--repo", repository])
        XCTAssertEqual(named.status, 0, named.standardError)
        XCTAssertTrue(named.standardOutput.contains("backup \(appIDs[0]) is of database \(app); it is restored into \(copy)"), named.standardOutput)
        let restored = try tool("dbrestore", [appIDs[0], "--yes", "--database-url", copyURL, "--repo", repository])
        XCTAssertEqual(restored.status, 0, restored.standardError)

        // A --from-database that contradicts the named backup is a usage error; nothing restored.
        let contradiction = try tool("dbrestore", [appIDs[0], "--yes", "--from-database", billing, "--database-url", copyURL, "--repo", repository])
        XCTAssertEqual(contradiction.status, ExitStatus.usage.rawValue, contradiction.standardError)
        XCTAssertTrue(contradiction.standardError.contains("backup \(appIDs[0]) is of database \(app), not \(billing)"), contradiction.standardError)
    }
}
