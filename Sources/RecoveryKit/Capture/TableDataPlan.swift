import Foundation
import PostgresClient

/// Which tables a logical backup COPYs itself instead of leaving their rows to pg_dump, and how:
/// the exact text pg_dump would write around each table's rows (its `TABLE DATA` entry), and the
/// pieces (block ranges) a big table is read in.
///
/// Read in the dump's snapshot on the exporting connection. A table whose entry could not be
/// written byte for byte as pg_dump writes it is left to pg_dump (correct first): names that are
/// not ASCII in a database whose dump is not UTF-8 (they would have to be converted), names with a
/// line break (pg_dump rewrites those in its comment lines).
struct TableDataPlan {
    /// One table whose rows the backup copies.
    struct Table: Sendable {
        var oid: String
        var schema: String
        var name: String
        /// `"Schema"."Name"` quoted as pg_dump's `fmtQualifiedDumpable` quotes it.
        var qualified: String
        /// `(a, "B")`, or empty for a table without columns to copy: non-dropped, non-generated
        /// columns in attnum order (pg_dump's `fmtCopyColumnList`).
        var columns: String
        /// pg_dump's `TABLE DATA` entry up to its rows: header comment and COPY statement.
        var entryHead: [UInt8]
        /// The statements that read it: one, or one per block range of a big heap table.
        var reads: [[UInt8]]
    }

    /// What pg_dump writes after a table's rows (`dumpTableData_copy`'s end of data and its entry's blank lines).
    static let entryTail = Array("\\.\n\n\n".utf8)

    /// In pg_dump's order of `TABLE DATA` entries (schema, then name, byte-wise).
    var tables: [Table]
    /// The dump's client encoding, as the server names it (`UTF8`, `LATIN1`, …).
    var encoding: String

    /// A big table is read in block ranges of this many pages (8 KiB each): 4 MiB, whose text fits in what a
    /// connection may queue ahead of the writer (`ParallelTableCopy`). Ranges larger than that would keep
    /// all but the connection the writer reads from waiting: one range at a time, as pg_dump reads.
    static let defaultSplitPages: Int64 = 512

    /// The split size, `DBRECOVERY_COPY_SPLIT_PAGES` (tests: split small tables) or the default.
    static func splitPages(in environment: [String: String]) -> Int64 {
        if let text = environment["DBRECOVERY_COPY_SPLIT_PAGES"], let pages = Int64(text), pages >= 1 { return pages }
        return defaultSplitPages
    }

    /// Reads the plan in the connection's current snapshot.
    ///
    /// - Parameters:
    ///   - encoding: the dump's client encoding.
    ///   - inRecovery: on a standby pg_dump never dumps an unlogged table's rows; neither do we.
    ///   - splitPages: tables of more than twice this many pages are read in ranges of it (PostgreSQL
    ///     14+: a TID range scan reads only the range's blocks).
    static func read(on connection: PostgresConnection, encoding: String, inRecovery: Bool, splitPages: Int64) throws -> TableDataPlan {
        let rows = try connection.query("""
            SELECT c.oid::text, n.nspname, c.relname, pg_catalog.pg_get_userbyid(c.relowner),
                   COALESCE((SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
                             FROM pg_catalog.pg_attribute a
                             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), ''),
                   pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname),
                   (COALESCE(am.amname, '') = 'heap')::text,
                   (pg_catalog.pg_relation_size(c.oid) / pg_catalog.current_setting('block_size')::int8)::text,
                   (c.relpersistence = 'u')::text
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
            WHERE c.relkind = 'r'
              AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
              AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                              WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
              -- pg_dump loads a partition under a table hash-partitioned on an enum key through the
              -- tree's root (an enum value hashes by its oid, which a restore assigns anew): left to it.
              AND NOT (c.relispartition AND EXISTS (
                  SELECT 1 FROM pg_catalog.pg_partition_ancestors(c.oid) a
                  JOIN pg_catalog.pg_partitioned_table p ON p.partrelid = a.relid
                  WHERE \(TableCounter.loadedThroughRoot)))
              -- Outside a UTF-8 dump, only tables whose names are ASCII (byte-wise, so that a SQL_ASCII name that is
              -- not UTF-8 is never sent to this UTF-8 session, which the server refuses): pg_dump keeps the others.
              AND ($1 = 'UTF8' OR NOT EXISTS (
                    SELECT 1 FROM (SELECT n.nspname::text UNION ALL SELECT c.relname::text UNION ALL SELECT pg_catalog.pg_get_userbyid(c.relowner)::text
                                   UNION ALL SELECT a.attname::text FROM pg_catalog.pg_attribute a
                                   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS names(name)
                    WHERE pg_catalog.encode(pg_catalog.convert_to(names.name, pg_catalog.getdatabaseencoding()), 'escape')
                          ~ (pg_catalog.repeat(pg_catalog.chr(92), 2) || '[23][0-7][0-7]')))
            ORDER BY n.nspname COLLATE "C", c.relname COLLATE "C"
            """, [encoding]).rows
        let splits = connection.serverVersionNumber >= 140000
        var tables: [Table] = []
        for row in rows {
            let (schema, name, owner, columns) = (try row.string(1), try row.string(2), try row.string(3), try row.string(4))
            if row[8] == "true" && inRecovery { continue }
            guard Self.writable([schema, name, owner, columns], encoding: encoding) else { continue }
            let qualified = try row.string(5)
            let head = "--\n-- Data for Name: \(name); Type: TABLE DATA; Schema: \(schema); Owner: \(owner)\n--\n\n"
                + "COPY \(qualified) \(columns.isEmpty ? "" : "(\(columns))") FROM stdin;\n"
            var reads = [Array("COPY \(qualified) \(columns.isEmpty ? "" : "(\(columns)) ")TO stdout;".utf8)]
            let pages = Int64(row[7] ?? "") ?? 0
            if splits && row[6] == "true" && !columns.isEmpty && pages > 2 * splitPages {
                // Block ranges in block order; the last one is open-ended, so a row is read exactly once
                // wherever it lies. Concatenated, they are the rows of one sequential scan, in its order.
                reads = stride(from: Int64(0), to: pages, by: Int(splitPages)).map { start in
                    let end = start + splitPages
                    let upper = end < pages ? " AND ctid < '(\(end),0)'::pg_catalog.tid" : ""
                    return Array("COPY (SELECT \(columns) FROM ONLY \(qualified) WHERE ctid >= '(\(start),0)'::pg_catalog.tid\(upper)) TO stdout;".utf8)
                }
            }
            tables.append(Table(oid: try row.string(0), schema: schema, name: name, qualified: qualified, columns: columns,
                                entryHead: Array(head.utf8), reads: reads))
        }
        return TableDataPlan(tables: tables, encoding: encoding)
    }

    /// Whether these names are the same bytes in the dump's encoding as in UTF-8 (this connection's),
    /// and pg_dump writes them into its comment lines unchanged.
    private static func writable(_ names: [String], encoding: String) -> Bool {
        names.allSatisfy { name in
            !name.contains("\n") && !name.contains("\r") && (encoding == "UTF8" || name.utf8.allSatisfy { $0 < 0x80 })
        }
    }

    /// pg_dump's `--exclude-table-data` for each table copied here: double-quoted, so the pattern
    /// matches that one table exactly (inside quotes pg_dump's patterns take every character literally).
    var pgDumpExclusions: [String] {
        tables.map { "--exclude-table-data=\(Self.exactPattern($0.schema)).\(Self.exactPattern($0.name))" }
    }

    private static func exactPattern(_ name: String) -> String {
        "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    /// `LOCK TABLE` of every copied table in ACCESS SHARE mode, as pg_dump locks what it dumps: taken in
    /// the snapshot's transaction before pg_dump starts, held until the backup ends, so no table changes
    /// shape (or goes) before its rows are read. Nil when there is nothing to lock.
    var lockStatement: String? {
        tables.isEmpty ? nil : "LOCK TABLE " + tables.map { "ONLY \($0.qualified)" }.joined(separator: ", ") + " IN ACCESS SHARE MODE"
    }

    /// The session pg_dump's `setup_connection` makes, so that every value is written as pg_dump writes
    /// it (one script, run once per connection).
    static func sessionSettings(serverVersion: Int) -> String {
        var statements = [
            "SET DATESTYLE = ISO", "SET INTERVALSTYLE = POSTGRES", "SET extra_float_digits TO 3", "SET synchronize_seqscans TO off",
            "SET statement_timeout = 0", "SET idle_in_transaction_session_timeout = 0", "SET row_security = off",
            "SELECT pg_catalog.set_config('search_path', '', false)",
        ]
        if serverVersion >= 170000 { statements.append("SET transaction_timeout = 0") }
        return statements.joined(separator: ";\n")
    }

    /// A transaction in the dump's snapshot (REPEATABLE READ, READ ONLY, as pg_dump's own), one per
    /// read: each read's table lock is let go at its COMMIT, so a connection holds one table's lock at
    /// most (the snapshot's own connection holds them all until the backup ends). Each string is sent
    /// on its own (a script of several statements is one implicit transaction).
    static func snapshotTransaction(_ snapshot: String) -> [String] {
        ["BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", "SET TRANSACTION SNAPSHOT '\(snapshot.replacingOccurrences(of: "'", with: "''"))'"]
    }
}
