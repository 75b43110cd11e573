import Foundation

/// One row of `dbrestore list`.
public struct BackupListing: Codable, Sendable {
    public var id: String
    public var takenAt: Date?
    public var kind: String?
    /// The database it was taken of (a physical base backup: the one it connected to; it holds all).
    public var database: String?
    /// The server's `system_identifier` (physical backups, and logical ones since it was recorded).
    public var systemIdentifier: String?
    public var storedBytes: UInt64?
    public var rows: Int64?
    public var schemaVersion: String?
    public var release: String?
    /// The releases whose state it holds, by dbmigrate's log (`--release` chooses by these).
    public var runningReleases: [String]?
    public var pinned: Bool?
    public var tags: [String]
    /// Why the manifest cannot be read, for a damaged or archived backup.
    public var problem: String?
    /// Whether the manifest is archived (S3 GLACIER); nil for the others.
    public var archived: Bool?

    /// Every backup of a repository, newest first, damaged ones included with their problem; with
    /// `database`, that database's logical backups only (and the damaged ones, which cannot say whose they are).
    public static func load(repository: String, database: String? = nil,
                            environment: [String: String] = ProcessInfo.processInfo.environment) throws -> [BackupListing] {
        let store = try Repository.open(repository, create: false, environment: environment)
        let entries = try Catalog(store: store).entries().filter { entry in
            database.map { name in entry.manifest.map { $0.kind == .logical && $0.database.name.isSameDatabaseName(as: name) } ?? true } ?? true
        }
        return entries.map { entry in
            guard let manifest = entry.manifest else {
                return BackupListing(id: entry.id, tags: [], problem: entry.problem, archived: entry.archived ? true : nil)
            }
            return BackupListing(id: manifest.id, takenAt: manifest.startedAt, kind: manifest.kind.rawValue, database: manifest.database.name,
                                 systemIdentifier: manifest.database.systemIdentifier,
                                 storedBytes: manifest.storedBytes, rows: manifest.totalRows, schemaVersion: manifest.schemaVersion,
                                 release: manifest.release, runningReleases: manifest.runningReleases, pinned: manifest.pinned, tags: manifest.tags, problem: nil)
        }
    }
}
