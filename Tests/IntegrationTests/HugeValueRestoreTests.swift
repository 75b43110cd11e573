import Foundation
import TestSupport
import XCTest

/// A value longer than the restore holds at once (a document, an image in bytea, a big jsonb) is
/// streamed to the server's COPY in pieces as it is read, as `gunzip -c | psql` streams it: the
/// restore's memory does not grow with the value, and the restored table equals the original byte
/// for byte, whichever way the rows were read (pg_dump's COPY or the backup's own), however many
/// connections load them, and for a selective restore too.
final class HugeValueRestoreTests: IntegrationTestCase {
    /// Pieces of 64 KiB (the default is 4 MiB) and access points every 64 KiB: the megabyte values
    /// below are cut many times, by the dump reader's chunks, the pieces and the loader's 1 MiB runs.
    private let smallPieces = ["DBRECOVERY_COPY_PIECE_KB": "64", "DBRECOVERY_TOC_ACCESS_POINT_KB": "64"]

    override func setUpWithError() throws {
        try useCluster()
        useLocalRepository(prefix: "huge")
    }

    /// Long rows between short ones, their COPY text dense with escapes (`\\`, `\n`, `\t`, `\r`, `\\.`,
    /// a bytea's `\\x`), so that cuts fall right after backslashes and inside escapes; a row whose
    /// first column starts with `\\.` (not the end of the rows), and a row of 2 MiB of backslashes.
    private static let seed = #"""
        CREATE TABLE docs (id int PRIMARY KEY, body text, raw bytea);
        CREATE TABLE lines (body text);
        INSERT INTO docs SELECT g, md5(g::text), decode(md5(g::text), 'hex') FROM generate_series(1, 3000) g;
        INSERT INTO docs
        SELECT 100000 + k,
               (SELECT string_agg(CASE (g + k) % 6 WHEN 0 THEN E'\\' WHEN 1 THEN E'\n' WHEN 2 THEN E'\t' WHEN 3 THEN E'\r'
                                                   WHEN 4 THEN '\.' ELSE md5(g::text) END, '')
                FROM generate_series(1, 200000) g),
               decode(repeat('5c2e0d0a', 150000 + k), 'hex')
        FROM generate_series(0, 2) k;
        INSERT INTO docs SELECT 200000 + g, md5(g::text), NULL FROM generate_series(1, 3000) g;
        INSERT INTO docs VALUES (300000, repeat(E'\\', 1048577), NULL);
        INSERT INTO lines VALUES (E'\\.'), (E'\\.' || repeat(E'\\.\r\n', 300000)), (''), (NULL);
        """#

    /// Row counts and the md5 of every value, in order.
    private func digest(_ database: String, schema: String = "public") throws -> String {
        let docs = try cluster.scalar("""
            SELECT count(*) || ' ' || md5(string_agg(id || ':' || coalesce(md5(body), '-') || ':' || coalesce(md5(raw), '-'), ',' ORDER BY id))
            FROM \(schema).docs
            """, database: database)
        let lines = try cluster.scalar("SELECT count(*) || ' ' || md5(string_agg(coalesce(md5(body), '-'), ',' ORDER BY body)) FROM public.lines",
                                       database: database)
        return "docs \(docs ?? "?"), lines \(lines ?? "?")"
    }

    func testValuesLongerThanAPieceRestoreByteForByte() throws {
        let source = try cluster.createDatabase(prefix: "huge_src", seed: Self.seed)
        let expected = try digest(source)
        XCTAssertGreaterThan(Int(try cluster.scalar("SELECT max(octet_length(body)) FROM docs", database: source) ?? "") ?? 0, 1 << 20)
        for dataBy in ["pg_dump", "copy"] {
            let backup = try tool("dbbackup", ["--database-url", cluster.url(database: source), "--repo", repository, "--data-by", dataBy],
                                  environment: smallPieces)
            XCTAssertEqual(backup.status, 0, backup.standardError)
            let id = backup.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
            // The row counts the backup recorded from its dump (counted across the pieces) are what
            // the restore verifies its tables against: a miscount fails it.
            for jobs in ["1", "2"] {
                let restored = "huge_\(dataBy)_\(jobs)_\(UInt32.random(in: 0...UInt32.max))"
                let result = try tool("dbrestore", [id, "--yes", "--jobs", jobs, "--repo", repository, "--database-url", cluster.url(database: restored)],
                                      environment: smallPieces)
                XCTAssertEqual(result.status, 0, "--data-by \(dataBy) --jobs \(jobs): \(result.standardError)")
                guard result.status == 0 else { continue }
                XCTAssertEqual(try digest(restored), expected, "--data-by \(dataBy) --jobs \(jobs)")
                guard jobs == "2" else { continue }
                let selective = try tool("dbrestore", [id, "--yes", "--table", "public.docs", "--into-schema", "rescue", "--repo", repository,
                                                       "--database-url", cluster.url(database: restored)], environment: smallPieces)
                XCTAssertEqual(selective.status, 0, "--table, --data-by \(dataBy): \(selective.standardError)")
                XCTAssertEqual(try digest(restored, schema: "rescue"), expected, "--table, --data-by \(dataBy)")
            }
        }
    }

    /// Two tables of the same size load side by side, each on its own connection from its own range
    /// of the dump (`TableLanes`, with `COPY … FREEZE`): their long rows go to the server in pieces too.
    func testLongRowsOfTablesLoadedInLanesRestoreByteForByte() throws {
        let source = try cluster.createDatabase(prefix: "huge_lanes", seed: #"""
            CREATE TABLE a (id int PRIMARY KEY, body text);
            CREATE TABLE b (id int PRIMARY KEY, body text);
            INSERT INTO a SELECT g, CASE WHEN g % 500 = 0 THEN repeat(E'a\\b\n', 300000 + g) ELSE md5(g::text) END FROM generate_series(1, 2000) g;
            INSERT INTO b SELECT g, CASE WHEN g % 500 = 0 THEN repeat(E'\\.\tc', 300000 + g) ELSE md5(g::text) END FROM generate_series(1, 2000) g;
            """#)
        let backup = try tool("dbbackup", ["--database-url", cluster.url(database: source), "--repo", repository], environment: smallPieces)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let id = backup.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        let restored = "huge_lanes_restored_\(UInt32.random(in: 0...UInt32.max))"
        let result = try tool("dbrestore", [id, "--yes", "--jobs", "2", "--repo", repository, "--database-url", cluster.url(database: restored)],
                              environment: smallPieces)
        XCTAssertEqual(result.status, 0, result.standardError)
        let check = """
            SELECT (SELECT md5(string_agg(id || ':' || md5(body), ',' ORDER BY id)) FROM a)
                || (SELECT md5(string_agg(id || ':' || md5(body), ',' ORDER BY id)) FROM b)
            """
        XCTAssertEqual(try cluster.scalar(check, database: restored), try cluster.scalar(check, database: source))
        // Loaded in lanes: only a lane's COPY … FREEZE leaves every page all-frozen without a VACUUM.
        try cluster.connect(database: restored).execute(script: "CREATE EXTENSION pg_visibility")
        for table in ["a", "b"] {
            let frozen = "SELECT all_frozen = pg_relation_size('\(table)') / current_setting('block_size')::int FROM pg_visibility_map_summary('\(table)')"
            XCTAssertEqual(try cluster.scalar(frozen, database: restored), "t", "\(table) loaded in a lane")
        }
    }

    /// The restore's peak memory with a 96 MiB value against the same database with a 1 KiB one, at
    /// the default piece size: before, the value was held whole twice (the dump reader's unfinished
    /// line and the loader's run), 200 MB more; now it costs no more than a few pieces.
    func testRestoreMemoryDoesNotGrowWithTheValue() throws {
        var peaks: [Int] = []
        for size in [1 << 10, 96 << 20] {
            let (source, restored, peak) = try backupAndRestore(prefix: "huge_mem", seed: """
                CREATE TABLE docs (id int PRIMARY KEY, body text);
                INSERT INTO docs VALUES (1, repeat('x', \(size))), (2, 'small');
                CREATE TABLE others AS SELECT g AS id, md5(g::text) AS pad FROM generate_series(1, 20000) g;
                """)
            peaks.append(peak)
            let check = "SELECT string_agg(id || ':' || md5(body), ',' ORDER BY id) FROM docs"
            XCTAssertEqual(try cluster.scalar(check, database: restored), try cluster.scalar(check, database: source))
        }
        XCTAssertLessThan(peaks[1] - peaks[0], 32 * 1024, "peak RSS \(peaks[0]) KiB with a 1 KiB value, \(peaks[1]) KiB with a 96 MiB one")
    }
}
