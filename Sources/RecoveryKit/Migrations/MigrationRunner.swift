import Foundation
import PostgresClient
import ProcessSignals

/// Settings of one `dbmigrate` run.
public struct MigrationConfiguration {
    public var target: ConnectionTarget
    public var directory: String
    public var release: String?
    /// One transaction per step instead of one for the whole plan.
    public var perStep: Bool
    /// How long to wait for another dbmigrate's advisory lock.
    public var lockWaitSeconds: Double
    /// `lock_timeout` for the migration statements (PostgreSQL interval text).
    public var lockTimeout: String
    /// `statement_timeout` for the migration statements.
    public var statementTimeout: String
    /// A downgrade that cannot create its restore point is refused instead of warned about.
    public var requireRestorePoint: Bool
    /// Told each NOTICE or WARNING the server sends while a migration statement runs, as it arrives.
    public var onServerMessage: ((String) -> Void)?
    /// Told what the runner did on its own account (a plan retried after a deadlock), as it happens.
    public var onNote: ((String) -> Void)?
    /// What the storage layer reads S3 settings from for the pre-downgrade backup (see `Repository.open`).
    public var environment = ProcessInfo.processInfo.environment
    /// `--lock-wait`, when given: how long the pre-downgrade backup waits for the repository lock
    /// another backup or a prune holds; 0 fails at once (exit 21), as `dbbackup` does.
    public var repositoryLockWaitSeconds: TimeInterval = 0

    public init(target: ConnectionTarget, directory: String, release: String? = nil, perStep: Bool = false,
                lockWaitSeconds: Double = 30, lockTimeout: String = "10s", statementTimeout: String = "15min",
                requireRestorePoint: Bool = false, onServerMessage: ((String) -> Void)? = nil) {
        self.target = target
        self.directory = directory
        self.release = release
        self.perStep = perStep
        self.lockWaitSeconds = lockWaitSeconds
        self.lockTimeout = lockTimeout
        self.statementTimeout = statementTimeout
        self.requireRestorePoint = requireRestorePoint
        self.onServerMessage = onServerMessage
    }
}

/// What a down or up run did.
public struct MigrationReport: Codable, Sendable {
    public var direction: MigrationStep.Direction
    public var fromVersion: Int64?
    public var toVersion: Int64?
    public var steps: [Int64]
    public var backupID: String?
    public var restorePoint: String?
    public var warnings: [String]
    /// NOTICEs and WARNINGs the server sent while the migrations ran.
    public var serverMessages: [String]
    public var durationSeconds: Double
}

/// Applies and reverts migrations on a server under a session-level advisory lock.
///
/// Bookkeeping: the runbooks' `schema_version (version, applied_at)` holds one row per applied
/// version and is only ever inserted into (apply) and deleted from (revert); an existing one is
/// adopted as it is. dbmigrate's own record of each version lives in `dbmigrate_versions`, its
/// history in `schema_version_log`. All three are created in the transaction that records the first
/// migration, so a refused, failed or read-only run leaves the database as it found it.
public final class MigrationRunner {
    /// Advisory lock key: "dbmigrat" in ASCII, so operators can recognise it in pg_locks.
    public static let advisoryLockKey: Int64 = 0x6462_6D69_6772_6174
    /// dbmigrate's own per-version record.
    public static let recordTable = "dbmigrate_versions"
    /// dbmigrate's append-only history.
    public static let logTable = "schema_version_log"

    public let configuration: MigrationConfiguration
    let connection: PostgresConnection
    /// Where the bookkeeping tables are (or will be created), schema-qualified once at connect time,
    /// so that a migration's own `SET search_path` cannot send a record elsewhere.
    private let names: Bookkeeping

    private struct Bookkeeping {
        var versions: String
        var records: String
        var log: String
    }
    /// The NOTICEs and WARNINGs the server sent during migration statements, in order (the first
    /// `keptServerMessages`, then a count: a loop raising notices must not grow memory without bound).
    public var serverMessages: [String] {
        droppedServerMessages == 0 ? keptMessages : keptMessages + ["… and \(droppedServerMessages) more"]
    }
    private var keptMessages: [String] = []
    private var droppedServerMessages = 0
    static let keptServerMessages = 200

    /// Connects. The bookkeeping tables are created only when something is about to be recorded,
    /// so a refused or read-only command changes nothing.
    ///
    /// - Throws: `PostgresError` when the server is unreachable.
    public init(_ configuration: MigrationConfiguration) throws {
        self.configuration = configuration
        connection = try PostgresConnection(target: configuration.target, applicationName: "dbmigrate")
        func qualified(parameter index: Int) -> String {
            """
            coalesce((SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.oid = to_regclass($\(index))), format('%I.%I', coalesce(current_schema(), 'public'), $\(index)::text))
            """
        }
        let row = try connection.query("SELECT \(qualified(parameter: 1)), \(qualified(parameter: 2)), \(qualified(parameter: 3))",
                                       [VersionTable.name, Self.recordTable, Self.logTable]).rows.first
        names = Bookkeeping(versions: try row?.string(0) ?? VersionTable.name, records: try row?.string(1) ?? Self.recordTable,
                            log: try row?.string(2) ?? Self.logTable)
    }

    deinit { connection.close() }

    /// `server_version_num` of the server.
    public var serverVersion: Int { connection.serverVersionNumber }

    // MARK: - Reading state

    /// `schema_version` as it is now (the one `search_path` finds), nil when there is none.
    public func versionTable() throws -> VersionTable? {
        let rows = try connection.query("""
            SELECT format('%I.%I', n.nspname, c.relname), c.relkind::text, a.attname::text, format_type(a.atttypid, a.atttypmod),
                   a.attnotnull::text, (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '')::text
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            WHERE c.oid = to_regclass($1) ORDER BY a.attnum
            """, [names.versions]).rows
        guard let first = rows.first else { return nil }
        let columns = rows.compactMap { row -> VersionTable.Column? in
            guard let name = row[2], let type = row[3] else { return nil }
            return VersionTable.Column(name: name, type: type, notNull: row[4] == "true", filledByServer: row[5] == "true")
        }
        return VersionTable(qualifiedName: try first.string(0), kind: try first.string(1), columns: columns)
    }

    /// `schema_version` when dbmigrate can use it; nil when there is none.
    ///
    /// - Throws: `RecoveryError(.migrationRefused)` showing the table and the command that adopts it.
    func usableVersionTable() throws -> VersionTable? {
        guard let table = try versionTable() else { return nil }
        if let refusal = table.refusal() { throw refusal }
        return table
    }

    /// Refuses versions that `schema_version.version` cannot hold (an `integer` column and a
    /// date-stamped version like 20261126093000), before anything runs.
    public func checkCapacity(for versions: [Int64]) throws {
        guard let table = try versionTable(), let highest = versions.max(), highest > table.largestVersion else { return }
        let type = table.columns.first { $0.name == "version" }?.type ?? "?"
        throw RecoveryError(.migrationRefused, "refused before running anything: version \(highest) does not fit \(table.qualifiedName).version, which is \(type) (at most \(table.largestVersion))",
                            hint: "nothing was changed; widen the column: psql -c 'ALTER TABLE \(table.qualifiedName) ALTER COLUMN version TYPE bigint'")
    }

    private func exists(_ table: String) throws -> Bool {
        try connection.query("SELECT to_regclass($1) IS NOT NULL", [table]).scalar == "t"
    }

    /// Applied (and mid-flight) versions, oldest first: every version in `schema_version` (adopted
    /// when dbmigrate has no record of it) plus versions a failed no-transaction step left `applying`.
    ///
    /// - Throws: `RecoveryError(.migrationRefused)` when `schema_version` has a shape dbmigrate cannot use.
    public func applied() throws -> [AppliedMigration] {
        guard let table = try usableVersionTable() else { return [] }
        try checkReadable()
        let hasRecords = try exists(names.records)
        let records: String
        if hasRecords {
            records = names.records
        } else if table.hasEarlierDbmigrateColumns {
            records = Self.earlierRecords(table)
        } else {
            records = "(SELECT NULL::bigint AS version, NULL::text AS name, NULL::text AS up_sha256, NULL::text AS down_sha256, NULL::text AS release, NULL::text AS state, NULL::boolean AS adopted, NULL::timestamptz AS recorded_at WHERE false)"
        }
        let applying = hasRecords ? """
            UNION ALL
            SELECT m.version, m.name, m.up_sha256, m.down_sha256, extract(epoch FROM m.recorded_at)::float8, m.release, m.state, m.adopted
            FROM \(names.records) m WHERE m.state = 'applying' AND NOT EXISTS (SELECT 1 FROM \(table.qualifiedName) s WHERE s.version = m.version)
            """ : ""
        return try connection.query("""
            SELECT version, name, up_sha256, down_sha256, epoch::text, release, state, adopted::text FROM (
                SELECT s.version, coalesce(m.name, '') AS name, m.up_sha256, m.down_sha256, CASE WHEN isfinite(s.applied_at) THEN extract(epoch FROM s.applied_at)::float8 END AS epoch,
                       m.release, coalesce(m.state, 'applied') AS state, coalesce(m.adopted, true) AS adopted
                FROM (SELECT version::bigint AS version, max(applied_at::timestamptz) AS applied_at
                      FROM \(table.qualifiedName) WHERE version IS NOT NULL GROUP BY 1) s
                LEFT JOIN \(records) m ON m.version = s.version
                \(applying)
            ) rows ORDER BY epoch NULLS FIRST, version
            """).rows.map { row in
            AppliedMigration(version: try row.int64(0), name: row[1] ?? "", upSHA256: row[2], downSHA256: row[3],
                             appliedAt: Date(timeIntervalSince1970: row[4].flatMap(Double.init) ?? 0), release: row[5],
                             state: try row.string(6), adopted: row[7] == "true")
        }
    }

    /// Refuses, naming the grant, a role that cannot read the bookkeeping (rather than the server's
    /// bare "permission denied" halfway through a query).
    ///
    /// - Throws: `RecoveryError(.databaseError)`.
    private func checkReadable() throws {
        let tables: [String] = [names.versions, names.records, names.log]
        let unreadable = try tables.filter { table in
            try connection.query("SELECT to_regclass($1) IS NOT NULL AND NOT has_table_privilege(to_regclass($1), 'SELECT')", [table]).scalar == "t"
        }
        guard !unreadable.isEmpty else { return }
        let user = VersionTable.quoted(try connection.query("SELECT current_user::text").scalar ?? "?")
        throw RecoveryError(.databaseError, "role \(user) may not read \(unreadable.joined(separator: ", ")), where dbmigrate keeps what is applied; nothing was changed",
                            hint: "as the tables' owner or a superuser run: GRANT SELECT ON \(unreadable.joined(separator: ", ")) TO \(user) (up and down also need INSERT, UPDATE, DELETE on them; the dry run lists what is missing)")
    }

    /// The columns an earlier dbmigrate kept in `schema_version` itself, read as its records.
    private static func earlierRecords(_ table: VersionTable) -> String {
        """
        (SELECT DISTINCT ON (version) version::bigint AS version, name, nullif(up_sha256, '') AS up_sha256, down_sha256, release,
                state, false AS adopted, applied_at::timestamptz AS recorded_at
         FROM \(table.qualifiedName) WHERE version IS NOT NULL ORDER BY version, applied_at DESC)
        """
    }

    /// The append-only log, oldest first.
    public func log() throws -> [MigrationLogEntry] {
        guard try exists(names.log) else { return [] }
        return try MigrationLogEntry.all(in: names.log, on: connection)
    }

    /// What the first recording will add to the bookkeeping, for the plan: tables it creates and
    /// versions it adopts. Empty once dbmigrate keeps records here.
    public func bookkeepingNotes() throws -> [String] {
        var notes: [String] = []
        guard let table = try usableVersionTable() else {
            return ["creates \(names.versions) (version, applied_at), \(names.records) and \(names.log) in the same transaction"]
        }
        if try exists(names.records) {
            let unrecorded = try connection.query("""
                SELECT DISTINCT version::bigint FROM \(table.qualifiedName) s
                WHERE version IS NOT NULL AND NOT EXISTS (SELECT 1 FROM \(names.records) m WHERE m.version = s.version) ORDER BY 1
                """).rows.compactMap { $0[0] }
            if !unrecorded.isEmpty { notes.append("adopts version(s) \(unrecorded.joined(separator: ", ")) found in \(table.qualifiedName)") }
        } else {
            let versions = try connection.query("SELECT string_agg(v::text, ', ' ORDER BY v) FROM (SELECT DISTINCT version::bigint AS v FROM \(table.qualifiedName) WHERE version IS NOT NULL) d").scalar
            notes.append("keeps \(table.qualifiedName) as it is\(versions.map { " and adopts version(s) \($0) found there" } ?? ""); creates \(names.records) and \(names.log) for dbmigrate's own records, in the same transaction")
        }
        return notes
    }

    /// Rows of `schema_version` that make the runbooks' `ORDER BY applied_at DESC LIMIT 1` wrong:
    /// a NULL `applied_at` sorts first, before the version really applied last.
    public func versionTableWarnings() throws -> [String] {
        guard let table = try usableVersionTable(),
              let versions = try connection.query("""
                  SELECT string_agg(v::text, ', ' ORDER BY v) FROM (SELECT DISTINCT version::bigint AS v FROM \(table.qualifiedName)
                  WHERE applied_at IS NULL AND version IS NOT NULL) d
                  """).scalar else { return [] }
        let first = versions.split(separator: ",").first.map(String.init) ?? versions
        return ["\(table.qualifiedName) has no applied_at for version(s) \(versions), so the runbook query (ORDER BY applied_at DESC LIMIT 1) returns one of them instead of the current version; give each the time it was applied (in version order), e.g. psql -c \"UPDATE \(table.qualifiedName) SET applied_at = '<when>' WHERE version = \(first)\""]
    }

    /// Creates what is missing of the bookkeeping and adopts versions `schema_version` holds that
    /// dbmigrate has no record of. Runs inside the caller's transaction, which records something.
    ///
    /// - Returns: the qualified name of `schema_version`.
    private func prepareBookkeeping(_ available: [Migration]) throws -> String {
        let table: VersionTable
        if let existing = try usableVersionTable() {
            table = existing
        } else {
            try connection.execute(script: "CREATE TABLE \(names.versions) (version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT clock_timestamp())")
            guard let created = try versionTable() else {
                throw RecoveryError(.databaseError, "schema_version was created but cannot be found on the search_path",
                                    hint: "check search_path for the role dbmigrate connects as (SHOW search_path)")
            }
            table = created
        }
        if !(try exists(names.records)) {
            try connection.execute(script: """
                CREATE TABLE \(names.records) (
                    version bigint PRIMARY KEY,
                    name text NOT NULL DEFAULT '',
                    up_sha256 text,
                    down_sha256 text,
                    state text NOT NULL DEFAULT 'applied' CHECK (state IN ('applied', 'applying', 'reverting')),
                    adopted boolean NOT NULL DEFAULT false,
                    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                    applied_by text NOT NULL DEFAULT current_user,
                    execution_ms bigint,
                    release text);
                COMMENT ON TABLE \(names.records) IS 'dbmigrate: what it knows of each version in schema_version (which it never alters beyond adding and removing rows)'
                """)
            if table.hasEarlierDbmigrateColumns {
                try connection.execute(script: """
                    INSERT INTO \(names.records) (version, name, up_sha256, down_sha256, release, state, adopted, recorded_at)
                    SELECT version, name, up_sha256, down_sha256, release, state, adopted, recorded_at FROM \(Self.earlierRecords(table)) earlier
                    """)
            }
        }
        if !(try exists(names.log)) {
            try connection.execute(script: """
                CREATE TABLE \(names.log) (
                    id bigserial PRIMARY KEY,
                    at timestamptz NOT NULL DEFAULT clock_timestamp(),
                    version bigint,
                    name text,
                    action text NOT NULL,
                    release text,
                    backup_id text,
                    by_user text NOT NULL DEFAULT current_user,
                    execution_ms bigint,
                    sha256 text,
                    detail text)
                """)
        }
        let unrecorded = try connection.query("""
            SELECT DISTINCT version::bigint FROM \(table.qualifiedName) s
            WHERE version IS NOT NULL AND NOT EXISTS (SELECT 1 FROM \(names.records) m WHERE m.version = s.version) ORDER BY 1
            """).rows.compactMap { $0[0].flatMap { Int64($0) } }
        let files = Dictionary(uniqueKeysWithValues: available.map { ($0.version, $0) })
        for version in unrecorded {
            try adopt(version, file: files[version], action: "adopt", detail: "found in schema_version")
        }
        return table.qualifiedName
    }

    /// Records `version` as applied before dbmigrate, with its file's checksum when there is a file.
    /// No release: whichever release this run deploys did not apply it.
    private func adopt(_ version: Int64, file: Migration?, action: String, detail: String) throws {
        try connection.query("""
            INSERT INTO \(names.records) (version, name, up_sha256, down_sha256, adopted) VALUES ($1, $2, $3, $4, true)
            """, [String(version), file?.name ?? "", file?.up.sha256, file?.down?.sha256])
        try connection.query("INSERT INTO \(names.log) (version, name, action, sha256, detail) VALUES ($1, $2, $3, $4, $5)",
                             [String(version), file?.name, action, file?.up.sha256, detail])
    }

    // MARK: - Locking

    /// Runs `body` holding the session-level advisory lock, waiting up to `lockWaitSeconds`.
    ///
    /// - Throws: `RecoveryError(.migrationLocked)` naming the pid and application holding it.
    public func withLock<T>(_ body: () throws -> T) throws -> T {
        let deadline = Date().addingTimeInterval(configuration.lockWaitSeconds)
        while try connection.query("SELECT pg_try_advisory_lock($1)", [String(Self.advisoryLockKey)]).scalar != "t" {
            if Date() >= deadline {
                let holder = try connection.query("""
                    SELECT a.pid, coalesce(nullif(a.application_name, ''), '?'), coalesce(a.client_addr::text, 'local'), a.usename
                    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                    WHERE l.locktype = 'advisory' AND l.granted
                      AND ((l.classid::bigint << 32) | l.objid::bigint) = $1
                    LIMIT 1
                    """, [String(Self.advisoryLockKey)]).rows.first
                let who = holder.map { "pid \($0[0] ?? "?") (application \($0[1] ?? "?"), user \($0[3] ?? "?"), from \($0[2] ?? "?"))" } ?? "another session"
                let pid = holder?[0].flatMap { Int32($0) }.map(String.init) ?? "<pid>"
                throw RecoveryError(.migrationLocked, "another migration holds the lock: \(who)",
                                    hint: "wait for it to finish, or if it is stuck: SELECT pg_terminate_backend(\(pid))")
            }
            try Interruption.check()
            usleep(200_000)
        }
        // The lock also goes with the connection; an unlock that fails here changes nothing that matters.
        defer { _ = try? connection.query("SELECT pg_advisory_unlock($1)", [String(Self.advisoryLockKey)]) }
        return try body()
    }

    // MARK: - Running

    /// Runs planned steps: one transaction for the whole plan, or one per step (`perStep`, and always
    /// for a no-transaction step, which is marked `applying` / `reverting` while it runs).
    ///
    /// After every statement of a transactional step the runner checks it is still inside its own
    /// transaction; if a statement ended it, the run stops and says what was and was not applied.
    /// - Important: on failure in one transaction, nothing of the plan remains applied.
    /// - Parameters:
    ///   - available: the migrations directory, for adopting versions found in `schema_version`.
    /// - Throws: `RecoveryError(.migrationFailed)` naming the step, the statement and the SQLSTATE.
    public func run(_ steps: [MigrationStep], backupID: String?, available: [Migration]) throws {
        try resetSession()
        let groups = configuration.perStep || steps.count == 1 ? steps.map { [$0] } : [steps]
        var done: [Int64] = []
        for group in groups {
            do {
                if group.count == 1, group[0].noTransaction {
                    try runWithoutTransaction(group[0], backupID: backupID, available: available)
                } else if groups.count == 1 {
                    try retryingDeadlocks { try runInTransaction(group, plan: steps, done: done, backupID: backupID, available: available) }
                } else {
                    try runInTransaction(group, plan: steps, done: done, backupID: backupID, available: available)
                }
            } catch {
                // A signal's one-line summary must not say "nothing applied" when earlier steps committed.
                if Interruption.isRequested && !done.isEmpty {
                    CleanupLog.kept("version(s) \(Self.list(done)) \(steps[0].direction == .up ? "applied" : "reverted") before the signal, each in a transaction of its own (dbmigrate status shows them)")
                }
                throw error
            }
            done += group.map(\.version)
        }
    }

    /// How many times a plan that is one transaction is run when the server breaks a deadlock by aborting it.
    static let deadlockAttempts = 4

    /// Runs `body`, the whole plan in one transaction, again when the server aborted it to break a
    /// deadlock with another session (the application): the abort rolled all of it back, so running it
    /// again is running it for the first time. A note says so each time; the last failure is thrown.
    private func retryingDeadlocks(_ body: () throws -> Void) throws {
        try ServerRetry.run(on: [PostgresError.deadlockDetected], attempts: Self.deadlockAttempts, pause: 0.2, again: { attempt, error in
            configuration.onNote?("attempt \(attempt) of \(Self.deadlockAttempts) ended in a deadlock the server broke by rolling the migration back (nothing applied); running it again: \(error)")
        }, body)
    }

    /// A statement ended the runner's transaction (COMMIT, ROLLBACK, … that pre-flight did not see).
    private struct TransactionEnded: Error {
        var step: MigrationStep
        var statementIndex: Int
        var statement: String
        var line: Int
    }

    private func runInTransaction(_ group: [MigrationStep], plan: [MigrationStep], done: [Int64],
                                  backupID: String?, available: [Migration]) throws {
        try connection.execute(script: "BEGIN")
        var transactionID = ""
        var recorded: [Int64] = []
        do {
            transactionID = try connection.query("SELECT txid_current()::text").scalar ?? ""
            _ = try prepareBookkeeping(available)
            for step in group {
                try Interruption.check()
                let started = Date()
                try execute(step, transactionID: transactionID)
                try record(step, milliseconds: Self.milliseconds(since: started), backupID: backupID)
                recorded.append(step.version)
                CrashPoint.reached("migrate:between-steps")
            }
            try Interruption.check()   // a signal before COMMIT rolls the whole plan back
            do {
                try connection.execute(script: "COMMIT")
            } catch let error as PostgresError where error.kind == .connection {
                throw RecoveryError(.databaseUnavailable, "the connection was lost while committing version(s) \(Self.list(recorded)): whether the server committed them is unknown (\(error.message))",
                                    hint: "once the server is back, dbmigrate status shows what is applied: each version's record commits together with its schema change, or neither does")
            }
        } catch let ended as TransactionEnded {
            throw explain(ended, transactionID: transactionID, plan: plan, done: done, recorded: recorded, backupID: backupID)
        } catch {
            // The error being thrown is what matters; a ROLLBACK that fails means the connection is gone,
            // which rolls the transaction back just the same.
            _ = try? connection.execute(script: "ROLLBACK")
            if Interruption.isRequested {
                CleanupLog.cleaned(done.isEmpty ? "rolled back the migration (nothing applied)" : "rolled back the step that was running (version(s) \(Self.list(group.map(\.version))))")
            }
            logFailure(error, backupID: backupID)
            if let failure = error as? RecoveryError, failure.code == .migrationFailed, !done.isEmpty,
               failure.serverState == PostgresError.deadlockDetected {
                // Not the step's fault: its hint says so and what to do; only what stays applied is added.
                throw RecoveryError(.migrationFailed, failure.message,
                                    hint: "version(s) \(Self.list(done)) were applied in transactions of their own (--per-step) and stay applied; " + (failure.hint ?? ""),
                                    serverState: failure.serverState)
            }
            if let failure = error as? RecoveryError, failure.code == .migrationFailed, !done.isEmpty {
                // Keep the statement's own advice (what to move where), after what stays applied.
                let advice = failure.hint.map { $0.hasPrefix(Self.perStepHint) ? String($0.dropFirst(Self.perStepHint.count)) : "; " + $0 } ?? ""
                throw RecoveryError(.migrationFailed, failure.message,
                                    hint: "version(s) \(Self.list(done)) were applied in transactions of their own (--per-step) and stay applied; the failing step was rolled back; fix it and run again (dbmigrate status shows where it stands)" + advice)
            }
            throw error
        }
    }

    /// The error for a transaction a statement ended: committed or rolled back (the server says which),
    /// what was applied and recorded, what took effect unrecorded (now marked mid-flight), what did not run.
    private func explain(_ ended: TransactionEnded, transactionID: String, plan: [MigrationStep], done: [Int64],
                         recorded: [Int64], backupID: String?) -> RecoveryError {
        let step = ended.step
        let file = (step.path as NSString).lastPathComponent
        // Whatever was left open after a chained transaction control statement belongs to nobody.
        if connection.transactionState != .idle { _ = try? connection.execute(script: "ROLLBACK") }
        // Marked and logged as the role that connected, whatever the step SET (a failed reset shows up as a failed mark).
        _ = try? resetSession()
        // The server's word on the outcome; if it cannot be asked, the statement itself says which way it went.
        var outcome = (try? connection.query("SELECT txid_status($1::bigint)", [transactionID]).scalar) ?? nil
        var stillPrepared: String?
        if outcome == "in progress", let gid = (try? connection.query(
            "SELECT gid FROM pg_prepared_xacts WHERE transaction::text::bigint = $1::bigint % 4294967296 AND database = current_database()",
            [transactionID]).scalar) ?? nil {
            // PREPARE TRANSACTION parked it, holding its locks until someone ends it: this run does. If that
            // fails the outcome stays "in progress", reported below as not committed, with the gid left to end by hand.
            if (try? connection.execute(script: "ROLLBACK PREPARED \(Self.literal(gid))")) != nil { outcome = "aborted" } else { stillPrepared = gid }
        }
        let committed = outcome.map { $0 == "committed" } ?? !TransactionControl.rollsBack(ended.statement)
        let excerpt = Self.excerpt(ended.statement, length: 80)
        let fate = committed ? "committed" : stillPrepared.map { "prepared and is still open: end it with ROLLBACK PREPARED \(Self.literal($0))" } ?? "rolled back"
        var message = "\(step.direction.rawValue) step \(step.version) (\(step.name)) ended dbmigrate's transaction at statement \(ended.statementIndex) `\(excerpt)` (\(file)\(ended.line > 0 ? " line \(ended.line)" : "")), which was \(fate)"
        let applied = done + (committed ? recorded : [])
        message += applied.isEmpty ? "; nothing of the plan is applied" : "; applied and recorded: version(s) \(Self.list(applied))"
        let hint: String
        if committed {
            let mark = step.direction == .up ? "applying" : "reverting"
            message += "; statements 1–\(ended.statementIndex) of \(file) took effect but version \(step.version) is not recorded as \(step.direction == .up ? "applied" : "reverted") (marked \(mark))"
            do {
                try connection.execute(script: "BEGIN")
                try markMidFlight(step, state: mark)
                try connection.execute(script: "COMMIT")
            } catch {
                // Reported in the message: the operator must then check by hand.
                _ = try? connection.execute(script: "ROLLBACK")
                message += " (marking it failed: \(RecoveryError.classify(error).message))"
            }
            hint = "check the schema against \(file), finish or undo its statements by hand, then run dbmigrate resolve \(step.version) --mark-\(step.direction == .up ? "applied" : "reverted") (or the opposite); remove the transaction control from the file first"
        } else {
            hint = "remove the transaction control from \(file) (dbmigrate runs each step in a transaction of its own) and run again"
        }
        let notRun = plan.drop { $0.version != step.version }.dropFirst().map(\.version)
        message += "; not run: the rest of \(file)" + (notRun.isEmpty ? "" : ", version(s) \(Self.list(notRun))")
        logFailure(RecoveryError(.migrationFailed, message), backupID: backupID)
        return RecoveryError(.migrationFailed, message, hint: hint)
    }

    private func runWithoutTransaction(_ step: MigrationStep, backupID: String?, available: [Migration]) throws {
        let started = Date()
        try inTransaction {
            _ = try prepareBookkeeping(available)
            try markMidFlight(step, state: step.direction == .up ? "applying" : "reverting")
        }
        do {
            try execute(step, transactionID: nil)
            if connection.transactionState != .idle {
                // The error below is the news; a ROLLBACK that fails means the connection is gone, which rolls back too.
                _ = try? connection.execute(script: "ROLLBACK")
                throw RecoveryError(.migrationFailed, "\(step.direction.rawValue) step \(step.version) (\(step.name)) left a transaction open at its end; it was rolled back",
                                    hint: "end every BEGIN in \((step.path as NSString).lastPathComponent) with COMMIT; then check the schema and run dbmigrate resolve \(step.version)")
            }
        } catch {
            if Interruption.isRequested {
                CleanupLog.kept("version \(step.version) marked \(step.direction == .up ? "applying" : "reverting"): its statements run outside a transaction and may have partly taken effect; check the schema, then dbmigrate resolve \(step.version) --mark-applied or --mark-reverted")
            }
            // A step's SET ROLE must not keep the failure out of the log; if the reset fails, so does the log row.
            _ = try? resetSession()
            let failure = midFlightFailure(error, step: step)
            logFailure(failure, backupID: backupID)
            throw failure
        }
        try inTransaction {
            try record(step, milliseconds: Self.milliseconds(since: started), backupID: backupID)
        }
    }

    /// The error of a failed no-transaction step, which stays marked `applying` / `reverting`: names the
    /// invalid indexes a failed `CREATE INDEX CONCURRENTLY` of it left behind, and the statements that
    /// put things right (drop them, resolve the version, run again).
    private func midFlightFailure(_ error: Error, step: MigrationStep) -> Error {
        guard let failure = error as? RecoveryError, failure.code == .migrationFailed, !Interruption.isRequested else { return error }
        let mark = step.direction == .up ? "applying" : "reverting"
        let invalid = (try? invalidIndexes(namedIn: step.sql)) ?? []
        var message = failure.message + "; version \(step.version) stays marked \(mark) (its statements ran outside a transaction)"
        var fixes: [String] = []
        if !invalid.isEmpty {
            message += "; the failed statement left invalid index(es) \(invalid.joined(separator: ", ")), which a run again would collide with"
            fixes.append(invalid.map { "`DROP INDEX CONCURRENTLY \($0)`" }.joined(separator: ", "))
        }
        let undone = step.direction == .up ? "reverted" : "applied"
        fixes.append("`dbmigrate resolve \(step.version) --mark-\(undone)` (once nothing of the step is left; --mark-\(step.direction == .up ? "applied" : "reverted") if all of it took effect)")
        fixes.append("`dbmigrate \(step.direction == .up ? "up" : "down")` again")
        let advice = failure.hint.map { $0.hasPrefix(Self.perStepHint) ? String($0.dropFirst(Self.perStepHint.count)) : "; " + $0 } ?? ""
        return RecoveryError(.migrationFailed, message,
                             hint: "run " + fixes.joined(separator: ", then ") + advice, serverState: failure.serverState)
    }

    /// The invalid indexes (`pg_index.indisvalid` false: what a failed or cancelled `CREATE INDEX
    /// CONCURRENTLY` or `REINDEX CONCURRENTLY` leaves) whose names a step's `CREATE INDEX` statements
    /// give, schema-qualified and quoted as `DROP INDEX` needs them.
    func invalidIndexes(namedIn sql: String) throws -> [String] {
        let pattern = #"(?i)\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?((?:"[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)(?:\.(?:"[^"]+"|[A-Za-z_][A-Za-z0-9_$]*))?)"#
        guard let regex = try? NSRegularExpression(pattern: pattern) else { return [] }
        let text = sql as NSString
        let names: [String] = regex.matches(in: sql, range: NSRange(location: 0, length: text.length)).map { match in
            // The index's own name: the part after a schema, unquoted as the catalogue spells it.
            let qualified = text.substring(with: match.range(at: 1))
            let last = qualified.hasSuffix("\"") ? String(qualified.dropLast().split(separator: "\"").last ?? "")
                : String(qualified.split(separator: ".").last ?? "").lowercased()
            return last
        }
        guard !names.isEmpty else { return [] }
        return try connection.query("""
            SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
            FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE NOT i.indisvalid
              AND EXISTS (SELECT 1 FROM unnest($1::text[]) AS w(name) WHERE c.relname = w.name OR starts_with(c.relname, w.name || '_ccnew'))
            ORDER BY 1
            """, [SQLText.arrayLiteral(names)]).rows.compactMap { $0[0] }
    }

    /// Runs `body` in a transaction of its own, rolled back if it throws.
    private func inTransaction(_ body: () throws -> Void) throws {
        try connection.execute(script: "BEGIN")
        do {
            try body()
            try connection.execute(script: "COMMIT")
        } catch {
            // The original error explains the failure; a failed ROLLBACK means the connection is gone.
            _ = try? connection.execute(script: "ROLLBACK")
            throw error
        }
    }

    /// Marks a step whose statements run (or ran) outside a recorded transaction: `applying` or `reverting`.
    private func markMidFlight(_ step: MigrationStep, state: String) throws {
        try connection.query("""
            INSERT INTO \(names.records) (version, name, up_sha256, down_sha256, state, release) VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (version) DO UPDATE SET state = EXCLUDED.state
            """, [String(step.version), step.name, step.direction == .up ? step.sha256 : nil, step.downSHA256, state, configuration.release])
    }

    /// Runs each statement of a step, naming the failing one; shows the server's notices; in a
    /// transaction (`transactionID`), checks after each statement that the transaction is still ours.
    private func execute(_ step: MigrationStep, transactionID: String?) throws {
        let file = (step.path as NSString).lastPathComponent
        var locator = TransactionControl.LineLocator(step.sql)
        var current = (index: 0, line: 0)
        connection.onNotice = { [weak self] notice in
            let text = "\(notice.severity) from \(file) statement \(current.index)\(current.line > 0 ? " (line \(current.line))" : ""): \(notice.message)"
            guard let self else { return }
            if self.keptMessages.count < Self.keptServerMessages { self.keptMessages.append(text) } else { self.droppedServerMessages += 1 }
            self.configuration.onServerMessage?(text)
        }
        defer { connection.onNotice = nil }
        // Split as psql would on this server: with standard_conforming_strings off (a database or role
        // setting), a backslash escapes a quote in '…' too, and `'it\'s'` is one string.
        let conforming = try connection.query("SHOW standard_conforming_strings").scalar != "off"
        for (offset, piece) in SQLStatements.statements(step.sql, standardConformingStrings: conforming).enumerated() {
            let statement = piece.sql
            current = (offset + 1, locator.line(of: statement))
            do {
                if let rows = piece.copyRows {
                    // `COPY … FROM STDIN`: its rows are the file's lines after it, as psql sends them.
                    try connection.beginCopy(statement)
                    try rows.withUnsafeBytes { try connection.putCopyData($0) }
                    try connection.endCopy()
                } else {
                    try connection.execute(script: statement)
                }
            } catch let error as PostgresError {
                let excerpt = Self.excerpt(statement, length: 120)
                var hint = configuration.perStep || step.noTransaction ? Self.perStepHint : "the whole plan was rolled back; the database is unchanged"
                if error.sqlState == PostgresError.deadlockDetected && !step.noTransaction {
                    // Not the migration's fault: it and another session each waited for the other's lock.
                    hint = "the server broke a deadlock with another session (the detail names both) by rolling back "
                        + (configuration.perStep ? "this step's transaction whole: version \(step.version) was not applied" : "the migration's transaction whole: nothing was applied")
                        + "; run it again, ideally when the application is quiet, or order its statements to lock tables in the order the application does"
                } else if error.sqlState == PostgresError.lockNotAvailable {
                    hint = (step.noTransaction ? "" : hint + "; ") + "another session held a lock the statement needed for longer than --lock-timeout \(configuration.lockTimeout)"
                        + " (named above, if still there): wait for it or end it (SELECT pg_terminate_backend(pid)), or raise --lock-timeout, then run again"
                }
                // 25001: cannot run inside a transaction block; 2D000: a procedure tried to commit.
                if ["25001", "2D000"].contains(error.sqlState ?? ""), !step.noTransaction {
                    hint += "; this statement must run outside a transaction: move it to a file whose first line is -- dbmigrate:no-transaction"
                }
                // 55P04: a value ALTER TYPE … ADD VALUE added is used in the transaction that added it.
                if error.sqlState == "55P04" {
                    hint += "; a new enum value cannot be used in the transaction that added it: put the ALTER TYPE … ADD VALUE in an earlier file than its first use and run with --per-step (each file commits on its own, as psql would)"
                }
                throw RecoveryError(.migrationFailed,
                                    "\(step.direction.rawValue) step \(step.version) (\(step.name)) failed at statement \(current.index) `\(excerpt)` (\(file)\(current.line > 0 ? " line \(current.line)" : "")): \(Self.serverWords(error))",
                                    hint: hint, serverState: error.sqlState)
            }
            if let transactionID {
                var same = connection.transactionState == .inTransaction
                if same { same = try connection.query("SELECT txid_current_if_assigned()::text").scalar == transactionID }
                if !same { throw TransactionEnded(step: step, statementIndex: current.index, statement: statement, line: current.line) }
            }
        }
        try resetSession()
    }

    /// Returns the session to how dbmigrate connected, with its timeouts: what a step `SET` (a role to
    /// own its objects, a session authorization, a search_path, a timeout) ends with the step, as it would with psql running
    /// each file in a session of its own, and the bookkeeping is written as the role that connected.
    /// Inside a transaction the reset is part of it, as the step's own `SET`s were.
    private func resetSession() throws {
        try connection.execute(script: """
            RESET ALL;
            RESET SESSION AUTHORIZATION;
            RESET ROLE;
            SET lock_timeout = \(Self.literal(configuration.lockTimeout));
            SET statement_timeout = \(Self.literal(configuration.statementTimeout))
            """)
    }

    private func record(_ step: MigrationStep, milliseconds: Int64, backupID: String?) throws {
        let version = String(step.version)
        if step.direction == .up {
            try insertVersionRow(step.version)
            try connection.query("""
                INSERT INTO \(names.records) (version, name, up_sha256, down_sha256, state, adopted, execution_ms, release)
                VALUES ($1, $2, $3, $4, 'applied', false, $5, $6)
                ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, up_sha256 = EXCLUDED.up_sha256, down_sha256 = EXCLUDED.down_sha256,
                    state = 'applied', adopted = false, recorded_at = clock_timestamp(), applied_by = current_user,
                    execution_ms = EXCLUDED.execution_ms, release = EXCLUDED.release
                """, [version, step.name, step.sha256, step.downSHA256, String(milliseconds), configuration.release])
        } else {
            try connection.query("DELETE FROM \(names.versions) WHERE version = $1", [version])
            try connection.query("DELETE FROM \(names.records) WHERE version = $1", [version])
        }
        try connection.query("""
            INSERT INTO \(names.log) (version, name, action, release, backup_id, execution_ms, sha256)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            """, [version, step.name, step.direction.rawValue, configuration.release, backupID, String(milliseconds), step.sha256])
    }

    /// Adds `version`'s row to `schema_version`, with an `applied_at` later than every row already
    /// there, so the runbooks' `ORDER BY applied_at DESC LIMIT 1` (and `down --steps`) finds it as the
    /// current version even when existing rows are ahead of this session's clock (a `timestamp
    /// without time zone` written in UTC by an application while the server's TimeZone is local, a
    /// clock that was ahead) or the column keeps whole seconds (`timestamp(0)`), where versions
    /// applied within one second would tie.
    private func insertVersionRow(_ version: Int64) throws {
        let step = try versionTable()?.appliedAtResolution ?? "1 microsecond"
        try connection.query("""
            INSERT INTO \(names.versions) (version, applied_at)
            SELECT $1, greatest(clock_timestamp(), (SELECT max(applied_at) FROM \(names.versions) WHERE isfinite(applied_at)) + $2::interval)
            """, [String(version), step])
    }

    private func logFailure(_ error: Error, backupID: String?) {
        // Only into a log that exists: a first run that failed must leave the database as it was.
        guard (try? exists(names.log)) == true else { return }
        // The failure itself is being reported to the operator; losing its log row is the lesser harm.
        _ = try? connection.query("INSERT INTO \(names.log) (action, release, backup_id, detail) VALUES ('failed', $1, $2, $3)",
                                  [configuration.release, backupID, RecoveryError.classify(error).message])
    }

    /// Records that `release` was deployed with nothing to migrate, so `down --to-release` knows its state.
    public func recordRelease(_ release: String, version: Int64?, available: [Migration]) throws {
        try inTransaction {
            _ = try prepareBookkeeping(available)
            try connection.query("INSERT INTO \(names.log) (version, action, release) VALUES ($1, 'release', $2)",
                                 [version.map(String.init), release])
        }
    }

    /// Marks a version applied or reverted by hand, after an operator checked the schema.
    ///
    /// - Returns: warnings: marked reverted while invalid indexes its up.sql names are left (a failed
    ///   `CREATE INDEX CONCURRENTLY`), which the next `dbmigrate up` would collide with.
    @discardableResult
    public func resolve(_ version: Int64, applied: Bool, available: [Migration]) throws -> [String] {
        let migration = available.first { $0.version == version }
        var warnings: [String] = []
        if !applied, let migration {
            let invalid = try invalidIndexes(namedIn: migration.up.sql)
            if !invalid.isEmpty {
                warnings.append("invalid index(es) \(invalid.joined(separator: ", ")) that version \(version)'s up.sql creates are left (a failed CREATE INDEX CONCURRENTLY); "
                                + "dbmigrate up would fail on them: run " + invalid.map { "`DROP INDEX CONCURRENTLY \($0)`" }.joined(separator: ", ") + " first")
            }
        }
        try inTransaction {
            _ = try prepareBookkeeping(available)
            if applied {
                guard let migration else {
                    throw RecoveryError(.migrationRefused, "version \(version) is not in the migrations directory, so it cannot be marked applied",
                                        hint: "put its <version>_<name>.up.sql back, or check the version number (dbmigrate status)")
                }
                if try connection.query("SELECT 1 FROM \(names.versions) WHERE version = $1", [String(version)]).rows.isEmpty {
                    try insertVersionRow(version)
                }
                try connection.query("""
                    INSERT INTO \(names.records) (version, name, up_sha256, down_sha256, release, state) VALUES ($1, $2, $3, $4, $5, 'applied')
                    ON CONFLICT (version) DO UPDATE SET state = 'applied', name = EXCLUDED.name, up_sha256 = EXCLUDED.up_sha256,
                        down_sha256 = EXCLUDED.down_sha256
                    """, [String(version), migration.name, migration.up.sha256, migration.down?.sha256, configuration.release])
            } else {
                try connection.query("DELETE FROM \(names.versions) WHERE version = $1", [String(version)])
                try connection.query("DELETE FROM \(names.records) WHERE version = $1", [String(version)])
            }
            try connection.query("INSERT INTO \(names.log) (version, name, action, release, sha256, detail) VALUES ($1, $2, $3, $4, $5, 'manual resolution')",
                                 [String(version), migration?.name, applied ? "resolve-applied" : "resolve-reverted", configuration.release,
                                  applied ? migration?.up.sha256 : nil])
        }
        return warnings
    }

    /// Records `versions` as applied without running them, into an empty or missing `schema_version`.
    ///
    /// - Throws: `RecoveryError(.migrationRefused)` when versions are already recorded.
    public func baseline(_ versions: [Int64], available: [Migration]) throws {
        let current = try applied()
        guard current.isEmpty else {
            throw RecoveryError(.migrationRefused, "schema_version already holds version(s) \(Self.list(current.map(\.version))); baseline is for a database whose schema_version is missing or empty",
                                hint: "nothing was changed; versions found in schema_version count as applied (adopted) without a baseline: dbmigrate status shows them")
        }
        let files = Dictionary(uniqueKeysWithValues: available.map { ($0.version, $0) })
        try inTransaction {
            _ = try prepareBookkeeping(available)
            for version in versions.sorted() {
                try insertVersionRow(version)
                try adopt(version, file: files[version], action: "baseline", detail: "dbmigrate baseline")
            }
        }
    }

    // MARK: - What a downgrade needs

    /// What this role may not do that recording `direction`'s steps needs, each with the grant that
    /// fixes it: create the bookkeeping tables that do not exist yet, and read and write the ones that
    /// do. Empty when recording would work, so a dry run and the real run both refuse before anything runs.
    public func bookkeepingProblems(_ direction: MigrationStep.Direction) throws -> [String] {
        let user = VersionTable.quoted(try connection.query("SELECT current_user::text").scalar ?? "?")
        var problems: [String] = []
        var missingCreate: [String: [String]] = [:]
        let needs = [(names.versions, direction == .up ? ["SELECT", "INSERT"] : ["SELECT", "DELETE"]),
                     (names.records, ["SELECT", "INSERT", "UPDATE", "DELETE"]), (names.log, ["SELECT", "INSERT"])]
        for (table, privileges) in needs {
            guard try exists(table) else {
                if let row = try connection.query("SELECT (parse_ident($1))[1], has_schema_privilege((parse_ident($1))[1], 'CREATE')::text", [table]).rows.first,
                   row[1] != "true", let schema = row[0] {
                    missingCreate[schema, default: []].append(table)
                }
                continue
            }
            let lacking = try privileges.filter { try connection.query("SELECT has_table_privilege($1, $2)::text", [table, $0]).scalar != "true" }
            if !lacking.isEmpty {
                problems.append("role \(user) lacks \(lacking.joined(separator: ", ")) on \(table); as its owner or a superuser run: GRANT \(privileges.joined(separator: ", ")) ON \(table) TO \(user)")
            }
            if table == names.log, let sequence = try connection.query("SELECT pg_get_serial_sequence($1, 'id')", [table]).scalar,
               try connection.query("SELECT has_sequence_privilege($1, 'USAGE')::text", [sequence]).scalar != "true" {
                problems.append("role \(user) lacks USAGE on \(sequence); as its owner or a superuser run: GRANT USAGE ON SEQUENCE \(sequence) TO \(user)")
            }
        }
        for (schema, tables) in missingCreate.sorted(by: { $0.key < $1.key }) {
            problems.append("role \(user) may not create \(tables.joined(separator: ", ")) in schema \(schema); as its owner or a superuser run: GRANT CREATE ON SCHEMA \(VersionTable.quoted(schema)) TO \(user)")
        }
        return problems
    }

    /// Why `pg_create_restore_point` would fail for this session, with the fix; nil when it would work.
    public func restorePointProblem() throws -> String? {
        guard let row = try connection.query("""
            SELECT current_user::text, has_function_privilege('pg_catalog.pg_create_restore_point(text)', 'EXECUTE')::text,
                   current_setting('wal_level'), pg_is_in_recovery()::text
            """).rows.first else { return nil }
        let user = row[0] ?? "?"
        if row[3] == "true" { return "the server is a standby (in recovery), where restore points cannot be created; run dbmigrate against the primary" }
        if row[2] == "minimal" { return "wal_level is minimal, which has no restore points; set wal_level = replica in postgresql.conf and restart" }
        if row[1] != "true" {
            return "role \(user) may not call pg_create_restore_point (PostgreSQL allows it to superusers, or by grant); as a superuser run: GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO \(VersionTable.quoted(user))"
        }
        return nil
    }

    /// Why a backup would fail for this session, with the fix; nil when it would not. pg_dump locks and
    /// reads every table and sequence (views and foreign tables only by definition), and the row
    /// counts read every table.
    public func backupProblem() throws -> String? {
        let rows = try connection.query("""
            SELECT format('%I.%I', n.nspname, c.relname), n.nspname::text
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p', 'S') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND n.nspname !~ '^pg_(toast|temp)' AND c.relpersistence <> 't'
              AND (NOT has_schema_privilege(n.oid, 'USAGE') OR NOT has_table_privilege(c.oid, 'SELECT'))
            ORDER BY 1
            """).rows
        guard !rows.isEmpty else { return nil }
        let user = try connection.query("SELECT current_user::text").scalar ?? "?"
        let names = rows.compactMap { $0[0] }
        let shown = names.prefix(5).joined(separator: ", ") + (names.count > 5 ? " and \(names.count - 5) more" : "")
        let fix = serverVersion >= 140_000
            ? "GRANT pg_read_all_data TO \(VersionTable.quoted(user))"
            : Set(rows.compactMap { $0[1] }).sorted().map { "GRANT USAGE ON SCHEMA \(VersionTable.quoted($0)) TO \(VersionTable.quoted(user)); GRANT SELECT ON ALL TABLES IN SCHEMA \(VersionTable.quoted($0)) TO \(VersionTable.quoted(user)); GRANT SELECT ON ALL SEQUENCES IN SCHEMA \(VersionTable.quoted($0)) TO \(VersionTable.quoted(user))" }.joined(separator: "; ")
        return "the pre-downgrade backup would fail: role \(user) cannot read \(shown); as a superuser run: \(fix) (or pass --no-backup)"
    }

    /// Creates a named restore point for point-in-time recovery; nil with the reason when the server refuses.
    public func createRestorePoint(_ name: String) -> (name: String?, warning: String?) {
        do {
            try connection.query("SELECT pg_create_restore_point($1)", [name])
            return (name, nil)
        } catch {
            return (nil, "no restore point created: \(RecoveryError.classify(error).message)")
        }
    }

    /// Warnings for down steps that drop tables or columns still holding rows.
    public func destructiveWarnings(_ steps: [MigrationStep]) -> [String] {
        var warnings: [String] = []
        for step in steps where step.direction == .down {
            for target in DestructiveStatements.targets(in: step.sql) {
                let relation = target.table
                guard let exists = try? connection.query("SELECT to_regclass($1) IS NOT NULL", [relation]).scalar, exists == "t" else { continue }
                let sql = target.column.map { "SELECT count(*) FROM \(relation) WHERE \(connection.quoteIdentifier($0)) IS NOT NULL" }
                    ?? "SELECT count(*) FROM \(relation)"
                guard let count = try? connection.query(sql).scalar, let rows = Int64(count), rows > 0 else { continue }
                let what = target.column.map { "column \(relation).\($0)" } ?? "table \(relation)"
                warnings.append("down step \(step.version) (\(step.name)) drops \(what), which holds \(rows) row\(rows == 1 ? "" : "s")")
            }
        }
        return warnings
    }

    static func literal(_ text: String) -> String { "'" + text.replacingOccurrences(of: "'", with: "''") + "'" }

    static func milliseconds(since start: Date) -> Int64 { Int64((Date().timeIntervalSince(start) * 1000).rounded()) }

    /// The hint of a failed statement when earlier steps were committed on their own.
    static let perStepHint = "earlier steps stay done; fix the migration and run again (dbmigrate status shows where it stands)"

    /// A statement on one line for messages and the log, cut to `length`, with password literals
    /// (`PASSWORD '…'` of CREATE/ALTER ROLE, USER MAPPING options) masked: errors never show secrets.
    static func excerpt(_ statement: String, length: Int) -> String {
        String(maskingPasswords(statement.split(whereSeparator: \.isNewline).joined(separator: " ")).prefix(length))
    }

    /// `sql` with the literal after each `PASSWORD` (CREATE/ALTER ROLE, USER MAPPING options) and
    /// `CONNECTION` (CREATE/ALTER SUBSCRIPTION: a conninfo that may hold `password=…`) shown as
    /// `'…'`: what dbmigrate prints of a migration (errors, the dry run's SQL) never shows a secret.
    public static func maskingPasswords(_ sql: String) -> String {
        sql.replacingOccurrences(of: #"(?i)((?:password|connection)\s*=?\s*)(E?'(?:[^']|'')*'|\$[A-Za-z_]*\$.*?\$[A-Za-z_]*\$)"#,
                                 with: "$1'…'", options: .regularExpression)
    }

    /// A server error as the operator needs it: its message and SQLSTATE, a deadlock's detail (who
    /// waited for whom), a lock timeout's blocking sessions — `PostgresError.description` without the
    /// operation, which the runner's message names better (step, statement, file and line).
    static func serverWords(_ error: PostgresError) -> String {
        let text = error.description
        let prefix = error.operation + ": "
        return text.hasPrefix(prefix) ? String(text.dropFirst(prefix.count)) : text
    }

    /// `1, 2, 5` for messages.
    static func list(_ versions: [Int64]) -> String { versions.map(String.init).joined(separator: ", ") }
}

extension MigrationLogEntry {
    /// Every row of dbmigrate's log `table` (already qualified or found by the search path), in order.
    static func all(in table: String, on connection: PostgresConnection) throws -> [MigrationLogEntry] {
        try connection.query("SELECT id, version::text, action, release FROM \(table) ORDER BY id").rows.map { row in
            MigrationLogEntry(id: try row.int64(0), version: row[1].flatMap { Int64($0) }, action: try row.string(2), release: row[3])
        }
    }
}
