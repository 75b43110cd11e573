import PostgresClient

/// Whether the server a backup is taken from is a hot standby, and which timeline it is on, for
/// the manifest: a restore from a standby's backup needs WAL the primary archived, and a
/// point-in-time restore must follow the timeline the backup was taken on.
struct ServerRole: Sendable, Equatable {
    var inRecovery: Bool
    var timeline: Int

    /// A primary's timeline is that of the WAL it writes now (the checkpoint's can lag just after
    /// a promotion); a standby's is the one it receives, else that of its last restartpoint.
    static let query = """
        SELECT pg_catalog.pg_is_in_recovery(),
               CASE WHEN pg_catalog.pg_is_in_recovery()
                    THEN coalesce((SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver WHERE received_tli > 0),
                                  (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()))
                    ELSE ('x' || substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int
               END::text
        """

    /// Reads the role on `connection` (any database; works inside a read-only transaction).
    ///
    /// - Throws: `PostgresError` from the query.
    static func read(on connection: PostgresConnection) throws -> ServerRole {
        let row = try connection.query(query).rows[0]
        return ServerRole(inRecovery: row[0] == "t", timeline: Int(row[1] ?? "") ?? 1)
    }
}

/// What a backup's own statements need of the role beyond CONNECT: EXECUTE on the control-data
/// functions it reads the system identifier and timeline from (PUBLIC has it unless a hardened
/// server revoked it), and for a base backup the REPLICATION attribute pg_basebackup needs. Checked
/// before the first of those statements, so that a refusal is one line with the grant that fixes it
/// rather than the server's bare "permission denied for function".
enum BackupPrivileges {
    /// - Parameter physical: a base backup (pg_basebackup) is to be taken.
    /// - Throws: `RecoveryError(.databaseError)` naming what is missing and the GRANT / ALTER ROLE for it.
    static func require(on connection: PostgresConnection, physical: Bool) throws {
        let row = try connection.query("""
            SELECT current_user::text,
                   pg_catalog.has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')::text,
                   pg_catalog.has_function_privilege('pg_catalog.pg_control_checkpoint()', 'EXECUTE')::text,
                   (SELECT (rolreplication OR rolsuper)::text FROM pg_catalog.pg_roles WHERE rolname = current_user)
            """).rows[0]
        let user = row[0] ?? "?"
        let role = connection.quoteIdentifier(user)
        var missing: [String] = []
        var fixes: [String] = []
        let functions = [(1, "pg_control_system()", "the server's system identifier"), (2, "pg_control_checkpoint()", "its timeline")]
        for (index, function, purpose) in functions where row[index] == "false" {
            missing.append("EXECUTE on \(function) (\(purpose))")
            fixes.append("GRANT EXECUTE ON FUNCTION pg_catalog.\(function) TO \(role);")
        }
        if physical && row[3] == "false" {
            missing.append("the REPLICATION attribute (pg_basebackup streams over a replication connection)")
            fixes.append("ALTER ROLE \(role) REPLICATION; (and a pg_hba.conf line for replication connections)")
        }
        guard !missing.isEmpty else { return }
        throw RecoveryError(.databaseError, "role \(user) lacks \(missing.joined(separator: " and ")), which dbbackup\(physical ? " --physical" : "") needs",
                            hint: "as a superuser run: \(fixes.joined(separator: " ")) then run dbbackup again; nothing was stored")
    }
}
