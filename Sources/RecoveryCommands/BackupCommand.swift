import ArgumentParser
import Foundation
import Gzip
import PostgresClient
import RecoveryKit

/// `dbbackup`: backups (logical or physical) and WAL archiving.
public struct BackupCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "dbbackup",
        abstract: "Back up a PostgreSQL database: logical dumps, physical base backups, WAL archiving.",
        discussion: """
        Logical (default): runs pg_dump inside an exported snapshot, streams its plain dump through \
        gzip into <repo>/backups/<id>/dump.sql.gz, and records every table's exact row count from the \
        dump's COPY blocks (same snapshot, no second scan of the tables; --count-check also counts each \
        table with count(*) and fails the backup if a count differs). --data-by copy (experimental) \
        COPYs the tables itself over --jobs connections in the same snapshot while pg_dump writes the \
        schema. \
        Physical (--physical): streams pg_basebackup's tar into <repo>/backups/<id>/base.tar.gz for \
        point-in-time recovery with the WAL that `dbbackup wal-push` archives; with --incremental \
        (PostgreSQL 17+, summarize_wal = on) only the blocks changed since the newest base backup of the \
        same server, which it is chained on. The manifest is written \
        last: a backup that did not finish never looks like one. Prints the backup id.

        Examples:
          dbbackup --database-url postgresql://app@db1/app --repo /var/backups/app
          DATABASE_URL=postgresql://app@db1/app BACKUP_REPO=/var/backups/app \\
              dbbackup --tag nightly
          dbbackup --repo /var/backups/app --tag pre-deploy --release v1.3.0 \\
              --pin --json
          dbbackup --physical --repo s3://acme-backups/prod
          dbbackup --physical --incremental --repo s3://acme-backups/prod
                                                  # 17+: changes since the last one
          archive_command = 'dbbackup wal-push %p --repo /var/backups/app'
                                                  # in postgresql.conf

        The dump is plain SQL: gunzip -c dump.sql.gz | psql restores it by hand if you must.
        """,
        version: DBRecoveryVersion.current,
        subcommands: [CaptureCommand.self, WALPushCommand.self],
        defaultSubcommand: CaptureCommand.self)

    public init() {}
}

/// `dbbackup [capture]`: one backup.
public struct CaptureCommand: ToolCommand {
    public static let configuration = CommandConfiguration(
        commandName: "capture",
        abstract: "Take one backup (the default subcommand): logical, or physical with --physical.")

    @OptionGroup(title: "Connection") public var connection: ConnectionOptions
    @OptionGroup(title: "Repository") public var repository: RepositoryOptions
    @OptionGroup(title: "Repository") public var encryption: EncryptionWriteOptions

    @Option(name: .customLong("tag"), help: ArgumentHelp("Label the backup (repeatable), e.g. nightly, pre-deploy.", valueName: "tag"))
    public var tags: [String] = []

    @Option(help: ArgumentHelp("The application release this backup belongs to, e.g. v1.3.0.", valueName: "release"))
    public var release: String?

    @Flag(help: "Pin the backup: dbprune never deletes it.")
    public var pin = false

    @Flag(help: "Physical base backup (pg_basebackup) for point-in-time recovery, instead of a logical dump.")
    public var physical = false

    @Flag(help: "With --physical: only what changed since the newest base backup of the same server (PostgreSQL 17+, summarize_wal = on).")
    public var incremental = false

    @Option(name: .customLong("archive-timeout"),
            help: ArgumentHelp("With --physical: how long the end of the base backup may wait for the server to archive its last WAL segment without any segment being archived, e.g. 60s, 5m; then it fails (exit 14, nothing stored). A failing archive_command is reported at once. Default 60s.", valueName: "duration"))
    public var archiveTimeout: String?

    @Flag(name: .customLong("count-check"),
          help: "Logical backups: also count every table with count(*) in the dump's snapshot (a second scan of each table on the server) and fail (exit 30, nothing stored) if a count differs from the rows the dump holds.")
    public var countCheck = false

    @Option(name: .customLong("compression-level"), help: ArgumentHelp("gzip level, 0 (none) to 9 (smallest); the default is about as small as gzip -6 for a quarter less CPU.", valueName: "n"))
    public var compressionLevel = GzipCompressor.defaultLevel

    @Option(name: .customLong("jobs"), help: ArgumentHelp("Cores to compress on, and with --data-by copy the connections that read tables at once (default: all cores).", valueName: "n"))
    public var jobs: Int?

    @Option(name: .customLong("data-by"),
            help: ArgumentHelp("Logical backups: who reads the tables' rows: pg_dump (default: one table at a time) or copy (experimental: dbbackup COPYs them over --jobs connections in the dump's snapshot, big tables in block ranges; see the README for its limits).", valueName: "pg_dump|copy"))
    public var dataBy: String = LogicalDataReader.pgDump.rawValue

    @OptionGroup(title: "Output") public var output: OutputOptions
    @OptionGroup(title: "Configuration") public var config: ConfigOptions

    public init() {}

    public func validate() throws {
        if incremental && !physical {
            throw ValidationError("--incremental goes with --physical: dbbackup --physical --incremental")
        }
        if let archiveTimeout {
            guard physical else {
                throw ValidationError("--archive-timeout bounds a --physical backup's wait for its WAL to be archived; a logical backup has none: drop it")
            }
            guard SessionLimits.parseDuration(archiveTimeout) != nil else {
                throw ValidationError("--archive-timeout '\(archiveTimeout)' is not a duration: write 60s, 5m or 1h (1 second to 7 days)")
            }
        }
        if countCheck && physical {
            throw ValidationError("--count-check checks a logical backup's row counts; a --physical backup has none: drop one of them")
        }
        guard LogicalDataReader(rawValue: dataBy) != nil else {
            throw ValidationError("--data-by \(dataBy) is not known: use pg_dump (the default) or copy")
        }
        if physical && dataBy != LogicalDataReader.pgDump.rawValue {
            throw ValidationError("--data-by chooses who reads a logical backup's rows; a --physical backup copies files: drop one of them")
        }
        if let jobs, !(1...256).contains(jobs) {
            throw ValidationError("--jobs \(jobs) must be between 1 and 256")
        }
        guard (0...9).contains(compressionLevel) else {
            throw ValidationError("--compression-level \(compressionLevel) is outside 0...9; use 1 (fastest) to 9 (smallest), \(GzipCompressor.defaultLevel) is the default")
        }
        for tag in tags where tag.isEmpty || tag.contains(where: { $0.isWhitespace || $0 == "," }) {
            throw ValidationError("--tag '\(tag)' must be a non-empty word without spaces or commas")
        }
    }

    public func run(in context: RunContext) throws {
        let settings = context.settings
        if config.printIfAsked(context, connection: connection, repository: repository) { return }
        // A base backup holds its whole server: `database="(all)"`, as dbrestore list shows it.
        output.begin("dbbackup", labels: ["kind": incremental ? "incremental" : physical ? "physical" : "logical"]
                        .merging(physical || incremental ? ["database": BackupManifest.wholeServer] : connection.databaseLabel(settings)) { first, _ in first }, in: context)
        var configuration = CaptureConfiguration(
            target: try connection.target(settings), repositories: try repository.addresses(settings), tags: tags, release: release,
            pinned: pin, compressionLevel: compressionLevel,
            jobs: jobs ?? ProcessInfo.processInfo.activeProcessorCount, tools: connection.tools(settings))
        // A logical backup adds to its database's backups; a base backup goes with the WAL.
        let stores = physical ? nil : configuration.target.databaseName
        configuration.key = try encryption.key(from: repository, writingTo: configuration.repositories, settings, database: stores)
        configuration.environment = repository.storageEnvironment(settings)
        configuration.incremental = incremental
        if let seconds = archiveTimeout.flatMap(SessionLimits.parseDuration) { configuration.archiveTimeoutSeconds = seconds }
        // Only a --lock-wait given waits for the repository lock: a cron job finding it busy fails at once (exit 21), as documented.
        configuration.repositoryLockWaitSeconds = TimeInterval(connection.explicitLockWaitSeconds ?? 0)
        let result = physical ? try PhysicalCapture.run(configuration, progress: output.progress)
            : try LogicalCapture.run(LogicalCaptureConfiguration(configuration, lockWaitSeconds: connection.sessionLimits.lockWaitSeconds,
                                                                 countCheck: countCheck, dataBy: LogicalDataReader(rawValue: dataBy) ?? .pgDump),
                                     progress: output.progress)
        encryption.recordStored(in: result.stored, key: configuration.key, repository: repository, settings, database: stores)
        let manifest = result.manifest
        let summary = BackupSummary(manifest: manifest, repository: configuration.repository)
        output.succeeded(["backup_raw_bytes": Double(manifest.rawBytes), "backup_stored_bytes": Double(manifest.storedBytes),
                          "backup_rows": Double(manifest.totalRows), "backup_tables": Double(manifest.tables.count)],
                         summary: summary.humanDescription, in: context)
        if output.json {
            try printJSON(summary)
        } else {
            print(manifest.id)
            if isatty(2) == 1 { output.note(summary.humanDescription) }
        }
        if !result.failed.isEmpty {
            throw RecoveryError(.partial,
                                "backup \(manifest.id) is stored in \(result.stored.joined(separator: ", ")) but FAILED in "
                                    + result.failed.map { "\($0.address) (\($0.error.message))" }.joined(separator: "; "),
                                hint: "the stored copies are complete and verified by their checksums; fix the failed repository and run again")
        }
    }
}

/// `dbbackup wal-push <path>`: PostgreSQL's `archive_command`.
public struct WALPushCommand: ToolCommand {
    public static let configuration = CommandConfiguration(
        commandName: "wal-push",
        abstract: "Archive one WAL file (for archive_command = 'dbbackup wal-push %p --repo …').",
        discussion: """
        Compresses and checksums the file and stores it under wal/<timeline>/ atomically, durable \
        before exit 0. Pushing a file that is already archived with the same content succeeds; with \
        different content it fails loudly and keeps the archived copy.

        --async (for high-latency repositories such as S3 over a WAN): a background pusher, one \
        per spool directory, uploads --jobs files at once, this one and every file PostgreSQL has \
        marked ready in archive_status, read where PostgreSQL keeps them; exit 0 only once this \
        file is stored and confirmed in the repository, as without --async.
        """)

    @Argument(help: ArgumentHelp("Path of the WAL file (%p).", valueName: "path"))
    public var path: String?

    @Flag(name: .customLong("async"), help: "Queue the file in the spool directory and let a background pusher upload several at once (one repository).")
    public var async = false

    @Option(name: .customLong("spool"), help: ArgumentHelp("Spool directory for --async (default: [wal] spool in the config file).", valueName: "dir"))
    public var spool: String?

    @Option(name: .customLong("jobs"), help: ArgumentHelp("--async: files the background pusher uploads at once.", valueName: "n"))
    public var jobs: Int = 8

    @Option(name: .customLong("timeout"), help: ArgumentHelp("--async: seconds to wait for this file to be stored before failing (PostgreSQL retries).", valueName: "seconds"))
    public var timeout: Int = 60

    /// The background pusher itself (started by --async; not for people).
    @Flag(name: .customLong("pusher"), help: .hidden)
    public var pusher = false

    @OptionGroup(title: "Repository") public var repository: RepositoryOptions
    @OptionGroup(title: "Repository") public var encryption: EncryptionWriteOptions
    @OptionGroup(title: "Configuration") public var config: ConfigOptions

    public init() {}

    public func validate() throws {
        if path == nil && !pusher && !config.printConfig { throw ValidationError("wal-push needs the path of the WAL file: archive_command = 'dbbackup wal-push %p --repo …'") }
        if jobs < 1 { throw ValidationError("--jobs must be at least 1") }
        if timeout < 1 { throw ValidationError("--timeout must be at least 1 second") }
        if spool != nil && !async && !pusher { throw ValidationError("--spool is for --async; add --async or drop --spool") }
    }

    public func run(in context: RunContext) throws {
        let settings = context.settings
        if config.printIfAsked(context, connection: nil, repository: repository) { return }
        let addresses = try repository.addresses(settings)
        if async || pusher {
            guard addresses.count == 1 else {
                throw RecoveryError(.usage, "wal-push --async archives into one repository; \(addresses.count) were given",
                                    hint: "use one archive_command per repository, each with its own --spool")
            }
            guard let directory = spool ?? settings.configFile?.walSpool else {
                throw RecoveryError(.usage, "wal-push --async needs a spool directory", hint: "pass --spool DIR or set [wal] spool in the config file")
            }
            let environment = repository.storageEnvironment(settings)
            let asyncSettings = WALSpoolSettings(spool: directory, repository: addresses[0], jobs: jobs, environment: environment)
            if pusher {
                let key = try repository.cipherKey(settings)
                return try WALAsyncPush.drain(settings: asyncSettings, key: key) {
                    try encryption.check(addresses, writtenWith: key, repository: repository, settings)
                }
            }
            guard let path else { return }   // validate() refused this already
            // The pusher gets the same repository and key options; secrets stay in the environment it is given.
            var arguments = ["wal-push", "--pusher", "--spool", directory, "--repo", asyncSettings.repository, "--jobs", String(jobs)]
            if let keyFile = repository.encryptionKeyFile { arguments += ["--encryption-key-file", keyFile] }
            if encryption.allowMixedEncryption { arguments.append("--allow-mixed-encryption") }
            return try WALAsyncPush.push(path: path, settings: asyncSettings, timeout: TimeInterval(timeout), pusherArguments: arguments,
                                         key: { try encryption.key(from: repository, writingTo: addresses, settings) })
        }
        guard let path else { return }   // validate() refused this already
        if addresses.count == 1 {
            _ = try WALArchive.push(path: path, repository: addresses[0], key: try encryption.key(from: repository, writingTo: addresses, settings),
                                    environment: repository.storageEnvironment(settings))
            return
        }
        var failures: [String] = []
        for address in addresses {
            do {
                _ = try WALArchive.push(path: path, repository: address, key: try encryption.key(from: repository, writingTo: [address], settings),
                                        environment: repository.storageEnvironment(settings))
            } catch {
                failures.append("\(address): \(RecoveryError.classify(error).message)")
            }
        }
        if !failures.isEmpty {
            // PostgreSQL retries the whole archive_command; repositories that already hold the file succeed again.
            throw RecoveryError(.partial, "WAL file \((path as NSString).lastPathComponent) was not archived in " + failures.joined(separator: "; "),
                                hint: "PostgreSQL keeps the file and retries; fix the repository named above")
        }
    }
}
