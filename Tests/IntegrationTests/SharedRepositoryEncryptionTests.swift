import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// A repository shared by two databases whose backups were stored in different modes (`app`
/// encrypted, `billing` plaintext with `--allow-mixed-encryption`) and that has no `encryption.json`
/// (written before the record existed, or its recording failed): whichever database was backed up
/// last must not decide the other's mode.
final class SharedRepositoryEncryptionTests: SharedRepositoryTestCase {
    func testEachDatabaseOfAMixedRepositoryWithoutARecordIsHeldToItsOwnBackups() throws {
        let (app, billing) = try useTwoDatabases(prefix: "mixedshared", appTable: "accounts", billingTable: "invoices")
        let keyFile = TestPaths.temporaryDirectory(prefix: "mixedkey") + "/k"
        try "shared-repository-key-material-0123".write(toFile: keyFile, atomically: true, encoding: .utf8)
        let key = ["--encryption-key-file", keyFile]
        _ = try backup(of: app, key)
        sleep(1)   // backup ids have whole seconds: billing's is the newest
        _ = try backup(of: billing, ["--allow-mixed-encryption"])
        let record = repository! + "/" + RepositoryEncryption.key
        try FileManager.default.removeItem(atPath: record)

        // Each database goes on as it was stored, in either order, and nothing records one mode for both.
        _ = try backup(of: app, key)
        _ = try backup(of: billing)
        sleep(1)
        let newestApp = try backup(of: app, key)
        let newestBilling = try backup(of: billing)
        XCTAssertFalse(FileManager.default.fileExists(atPath: record), "a repository stored in two modes has no one mode to record")

        // Each is still held to its own backups: no plaintext for app, no key for billing.
        let plainApp = try tool("dbbackup", ["--database-url", cluster.url(database: app), "--repo", repository])
        XCTAssertEqual(plainApp.status, ExitStatus.usage.rawValue, plainApp.standardError)
        XCTAssertTrue(plainApp.standardError.contains("holds encrypted backups"), plainApp.standardError)
        let keyedBilling = try tool("dbbackup", ["--database-url", cluster.url(database: billing), "--repo", repository] + key)
        XCTAssertEqual(keyedBilling.status, ExitStatus.usage.rawValue, keyedBilling.standardError)
        XCTAssertTrue(keyedBilling.standardError.contains("holds unencrypted backups"), keyedBilling.standardError)

        // Both restore: app's with the key, billing's without one.
        for (id, extra, table, rows) in [(newestApp, key, "accounts", "3"), (newestBilling, [], "invoices", "2")] {
            let target = "mixedshared_restored_\(UInt32.random(in: 0...UInt32.max))"
            let restore = try tool("dbrestore", [id, "--yes", "--repo", repository, "--database-url", cluster.url(database: target)] + extra)
            XCTAssertEqual(restore.status, 0, restore.standardError)
            XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM \(table)", database: target), rows)
        }
    }
}
