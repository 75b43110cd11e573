import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// `--from-database NAME` together with a backup named by its id that is another database's: the
/// operator said two things. Every command refuses it the same way (exit 2, naming both databases)
/// instead of quietly going with the id; `dbrestore list --from-database NAME` lists NAME's backups only.
final class FromDatabaseContradictionTests: SharedRepositoryTestCase {
    func testABackupIdOfAnotherDatabaseWithFromDatabaseIsRefusedEverywhere() throws {
        let (app, billing) = try useTwoDatabases(prefix: "contradiction", appTable: "accounts", billingTable: "invoices")
        let appID = try backup(of: app)
        let billingID = try backup(of: billing)
        let repo = ["--repo", repository!]
        let onApp = ["--database-url", cluster.url(database: app)] + repo
        let copy = ["--database-url", cluster.url(database: "contradiction_copy_\(UInt32.random(in: 0...UInt32.max))")] + repo

        for (label, tool, arguments) in [
            ("dbverify rows", "dbverify", [billingID, "--from-database", app] + onApp),
            ("dbverify --schema", "dbverify", [billingID, "--schema", "--from-database", app] + onApp),
            ("dbverify --files", "dbverify", ["--files", billingID, "--from-database", app] + repo),
            ("dbrestore contents", "dbrestore", ["contents", billingID, "--from-database", app] + repo),
            ("dbrestore", "dbrestore", [billingID, "--from-database", app, "--yes"] + copy),
            ("dbrestore --table", "dbrestore", [billingID, "--table", "public.invoices", "--from-database", app, "--yes"] + onApp),
        ] {
            let refused = try self.tool(tool, arguments)
            XCTAssertEqual(refused.status, ExitStatus.usage.rawValue, "\(label): \(refused.standardError)")
            XCTAssertTrue(refused.standardError.contains("backup \(billingID) is of database \(billing), not \(app) as --from-database says"),
                          "\(label): \(refused.standardError)")
            XCTAssertTrue(refused.standardError.contains("dbrestore list --from-database \(app)"), "\(label): \(refused.standardError)")
        }
        XCTAssertEqual(try databases(like: "contradiction_copy_%"), [], "nothing was restored")
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'restored_%'", database: app), "0")

        // The same commands with the database's own backup, or without --from-database, go ahead.
        XCTAssertEqual(try tool("dbverify", [appID, "--from-database", app] + onApp).status, 0)
        XCTAssertEqual(try tool("dbverify", ["--files", billingID] + repo).status, 0)
        XCTAssertEqual(try tool("dbrestore", ["contents", appID, "--from-database", app] + repo).status, 0)

        // list --from-database: that database's backups only, in text and JSON.
        let listed = try tool("dbrestore", ["list", "--from-database", app] + repo)
        XCTAssertEqual(listed.status, 0, listed.standardError)
        XCTAssertTrue(listed.standardOutput.contains(appID), listed.standardOutput)
        XCTAssertFalse(listed.standardOutput.contains(billingID), listed.standardOutput)
        let rows = (try JSONSerialization.jsonObject(with: Data(try tool("dbrestore", ["list", "--from-database", billing, "--json"] + repo).standardOutput.utf8))) as? [[String: Any]]
        XCTAssertEqual(rows?.compactMap { $0["id"] as? String }, [billingID])
        let none = try tool("dbrestore", ["list", "--from-database", "nosuchdb"] + repo)
        XCTAssertEqual(none.status, 0, none.standardError)
        XCTAssertTrue(none.standardError.contains("no backups of database nosuchdb"), none.standardError)
    }
}
