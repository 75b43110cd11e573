import BackupStorage
import Crypto
import Foundation
import Gzip
import PostgresClient
import ProcessSignals

/// An error of the recovery domain: a stable exit code, a one-line message naming the object,
/// and a hint saying what to do next.
public struct RecoveryError: Error, CustomStringConvertible, Sendable {
    public let code: ExitStatus
    public let message: String
    public let hint: String?
    /// The SQLSTATE of the server error this one reports, when it wraps one (a replay failure).
    public let serverState: String?
    /// Set on the error that stopped a restore for the repository's trouble (`repositoryTrouble(_:…)`).
    public private(set) var repositoryTrouble = false

    public init(_ code: ExitStatus, _ message: String, hint: String? = nil, serverState: String? = nil) {
        self.code = code
        self.message = message
        self.hint = hint
        self.serverState = serverState
    }

    /// Whether `error` is the database server's own trouble rather than the work's: out of disk,
    /// memory or connections (SQLSTATE class 53), an I/O or system error (58), the server's internal
    /// error or corruption (XX), a lost connection (08) or a shutdown (57P01–57P03). Another backup
    /// would fail the same way, or worse, fit where the right one did not.
    public static func isServerTrouble(_ error: Error) -> Bool {
        guard let state = serverState(of: error) else { return false }
        return ["53", "58", "XX", "08"].contains(String(state.prefix(2))) || ["57P01", "57P02", "57P03"].contains(state)
    }

    /// The SQLSTATE of a server error, or of the one a `RecoveryError` wraps; a lost connection is 08000.
    /// A statement that failed after a signal carries its SQLSTATE in the `InterruptedError` it became,
    /// so that clean-up after the signal still knows a cancel (57014) from a real refusal.
    static func serverState(of error: Error) -> String? {
        switch error {
        case let error as PostgresError: return error.kind == .connection ? "08000" : error.sqlState
        case let error as RecoveryError: return error.serverState
        case let error as InterruptedError: return error.serverState
        default: return nil
        }
    }

    /// Whether `error` is the repository's own trouble rather than a backup's: S3 answering 5xx or
    /// timing out after the client's retries, a reset or short read, an I/O error (EIO), a permission
    /// or a full disk — anything but a file that is missing (404, ENOENT), archived, or something other
    /// than a file where a backup's file should be (the backup's own damage). An older backup
    /// in the same repository would meet the same trouble, or, read a moment later, restore older
    /// data where the newest backup was whole: such an error stops a restore's search (exit 20).
    public static func isRepositoryTrouble(_ error: Error) -> Bool {
        switch error {
        case let error as StorageError: return ![.notFound, .archived, .locked, .invalidLocation].contains(error.kind)
        case let error as RecoveryError: return error.code == .repositoryError && error.repositoryTrouble
        default: return false
        }
    }

    /// The error that stops a restore on repository trouble (`isRepositoryTrouble`): names the
    /// repository, the backup being read and the object that failed, and says the target is untouched.
    static func repositoryTrouble(_ error: Error, repository: String, backup: String, untouched: String) -> RecoveryError {
        if let error = error as? RecoveryError, error.repositoryTrouble { return error }
        let detail = (error as? StorageError)?.description ?? classify(error).message
        var wrapped = RecoveryError(.repositoryError,
                                    "repository \(repository) failed while reading backup \(backup): \(detail); the backup itself may be whole, "
                                        + "so no older backup was tried",
                                    hint: "\(untouched); check the repository (endpoint, network, credentials, disk) and run again: "
                                        + "an older backup would meet the same trouble or restore older data than needed")
        wrapped.repositoryTrouble = true
        return wrapped
    }

    /// What to do about server trouble (`isServerTrouble`), by SQLSTATE.
    static func serverTroubleHint(_ state: String, untouched: String? = nil) -> String {
        let fix: String
        switch state {
        case "53100": fix = "the database server is out of disk space: free space on it (df on its data directory and tablespaces)"
        case "53200": fix = "the database server ran out of memory: free memory on it or lower --jobs"
        case "53300": fix = "the database server has no free connection slots: end idle sessions or lower --jobs"
        case "53400": fix = "a server limit was exceeded (temp_file_limit, max_locks_per_transaction …; the message names it): raise it"
        case "57P01", "57P02", "57P03", "08006": fix = "the server ended the session (an administrator's pg_terminate_backend, or a shutdown, restart or crash): find out why and wait until it accepts connections"
        default: fix = "the database server failed (SQLSTATE \(state)): look at its log and fix that"
        }
        return "\(fix), then run again" + (untouched.map { "; \($0); an older backup would not help" } ?? "")
    }

    public var description: String { message }

    /// Classifies any error from the lower modules into the exit-code table, with a hint.
    ///
    /// This is the one place where library errors meet the exit codes. Once a signal asked the run
    /// to stop, every failure is the interruption's (a killed child, a cancelled statement): exit 130.
    public static func classify(_ error: Error) -> RecoveryError {
        if let signal = Interruption.signal {
            return interrupted(by: signal)
        }
        switch error {
        case let error as RecoveryError:
            return error
        case let error as InterruptedError:
            return interrupted(by: error.signal)
        case let error as PostgresError where error.sqlState == PostgresError.lockNotAvailable:
            let blockers = error.blockingSessions.map { "; \($0)" } ?? "; the blocking session has ended since"
            return RecoveryError(.lockTimeout, "\(error.operation): waited longer than --lock-wait for a lock\(blockers)",
                                 hint: "end or wait for the session named (SELECT pg_terminate_backend(pid) ends it), or raise --lock-wait, then run again")
        case let error as PostgresError where error.sqlState == "40001" && error.message.contains("conflict with recovery"):
            // A hot standby cancels queries whose rows replay must remove (a long dump or count there).
            return RecoveryError(.databaseError, error.description,
                                 hint: "on the standby set hot_standby_feedback = on (or raise max_standby_streaming_delay), or back up the primary")
        case let error as PostgresError where error.sqlState == PostgresError.deadlockDetected:
            return RecoveryError(.databaseError, error.description,
                                 hint: "the server rolled back this run's transaction to end a deadlock with the session named above: nothing of that "
                                     + "transaction was applied; run again (if it repeats, once that session's work is done)")
        case let error as PostgresError where error.sqlState == PostgresError.queryCanceled:
            return RecoveryError(.databaseError, "\(error.operation): ran longer than statement_timeout and was cancelled (SQLSTATE 57014)",
                                 hint: "look for what slowed the server (pg_stat_activity), or raise statement_timeout for this role, then run again")
        case let error as PostgresError:
            switch error.kind {
            case .connection:
                // The server answered and refused the name: it is up, the URL names what it does not have.
                let hint: String
                if let database = error.message.firstMatch(of: /database "(.*)" does not exist/)?.1 {
                    hint = "the server is up but has no database \"\(database)\": check the database name in the URL (psql -l lists them)"
                } else if let role = error.message.firstMatch(of: /role "(.*)" does not exist/)?.1 {
                    hint = "the server is up but has no role \"\(role)\": check the user name in the URL (or PGUSER)"
                } else if error.isAuthenticationFailure {
                    hint = "check the user and password (DATABASE_URL, PGPASSWORD or ~/.pgpass)"
                } else {
                    hint = "check that the server is running and the host and port are right (pg_isready can tell)"
                }
                return RecoveryError(.databaseUnavailable, error.description, hint: hint)
            case .invalidConnectionString:
                return RecoveryError(.usage, "invalid database URL: \(error.message)",
                                     hint: "write postgresql://user@host:port/dbname (password in PGPASSWORD or ~/.pgpass)")
            case .query, .protocolViolation:
                var hint = error.serverHint
                if error.sqlState == "42501" {
                    hint = hint ?? (error.message.contains("create database")
                        ? "connect as a role with CREATEDB (or a superuser)"
                        : "grant the privilege the message names to the role connecting (GRANT … ON <object> TO <role>), or connect as a role that has it (its owner or a superuser)")
                } else if isServerTrouble(error), let state = error.sqlState {
                    hint = hint ?? serverTroubleHint(state)
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
        case let error as CocoaError:
            let path = (error.userInfo[NSFilePathErrorKey] as? String) ?? error.url?.path ?? "a file"
            let underlying = (error.userInfo[NSUnderlyingErrorKey] as? NSError).flatMap { $0.domain == NSPOSIXErrorDomain ? $0.code : nil }
            let reason = underlying.map { String(cString: strerror(Int32($0))) }
                ?? error.localizedDescription.replacingOccurrences(of: "The operation could not be completed. ", with: "")
            let verb = error.isFileReadError ? "read" : error.isFileWriteError ? "write" : "use"
            return RecoveryError(.repositoryError, "cannot \(verb) \(path): \(reason)",
                                 hint: "check that \(path) and its directory exist, that this user may \(verb == "use" ? "read and write" : verb) them, and free space")
        default:
            return byType.lazy.compactMap { $0.classify(error) }.first ?? RecoveryError(.failure, "\(error)", hint: ExitStatus.failure.defaultHint)
        }
    }

    /// A library error that classifies by its type alone: its exit status, a message around the
    /// error's own text, and a fixed hint.
    private struct ByType: Sendable {
        let classify: @Sendable (Error) -> RecoveryError?

        init<Failure: Error>(_ type: Failure.Type, where applies: @escaping @Sendable (Failure) -> Bool = { _ in true }, _ code: ExitStatus,
                             _ message: @escaping @Sendable (Failure) -> String, hint: String) {
            classify = { error in (error as? Failure).flatMap { applies($0) ? RecoveryError(code, message($0), hint: hint) : nil } }
        }
    }

    /// The errors of compression, encryption and JSON, first match first: a failure to compress is
    /// this run's (nothing was stored), any other gzip error is damage.
    private static let byType = [
        ByType(GzipError.self, where: { $0.kind == .compression }, .failure, { "compressing failed: \($0)" },
               hint: "zlib could not compress (usually out of memory: check free memory and ulimit -v); nothing was stored, run again"),
        ByType(GzipError.self, .backupCorrupt, { "compressed data is damaged: \($0)" }, hint: ExitStatus.backupCorrupt.defaultHint),
        ByType(CryptoKitError.self, .backupCorrupt, { "decryption failed (\($0)): the data was altered or the key is not the one it was encrypted with" },
               hint: "check --encryption-key-file (or DBRECOVERY_ENCRYPTION_KEY) is this repository's key; dbverify --files finds damaged files"),
        ByType(DecodingError.self, .backupCorrupt, { "a stored JSON document is unreadable: \(describe($0))" },
               hint: "run dbverify --files to find the damaged backup; restore another one"),
        ByType(EncodingError.self, .failure, { "could not encode a JSON document: \($0)" }, hint: "this is a bug in dbrecovery; report the message above"),
    ]

    /// The error a signal turns a run into (as a timeline step records it).
    static func interrupted(by signal: Int32) -> RecoveryError {
        RecoveryError(.interrupted, "interrupted by \(Interruption.name(of: signal))",
                      hint: "run the command again when ready; a second signal exits at once and leaves clean-up to the next run")
    }

    /// The run's last word when a signal ended it: the interruption, then what its error paths removed
    /// and what was kept, on one line.
    public func withCleanupSummary() -> RecoveryError {
        guard code == .interrupted else { return self }
        let (cleaned, kept) = CleanupLog.entries
        // "Nothing needed removing" only when nothing was left either: a drop that failed is named in `kept`.
        let removed = !cleaned.isEmpty ? cleaned.joined(separator: ", ") : kept.isEmpty ? "nothing of this run needed removing" : "removed nothing"
        let keptText = kept.isEmpty ? "kept every backup and database that existed before the run" : "kept " + kept.joined(separator: ", ")
        return RecoveryError(code, "\(message): \(removed); \(keptText)", hint: hint)
    }

    private static func describe(_ error: DecodingError) -> String {
        switch error {
        case .dataCorrupted(let context): return context.debugDescription
        case .keyNotFound(let key, _): return "missing field \(key.stringValue)"
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            return "field \(context.codingPath.map(\.stringValue).joined(separator: ".")): \(context.debugDescription)"
        @unknown default: return "\(error)"
        }
    }
}

extension CocoaError {
    /// Foundation's file-reading codes are 256…511, its file-writing codes 512…767.
    fileprivate var isFileReadError: Bool { (256..<512).contains(code.rawValue) }
    fileprivate var isFileWriteError: Bool { (512..<768).contains(code.rawValue) }
}
