import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// The row counts a restore checks against the manifest come from the server's own COPY results
/// where those are what `count(*)` would answer, and from `count(*)` everywhere else (issue 21).
final class RestoreRowCountTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useCluster()
        useLocalRepository()
    }

    /// Backs up a database made by `script`, restores it into a new database with two connections
    /// and returns the outcome, the JSON report's timeline as `step: outcome` lines, and both databases.
    private func backUpAndRestore(_ script: String) throws -> (status: Int32, timeline: [String], stderr: String, source: String, restored: String) {
        try useDatabase(prefix: "counts", seed: script)
        let backup = try tool("dbbackup", common)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let restored = "counts_copy_\(UInt32.random(in: 0...UInt32.max))"
        let result = try tool("dbrestore", ["--from-database", database!, "latest", "--yes", "--json", "--jobs", "2", "--repo", repository,
                                            "--database-url", cluster.url(database: restored)])
        let report = (try? JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8))) as? [String: Any]
        let steps = (report?["timeline"] as? [[String: Any]] ?? []).map { "\($0["step"] as? String ?? ""): \($0["outcome"] as? String ?? "")" }
        return (result.status, steps, result.standardError, database, restored)
    }

    /// Ordinary tables (one big enough to be split over both connections, partitions loaded through
    /// their own COPY) take their counts from the COPY results; an inheritance parent, whose
    /// `count(*)` includes its child's rows, is counted. Every count matches the source.
    func testOrdinaryTablesAreCountedByTheirCopyResultsAndInheritanceParentsByCount() throws {
        let outcome = try backUpAndRestore("""
            CREATE TABLE big (id bigint PRIMARY KEY, payload text);
            INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 40000) g;
            CREATE TABLE small (id int);
            INSERT INTO small SELECT generate_series(1, 7);
            CREATE TABLE events (id int, at date) PARTITION BY RANGE (at);
            CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
            CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
            INSERT INTO events SELECT g, date '2024-06-01' + g FROM generate_series(1, 400) g;
            CREATE TABLE animals (name text);
            CREATE TABLE dogs (breed text) INHERITS (animals);
            INSERT INTO animals SELECT 'a' || g FROM generate_series(1, 10) g;
            INSERT INTO dogs SELECT 'd' || g, 'b' FROM generate_series(1, 5) g;
            """)
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        // big, small, events_2024, events_2025 and dogs from their COPYs; animals (a parent) counted.
        XCTAssertTrue(outcome.timeline.contains { $0.contains("5 of 6 tables from the server's COPY results") }, outcome.timeline.joined(separator: "\n"))
        XCTAssertEqual(try cluster.rowCounts(database: outcome.restored), try cluster.rowCounts(database: outcome.source))
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM animals", database: outcome.restored), "15")
    }

    /// Hash partitions of an enum key: pg_dump loads them through their root (an enum value hashes by
    /// its oid, which the restore assigns anew, so a row may land in the other partition). The backup
    /// counts each partition's rows by its entry (before, "pg_dump wrote no rows for table public.mood_0"
    /// stopped every backup of such a database), and restore and dbverify compare the tree's total.
    func testHashPartitionsOfAnEnumKeyBackUpAndRestoreWhereverTheirRowsLand() throws {
        let outcome = try backUpAndRestore("""
            CREATE TYPE shifted AS ENUM ('x'); DROP TYPE shifted;
            CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
            CREATE TABLE feelings (m mood, v int) PARTITION BY HASH (m);
            CREATE TABLE mood_0 PARTITION OF feelings FOR VALUES WITH (MODULUS 2, REMAINDER 0);
            CREATE TABLE mood_1 PARTITION OF feelings FOR VALUES WITH (MODULUS 2, REMAINDER 1);
            INSERT INTO feelings SELECT (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::mood, g FROM generate_series(1, 30) g;
            CREATE TABLE plain (id int);
            INSERT INTO plain SELECT generate_series(1, 4);
            """)
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        guard outcome.status == 0 else { return }
        XCTAssertEqual(try cluster.scalar("SELECT string_agg(m::text || v, ',' ORDER BY v) FROM feelings", database: outcome.restored),
                       try cluster.scalar("SELECT string_agg(m::text || v, ',' ORDER BY v) FROM feelings", database: outcome.source))
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM plain", database: outcome.restored), "4")
        let verify = try tool("dbverify", ["--json", "--repo", repository, "--database-url", cluster.url(database: outcome.restored)])
        XCTAssertEqual(verify.status, 0, verify.standardError)
        XCTAssertTrue(verify.standardOutput.contains("public.feelings (its partitions together)"), verify.standardOutput)
    }

    /// Where user code may have written rows besides the COPYs — a CHECK constraint calling a user
    /// function, a materialized view refreshed after the rows — every table is counted, and the
    /// restore says why.
    func testUserCodeThatCouldWriteRowsMakesTheRestoreCountEveryTable() throws {
        let checked = try backUpAndRestore("""
            CREATE FUNCTION positive(x int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT x > 0';
            CREATE TABLE amounts (x int CHECK (positive(x)));
            INSERT INTO amounts SELECT generate_series(1, 50);
            """)
        XCTAssertEqual(checked.status, 0, checked.stderr)
        XCTAssertTrue(checked.timeline.contains { $0.contains("all counted with count(*): a CHECK constraint, domain or generated column calls a function") },
                      checked.timeline.joined(separator: "\n"))

        let refreshed = try backUpAndRestore("""
            CREATE TABLE items (id int);
            INSERT INTO items SELECT generate_series(1, 30);
            CREATE MATERIALIZED VIEW item_total AS SELECT count(*) AS n FROM items;
            """)
        XCTAssertEqual(refreshed.status, 0, refreshed.stderr)
        XCTAssertTrue(refreshed.timeline.contains { $0.contains("all counted with count(*): a materialized view is refreshed") },
                      refreshed.timeline.joined(separator: "\n"))
        XCTAssertEqual(try cluster.rowCounts(database: refreshed.restored), try cluster.rowCounts(database: refreshed.source))
    }

    /// A table whose rows in the restored database differ from the manifest is still found when its
    /// count comes from the COPY results: the restore fails and the target is not created.
    func testACopyCountThatDiffersFromTheManifestFailsTheRestore() throws {
        try useDatabase(prefix: "counts", seed: "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 20);")
        let backup = try tool("dbbackup", common)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let id = backup.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        // The manifest claims one row more than the dump holds (its sha256 covers the dump, not this).
        var found = false
        try editManifest(id) { manifest in
            manifest["tables"] = (manifest["tables"] as? [[String: Any]] ?? []).map { table in
                guard table["name"] as? String == "t" else { return table }
                found = true
                return table.merging(["rows": 21]) { _, new in new }
            }
        }
        XCTAssertTrue(found, "the manifest's count of t was not found")
        let restored = "counts_copy_\(UInt32.random(in: 0...UInt32.max))"
        let result = try tool("dbrestore", ["--from-database", database!, "latest", "--yes", "--repo", repository, "--database-url", cluster.url(database: restored)])
        XCTAssertEqual(result.status, ExitStatus.restoreFailed.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("public.t: expected 21, found 20"), result.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM pg_database WHERE datname = '\(restored)'", database: "postgres"), "0")
    }

    /// User code that writes rows while the post-data runs (a whole-row CHECK pg_dump adds after the
    /// rows, an expression index, a partition key expression, each calling a function that inserts
    /// into `audit`): the restored `audit` holds more rows than the backup's, as a `gunzip | psql`
    /// replay's would. The COPY results would have missed that; with functions of the database's own
    /// every table is counted, and the restore is refused with the table named.
    func testRowsWrittenByUserCodeDuringThePostDataAreFound() throws {
        let outcome = try backUpAndRestore("""
            CREATE TABLE audit (note text);
            INSERT INTO audit VALUES ('seed');
            CREATE TABLE tt (a int);
            CREATE FUNCTION chk(r tt) RETURNS bool LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.audit VALUES ('chk ' || r.a); RETURN true; END $$;
            INSERT INTO tt SELECT generate_series(1, 4);
            ALTER TABLE tt ADD CONSTRAINT c CHECK (chk(tt));
            CREATE FUNCTION writer(v int) RETURNS int LANGUAGE plpgsql VOLATILE AS $$ BEGIN INSERT INTO public.audit VALUES ('part ' || v); RETURN v; END $$;
            CREATE FUNCTION imm(v int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN public.writer(v); END $$;
            CREATE TABLE p (x int) PARTITION BY RANGE (imm(x));
            CREATE TABLE p_lo PARTITION OF p FOR VALUES FROM (MINVALUE) TO (100);
            INSERT INTO p SELECT generate_series(1, 5);
            CREATE TABLE ix (x int);
            INSERT INTO ix SELECT generate_series(1, 3);
            CREATE INDEX ix_imm ON ix (imm(x));
            DELETE FROM audit WHERE note <> 'seed';
            """)
        XCTAssertEqual(outcome.status, ExitStatus.restoreFailed.rawValue, outcome.stderr)
        XCTAssertTrue(outcome.stderr.contains("public.audit: expected 1, found"), outcome.stderr)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM pg_database WHERE datname = '\(outcome.restored)'", database: "postgres"), "0")
    }

    /// Restoring as the non-superuser owner of tables under FORCE ROW LEVEL SECURITY: the policy hides
    /// rows from that role's `count(*)` (here on the inheritance parent, which is counted), so the data
    /// is whole and the count short. The refusal names row-level security and the fix, not "try an
    /// older backup" (which would fail the same way).
    func testRowLevelSecurityHidingRowsIsNamedInTheRefusal() throws {
        let role = "rls_\(UUID().uuidString.prefix(8).lowercased())"
        let admin = try cluster.connect()
        try admin.execute(script: "CREATE ROLE \(role) LOGIN CREATEDB PASSWORD '\(cluster.password)'")
        try admin.execute(script: "GRANT SET ON PARAMETER dbrecovery.marker TO \(role)")
        try useDatabase(prefix: "rls", seed: """
            CREATE TABLE r (a int); INSERT INTO r SELECT generate_series(1, 10);
            CREATE TABLE rkid () INHERITS (r); INSERT INTO rkid SELECT generate_series(1, 10);
            CREATE POLICY p ON r USING (a < 5); CREATE POLICY p ON rkid USING (a < 5);
            ALTER TABLE r ENABLE ROW LEVEL SECURITY; ALTER TABLE r FORCE ROW LEVEL SECURITY;
            ALTER TABLE rkid ENABLE ROW LEVEL SECURITY; ALTER TABLE rkid FORCE ROW LEVEL SECURITY;
            ALTER TABLE r OWNER TO \(role); ALTER TABLE rkid OWNER TO \(role);
            """)
        addTeardownBlock { [cluster, database] in
            _ = try? cluster?.connect(database: database ?? "postgres").execute(script: "DROP OWNED BY \(role)")
            _ = try? cluster?.connect().execute(script: "REVOKE SET ON PARAMETER dbrecovery.marker FROM \(role)")
            _ = try? cluster?.connect().execute(script: "DROP OWNED BY \(role)")
            _ = try? cluster?.connect().execute(script: "DROP ROLE IF EXISTS \(role)")
        }
        let backup = try tool("dbbackup", common)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let restored = "rls_copy_\(UInt32.random(in: 0...UInt32.max))"
        let url = cluster.url(database: restored).replacingOccurrences(of: "postgres@", with: "\(role)@")
        let result = try tool("dbrestore", ["--from-database", database!, "latest", "--yes", "--repo", repository, "--database-url", url])
        XCTAssertEqual(result.status, ExitStatus.restoreFailed.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("row-level security hides rows") && result.standardError.contains("BYPASSRLS"), result.standardError)
        XCTAssertFalse(result.standardError.contains("try an older backup"), result.standardError)
        XCTAssertFalse(try cluster.databaseExists(restored), "a refused restore creates nothing")
    }
}
