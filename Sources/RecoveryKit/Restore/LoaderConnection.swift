import Foundation
import PostgresClient

/// One connection of a restore, with the dump's session settings it has in force, so that each
/// statement runs under the settings written before it in the dump, whichever connection runs it.
///
/// Not thread-safe: one thread at a time, like the `PostgresConnection` it wraps.
final class LoaderConnection {
    let connection: PostgresConnection
    /// The backup being restored, for messages.
    let backupID: String
    private var applied = SessionSettings()

    /// `maintenance_work_mem` for a restore's index builds: `DBRECOVERY_RESTORE_MAINTENANCE_WORK_MEM`
    /// in the run's resolved environment if it is a plain size (`1GB`), else 256MB.
    static func maintenanceWorkMem(in environment: [String: String]) -> String {
        let value = environment["DBRECOVERY_RESTORE_MAINTENANCE_WORK_MEM"] ?? "256MB"
        return !value.isEmpty && value.allSatisfy { $0.isLetter || $0.isNumber } ? value : "256MB"
    }

    /// On a live database: the lock wait the dump's own `SET lock_timeout = 0` must not undo.
    private let lockWait: String?

    /// Opens a connection to the database being restored.
    ///
    /// - Parameters:
    ///   - maintenanceWorkMem: see `maintenanceWorkMem(in:)`.
    ///   - lockWaitSeconds: for a loader on a live database (`--table … --into-schema/--replace`):
    ///     every statement waits at most this long for a lock an application holds, whatever the dump
    ///     sets (pg_dump writes `SET lock_timeout = 0`), so that a statement queued behind one
    ///     transaction never stalls the others queued behind it; nil in a scratch database of ours.
    /// - Throws: `PostgresError` if it cannot connect.
    init(target: ConnectionTarget, backupID: String, maintenanceWorkMem: String, lockWaitSeconds: Int? = nil) throws {
        connection = try PostgresConnection(target: target, applicationName: "dbrestore")
        self.backupID = backupID
        lockWait = lockWaitSeconds.map { "SET lock_timeout = '\($0)s'" }
        // A fresh scratch database nobody else uses: index builds may take more memory, and a lost
        // commit is a failed restore that is run again, so no need to wait for the WAL flush.
        try connection.execute(script: "SET maintenance_work_mem = '\(maintenanceWorkMem)'; SET synchronous_commit = off")
        try limitLockWaits()
    }

    /// Sets the live database's lock wait again (after the dump's settings, or a ROLLBACK that undid
    /// a SET made in its transaction); nothing in a scratch database.
    func limitLockWaits() throws {
        if let lockWait { try connection.execute(script: lockWait) }
    }

    /// Brings the connection to `settings` (only what differs from what it has).
    ///
    /// - Throws: `RecoveryError(.restoreFailed)` naming the setting the server refused.
    func use(_ settings: SessionSettings) throws {
        let statements = settings.statements(from: applied)
        for statement in statements {
            do {
                try connection.execute(bytes: statement)
            } catch let error as PostgresError where error.sqlState == Self.undefinedObject && isKnownNewerSetting(statement) {
                // A newer pg_dump's `SET transaction_timeout = 0` on an older server: psql reports it
                // and goes on, and the server's default is that value anyway.
                continue
            } catch {
                throw DumpApplier.failure(error, in: DumpScanner.Statement(sql: statement, settings: settings).excerpt, backupID: backupID)
            }
        }
        applied = settings
        if !statements.isEmpty { try limitLockWaits() }
    }

    /// Runs a statement of the dump under the settings in force where it stood.
    ///
    /// - Throws: `RecoveryError(.restoreFailed)` naming the statement and the server's reason.
    /// A deadlock the server reports is thrown as the `PostgresError` it is, for the caller to retry.
    func run(_ statement: DumpScanner.Statement) throws {
        try use(statement.settings)
        do {
            try connection.execute(bytes: statement.sql)
        } catch let error as PostgresError where error.sqlState == PostgresError.deadlockDetected {
            throw error
        } catch {
            throw DumpApplier.failure(error, in: statement.excerpt, backupID: backupID)
        }
    }

    /// Starts a COPY of the dump under the settings in force where it stood.
    ///
    /// - Throws: `RecoveryError(.restoreFailed)` naming the statement and the server's reason.
    func beginCopy(_ statement: DumpScanner.Statement) throws {
        try use(statement.settings)
        do {
            try connection.beginCopy(bytes: statement.sql)
        } catch {
            throw DumpApplier.failure(error, in: statement.excerpt, backupID: backupID)
        }
    }

    func close() { connection.close() }

    /// Whether `statement` sets a parameter that newer pg_dumps write and this server's major lacks.
    private func isKnownNewerSetting(_ statement: [UInt8]) -> Bool {
        guard case .set(let name)? = SessionSettings.change(made: statement) else { return false }
        return PostgresMajor(serverVersionNumber: connection.serverVersionNumber).unknownDumpSettings.contains(name)
    }

    /// SQLSTATE 42704 (`unrecognized configuration parameter`).
    static let undefinedObject = "42704"
}
