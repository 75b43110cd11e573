import BackupStorage
import Foundation

/// Opens the store behind a `--repo` address.
public enum Repository {
    /// The retention tier of a repository address: `local` or `s3`.
    public static func tierName(_ address: String) throws -> String {
        if case .s3 = try RepositoryLocation(parsing: address) { return "s3" }
        return "local"
    }

    /// Opens a repository.
    ///
    /// - Parameters:
    ///   - address: a path, `file://` URL or `s3://bucket/prefix`.
    ///   - create: create a missing local directory (backups do; restores and listings do not).
    ///   - environment: what S3 settings are read from (credentials, endpoint, region): the run's
    ///     resolved settings, with `--s3-endpoint`/`--s3-region` applied, not the process's.
    /// - Throws: `RecoveryError` naming the address and the fix.
    public static func open(_ address: String, create: Bool, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> BackupStore {
        let location: RepositoryLocation
        do {
            location = try RepositoryLocation(parsing: address)
        } catch let error as StorageError {
            throw RecoveryError(.usage, "invalid --repo '\(address)': \(error.message)", hint: error.hint)
        }
        switch location {
        case .local(let path):
            do {
                return try LocalStore(root: path, create: create)
            } catch let error as StorageError where error.kind == .notFound && !create {
                throw RecoveryError(.repositoryError, "repository \(path) does not exist",
                                    hint: "check --repo (or BACKUP_REPO); dbbackup creates it on its first backup")
            }
        case .s3(let bucket, let prefix):
            do {
                return S3Store(configuration: try S3Settings.configuration(bucket: bucket, environment: environment), prefix: prefix)
            } catch let error as StorageError where error.kind == .invalidLocation {
                // A setting to fix (no credentials, a malformed value); a metadata service or STS that fails is
                // the repository's trouble (exit 20), classified as such by the caller.
                throw RecoveryError(.usage, "cannot use \(address): \(error.message)", hint: error.hint)
            }
        }
    }
}
