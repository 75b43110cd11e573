import Foundation

/// What a backup holds and how to check it. Written last: its presence makes a backup exist.
///
/// Versioned JSON; never holds a password.
public struct BackupManifest: Codable, Equatable, Sendable {
    /// The format this build writes and reads.
    public static let currentFormatVersion = 1
    /// Repository-relative file name of a manifest within its backup folder.
    public static let fileName = "manifest.json"

    public enum Kind: String, Codable, Sendable { case logical, physical }

    public struct Tool: Codable, Equatable, Sendable {
        public var name: String
        public var version: String
    }

    public struct Database: Codable, Equatable, Sendable {
        public var name: String
        public var serverVersion: String
        public var systemIdentifier: String?
    }

    /// Exact row count of one table, taken in the dump's snapshot.
    public struct TableRowCount: Codable, Equatable, Sendable, Hashable {
        public var schema: String
        public var name: String
        public var rows: Int64

        public init(schema: String, name: String, rows: Int64) {
            self.schema = schema
            self.name = name
            self.rows = rows
        }

        /// `schema.name`, as printed in reports.
        public var qualifiedName: String { "\(schema).\(name)" }
    }

    /// One stored file of the backup.
    public struct File: Codable, Equatable, Sendable {
        /// Name within the backup folder, e.g. `dump.sql.gz`.
        public var name: String
        public var rawBytes: UInt64
        public var storedBytes: UInt64
        /// sha256 of the stored (compressed) bytes, lower-case hex.
        public var sha256: String
        public var compression: String
        public var compressionLevel: Int
        /// Set when the file is encrypted (AES-256-GCM): the key's fingerprint, never the key.
        public var encryptionKeyFingerprint: String? = nil
    }

    /// Where a physical base backup starts and stops in the WAL. (Property names avoid acronyms in
    /// capitals so that the snake_case JSON keys decode back to them.)
    public struct Physical: Codable, Equatable, Sendable {
        public var startLsn: String
        public var stopLsn: String
        public var timeline: Int
        /// The first WAL segment a restore of this backup needs (e.g. `000000010000000000000003`).
        public var firstWalSegment: String
        /// The last WAL segment needed for a consistent restore.
        public var lastWalSegment: String
        /// The cluster's `wal_segment_size` in bytes (initdb `--wal-segsize`): segment names after
        /// the first follow from it. Nil in manifests written before it was recorded (16 MB then).
        public var walSegmentSize: UInt64? = nil

        public init(startLsn: String, stopLsn: String, timeline: Int, firstWalSegment: String, lastWalSegment: String,
                    walSegmentSize: UInt64? = nil) {
            self.startLsn = startLsn
            self.stopLsn = stopLsn
            self.timeline = timeline
            self.firstWalSegment = firstWalSegment
            self.lastWalSegment = lastWalSegment
            self.walSegmentSize = walSegmentSize
        }

        /// The segment size to compute WAL file names with: the recorded one, else PostgreSQL's default.
        public var segmentSize: UInt64 { walSegmentSize ?? WALSegmentName.defaultSegmentSize }
    }

    /// What an incremental base backup (PostgreSQL 17+, `pg_basebackup --incremental`) is chained on.
    /// A restore needs every member from the root to this backup; `dbprune` keeps them all.
    public struct Incremental: Codable, Equatable, Sendable {
        /// The backup this one holds the changes since (full or incremental).
        public var parent: String
        /// The full base backup the chain starts from.
        public var chainRoot: String
    }

    public var formatVersion: Int
    public var id: String
    public var kind: Kind
    public var tool: Tool
    public var database: Database
    public var startedAt: Date
    public var finishedAt: Date
    public var tags: [String]
    public var release: String?
    public var pinned: Bool

    /// Whether this backup holds the state application release `release` ran with (`dbrestore
    /// --release`, the rollback's "restore the newest good backup of v1.2.3"): the release dbmigrate's
    /// log had the database at (`runningReleases`). Without that log, a backup's label (`dbbackup
    /// --release`), except a pre-deploy snapshot's: that names the release about to be deployed, and
    /// the state it holds is the release before, which nothing recorded.
    public func holdsState(ofRelease release: String) -> Bool {
        if let runningReleases { return runningReleases.contains(release) }
        return !isPreDeploySnapshot && self.release == release
    }

    /// A backup `scripts/pre-deploy-snapshot.sh` took (tag `pre-deploy`): its `release` is the one
    /// about to be deployed.
    public var isPreDeploySnapshot: Bool { tags.contains("pre-deploy") }
    /// `schema_version` at capture, if the table exists.
    public var schemaVersion: String?
    /// The application releases whose state the database was in when this backup was taken, by
    /// dbmigrate's log (`MigrationPlanner.runningReleases`; several when releases share a schema, none
    /// when no release had it); nil without that log. Not the `--release` label: a pre-deploy
    /// snapshot is labelled with the release about to be deployed and holds the state of the one before it.
    public var runningReleases: [String]? = nil
    /// The exported snapshot pg_dump ran in.
    public var snapshot: String?
    public var tables: [TableRowCount]
    public var files: [File]
    /// For physical backups: the WAL range they need.
    public var physical: Physical? = nil
    /// For incremental base backups: the parent and the chain's full backup. Nil for a full one.
    public var incremental: Incremental? = nil
    /// Other repositories written by the same run, holding the same backup.
    public var otherRepositories: [String]? = nil
    /// Logical backups: the schema as `pg_dump --schema-only` saw it in the dump's snapshot, checked
    /// by every restore before the swap (see `SchemaVerifier`). Absent in backups taken before it existed.
    public var schemaFingerprint: SchemaFingerprint? = nil

    // MARK: Database-level facts (recorded since issue 14; nil in older manifests)

    /// The database's own properties (encoding, locale, owner, privileges, comment, settings),
    /// which a plain dump does not carry. Nil in backups taken before they were recorded.
    public var databaseProperties: DatabaseProperties? = nil
    /// In an encrypted repository: the properties' settings, per-role settings and comment (which may
    /// hold secrets, e.g. `app.jwt_secret`), sealed with the repository key (base64). See `record(_:key:)`.
    public var sealedDatabaseProperties: String? = nil

    // MARK: Where the backup was taken (issue 17; nil in older manifests)

    /// True when the server was a hot standby (in recovery) when the backup was taken.
    public var fromStandby: Bool? = nil
    /// The timeline the server was on (a standby: the one it was replaying).
    public var timeline: Int? = nil

    /// The PostgreSQL programs that made the backup (pg_dump, pg_basebackup): path, `--version` line
    /// and major. Nil in backups taken before they were recorded.
    public var clientPrograms: [PostgresProgram]? = nil

    /// The major of the server the backup was taken from (`database.serverVersion`).
    public var serverMajor: PostgresMajor? { PostgresMajor(versionText: database.serverVersion) }

    /// Total rows across all tables.
    public var totalRows: Int64 { tables.reduce(0) { $0 + $1.rows } }
    /// Total stored bytes across all files.
    public var storedBytes: UInt64 { files.reduce(0) { $0 + $1.storedBytes } }
    /// Total uncompressed bytes across all files.
    public var rawBytes: UInt64 { files.reduce(0) { $0 + $1.rawBytes } }

    /// The repository key of this backup's folder.
    public var folderKey: String { "backups/\(id)" }

    /// The repository key of one of this backup's files.
    public func key(of file: File) -> String { "\(folderKey)/\(file.name)" }

    // MARK: - Encoding

    /// Encodes as pretty-printed, key-sorted JSON (stable diffs, readable by hand).
    public func encoded() throws -> Data {
        try JSONOutput.encoder().encode(self)
    }

    /// Decodes a manifest, refusing unknown format versions with a clear message.
    ///
    /// - Throws: `RecoveryError(.backupCorrupt)` for unreadable JSON or an unknown format version.
    public static func decode(_ data: Data, source: String) throws -> BackupManifest {
        let decoder = JSONOutput.decoder()
        struct VersionOnly: Decodable { var formatVersion: Int? }
        guard let version = try? decoder.decode(VersionOnly.self, from: data) else {
            throw RecoveryError(.backupCorrupt, "manifest \(source) is not valid JSON",
                                hint: "the backup cannot be trusted; restore another one, and let dbprune report it")
        }
        guard let formatVersion = version.formatVersion else {
            throw RecoveryError(.backupCorrupt, "manifest \(source) has no format_version")
        }
        guard formatVersion == currentFormatVersion else {
            throw RecoveryError(.backupCorrupt,
                                "manifest \(source) has format version \(formatVersion); this dbrecovery reads version \(currentFormatVersion)",
                                hint: formatVersion > currentFormatVersion ? "upgrade dbrecovery to read this backup" : nil)
        }
        let manifest: BackupManifest
        do {
            manifest = try decoder.decode(BackupManifest.self, from: data)
        } catch let DecodingError.keyNotFound(key, _) {
            throw RecoveryError(.backupCorrupt, "manifest \(source) lacks field '\(key.stringValue)'")
        } catch {
            throw RecoveryError(.backupCorrupt, "manifest \(source) is malformed: \(error)")
        }
        try manifest.validateNames(source: source)
        return manifest
    }

    /// Refuses a manifest whose id or file names would leave its own folder (`../../etc/passwd`,
    /// `a/b`) or that names no file at all: such a manifest is damaged or hostile, never a backup.
    ///
    /// - Throws: `RecoveryError(.backupCorrupt)` naming the bad value.
    func validateNames(source: String) throws {
        let hint = "the backup cannot be trusted; restore another one (dbrestore --emergency skips it)"
        guard Self.isPlainName(id) else {
            throw RecoveryError(.backupCorrupt, "manifest \(source) has an invalid id '\(id)'", hint: hint)
        }
        guard !files.isEmpty else {
            throw RecoveryError(.backupCorrupt, "manifest \(source) lists no files", hint: hint)
        }
        for parent in [incremental?.parent, incremental?.chainRoot].compactMap({ $0 }) where !Self.isPlainName(parent) {
            throw RecoveryError(.backupCorrupt, "manifest \(source) names an invalid parent backup '\(parent)'", hint: hint)
        }
        for file in files where !Self.isPlainName(file.name) {
            throw RecoveryError(.backupCorrupt, "manifest \(source) names a file outside its backup folder: '\(file.name)'", hint: hint)
        }
    }

    /// One path component: not empty, not `.` or `..`, no `/`, `\\` or control characters.
    static func isPlainName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && name.utf8.count <= 255
            && !name.unicodeScalars.contains { $0 == "/" || $0 == "\\" || $0.value < 0x20 || $0.value == 0x7F }
    }
}
