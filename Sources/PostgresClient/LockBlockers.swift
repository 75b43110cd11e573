/// Names the sessions that make others wait for a lock, for the message of a lock timeout.
///
/// Asked right after the timeout, on a connection of its own (the timed-out transaction is aborted):
/// sessions of the same database that hold or queue an `ACCESS EXCLUSIVE` lock, the only mode that
/// blocks a plain read such as a dump or a row count, and the sessions those wait for in turn
/// (typically an `ALTER TABLE` queued behind a long transaction). Statements are shown by their leading
/// keywords and names only, never a literal (a password in `ALTER ROLE`, a value in `UPDATE … SET`).
public enum LockBlockers {
    /// One clause such as `blocked by pid 4242 (user app, application psql, waiting for AccessExclusiveLock on
    /// public.orders: ALTER TABLE orders ADD), which waits for pid 4100 (user app, idle in transaction)`.
    ///
    /// When no session holds or queues such a lock (a statement that needed a stronger lock, such as a
    /// migration's `ALTER TABLE`, waits for any holder), the oldest open transactions that hold table
    /// locks are named instead, as the likely blockers.
    ///
    /// - Parameter excluding: backend PIDs that are not suspects (the session that timed out).
    /// - Returns: nil when no such session is left, or when the server cannot be asked.
    public static func describe(target: ConnectionTarget, excluding: [Int32] = []) -> String? {
        // A diagnosis that fails must not hide the error it explains: nil means "could not tell".
        guard let connection = try? PostgresConnection(target: target.with("options", "-c lock_timeout=2000 -c statement_timeout=5000"),
                                                       applicationName: "dbrecovery-diagnosis", connectTimeoutSeconds: 5) else { return nil }
        defer { connection.close() }
        guard let holders = try? connection.query("""
            SELECT a.pid::text, coalesce(a.usename, '?'), coalesce(nullif(a.application_name, ''), '?'), coalesce(a.state, '?'),
                   l.granted::text, coalesce(l.relation::regclass::text, '?'), coalesce(a.query, ''),
                   array_to_string(pg_catalog.pg_blocking_pids(a.pid), ',')
            FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock' AND a.pid <> pg_catalog.pg_backend_pid()
              AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
            ORDER BY l.granted DESC, a.pid LIMIT 3
            """) else { return nil }
        guard !holders.rows.isEmpty else { return oldestLockHolders(on: connection, excluding: excluding) }
        var descriptions: [String] = []
        for row in holders.rows {
            let pid = row[0] ?? "?", user = row[1] ?? "?", application = row[2] ?? "?", state = row[3] ?? "?"
            let granted = row[4] == "true", relation = row[5] ?? "?", statement = statementHead(row[6] ?? "")
            let what = granted ? "holding AccessExclusiveLock on \(relation)" : "waiting for AccessExclusiveLock on \(relation)"
            var text = "pid \(pid) (user \(user), application \(application), \(state), \(what)\(statement.isEmpty ? "" : ": \(statement)"))"
            let upstream = (row[7] ?? "").split(separator: ",").map(String.init)
            if !upstream.isEmpty, let sessions = try? connection.query("""
                SELECT pid::text, coalesce(usename, '?'), coalesce(nullif(application_name, ''), '?'), coalesce(state, '?')
                FROM pg_catalog.pg_stat_activity WHERE pid = ANY($1::int[]) ORDER BY pid LIMIT 3
                """, ["{" + upstream.joined(separator: ",") + "}"]) {
                let names = sessions.rows.map { "pid \($0[0] ?? "?") (user \($0[1] ?? "?"), application \($0[2] ?? "?"), \($0[3] ?? "?"))" }
                if !names.isEmpty { text += ", which waits for " + names.joined(separator: " and ") }
            }
            descriptions.append(text)
        }
        return "blocked by " + descriptions.joined(separator: "; ")
    }

    /// The sessions that backend `pid` waits for right now (`pg_blocking_pids`), each named as
    /// `pid 4242 (user app, application psql, idle in transaction, connected to postgres, query started
    /// 2026-11-27 17:02:11 UTC: COMMENT ON DATABASE tiny)`; a prepared transaction (pid 0) as such.
    ///
    /// Asked while the statement still waits, on a connection of its own: whatever lock it is (a
    /// database object, a catalogue row, a relation), the server knows who holds or queues it.
    ///
    /// - Returns: nil when the server cannot be asked; an empty list when `pid` waits for nobody.
    public static func waitedFor(by pid: Int32, target: ConnectionTarget) -> [Blocker]? {
        guard let connection = try? PostgresConnection(target: target.with("options", "-c lock_timeout=2000 -c statement_timeout=5000"),
                                                       applicationName: "dbrecovery-diagnosis", connectTimeoutSeconds: 5) else { return nil }
        defer { connection.close() }
        guard let rows = try? connection.query("""
            SELECT b.pid::text, coalesce(a.usename::text, '?'), coalesce(nullif(a.application_name, ''), a.backend_type, '?'),
                   coalesce(a.state, '?'), coalesce(a.datname::text, '?'),
                   coalesce(to_char(a.query_start, 'YYYY-MM-DD HH24:MI:SS TZ'), '?'), coalesce(a.query, '')
            FROM unnest(pg_catalog.pg_blocking_pids($1::int)) AS b(pid)
            LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = b.pid
            ORDER BY b.pid LIMIT 5
            """, [String(pid)]).rows else { return nil }
        return rows.map { row in
            let blocker = Int32(row[0] ?? "") ?? 0
            guard blocker != 0 else {
                return Blocker(pid: 0, description: "a prepared transaction (pg_prepared_xacts names it; COMMIT PREPARED or ROLLBACK PREPARED ends it)")
            }
            let statement = statementHead(row[6] ?? "")
            return Blocker(pid: blocker, description: "pid \(blocker) (user \(row[1] ?? "?"), application \(row[2] ?? "?"), \(row[3] ?? "?"), "
                           + "connected to \(row[4] ?? "?"), query started \(row[5] ?? "?")\(statement.isEmpty ? "" : ": \(statement)"))")
        }
    }

    /// A session another one waits for (`waitedFor`): its pid (0 for a prepared transaction) and how it is named.
    public struct Blocker: Sendable, Equatable {
        public let pid: Int32
        public let description: String

        /// What an operator runs to end it; nil for a prepared transaction (the description says how).
        public var endingQuery: String? { pid == 0 ? nil : "SELECT pg_terminate_backend(\(pid))" }
    }

    /// `probably blocked by the oldest transactions holding table locks: pid 4100 (user app, application psql, idle in
    /// transaction for 00:12:03)`, or nil when there are none.
    private static func oldestLockHolders(on connection: PostgresConnection, excluding: [Int32]) -> String? {
        let excluded = "{" + excluding.map(String.init).joined(separator: ",") + "}"
        guard let rows = try? connection.query("""
            SELECT a.pid::text, coalesce(a.usename, '?'), coalesce(nullif(a.application_name, ''), '?'), coalesce(a.state, '?'),
                   to_char(now() - a.xact_start, 'HH24:MI:SS')
            FROM pg_catalog.pg_stat_activity a
            WHERE a.datname = pg_catalog.current_database() AND a.pid <> pg_catalog.pg_backend_pid()
              AND a.pid <> ALL ($1::int[]) AND a.xact_start IS NOT NULL
              AND EXISTS (SELECT 1 FROM pg_catalog.pg_locks l WHERE l.pid = a.pid AND l.locktype = 'relation' AND l.granted)
            ORDER BY a.xact_start LIMIT 2
            """, [excluded]).rows, !rows.isEmpty else { return nil }
        let names = rows.map { "pid \($0[0] ?? "?") (user \($0[1] ?? "?"), application \($0[2] ?? "?"), \($0[3] ?? "?") for \($0[4] ?? "?"))" }
        return "probably blocked by the oldest transactions holding table locks: " + names.joined(separator: " and ")
    }

    /// The first words of a statement up to the first that is not a plain keyword or name (a literal,
    /// an operator, a parameter), at most four: `ALTER TABLE orders ADD`, `UPDATE users SET`.
    public static func statementHead(_ sql: String) -> String {
        let words = sql.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" })
        let plain = words.prefix { word in word.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "." } }
        return plain.prefix(4).joined(separator: " ")
    }
}
