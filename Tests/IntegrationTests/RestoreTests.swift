import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// `dbrestore` and `dbverify` against a real PostgreSQL cluster.
final class RestoreTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useDatabase(prefix: "restore", seed: """
            CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);
            CREATE TABLE meetings (id serial PRIMARY KEY, user_id bigint REFERENCES users, title text);
            INSERT INTO users SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 300) g;
            INSERT INTO meetings (user_id, title) SELECT 1 + g % 300, 'm' || g FROM generate_series(1, 900) g;
            """)
        useLocalRepository()
    }

    private func expectedCounts(_ id: String) throws -> [String: Int64] {
        Dictionary(uniqueKeysWithValues: try manifest(id).tables.map { ($0.qualifiedName, $0.rows) })
    }

    private func flipByte(in id: String) throws {
        let path = "\(repository!)/backups/\(id)/dump.sql.gz"
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        data[data.count / 2] ^= 0x20
        try data.write(to: URL(fileURLWithPath: path))
    }

    func testEmergencyRestoreAfterDamageKeepsTheDamagedDatabaseAside() throws {
        let id = try backup(["--release", "v1.2.3"])
        let damage = try cluster.connect(database: database)
        try damage.execute(script: """
            DELETE FROM meetings WHERE id % 2 = 0;
            ALTER TABLE meetings DROP CONSTRAINT meetings_user_id_fkey;
            DROP TABLE users;
            CREATE TABLE junk (x int);
            INSERT INTO junk VALUES (1);
            """)
        damage.close()
        let incident = TestPaths.temporaryDirectory(prefix: "incident") + "/incident.json"
        let result = try tool("dbrestore", common + ["--emergency", "--release", "v1.2.3", "--incident-file", incident])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertTrue(result.standardOutput.contains("restored \(database!) from backup \(id)"), result.standardOutput)

        XCTAssertEqual(try cluster.rowCounts(database: database), try expectedCounts(id))
        let aside = try databases(like: "\(database!)_pre_restore_%")
        XCTAssertEqual(aside.count, 1)
        XCTAssertEqual(try cluster.rowCounts(database: aside[0]), ["public.meetings": 450, "public.junk": 1], "damage must be kept intact")
        XCTAssertEqual(try databases(like: "\(database!)_restore_%"), [], "no scratch database may be left")

        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: incident))) as? [String: Any]
        XCTAssertEqual((record?["plan"] as? [String: Any])?["backup_id"] as? String, id)
        XCTAssertEqual(record?["outcome"] as? String, "restored")
        XCTAssertGreaterThanOrEqual((record?["timeline"] as? [Any])?.count ?? 0, 4)
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: incident)[.posixPermissions] as? Int, 0o600)
    }

    func testDamagedNewestBackupIsRefusedByNormalRestoreAndSkippedByEmergency() throws {
        let good = try backup()
        try cluster.connect(database: database).execute(script: "INSERT INTO users VALUES (1000, 'late@example.com')")
        sleep(1)
        let bad = try backup()
        try flipByte(in: bad)
        try cluster.connect(database: database).execute(script: "DELETE FROM meetings")
        let before = try cluster.rowCounts(database: database)

        let refused = try tool("dbrestore", common + [bad, "--yes"])
        XCTAssertEqual(refused.status, ExitStatus.backupCorrupt.rawValue, refused.standardError)
        XCTAssertTrue(refused.standardError.contains(bad), refused.standardError)
        XCTAssertEqual(try cluster.rowCounts(database: database), before, "a refused restore must change nothing")
        XCTAssertEqual(try databases(like: "\(database!)_%"), [], "no scratch or aside database after a refused restore")

        let files = try tool("dbverify", ["--files", bad, "--repo", repository])
        XCTAssertEqual(files.status, ExitStatus.backupCorrupt.rawValue)
        XCTAssertTrue(files.standardError.contains("sha256"), files.standardError)
        XCTAssertEqual(try tool("dbverify", ["--files", good, "--repo", repository]).status, 0)

        let emergency = try tool("dbrestore", common + ["--emergency"])
        XCTAssertEqual(emergency.status, 0, emergency.standardError)
        XCTAssertTrue(emergency.standardError.contains("skip backup \(bad)"), emergency.standardError)
        XCTAssertTrue(emergency.standardOutput.contains("from backup \(good)"), emergency.standardOutput)
        XCTAssertEqual(try cluster.rowCounts(database: database), try expectedCounts(good))
        let incidents = try FileManager.default.contentsOfDirectory(atPath: repository + "/incidents")
        XCTAssertEqual(incidents.count, 1)
        let record = try String(contentsOfFile: repository + "/incidents/" + incidents[0], encoding: .utf8)
        XCTAssertTrue(record.contains(bad) && record.contains("sha256"), "incident record must name the skipped backup and why")
    }

    func testReplacedDumpWithValidGzipIsRefusedAtEndOfStreamAndNothingIsApplied() throws {
        let id = try backup()
        // Same SQL, recompressed: a valid gzip stream whose sha256 no longer matches the manifest.
        let path = "\(repository!)/backups/\(id)/dump.sql.gz"
        XCTAssertEqual(try TestProcess.shell("gunzip -c '\(path)' | gzip -1 > '\(path).new' && mv '\(path).new' '\(path)'").status, 0)
        let missing = "never_\(UInt32.random(in: 0...UInt32.max))"
        let result = try tool("dbrestore", [id, "--yes", "--repo", repository, "--database-url", cluster.url(database: missing)])
        XCTAssertEqual(result.status, ExitStatus.backupCorrupt.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("sha256"), result.standardError)
        XCTAssertFalse(try cluster.databaseExists(missing))
        XCTAssertEqual(try databases(like: "\(missing)_%"), [])
    }

    func testRestoreSucceedsWhileClientsHoldConnections() throws {
        let id = try backup()
        try cluster.connect(database: database).execute(script: "DELETE FROM meetings")
        let clients = try (0..<3).map { _ in try cluster.connect(database: database) }
        try clients[0].execute(script: "BEGIN; SELECT count(*) FROM users")   // an open transaction, too
        let result = try tool("dbrestore", common + ["latest", "--yes"])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertEqual(try cluster.rowCounts(database: database), try expectedCounts(id))
        XCTAssertEqual(try databases(like: "\(database!)_pre_restore_%").count, 1)
        // The sessions it ended are said (an application's open transaction was rolled back by it).
        let said = result.standardOutput + result.standardError
        XCTAssertTrue(said.contains("ended 3 sessions on \(database!)") && said.contains(", in a transaction)"), said)
        // New clients can connect to both the restored and the kept database.
        XCTAssertEqual(try cluster.scalar("SELECT 1", database: try databases(like: "\(database!)_pre_restore_%")[0]), "1")
        _ = clients
    }

    func testVerifyNamesTheTableAndTheDifference() throws {
        let id = try backup()
        XCTAssertEqual(try tool("dbverify", common + [id]).status, 0)
        try cluster.connect(database: database).execute(script: "DELETE FROM meetings WHERE id = 5")
        let result = try tool("dbverify", common + [id])
        XCTAssertEqual(result.status, ExitStatus.verificationMismatch.rawValue)
        XCTAssertTrue(result.standardOutput.contains("public.meetings") && result.standardOutput.contains("MISMATCH (-1)"), result.standardOutput)
        XCTAssertTrue(result.standardError.contains("public.meetings: expected 900, found 899"), result.standardError)

        let json = try tool("dbverify", common + [id, "--json"])
        XCTAssertEqual(json.status, ExitStatus.verificationMismatch.rawValue)
        let object = try JSONSerialization.jsonObject(with: Data(json.standardOutput.utf8)) as? [String: Any]
        let tables = object?["tables"] as? [[String: Any]] ?? []
        let meetings = tables.first { $0["table"] as? String == "public.meetings" }
        XCTAssertEqual(meetings?["status"] as? String, "mismatch")
        XCTAssertEqual(meetings?["actual"] as? Int, 899)
    }

    func testDrillLeavesNoScratchDatabaseOnSuccessOrFailure() throws {
        let id = try backup()
        let passed = try tool("dbrestore", common + ["--drill"])
        XCTAssertEqual(passed.status, 0, passed.standardError)
        XCTAssertTrue(passed.standardOutput.contains("drill passed"), passed.standardOutput)
        XCTAssertEqual(try databases(like: "\(database!)_%"), [])

        // Make the manifest disagree with the dump: the drill must fail and still clean up.
        let path = "\(repository!)/backups/\(id)/manifest.json"
        let text = try String(contentsOfFile: path, encoding: .utf8).replacingOccurrences(of: "\"rows\" : 900", with: "\"rows\" : 901")
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        let failed = try tool("dbrestore", common + ["--drill"])
        XCTAssertEqual(failed.status, ExitStatus.restoreFailed.rawValue, failed.standardError)
        XCTAssertTrue(failed.standardError.contains("public.meetings: expected 901, found 900"), failed.standardError)
        XCTAssertEqual(try databases(like: "\(database!)_%"), [])
    }

    func testDryRunAndListChangeNothing() throws {
        let id = try backup(["--tag", "nightly", "--release", "v9"])
        try cluster.connect(database: database).execute(script: "DELETE FROM meetings")
        let before = try cluster.rowCounts(database: database)
        let plan = try tool("dbrestore", common + ["latest", "--dry-run"])
        XCTAssertEqual(plan.status, 0, plan.standardError)
        XCTAssertTrue(plan.standardOutput.contains(id) && plan.standardOutput.contains("_pre_restore_"), plan.standardOutput)
        XCTAssertEqual(try cluster.rowCounts(database: database), before)
        XCTAssertEqual(try databases(like: "\(database!)_%"), [])

        let list = try tool("dbrestore", ["list", "--repo", repository, "--json"])
        XCTAssertEqual(list.status, 0, list.standardError)
        let rows = try JSONSerialization.jsonObject(with: Data(list.standardOutput.utf8)) as? [[String: Any]]
        XCTAssertEqual(rows?.first?["id"] as? String, id)
        XCTAssertEqual(rows?.first?["release"] as? String, "v9")
        XCTAssertEqual(rows?.first?["tags"] as? [String], ["nightly"])
    }

    func testErrorsHaveDistinctCodesAndChangeNothing() throws {
        let id = try backup()
        let before = try cluster.rowCounts(database: database)

        let unknown = try tool("dbrestore", common + [String(id.dropLast()) + "z", "--yes"])
        XCTAssertEqual(unknown.status, ExitStatus.backupNotFound.rawValue)
        XCTAssertTrue(unknown.standardError.contains("nearest ids: \(id)"), unknown.standardError)

        let emptyRepository = TestPaths.temporaryDirectory(prefix: "empty")
        let empty = try tool("dbrestore", ["--emergency", "--database-url", cluster.url(database: database), "--repo", emptyRepository])
        XCTAssertEqual(empty.status, ExitStatus.backupNotFound.rawValue, empty.standardError)

        let missingRepository = try tool("dbrestore", ["list", "--repo", "/nonexistent/repo"])
        XCTAssertEqual(missingRepository.status, ExitStatus.repositoryError.rawValue, missingRepository.standardError)

        let unreachable = try tool("dbrestore", ["latest", "--yes", "--repo", repository, "--database-url", "postgresql://postgres@127.0.0.1:1/x"])
        XCTAssertEqual(unreachable.status, ExitStatus.databaseUnavailable.rawValue)

        let admin = try cluster.connect()
        let role = "weak_\(UInt32.random(in: 0...UInt32.max))"
        try admin.execute(script: "CREATE ROLE \(role) LOGIN PASSWORD '\(cluster.password)'")
        let weakURL = cluster.url(database: database).replacingOccurrences(of: "postgres@", with: "\(role)@")
        let weak = try tool("dbrestore", ["latest", "--yes", "--repo", repository, "--database-url", weakURL])
        XCTAssertEqual(weak.status, ExitStatus.databaseError.rawValue, weak.standardError)
        XCTAssertTrue(weak.standardError.contains("CREATEDB"), weak.standardError)

        let conflicting = try tool("dbrestore", common + ["--emergency", "--drill"])
        XCTAssertEqual(conflicting.status, ExitStatus.usage.rawValue)

        for result in [unknown, empty, missingRepository, unreachable, weak, conflicting] {
            XCTAssertLessThanOrEqual(result.standardError.split(separator: "\n").filter { !$0.hasPrefix("[") }.count, 2, result.standardError)
        }
        XCTAssertEqual(try cluster.rowCounts(database: database), before)
        XCTAssertEqual(try databases(like: "\(database!)_%"), [])
    }

    func testASecondRestoreOfTheSameDatabaseFailsNamingTheFirst() throws {
        _ = try backup()
        let holder = try cluster.connect()
        try holder.query("SELECT pg_advisory_lock(hashtext($1))", ["dbrestore:" + database])
        let result = try tool("dbrestore", common + ["latest", "--yes"])
        XCTAssertEqual(result.status, ExitStatus.lockTimeout.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("another restore of \(database!) is running (pid \(holder.backendPID)"), result.standardError)
        XCTAssertEqual(try databases(like: "\(database!)_%"), [], "the loser changes nothing")
        holder.close()
        XCTAssertEqual(try tool("dbrestore", common + ["latest", "--yes"]).status, 0)
    }

    func testRestoreCreatesAMissingTargetDatabase() throws {
        let id = try backup()
        let missing = "fresh_\(UInt32.random(in: 0...UInt32.max))"
        let result = try tool("dbrestore", ["--from-database", database!, "latest", "--yes", "--repo", repository, "--database-url", cluster.url(database: missing)])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertEqual(try cluster.rowCounts(database: missing), try expectedCounts(id))
        XCTAssertEqual(try databases(like: "\(missing)_%"), [])
    }

    /// Every kind of object a schema holds, with the values that trip up hand-written parsers,
    /// comes back identical through the parallel loader (rows compared as sorted sets: tables
    /// loaded over several connections keep their rows, not their physical order).
    func testParallelRestoreReproducesEveryKindOfObjectExactly() throws {
        let source = try cluster.createDatabase(prefix: "fidelity")
        try cluster.connect(database: source).execute(script: #"""
            CREATE SCHEMA "Sales; Q1";
            CREATE SCHEMA données;
            CREATE TABLE "Sales; Q1"."order lines" (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                note text DEFAULT E'it\'s; a \\ default', amount numeric(12,2) CHECK (amount >= 0),
                doubled numeric GENERATED ALWAYS AS (amount * 2) STORED, payload bytea, at timestamptz);
            CREATE TABLE données.élément (id int PRIMARY KEY, nom text UNIQUE);
            CREATE TABLE public.children (id int PRIMARY KEY, parent int REFERENCES données.élément, label text);
            CREATE INDEX children_label ON public.children (lower(label));
            CREATE TABLE public.events (id int, at date, body jsonb) PARTITION BY RANGE (at);
            CREATE TABLE public.events_2024 PARTITION OF public.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
            CREATE TABLE public.events_2025 PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
            CREATE INDEX events_at ON public.events (at);
            CREATE SEQUENCE public.tickets START 7;
            SELECT setval('public.tickets', 4242);
            CREATE FUNCTION public.tricky(x int) RETURNS text LANGUAGE plpgsql AS $fn$
            BEGIN
              -- a body with a semicolon; and a quote ' and what looks like dump syntax:
              RETURN 'COPY x FROM stdin;' || E'\n\\.\n' || $$ ; $$ || x;
            END
            $fn$;
            CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.label := upper(NEW.label); RETURN NEW; END $$;
            CREATE TRIGGER children_touch BEFORE INSERT ON public.children FOR EACH ROW EXECUTE FUNCTION public.touch();
            CREATE VIEW public.summary AS SELECT parent, count(*) AS n FROM public.children GROUP BY parent;
            CREATE MATERIALIZED VIEW public.totals AS SELECT count(*) AS n FROM "Sales; Q1"."order lines";
            CREATE UNIQUE INDEX totals_n ON public.totals (n);
            COMMENT ON TABLE données.élément IS 'semicolons; quotes '' and -- dashes';
            INSERT INTO "Sales; Q1"."order lines" (note, amount, payload, at)
            SELECT CASE g % 5 WHEN 0 THEN NULL WHEN 1 THEN E'tab\there\nnew line \\ backslash' WHEN 2 THEN 'ünïcödé 😀'
                        WHEN 3 THEN '\.' ELSE repeat('x', g % 300) END,
                   g / 100.0, decode(md5(g::text), 'hex'), timestamptz '2024-01-01' + g * interval '1 minute'
            FROM generate_series(1, 40000) g;
            INSERT INTO données.élément SELECT g, 'nom ' || g FROM generate_series(1, 500) g;
            INSERT INTO public.children SELECT g, 1 + g % 500, 'label ' || g FROM generate_series(1, 3000) g;
            INSERT INTO public.events SELECT g, date '2024-06-01' + g % 400, jsonb_build_object('g', g) FROM generate_series(1, 2000) g;
            REFRESH MATERIALIZED VIEW public.totals;
            SELECT lo_from_bytea(0, convert_to('a large object; with a semicolon', 'UTF8'));
            """#)
        let url = cluster.url(database: source)
        let backup = try tool("dbbackup", ["--database-url", url, "--repo", repository])
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let restored = "fidelity_copy_\(UInt32.random(in: 0...UInt32.max))"
        let restore = try tool("dbrestore", ["--from-database", source, "latest", "--yes", "--jobs", "3", "--repo", repository, "--database-url", cluster.url(database: restored)])
        XCTAssertEqual(restore.status, 0, restore.standardError)

        let pgDump = try PostgresTools().path(of: "pg_dump")
        func schema(_ database: String) throws -> String {
            let result = try TestProcess.shell("'\(pgDump)' --schema-only '\(cluster.url(database: database))' | grep -v -e '^\\\\restrict' -e '^\\\\unrestrict'",
                                               environment: cluster.environment)
            XCTAssertEqual(result.status, 0, result.standardError)
            return result.standardOutput
        }
        XCTAssertEqual(try schema(restored), try schema(source))
        let tables = ["\"Sales; Q1\".\"order lines\"", "données.élément", "public.children", "public.events", "public.totals"]
        for table in tables {
            let digest = "SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM \(table) t"
            XCTAssertEqual(try cluster.scalar(digest, database: restored), try cluster.scalar(digest, database: source), table)
        }
        for probe in ["SELECT last_value FROM public.tickets", "SELECT public.tricky(3)", "SELECT obj_description('données.élément'::regclass)",
                      "SELECT string_agg(convert_from(lo_get(oid), 'UTF8'), ',') FROM pg_largeobject_metadata"] {
            XCTAssertEqual(try cluster.scalar(probe, database: restored), try cluster.scalar(probe, database: source), probe)
        }
    }

    /// A dump the server rejects part-way — a row that does not parse (COPY, on a loading
    /// connection), a duplicate key (a post-data build run side by side) — fails the restore with
    /// the statement and the server's reason; the target and the server are left as they were.
    func testServerErrorsMidReplayFailCleanlyAndChangeNothing() throws {
        let before = try cluster.rowCounts(database: database)
        for (name, edit) in [("bad row", "s/^7\\tuser7@example.com$/seven\\tuser7@example.com/"),
                             ("duplicate key", "s/^8\\tuser8@example.com$/7\\tuser8@example.com/")] {
            let id = try backup()
            // Edit the dump and re-seal the manifest, so only the server can object.
            let folder = "\(repository!)/backups/\(id)"
            let reseal = try TestProcess.shell("""
                set -e
                gunzip -c '\(folder)/dump.sql.gz' | sed -E '\(edit)' | gzip > '\(folder)/edited.gz'
                mv '\(folder)/edited.gz' '\(folder)/dump.sql.gz'
                python3 - '\(folder)' <<'PY'
                import hashlib, json, os, sys, gzip
                folder = sys.argv[1]
                data = open(os.path.join(folder, "dump.sql.gz"), "rb").read()
                manifest = json.load(open(os.path.join(folder, "manifest.json")))
                entry = manifest["files"][0]
                entry.update(sha256=hashlib.sha256(data).hexdigest(), stored_bytes=len(data), raw_bytes=len(gzip.decompress(data)))
                json.dump(manifest, open(os.path.join(folder, "manifest.json"), "w"))
                PY
                gunzip -c '\(folder)/dump.sql.gz' | grep -c -P '^(seven|7)\\tuser[78]@example.com$'
                """)
            XCTAssertEqual(reseal.status, 0, reseal.standardError)
            XCTAssertEqual(reseal.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines), name == "bad row" ? "1" : "2", name)

            let result = try tool("dbrestore", common + [id, "--yes", "--jobs", "2"])
            XCTAssertEqual(result.status, ExitStatus.restoreFailed.rawValue, "\(name): \(result.standardError)")
            let expected = name == "bad row" ? "invalid input syntax for type bigint" : "could not create unique index"
            XCTAssertTrue(result.standardError.contains(expected), "\(name): \(result.standardError)")
            XCTAssertTrue(result.standardError.contains("failed at `"), "names the statement: \(result.standardError)")
            XCTAssertEqual(try cluster.rowCounts(database: database), before, "\(name): target untouched")
            XCTAssertEqual(try databases(like: "\(database!)_%"), [], "\(name): no scratch database left")
        }
    }
}
