import BackupStorage
import Gzip
import PostgresClient

/// An error of the recovery domain: a stable exit code, a one-line message naming the object,
/// and a hint saying what to do next.
public struct RecoveryError: Error, CustomStringConvertible, Sendable {
    public let code: ExitStatus
    public let message: String
    public let hint: String?

    public init(_ code: ExitStatus, _ message: String, hint: String? = nil) {
        self.code = code
        self.message = message
        self.hint = hint
    }

    public var description: String { message }

    /// Classifies any error from the lower modules into the exit-code table, with a hint.
    ///
    /// This is the one place where library errors meet the exit codes.
    public static func classify(_ error: Error) -> RecoveryError {
        switch error {
        case let error as RecoveryError:
            return error
        case let error as PostgresError:
            switch error.kind {
            case .connection:
                let hint = error.isAuthenticationFailure
                    ? "check the user and password (DATABASE_URL, PGPASSWORD or ~/.pgpass)"
                    : "check that the server is running and the host and port are right (pg_isready can tell)"
                return RecoveryError(.databaseUnavailable, error.description, hint: hint)
            case .invalidConnectionString:
                return RecoveryError(.usage, "invalid database URL: \(error.message)",
                                     hint: "write postgresql://user@host:port/dbname (password in PGPASSWORD or ~/.pgpass)")
            case .query, .protocolViolation:
                var hint = error.serverHint
                if error.sqlState == "42501" {
                    hint = hint ?? "connect as a role with the needed privilege (superuser, CREATEDB or the database owner)"
                }
                return RecoveryError(.databaseError, error.description, hint: hint)
            }
        case let error as StorageError:
            let code: ExitStatus
            switch error.kind {
            case .locked: code = .repositoryLocked
            case .notFound: code = .repositoryError
            case .archived: code = .backupArchived
            default: code = .repositoryError
            }
            return RecoveryError(code, "repository \(error.description)", hint: error.hint)
        case let error as GzipError:
            return RecoveryError(.backupCorrupt, "compressed data is damaged: \(error.description)",
                                 hint: "run dbverify --files to check every backup; restore an older one")
        default:
            return RecoveryError(.failure, "\(error)")
        }
    }
}
