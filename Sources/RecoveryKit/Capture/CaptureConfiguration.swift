import Foundation
import Gzip
import PostgresClient

/// What every backup needs to know, logical or physical, resolved from flags, environment and config.
/// A logical backup adds its lock wait (`LogicalCaptureConfiguration`).
public struct CaptureConfiguration {
    public var target: ConnectionTarget
    /// Every repository to write to (the first is the primary one named in messages).
    public var repositories: [String]
    public var repository: String { repositories[0] }
    public var tags: [String]
    public var release: String?
    public var pinned: Bool
    public var compressionLevel: Int
    /// Cores to compress on.
    public var jobs: Int
    /// Encrypt the stored files with this key (repository cipher), if any.
    public var key: RepositoryKey? = nil
    public var tools: PostgresTools
    /// What the storage layer reads S3 settings from (see `Repository.open`).
    public var environment = ProcessInfo.processInfo.environment
    /// Physical only, `--incremental`: an incremental base backup on the newest base backup of the same
    /// system (PostgreSQL 17+, `summarize_wal = on`).
    public var incremental = false
    /// Physical only, `--archive-timeout`: how long pg_basebackup's wait for the backup's last WAL
    /// segment to be archived may go without the server archiving any segment (`ArchiveWait`).
    public var archiveTimeoutSeconds = ArchiveWait.defaultTimeoutSeconds
    /// `--lock-wait`, when given: seconds to wait for each repository's lock while another backup or
    /// a prune holds it; 0 (not given) fails at once, exit 21 (`StoreLock.exclusive`).
    public var repositoryLockWaitSeconds: TimeInterval = 0

    public init(target: ConnectionTarget, repositories: [String], tags: [String] = [], release: String? = nil,
                pinned: Bool = false, compressionLevel: Int = GzipCompressor.defaultLevel, jobs: Int = ProcessInfo.processInfo.activeProcessorCount,
                tools: PostgresTools = PostgresTools()) {
        self.jobs = max(1, jobs)
        self.target = target
        self.repositories = repositories
        self.tags = tags
        self.release = release
        self.pinned = pinned
        self.compressionLevel = compressionLevel
        self.tools = tools
    }

    /// - Throws: `RecoveryError(.usage)` for a compression level gzip does not have.
    func validate() throws {
        guard (0...9).contains(compressionLevel) else {
            throw RecoveryError(.usage, "compression level \(compressionLevel) is outside 0...9",
                                hint: "pass --compression-level between 0 (none) and 9 (smallest); \(GzipCompressor.defaultLevel) is the default")
        }
    }
}
