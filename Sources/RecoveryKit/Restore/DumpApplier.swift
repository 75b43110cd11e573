import BackupStorage
import Foundation
import Gzip
import PostgresClient

/// Replays a logical backup's dump into one database through `psql`, in one transaction that is
/// committed only after the stored file's sha256 has been checked at the end of the stream.
enum DumpApplier {
    /// `maintenance_work_mem` for the restore's index builds (`DBRECOVERY_RESTORE_MAINTENANCE_WORK_MEM`).
    static var maintenanceWorkMem: String {
        let value = ProcessInfo.processInfo.environment["DBRECOVERY_RESTORE_MAINTENANCE_WORK_MEM"] ?? "256MB"
        return value.allSatisfy { $0.isLetter || $0.isNumber } ? value : "256MB"
    }

    /// Streams `backups/<id>/dump.sql.gz` → sha256 + gunzip → `psql -v ON_ERROR_STOP=1`.
    ///
    /// - Important: on a checksum mismatch, a gzip error or a psql error the transaction is never
    ///   committed (psql is killed before it sees COMMIT), so nothing is applied.
    /// - Throws: `RecoveryError` (`.backupCorrupt`, `.toolFailed`) or `StorageError`.
    static func apply(_ manifest: BackupManifest, from store: BackupStore, into target: ConnectionTarget,
                      tools: PostgresTools, key: RepositoryKey?, progress: ProgressObserver?) throws {
        guard manifest.kind == .logical, let file = manifest.files.first(where: { $0.name == LogicalCapture.dumpFileName }) else {
            throw RecoveryError(.usage, "backup \(manifest.id) is a \(manifest.kind.rawValue) backup; a logical restore needs a logical one",
                                hint: "restore physical backups with dbrestore --pitr")
        }
        let psql = try tools.path(of: "psql")

        let child = try ChildProcess(
            executable: psql, arguments: ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password", "-o", "/dev/null"],
            environment: target.childEnvironment, stdin: .pipe, stdout: .null, stderr: .pipe)
        let errors = OutputCollector(descriptor: child.standardError)
        var committed = false
        defer {
            if !committed {
                child.send(SIGKILL)
                child.waitForExit()
            }
        }

        func psqlFailure() -> RecoveryError {
            child.closeStandardInput()
            let termination = child.waitForExit()
            let reason = errors.mostRelevantLine() ?? termination.description
            return RecoveryError(.restoreFailed, "psql failed while replaying backup \(manifest.id): \(reason)",
                                 hint: "nothing was applied; the target database is unchanged")
        }

        do {
            // The restore goes into a fresh scratch database that nobody else uses: give its index builds
            // more memory than the server's default, for this session only.
            let prologue = "BEGIN;\nSET LOCAL maintenance_work_mem = '\(maintenanceWorkMem)';\nSET LOCAL synchronous_commit = off;\n"
            try Array(prologue.utf8).withUnsafeBytes { try child.writeToStandardInput($0) }
            try StoredFileStream.decompress(file, of: manifest, from: store, key: key, phase: "restore", progress: progress) { plain in
                try child.writeToStandardInput(plain)
            }
        } catch let error as RecoveryError where error.code == .toolFailed {
            throw psqlFailure()
        }
        do {
            try Array("COMMIT;\n".utf8).withUnsafeBytes { try child.writeToStandardInput($0) }
        } catch {
            throw psqlFailure()
        }
        child.closeStandardInput()
        let termination = child.waitForExit()
        committed = true
        guard termination.succeeded else {
            let reason = errors.mostRelevantLine() ?? termination.description
            throw RecoveryError(.restoreFailed, "psql failed while replaying backup \(manifest.id): \(reason)",
                                hint: "nothing was applied; the target database is unchanged")
        }
    }
}
