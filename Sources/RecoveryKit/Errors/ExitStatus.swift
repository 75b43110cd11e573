/// The one table of exit codes shared by all five executables. Stable: never renumber.
///
/// Mirrored in README.md ("Exit codes"); a test checks the two agree.
public enum ExitStatus: Int32, CaseIterable, Sendable {
    case success = 0
    /// Anything not covered below. For `dbrestore wal-fetch` only: the segment is not in the archive.
    case failure = 1
    /// A flag or value is malformed or missing.
    case usage = 2
    /// A configuration or policy file is unreadable or invalid.
    case configuration = 3
    /// The operator answered no at a confirmation prompt; nothing was changed.
    case declined = 4
    /// The database server is unreachable or refused the credentials.
    case databaseUnavailable = 10
    /// A statement failed on the server (including missing privileges).
    case databaseError = 11
    /// A PostgreSQL program we run (pg_dump, psql, pg_basebackup) is missing or failed.
    case toolFailed = 12
    /// Waited longer than `--lock-wait` for a lock another session held or queued (named in the message);
    /// for `dbrestore` and `dbrestore cleanup`, another restore or clean-up of the same database is running;
    /// a swap statement waited longer than `--swap-timeout` for another session's lock.
    case lockTimeout = 13
    /// `dbbackup --physical`: the server archived none of the backup's WAL for `--archive-timeout`
    /// (archive_command failing or hung); the message names the segment; nothing was stored.
    case archiveTimeout = 14
    /// The repository cannot be read or written (permissions, disk full, I/O).
    case repositoryError = 20
    /// Another process holds the repository lock.
    case repositoryLocked = 21
    /// No backup matches (unknown id, empty repository).
    case backupNotFound = 22
    /// A backup's files or manifest are damaged (checksum, gzip, unreadable manifest).
    case backupCorrupt = 23
    /// A backup's files are archived (S3 GLACIER) and need a restore request before use.
    case backupArchived = 24
    /// Live row counts differ from the manifest.
    case verificationMismatch = 30
    /// A restore stopped before the swap; the target database is unchanged.
    case restoreFailed = 31
    /// A migration failed and was rolled back.
    case migrationFailed = 40
    /// Another dbmigrate holds the migration lock.
    case migrationLocked = 41
    /// The migration plan was refused in pre-flight; nothing ran.
    case migrationRefused = 42
    /// Some repositories succeeded and some failed.
    case partial = 50
    /// `dbrestore wal-fetch` found the segment but could not fetch or verify it. Above 125, so
    /// PostgreSQL stops recovery instead of treating the segment as the end of the archive.
    case walFetchFailed = 126
    /// Interrupted by SIGINT, SIGTERM or SIGHUP; what the run made was removed (a second signal exits at once).
    case interrupted = 130

    /// Short name, as printed in `--json` error objects and in the README table.
    public var name: String {
        switch self {
        case .success: return "success"
        case .failure: return "failure"
        case .usage: return "usage"
        case .configuration: return "configuration"
        case .declined: return "declined"
        case .databaseUnavailable: return "database-unavailable"
        case .databaseError: return "database-error"
        case .toolFailed: return "tool-failed"
        case .lockTimeout: return "lock-timeout"
        case .archiveTimeout: return "archive-timeout"
        case .repositoryError: return "repository-error"
        case .repositoryLocked: return "repository-locked"
        case .backupNotFound: return "backup-not-found"
        case .backupCorrupt: return "backup-corrupt"
        case .backupArchived: return "backup-archived"
        case .verificationMismatch: return "verification-mismatch"
        case .restoreFailed: return "restore-failed"
        case .migrationFailed: return "migration-failed"
        case .migrationLocked: return "migration-locked"
        case .migrationRefused: return "migration-refused"
        case .partial: return "partial"
        case .walFetchFailed: return "wal-fetch-failed"
        case .interrupted: return "interrupted"
        }
    }

    /// What to do next, for an error that brings no hint of its own: every error line is followed
    /// by a `HINT:`.
    public var defaultHint: String {
        switch self {
        case .success: return "nothing to do"
        case .failure: return "run the command again with the same arguments; if it repeats, report the message above"
        case .usage: return "--help shows every option with examples"
        case .configuration: return "fix the file named above (--print-config shows what is used and from where)"
        case .declined: return "nothing was changed; run it again and answer y, or pass --yes after checking --dry-run"
        case .databaseUnavailable: return "check that the server is running and the URL is right (pg_isready can tell)"
        case .databaseError: return "fix the cause the server gave above and run the command again"
        case .toolFailed: return "check the PostgreSQL client programs (--pg-bin) and the message above, then run again"
        case .lockTimeout: return "end or wait for the session named above, or raise --lock-wait, then run again"
        case .archiveTimeout: return "the server log says why archive_command fails; fix it (or raise --archive-timeout), then run again"
        case .repositoryError: return "check the repository's path or bucket, its permissions and free space"
        case .repositoryLocked: return "wait for the other run to finish; the message names it"
        case .backupNotFound: return "dbrestore list shows the backups in the repository"
        case .backupCorrupt: return "run dbverify --files to check every backup; restore an older one"
        case .backupArchived: return "request a restore of the archived objects (S3 GLACIER), then run again"
        case .verificationMismatch: return "the database differs from the backup; restore it or take a new backup"
        case .restoreFailed: return "the target database was not changed; fix the cause above and run again"
        case .migrationFailed: return "the migration was rolled back; fix it and run dbmigrate again"
        case .migrationLocked: return "wait for the other dbmigrate to finish"
        case .migrationRefused: return "nothing ran; fix the plan as the message says"
        case .partial: return "fix the repositories that failed and run again"
        case .walFetchFailed: return "check the archive and the key; PostgreSQL retries the fetch"
        case .interrupted: return "run the command again when ready; nothing of the interrupted run is left"
        }
    }
}
