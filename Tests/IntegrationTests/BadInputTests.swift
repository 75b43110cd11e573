import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// Every executable with malformed values: a one-line error (plus a hint), the documented exit code,
/// and nothing changed in the repository or the database.
final class BadInputTests: XCTestCase {
    func testMalformedValuesAreRefusedWithDocumentedCodesAndChangeNothing() throws {
        let cluster = try PostgresCluster.shared()
        let database = try cluster.createDatabase(prefix: "badinput", seed: "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")
        let repository = TestPaths.repositoryPath()
        let url = cluster.url(database: database)
        XCTAssertEqual(try TestProcess.tool("dbbackup", ["--database-url", url, "--repo", repository], cluster: cluster).status, 0)
        let migrations = TestPaths.temporaryDirectory(prefix: "migrations")
        try "CREATE TABLE m (x int);".write(toFile: migrations + "/0001_m.up.sql", atomically: true, encoding: .utf8)
        let pgdata = TestPaths.temporaryDirectory(prefix: "pgdata") + "/new"
        let usage = ExitStatus.usage.rawValue
        let cases: [(tool: String, arguments: [String], code: Int32, says: String)] = [
            ("dbbackup", ["--compression-level", "-1"], usage, "--compression-level"),
            ("dbbackup", ["--compression-level", "99"], usage, "--compression-level"),
            ("dbbackup", ["--compression-level", "99999999999999999999999"], usage, "compression-level"),
            ("dbbackup", ["--jobs", "0"], usage, "--jobs"),
            ("dbbackup", ["--jobs", "100000"], usage, "--jobs"),
            ("dbbackup", ["--tag", "two words"], usage, "--tag"),
            ("dbbackup", ["--database-url", "postgresql://[::1"], usage, "invalid database URL"),
            ("dbbackup", ["--database-url", "host=db1 frobnicate=3"], usage, "invalid database URL"),
            ("dbbackup", ["--repo", "ftp://host/backups"], usage, "unsupported repository scheme"),
            ("dbbackup", ["--repo", "s3://ab"], usage, "bucket name"),
            ("dbbackup", ["--repo", "file://relative/path"], usage, "absolute path"),
            ("dbbackup", ["--repo", "   "], usage, "empty"),
            ("dbbackup", ["--no-such-flag"], usage, "no-such-flag"),
            ("dbrestore", ["--emrgency"], usage, "did you mean --emergency?"),
            // The misspelt option is named even where the subcommand's own check would fail first.
            ("dbrestore", ["pitr", "--pgdata", "/nonexistent", "--target-tme", "2024-01-15 10:00:00"], usage, "Unknown option '--target-tme'"),
            ("dbrestore", ["--pitr", "--pgdata", "/nonexistent", "--target-tme", "2024-01-15 10:00:00"], usage, "did you mean --target-time?"),
            // The server is up and names what it lacks: the hint says so, not "check the server is running".
            ("dbbackup", ["--database-url", cluster.url(database: "no_such_db_here")], ExitStatus.databaseUnavailable.rawValue, "has no database \"no_such_db_here\""),
            ("dbverify", ["latest", "--database-url", cluster.url(database: "no_such_db_here"), "--repo", repository], ExitStatus.databaseUnavailable.rawValue, "check the database name"),
            ("dbrestore", ["20990101T000000Z-ffff", "--yes"], ExitStatus.backupNotFound.rawValue, "nearest ids"),
            ("dbrestore", ["--emergency", "--drill"], usage, "cannot be combined"),
            ("dbrestore", ["latest", "--release", "v1"], usage, "--release"),
            ("dbrestore", ["latest", "--incident-file", "/tmp/x.json"], usage, "--incident-file"),
            ("dbrestore", ["latest", "--yes", "--jobs", "0"], usage, "--jobs"),
            ("dbrestore", ["latest", "--yes", "--jobs", "-3"], usage, "--jobs"),
            ("dbrestore", ["--pitr"], usage, "--pgdata"),
            ("dbrestore", ["--pitr", "--pgdata", pgdata, "--target-time", "yesterday"], usage, "--target-time"),
            ("dbrestore", ["--pitr", "--pgdata", pgdata, "--target-time", "2024-13-45 99:00:00"], usage, "--target-time"),
            ("dbrestore", ["--pitr", "--pgdata", pgdata, "--target-lsn", "zz/zz"], usage, "--target-lsn"),
            ("dbrestore", ["--pitr", "--pgdata", pgdata, "--target", "now"], usage, "'latest'"),
            ("dbrestore", ["--pitr", "--pgdata", pgdata, "--target", "latest", "--port", "70000"], usage, "--port"),
            ("dbrestore", ["--pitr", "--pgdata", pgdata, "--target", "latest", "--target-name", "x"], usage, "exactly one"),
            ("dbrestore", ["latest", "--port", "5432"], usage, "--port goes with --pitr"),
            ("dbverify", ["all"], usage, "--files"),
            ("dbverify", ["--files", "nope"], ExitStatus.backupNotFound.rawValue, "no backup 'nope'"),
            ("dbprune", ["--policy", "/nonexistent/policy.toml"], ExitStatus.configuration.rawValue, "cannot be read"),
            ("dbprune", ["--as-of", "tomorrow"], usage, "--as-of"),
            ("dbmigrate", ["down", "--steps", "-1"], usage, "--steps"),
            ("dbmigrate", ["down", "--steps", "0"], usage, "--steps"),
            ("dbmigrate", ["down", "--to", "-5"], usage, "--to"),
            ("dbmigrate", ["down", "--to", "1", "--steps", "1"], usage, "exactly one"),
            ("dbmigrate", ["up", "--lock-wait", "-1"], usage, "--lock-wait"),
            ("dbmigrate", ["up", "--to", "999"], ExitStatus.migrationRefused.rawValue, "version 999"),
            ("dbmigrate", ["resolve", "1"], usage, "--mark-applied"),
            ("dbmigrate", ["status", "--dir", "/nonexistent/migrations"], ExitStatus.configuration.rawValue, "cannot be read"),
        ]
        let listing = { (FileManager.default.enumerator(atPath: repository)?.allObjects as? [String] ?? []).filter { !$0.hasPrefix("locks") }.sorted() }
        let repositoryBefore = listing()
        for item in cases {
            var arguments = item.arguments
            let pointsElsewhere = arguments.contains("--repo") || arguments.contains("--database-url")
            if !pointsElsewhere && item.tool != "dbmigrate" && !(item.tool == "dbbackup" && arguments == ["--no-such-flag"]) {
                arguments += ["--repo", repository]
            }
            if item.tool != "dbprune" && item.tool != "dbverify" || (item.tool == "dbverify" && !arguments.contains("--files")) {
                if !arguments.contains("--database-url") { arguments += ["--database-url", url] }
            }
            if item.tool == "dbmigrate" && !arguments.contains("--dir") { arguments += ["--dir", migrations] }
            if item.tool == "dbbackup" && arguments.contains("--database-url") && !arguments.contains("--repo") { arguments += ["--repo", repository] }
            let result = try TestProcess.tool(item.tool, arguments, cluster: cluster)
            let label = "\(item.tool) \(item.arguments.joined(separator: " "))"
            XCTAssertEqual(result.status, item.code, "\(label): \(result.standardError)")
            XCTAssertTrue(result.standardError.contains(item.says), "\(label) should mention '\(item.says)': \(result.standardError)")
            let lines = result.standardError.split(separator: "\n")
            XCTAssertLessThanOrEqual(lines.count, 2, "\(label): one line and a hint, got: \(result.standardError)")
            XCTAssertTrue(lines.first?.hasPrefix("\(item.tool): error: ") ?? false, "\(label): \(result.standardError)")
        }
        XCTAssertEqual(listing(), repositoryBefore, "bad input must leave the repository as it was")
        XCTAssertEqual(try cluster.rowCounts(database: database), ["public.t": 2])
        XCTAssertNil(try cluster.scalar("SELECT to_regclass('schema_version')::text", database: database), "no migration bookkeeping was created")
        XCTAssertFalse(FileManager.default.fileExists(atPath: pgdata))

        // Valid but awkward values work: a repository path with spaces and non-ASCII letters.
        let awkward = TestPaths.temporaryDirectory(prefix: "repo") + "/with space/ünïcødé répo"
        let backup = try TestProcess.tool("dbbackup", ["--database-url", url, "--repo", awkward], cluster: cluster)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        XCTAssertEqual(try TestProcess.tool("dbverify", ["--files", "latest", "--repo", "file://" + awkward.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed)!]).status, 0)
    }
}
