import BackupStorage
import Foundation
@testable import RecoveryKit
import XCTest

/// "The newest backup" of one database in a repository several databases share, without a server:
/// `Catalog.resolve(_:namedDatabase:)` for the commands with no target database, the row-count
/// comparison's table keys, and the metrics file several runs share.
final class DatabaseChoiceTests: XCTestCase {
    private var root: String!

    override func setUpWithError() throws {
        root = NSTemporaryDirectory() + "database-choice-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        addTeardownBlock { [root] in try? FileManager.default.removeItem(atPath: root ?? "") }
    }

    private func add(_ id: String, database: String, kind: BackupManifest.Kind = .logical, to store: LocalStore) throws {
        var manifest = BackupManifestTests.sample(id: id)
        manifest.database.name = database
        manifest.kind = kind
        try store.write("backups/\(id)/manifest.json", contents: try manifest.encoded())
    }

    /// billing's backup, then app's, then a base backup (the newest of all): `latest` with no
    /// database named is refused, naming both; with one named, that database's newest; in a
    /// repository of one database (and base backups), that database's newest, never the base backup.
    func testLatestWithoutADatabaseIsTheOnlyDatabasesNewestOrRefused() throws {
        let store = try LocalStore(root: root + "/repo", create: true)
        try add("20261101T020000Z-0001", database: "billing", to: store)
        try add("20261102T020000Z-0002", database: "app", to: store)
        try add("20261103T020000Z-0003", database: "app", kind: .physical, to: store)
        let catalog = Catalog(store: store)
        XCTAssertThrowsError(try catalog.resolve("latest", namedDatabase: nil)) { error in
            let error = error as? RecoveryError
            XCTAssertEqual(error?.code, .usage)
            XCTAssertTrue(error?.message.contains("holds logical backups of 2 databases (app, billing): 'latest' does not say whose") ?? false,
                          error?.message ?? "")
            XCTAssertTrue(error?.hint?.hasPrefix("name the database: --from-database app (or billing)") ?? false, error?.hint ?? "")
        }
        XCTAssertEqual(try catalog.resolve("latest", namedDatabase: "billing").id, "20261101T020000Z-0001")
        XCTAssertEqual(try catalog.resolve("20261102", namedDatabase: nil).id, "20261102T020000Z-0002", "an id names its backup")

        let single = try LocalStore(root: root + "/single", create: true)
        try add("20261101T020000Z-0001", database: "billing", to: single)
        try add("20261103T020000Z-0003", database: "billing", kind: .physical, to: single)
        XCTAssertEqual(try Catalog(store: single).resolve("latest", namedDatabase: nil).id, "20261101T020000Z-0001")
    }

    /// `"a.b"."c"` and `"a"."b.c"` both read `a.b.c`: keyed by that text, the first table's 5 rows
    /// stood for the second's, and a second table that lost rows compared equal.
    func testRowCountsKeyTablesBySchemaAndName() {
        let expected: [BackupManifest.TableRowCount] = [.init(schema: "a.b", name: "c", rows: 5), .init(schema: "a", name: "b.c", rows: 7)]
        let actual: [BackupManifest.TableRowCount] = [.init(schema: "a.b", name: "c", rows: 5), .init(schema: "a", name: "b.c", rows: 9)]
        let report = RowCountVerifier.compare(expected: expected, actual: actual, backupID: "b", database: "app")
        XCTAssertFalse(report.ok)
        XCTAssertEqual(report.tables.map(\.table), [#"a."b.c""#, #""a.b".c"#])
        XCTAssertEqual(report.summary, #"a."b.c": expected 7, found 9"#)
        XCTAssertTrue(RowCountVerifier.compare(expected: expected, actual: expected, backupID: "b", database: "app").ok)
        let missing = RowCountVerifier.compare(expected: expected, actual: [actual[0]], backupID: "b", database: "app")
        XCTAssertEqual(missing.summary, #"a."b.c" is missing"#)
    }

    /// A kept value is read back from the file and written again on every failed run: its text must not
    /// change (a success at …936.0004 s was written `…936.000`, then kept as `…936`, and an alert on
    /// `changes()` of the last success time fired on a failure).
    func testAMetricsValueReadBackIsWrittenAsItWas() {
        for value in [1_795_785_936.0004, 1_795_785_936.9996, 1_795_785_936.5, 1_795_785_936, 0.0004, 12.25, -3] {
            let written = RunReporter.number(value)
            XCTAssertEqual(RunReporter.number(Double(written) ?? .nan), written, "\(value) was written \(written)")
        }
        XCTAssertEqual(RunReporter.number(1_795_785_936.0004), "1795785936")
        XCTAssertEqual(RunReporter.number(1_795_785_936.9996), "1795785937")
        XCTAssertEqual(RunReporter.number(12.25), "12.250")
    }

    /// Label values are escaped as the text format says: a newline is `\n`, not a space (which merged
    /// the series of a database named "nl" LF "x" with those of "nl x").
    func testALabelValueKeepsItsNewlineApartFromASpace() {
        XCTAssertEqual(RunReporter.escape("nl\nx"), #"nl\nx"#)
        XCTAssertNotEqual(RunReporter.escape("nl\nx"), RunReporter.escape("nl x"))
        XCTAssertEqual(RunReporter.escape(#"we"ird\"#), #"we\"ird\\"#)
    }

    /// Two databases' runs and two repositories' prunes write one metrics file: each replaces only its
    /// own series; a failed run keeps its own last success time, never another database's.
    func testRunsSharingAMetricsFileReplaceOnlyTheirOwnSeries() throws {
        let path = root + "/dbrecovery.prom"
        RunReporter(tool: "dbbackup", metricsFile: path, notifyURL: nil, notifyOnSuccess: false, labels: ["kind": "logical", "database": "billing"])
            .succeeded(["backup_rows": 2], summary: "")
        let billingSuccess = MetricsText(try String(contentsOfFile: path, encoding: .utf8))
            .value(of: "dbrecovery_last_success_timestamp_seconds", labels: #"database="billing",kind="logical",tool="dbbackup""#)
        XCTAssertNotNil(billingSuccess)
        usleep(1_100_000)   // app's success a second later: a "last success" taken from it would show
        RunReporter(tool: "dbbackup", metricsFile: path, notifyURL: nil, notifyOnSuccess: false, labels: ["kind": "logical", "database": "app"])
            .succeeded(["backup_rows": 3], summary: "")
        // What an older release's prune wrote (no repository label): replaced by this run's, not left to alert for ever.
        var older = MetricsText(try String(contentsOfFile: path, encoding: .utf8))
        older.add("dbrecovery_prune_kept", help: "Backups kept by the last prune.", labels: #"tool="dbprune""#, value: "99")
        try older.text.write(toFile: path, atomically: true, encoding: .utf8)
        RunReporter(tool: "dbprune", metricsFile: path, notifyURL: nil, notifyOnSuccess: false, labels: ["repository": "/srv/app"])
            .succeeded(["prune_kept": 4], summary: "")
        RunReporter(tool: "dbprune", metricsFile: path, notifyURL: nil, notifyOnSuccess: false, labels: ["repository": "/srv/billing"])
            .succeeded(["prune_kept": 5], summary: "")
        RunReporter(tool: "dbbackup", metricsFile: path, notifyURL: nil, notifyOnSuccess: false, labels: ["kind": "logical", "database": "billing"])
            .failed(RecoveryError(.databaseUnavailable, "down"))

        let text = try String(contentsOfFile: path, encoding: .utf8)
        let file = MetricsText(text)
        let billing = #"database="billing",kind="logical",tool="dbbackup""#, app = #"database="app",kind="logical",tool="dbbackup""#
        XCTAssertEqual(file.value(of: "dbrecovery_last_run_success", labels: billing), 0, text)
        XCTAssertEqual(file.value(of: "dbrecovery_last_exit_code", labels: billing), 10, text)
        XCTAssertEqual(file.value(of: "dbrecovery_last_success_timestamp_seconds", labels: billing), billingSuccess, text)
        XCTAssertNil(file.value(of: "dbrecovery_backup_rows", labels: billing), "a failed run reports no numbers of its own:\n\(text)")
        XCTAssertEqual(file.value(of: "dbrecovery_last_run_success", labels: app), 1, text)
        XCTAssertEqual(file.value(of: "dbrecovery_backup_rows", labels: app), 3, text)
        XCTAssertGreaterThan(file.value(of: "dbrecovery_last_success_timestamp_seconds", labels: app) ?? 0, billingSuccess ?? .infinity)
        XCTAssertEqual(file.value(of: "dbrecovery_prune_kept", labels: #"repository="/srv/app",tool="dbprune""#), 4, text)
        XCTAssertEqual(file.value(of: "dbrecovery_prune_kept", labels: #"repository="/srv/billing",tool="dbprune""#), 5, text)
        XCTAssertNil(file.value(of: "dbrecovery_prune_kept", labels: #"tool="dbprune""#), text)
        // One HELP and TYPE per family, its samples together (the text format's rule).
        let lines = text.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.filter { $0.hasPrefix("# TYPE dbrecovery_last_run_success ") }.count, 1, text)
        XCTAssertEqual(MetricsText(file.text).text, file.text, "reading and writing the file changes nothing")
    }
}
