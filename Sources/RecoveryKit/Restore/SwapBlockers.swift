import PostgresClient

/// What keeps a database in use: sessions and prepared transactions, and how to end each.
struct SwapBlockers {
    struct Session { var pid: String; var user: String; var application: String; var state: String }
    struct Prepared { var gid: String; var owner: String; var prepared: String }

    var sessions: [Session] = []
    var prepared: [Prepared] = []

    var isEmpty: Bool { sessions.isEmpty && prepared.isEmpty }

    /// The sessions (other than this one) and prepared transactions on `database`.
    ///
    /// - Throws: `PostgresError` if the catalogue cannot be read.
    static func find(on connection: PostgresConnection, database: String) throws -> SwapBlockers {
        var blockers = SwapBlockers()
        blockers.sessions = try connection.query("""
            SELECT pid::text, coalesce(usename::text, '?'), coalesce(nullif(application_name, ''), backend_type, '?'), coalesce(state, '?')
            FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid() ORDER BY pid
            """, [database]).rows.map { Session(pid: try $0.string(0), user: try $0.string(1), application: try $0.string(2), state: try $0.string(3)) }
        blockers.prepared = try connection.query("""
            SELECT gid, owner::text, prepared::text FROM pg_catalog.pg_prepared_xacts WHERE database = $1 ORDER BY prepared
            """, [database]).rows.map { Prepared(gid: try $0.string(0), owner: try $0.string(1), prepared: try $0.string(2)) }
        return blockers
    }

    /// Each blocker named, prepared transactions first, e.g. `prepared transaction 'tx1' (owner app, …)`.
    var description: String {
        let items = prepared.map { "prepared transaction '\($0.gid)' (owner \($0.owner), prepared \($0.prepared))" }
            + sessions.map { "session pid \($0.pid) (user \($0.user), application \($0.application), \($0.state))" }
        return items.isEmpty ? "sessions kept reconnecting" : items.joined(separator: "; ")
    }

    /// The statements an operator runs to end them.
    var endingQueries: String {
        let items = prepared.map { "ROLLBACK PREPARED \(SQLText.literal($0.gid)) (or COMMIT PREPARED, connected to the database)" }
            + sessions.map { "SELECT pg_terminate_backend(\($0.pid))" }
        return items.isEmpty ? "stop the application's connections" : items.joined(separator: "; ")
    }
}
