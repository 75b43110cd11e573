import BackupStorage
import Foundation
import Gzip
import PostgresClient

/// Everything a logical backup needs to know, resolved from flags, environment and config.
public struct LogicalCaptureConfiguration {
    public var target: ConnectionTarget
    public var repository: String
    public var tags: [String]
    public var release: String?
    public var pinned: Bool
    public var compressionLevel: Int
    /// Cores to compress on.
    public var jobs: Int
    public var tools: PostgresTools

    public init(target: ConnectionTarget, repository: String, tags: [String] = [], release: String? = nil,
                pinned: Bool = false, compressionLevel: Int = 6, jobs: Int = ProcessInfo.processInfo.activeProcessorCount,
                tools: PostgresTools = PostgresTools()) {
        self.jobs = max(1, jobs)
        self.target = target
        self.repository = repository
        self.tags = tags
        self.release = release
        self.pinned = pinned
        self.compressionLevel = compressionLevel
        self.tools = tools
    }
}

/// A snapshot-consistent logical backup: `pg_dump --snapshot` gzip-streamed into the repository,
/// with exact row counts from the same snapshot.
public enum LogicalCapture {
    /// Name of the data file inside a logical backup's folder.
    public static let dumpFileName = "dump.sql.gz"

    /// Takes one logical backup.
    ///
    /// Order: lock the repository; open a REPEATABLE READ READ ONLY transaction and export its
    /// snapshot; count rows and read `schema_version` in it; stream `pg_dump --snapshot` through
    /// gzip into `backups/<id>/dump.sql.gz` (sha256 and sizes computed on the way); commit the data
    /// file (fsync, rename); write the manifest last.
    ///
    /// - Important: on any failure no manifest is written, so nothing half-done looks like a backup.
    /// - Parameters:
    ///   - configuration: what to back up and where.
    ///   - progress: told of bytes read from pg_dump.
    /// - Returns: the manifest written.
    /// - Throws: `RecoveryError`, `PostgresError` or `StorageError`; classify with `RecoveryError.classify`.
    public static func run(_ configuration: LogicalCaptureConfiguration, progress: ProgressObserver? = nil) throws -> BackupManifest {
        guard (0...9).contains(configuration.compressionLevel) else {
            throw RecoveryError(.usage, "compression level \(configuration.compressionLevel) is outside 0...9",
                                hint: "pass --compression-level between 0 (none) and 9 (smallest); 6 is the default")
        }
        let pgDump = try configuration.tools.path(of: "pg_dump")
        let store = try Repository.open(configuration.repository, create: true)
        let lock = try store.lock(holder: LockHolder(command: "dbbackup"))
        defer { lock.release() }

        let startedAt = Date()
        let id = BackupID.make(at: startedAt)
        let connection = try PostgresConnection(target: configuration.target, applicationName: "dbbackup")
        defer { connection.close() }
        try connection.execute(script: "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        let snapshot = try connection.query("SELECT pg_catalog.pg_export_snapshot()").scalar ?? ""
        let facts = try connection.query("""
            SELECT current_database(), current_setting('server_version'),
                   (SELECT system_identifier::text FROM pg_catalog.pg_control_system())
            """).rows[0]
        let tables = try TableCounter.countRows(on: connection)
        let schemaVersion = try TableCounter.schemaVersion(on: connection)

        let file = try streamDump(pgDump: pgDump, snapshot: snapshot, configuration: configuration,
                                  store: store, key: "backups/\(id)/\(dumpFileName)", progress: progress)
        try connection.execute(script: "COMMIT")

        let manifest = BackupManifest(
            formatVersion: BackupManifest.currentFormatVersion, id: id, kind: .logical,
            tool: .init(name: "dbbackup", version: DBRecoveryVersion.current),
            database: .init(name: try facts.string(0), serverVersion: try facts.string(1), systemIdentifier: facts[2]),
            startedAt: startedAt, finishedAt: Date(), tags: configuration.tags, release: configuration.release,
            pinned: configuration.pinned, schemaVersion: schemaVersion, snapshot: snapshot, tables: tables, files: [file])
        try store.write("backups/\(id)/\(BackupManifest.fileName)", contents: try manifest.encoded())
        return manifest
    }

    /// Runs pg_dump in the exported snapshot and streams its output through gzip into the store.
    private static func streamDump(pgDump: String, snapshot: String, configuration: LogicalCaptureConfiguration,
                                   store: BackupStore, key: String, progress: ProgressObserver?) throws -> BackupManifest.File {
        let writer = try store.makeWriter(key)
        var committed = false
        defer { if !committed { writer.abort() } }

        let dump = try ChildProcess(
            executable: pgDump,
            arguments: ["--snapshot=\(snapshot)", "--format=plain", "--no-password"],
            environment: configuration.target.childEnvironment,
            stdin: .null, stdout: .pipe, stderr: .pipe)
        let errors = OutputCollector(descriptor: dump.standardError)

        var digest = StreamingDigest()
        let compressor = try GzipCompressor(level: configuration.compressionLevel, jobs: configuration.jobs) { chunk in
            digest.update(chunk)
            try writer.write(chunk)
        }
        do {
            try PipeReader.forEachChunk(of: dump.standardOutput, description: "pg_dump output") { chunk in
                try compressor.write(chunk)
                progress?.progress(phase: "dump", bytes: compressor.bytesIn)
            }
            try compressor.finish()
        } catch {
            dump.send(SIGTERM)
            dump.waitForExit()
            progress?.finished()
            throw error
        }
        let termination = dump.waitForExit()
        progress?.finished()
        guard termination.succeeded else {
            let reason = errors.mostRelevantLine() ?? "no message"
            throw RecoveryError(.toolFailed, "pg_dump \(termination.description): \(reason)",
                                hint: "fix the cause above and run dbbackup again; nothing was stored")
        }
        try writer.commit()
        committed = true
        return BackupManifest.File(name: (key as NSString).lastPathComponent, rawBytes: compressor.bytesIn,
                                   storedBytes: compressor.bytesOut, sha256: digest.hexDigest(),
                                   compression: "gzip", compressionLevel: configuration.compressionLevel)
    }
}
