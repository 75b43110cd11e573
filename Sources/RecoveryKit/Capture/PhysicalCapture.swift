import BackupStorage
import Foundation
import PostgresClient
import ProcessSignals

/// A physical base backup: `pg_basebackup` tar stream (WAL left to the archive) gzip-streamed into
/// `backups/<id>/base.tar.gz`, with the WAL range it needs in the manifest.
public enum PhysicalCapture {
    public static let baseFileName = "base.tar.gz"

    /// Takes one base backup.
    ///
    /// - Important: the manifest is written last; it records the first and last WAL segment the
    ///   backup needs, which `wal-push` must have archived for a restore.
    /// - Throws: `RecoveryError`, `PostgresError` or `StorageError`.
    public static func run(_ configuration: CaptureConfiguration, progress: ProgressObserver? = nil) throws -> CaptureResult {
        try configuration.validate()
        let targets = try CaptureTargets(addresses: configuration.repositories, command: "dbbackup --physical", environment: configuration.environment)
        defer {
            targets.releaseLocks()
            if Interruption.isRequested { CleanupLog.cleaned("released the repository lock") }
        }
        let startedAt = Date()
        let id = BackupID.make(at: startedAt)
        let connection = try PostgresConnection(target: configuration.target, applicationName: "dbbackup")
        defer { connection.close() }
        // pg_basebackup of the server's own major: another one refuses it or writes what a restore cannot start.
        let basebackup = try configuration.tools.program("pg_basebackup", for: PostgresMajor(serverVersionNumber: connection.serverVersionNumber), fit: .same)
        let pgBasebackup = basebackup.path
        let facts = try connection.query("""
            SELECT current_database(), current_setting('server_version'),
                   (SELECT system_identifier::text FROM pg_catalog.pg_control_system()),
                   current_setting('wal_segment_size'), current_setting('archive_mode'),
                   (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())::text
            """).rows[0]
        guard try facts.string(4) != "off" else {
            throw RecoveryError(.databaseError, "archive_mode is off on \(configuration.target.redactedDescription), so a base backup could never be recovered",
                                hint: "set archive_mode = on and archive_command = 'dbbackup wal-push %p --repo \(configuration.repository)', restart, then take the base backup")
        }
        let segmentSize = parseSize(try facts.string(3))
        // For the progress line's percentage: the databases' sizes, which the tar stream is close to.
        var estimate: UInt64?
        if progress != nil {
            estimate = try connection.query("""
                SELECT COALESCE(sum(pg_catalog.pg_database_size(oid)), 0)::text FROM pg_catalog.pg_database
                 WHERE pg_catalog.has_database_privilege(oid, 'CONNECT')
                """).scalar.flatMap { UInt64($0) }
        }
        // pg_basebackup writing to stdout does not print its WAL range; backup_label and the WAL-Ranges
        // at the end of backup_manifest inside the stream hold it.
        let scanner = TarScanner(wanted: ["backup_label": 4096, "backup_manifest": 8192])
        let baseKey = "backups/\(id)/\(baseFileName)"
        let (file, _) = try StreamCapture.run(
            executable: pgBasebackup,
            arguments: ["--pgdata=-", "--format=tar", "--wal-method=none", "--checkpoint=fast", "--no-password",
                        "--label=dbrecovery \(id)"],
            environment: configuration.target.childEnvironment, targets: targets, key: baseKey,
            level: configuration.compressionLevel, jobs: configuration.jobs, key: configuration.key, progress: progress, phase: "base backup \(id)", estimate: estimate,
            observe: scanner.consume)
        // From here on the data file is committed: any failure (a signal included) must remove it,
        // since without a manifest nothing would ever list or prune it.
        do {
            return try finish(configuration, id: id, startedAt: startedAt, connection: connection, facts: facts,
                              segmentSize: segmentSize, scanner: scanner, file: file, targets: targets, programs: [basebackup])
        } catch {
            targets.delete([baseKey])
            if Interruption.isRequested { CleanupLog.cleaned("removed \(baseKey)") }
            throw error
        }
    }

    /// Reads the WAL range from the captured stream and writes the manifests.
    private static func finish(_ configuration: CaptureConfiguration, id: String, startedAt: Date, connection: PostgresConnection,
                               facts: QueryResult.Row, segmentSize: UInt64, scanner: TarScanner, file: BackupManifest.File,
                               targets: CaptureTargets, programs: [PostgresProgram]) throws -> CaptureResult {
        let label = scanner.text("backup_label") ?? ""
        let manifestTail = scanner.text("backup_manifest") ?? ""
        var stopText = value(in: manifestTail, after: "\"End-LSN\": \"", until: "\"")
        if stopText == nil { stopText = try connection.query("SELECT pg_current_wal_lsn()::text").scalar }
        guard let startText = value(in: label, after: "START WAL LOCATION: ", until: " "), let startLSN = WALSegmentName.parseLSN(startText),
              let stopText, let stopLSN = WALSegmentName.parseLSN(stopText) else {
            throw RecoveryError(.toolFailed, "pg_basebackup's stream held no backup_label with a WAL start point",
                                hint: "this pg_basebackup is not one we know; nothing was stored")
        }
        let labelTimeline = value(in: label, after: "START TIMELINE: ", until: "\n").flatMap { Int($0) }
        let checkpointTimeline = Int(facts[5] ?? "") ?? 1
        let timeline = labelTimeline ?? checkpointTimeline
        let physical = BackupManifest.Physical(
            startLsn: WALSegmentName.formatLSN(startLSN), stopLsn: WALSegmentName.formatLSN(stopLSN), timeline: timeline,
            firstWalSegment: WALSegmentName.segment(containing: startLSN, timeline: timeline, segmentSize: segmentSize),
            lastWalSegment: WALSegmentName.segment(containing: stopLSN > 0 ? stopLSN - 1 : 0, timeline: timeline, segmentSize: segmentSize))
        var manifest = BackupManifest(
            formatVersion: BackupManifest.currentFormatVersion, id: id, kind: .physical,
            tool: .init(name: "dbbackup", version: DBRecoveryVersion.current),
            database: .init(name: try facts.string(0), serverVersion: try facts.string(1), systemIdentifier: facts[2]),
            startedAt: startedAt, finishedAt: Date(), tags: configuration.tags, release: configuration.release,
            pinned: configuration.pinned, schemaVersion: try TableCounter.schemaVersion(on: connection), snapshot: nil, tables: [], files: [file])
        manifest.physical = physical
        manifest.clientPrograms = programs
        try Interruption.check()
        try targets.writeManifests(manifest)
        return CaptureResult(manifest: manifest, stored: targets.succeeded, failed: targets.failures)
    }

    /// `16MB` → bytes. Anything that is not a plausible segment size (1 MB to 1 GB, as PostgreSQL
    /// allows) falls back to the 16 MB default rather than becoming a divisor of zero or an overflow.
    static func parseSize(_ text: String) -> UInt64 {
        let fallback: UInt64 = 16 << 20
        guard let digits = UInt64(text.prefix { $0.isASCII && $0.isNumber }), digits > 0, digits <= 1 << 20 else { return fallback }
        let bytes = text.hasSuffix("GB") ? digits << 30 : text.hasSuffix("kB") ? digits << 10 : digits << 20
        return ((1 << 20)...(1 << 30)).contains(bytes) ? bytes : fallback
    }

    /// The text between `marker` and `terminator` in `text`.
    static func value(in text: String, after marker: String, until terminator: Character) -> String? {
        guard let range = text.range(of: marker, options: .backwards) else { return nil }
        let value = text[range.upperBound...].prefix { $0 != terminator && $0 != "\n" }
        return value.isEmpty ? nil : String(value)
    }
}
