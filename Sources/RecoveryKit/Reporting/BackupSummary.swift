import Foundation

/// What `dbbackup --json` prints and pipelines read: the manifest without the per-table detail.
public struct BackupSummary: Codable, Sendable {
    public var id: String
    public var kind: BackupManifest.Kind
    public var repository: String
    public var database: String
    public var startedAt: Date
    public var finishedAt: Date
    public var durationSeconds: Double
    public var rawBytes: UInt64
    public var storedBytes: UInt64
    public var tables: Int
    public var totalRows: Int64
    public var schemaVersion: String?
    public var tags: [String]
    public var release: String?
    /// The releases whose state the database was in, by dbmigrate's log (`BackupManifest.runningReleases`).
    public var runningReleases: [String]?
    public var pinned: Bool
    public var files: [BackupManifest.File]
    public var otherRepositories: [String]?
    /// Taken from a hot standby, and on which timeline (nil from manifests that predate them).
    public var fromStandby: Bool?
    public var timeline: Int?
    /// Incremental base backups: the parent and the chain's full backup.
    public var incremental: BackupManifest.Incremental?

    public init(manifest: BackupManifest, repository: String) {
        id = manifest.id
        kind = manifest.kind
        self.repository = repository
        database = manifest.database.name
        startedAt = manifest.startedAt
        finishedAt = manifest.finishedAt
        durationSeconds = (manifest.finishedAt.timeIntervalSince(manifest.startedAt) * 1000).rounded() / 1000
        rawBytes = manifest.rawBytes
        storedBytes = manifest.storedBytes
        tables = manifest.tables.count
        totalRows = manifest.totalRows
        schemaVersion = manifest.schemaVersion
        tags = manifest.tags
        release = manifest.release
        runningReleases = manifest.runningReleases
        pinned = manifest.pinned
        files = manifest.files
        otherRepositories = manifest.otherRepositories
        fromStandby = manifest.fromStandby
        timeline = manifest.timeline
        incremental = manifest.incremental
    }

    /// One line for a person: `backup X of app: 12 tables, 1.2M rows, 80 MiB → 12 MiB in 3.2 s`.
    public var humanDescription: String {
        "backup \(id) of \(database): \(tables) tables, \(totalRows) rows, \(ByteCount.format(rawBytes)) → \(ByteCount.format(storedBytes)) in \(String(format: "%.1f", durationSeconds)) s"
            + (fromStandby == true ? " (from a standby, timeline \(timeline ?? 1))" : "")
            + (incremental.map { ", incremental on \($0.parent)" } ?? "")
    }
}
