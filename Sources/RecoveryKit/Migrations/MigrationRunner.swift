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

    public init(target: ConnectionTarget, directory: String, release: String? = nil, perStep: Bool = false,
                lockWaitSeconds: Double = 30, lockTimeout: String = "10s", statementTimeout: String = "15min") {
        self.target = target
        self.directory = directory
        self.release = release
        self.perStep = perStep
        self.lockWaitSeconds = lockWaitSeconds
        self.lockTimeout = lockTimeout
        self.statementTimeout = statementTimeout
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
    public var durationSeconds: Double
}

/// Applies and reverts migrations on a server under a session-level advisory lock.
public final class MigrationRunner {
    /// Advisory lock key: "dbmigrat" in ASCII, so operators can recognise it in pg_locks.
    public static let advisoryLockKey: Int64 = 0x6462_6D69_6772_6174

    public let configuration: MigrationConfiguration
    let connection: PostgresConnection

    /// Connects. The bookkeeping tables are created only when something is about to be recorded,
    /// so a refused or read-only command changes nothing.
    ///
    /// - Throws: `PostgresError` when the server is unreachable.
    public init(_ configuration: MigrationConfiguration) throws {
        self.configuration = configuration
        connection = try PostgresConnection(target: configuration.target, applicationName: "dbmigrate")
    }

    /// True once `schema_version` exists.
    private func hasTables() throws -> Bool {
        try connection.query("SELECT to_regclass('schema_version_log') IS NOT NULL AND to_regclass('schema_version') IS NOT NULL").scalar == "t"
    }

    /// Creates (or completes) the bookkeeping tables.
    func ensureTables() throws {
        // Two first runs at once would race on CREATE TABLE IF NOT EXISTS; a transaction-level lock
        // (another key than the migration lock, so a long migration does not block `status`) serialises them.
        try connection.execute(script: """
            SET client_min_messages = warning;
            BEGIN;
            SELECT pg_advisory_xact_lock(\(Self.advisoryLockKey + 1));
            CREATE TABLE IF NOT EXISTS schema_version (version bigint PRIMARY KEY);
            ALTER TABLE schema_version
                ADD COLUMN IF NOT EXISTS name text NOT NULL DEFAULT '',
                ADD COLUMN IF NOT EXISTS up_sha256 text NOT NULL DEFAULT '',
                ADD COLUMN IF NOT EXISTS down_sha256 text,
                ADD COLUMN IF NOT EXISTS applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                ADD COLUMN IF NOT EXISTS applied_by text NOT NULL DEFAULT current_user,
                ADD COLUMN IF NOT EXISTS execution_ms bigint,
                ADD COLUMN IF NOT EXISTS release text,
                ADD COLUMN IF NOT EXISTS state text NOT NULL DEFAULT 'applied';
            CREATE TABLE IF NOT EXISTS schema_version_log (
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
                detail text);
            COMMIT;
            """)
    }

    deinit { connection.close() }

    // MARK: - Reading state

    /// Rows of `schema_version`, oldest first.
    public func applied() throws -> [AppliedMigration] {
        guard try hasTables() else { return [] }
        return try connection.query("""
            SELECT version, name, up_sha256, down_sha256, to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), release, state
            FROM schema_version ORDER BY applied_at, version
            """).rows.map { row in
            AppliedMigration(version: try row.int64(0), name: try row.string(1), upSHA256: try row.string(2), downSHA256: row[3],
                             appliedAt: Self.parseTimestamp(try row.string(4)), release: row[5], state: try row.string(6))
        }
    }

    /// The append-only log, oldest first.
    public func log() throws -> [MigrationLogEntry] {
        guard try hasTables() else { return [] }
        return try connection.query("SELECT id, version, action, release FROM schema_version_log ORDER BY id").rows.map { row in
            MigrationLogEntry(id: try row.int64(0), version: row[1].flatMap { Int64($0) }, action: try row.string(2), release: row[3])
        }
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
                throw RecoveryError(.migrationLocked, "another migration holds the lock: \(who)",
                                    hint: "wait for it to finish, or if it is stuck: SELECT pg_terminate_backend(<pid>)")
            }
            try Interruption.check()
            usleep(200_000)
        }
        defer { _ = try? connection.query("SELECT pg_advisory_unlock($1)", [String(Self.advisoryLockKey)]) }
        return try body()
    }

    // MARK: - Running

    /// Runs planned steps: one transaction for the whole plan, or one per step (`perStep`, and always
    /// for a no-transaction step, which is marked `applying` / `reverting` while it runs).
    ///
    /// - Important: on failure in one transaction, nothing of the plan remains applied.
    /// - Throws: `RecoveryError(.migrationFailed)` naming the step, the statement and the SQLSTATE.
    public func run(_ steps: [MigrationStep], backupID: String?) throws {
        try ensureTables()
        try connection.execute(script: """
            SET lock_timeout = \(Self.literal(configuration.lockTimeout));
            SET statement_timeout = \(Self.literal(configuration.statementTimeout))
            """)
        if configuration.perStep {
            for step in steps { try runInOwnTransaction([step], backupID: backupID) }
        } else {
            try runInOwnTransaction(steps, backupID: backupID)
        }
    }

    private func runInOwnTransaction(_ steps: [MigrationStep], backupID: String?) throws {
        if steps.count == 1, steps[0].noTransaction {
            try runWithoutTransaction(steps[0], backupID: backupID)
            return
        }
        try connection.execute(script: "BEGIN")
        do {
            for step in steps {
                try Interruption.check()
                let started = Date()
                try execute(step)
                try record(step, milliseconds: Int64(Date().timeIntervalSince(started) * 1000), backupID: backupID)
                CrashPoint.reached("migrate:between-steps")
            }
            try Interruption.check()   // a signal before COMMIT rolls the whole plan back
            try connection.execute(script: "COMMIT")
        } catch {
            _ = try? connection.execute(script: "ROLLBACK")
            if Interruption.isRequested { CleanupLog.cleaned("rolled back the migration (nothing applied)") }
            logFailure(error, backupID: backupID)
            throw error
        }
    }

    private func runWithoutTransaction(_ step: MigrationStep, backupID: String?) throws {
        let started = Date()
        if step.direction == .up {
            try connection.query("INSERT INTO schema_version (version, name, up_sha256, release, state) VALUES ($1, $2, $3, $4, 'applying')",
                                 [String(step.version), step.name, step.sha256, configuration.release])
        } else {
            try connection.query("UPDATE schema_version SET state = 'reverting' WHERE version = $1", [String(step.version)])
        }
        do {
            try execute(step)
        } catch {
            logFailure(error, backupID: backupID)
            throw error
        }
        try connection.execute(script: "BEGIN")
        if step.direction == .up {
            try connection.query("DELETE FROM schema_version WHERE version = $1", [String(step.version)])
        }
        try record(step, milliseconds: Int64(Date().timeIntervalSince(started) * 1000), backupID: backupID)
        try connection.execute(script: "COMMIT")
    }

    /// Runs each statement of a step, naming the failing one.
    private func execute(_ step: MigrationStep) throws {
        for (index, statement) in SQLStatements.split(step.sql).enumerated() {
            do {
                try connection.execute(script: statement)
            } catch let error as PostgresError {
                let excerpt = statement.split(separator: "\n").joined(separator: " ").prefix(120)
                throw RecoveryError(.migrationFailed,
                                    "\(step.direction.rawValue) step \(step.version) (\(step.name)) failed at statement \(index + 1) `\(excerpt)`: \(error.message) (SQLSTATE \(error.sqlState ?? "?"))",
                                    hint: configuration.perStep || step.noTransaction
                                        ? "earlier steps stay done; fix the migration and run again (dbmigrate status shows where it stands)"
                                        : "the whole plan was rolled back; the database is unchanged")
            }
        }
    }

    private func record(_ step: MigrationStep, milliseconds: Int64, backupID: String?) throws {
        let version = String(step.version)
        if step.direction == .up {
            let downSHA = (try? MigrationDirectory.load(configuration.directory))?.first { $0.version == step.version }?.down?.sha256
            try connection.query("""
                INSERT INTO schema_version (version, name, up_sha256, down_sha256, applied_at, execution_ms, release, state)
                VALUES ($1, $2, $3, $4, clock_timestamp(), $5, $6, 'applied')
                """, [version, step.name, step.sha256, downSHA, String(milliseconds), configuration.release])
        } else {
            try connection.query("DELETE FROM schema_version WHERE version = $1", [version])
        }
        try connection.query("""
            INSERT INTO schema_version_log (version, name, action, release, backup_id, execution_ms, sha256)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            """, [version, step.name, step.direction.rawValue, configuration.release, backupID, String(milliseconds), step.sha256])
    }

    private func logFailure(_ error: Error, backupID: String?) {
        _ = try? connection.query("INSERT INTO schema_version_log (action, release, backup_id, detail) VALUES ('failed', $1, $2, $3)",
                                  [configuration.release, backupID, RecoveryError.classify(error).message])
    }

    /// Records that `release` was deployed with nothing to migrate, so `down --to-release` knows its state.
    public func recordRelease(_ release: String, version: Int64?) throws {
        try ensureTables()
        try connection.query("INSERT INTO schema_version_log (version, action, release) VALUES ($1, 'release', $2)",
                             [version.map(String.init), release])
    }

    /// Marks a version applied or reverted by hand, after an operator checked the schema.
    public func resolve(_ version: Int64, applied: Bool, migration: Migration?) throws {
        try ensureTables()
        try connection.execute(script: "BEGIN")
        do {
            if applied {
                guard let migration else {
                    throw RecoveryError(.migrationRefused, "version \(version) is not in the migrations directory, so it cannot be marked applied")
                }
                try connection.query("""
                    INSERT INTO schema_version (version, name, up_sha256, down_sha256, release, state) VALUES ($1, $2, $3, $4, $5, 'applied')
                    ON CONFLICT (version) DO UPDATE SET state = 'applied', up_sha256 = EXCLUDED.up_sha256
                    """, [String(version), migration.name, migration.up.sha256, migration.down?.sha256, configuration.release])
            } else {
                try connection.query("DELETE FROM schema_version WHERE version = $1", [String(version)])
            }
            try connection.query("INSERT INTO schema_version_log (version, name, action, release, detail) VALUES ($1, $2, $3, $4, 'manual resolution')",
                                 [String(version), migration?.name, applied ? "resolve-applied" : "resolve-reverted", configuration.release])
            try connection.execute(script: "COMMIT")
        } catch {
            _ = try? connection.execute(script: "ROLLBACK")
            throw error
        }
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

    static func parseTimestamp(_ text: String) -> Date {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: text) ?? Date(timeIntervalSince1970: 0)
    }
}

/// Finds `DROP TABLE t` and `ALTER TABLE t DROP COLUMN c` in a script (for warnings only).
enum DestructiveStatements {
    struct Target: Equatable {
        var table: String
        var column: String?
    }

    static func targets(in sql: String) -> [Target] {
        var targets: [Target] = []
        for statement in SQLStatements.split(sql) {
            let words = statement.split(whereSeparator: { $0.isWhitespace || $0 == "," }).map(String.init)
            let upper = words.map { $0.uppercased() }
            if upper.starts(with: ["DROP", "TABLE"]) {
                var names = Array(words.dropFirst(2))
                if names.first?.uppercased() == "IF" { names = Array(names.dropFirst(2)) }
                for name in names where !["CASCADE", "RESTRICT"].contains(name.uppercased()) {
                    targets.append(Target(table: name, column: nil))
                }
            } else if upper.starts(with: ["ALTER", "TABLE"]) {
                var rest = Array(words.dropFirst(2))
                if rest.first?.uppercased() == "IF" { rest = Array(rest.dropFirst(2)) }
                if rest.first?.uppercased() == "ONLY" { rest = Array(rest.dropFirst()) }
                guard let table = rest.first else { continue }
                var index = 1
                while index < rest.count {
                    if rest[index].uppercased() == "DROP", index + 1 < rest.count, rest[index + 1].uppercased() == "COLUMN" {
                        var column = index + 2
                        if column < rest.count, rest[column].uppercased() == "IF" { column += 2 }
                        if column < rest.count { targets.append(Target(table: table, column: rest[column].trimmingCharacters(in: CharacterSet(charactersIn: "\"")))) }
                    }
                    index += 1
                }
            }
        }
        return targets
    }
}
