import PostgresClient

/// Exact row counts of every user table: the numbers dumps are checked against.
public enum TableCounter {
    /// Counts the rows of every ordinary table outside the system schemas, in the connection's
    /// current snapshot (call inside the dump's REPEATABLE READ transaction for exact counts).
    ///
    /// - Returns: counts sorted by schema and table name.
    /// - Throws: `PostgresError` on any failure.
    public static func countRows(on connection: PostgresConnection) throws -> [BackupManifest.TableRowCount] {
        // Names come back hex-encoded and go back as an oid, never as text: a SQL_ASCII database may
        // hold names whose bytes no client encoding can carry (the server refuses to convert them),
        // and pg_dump backs such a database up all the same. Everywhere else the bytes are UTF-8.
        let tables = try connection.query("""
            SELECT c.oid::text,
                   pg_catalog.encode(pg_catalog.convert_to(n.nspname::text, e.name), 'hex'),
                   pg_catalog.encode(pg_catalog.convert_to(c.relname::text, e.name), 'hex')
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            CROSS JOIN (SELECT CASE pg_catalog.getdatabaseencoding() WHEN 'SQL_ASCII' THEN 'SQL_ASCII' ELSE 'UTF8' END AS name) e
            WHERE c.relkind = 'r'
              AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
              AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                              WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
            ORDER BY n.nspname, c.relname
            """)
        return try tables.rows.map { row in
            let oid = try row.string(0)
            let schema = try name(fromHex: try row.string(1)), table = try name(fromHex: try row.string(2))
            // The server quotes the name itself (format %I), so its bytes never leave it.
            let counted = try connection.query("""
                SELECT pg_catalog.query_to_xml(pg_catalog.format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, true, '')
                FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE c.oid = $1::oid
                """, [oid]).scalar ?? ""
            guard let open = counted.range(of: "<n>"), let close = counted.range(of: "</n>", range: open.upperBound..<counted.endIndex),
                  let rows = Int64(counted[open.upperBound..<close.lowerBound]) else {
                throw PostgresError(kind: .query, operation: "count the rows of \(schema).\(table)",
                                    message: "the table disappeared while it was being counted, or its count could not be read")
            }
            return BackupManifest.TableRowCount(schema: schema, name: table, rows: rows)
        }
    }

    /// A name from its bytes in hex: UTF-8 when they are (every encoding but SQL_ASCII is converted
    /// to it), else one character per byte, so that distinct names stay distinct.
    static func name(fromHex hex: String) throws -> String {
        guard let bytes = ByteText.bytes(hex: hex) else {
            throw PostgresError(kind: .protocolViolation, operation: "list the tables to count", message: "a name came back as \(hex), not hex")
        }
        return ByteText.utf8OrLatin1(bytes)
    }

    /// The current migration version from `schema_version`, if that table exists.
    ///
    /// Uses `ORDER BY applied_at DESC` when the table has that column (dbmigrate's and the
    /// runbooks' shape), else the highest version.
    public static func schemaVersion(on connection: PostgresConnection) throws -> String? {
        let columns = try connection.query("""
            SELECT a.attname FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = to_regclass('schema_version') AND a.attnum > 0 AND NOT a.attisdropped
            """).rows.compactMap { $0[0] }
        guard columns.contains("version") else { return nil }
        if columns.contains("applied_at") {
            var sql = "SELECT version::text FROM schema_version"
            if columns.contains("state") { sql += " WHERE state = 'applied'" }
            return try connection.query(sql + " ORDER BY applied_at DESC, version DESC LIMIT 1").scalar
        }
        return try connection.query("SELECT max(version)::text FROM schema_version").scalar
    }
}
