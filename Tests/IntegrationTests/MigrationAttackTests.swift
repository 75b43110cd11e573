import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// `dbmigrate` attacked the way operators meet it: their own `schema_version` tables, migration files
/// from other tools, clocks and time zones that are not dbmigrate's. psql running the same files is the yardstick.
final class MigrationAttackTests: XCTestCase {
    var cluster: PostgresCluster!
    var database: String!
    var migrations: String!

    static let runbookQuery = "SELECT version FROM schema_version ORDER BY applied_at DESC LIMIT 1"

    override func setUpWithError() throws {
        cluster = try PostgresCluster.shared()
        database = try cluster.createDatabase(prefix: "attack")
        migrations = TestPaths.temporaryDirectory(prefix: "migrations")
    }

    private func write(_ files: [String: String]) throws {
        for (name, sql) in files { try sql.write(toFile: migrations + "/" + name, atomically: true, encoding: .utf8) }
    }

    /// `000N_tN.up.sql` creating table tN, and its down file, for each version.
    private func writeTables(_ versions: ClosedRange<Int>) throws {
        for version in versions {
            try write(["000\(version)_t\(version).up.sql": "CREATE TABLE t\(version) (x int);",
                       "000\(version)_t\(version).down.sql": "DROP TABLE t\(version);"])
        }
    }

    private func migrate(_ arguments: [String]) throws -> TestProcess.Result {
        try TestProcess.tool("dbmigrate", arguments + ["--database-url", cluster.url(database: database), "--dir", migrations],
                             cluster: cluster)
    }

    private func runbook() throws -> String? { try cluster.scalar(Self.runbookQuery, database: database) }

    /// An application that writes UTC into `timestamp without time zone` (as Rails does) on a server
    /// whose TimeZone is local: its rows are hours ahead of dbmigrate's session clock. New rows must
    /// still sort last, or the runbook query and `down --steps 1` pick an older version.
    func testRowsWrittenInUTCOnALocalTimeServerStillLeaveTheNewestVersionLast() throws {
        try writeTables(1...5)
        try cluster.connect(database: database).execute(script: """
            ALTER DATABASE \(database!) SET timezone = 'America/New_York';
            CREATE TABLE t1 (x int); CREATE TABLE t2 (x int); CREATE TABLE t3 (x int);
            CREATE TABLE schema_version (version bigint PRIMARY KEY, applied_at timestamp without time zone NOT NULL);
            INSERT INTO schema_version VALUES (1, (now() AT TIME ZONE 'UTC') - interval '3 hours'),
                (2, (now() AT TIME ZONE 'UTC') - interval '2 hours'), (3, (now() AT TIME ZONE 'UTC') - interval '1 hour');
            """)
        let up = try migrate(["up"])
        XCTAssertEqual(up.status, 0, up.standardError)
        XCTAssertEqual(try runbook(), "5")

        let plan = try migrate(["down", "--steps", "1", "--no-backup", "--dry-run"])
        XCTAssertEqual(plan.status, 0, plan.standardError)
        XCTAssertTrue(plan.standardOutput.contains("downgrade from version 5 to 4"), plan.standardOutput)
        XCTAssertTrue(plan.standardOutput.contains("down 5 t5"), plan.standardOutput)
        let down = try migrate(["down", "--steps", "1", "--no-backup", "--yes"])
        XCTAssertEqual(down.status, 0, down.standardError)
        XCTAssertEqual(try runbook(), "4")
        XCTAssertNil(try cluster.scalar("SELECT to_regclass('t5')::text", database: database))
        XCTAssertEqual(try cluster.scalar("SELECT to_regclass('t3')::text", database: database), "t3")

        let again = try migrate(["up"])
        XCTAssertEqual(again.status, 0, again.standardError)
        XCTAssertEqual(try runbook(), "5")
    }

    /// A column that keeps whole seconds: versions applied in the same second must not tie.
    func testAWholeSecondAppliedAtColumnStillOrdersVersionsAppliedInOneSecond() throws {
        try writeTables(1...5)
        try cluster.connect(database: database).execute(script: """
            CREATE TABLE t1 (x int);
            CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at timestamp(0) with time zone NOT NULL DEFAULT now());
            INSERT INTO schema_version (version) VALUES (1);
            """)
        let up = try migrate(["up"])
        XCTAssertEqual(up.status, 0, up.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT count(DISTINCT applied_at) FROM schema_version", database: database), "5")
        XCTAssertEqual(try runbook(), "5")
    }
}
