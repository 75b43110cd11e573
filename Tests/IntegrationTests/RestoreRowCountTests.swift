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
        let result = try tool("dbrestore", ["latest", "--yes", "--json", "--jobs", "2", "--repo", repository,
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
            CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.name := upper(NEW.name); RETURN NEW; END $$;
            CREATE TRIGGER dogs_shout BEFORE INSERT ON dogs FOR EACH ROW EXECUTE FUNCTION shout();
            """)
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        // big, small, events_2024, events_2025 and dogs from their COPYs; animals (a parent) counted.
        XCTAssertTrue(outcome.timeline.contains { $0.contains("5 of 6 tables from the server's COPY results") }, outcome.timeline.joined(separator: "\n"))
        XCTAssertEqual(try cluster.rowCounts(database: outcome.restored), try cluster.rowCounts(database: outcome.source))
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM animals", database: outcome.restored), "15")
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
        let result = try tool("dbrestore", ["latest", "--yes", "--repo", repository, "--database-url", cluster.url(database: restored)])
        XCTAssertEqual(result.status, ExitStatus.restoreFailed.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("public.t: expected 21, found 20"), result.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM pg_database WHERE datname = '\(restored)'", database: "postgres"), "0")
    }
}
