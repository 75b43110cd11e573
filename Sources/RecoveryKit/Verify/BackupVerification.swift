import PostgresClient

/// The entry point of `dbverify`: resolve the backup, then check files or row counts.
public enum BackupVerification {
    /// Checks the stored files of one backup, or of `all`.
    ///
    /// - Throws: `RecoveryError` when the repository or backup cannot be found.
    public static func files(repository: String, backup: String, key: RepositoryKey? = nil, progress: ProgressObserver? = nil) throws -> [FileVerifier.Report] {
        let store = try Repository.open(repository, create: false)
        let catalog = Catalog(store: store)
        if backup == "all" {
            return try catalog.entries().map { entry in
                guard let manifest = entry.manifest else {
                    return FileVerifier.Report(id: entry.id, files: [.init(name: BackupManifest.fileName, ok: false, problem: entry.problem)])
                }
                return try FileVerifier.verify(manifest, in: store, cipherKey: key, progress: progress)
            }
        }
        return [try FileVerifier.verify(try catalog.resolve(backup), in: store, cipherKey: key, progress: progress)]
    }

    /// Compares the live database's row counts with one backup's manifest.
    ///
    /// - Throws: `RecoveryError` / `PostgresError` when the backup or database cannot be reached.
    public static func rowCounts(repository: String, backup: String, target: ConnectionTarget) throws -> RowCountVerifier.Report {
        let store = try Repository.open(repository, create: false)
        let manifest = try Catalog(store: store).resolve(backup)
        let connection = try PostgresConnection(target: target, applicationName: "dbverify")
        defer { connection.close() }
        return try RowCountVerifier.verify(manifest, on: connection)
    }
}
