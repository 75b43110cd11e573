import BackupStorage
import Foundation
import Gzip
import PostgresClient
import ProcessSignals

/// A logical backup's configuration: what every capture needs, and how long pg_dump waits for a lock.
public struct LogicalCaptureConfiguration {
    public var capture: CaptureConfiguration
    /// `--lock-wait`: pg_dump's `--lock-wait-timeout` (the target's sessions carry it as `lock_timeout`).
    public var lockWaitSeconds: Int

    public init(_ capture: CaptureConfiguration, lockWaitSeconds: Int = SessionLimits.defaultLockWaitSeconds) {
        self.capture = capture
        self.lockWaitSeconds = lockWaitSeconds
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
    /// snapshot; stream `pg_dump --snapshot` through gzip into `backups/<id>/dump.sql.gz` (sha256
    /// and sizes computed on the way) while counting rows and reading `schema_version` in the same
    /// snapshot on the exporting connection; commit the data file (fsync, rename) once both are
    /// done; write the manifest last.
    ///
    /// - Important: on any failure no manifest is written, so nothing half-done looks like a backup.
    /// - Parameters:
    ///   - configuration: what to back up and where.
    ///   - progress: told of bytes read from pg_dump.
    /// - Returns: the manifest written.
    /// - Throws: `RecoveryError`, `PostgresError` or `StorageError`; classify with `RecoveryError.classify`.
    public static func run(_ logical: LogicalCaptureConfiguration, progress: ProgressObserver? = nil) throws -> CaptureResult {
        let configuration = logical.capture
        try configuration.validate()
        let targets = try CaptureTargets(addresses: configuration.repositories, command: "dbbackup", environment: configuration.environment)
        defer {
            targets.releaseLocks()
            if Interruption.isRequested { CleanupLog.cleaned("released the repository lock") }
        }

        let startedAt = Date()
        let id = BackupID.make(at: startedAt)
        let connection = try PostgresConnection(target: configuration.target, applicationName: "dbbackup")
        defer { connection.close() }
        // pg_dump of the server's major or newer (an older one refuses the server).
        let dumper = try configuration.tools.program("pg_dump", for: PostgresMajor(serverVersionNumber: connection.serverVersionNumber), fit: .sameOrNewer)
        let pgDump = dumper.path
        try connection.execute(script: "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        let snapshot = try connection.query("SELECT pg_catalog.pg_export_snapshot()").scalar ?? ""
        let facts = try connection.query("""
            SELECT current_database(), current_setting('server_version'),
                   (SELECT system_identifier::text FROM pg_catalog.pg_control_system())
            """).rows[0]
        // Read before the counter starts: the connection serves one thread at a time.
        let properties = try DatabaseProperties.read(on: connection)
        // A hot standby exports snapshots too (PostgreSQL 10 and later): the dump and the counts
        // share it there as on a primary. The manifest records which it was.
        let role = try ServerRole.read(on: connection)
        // For the progress line's percentage: the tables' data as the catalogue sizes it. pg_dump's text
        // is usually near it; the line says "~" and never claims 100% before the end.
        var estimate: UInt64?
        if progress != nil {
            estimate = try connection.query("""
                SELECT COALESCE(sum(pg_catalog.pg_relation_size(c.oid)), 0)::text FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'm')
                """).scalar.flatMap { UInt64($0) }
        }
        // The exact counts come from the same snapshot, counted on its own connection while pg_dump
        // streams it: the server scans while this process compresses. The data file is committed only
        // once the counts are in, so a failed count leaves nothing behind.
        let counting = Background { (try TableCounter.countRows(on: connection), try TableCounter.schemaVersion(on: connection)) }
        defer { counting.join() }
        // The schema fingerprint, from a schema-only pg_dump in the same snapshot (Verify/SchemaDump.swift).
        let schemaDump = try SchemaDump(pgDump: pgDump, target: configuration.target, snapshot: snapshot)
        defer { schemaDump.cancel() }

        let dumpKey = "backups/\(id)/\(dumpFileName)"
        let tocKey = "backups/\(id)/\(DumpTableOfContents.fileName)"
        let contents = DumpContentsBuilder(backupID: id, accessPointInterval: DumpTableOfContents.accessPointInterval(in: configuration.environment))
        let file: BackupManifest.File
        do {
            (file, _) = try StreamCapture.run(
                executable: pgDump,
                arguments: ["--snapshot=\(snapshot)", "--format=plain", "--no-password", "--lock-wait-timeout=\(logical.lockWaitSeconds * 1000)"],
                environment: configuration.target.childEnvironment, targets: targets, key: dumpKey,
                level: configuration.compressionLevel, jobs: configuration.jobs, key: configuration.key, progress: progress, phase: "dump \(id)", estimate: estimate,
                lockWait: (configuration.target, logical.lockWaitSeconds), contents: contents, beforeCommit: { _ = try counting.wait(); _ = try schemaDump.finish() })
        } catch {
            // A count that failed first (no SELECT privilege, a lock timeout) aborts the snapshot, and
            // pg_dump then reports only "could not import the requested snapshot": the count's error is the cause.
            if !Interruption.isRequested, let cause = counting.failure(within: 1) { throw cause }
            // Otherwise stop counting: nobody will use the counts, and a large database would keep us for
            // hours. (A cancel that falls between two counts is lost, hence the retries.)
            for _ in 0..<20 where !counting.finished(within: 0) {
                connection.cancelRunningStatement()
                if counting.finished(within: 0.5) { break }
            }
            throw error
        }
        let (tables, schemaVersion): ([BackupManifest.TableRowCount], String?)
        var files = [file]
        do {
            (tables, schemaVersion) = try counting.wait()
            try connection.execute(script: "COMMIT")
            // The table of contents (selective restores, dbrestore contents). A dump it cannot read
            // (the restore would refuse it too) is stored without one, as before tables of contents.
            if let toc = contents.finish() {
                files.append(try StreamCapture.store(try JSONOutput.encoder().encode(toc), targets: targets, key: tocKey,
                                                     level: configuration.compressionLevel, key: configuration.key))
                // A repository that failed at the table of contents is dropped: its dump goes too.
                targets.deleteFromFailed([dumpKey, tocKey])
            } else {
                // Whatever stops the table of contents stops dbrestore too (the same scanner and statement
                // policy): say so loudly, since this backup restores only by hand.
                FileHandle.standardError.write(Data(("warning: backup \(id): its dump cannot be read as pg_dump output (\(contents.failure ?? "unreadable dump")): "
                    + "dbrestore will refuse it; it restores only by hand (gunzip -c dump.sql.gz | psql); please report this with the pg_dump version\n").utf8))
            }
        } catch {
            targets.delete([dumpKey, tocKey])
            throw error
        }

        var manifest = BackupManifest(
            formatVersion: BackupManifest.currentFormatVersion, id: id, kind: .logical,
            tool: .init(name: "dbbackup", version: DBRecoveryVersion.current),
            database: .init(name: try facts.string(0), serverVersion: try facts.string(1), systemIdentifier: facts[2]),
            startedAt: startedAt, finishedAt: Date(), tags: configuration.tags, release: configuration.release,
            pinned: configuration.pinned, schemaVersion: schemaVersion, snapshot: snapshot, tables: tables, files: files)
        try manifest.record(properties, key: configuration.key)
        manifest.fromStandby = role.inRecovery
        manifest.timeline = role.timeline
        manifest.clientPrograms = [dumper]
        CrashPoint.reached("capture:after-data")
        do {
            // Past this point the backup exists: a signal that came first still cancels it.
            try Interruption.check()
            manifest.schemaFingerprint = try schemaDump.finish()
            try targets.writeManifests(manifest)
        } catch {
            targets.delete([dumpKey, tocKey])
            if Interruption.isRequested { CleanupLog.cleaned("removed \(dumpKey)") }
            throw error
        }
        return CaptureResult(manifest: manifest, stored: targets.succeeded, failed: targets.failures)
    }
}
