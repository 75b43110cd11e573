import BackupStorage
import Foundation
import PostgresClient
import ProcessSignals

/// A physical base backup: `pg_basebackup` tar stream (WAL left to the archive) gzip-streamed into
/// `backups/<id>/base.tar.gz`, with the WAL range it needs in the manifest and pg_basebackup's own
/// `backup_manifest` beside it (`backup_manifest.gz`), which an incremental taken on it needs, and
/// an index of `base.tar.gz`'s access points (`BaseBackupIndex`, unencrypted backups only) that lets
/// the extraction run on several cores. With `incremental`, the backup holds only what changed since
/// its parent (`IncrementalChain`).
public enum PhysicalCapture {
    public static let baseFileName = "base.tar.gz"

    /// Takes one base backup.
    ///
    /// - Important: the manifest is written last; it records the first and last WAL segment the
    ///   backup needs, which `wal-push` must have archived for a restore.
    /// - Throws: `RecoveryError`, `PostgresError` or `StorageError`.
    public static func run(_ configuration: CaptureConfiguration, progress: ProgressObserver? = nil) throws -> CaptureResult {
        let session = try CaptureSession(configuration, command: "dbbackup --physical", physical: true)
        defer { session.close() }
        let (targets, startedAt, id, connection) = (session.targets, session.startedAt, session.id, session.connection)
        // pg_basebackup of the server's own major: another one refuses it or writes what a restore cannot start.
        let basebackup = try session.program("pg_basebackup", fit: .same)
        let pgBasebackup = basebackup.path
        let facts = try connection.query("""
            SELECT current_database(), current_setting('server_version'),
                   (SELECT system_identifier::text FROM pg_catalog.pg_control_system()),
                   current_setting('wal_segment_size'), current_setting('archive_mode'),
                   (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())::text,
                   current_setting('server_version_num'), current_setting('summarize_wal', true),
                   (SELECT string_agg(pg_catalog.format('%s (%s)', spcname, pg_catalog.pg_tablespace_location(oid)), ', ' ORDER BY spcname)
                      FROM pg_catalog.pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global'))
            """).rows[0]
        let role = try ServerRole.read(on: connection)
        if configuration.incremental { try checkIncrementalSupport(facts, target: configuration.target) }
        // A standby archives nothing until promoted (unless archive_mode = always): the primary's
        // archive_command must hold the WAL, and a standby cannot see the primary's setting.
        let archiveMode = try facts.string(4)
        guard role.inRecovery || archiveMode != "off" else {
            throw RecoveryError(.databaseError, "archive_mode is off on \(configuration.target.redactedDescription), so a base backup could never be recovered",
                                hint: "set archive_mode = on and archive_command = 'dbbackup wal-push %p --repo \(configuration.repository)', restart, then take the base backup")
        }
        // pg_basebackup streams one tar to stdout: the data directory's. A tablespace lives outside it
        // and would need a tar of its own; refused here, before the checkpoint, with what to do instead.
        if let tablespaces = facts[8] {
            throw RecoveryError(.toolFailed, "the cluster at \(configuration.target.redactedDescription) has tablespaces outside its data directory: \(tablespaces); "
                                + "dbbackup --physical captures only the data directory, so it would leave them out",
                                hint: "take logical backups of its databases (dbbackup without --physical), or move their objects to pg_default "
                                + "(ALTER TABLE … SET TABLESPACE pg_default) and drop the tablespaces; nothing was stored")
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
        // backup_manifest is kept whole: it is stored beside the base backup for incrementals to chain on.
        let scanner = TarScanner(wanted: ["backup_label": 4096, "backup_manifest": Int.max])
        let baseKey = "backups/\(id)/\(baseFileName)"
        // The index maps the compressed stream, not the cipher frames: an encrypted backup goes without one.
        let layout = BaseBackupIndex.layout(in: configuration.environment)
        let index = configuration.key == nil
            ? BaseBackupIndexBuilder(accessPointInterval: DumpTableOfContents.accessPointInterval(in: configuration.environment), layout: layout) : nil
        var arguments = ["--pgdata=-", "--format=tar", "--wal-method=none", "--checkpoint=fast", "--no-password", "--label=dbrecovery \(id)"]
        var chain: BackupManifest.Incremental?
        var parentManifestFile: String?
        defer { if let parentManifestFile { unlink(parentManifestFile) } }
        if configuration.incremental {
            let timeline = Int(facts[5] ?? "") ?? 1
            let (parent, path) = try parentManifest(systemIdentifier: facts[2], timeline: timeline, targets: targets, key: configuration.key)
            parentManifestFile = path
            arguments.append("--incremental=\(path)")
            chain = BackupManifest.Incremental(parent: parent.id, chainRoot: parent.incremental?.chainRoot ?? parent.id)
        }
        let file: BackupManifest.File
        // pg_basebackup's session is found by a name of this run's own (the URL's application_name, if
        // any, is pg_basebackup's no longer); its wait for the archiver is watched and bounded.
        let applicationName = "dbbackup \(id)"
        var environment = configuration.target.childEnvironment
        environment["PGAPPNAME"] = applicationName
        let watch = BaseBackupWatch(target: configuration.target, applicationName: applicationName, backup: id,
                                    timeoutSeconds: configuration.archiveTimeoutSeconds, environment: configuration.environment)
        do {
            (file, _) = try StreamCapture.run(
                executable: pgBasebackup,
                arguments: arguments,
                environment: environment, targets: targets, key: baseKey,
                level: configuration.compressionLevel, jobs: configuration.jobs, layout: layout, key: configuration.key, progress: progress,
                phase: "base backup \(id)", estimate: estimate,
                observe: { chunk in
                    scanner.consume(chunk)
                    index?.write(chunk)
                }, segments: index?.segments)
        } catch {
            watch.stop(failed: true)
            if let gaveUp = watch.gaveUp, !Interruption.isRequested { throw ArchiveWait.error(gaveUp, timeoutSeconds: watch.timeoutSeconds) }
            if let error = error as? RecoveryError, chain != nil && error.code == .toolFailed { throw explainIncrementalFailure(error, parent: chain?.parent ?? "") }
            throw error
        }
        watch.stop(failed: false)
        // From here on the data file is committed: any failure (a signal included) must remove it,
        // since without a manifest nothing would ever list or prune it.
        let serverManifestKey = "backups/\(id)/\(IncrementalChain.serverManifestFileName)"
        let indexKey = "backups/\(id)/\(BaseBackupIndex.fileName)"
        do {
            guard let serverManifest = scanner.captured["backup_manifest"], !serverManifest.isEmpty else {
                throw RecoveryError(.toolFailed, "pg_basebackup's stream held no backup_manifest",
                                    hint: "this pg_basebackup is not one we know (or runs with --no-manifest); nothing was stored")
            }
            let manifestFile = try StreamCapture.store(Data(serverManifest), targets: targets, key: serverManifestKey,
                                                       level: configuration.compressionLevel, key: configuration.key)
            var files = [file, manifestFile]
            // A stream the index cannot describe is extracted by tar -x, as a backup from before indexes.
            if let index = index?.finish(tarBytes: file.rawBytes) {
                files.append(try StreamCapture.store(try JSONOutput.encoder().encode(index), targets: targets, key: indexKey,
                                                     level: configuration.compressionLevel, key: nil))
            }
            return try finish(configuration, id: id, startedAt: startedAt, connection: connection, facts: facts, role: role,
                              segmentSize: segmentSize, scanner: scanner, files: files, chain: chain, targets: targets,
                              programs: [basebackup])
        } catch {
            targets.delete([baseKey, serverManifestKey, indexKey])
            if Interruption.isRequested { CleanupLog.cleaned("removed \(baseKey)") }
            throw error
        }
    }

    /// Reads the WAL range from the captured stream and writes the manifests.
    private static func finish(_ configuration: CaptureConfiguration, id: String, startedAt: Date, connection: PostgresConnection,
                               facts: QueryResult.Row, role: ServerRole, segmentSize: UInt64, scanner: TarScanner, files: [BackupManifest.File],
                               chain: BackupManifest.Incremental?, targets: CaptureTargets, programs: [PostgresProgram]) throws -> CaptureResult {
        let label = scanner.text("backup_label") ?? ""
        let manifestTail = scanner.text("backup_manifest") ?? ""
        var stopText = value(in: manifestTail, after: "\"End-LSN\": \"", until: "\"")
        if stopText == nil {
            // A standby has no current write position: the end is what it has replayed.
            stopText = try connection.query(role.inRecovery ? "SELECT pg_last_wal_replay_lsn()::text" : "SELECT pg_current_wal_lsn()::text").scalar
        }
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
            lastWalSegment: WALSegmentName.segment(containing: stopLSN > 0 ? stopLSN - 1 : 0, timeline: timeline, segmentSize: segmentSize),
            walSegmentSize: segmentSize)
        var manifest = BackupManifest(
            formatVersion: BackupManifest.currentFormatVersion, id: id, kind: .physical,
            tool: .init(name: "dbbackup", version: DBRecoveryVersion.current),
            database: .init(name: try facts.string(0), serverVersion: try facts.string(1), systemIdentifier: facts[2]),
            startedAt: startedAt, finishedAt: Date(), tags: configuration.tags, release: configuration.release,
            pinned: configuration.pinned, schemaVersion: try TableCounter.schemaVersion(on: connection), snapshot: nil, tables: [], files: files)
        manifest.physical = physical
        manifest.runningReleases = try TableCounter.runningReleases(on: connection)
        manifest.fromStandby = role.inRecovery
        manifest.timeline = timeline
        manifest.incremental = chain
        manifest.clientPrograms = programs
        try Interruption.check()
        try targets.writeManifests(manifest)
        return CaptureResult(manifest: manifest, stored: targets.succeeded, failed: targets.failures)
    }

    /// Refuses `--incremental` before anything is written when the server cannot take one: before
    /// PostgreSQL 17, or with `summarize_wal` off (the server then keeps no record of changed blocks).
    private static func checkIncrementalSupport(_ facts: QueryResult.Row, target: ConnectionTarget) throws {
        let versionNumber = Int(facts[6] ?? "") ?? 0
        guard versionNumber >= IncrementalChain.minimumServerVersionNumber else {
            throw RecoveryError(.databaseError, "incremental base backups need PostgreSQL 17 or newer; this server is \(facts[1] ?? "older")",
                                hint: "take a full base backup instead: dbbackup --physical (without --incremental)")
        }
        guard facts[7] == "on" else {
            throw RecoveryError(.databaseError, "summarize_wal is off on \(target.redactedDescription): the server keeps no WAL summaries, which an incremental base backup is built from",
                                hint: "ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf(); then take a full base backup (dbbackup --physical) for later incrementals to chain on")
        }
    }

    /// pg_basebackup's two refusals of an incremental that have a fix of ours: WAL summaries that do
    /// not reach back to the parent (summarize_wal turned on after it), and a client older than 17.
    private static func explainIncrementalFailure(_ error: RecoveryError, parent: String) -> RecoveryError {
        if error.message.contains("WAL summaries are required") {
            return RecoveryError(.toolFailed, "\(error.message) (the server has no WAL summaries back to the parent, \(parent))",
                                 hint: "take a full base backup (dbbackup --physical) now that summarize_wal is on; later incrementals chain on it")
        }
        if error.message.contains("unrecognized option") || error.message.contains("invalid option") {
            return RecoveryError(.toolFailed, error.message,
                                 hint: "--incremental needs pg_basebackup 17 or newer, of the server's major: pass --pg-bin DIR (or PG_BIN)")
        }
        return error
    }

    /// The parent of a new incremental (the newest base backup of this system, present in every
    /// repository written to) and its pg_basebackup manifest, written to a private temporary file
    /// for `pg_basebackup --incremental`.
    ///
    /// - Returns: the parent and the file's path; the caller removes the file.
    private static func parentManifest(systemIdentifier: String?, timeline: Int, targets: CaptureTargets,
                                       key: RepositoryKey?) throws -> (BackupManifest, String) {
        let stores = targets.liveStores
        guard let first = stores.first else {
            throw RecoveryError(.repositoryError, "no repository is available to find the parent backup in")
        }
        let parent = try IncrementalChain.parent(systemIdentifier: systemIdentifier, timeline: timeline,
                                                 in: try Catalog(store: first.store).manifests(), repository: first.address)
        for other in stores.dropFirst() {
            guard try !Catalog(store: other.store).manifests().contains(where: { $0.id == parent.id }) else { continue }
            throw RecoveryError(.backupNotFound, "the parent base backup \(parent.id) is in \(first.address) but not in \(other.address)",
                                hint: "take a full base backup (dbbackup --physical) into every repository, then incrementals on it")
        }
        guard let file = parent.files.first(where: { $0.name == IncrementalChain.serverManifestFileName }) else {
            throw RecoveryError(.backupNotFound, "base backup \(parent.id) has no stored backup_manifest", hint: "take a full base backup first: dbbackup --physical")
        }
        var contents = Data()
        try StoredFileStream.decompress(file, of: parent, from: first.store, key: key, phase: "read parent manifest", progress: nil) { chunk in
            contents.append(contentsOf: chunk)
        }
        let directory = NSTemporaryDirectory().hasSuffix("/") ? NSTemporaryDirectory() : NSTemporaryDirectory() + "/"
        var template = Array((directory + "dbbackup-parent-manifest-XXXXXX").utf8CString)
        let descriptor = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.map { mkstemp($0) } ?? -1 }   // 0600
        guard descriptor >= 0 else {
            throw RecoveryError(.failure, "cannot create a temporary file for the parent's backup_manifest: \(String(cString: strerror(errno)))",
                                hint: "make TMPDIR writable")
        }
        let path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let handle = FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
        do {
            try handle.write(contentsOf: contents)
            try handle.close()
        } catch {
            unlink(path)
            throw RecoveryError(.failure, "cannot write the parent's backup_manifest to \(path): \(error)", hint: "free space in TMPDIR")
        }
        return (parent, path)
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
