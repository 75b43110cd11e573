import PostgresClient

/// Exact row counts of every user table: the numbers dumps are checked against.
///
/// Every count is a table's own rows and those of its inheritance descendants that hold rows in this
/// database — `count(*)` but for a descendant that is a foreign table, whose rows stay on the remote
/// server: neither dumped nor restored, and free to change under a backup that must still restore.
/// What a restored database answers, and what `RowCountVerifier` compares. A backup takes them from
/// its dump's COPY blocks (`rows(from:…)`); `countRows(on:)` scans each table (`FROM ONLY`) once.
public enum TableCounter {
    /// An ordinary table the counts cover, as the catalogue lists it.
    struct Table {
        var oid: String
        /// The names as the manifest records them (UTF-8, or one character per byte in SQL_ASCII).
        var schema: String
        var name: String
        /// The names' bytes in the dump's encoding: how a COPY header spells them, unquoted.
        var dumpName: CopyName
        var unlogged: Bool
        /// The oids of its inheritance children, direct ones only (a partitioned table, whose
        /// children are its partitions, is not an ordinary table and is not listed).
        var children: [String] = []
    }

    /// A table's name as bytes, schema and table.
    struct CopyName: Hashable {
        var schema: [UInt8]
        var name: [UInt8]
    }

    /// Counts the rows of every ordinary table outside the system schemas, in the connection's
    /// current snapshot (call inside the dump's REPEATABLE READ transaction for exact counts).
    ///
    /// - Returns: counts sorted by schema and table name.
    /// - Throws: `PostgresError` on any failure.
    public static func countRows(on connection: PostgresConnection) throws -> [BackupManifest.TableRowCount] {
        try totals(of: try tables(on: connection)) { try count($0, on: connection) }
    }

    /// The counts of `tables` from each one's own rows (`own`, asked once per table): a table's own
    /// rows plus those of every descendant in `tables` (a foreign child is not listed, so not counted).
    static func totals(of tables: [Table], own: (Table) throws -> Int64) throws -> [BackupManifest.TableRowCount] {
        var rows: [String: Int64] = [:]
        for table in tables { rows[table.oid] = try own(table) }
        let byOid = Dictionary(tables.map { ($0.oid, $0) }, uniquingKeysWith: { first, _ in first })
        func total(_ oid: String, seen: Set<String>) -> Int64 {
            guard let table = byOid[oid], !seen.contains(oid) else { return 0 }
            return table.children.reduce(rows[oid] ?? 0) { $0 + total($1, seen: seen.union([oid])) }
        }
        return tables.map { BackupManifest.TableRowCount(schema: $0.schema, name: $0.name, rows: total($0.oid, seen: [])) }
    }

    /// The tables counts are kept for: ordinary tables outside the system schemas that no extension
    /// owns (an extension's tables come with it; the manifest never claimed their rows), sorted by
    /// schema and table name.
    ///
    /// - Parameter dumpEncoding: the dump's `client_encoding`, for `Table.dumpName` (default: the database's).
    static func tables(on connection: PostgresConnection, dumpEncoding: String? = nil) throws -> [Table] {
        // Names come back hex-encoded and go back as an oid, never as text: a SQL_ASCII database may
        // hold names whose bytes no client encoding can carry (the server refuses to convert them),
        // and pg_dump backs such a database up all the same. Everywhere else the bytes are UTF-8.
        let rows = try connection.query("""
            SELECT c.oid::text,
                   pg_catalog.encode(pg_catalog.convert_to(n.nspname::text, e.name), 'hex'),
                   pg_catalog.encode(pg_catalog.convert_to(c.relname::text, e.name), 'hex'),
                   pg_catalog.encode(pg_catalog.convert_to(n.nspname::text, de.name), 'hex'),
                   pg_catalog.encode(pg_catalog.convert_to(c.relname::text, de.name), 'hex'),
                   (c.relpersistence = 'u')::text,
                   (SELECT pg_catalog.string_agg(i.inhrelid::text, ' ') FROM pg_catalog.pg_inherits i WHERE i.inhparent = c.oid)
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            CROSS JOIN (SELECT CASE pg_catalog.getdatabaseencoding() WHEN 'SQL_ASCII' THEN 'SQL_ASCII' ELSE 'UTF8' END AS name) e
            CROSS JOIN (SELECT COALESCE($1, pg_catalog.getdatabaseencoding()) AS name) de
            WHERE c.relkind = 'r'
              AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
              AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                              WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
            ORDER BY n.nspname, c.relname
            """, [dumpEncoding]).rows
        return try rows.map { row in
            Table(oid: try row.string(0), schema: try name(fromHex: try row.string(1)), name: try name(fromHex: try row.string(2)),
                  dumpName: CopyName(schema: try bytes(fromHex: try row.string(3)), name: try bytes(fromHex: try row.string(4))),
                  unlogged: row[5] == "true", children: (row[6] ?? "").split(separator: " ").map(String.init))
        }
    }

    /// pg_dump's rule for a partitioned table `p` (a `pg_partitioned_table` row) whose partitions it
    /// loads through the tree's root: hash partitioning on an enum key (`enum_ops`). One SQL condition,
    /// for the backup's copied tables (`TableDataPlan`) and the restore's row counts (`rerouted`).
    static let loadedThroughRoot = """
        p.partstrat = 'h' AND EXISTS (
            SELECT 1 FROM pg_catalog.pg_opclass eo JOIN pg_catalog.pg_am eam ON eam.oid = eo.opcmethod
            WHERE eo.oid = ANY (p.partclass::pg_catalog.oid[]) AND eo.opcname = 'enum_ops' AND eam.amname = 'hash'
              AND eo.opcnamespace = 'pg_catalog'::pg_catalog.regnamespace)
        """

    /// Partitions whose rows a restore may put into another partition of the same tree, keyed by the
    /// partition's (schema, name), with the tree's root: pg_dump loads every partition under a table
    /// hash-partitioned on an enum key through the root (an enum value hashes by its oid, which a
    /// restore assigns anew), so only the tree's total is the backup's.
    static func rerouted(on connection: PostgresConnection) throws -> [DumpTableOfContents.Name: DumpTableOfContents.Name] {
        let rows = try connection.query("""
            WITH unsafe AS (
                SELECT DISTINCT pg_catalog.pg_partition_root(p.partrelid) AS root
                FROM pg_catalog.pg_partitioned_table p
                WHERE \(loadedThroughRoot))
            SELECT pg_catalog.encode(pg_catalog.convert_to(n.nspname::text, e.name), 'hex'),
                   pg_catalog.encode(pg_catalog.convert_to(c.relname::text, e.name), 'hex'),
                   pg_catalog.encode(pg_catalog.convert_to(rn.nspname::text, e.name), 'hex'),
                   pg_catalog.encode(pg_catalog.convert_to(r.relname::text, e.name), 'hex')
            FROM unsafe u
            CROSS JOIN LATERAL pg_catalog.pg_partition_tree(u.root) t
            JOIN pg_catalog.pg_class c ON c.oid = t.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_catalog.pg_class r ON r.oid = u.root JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
            CROSS JOIN (SELECT CASE pg_catalog.getdatabaseencoding() WHEN 'SQL_ASCII' THEN 'SQL_ASCII' ELSE 'UTF8' END AS name) e
            WHERE t.level > 0
            """).rows
        var partitions: [DumpTableOfContents.Name: DumpTableOfContents.Name] = [:]
        for row in rows {
            let partition = DumpTableOfContents.Name(schema: try name(fromHex: try row.string(0)), name: try name(fromHex: try row.string(1)))
            partitions[partition] = .init(schema: try name(fromHex: try row.string(2)), name: try name(fromHex: try row.string(3)))
        }
        return partitions
    }

    /// The rows of one table itself (`count(*) FROM ONLY`, its descendants left out), found by its oid.
    static func count(_ table: Table, on connection: PostgresConnection) throws -> Int64 {
        // The server quotes the name itself (format %I), so its bytes never leave it.
        let counted = try connection.query("""
            SELECT pg_catalog.query_to_xml(pg_catalog.format('SELECT count(*) AS n FROM ONLY %I.%I', n.nspname, c.relname), false, true, '')
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = $1::oid
            """, [table.oid]).scalar ?? ""
        guard let open = counted.range(of: "<n>"), let close = counted.range(of: "</n>", range: open.upperBound..<counted.endIndex),
              let rows = Int64(counted[open.upperBound..<close.lowerBound]) else {
            throw PostgresError(kind: .query, operation: "count the rows of \(table.schema).\(table.name)",
                                message: "the table disappeared while it was being counted, or its count could not be read")
        }
        return rows
    }

    /// The manifest's counts from the rows the dump's COPY blocks hold, in the dump's snapshot
    /// (`connection` must still be in it: the table list is read there, without scanning a table).
    ///
    /// A table the list holds but the dump has no rows for is an error — it would restore empty —
    /// except an unlogged table on a standby, whose rows pg_dump never dumps there (recorded as 0,
    /// what the restore gives, with a note). A dump that could not be read (`copies` nil) is counted with `count(*)` throughout, noted.
    ///
    /// - Parameters:
    ///   - inRecovery: whether the server is a standby.
    ///   - note: told why a table's count is not the dump's own (one line each).
    /// - Throws: `RecoveryError(.toolFailed)` for a table the dump left out; `PostgresError`.
    static func rows(from copies: CopyRowCounts?, on connection: PostgresConnection, inRecovery: Bool,
                     note: (String) -> Void) throws -> [BackupManifest.TableRowCount] {
        guard let copies else {
            note("row counts taken with count(*) in the dump's snapshot, a second scan of every table: the dump could not be read")
            return try countRows(on: connection)
        }
        let tables = try tables(on: connection, dumpEncoding: copies.encoding)
        var copied: [CopyName: Int64] = [:]
        for block in copies.blocks { copied[CopyName(schema: block.schema, name: block.name), default: 0] += block.rows }
        // Own rows by oid: what each table's COPY block loads.
        var own: [String: Int64] = [:]
        for table in tables {
            if let rows = copied[table.dumpName] {
                own[table.oid] = rows
            } else if table.unlogged && inRecovery {
                note("\(table.schema).\(table.name) is recorded with 0 rows: pg_dump does not dump an unlogged table's rows from a standby, "
                     + "so a restore creates it empty")
                own[table.oid] = 0
            } else {
                let unreadable = copies.unreadable.isEmpty ? "" : " (COPY statements it could not read: \(copies.unreadable.prefix(3).joined(separator: "; ")))"
                throw RecoveryError(.toolFailed, "pg_dump wrote no rows for table \(table.schema).\(table.name), which its snapshot holds\(unreadable); "
                                        + "a restore would create it empty, so nothing was stored",
                                    hint: "check that nothing changes pg_dump's output (a wrapper in --pg-bin, PGOPTIONS), then report it with the pg_dump version")
            }
        }
        return try totals(of: tables) { own[$0.oid] ?? 0 }
    }

    /// `dbbackup --count-check`: the dump's counts against `count(*)` in the same snapshot.
    ///
    /// - Throws: `RecoveryError(.verificationMismatch)` naming the first tables that differ.
    static func crossCheck(_ fromDump: [BackupManifest.TableRowCount], against counted: [BackupManifest.TableRowCount], backupID: String,
                           database: String) throws {
        let report = RowCountVerifier.compare(expected: fromDump, actual: counted, backupID: backupID, database: database)
        guard report.ok else {
            throw RecoveryError(.verificationMismatch, "backup \(backupID): the rows pg_dump wrote differ from count(*) in the same snapshot "
                                    + "(expected: the dump's, found: count(*)): \(report.summary); nothing was stored",
                                hint: "report it with the pg_dump and server versions; the database itself was not changed")
        }
    }

    /// A name from its bytes in hex: UTF-8 when they are (every encoding but SQL_ASCII is converted
    /// to it), else one character per byte, so that distinct names stay distinct.
    static func name(fromHex hex: String) throws -> String {
        ByteText.utf8OrLatin1(try bytes(fromHex: hex))
    }

    private static func bytes(fromHex hex: String) throws -> [UInt8] {
        guard let bytes = ByteText.bytes(hex: hex) else {
            throw PostgresError(kind: .protocolViolation, operation: "list the tables to count", message: "a name came back as \(hex), not hex")
        }
        return bytes
    }

    /// The current migration version from `schema_version`, if that table exists.
    ///
    /// Uses `ORDER BY applied_at DESC` when the table has that column (dbmigrate's and the
    /// runbooks' shape), else the highest version.
    public static func schemaVersion(on connection: PostgresConnection) throws -> String? {
        let columns = try self.columns(of: "schema_version", on: connection)
        guard columns.contains("version") else { return nil }
        if columns.contains("applied_at") {
            var sql = "SELECT version::text FROM schema_version"
            if columns.contains("state") { sql += " WHERE state = 'applied'" }
            return try connection.query(sql + " ORDER BY applied_at DESC, version DESC LIMIT 1").scalar
        }
        return try connection.query("SELECT max(version)::text FROM schema_version").scalar
    }

    /// The application releases the database's state is by dbmigrate's log (`schema_version_log`), if that
    /// table exists with dbmigrate's columns; read in the dump's snapshot, so checked first (a failed
    /// statement would end the snapshot's transaction).
    public static func runningReleases(on connection: PostgresConnection) throws -> [String]? {
        let columns = try self.columns(of: MigrationRunner.logTable, on: connection)
        guard ["id", "version", "action", "release"].allSatisfy(columns.contains) else { return nil }
        return MigrationPlanner.runningReleases(log: try MigrationLogEntry.all(in: MigrationRunner.logTable, on: connection))
    }

    /// The columns of `table` (found by the search path), none when there is no such table: checked
    /// before reading it in the dump's snapshot, where a failed statement would end the transaction.
    private static func columns(of table: String, on connection: PostgresConnection) throws -> [String] {
        try connection.query("""
            SELECT a.attname FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
            """, [table]).rows.compactMap { $0[0] }
    }
}
