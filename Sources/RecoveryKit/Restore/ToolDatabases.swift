import Foundation
import PostgresClient

/// The databases this tool made — scratch, drill and pre-restore copies, restored targets — found
/// by the marker it sets on each, never by a name pattern (invariant 10).
///
/// The marker is a database-level setting, `dbrecovery.marker`, holding a small JSON record. It
/// lives in the shared catalogue (`pg_db_role_setting`) keyed by the database's OID, so it follows
/// the database through renames and dies with it, and it is not part of the database's contents (a
/// dump of the database does not carry it). A user database that merely looks like one of ours
/// (`app_restore_2023`) has no marker and is never touched.
///
/// Setting it needs a superuser, or `GRANT SET ON PARAMETER dbrecovery.marker TO <role>`.
enum ToolDatabases {
    /// What a marked database is.
    struct Marker: Codable, Equatable, Sendable {
        enum Kind: String, Codable, Sendable {
            /// A restore loads into it; it becomes the target at the swap.
            case scratch
            /// A drill loads into it and drops it.
            case drill
            /// The target as it was before a restore, renamed aside and kept.
            case preRestore = "pre_restore"
            /// A target a restore put in place; `backup` is where it came from.
            case restored
            /// A target this tool only closed for a swap (it carried no marker before).
            case target
        }

        var kind: Kind
        /// The database name the record is about (the restore's target).
        var target: String
        /// The backup being restored (scratch, drill), restored (restored) or that replaced it (pre_restore).
        var backup: String?
        /// When this record was written (ISO 8601, UTC).
        var at: String
        /// Set while the database is closed to connections for a swap; the next run reopens it.
        var closedForSwap: Bool? = nil
        /// The name the database had when the record was written. A marked database renamed since
        /// (an operator keeping a copy, or putting a scratch database in place by hand) is someone's
        /// decision: repair and clean-up leave it alone.
        var database: String? = nil

        init(_ kind: Kind, target: String, backup: String?, at: Date = Date()) {
            self.kind = kind
            self.target = target
            self.backup = backup
            self.at = Timestamp.format(at)
        }

        var date: Date? { Timestamp.parse(at) }

        var json: String {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            encoder.keyEncodingStrategy = .convertToSnakeCase
            // Encoding strings and a Bool cannot fail; "{}" would parse as no marker, the safe side.
            return (try? encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        }

        static func parse(_ text: String) -> Marker? {
            let decoder = JSONDecoder()
            decoder.keyDecodingStrategy = .convertFromSnakeCase
            // Text that is not our record (set by hand, another version) means "not ours": never touched.
            return try? decoder.decode(Marker.self, from: Data(text.utf8))
        }
    }

    /// One marked database.
    struct Marked: Sendable {
        var name: String
        var marker: Marker
        /// `pg_database_size`, 0 where this role may not see it: what dropping it frees.
        var sizeBytes: Int64

        /// Still under the name the tool gave it (not renamed by hand since).
        var keepsItsName: Bool { marker.database?.isSameDatabaseName(as: name) == true }
    }

    static let parameter = DatabaseProperties.markerParameter

    /// `ALTER DATABASE <name> SET dbrecovery.marker = '<json>'`, the record naming `database`.
    static func markStatement(_ database: String, _ marker: Marker, on connection: PostgresConnection) -> String {
        var named = marker
        named.database = database
        return "ALTER DATABASE \(connection.quoteIdentifier(database)) SET \(parameter) = \(SQLText.literal(named.json))"
    }

    /// `ALTER DATABASE <name> RESET dbrecovery.marker`.
    static func unmarkStatement(_ database: String, on connection: PostgresConnection) -> String {
        "ALTER DATABASE \(connection.quoteIdentifier(database)) RESET \(parameter)"
    }

    /// Every marked database on the server (optionally only those about one target).
    static func list(on connection: PostgresConnection, target: String? = nil) throws -> [Marked] {
        let rows = try connection.query("""
            SELECT d.datname::text, substr(u.entry, length($1) + 2),
                   -- the size needs CONNECT on the database (or pg_read_all_stats); unknown is 0, never an error
                   CASE WHEN pg_catalog.has_database_privilege(d.oid, 'CONNECT') OR pg_catalog.pg_has_role('pg_read_all_stats', 'USAGE')
                        THEN pg_catalog.pg_database_size(d.oid)::text END
            FROM pg_catalog.pg_db_role_setting s
            JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
            CROSS JOIN LATERAL unnest(s.setconfig) AS u(entry)
            WHERE s.setrole = 0 AND starts_with(u.entry, $1 || '=')
            ORDER BY d.datname
            """, [parameter]).rows
        return try rows.compactMap { row in
            guard let marker = Marker.parse(try row.string(1)), target.map({ marker.target.isSameDatabaseName(as: $0) }) ?? true else { return nil }
            return Marked(name: try row.string(0), marker: marker, sizeBytes: row[2].flatMap { Int64($0) } ?? 0)
        }
    }

    /// The marker of one database, if it has one.
    static func marker(of database: String, on connection: PostgresConnection) throws -> Marker? {
        let text = try connection.query("""
            SELECT substr(u.entry, length($1) + 2)
            FROM pg_catalog.pg_db_role_setting s
            JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
            CROSS JOIN LATERAL unnest(s.setconfig) AS u(entry)
            WHERE s.setrole = 0 AND d.datname = $2 AND starts_with(u.entry, $1 || '=')
            """, [parameter, database]).scalar
        return text.flatMap(Marker.parse)
    }

    /// Whether this session may set the marker (superuser, or `SET` granted on the parameter).
    ///
    /// - Throws: `RecoveryError(.databaseError)` saying what to grant.
    static func requireMarkPrivilege(on connection: PostgresConnection) throws {
        let superuser = try connection.query("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user").rows.first
        if try superuser?.bool(0) == true { return }
        let grantable = PostgresMajor(serverVersionNumber: connection.serverVersionNumber).hasParameterPrivileges
        let granted = grantable
            ? try connection.query("SELECT pg_catalog.has_parameter_privilege($1, 'SET')", [parameter]).scalar == "t" : false
        guard granted else {
            let user = try connection.query("SELECT current_user::text").scalar ?? "this role"
            throw RecoveryError(.databaseError,
                                "role \(user) may not mark the databases a restore creates (setting \(parameter)), so it could not clean them up safely",
                                hint: grantable ? "connect as a superuser, or as one run: GRANT SET ON PARAMETER \(parameter) TO \(user)"
                                    : "connect as a superuser (PostgreSQL 14 has no GRANT SET ON PARAMETER)")
        }
    }

    /// The advisory lock key of a running drill's database (`claimDrillDatabase`).
    private static func drillKey(_ database: String) -> String { "dbrestore:drill:" + database }

    /// Takes a running drill's hold on its drill database before it is created: a session-level
    /// advisory lock on the name, held until the drill's connection closes, however the process ends.
    /// Drills take no target lock (they never swap, and must not block an emergency restore), so this
    /// is how a repair tells a running drill's database from one a killed drill left.
    ///
    /// - Returns: false when another drill holds the name, or a database of that name exists: pick another.
    static func claimDrillDatabase(_ database: String, on connection: PostgresConnection) throws -> Bool {
        guard try connection.query("SELECT pg_try_advisory_lock(hashtext($1))", [drillKey(database)]).scalar == "t" else { return false }
        if try connection.query("SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1", [database]).rows.isEmpty { return true }
        _ = try connection.query("SELECT pg_advisory_unlock(hashtext($1))", [drillKey(database)])
        return false
    }

    /// Whether a drill that is still running (another session) holds `database` (`claimDrillDatabase`).
    static func drillIsRunning(_ database: String, on connection: PostgresConnection) throws -> Bool {
        try connection.query("""
            SELECT 1 FROM pg_catalog.pg_locks
            WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND pid <> pg_catalog.pg_backend_pid()
              AND objid = (hashtext($1)::bigint & 4294967295)::oid
            """, [drillKey(database)]).rows.isEmpty == false
    }

    /// How much of a repair to do.
    enum RepairScope: Sendable {
        /// Reopen closed databases and drop scratch and drill databases (a restore, `cleanup --yes`).
        case all
        /// Only reopen databases our marker says we closed: it destroys nothing, so it needs no `--yes`.
        case reopenOnly
        /// Change nothing; note what `all` would do (`--dry-run`).
        case describe
    }

    /// Undoes what a killed restore or drill of `target` left (the caller holds the target's lock, so
    /// no restore is running; a drill still running holds its database by name and is left alone):
    /// databases it closed for a swap are reopened, its scratch and drill databases dropped. Only marked databases are touched; `scope` limits what is done.
    ///
    /// - Returns: how many databases it dropped (or, `describe`, would drop).
    /// - Throws: `PostgresError` when a repair statement fails.
    @discardableResult
    static func repair(_ target: String, on connection: PostgresConnection, timeline: Timeline, scope: RepairScope = .all) throws -> Int {
        var drops = 0
        for database in try list(on: connection, target: target) {
            switch database.marker.kind {
            case .scratch, .drill:
                guard database.keepsItsName else {
                    if scope != .reopenOnly {
                        timeline.note("left \(database.name) alone", outcome: "marked as \(database.marker.kind.rawValue) database \(database.marker.database ?? "?") of \(target), renamed since")
                    }
                    continue
                }
                // A drill holds no target lock: one running now keeps its database (never dropped under it).
                if database.marker.kind == .drill, try drillIsRunning(database.name, on: connection) {
                    if scope != .reopenOnly { timeline.note("left \(database.name) alone", outcome: "the drill database of a drill of \(target) running now") }
                    continue
                }
                let what = "the \(database.marker.kind == .drill ? "drill" : "scratch") database of a restore that was killed"
                switch scope {
                case .all:
                    try DatabaseSwap.dropOwn(database.name, on: connection)
                    drops += 1
                    timeline.note("dropped \(database.name), \(what)")
                case .reopenOnly:
                    continue
                case .describe:
                    timeline.note("would drop \(database.name), \(what)")
                    drops += 1
                }
            case .target, .restored, .preRestore:
                guard database.marker.closedForSwap == true else { continue }
                if scope == .describe {
                    timeline.note("\(database.name) is closed to connections by a killed restore (its \(parameter) says closed_for_swap); cleanup reopens it, with or without --yes")
                    continue
                }
                try reopen(database.name, marker: database.marker, on: connection)
                timeline.note("reopened \(database.name) to connections (left closed by a restore that was killed during its swap)")
            }
        }
        return drops
    }

    /// Allows connections again to a database closed for a swap and clears the closed flag, in one
    /// transaction.
    ///
    /// - Parameter lockWaitSeconds: a bound on lock waits (an abandoned swap's reopening, which the
    ///   session that held up the swap may hold up too). When the flag cannot be cleared within it (that
    ///   session changed the database's settings and has not ended), the database is opened alone:
    ///   open with a stale flag is harmless, the next run's repair clears it; closed is an outage.
    static func reopen(_ database: String, marker: Marker, on connection: PostgresConnection, lockWaitSeconds: Int? = nil) throws {
        var open = marker
        open.closedForSwap = nil
        let record = marker.kind == .target ? unmarkStatement(database, on: connection) : markStatement(database, open, on: connection)
        let bound = lockWaitSeconds.map { "SET LOCAL lock_timeout = '\($0)s';\n" } ?? ""
        let allow = "ALTER DATABASE \(connection.quoteIdentifier(database)) ALLOW_CONNECTIONS true"
        do {
            try connection.execute(script: "BEGIN;\n\(bound)\(allow);\n\(record);\nCOMMIT;")
        } catch let error as PostgresError where lockWaitSeconds != nil && error.sqlState == PostgresError.lockNotAvailable {
            _ = try? connection.execute(script: "ROLLBACK")
            try connection.execute(script: "BEGIN;\n\(bound)\(allow);\nCOMMIT;")
        }
    }
}
