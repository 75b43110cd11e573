import BackupStorage
import Foundation
import PostgresClient

/// The entry point of `dbverify`: resolve the backup, then check files or row counts.
public enum BackupVerification {
    /// Checks the stored files of one backup, or of `all`. With `all`, a backup that cannot be
    /// checked (unreadable manifest, a file that cannot be opened) is reported and the others are
    /// still checked.
    ///
    /// - Throws: `RecoveryError` when the repository or backup cannot be found.
    public static func files(repository: String, backup: String, key: RepositoryKey? = nil, progress: ProgressObserver? = nil,
                             environment: [String: String] = ProcessInfo.processInfo.environment) throws -> [FileVerifier.Report] {
        let store = try Repository.open(repository, create: false, environment: environment)
        let catalog = Catalog(store: store)
        let entries = try catalog.entries()
        let manifests = entries.compactMap(\.manifest)
        if backup == "all" {
            return entries.map { entry in
                guard let manifest = entry.manifest else {
                    return FileVerifier.Report(id: entry.id, files: [.init(name: BackupManifest.fileName, ok: false, problem: entry.problem)])
                }
                var report: FileVerifier.Report
                do {
                    report = remember(try FileVerifier.verify(manifest, in: store, cipherKey: key, progress: progress), of: manifest, in: store)
                } catch {
                    let problem = "cannot be read: \(RecoveryError.classify(error).message)"
                    report = FileVerifier.Report(id: entry.id, files: manifest.files.map { .init(name: $0.name, ok: false, problem: problem) })
                }
                // Every member is checked in its own row; a missing one makes its incrementals unrestorable.
                if let problem = chainProblem(of: manifest, in: manifests) { report.files.append(problem) }
                return report
            }
        }
        let manifest = try catalog.resolve(backup)
        guard manifest.incremental != nil else {
            return [remember(try FileVerifier.verify(manifest, in: store, cipherKey: key, progress: progress), of: manifest, in: store)]
        }
        // An incremental is only as good as its chain: every member, full backup first.
        if let problem = chainProblem(of: manifest, in: manifests) {
            var report = remember(try FileVerifier.verify(manifest, in: store, cipherKey: key, progress: progress), of: manifest, in: store)
            report.files.append(problem)
            return [report]
        }
        return try IncrementalChain.members(of: manifest, in: manifests).map {
            remember(try FileVerifier.verify($0, in: store, cipherKey: key, progress: progress), of: $0, in: store)
        }
    }

    /// A row naming the member an incremental's chain lacks, or nil when the chain is complete.
    private static func chainProblem(of manifest: BackupManifest, in manifests: [BackupManifest]) -> FileVerifier.FileResult? {
        guard manifest.incremental != nil else { return nil }
        do {
            _ = try IncrementalChain.members(of: manifest, in: manifests)
            return nil
        } catch {
            return .init(name: "chain", ok: false, problem: RecoveryError.classify(error).message)
        }
    }

    /// A full read's verdict kept for `dbprune` (`VerificationRecord`): damage deletes the record
    /// that vouched for the backup, a pass refreshes it. Archived (GLACIER) files say neither.
    private static func remember(_ report: FileVerifier.Report, of manifest: BackupManifest, in store: BackupStore) -> FileVerifier.Report {
        if report.ok {
            VerificationRecord.recordPassed(manifest, in: store)
        } else if !report.onlyArchived {
            VerificationRecord.forget(manifest, in: store)
        }
        return report
    }

    /// Compares the live database's row counts with one backup's manifest.
    ///
    /// - Parameter backup: an id, prefix or `latest`; nil means the backup the database was restored
    ///   from, when a restore recorded one, else `latest`.
    /// - Throws: `RecoveryError` / `PostgresError` when the backup or database cannot be reached.
    public static func rowCounts(repository: String, backup: String?, target: ConnectionTarget,
                                 environment: [String: String] = ProcessInfo.processInfo.environment) throws -> RowCountVerifier.Report {
        let store = try Repository.open(repository, create: false, environment: environment)
        let connection = try PostgresConnection(target: target, applicationName: "dbverify")
        defer { connection.close() }
        var reference = backup ?? "latest"
        var basis: String?
        if backup == nil, let marker = try ToolDatabases.marker(of: target.databaseName, on: connection), marker.kind == .restored,
           let restored = marker.backup {
            reference = restored
            basis = "restored from it at \(marker.at)"
        }
        let manifest: BackupManifest
        do {
            manifest = try Catalog(store: store).resolve(reference)
        } catch let error as RecoveryError where basis != nil && error.code == .backupNotFound {
            throw RecoveryError(.backupNotFound, "\(target.databaseName) was restored from backup \(reference), which is not in \(store.location)",
                                hint: "name the backup to compare with (dbverify latest), or point --repo at the repository it came from")
        }
        var report = try RowCountVerifier.verify(manifest, on: connection)
        report.basis = basis ?? (backup == nil ? "newest backup" : nil)
        return report
    }
}
