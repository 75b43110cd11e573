import PostgresClient

/// Exact row counts of every user table: the numbers dumps are checked against.
public enum TableCounter {
    /// Counts the rows of every ordinary table outside the system schemas, in the connection's
    /// current snapshot (call inside the dump's REPEATABLE READ transaction for exact counts).
    ///
    /// - Returns: counts sorted by schema and table name.
    /// - Throws: `PostgresError` on any failure.
    public static func countRows(on connection: PostgresConnection) throws -> [BackupManifest.TableRowCount] {
        let tables = try connection.query("""
            SELECT n.nspname, c.relname
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r'
              AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
              AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                              WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
            ORDER BY 1, 2
            """)
        return try tables.rows.map { row in
            let schema = try row.string(0), name = try row.string(1)
            let count = try connection.query(
                "SELECT count(*) FROM \(connection.quoteIdentifier(schema)).\(connection.quoteIdentifier(name))")
            return BackupManifest.TableRowCount(schema: schema, name: name, rows: Int64(count.scalar ?? "0") ?? 0)
        }
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
