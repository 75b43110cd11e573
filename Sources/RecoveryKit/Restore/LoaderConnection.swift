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

    /// Opens a connection to the database being restored.
    ///
    /// - Parameter maintenanceWorkMem: see `maintenanceWorkMem(in:)`.
    /// - Throws: `PostgresError` if it cannot connect.
    init(target: ConnectionTarget, backupID: String, maintenanceWorkMem: String) throws {
        connection = try PostgresConnection(target: target, applicationName: "dbrestore")
        self.backupID = backupID
        // A fresh scratch database nobody else uses: index builds may take more memory, and a lost
        // commit is a failed restore that is run again, so no need to wait for the WAL flush.
        try connection.execute(script: "SET maintenance_work_mem = '\(maintenanceWorkMem)'; SET synchronous_commit = off")
    }

    /// Brings the connection to `settings` (only what differs from what it has).
    ///
    /// - Throws: `RecoveryError(.restoreFailed)` naming the setting the server refused.
    func use(_ settings: SessionSettings) throws {
        for statement in settings.statements(from: applied) {
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
