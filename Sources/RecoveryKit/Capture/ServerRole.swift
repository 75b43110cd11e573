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
