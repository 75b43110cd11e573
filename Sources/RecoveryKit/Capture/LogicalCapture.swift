import BackupStorage
import Foundation
import Gzip
import Logging
import PostgresClient
import ProcessSignals

/// A logical backup's configuration: what every capture needs, and how long pg_dump waits for a lock.
public struct LogicalCaptureConfiguration {
    public var capture: CaptureConfiguration
    /// `--lock-wait`: pg_dump's `--lock-wait-timeout` (the target's sessions carry it as `lock_timeout`).
    public var lockWaitSeconds: Int
    /// `--count-check`: also count every table with `count(*)` in the dump's snapshot (a second scan
    /// of each table) and fail the backup if a count differs from the rows the dump holds.
    public var countCheck: Bool
    /// `--data-by`: who reads the tables' rows.
    public var dataBy: LogicalDataReader

    public init(_ capture: CaptureConfiguration, lockWaitSeconds: Int = SessionLimits.defaultLockWaitSeconds, countCheck: Bool = false,
                dataBy: LogicalDataReader = .pgDump) {
        self.capture = capture
        self.lockWaitSeconds = lockWaitSeconds
        self.countCheck = countCheck
        self.dataBy = dataBy
    }
}

/// Who reads a logical backup's table rows.
public enum LogicalDataReader: String, CaseIterable, Sendable {
    /// The backup COPYs the tables itself over `--jobs` connections in the dump's snapshot, big tables
    /// in block ranges, and pg_dump writes the rest (PostgreSQL 14+). Experimental, not the default:
    /// it holds a second lock per table while pg_dump runs, its readers can queue behind an ACCESS
    /// EXCLUSIVE request that waits for the backup's own lock, and it opens `--jobs` connections.
    case copy
    /// pg_dump reads every table, one at a time (the default).
    case pgDump = "pg_dump"
}

/// A snapshot-consistent logical backup: `pg_dump --snapshot` writes the schema while the tables'
/// rows are COPYed over `--jobs` connections in the same snapshot and spliced into its stream as
/// pg_dump writes them (`ParallelTableCopy`, `DataSectionSplicer`; `--data-by pg_dump`: pg_dump reads
/// them all), gzip-streamed into the repository, with exact row counts from the same snapshot: the
/// server's COPY results, checked against each table's COPY block in the stream (no second scan).
public enum LogicalCapture {
    /// Name of the data file inside a logical backup's folder.
    public static let dumpFileName = "dump.sql.gz"

    /// Takes one logical backup.
    ///
    /// Order: lock the repository; open a REPEATABLE READ READ ONLY transaction and export its
    /// snapshot; lock the tables to copy (ACCESS SHARE) and start copying them; stream
    /// `pg_dump --snapshot` (their rows spliced in) through gzip into `backups/<id>/dump.sql.gz` (sha256,
    /// sizes and each COPY block's rows computed on the way) while reading `schema_version` (and with
    /// `countCheck` counting rows) in the same snapshot on the exporting connection; commit the data
    /// file (fsync, rename) once both are done; match the COPY blocks to the snapshot's tables (an
    /// error if one is missing, or with `countCheck` if a count differs: the data file is removed
    /// again); write the manifest last.
    ///
    /// - Important: on any failure no manifest is written, so nothing half-done looks like a backup.
    /// - Parameters:
    ///   - configuration: what to back up and where.
    ///   - progress: told of bytes read from pg_dump.
    /// - Returns: the manifest written.
    /// - Throws: `RecoveryError`, `PostgresError` or `StorageError`; classify with `RecoveryError.classify`.
    public static func run(_ logical: LogicalCaptureConfiguration, progress: ProgressObserver? = nil) throws -> CaptureResult {
        let configuration = logical.capture
        let session = try CaptureSession(configuration, command: "dbbackup", physical: false)
        defer { session.close() }
        let (targets, startedAt, id, connection) = (session.targets, session.startedAt, session.id, session.connection)
        // pg_dump of the server's major or newer (an older one refuses the server).
        let dumper = try session.program("pg_dump", fit: .sameOrNewer)
        let pgDump = dumper.path
        try connection.execute(script: "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        let snapshot = try connection.query("SELECT pg_catalog.pg_export_snapshot()").scalar ?? ""
        let facts = try connection.query("""
            SELECT current_database(), current_setting('server_version'),
                   (SELECT system_identifier::text FROM pg_catalog.pg_control_system())
            """).rows[0]
        // Read before the snapshot's reader starts: the connection serves one thread at a time.
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
        // The tables' rows: read here over several connections in the snapshot, pg_dump writing the rest
        // (its own locks come after ours, which are held until the COMMIT below).
        let copying = logical.dataBy == .copy ? try copyPlan(on: connection, configuration, inRecovery: role.inRecovery, pgDump: dumper) : nil
        let plan = copying?.plan
        if let lock = plan?.lockStatement { try connection.execute(script: lock) }
        let exporter = SnapshotConnection(connection)
        let copy = copying.map { ParallelTableCopy(plan: $0.plan, target: configuration.target, snapshot: snapshot, exporter: exporter, jobs: $0.connections) }
        defer { copy?.stop() }
        var copiedRows: [String: Int64] = [:]
        let splice = copy.map { copy in
            DataSectionSplicer(encoding: plan?.encoding ?? "") { deliver in copiedRows = try copy.write(to: deliver) }
        }
        // The exact counts come from the dump's COPY blocks (DumpContentsBuilder), for the copied tables
        // checked against the server's COPY results (verifyCopied). With --count-check the
        // old count(*) pass runs too, in the same snapshot on its own connection while pg_dump streams it:
        // the server scans while this process compresses. The data file is committed only once that is
        // in, so a failed count leaves nothing behind.
        let countCheck = logical.countCheck
        let counting = Background {
            try exporter.use { (try countCheck ? TableCounter.countRows(on: $0) : nil, try TableCounter.schemaVersion(on: $0), try TableCounter.runningReleases(on: $0)) }
        }
        defer { counting.join() }
        // The schema fingerprint, from a schema-only pg_dump in the same snapshot (Verify/SchemaDump.swift).
        let schemaDump = try SchemaDump(pgDump: pgDump, target: configuration.target, snapshot: snapshot)
        defer { schemaDump.cancel() }

        let dumpKey = "backups/\(id)/\(dumpFileName)"
        let tocKey = "backups/\(id)/\(DumpTableOfContents.fileName)"
        let layout = GzipCompressor.effectiveLayout(DumpTableOfContents.layout(in: configuration.environment), level: configuration.compressionLevel)
        let contents = DumpContentsBuilder(backupID: id, accessPointInterval: DumpTableOfContents.accessPointInterval(in: configuration.environment), layout: layout)
        let file: BackupManifest.File
        do {
            (file, _) = try StreamCapture.run(
                executable: pgDump,
                arguments: ["--snapshot=\(snapshot)", "--format=plain", "--no-password", "--lock-wait-timeout=\(logical.lockWaitSeconds * 1000)"]
                    + (plan.map { ["--encoding=\($0.encoding)"] + $0.pgDumpExclusions } ?? []),
                environment: configuration.target.childEnvironment, targets: targets, key: dumpKey,
                level: configuration.compressionLevel, jobs: configuration.jobs, layout: layout, key: configuration.key, progress: progress, phase: "dump \(id)",
                estimate: estimate,
                lockWait: (configuration.target, logical.lockWaitSeconds), contents: contents, splice: splice, beforeCommit: { _ = try counting.wait(); _ = try schemaDump.finish() })
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
        let (tables, schemaVersion, runningReleases): ([BackupManifest.TableRowCount], String?, [String]?)
        var files = [file]
        do {
            let counted: [BackupManifest.TableRowCount]?
            (counted, schemaVersion, runningReleases) = try counting.wait()
            let toc = contents.finish()
            if let plan { try verifyCopied(plan, rows: copiedRows, in: contents.copyRowCounts, backupID: id) }
            // Still in the snapshot: the table list the COPY blocks are matched to is the dump's.
            tables = try TableCounter.rows(from: contents.copyRowCounts, on: connection, inRecovery: role.inRecovery) { reason in
                TextSink.standardError.write("warning: backup \(id): \(reason)\n")
            }
            if let counted { try TableCounter.crossCheck(tables, against: counted, backupID: id, database: try facts.string(0)) }
            try connection.execute(script: "COMMIT")
            // The table of contents (selective restores, dbrestore contents). A dump it cannot read
            // (the restore would refuse it too) is stored without one, as before tables of contents.
            if let toc {
                files.append(try StreamCapture.store(try JSONOutput.encoder().encode(toc), targets: targets, key: tocKey,
                                                     level: configuration.compressionLevel, key: configuration.key))
                // A repository that failed at the table of contents is dropped: its dump goes too.
                targets.deleteFromFailed([dumpKey, tocKey])
            } else {
                // Whatever stops the table of contents stops dbrestore too (the same scanner and statement
                // policy): say so loudly, since this backup restores only by hand.
                TextSink.standardError.write("warning: backup \(id): its dump cannot be read as pg_dump output (\(contents.failure ?? "unreadable dump")): "
                    + "dbrestore will refuse it; it restores only by hand (gunzip -c dump.sql.gz | psql); please report this with the pg_dump version\n")
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
        manifest.runningReleases = runningReleases
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

    /// The tables this backup copies itself, read in the snapshot, and over how many connections; nil
    /// (pg_dump reads them all, as with `--data-by pg_dump`) on a server before 14, when the dump's
    /// encoding is not one the server names, and where copying would cost the server what pg_dump alone
    /// would not (each fallback is logged with its reason):
    /// - pg_dump of another major than the server: it quotes column names by its own keyword list,
    ///   which the entries written here (the server's `quote_ident`) could not match;
    /// - locks: the snapshot's connection holds one more ACCESS SHARE lock per copied table beside
    ///   pg_dump's, and the server's shared lock table (`max_locks_per_transaction` × (`max_connections`
    ///   + `max_prepared_transactions`) entries) must keep room for its applications;
    /// - connections: `--jobs` of them, never more than leaves 5 free for the applications.
    private static func copyPlan(on connection: PostgresConnection, _ configuration: CaptureConfiguration, inRecovery: Bool,
                                 pgDump: PostgresProgram) throws -> (plan: TableDataPlan, connections: Int)? {
        guard connection.serverVersionNumber >= 140000 else { return nil }
        let serverMajor = PostgresMajor(serverVersionNumber: connection.serverVersionNumber).number
        guard pgDump.major == serverMajor else {
            return fallBack("\(pgDump.path) is PostgreSQL \(pgDump.major)'s and the server is \(serverMajor): pg_dump quotes names by its own keywords")
        }
        // pg_dump's client encoding: PGCLIENTENCODING or the connection string's, else the database's. It is
        // passed to pg_dump as --encoding, so the rows read here and its text are in the same one.
        let requested = configuration.target.childEnvironment["PGCLIENTENCODING"] ?? configuration.target.value("client_encoding")
        guard let encoding = try connection.query("""
            SELECT pg_catalog.pg_encoding_to_char(pg_catalog.pg_char_to_encoding(COALESCE($1, pg_catalog.getdatabaseencoding())))
            """, [requested]).scalar, !encoding.isEmpty else { return nil }
        let plan = try TableDataPlan.read(on: connection, encoding: encoding, inRecovery: inRecovery,
                                          splitPages: TableDataPlan.splitPages(in: configuration.environment))
        let room = try connection.query("""
            SELECT (pg_catalog.current_setting('max_locks_per_transaction')::int8
                    * (pg_catalog.current_setting('max_connections')::int8 + pg_catalog.current_setting('max_prepared_transactions')::int8))::text,
                   (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'relation')::text,
                   (SELECT count(*) FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'p', 'm', 'f', 'S', 'v')
                      AND c.relnamespace <> 'pg_catalog'::regnamespace AND c.relnamespace <> 'information_schema'::regnamespace)::text,
                   (pg_catalog.current_setting('max_connections')::int8 - pg_catalog.current_setting('superuser_reserved_connections')::int8
                    - (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend'))::text
            """).rows[0].values.map { Int64($0 ?? "") ?? 0 }
        let (lockSlots, locksHeld, pgDumpLocks, freeConnections) = (room[0], room[1], room[2], room[3])
        let ours = Int64(plan.tables.count + configuration.jobs)
        // Half the lock table for the backup at most, pg_dump's own locks included: the rest is the applications'.
        if locksHeld + pgDumpLocks + ours > lockSlots / 2 {
            return fallBack("copying \(plan.tables.count) tables would take \(ours) locks beside pg_dump's \(pgDumpLocks), with \(locksHeld) held "
                            + "of the server's \(lockSlots) (max_locks_per_transaction × (max_connections + max_prepared_transactions))")
        }
        // pg_dump and the schema dump take two more; five stay free for the applications.
        let connections = min(configuration.jobs, Int(freeConnections) - 2 - 5)
        guard connections >= 1 else {
            return fallBack("only \(freeConnections) of the server's connections are free, and copying would need at least one more than pg_dump")
        }
        return (plan, connections)
    }

    private static func fallBack(_ reason: String) -> (plan: TableDataPlan, connections: Int)? {
        logger.warning("--data-by copy: \(reason); pg_dump reads the rows instead (as with --data-by pg_dump)")
        return nil
    }

    private static let logger = Logger(label: "dbrecovery.backup")

    /// The rows the server copied for each table (`PQcmdTuples`, summed over its block ranges) must be
    /// the rows its entry in the stored dump holds, one line each.
    ///
    /// - Throws: `RecoveryError(.toolFailed)` naming the first table that differs; nothing is stored then.
    private static func verifyCopied(_ plan: TableDataPlan, rows copied: [String: Int64], in stream: CopyRowCounts?, backupID: String) throws {
        guard let stream else { return }
        var streamed: [TableCounter.CopyName: Int64] = [:]
        for block in stream.blocks { streamed[.init(schema: block.schema, name: block.name), default: 0] += block.rows }
        for table in plan.tables {
            let inStream = streamed[.init(schema: Array(table.schema.utf8), name: Array(table.name.utf8))]
            guard let server = copied[table.oid], inStream == server else {
                throw RecoveryError(.toolFailed, "backup \(backupID): the server copied \(copied[table.oid].map(String.init) ?? "no") rows of \(table.schema).\(table.name) "
                                        + "but the dump holds \(inStream.map(String.init) ?? "no") for it; nothing was stored",
                                    hint: "back up with --data-by pg_dump, and report this with the server and pg_dump versions")
            }
        }
    }
}
