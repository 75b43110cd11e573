import Foundation
@testable import RecoveryKit
import XCTest

/// The config file is decoded strictly: every setting lands where it belongs, and a typo or a
/// wrong type is an error naming the key and the file, never silently ignored.
final class ConfigFileTests: XCTestCase {
    private func write(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "config-\(UUID().uuidString).toml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func testEveryKeyIsRead() throws {
        let path = try write("""
            database_url = "postgresql://app@db1/app"
            repo = "/srv/backups"
            pg_bin = "/usr/lib/postgresql/17/bin"
            metrics_file = "/var/lib/node_exporter/db.prom"
            notify_url = "https://hooks.example/x"
            [s3]
            endpoint = "http://127.0.0.1:9000"
            region = "eu-north-1"
            [retention]
            policy = "/etc/dbrecovery/retention.toml"
            [migrations]
            dir = "/srv/app/migrations"
            [restore]
            keep_pre_restore = 2
            keep_pre_restore_within = "7d"
            [repositories]
            local = "/srv/backups"
            offsite = "s3://acme/prod"
            """)
        var expected = ConfigFile(path: path)
        expected.databaseURL = "postgresql://app@db1/app"
        expected.repository = "/srv/backups"
        expected.pgBin = "/usr/lib/postgresql/17/bin"
        expected.metricsFile = "/var/lib/node_exporter/db.prom"
        expected.notifyURL = "https://hooks.example/x"
        expected.s3Endpoint = "http://127.0.0.1:9000"
        expected.s3Region = "eu-north-1"
        expected.policy = "/etc/dbrecovery/retention.toml"
        expected.migrationsDirectory = "/srv/app/migrations"
        expected.keepPreRestore = 2
        expected.keepPreRestoreWithin = RetentionDuration.parse("7d")
        expected.repositories = ["local": "/srv/backups", "offsite": "s3://acme/prod"]
        XCTAssertEqual(try ConfigFile.load(path), expected)
    }

    func testTyposAndWrongTypesAreErrorsNamingTheKeyAndTheFile() throws {
        let cases: [(String, String)] = [
            ("repo_path = \"/x\"", "unknown key repo_path"),
            ("[s3]\nendpont = \"http://x\"", "unknown key [s3] endpont"),
            ("[restor]\nkeep_pre_restore = 1", "unknown section [restor]"),
            ("[restore]\nkeep_pre_restore = \"many\"", "[restore] keep_pre_restore must be a whole number"),
            ("[restore]\nkeep_pre_restore = -1", "[restore] keep_pre_restore must be a whole number"),
            ("repo = 3", "repo must be a string"),
            ("[repositories]\nlocal = 1", "[repositories] local must be a string"),
            ("repo = ", "is not valid TOML"),
            // Found by an outside attack: an empty or relative repository (cron runs from /), and an
            // age only `dbrestore cleanup` used to read, so every other command accepted it.
            ("repo = \"\"", "repo is empty"),
            ("repo = \"backups\"", "repo = \"backups\" is a relative path"),
            ("[repositories]\nlocal = \"./b\"", "[repositories] local = \"./b\" is a relative path"),
            ("[restore]\nkeep_pre_restore_within = \"7 days\"", "[restore] keep_pre_restore_within = \"7 days\" is not an age"),
        ]
        for (text, message) in cases {
            let path = try write(text)
            XCTAssertThrowsError(try ConfigFile.load(path), text) { error in
                let recovery = error as? RecoveryError
                XCTAssertEqual(recovery?.code, .configuration, text)
                XCTAssertTrue(recovery?.message.contains(message) == true, "\(text): \(recovery?.message ?? "\(error)")")
                XCTAssertTrue(recovery?.message.contains(path) == true, "\(text): the message names the file")
            }
        }
    }
}
