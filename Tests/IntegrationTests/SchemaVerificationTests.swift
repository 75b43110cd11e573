import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// Schema verification against a real PostgreSQL cluster: the fingerprint recorded by `dbbackup`,
/// checked by `dbrestore` (normal, `--drill`, `--emergency`) before the swap and by `dbverify --schema`.
final class SchemaVerificationTests: IntegrationTestCase {
    var role: String!

    override func setUpWithError() throws {
        try useCluster()
        useLocalRepository()
        role = "fp_role_\(UInt32.random(in: 0...UInt32.max))"
        try cluster.connect().execute(script: "CREATE ROLE \(role!) NOLOGIN")
        // A schema with many kinds of object, including text that looks like comments and blank lines.
        try useDatabase(prefix: "schema", seed: """
            CREATE SCHEMA billing AUTHORIZATION \(role!);
            CREATE TYPE mood AS ENUM ('sad', 'ok');
            ALTER TYPE mood ADD VALUE 'happy';
            CREATE DOMAIN email_address AS text CHECK (VALUE LIKE '%@%');
            CREATE TABLE users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email email_address NOT NULL, mood mood,
                                name text, lname text GENERATED ALWAYS AS (lower(name)) STORED);
            CREATE INDEX users_email ON users (email);
            CREATE UNIQUE INDEX users_lname ON users (lname) WHERE lname IS NOT NULL;
            CREATE TABLE billing.invoices (id serial PRIMARY KEY, user_id bigint REFERENCES users DEFERRABLE INITIALLY DEFERRED,
                                           amount numeric CHECK (amount >= 0), at timestamptz DEFAULT now());
            ALTER TABLE billing.invoices OWNER TO \(role!);
            CREATE TABLE events (id int, at date NOT NULL) PARTITION BY RANGE (at);
            CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
            CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
            CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $_$
            BEGIN

              -- semicolons; and $$ inside
              NEW.name := coalesce(NEW.name, 'x;y');
              RETURN NEW;
            END $_$;
            CREATE TRIGGER users_touch BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION touch();
            CREATE VIEW user_moods AS SELECT mood, count(*) FROM users GROUP BY mood;
            CREATE MATERIALIZED VIEW invoice_totals AS SELECT user_id, sum(amount) FROM billing.invoices GROUP BY user_id;
            CREATE RULE users_log AS ON DELETE TO users DO ALSO INSERT INTO events VALUES (OLD.id::int, '2024-06-01');
            ALTER TABLE billing.invoices ENABLE ROW LEVEL SECURITY;
            ALTER TABLE billing.invoices FORCE ROW LEVEL SECURITY;
            CREATE POLICY own ON billing.invoices USING (user_id > 0);
            COMMENT ON TABLE users IS 'people; with ''quotes''

            -- and a comment-looking line';
            COMMENT ON VIEW user_moods IS 'Zoë''s moods, ünïcode';
            GRANT SELECT ON users TO \(role!);
            ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO \(role!);
            INSERT INTO users (email, mood, name) SELECT 'u' || g || '@x', 'ok', 'N' || g FROM generate_series(1, 200) g;
            INSERT INTO billing.invoices (user_id, amount) SELECT 1 + g % 200, g FROM generate_series(1, 400) g;
            INSERT INTO events VALUES (1, '2024-02-02'), (2, '2025-03-03');
            REFRESH MATERIALIZED VIEW invoice_totals;
            """)
    }

    private func fingerprint(of name: String) throws -> SchemaFingerprint {
        let connection = try cluster.connect(database: name)
        defer { connection.close() }
        return try SchemaVerifier.fingerprint(pgDump: try PostgresTools().path(of: "pg_dump"), target: connection.target)
    }

    func testTheFingerprintEqualsAPsqlReplaysAndARestorePassesIt() throws {
        let id = try backup()
        guard let recorded = try manifest(id).schemaFingerprint else { return XCTFail("the manifest has no schema fingerprint") }
        let kinds = Set(recorded.objects.map(\.type))
        for kind in ["TABLE", "INDEX", "FUNCTION", "TRIGGER", "VIEW", "MATERIALIZED VIEW", "RULE", "POLICY", "COMMENT", "ACL", "DEFAULT ACL",
                     "TYPE", "DOMAIN", "SCHEMA", "FK CONSTRAINT", "TABLE ATTACH", "SEQUENCE"] {
            XCTAssertTrue(kinds.contains(kind), "no \(kind) in \(kinds.sorted())")
        }
        XCTAssertEqual(recorded, try fingerprint(of: database), "the snapshot's schema is the live one when nothing changed")

        // The yardstick: a psql replay of the same dump has the same fingerprint.
        let replay = try cluster.createDatabase(prefix: "replay")
        let dump = "\(repository!)/backups/\(id)/dump.sql.gz"
        let psql = try TestProcess.shell("gunzip -c '\(dump)' | psql -v ON_ERROR_STOP=1 -q -X '\(cluster.url(database: replay))'",
                                         environment: cluster.environment)
        XCTAssertEqual(psql.status, 0, psql.standardError)
        XCTAssertEqual(try fingerprint(of: replay).sha256, recorded.sha256)

        try cluster.connect(database: database).execute(script: "DROP INDEX users_lname; DELETE FROM events")
        let restored = try tool("dbrestore", common + [id, "--yes"])
        XCTAssertEqual(restored.status, 0, restored.standardError)
        XCTAssertTrue(restored.standardError.contains("verify schema of \(database!)_restore_"), restored.standardError)
        XCTAssertEqual(try fingerprint(of: database).sha256, recorded.sha256)
        let verified = try tool("dbverify", common + ["--schema", id])
        XCTAssertEqual(verified.status, 0, verified.standardError)
        XCTAssertTrue(verified.standardError.contains("all \(recorded.objects.count) schema objects match"), verified.standardError)

        let drill = try tool("dbrestore", common + ["--drill"])
        XCTAssertEqual(drill.status, 0, drill.standardError)
        XCTAssertTrue(drill.standardError.contains("verify schema of \(database!)_drill_"), drill.standardError)
    }

    func testDatabaseLevelSettingsDoNotChangeTheFingerprint() throws {
        // Settings that change how pg_dump prints the same schema. A restore applies them to the new
        // database separately (after the checks), and a psql replay never does.
        try cluster.connect(database: database).execute(script: #"""
            CREATE TABLE printed (b bytea DEFAULT '\x00ff'::bytea, t timestamptz DEFAULT '2024-01-15 10:00:00+00', m money DEFAULT 1.5,
                                  i interval DEFAULT '1 day 2 hours', s text DEFAULT E'back\\slash');
            CREATE VIEW printed_view AS SELECT b, t, s || E'\\n' AS s FROM printed;
            COMMENT ON COLUMN printed.s IS E'a \\ backslash';
            """#)
        try cluster.connect().execute(script: """
            ALTER DATABASE \(database!) SET standard_conforming_strings = off;
            ALTER DATABASE \(database!) SET quote_all_identifiers = on;
            ALTER DATABASE \(database!) SET timezone = 'Asia/Tokyo';
            ALTER DATABASE \(database!) SET bytea_output = escape;
            ALTER DATABASE \(database!) SET intervalstyle = 'iso_8601';
            ALTER DATABASE \(database!) SET lc_monetary = 'C.UTF-8';
            """)
        let id = try backup()
        let replay = try cluster.createDatabase(prefix: "replay")
        let psql = try TestProcess.shell("gunzip -c '\(repository!)/backups/\(id)/dump.sql.gz' | psql -v ON_ERROR_STOP=1 -q -X '\(cluster.url(database: replay))'",
                                         environment: cluster.environment)
        XCTAssertEqual(psql.status, 0, psql.standardError)
        let recorded = try manifest(id).schemaFingerprint
        let replayed = try fingerprint(of: replay)
        XCTAssertEqual(replayed.sha256, recorded?.sha256, "\(recorded?.differences(from: replayed).map(\.description) ?? [])")
        let drill = try tool("dbrestore", common + ["--drill"])
        XCTAssertEqual(drill.status, 0, drill.standardError)
    }

    /// Reproduction (PostgreSQL's regression database has several): a table given a parent with
    /// `ALTER TABLE … INHERIT` comes back with the parent's columns first, from a psql replay just the
    /// same, and the schema check refused every restore of such a database (exit 31, even --emergency).
    func testATableThatInheritedLaterRestoresAndPassesTheSchemaCheck() throws {
        try cluster.connect(database: database).execute(script: """
            CREATE TABLE parent (a int, b int);
            CREATE TABLE child (b int, a int, c int);
            ALTER TABLE child INHERIT parent;
            INSERT INTO child VALUES (1, 2, 3);
            """)
        let backup = try tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository!])
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let restored = "inherit_copy_\(UInt32.random(in: 0...UInt32.max))"
        let restore = try tool("dbrestore", ["--from-database", database!, "latest", "--yes", "--jobs", "1", "--repo", repository!, "--database-url", cluster.url(database: restored)])
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT a || ',' || b || ',' || c FROM child", database: restored), "2,1,3")
    }

    func testAPoolerRefusingStartupOptionsStillGetsAFingerprintAndOtherFailuresStopTheBackup() throws {
        let real = try PostgresTools().path(of: "pg_dump")
        // What pg_dump says through PgBouncer when startup options are not in ignore_startup_parameters
        // (refused here only for the options the schema dump adds, whatever else the run passes).
        let pooler = TestPaths.temporaryDirectory(prefix: "pooler-pg-dump")
        try """
            #!/bin/sh
            case "$PGOPTIONS" in *quote_all_identifiers*)
              echo 'pg_dump: error: connection to server at "127.0.0.1", port 6432 failed: FATAL:  unsupported startup parameter: options' >&2
              exit 1 ;;
            esac
            exec '\(real)' "$@"

            """.write(toFile: pooler + "/pg_dump", atomically: true, encoding: .utf8)
        chmod(pooler + "/pg_dump", 0o755)
        let backup = try tool("dbbackup", common, environment: ["PG_BIN": pooler])
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let id = backup.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(try manifest(id).schemaFingerprint?.sha256, try fingerprint(of: database).sha256)
        let verify = try tool("dbverify", common + ["--schema", id], environment: ["PG_BIN": pooler])
        XCTAssertEqual(verify.status, 0, verify.standardError)
        let drill = try tool("dbrestore", common + ["--drill"], environment: ["PG_BIN": pooler])
        XCTAssertEqual(drill.status, 0, drill.standardError)

        // Any other failure of the schema dump fails the backup, naming it; nothing is stored.
        let failing = TestPaths.temporaryDirectory(prefix: "failing-schema-dump")
        try """
            #!/bin/sh
            case " $* " in *" --schema-only "*) echo 'pg_dump: error: query failed: ERROR:  permission denied for table secrets' >&2; exit 1 ;; esac
            exec '\(real)' "$@"

            """.write(toFile: failing + "/pg_dump", atomically: true, encoding: .utf8)
        chmod(failing + "/pg_dump", 0o755)
        let failed = try tool("dbbackup", common, environment: ["PG_BIN": failing])
        XCTAssertEqual(failed.status, ExitStatus.toolFailed.rawValue, failed.standardError)
        XCTAssertTrue(failed.standardError.contains("pg_dump --schema-only of \(database!) exited with status 1: pg_dump: error: query failed: ERROR:  permission denied for table secrets"),
                      failed.standardError)
        XCTAssertEqual(try Catalog(store: try LocalStore(root: repository, create: false)).entries().map(\.id), [id], "the failed run left no backup")
    }

    func testTheFingerprintIsTakenInTheDumpsOwnSnapshot() throws {
        // A pg_dump that starts its schema-only run 3 s late: the schema changes meanwhile, after the
        // backup's snapshot was exported. Dumping in that snapshot, it must not see the change.
        let bin = TestPaths.temporaryDirectory(prefix: "slow-pg-dump")
        let real = try PostgresTools().path(of: "pg_dump")
        try """
            #!/bin/sh
            case " $* " in *" --schema-only "*) sleep 3 ;; esac
            exec '\(real)' "$@"

            """.write(toFile: bin + "/pg_dump", atomically: true, encoding: .utf8)
        chmod(bin + "/pg_dump", 0o755)
        let running = try TestProcess.start("dbbackup", common, cluster: cluster, environment: ["PG_BIN": bin])
        let observer = try cluster.connect()
        var dumping = false
        for _ in 0..<100 where !dumping {
            usleep(50_000)
            dumping = try observer.query("SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND application_name = 'pg_dump'",
                                         [database]).rows.count > 0
        }
        XCTAssertTrue(dumping, "the data pg_dump should have started in the exported snapshot")
        try cluster.connect(database: database).execute(script: "CREATE TABLE late (x int)")
        XCTAssertEqual(running.waitForExit().exitCode, 0)

        let taken = try manifest("latest")
        XCTAssertEqual(taken.schemaFingerprint?.objects.contains { $0.name == "late" }, false, "the schema dump saw a table created after the snapshot")
        XCTAssertFalse(taken.tables.contains { $0.name == "late" })
        let result = try tool("dbverify", common + ["--schema", taken.id])
        XCTAssertEqual(result.status, ExitStatus.verificationMismatch.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("table late in schema public is not in the backup"), result.standardError)
    }

    func testAFailedDataDumpStopsTheSchemaDumpInsteadOfWaitingForIt() throws {
        // The schema dump queues behind a lock; the data dump fails at once. dbbackup must fail at
        // once too, not wait for the lock.
        let bin = TestPaths.temporaryDirectory(prefix: "failing-pg-dump")
        let real = try PostgresTools().path(of: "pg_dump")
        try """
            #!/bin/sh
            case " $* " in *" --schema-only "*) exec '\(real)' "$@" ;; esac
            echo "pg_dump: error: simulated failure" >&2
            exit 1

            """.write(toFile: bin + "/pg_dump", atomically: true, encoding: .utf8)
        chmod(bin + "/pg_dump", 0o755)
        // The partitioned parent alone: pg_dump locks it, the row counter (partitions only) does not.
        let blocker = try cluster.connect(database: database)
        try blocker.execute(script: "BEGIN; LOCK TABLE ONLY events IN ACCESS EXCLUSIVE MODE")
        let running = try TestProcess.start("dbbackup", common, cluster: cluster, environment: ["PG_BIN": bin])
        let exit = Background { running.waitForExit().exitCode }
        let inTime = exit.finished(within: 10)
        try blocker.execute(script: "ROLLBACK")
        let status = try exit.wait()
        XCTAssertTrue(inTime, "dbbackup waited for the schema dump's lock after the data dump had failed")
        XCTAssertEqual(status, ExitStatus.toolFailed.rawValue)
        XCTAssertEqual(try TestProcess.shell("find '\(repository!)' -name manifest.json 2>/dev/null").standardOutput, "", "no backup may exist")
        // Its server session notices the client is gone once the lock is granted: give it a moment.
        var sessions = "?"
        for _ in 0..<50 where sessions != "0" {
            sessions = try cluster.scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' AND datname = '\(database!)'",
                                          database: "postgres") ?? "?"
            if sessions != "0" { usleep(100_000) }
        }
        XCTAssertEqual(sessions, "0", "the schema dump must be gone")
    }

    func testALockTimeoutInTheURLBoundsTheSchemaDumpsWait() throws {
        let id = try backup()
        let blocker = try cluster.connect(database: database)
        try blocker.execute(script: "BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        let bounded = cluster.url(database: database) + "?options=-c%20lock_timeout%3D1000"
        let verify = Background { [repository, cluster] in
            try TestProcess.tool("dbverify", ["--schema", id, "--database-url", bounded, "--repo", repository ?? ""], cluster: cluster)
        }
        // pg_dump turns lock_timeout off for itself: without --lock-wait-timeout it would wait for ever.
        let inTime = verify.finished(within: 20)
        try blocker.execute(script: "ROLLBACK")
        let result = try? verify.wait()
        XCTAssertTrue(inTime, "pg_dump waited past the URL's lock_timeout")
        XCTAssertEqual(result?.status, ExitStatus.toolFailed.rawValue, result?.standardError ?? "")
        // pg_dump bounds its table locks with a statement timeout.
        XCTAssertTrue(result?.standardError.contains("pg_dump --schema-only of \(database!) exited with status 1") == true
                      && result?.standardError.contains("canceling statement due to statement timeout") == true, result?.standardError ?? "")
    }

    func testARestoreMissingAnIndexIsRefusedBeforeTheSwapNamingTheIndex() throws {
        let id = try backup()
        try cluster.connect(database: database).execute(script: "DELETE FROM events WHERE id = 2")
        let before = try cluster.rowCounts(database: database)
        let broken = [RestoreFaultHook.variable: "public.users_email"]

        for mode in [[id, "--yes"], ["--drill"], ["--emergency"]] {
            let result = try tool("dbrestore", common + mode, environment: broken)
            XCTAssertEqual(result.status, ExitStatus.restoreFailed.rawValue, "\(mode): \(result.standardError)")
            XCTAssertTrue(result.standardError.contains("restored schema does not match backup \(id): index users_email in schema public is missing"),
                          "\(mode): \(result.standardError)")
            if mode.first == id {
                XCTAssertTrue(result.standardError.contains("HINT: the target database was not touched"), result.standardError)
            }
            XCTAssertTrue(result.standardError.contains("] schema difference: index users_email in schema public is missing\n"), result.standardError)
            XCTAssertEqual(try cluster.rowCounts(database: database), before, "\(mode): the target must be untouched")
            XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM pg_indexes WHERE indexname = 'users_email'", database: database), "1")
            XCTAssertEqual(try databases(like: "\(database!)_%"), [], "\(mode): no scratch or aside database may be left")
        }
        // The incident record of the failed emergency restore names the index too.
        let incidents = try FileManager.default.contentsOfDirectory(atPath: repository + "/incidents")
        XCTAssertEqual(incidents.count, 1)
        let record = try String(contentsOfFile: repository + "/incidents/" + incidents[0], encoding: .utf8)
        XCTAssertTrue(record.contains("schema difference") && record.contains("\"index users_email in schema public is missing\""), record)
    }

    func testVerifySchemaDetectsAnAddedColumnAndNamesTheTable() throws {
        let id = try backup()
        XCTAssertEqual(try tool("dbverify", common + ["--schema"]).status, 0)
        // The operator's client encoding does not change what pg_dump writes for the comparison.
        let latin1 = try tool("dbverify", common + ["--schema"], environment: ["PGCLIENTENCODING": "LATIN1"])
        XCTAssertEqual(latin1.status, 0, latin1.standardError)
        try cluster.connect(database: database).execute(script: "ALTER TABLE billing.invoices ADD COLUMN note text; CREATE TABLE scratchpad (x int)")
        let result = try tool("dbverify", common + ["--schema", "latest"])
        XCTAssertEqual(result.status, ExitStatus.verificationMismatch.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("schema of \(database!) does not match backup \(id)"), result.standardError)
        XCTAssertTrue(result.standardError.contains("table invoices in schema billing differs"), result.standardError)
        let lines = result.standardOutput.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ") }
        XCTAssertTrue(lines.contains("CHANGED TABLE billing invoices"), result.standardOutput)
        XCTAssertTrue(lines.contains("EXTRA TABLE public scratchpad"), result.standardOutput)

        let json = try tool("dbverify", common + ["--schema", id, "--json"])
        XCTAssertEqual(json.status, ExitStatus.verificationMismatch.rawValue)
        let object = try JSONSerialization.jsonObject(with: Data(json.standardOutput.utf8)) as? [String: Any]
        XCTAssertEqual(object?["ok"] as? Bool, false)
        let differences = object?["differences"] as? [[String: Any]] ?? []
        XCTAssertEqual(differences.map { "\($0["change"] ?? "") \($0["type"] ?? "") \($0["schema"] ?? "") \($0["name"] ?? "")" }.sorted(),
                       ["changed TABLE billing invoices", "extra ACL public TABLE scratchpad", "extra TABLE public scratchpad"],
                       "the new table gets the default privileges' grant, and that is named too")

        XCTAssertEqual(try tool("dbverify", common + ["--schema", "--files"]).status, ExitStatus.usage.rawValue)
    }

    func testABackupWithoutAFingerprintRestoresWithAWarning() throws {
        let id = try backup()
        // What a backup taken before schema fingerprints looks like.
        try editManifest(id) { XCTAssertNotNil($0.removeValue(forKey: "schema_fingerprint")) }

        let restored = try tool("dbrestore", common + [id, "--yes"])
        XCTAssertEqual(restored.status, 0, restored.standardError)
        XCTAssertTrue(restored.standardError.contains("not verified: backup \(id) has no schema fingerprint"), restored.standardError)

        let verify = try tool("dbverify", common + ["--schema", id])
        XCTAssertEqual(verify.status, ExitStatus.backupNotFound.rawValue, verify.standardError)
        XCTAssertTrue(verify.standardError.contains("has no schema fingerprint"), verify.standardError)
    }
}
