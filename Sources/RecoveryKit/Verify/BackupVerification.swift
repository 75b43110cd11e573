import BackupStorage
import Foundation
import PostgresClient
import ProcessSignals

/// The entry point of `dbverify`: resolve the backup, then check files or row counts.
public enum BackupVerification {
    /// Checks the stored files of one backup, or of `all`. With `all`, a backup that cannot be
    /// checked (unreadable manifest, a file that cannot be opened) is reported and the others are
    /// still checked; one that `dbprune` removes meanwhile is reported as pruned, not damaged.
    ///
    /// `latest` is the newest backup of `database` (`--from-database`) when one is named (and `all`,
    /// all of its backups); else the newest of each database's logical backups and of each server's
    /// base backups (the groups retention counts in, `RetentionGroup`): in a repository shared by several databases the
    /// newest backup of all is one database's, and a damaged newest backup of another would go unseen.
    ///
    /// Each backup is checked under a reader lock (`StoreLock.sharedIfWritable`, as a restore reads
    /// it), taken before its manifest is read again: `dbprune` leaves a backup alone while it is checked.
    ///
    /// - Throws: `RecoveryError` when the repository or backup cannot be found.
    public static func files(repository: String, backup: String, database: String? = nil, key: RepositoryKey? = nil, progress: ProgressObserver? = nil,
                             environment: [String: String] = ProcessInfo.processInfo.environment) throws -> [FileVerifier.Report] {
        let store = try Repository.open(repository, create: false, environment: environment)
        let catalog = Catalog(store: store)
        let entries = try catalog.entries()
        let manifests = entries.compactMap(\.manifest)
        if backup == "all" {
            // With a database named, its logical backups (and manifests that cannot say whose they are).
            let chosen = entries.filter { entry in
                database.map { name in entry.manifest.map { $0.kind == .logical && $0.database.name.isSameDatabaseName(as: name) } ?? true } ?? true
            }
            return try chosen.map { entry in
                guard entry.manifest != nil else {
                    return FileVerifier.Report(id: entry.id, files: [.init(name: BackupManifest.fileName, ok: false, problem: entry.problem)])
                }
                let reading = try StoreLock.sharedIfWritable(in: store, backupID: entry.id, holder: LockHolder(command: "dbverify"))
                defer { try? reading?.release() }   // a leftover reader record only delays pruning; dbprune removes it once we are gone
                let reread: BackupManifest?
                do {
                    reread = try catalog.manifestAsReader(entry.id)
                } catch {
                    // Unreadable now (damaged since the listing, archived, the store failing): this backup's row, not the run's end.
                    return FileVerifier.Report(id: entry.id, files: [.init(name: BackupManifest.fileName, ok: false,
                                                                          problem: "cannot be read: \(RecoveryError.classify(error).message)")])
                }
                guard let manifest = reread else { return pruned(entry.id) }
                var report: FileVerifier.Report
                do {
                    report = try FileVerifier.verify(manifest, in: store, cipherKey: key, progress: progress)
                } catch {
                    let problem = "cannot be read: \(RecoveryError.classify(error).message)"
                    report = FileVerifier.Report(id: entry.id, files: manifest.files.map { .init(name: $0.name, ok: false, problem: problem) })
                }
                // Without a reader lock (a read-only repository) a prune can still take the files away mid-check.
                if !report.ok, try isPruned(manifest, in: store) { return pruned(entry.id) }
                report = remember(report, of: manifest, in: store)
                // Every member is checked in its own row; a missing one makes its incrementals unrestorable.
                if let problem = chainProblem(of: manifest, in: manifests) { report.files.append(problem) }
                return report
            }
        }
        if backup == "latest", database == nil {
            let newest = RetentionGroup.split(manifests).compactMap(\.manifests.first)
            if newest.count > 1 {
                return try newest.flatMap { try files(of: $0, in: catalog, manifests: manifests, key: key, progress: progress) }
            }
        }
        return try files(of: try catalog.resolve(backup, namedDatabase: database), in: catalog, manifests: manifests, key: key, progress: progress)
    }

    /// Checks one backup's files: an incremental's whole chain, full backup first, each member read
    /// again under a reader lock.
    private static func files(of resolved: BackupManifest, in catalog: Catalog, manifests: [BackupManifest], key: RepositoryKey?,
                              progress: ProgressObserver?) throws -> [FileVerifier.Report] {
        let store = catalog.store
        let chain = resolved.incremental == nil || chainProblem(of: resolved, in: manifests) != nil
            ? [resolved] : try IncrementalChain.members(of: resolved, in: manifests)
        // Every backup read gets a reader lock first, then its manifest is read again under it.
        var locks: [StoreLock] = []
        defer { for lock in locks { try? lock.release() } }
        var members: [BackupManifest] = []
        for member in chain {
            if let lock = try StoreLock.sharedIfWritable(in: store, backupID: member.id, holder: LockHolder(command: "dbverify")) { locks.append(lock) }
            guard let manifest = try catalog.manifestAsReader(member.id) else {
                throw RecoveryError(.backupNotFound, "backup \(member.id) was removed (by dbprune?) before it could be checked",
                                    hint: "dbrestore list shows the backups there are; check another one")
            }
            members.append(manifest)
        }
        return try members.map { manifest in
            var report = try FileVerifier.verify(manifest, in: store, cipherKey: key, progress: progress)
            if !report.ok, try isPruned(manifest, in: store) {
                throw RecoveryError(.backupNotFound, "backup \(manifest.id) was removed (by dbprune?) while it was being checked",
                                    hint: "it is gone, not damaged; dbrestore list shows the backups there are")
            }
            report = remember(report, of: manifest, in: store)
            // An incremental is only as good as its chain: every member, full backup first.
            if manifest.id == resolved.id, let problem = chainProblem(of: manifest, in: manifests) { report.files.append(problem) }
            return report
        }
    }

    /// The row of a backup `dbprune` removed while this run was getting to it.
    private static func pruned(_ id: String) -> FileVerifier.Report {
        var report = FileVerifier.Report(id: id, files: [])
        report.pruned = true
        return report
    }

    /// Whether `manifest`'s backup is gone from the repository (its manifest deleted: `dbprune`
    /// deletes a backup's manifest before its files), so missing files mean pruned, not damaged.
    private static func isPruned(_ manifest: BackupManifest, in store: BackupStore) throws -> Bool {
        do {
            _ = try store.objectInfo(manifest.folderKey + "/" + BackupManifest.fileName)
            return false
        } catch let error as StorageError where error.kind == .notFound {
            return true
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
    /// - Parameters:
    ///   - backup: an id, prefix or `latest` (the newest logical backup of `target`'s database, or of
    ///     `fromDatabase`); nil means the backup the database was restored from, when a restore
    ///     recorded one, else `latest`.
    ///   - fromDatabase: `--from-database`: whose newest backup `latest` is, when not the target's.
    /// - Throws: `RecoveryError` / `PostgresError` when the backup or database cannot be reached.
    public static func rowCounts(repository: String, backup: String?, fromDatabase: String? = nil, target: ConnectionTarget,
                                 environment: [String: String] = ProcessInfo.processInfo.environment) throws -> RowCountVerifier.Report {
        let store = try Repository.open(repository, create: false, environment: environment)
        let connection = try PostgresConnection(target: target, applicationName: "dbverify")
        defer { connection.close() }
        var reference = backup ?? "latest"
        var basis: String?
        if backup == nil, fromDatabase == nil, let marker = try ToolDatabases.marker(of: target.databaseName, on: connection), marker.kind == .restored,
           let restored = marker.backup {
            reference = restored
            basis = "restored from it at \(marker.at)"
        }
        let manifest: BackupManifest
        do {
            // `latest` is the target database's newest backup, not another database's in a shared repository,
            // nor one of the same name on another server when the target's own server has some (`ServerScope`).
            manifest = try Catalog(store: store).resolve(reference, database: fromDatabase ?? target.databaseName,
                                                         targetSystem: ServerScope.systemIdentifier(of: connection))
        } catch let error as RecoveryError where basis != nil && error.code == .backupNotFound {
            throw RecoveryError(.backupNotFound, "\(target.databaseName) was restored from backup \(reference), which is not in \(store.location)",
                                hint: "name the backup to compare with (dbverify latest), or point --repo at the repository it came from")
        }
        try Catalog.refuseContradiction(of: manifest, fromDatabase: fromDatabase)
        var report = try RowCountVerifier.verify(manifest, on: connection)
        report.basis = basis ?? (backup == nil ? "newest backup of database \(manifest.database.name)" : nil)
        report.backupDatabase = manifest.database.name
        return report
    }
}
