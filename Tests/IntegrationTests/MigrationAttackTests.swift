import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// `dbmigrate` attacked the way operators meet it: their own `schema_version` tables, migration files
/// from other tools, clocks and time zones that are not dbmigrate's. psql running the same files is the yardstick.
final class MigrationAttackTests: IntegrationTestCase {

    static let runbookQuery = "SELECT version FROM schema_version ORDER BY applied_at DESC LIMIT 1"

    override func setUpWithError() throws {
        try useDatabase(prefix: "attack")
        try useMigrations()
    }

    /// `000N_tN.up.sql` creating table tN, and its down file, for each version.
    private func writeTables(_ versions: ClosedRange<Int>) throws {
        for version in versions {
            try writeMigrations(["000\(version)_t\(version).up.sql": "CREATE TABLE t\(version) (x int);",
                       "000\(version)_t\(version).down.sql": "DROP TABLE t\(version);"])
        }
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

    /// Files that `SET ROLE` so their objects belong to the application (and set a search_path): as with
    /// psql running each file, the next file starts as the role that connected, and dbmigrate's own
    /// records are written as that role, not refused as the migration's role.
    func testAStepThatSetsARoleOrSearchPathEndsItWithTheStep() throws {
        let role = "owner_\(database!)"
        try cluster.connect(database: database).execute(script: """
            CREATE ROLE \(role) NOLOGIN; GRANT CREATE ON SCHEMA public TO \(role); CREATE SCHEMA elsewhere;
            """)
        addTeardownBlock { [cluster, database] in _ = try? cluster?.connect(database: database ?? "postgres").execute(script: "DROP OWNED BY \(role) CASCADE; DROP ROLE IF EXISTS \(role)") }
        try writeMigrations([
            "0001_owned.up.sql": "SET ROLE \(role);\nSET search_path = elsewhere, public;\nCREATE TABLE owned (x int);\n",
            "0001_owned.down.sql": "DROP TABLE owned;",
            "0002_mine.up.sql": "CREATE TABLE mine (x int);\nSET SESSION AUTHORIZATION \(role);",
            "0002_mine.down.sql": "DROP TABLE mine;",
        ])
        for arguments in [["up"], ["up", "--per-step"]] {
            let up = try migrate(arguments)
            XCTAssertEqual(up.status, 0, "\(arguments): \(up.standardError)")
            XCTAssertEqual(try cluster.scalar("SELECT tableowner || ':' || schemaname FROM pg_tables WHERE tablename = 'owned'", database: database), "\(role):public")
            XCTAssertEqual(try cluster.scalar("SELECT tableowner || ':' || schemaname FROM pg_tables WHERE tablename = 'mine'", database: database), "postgres:public")
            XCTAssertEqual(try runbook(), "2")
            let down = try migrate(["down", "--to", "0", "--no-backup", "--yes"])
            XCTAssertEqual(down.status, 0, "\(arguments): \(down.standardError)")
            XCTAssertNil(try cluster.scalar("SELECT tablename FROM pg_tables WHERE tablename IN ('owned', 'mine') LIMIT 1", database: database))
        }
    }

    /// A role that may run the migrations' SQL elsewhere but not keep dbmigrate's records: the dry run
    /// and the real run refuse alike, before anything runs, naming the grants; a role that cannot read
    /// the records is told the grant instead of a bare "permission denied".
    func testARoleThatCannotRecordIsRefusedByTheDryRunAndTheRealRunNamingTheGrants() throws {
        let role = "weak_\(UUID().uuidString.prefix(8).lowercased())"
        let admin = try cluster.connect(database: database)
        try admin.execute(script: "CREATE ROLE \(role) LOGIN PASSWORD '\(cluster.password)'")
        addTeardownBlock { [cluster, database] in
            _ = try? cluster?.connect(database: database ?? "postgres").execute(script: "DROP OWNED BY \(role)")
            _ = try? cluster?.connect().execute(script: "DROP ROLE IF EXISTS \(role)")
        }
        let url = cluster.url(database: database).replacingOccurrences(of: "postgres@", with: "\(role)@")
        func weak(_ arguments: [String]) throws -> TestProcess.Result {
            try TestProcess.tool("dbmigrate", arguments + ["--database-url", url, "--dir", migrations], cluster: cluster)
        }
        try writeTables(1...2)
        for arguments in [["up", "--dry-run"], ["up"]] {
            let refused = try weak(arguments)
            XCTAssertEqual(refused.status, ExitStatus.migrationRefused.rawValue, "\(arguments): \(refused.standardError)")
            XCTAssertTrue(refused.standardError.contains("GRANT CREATE ON SCHEMA public TO \(role)"), refused.standardError)
        }
        XCTAssertNil(try cluster.scalar("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace LIMIT 1", database: database))

        XCTAssertEqual(try migrate(["up", "--to", "1"]).status, 0)
        let unreadable = try weak(["status"])
        XCTAssertEqual(unreadable.status, ExitStatus.databaseError.rawValue, unreadable.standardError)
        XCTAssertTrue(unreadable.standardError.contains("GRANT SELECT ON public.schema_version, public.dbmigrate_versions, public.schema_version_log TO \(role)"),
                      unreadable.standardError)
        try admin.execute(script: "GRANT SELECT ON schema_version, dbmigrate_versions, schema_version_log TO \(role)")
        XCTAssertEqual(try weak(["status"]).status, 0)
        for arguments in [["up", "--dry-run"], ["up"]] {
            let refused = try weak(arguments)
            XCTAssertEqual(refused.status, ExitStatus.migrationRefused.rawValue, "\(arguments): \(refused.standardError)")
            XCTAssertTrue(refused.standardError.contains("GRANT SELECT, INSERT ON public.schema_version TO \(role)"), refused.standardError)
            XCTAssertTrue(refused.standardError.contains("GRANT USAGE ON SEQUENCE public.schema_version_log_id_seq TO \(role)"), refused.standardError)
        }
        let down = try weak(["down", "--to", "0", "--no-backup", "--dry-run"])
        XCTAssertEqual(down.status, ExitStatus.migrationRefused.rawValue, down.standardError)
        XCTAssertTrue(down.standardError.contains("GRANT SELECT, DELETE ON public.schema_version TO \(role)"), down.standardError)
        XCTAssertEqual(try runbook(), "1")
        XCTAssertNil(try cluster.scalar("SELECT to_regclass('t2')::text", database: database))
    }

    /// A checkout that only changed line endings or added a byte-order mark (git autocrlf, a Windows
    /// editor) is not an edit: psql runs the file the same. A real edit still is.
    func testLineEndingsAndAByteOrderMarkAreNotAnEditButAChangeIsOne() throws {
        try writeTables(1...3)
        let crlf = "-- users\r\nCREATE TABLE users (\r\n  id int -- key; kept\r\n);\r\n"
        try writeMigrations(["0002_t2.up.sql": crlf])
        XCTAssertEqual(try migrate(["up", "--to", "2"]).status, 0)

        try writeMigrations(["0001_t1.up.sql": "\u{FEFF}CREATE TABLE t1 (x int);", "0002_t2.up.sql": crlf.replacingOccurrences(of: "\r\n", with: "\n")])
        let verify = try migrate(["verify"])
        XCTAssertEqual(verify.status, 0, verify.standardOutput + verify.standardError)
        let up = try migrate(["up"])
        XCTAssertEqual(up.status, 0, up.standardError)
        XCTAssertEqual(try runbook(), "3")

        // A record an earlier dbmigrate made from the bytes of a CRLF file still matches that file.
        var digest = StreamingDigest()
        Data(crlf.utf8).withUnsafeBytes { digest.update($0) }
        try writeMigrations(["0002_t2.up.sql": crlf])
        try cluster.connect(database: database).execute(script: "UPDATE dbmigrate_versions SET up_sha256 = '\(digest.hexDigest())' WHERE version = 2")
        XCTAssertEqual(try migrate(["verify"]).status, 0)

        try writeMigrations(["0002_t2.up.sql": crlf.replacingOccurrences(of: "id int", with: "id bigint")])
        let edited = try migrate(["up"])
        XCTAssertEqual(edited.status, ExitStatus.migrationRefused.rawValue, edited.standardError)
        XCTAssertTrue(edited.standardError.contains("0002_t2.up.sql was edited after it was applied"), edited.standardError)
    }

    /// psql commits each statement of `ALTER TYPE … ADD VALUE` before a later file uses the value; in
    /// the plan's one transaction the server refuses the use. The failure says how to run it instead.
    /// Reproduction: a database with `standard_conforming_strings = off` and a migration that psql
    /// applies (`'x\\'; y'` is one string there); dbmigrate split it at the `;` and failed (exit 40).
    func testAMigrationIsSplitByTheServersStandardConformingStrings() throws {
        try cluster.connect().execute(script: "ALTER DATABASE \(database!) SET standard_conforming_strings = off")
        try writeMigrations(["0001_t.up.sql": "CREATE TABLE t (v text);\nINSERT INTO t SELECT 'x\\'; y';\n"])
        let up = try migrate(["up"])
        XCTAssertEqual(up.status, 0, up.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT v FROM t", database: database), "x'; y")
    }

    /// psql runs `COPY … FROM STDIN` with its rows in the file itself (seed data cut from a pg_dump);
    /// dbmigrate refused such a file. Now both leave the same rows, and a row the server refuses
    /// rolls the plan back naming the COPY.
    func testACopyFromStdinReadsItsRowsFromTheFileAsPsqlDoes() throws {
        let seed = "CREATE TABLE seed (id int PRIMARY KEY, note text, raw bytea);\n"
            + "COPY seed (id, note, raw) FROM stdin;\n"
            + "1\thello; world\t\\\\x00ff\n2\tit's $$ not; sql\t\\N\n3\t\\\\. a backslash and a dot\t\\\\x\n4\t\\N\t\\N\n\\.\n"
            + "INSERT INTO seed VALUES (5, 'after the rows', NULL);\n"
            + "COPY seed (id, note) FROM STDIN WITH (FORMAT csv); UPDATE seed SET note = note || '!' WHERE id = 6;\n"
            + "6,\"quoted, \"\"csv\"\"\"\n\\.\n"
        try writeMigrations(["0001_seed.up.sql": seed, "0001_seed.down.sql": "DROP TABLE seed;"])
        let applied = try migrate(["up"])
        XCTAssertEqual(applied.status, 0, applied.standardError)

        let reference = try cluster.createDatabase(prefix: "psql")
        let file = migrations + "/0001_seed.up.sql"
        let psql = try TestProcess.run(try PostgresTools().path(of: "psql"), ["-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-f", file, "-d", cluster.url(database: reference)],
                                       environment: cluster.environment)
        XCTAssertEqual(psql.status, 0, psql.standardError)
        let rows = "SELECT string_agg(format('%s|%s|%s', id, note, encode(raw, 'hex')), E'\\n' ORDER BY id) FROM seed"
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM seed", database: database), "6")
        XCTAssertEqual(try cluster.scalar(rows, database: database), try cluster.scalar(rows, database: reference))

        try writeMigrations(["0002_bad.up.sql": "CREATE TABLE later (x int);\nCOPY seed (id) FROM stdin;\n7\nseven\n\\.\n",
                             "0002_bad.down.sql": "DROP TABLE later;"])
        try migrate(["up"], fails: .migrationFailed, saying: ["failed at statement 2 `COPY seed (id) FROM stdin` (0002_bad.up.sql line 2)",
                                                             "invalid input syntax for type integer"])
        XCTAssertNil(try cluster.scalar("SELECT to_regclass('later')::text", database: database), "the plan was rolled back")
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM seed", database: database), "6")
    }

    func testAnEnumValueAddedAndUsedInOnePlanPointsToPerStep() throws {
        try writeMigrations([
            "0001_color.up.sql": "CREATE TYPE color AS ENUM ('red');",
            "0002_blue.up.sql": "ALTER TYPE color ADD VALUE 'blue';",
            "0003_paint.up.sql": "CREATE TABLE paint (c color DEFAULT 'blue');",
        ])
        let failed = try migrate(["up"])
        XCTAssertEqual(failed.status, ExitStatus.migrationFailed.rawValue, failed.standardError)
        XCTAssertTrue(failed.standardError.contains("the whole plan was rolled back; the database is unchanged; a new enum value cannot be used in the transaction that added it"),
                      failed.standardError)
        XCTAssertTrue(failed.standardError.contains("run with --per-step"), failed.standardError)
        XCTAssertNil(try cluster.scalar("SELECT to_regtype('color')::text", database: database))
        let perStep = try migrate(["up", "--per-step"])
        XCTAssertEqual(perStep.status, 0, perStep.standardError)
        XCTAssertEqual(try runbook(), "3")

        // With --per-step, a failing step's own advice survives next to what stays applied.
        try writeMigrations(["0004_fine.up.sql": "CREATE TABLE fine (x int);", "0005_commits.up.sql": "DO $$ BEGIN PERFORM 1; COMMIT; END $$;",
                   "0006_later.up.sql": "CREATE TABLE later (x int);"])
        let commits = try migrate(["up", "--per-step"])
        XCTAssertEqual(commits.status, ExitStatus.migrationFailed.rawValue, commits.standardError)
        XCTAssertTrue(commits.standardError.contains("invalid transaction termination (SQLSTATE 2D000)"), commits.standardError)
        XCTAssertTrue(commits.standardError.contains("version(s) 4 were applied in transactions of their own (--per-step) and stay applied; the failing step was rolled back; fix it and run again (dbmigrate status shows where it stands); this statement must run outside a transaction: move it to a file whose first line is -- dbmigrate:no-transaction"),
                      commits.standardError)
        XCTAssertEqual(try runbook(), "4")
    }

    /// The dry run prints the full SQL (often into CI logs): a password in a migration is masked there,
    /// in text and in --json, as it is in errors.
    func testTheDryRunNeverPrintsAPasswordFromAMigration() throws {
        let role = "login_\(UUID().uuidString.prefix(8).lowercased())"
        try writeMigrations(["0001_role.up.sql": "CREATE ROLE \(role) LOGIN PASSWORD 'hunter2-secret';\nALTER ROLE \(role) WITH ENCRYPTED PASSWORD $p$other-secret$p$;\n"])
        addTeardownBlock { [cluster] in _ = try? cluster?.connect().execute(script: "DROP ROLE IF EXISTS \(role)") }
        for arguments in [["up", "--dry-run"], ["up", "--dry-run", "--json"]] {
            let dryRun = try migrate(arguments)
            XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
            XCTAssertTrue(dryRun.standardOutput.contains("CREATE ROLE \(role) LOGIN PASSWORD '…'"), dryRun.standardOutput)
            XCTAssertFalse(dryRun.standardOutput.contains("secret"), dryRun.standardOutput)
        }
        let up = try migrate(["up"])
        XCTAssertEqual(up.status, 0, up.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM pg_roles WHERE rolname = '\(role)'", database: database), "1")
    }

    /// SIGTERM during a --per-step run: the step that was running is rolled back, and the one-line
    /// summary says which versions committed before it instead of "nothing applied"; a no-transaction
    /// step cut short says it is left mid-flight and how to resolve it.
    func testASignalDuringAPerStepRunSaysWhatStayedApplied() throws {
        try writeMigrations(["0001_fast.up.sql": "CREATE TABLE fast (x int);", "0002_slow.up.sql": "CREATE TABLE slow (x int);\nSELECT pg_sleep(30);"])
        let perStep = try interrupt(["up", "--per-step"])
        XCTAssertTrue(perStep.contains("rolled back the step that was running (version(s) 2)"), perStep)
        XCTAssertTrue(perStep.contains("kept version(s) 1 applied before the signal"), perStep)
        XCTAssertFalse(perStep.contains("nothing applied"), perStep)
        XCTAssertEqual(try runbook(), "1")
        XCTAssertNil(try cluster.scalar("SELECT to_regclass('slow')::text", database: database))

        try writeMigrations(["0002_slow.up.sql": "-- dbmigrate:no-transaction\nCREATE TABLE slow (x int);\nSELECT pg_sleep(30);"])
        let midFlight = try interrupt(["up", "--per-step"])
        XCTAssertTrue(midFlight.contains("kept version 2 marked applying"), midFlight)
        XCTAssertTrue(midFlight.contains("dbmigrate resolve 2 --mark-applied or --mark-reverted"), midFlight)
        let status = try migrate(["status"])
        XCTAssertTrue(status.standardOutput.split(separator: "\n").contains { $0.hasPrefix("2 ") && $0.contains("applying") }, status.standardOutput)
    }

    /// Starts dbmigrate, sends SIGTERM once its `pg_sleep(30)` runs, and returns its stderr after checking it exited 130.
    private func interrupt(_ arguments: [String]) throws -> String {
        let process = try TestProcess.start("dbmigrate", arguments + ["--database-url", cluster.url(database: database), "--dir", migrations],
                                            cluster: cluster)
        let errors = OutputCollector(descriptor: process.standardError, limit: 64 * 1024)
        var ready = false
        for _ in 0..<200 where !ready {
            usleep(100_000)
            ready = try cluster.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = '\(database!)' AND query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()",
                                       database: "postgres") == "1"
        }
        XCTAssertTrue(ready, "the run reached the slow step")
        process.send(SIGTERM)
        let termination = process.waitForExit()
        let stderr = errors.finish()
        XCTAssertEqual(termination.exitCode, ExitStatus.interrupted.rawValue, stderr)
        return stderr
    }
}
