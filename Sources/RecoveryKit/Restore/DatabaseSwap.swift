import Foundation
import PostgresClient
import ProcessSignals

/// The server-side steps around the replay: create the scratch database as the source was (encoding,
/// locale), give it the source's properties, and swap it in place of the target.
enum DatabaseSwap {
    typealias Marker = ToolDatabases.Marker

    // MARK: - Scratch database

    /// Creates and marks the scratch (or drill) database with the backup's encoding and locale.
    ///
    /// - Throws: `RecoveryError(.restoreFailed)` when the server cannot create it that way (a locale
    ///   it lacks); `PostgresError` otherwise.
    static func createScratch(_ name: String, marker: Marker, properties: DatabaseProperties?, on admin: PostgresConnection) throws {
        var sql = "CREATE DATABASE \(admin.quoteIdentifier(name)) TEMPLATE template0"
        if let properties {
            sql += " ENCODING \(SQLText.literal(properties.encoding)) LC_COLLATE \(SQLText.literal(properties.collate))"
                + " LC_CTYPE \(SQLText.literal(properties.ctype))"
            let major = PostgresMajor(serverVersionNumber: admin.serverVersionNumber)
            if major.hasLocaleProvider {
                sql += " LOCALE_PROVIDER \(admin.quoteIdentifier(properties.localeProvider))"
                if let locale = properties.providerLocale, properties.localeProvider != "libc" {
                    sql += (properties.localeProvider == "builtin" ? " BUILTIN_LOCALE " : " ICU_LOCALE ") + SQLText.literal(locale)
                }
            }
            if let rules = properties.icuRules, major.hasICURules { sql += " ICU_RULES " + SQLText.literal(rules) }
        }
        do {
            try admin.execute(script: sql)
        } catch let error as PostgresError where error.kind == .query {
            // Only a refusal of the encoding or locale is the locale's fault; a full disk, a missing
            // privilege or a name taken is reported as the server said it.
            guard let properties, Self.isLocaleRefusal(error) else { throw error }
            throw RecoveryError(.restoreFailed,
                                "cannot create \(name) as the backup's database was (encoding \(properties.encoding), locale \(properties.collate)/\(properties.ctype), provider \(properties.localeProvider)): \(error.message)",
                                hint: "install that locale on the database server (locale -a lists them); the target database was not touched",
                                serverState: error.sqlState)
        }
        do {
            try admin.execute(script: ToolDatabases.markStatement(name, marker, on: admin))
        } catch {
            // Unmarked, nothing would ever clean it up: drop it now while we know it is ours.
            _ = try? dropOwn(name, on: admin)  // the marking error is the one to report
            throw error
        }
    }

    /// Drops a database of ours: one this run created, or a marked leftover of a killed run
    /// (`WITH (FORCE)`: our own loader sessions may linger). Two refusals are passing, and the drop
    /// is tried again: a signal's cancel request can reach the server just after the statement it
    /// was meant for ended and cancel this one instead (57014), and a loader session of ours still
    /// connecting when FORCE ends the others makes the server call the database in use (55006).
    ///
    /// After a signal the operator waits for the exit, so a lock another session holds on the database
    /// (an open transaction after `COMMENT ON DATABASE`) is waited for `reopenLockWaitSeconds`, not
    /// `--lock-wait`: a database left marked is dropped by the next run.
    static func dropOwn(_ name: String, on admin: PostgresConnection) throws {
        let bounded = Interruption.isRequested
        if bounded { _ = try? admin.execute(script: "SET lock_timeout = '\(reopenLockWaitSeconds)s'") }
        defer { if bounded { _ = try? admin.execute(script: "RESET lock_timeout") } }
        try ServerRetry.run(on: [PostgresError.queryCanceled, PostgresError.objectInUse], attempts: 5, pause: 0.1, afterInterruption: true) {
            try admin.execute(script: "DROP DATABASE IF EXISTS \(admin.quoteIdentifier(name)) WITH (FORCE)")
        }
    }

    /// Whether CREATE DATABASE was refused for its encoding, locale or locale provider: an invalid
    /// locale name (42809), an encoding that does not match it or an unknown ICU locale (22023), a
    /// provider this build lacks (0A000).
    static func isLocaleRefusal(_ error: PostgresError) -> Bool {
        ["42809", "22023", "0A000"].contains(error.sqlState ?? "")
            || ["locale", "collation", "encoding", "ICU"].contains { error.message.contains($0) }
    }

    // MARK: - Database properties

    /// Gives `database` the recorded owner, privileges, comment, settings and connection limit.
    ///
    /// Roles that do not exist on this server are skipped, each with a warning (a backup restored
    /// into another cluster), and so are settings the server does not know or this role may not set;
    /// anything else that fails (owner, privileges, comment, limit) stops the restore before the swap.
    ///
    /// - Returns: warnings naming what was not applied.
    /// - Throws: `PostgresError` when the server refuses a statement.
    static func apply(_ properties: DatabaseProperties, to database: String, on admin: PostgresConnection) throws -> [String] {
        let quoted = admin.quoteIdentifier(database)
        let wanted = Set([properties.owner] + (properties.privileges ?? []).compactMap(\.grantee) + properties.roleSettings.map(\.role))
        let present = Set(try admin.query("SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname::text = ANY($1::text[])",
                                          [SQLText.arrayLiteral(wanted.sorted())]).rows.compactMap { $0[0] })
        var warnings: [String] = []
        var statements: [String] = []
        var owner = try admin.query("SELECT pg_catalog.pg_get_userbyid(datdba)::text FROM pg_catalog.pg_database WHERE datname = $1", [database]).scalar ?? ""
        if present.contains(properties.owner) {
            if owner != properties.owner { statements.append("ALTER DATABASE \(quoted) OWNER TO \(admin.quoteIdentifier(properties.owner))") }
            owner = properties.owner
        } else {
            warnings.append("owner \(properties.owner) does not exist on this server; \(database) stays owned by \(owner)")
        }
        if let privileges = properties.privileges {
            statements.append("REVOKE ALL ON DATABASE \(quoted) FROM PUBLIC")
            statements.append("REVOKE ALL ON DATABASE \(quoted) FROM \(admin.quoteIdentifier(owner))")
            let byGrantee = Dictionary(grouping: privileges) { GranteeKey(role: $0.grantee, grantable: $0.grantable) }
            for (key, grants) in byGrantee.sorted(by: { ($0.key.role ?? "", $0.key.grantable ? 1 : 0) < ($1.key.role ?? "", $1.key.grantable ? 1 : 0) }) {
                if let role = key.role, !present.contains(role) {
                    warnings.append("privileges of role \(role) not restored: the role does not exist on this server")
                    continue
                }
                let list = grants.map(\.privilege).sorted().joined(separator: ", ")
                let grantee = key.role.map(admin.quoteIdentifier) ?? "PUBLIC"
                statements.append("GRANT \(list) ON DATABASE \(quoted) TO \(grantee)\(key.grantable ? " WITH GRANT OPTION" : "")")
            }
        }
        if let comment = properties.comment { statements.append("COMMENT ON DATABASE \(quoted) IS \(SQLText.literal(comment))") }
        if properties.connectionLimit != -1 { statements.append("ALTER DATABASE \(quoted) CONNECTION LIMIT \(properties.connectionLimit)") }
        for statement in statements { try admin.execute(script: statement) }
        for entry in properties.settings {
            try applySetting("ALTER DATABASE \(quoted) SET \(try settingClause(entry, on: admin))", entry: entry, on: admin, warnings: &warnings)
        }
        for role in properties.roleSettings {
            guard present.contains(role.role) else {
                warnings.append("settings of role \(role.role) in \(database) not restored: the role does not exist on this server")
                continue
            }
            for entry in role.settings {
                try applySetting("ALTER ROLE \(admin.quoteIdentifier(role.role)) IN DATABASE \(quoted) SET \(try settingClause(entry, on: admin))",
                                 entry: "\(entry) for role \(role.role)", on: admin, warnings: &warnings)
            }
        }
        return warnings
    }

    /// Runs one `… SET` statement. A parameter this server does not know (42704, e.g. one removed in
    /// a newer PostgreSQL) or one this role may not set (42501: a superuser-only parameter, another
    /// role's settings without CREATEROLE) becomes a warning naming it rather than a refused restore,
    /// as it would be an error line in a psql replay.
    private static func applySetting(_ statement: String, entry: String, on admin: PostgresConnection, warnings: inout [String]) throws {
        do {
            try admin.execute(script: statement)
        } catch let error as PostgresError where error.sqlState == "42704" || error.sqlState == "42501" {
            warnings.append("setting \(entry) not restored: \(error.message)" + (error.sqlState == "42501" ? " (restore as a superuser to keep it)" : ""))
        }
    }

    private struct GranteeKey: Hashable {
        var role: String?
        var grantable: Bool
    }

    /// `name TO value` for one `name=value` entry of `pg_db_role_setting`, written as pg_dump
    /// writes it: list-valued settings (`search_path`, …) as one literal per element.
    static func settingClause(_ entry: String, on connection: PostgresConnection) throws -> String {
        guard let equals = entry.firstIndex(of: "=") else {
            throw RecoveryError(.backupCorrupt, "database setting '\(entry)' in the manifest has no value")
        }
        let name = String(entry[..<equals]), value = String(entry[entry.index(after: equals)...])
        let listQuoted: Set<String> = ["local_preload_libraries", "search_path", "session_preload_libraries",
                                       "shared_preload_libraries", "temp_tablespaces", "unix_socket_directories"]
        let rendered = listQuoted.contains(name.lowercased())
            ? splitSettingList(value).map(SQLText.literal).joined(separator: ", ") : SQLText.literal(value)
        return "\(connection.quoteIdentifier(name)) TO \(rendered.isEmpty ? "''" : rendered)"
    }

    /// Splits a list-valued setting as PostgreSQL's `SplitGUCList` does: comma-separated,
    /// double-quoted elements keep their commas and spaces (`""` is a quote).
    static func splitSettingList(_ value: String) -> [String] {
        var elements: [String] = []
        var characters = Array(value)[...]
        func skipSpaces() { while let first = characters.first, first.isWhitespace { characters.removeFirst() } }
        skipSpaces()
        while !characters.isEmpty {
            var element = ""
            if characters.first == "\"" {
                characters.removeFirst()
                while let character = characters.first {
                    characters.removeFirst()
                    if character == "\"" {
                        if characters.first == "\"" { characters.removeFirst(); element.append("\"") } else { break }
                    } else {
                        element.append(character)
                    }
                }
            } else {
                while let character = characters.first, character != ",", !character.isWhitespace {
                    element.append(character)
                    characters.removeFirst()
                }
            }
            elements.append(element)
            skipSpaces()
            if characters.first == "," { characters.removeFirst() }
            skipSpaces()
        }
        return elements
    }

    // MARK: - Swap

    /// Puts `scratch` in the place of `target`, keeping the current target as `keepAs`.
    ///
    /// The target is closed to new connections (and marked closed, in the same transaction), its
    /// sessions are ended, and the renames, the markers and the reopening of the kept copy commit as
    /// one transaction. Sessions that do not end within `timeout` (a prepared transaction, a session
    /// this role may not terminate) stop the swap with a message naming each and how to end it.
    /// SIGINT, SIGTERM and SIGHUP are held off while the target is closed: the swap is abandoned
    /// (or, if it already committed, finished) and the target is open before the signal is acted on.
    /// Every statement runs under a `SwapWatch`: one waiting for a lock another session holds (an open
    /// transaction after `COMMENT ON DATABASE` or `ALTER DATABASE … SET`) is cancelled by the held-off
    /// signal or when `timeout` has passed since the swap began, and the sessions it waits for are named.
    ///
    /// - Important: on every way out — error, timeout, signal — the target accepts connections again.
    ///   After a SIGKILL, the marker tells the next run to reopen it (`ToolDatabases.repair`).
    /// - Throws: `RecoveryError(.restoreFailed)` (sessions did not end), `.lockTimeout` (a lock wait
    ///   outlasted `timeout`), `.interrupted`, or `PostgresError`.
    static func swap(admin: PostgresConnection, target: String, scratch: String, keepAs: String?, backupID: String,
                     allowConnections: Bool, timeout: TimeInterval, timeline: Timeline) throws {
        let quotedTarget = admin.quoteIdentifier(target), quotedScratch = admin.quoteIdentifier(scratch)
        let restored = ToolDatabases.markStatement(target, Marker(.restored, target: target, backup: backupID), on: admin)
        let closeRestored = allowConnections ? "" : "ALTER DATABASE \(quotedTarget) ALLOW_CONNECTIONS false;\n"
        guard let keepAs else {
            // Signals are not held off here: the interrupt hook cancels the rename; the watch bounds its lock wait.
            let watch = SwapWatch(target: target, timeout: timeout, signal: { Interruption.signal })
            do {
                try watch.run(on: admin) {
                    try admin.execute(script: "BEGIN;\nALTER DATABASE \(quotedScratch) RENAME TO \(quotedTarget);\n\(restored);\n\(closeRestored)COMMIT;")
                }
            } catch {
                _ = try? admin.execute(script: "ROLLBACK")  // the scratch database's DROP comes next and needs no open transaction
                throw error
            }
            return
        }
        let quotedAside = admin.quoteIdentifier(keepAs)
        try Interruption.deferring { signals in
            let watch = SwapWatch(target: target, timeout: timeout, signal: { signals.received })
            func abandonedBySignal() -> RecoveryError? {
                signals.received.map { RecoveryError(.interrupted, "interrupted by \(Interruption.name(of: $0)) during the swap; \(target) is unchanged and open",
                                                     hint: "run dbrestore again to restore") }
            }
            if let abandoned = abandonedBySignal() { throw abandoned }
            let closed: Marker
            do {
                closed = try watch.run(on: admin) { () throws -> Marker in
                    var closed = try ToolDatabases.marker(of: target, on: admin) ?? Marker(.target, target: target, backup: nil)
                    closed.closedForSwap = true
                    // New connections are refused first, so that ending sessions is not a race we lose; the marker
                    // commits with it, so a kill from here on is repaired by the next run. A 23505 is the server's
                    // race on the target's first setting: another session's `ALTER DATABASE … SET`, waited for,
                    // committed the settings row ours was about to insert; run again, it updates that row.
                    try ServerRetry.run(on: [Self.uniqueViolation], attempts: 3, pause: 0.1,
                                        again: { _, _ in _ = try? admin.execute(script: "ROLLBACK") }) {
                        try admin.execute(script: """
                            BEGIN;
                            ALTER DATABASE \(quotedTarget) ALLOW_CONNECTIONS false;
                            \(ToolDatabases.markStatement(target, closed, on: admin));
                            COMMIT;
                            """)
                    }
                    return closed
                }
            } catch {
                _ = try? admin.execute(script: "ROLLBACK")  // the close did not commit: the target was never closed
                throw error
            }
            CrashPoint.reached("restore:during-swap")
            do {
                // The client sessions the swap ended, said in the timeline (and so the incident record): an
                // application's open transaction on the target is rolled back by it.
                var ended: [String: String] = [:]
                while true {
                    if let abandoned = abandonedBySignal() { throw abandoned }
                    var blockers = SwapBlockers()
                    let swapped = try watch.run(on: admin) { () throws -> Bool in
                        // pg_terminate_backend in the select list: it runs only for the rows WHERE kept (in
                        // WHERE the planner may call it before the other conditions, on this session too).
                        for row in try admin.query("""
                            SELECT pid::text, format('pid %s (%s, %s%s)', pid, usename, coalesce(nullif(application_name, ''), 'no application name'),
                                                     CASE WHEN xact_start IS NOT NULL THEN ', in a transaction' ELSE '' END),
                                   pg_catalog.pg_terminate_backend(pid)::text
                            FROM pg_catalog.pg_stat_activity
                            WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()
                            """, [target]).rows where row[2] == "true" {
                            if let pid = row[0], let text = row[1] { ended[pid] = text }
                        }
                        blockers = try SwapBlockers.find(on: admin, database: target)
                        guard blockers.isEmpty else { return false }
                        do {
                            try admin.execute(script: """
                                BEGIN;
                                ALTER DATABASE \(quotedTarget) RENAME TO \(quotedAside);
                                ALTER DATABASE \(quotedScratch) RENAME TO \(quotedTarget);
                                ALTER DATABASE \(quotedAside) ALLOW_CONNECTIONS true;
                                \(ToolDatabases.markStatement(keepAs, Marker(.preRestore, target: target, backup: backupID), on: admin));
                                \(restored);
                                \(closeRestored)COMMIT;
                                """)
                            return true
                        } catch let error as PostgresError where error.sqlState == PostgresError.objectInUse {
                            // "being accessed by other users": a session connected between the check and the rename.
                            _ = try? admin.execute(script: "ROLLBACK")  // the 55006 is what matters; the loop tries again
                            return false
                        }
                    }
                    if swapped {
                        if !ended.isEmpty {
                            timeline.note("ended \(ended.count) session\(ended.count == 1 ? "" : "s") on \(target): "
                                          + ended.values.sorted().joined(separator: ", "))
                        }
                        // The statement completed, so the commit came before the cancel the signal sent could stop it.
                        if let signal = signals.received {
                            timeline.note("\(Interruption.name(of: signal)) arrived as the swap committed; the restore is complete")
                        }
                        return
                    }
                    if watch.expired {
                        throw RecoveryError(.restoreFailed,
                                            "sessions on \(target) did not end within \(Int(timeout)) s, so it was not swapped: \(blockers.description)",
                                            hint: "\(target) is unchanged and open again; end them with: \(blockers.endingQueries) — then run again (or raise --swap-timeout)")
                    }
                    usleep(200_000)
                }
            } catch {
                _ = try? admin.execute(script: "ROLLBACK")  // no transaction may be open when reopening; none is the normal case
                do {
                    try ToolDatabases.reopen(target, marker: closed, on: admin, lockWaitSeconds: Self.reopenLockWaitSeconds)
                } catch let reopenError {
                    timeline.note("reopen \(target) to connections", outcome: "failed: \(RecoveryError.classify(reopenError).message); the next dbrestore reopens it")
                }
                throw error
            }
        }
    }

    /// How long reopening the target after an abandoned swap waits for a lock: the session that held
    /// up the swap may still hold it, and the operator who sent the signal waits for the exit.
    static let reopenLockWaitSeconds = 10

    /// SQLSTATE 23505, unique_violation.
    private static let uniqueViolation = "23505"
}
