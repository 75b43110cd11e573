import ArgumentParser
import Foundation
import ProcessSignals
import PostgresClient
import RecoveryKit

/// `dbrestore`: verified restores, emergency restores, drills, point-in-time recovery, the backup listing.
public struct RestoreCommand: ParsableCommand, ArgumentRewriting {
    public static let configuration = CommandConfiguration(
        commandName: "dbrestore",
        abstract: "Restore a database from a backup, safely: into a scratch database, verified, then swapped in.",
        discussion: """
        The current database is never dropped: it is renamed to <db>_pre_restore_<time> and kept. \
        The modes are subcommands; --emergency, --drill and --pitr are the same as emergency, drill \
        and pitr.

        Examples:
          dbrestore list --repo /var/backups/app
          dbrestore latest --database-url postgresql://postgres@db1/app \\
              --repo /var/backups/app --dry-run
          dbrestore 20261124T020000Z-3fa2 --yes \\
              --database-url postgresql://postgres@db1/app
          dbrestore latest --table sales.orders --into-schema rescue
                                                  # one table, next to the live one
          dbrestore --emergency                   # 3 a.m.: newest that verifies
          dbrestore --emergency --release v1.2.3  # newest good backup of that release
          dbrestore latest --from-database app --yes \\
              --database-url postgresql://postgres@db1/app_copy
                                                  # app's newest backup into app_copy
          dbrestore --drill --json                # monthly restore drill from cron
          dbrestore cleanup --dry-run             # old pre-restore copies
          dbrestore --pitr --pgdata /srv/pg/restored --port 5433 --start \\
              --target-time '2024-01-15 10:00:00'
          restore_command = 'dbrestore wal-fetch %f %p --repo /var/backups/app'
                                                  # postgresql.conf, written by --pitr
        """,
        version: DBRecoveryVersion.current,
        subcommands: [RestoreBackupCommand.self, EmergencyCommand.self, DrillCommand.self, PITRCommand.self,
                      ListCommand.self, ContentsCommand.self, CleanupCommand.self, WALFetchCommand.self, WALReleaseCommand.self],
        defaultSubcommand: RestoreBackupCommand.self)

    public init() {}

    /// The mode flags and the subcommand each one names.
    static let modeFlags = ["--emergency": "emergency", "--drill": "drill", "--pitr": "pitr"]

    /// Options that only some modes take, and the modes that take them (the others refuse them
    /// with a message naming the mode, rather than the parser's bare "unknown option").
    static let modeOptions: [String: [String]] = [
        "--release": ["emergency", "drill"], "--incident-file": ["emergency"],
        "--pgdata": ["pitr"], "--target-time": ["pitr"], "--target-lsn": ["pitr"], "--target-name": ["pitr"],
        "--target": ["pitr"], "--timeline": ["pitr"], "--system-identifier": ["pitr"], "--base-backup": ["pitr"], "--port": ["pitr"], "--start": ["pitr"], "--move-aside": ["pitr"],
    ]

    /// `dbrestore --drill …` is `dbrestore drill …` (and so for --emergency and --pitr), the
    /// documented spelling in cron lines and runbooks. `list`, `cleanup` and `wal-fetch` are left
    /// to the parser as they are.
    ///
    /// - Throws: `ValidationError` for two modes at once, or an option the chosen mode does not take.
    static func rewrite(_ arguments: [String]) throws -> [String] {
        let end = arguments.firstIndex(of: "--") ?? arguments.endIndex
        let flags = arguments[..<end].filter { modeFlags[$0] != nil }
        let distinct = flags.reduce(into: [String]()) { if !$1.isEmpty && !$0.contains($1) { $0.append($1) } }
        if distinct.count > 1 {
            throw ValidationError("\(distinct[0]) and \(distinct[1]) cannot be combined; choose one")
        }
        let other = ([ListCommand.self, ContentsCommand.self, CleanupCommand.self, WALFetchCommand.self, WALReleaseCommand.self] as [ParsableCommand.Type]).compactMap { $0.configuration.commandName }
        if let first = arguments.first, other.contains(first) { return arguments }
        var rest = Array(arguments[..<end].filter { modeFlags[$0] == nil }) + arguments[end...]
        let modes = Set(modeFlags.values)
        var mode = "restore"
        var named = false
        if let first = rest.first, modes.contains(first) || first == "restore" {
            mode = first
            named = true
            rest.removeFirst()
        }
        if let flag = distinct.first, let flagMode = modeFlags[flag] {
            guard mode == "restore" || mode == flagMode else {
                throw ValidationError("\(flag) and \(mode) cannot be combined; choose one")
            }
            mode = flagMode
        }
        for argument in rest[..<(rest.firstIndex(of: "--") ?? rest.endIndex)] {
            let name = String(argument.split(separator: "=", maxSplits: 1).first ?? "")
            if let takers = modeOptions[name], !takers.contains(mode) {
                throw ValidationError("\(name) goes with \(takers.map { "--\($0)" }.joined(separator: " or ")); "
                                      + (mode == "restore" ? "a plain restore names the backup instead" : "not with --\(mode)")
                                      + " (dbrestore \(takers[0]) --help lists what it takes)")
            }
        }
        // Untouched unless a mode was asked for: `dbrestore --help` stays the top-level help.
        return named || !distinct.isEmpty ? [mode] + rest : arguments
    }
}

/// What every restore that replays a dump (restore, emergency, drill) takes.
public struct RestoreRunOptions: ParsableArguments {
    @Flag(name: .customLong("dry-run"), help: "Print the plan and exit without changing anything.")
    public var dryRun = false

    @Option(name: .customLong("jobs"), help: ArgumentHelp("Connections that load rows and build indexes at once (default: cores).", valueName: "n"))
    public var jobs: Int?

    @Option(name: .customLong("swap-timeout"), help: ArgumentHelp("How long the swap may take, lock waits included: for sessions on the target to end and for other sessions' locks on it (--lock-wait does not apply), e.g. 30s, 2m (default: 30s; bare seconds too).", valueName: "duration"))
    public var swapTimeout = "30s"

    @Option(name: .customLong("from-database"), help: ArgumentHelp("Choose among this database's backups instead of the target's ('latest', --emergency, --drill, --table/--schema); a backup named by its id needs none.", valueName: "name"))
    public var fromDatabase: String?

    public init() {}

    public func validate() throws {
        try FromDatabaseOption.validate(fromDatabase)
        if let jobs, !(1...64).contains(jobs) { throw ValidationError("--jobs \(jobs) must be between 1 and 64") }
        guard let seconds = SessionLimits.parseDuration(swapTimeout), seconds <= 3600 else {
            throw ValidationError("--swap-timeout '\(swapTimeout)' is not a duration from 1s to 1h: write e.g. 30s or 2m")
        }
    }
}

/// What a logical restore is asked for: a backup the operator names (and confirms, unless `--yes`),
/// or the newest good one that `emergency` and `drill` choose themselves, never asking.
enum LogicalRestoreRequest {
    case named(backup: String, yes: Bool)
    case unattended(RestoreConfiguration.Mode, release: String?, incidentFile: String?)

    var mode: RestoreConfiguration.Mode {
        if case .unattended(let mode, _, _) = self { return mode }
        return .normal
    }
}

/// What every restore that replays a dump (restore, emergency, drill) takes from its command line;
/// the run they share is `restoreLogically`.
protocol LogicalRestoreInputs {
    var connection: ConnectionOptions { get }
    var repository: RepositoryOptions { get }
    var options: RestoreRunOptions { get }
    var config: ConfigOptions { get }
    var output: OutputOptions { get }
}

extension UnattendedRestoreOptions: LogicalRestoreInputs {}
extension RestoreBackupCommand: LogicalRestoreInputs {}

extension LogicalRestoreInputs {
    /// One logical restore: plan, confirm (a named backup at a terminal), restore, report.
    func restoreLogically(_ request: LogicalRestoreRequest, in context: RunContext) throws {
        let settings = context.settings
        let mode = request.mode
        if config.printIfAsked(context, connection: connection, repository: repository) { return }
        output.begin("dbrestore", labels: ["mode": mode == .emergency ? "emergency" : mode == .drill ? "drill" : "restore"]
                        .merging(connection.databaseLabel(settings)) { first, _ in first }, in: context)
        let (backup, release, incidentFile): (String, String?, String?) = switch request {
        case .named(let backup, _): (backup, nil, nil)
        case .unattended(_, let release, let incidentFile): ("latest", release, incidentFile)
        }
        var configuration = RestoreConfiguration(
            mode: mode, target: try connection.target(settings), repositories: try repository.addresses(settings), backup: backup,
            release: release, dryRun: options.dryRun, jobs: options.jobs ?? min(ProcessInfo.processInfo.activeProcessorCount, 64),
            incidentFile: incidentFile)
        configuration.key = try repository.cipherKey(settings)
        configuration.fromDatabase = options.fromDatabase
        configuration.swapTimeout = TimeInterval(SessionLimits.parseDuration(options.swapTimeout) ?? 30)
        configuration.tools = connection.tools(settings)   // --pg-bin / PG_BIN: the pg_dump that fingerprints the restored schema
        configuration.environment = repository.storageEnvironment(settings)
        let timeline = output.timeline()
        let plan = try LogicalRestore.plan(configuration, timeline: timeline)
        if options.dryRun {
            if output.json { try printJSON(plan) } else { print(plan.lines.joined(separator: "\n")) }
            return
        }
        if case .named(_, yes: false) = request {
            // Destructive without an explicit yes only at a terminal; never from cron, ssh without a tty or CI.
            try Confirmation.ask(plan.lines.joined(separator: "\n"), refusal: "dbrestore would replace database \(plan.targetDatabase) with backup \(plan.backup.id)")
        } else if !output.json {
            plan.skipped.forEach { output.note("skipped backup \($0.id): \($0.reason)") }
        }
        let report = try LogicalRestore.execute(plan, configuration, timeline: timeline, progress: output.progress)
        output.succeeded(["restore_duration_seconds": report.durationSeconds, "restore_verified_tables": Double(report.verification?.tables.count ?? 0)],
                         summary: "\(report.outcome) from backup \(report.plan.backup.id) in \(String(format: "%.1f", report.durationSeconds)) s", in: context)
        if output.json {
            try printJSON(report)
            return
        }
        let seconds = String(format: "%.1f", report.durationSeconds)
        switch mode {
        case .drill:
            print("drill passed: backup \(report.plan.backup.id) restored and verified (\(report.verification?.tables.count ?? 0) tables) in \(seconds) s; scratch database dropped")
        default:
            var line = "restored \(plan.targetDatabase) from backup \(report.plan.backup.id) in \(seconds) s; row counts verified"
            if configuration.repositories.count > 1 { line += "; read from \(report.plan.backup.repository)" }
            if let kept = report.plan.keptAs { line += "; previous database kept as \(kept)" }
            print(line)
            if let note = PreRestoreCopiesNote.text(database: plan.targetDatabase, copies: report.plan.preRestoreCopies,
                                                    bytes: report.plan.preRestoreBytes, keptAs: report.plan.keptAs, done: true) {
                output.note(note)
            }
            if let incident = report.incidentFile { print("incident record: \(incident)") }
        }
    }
}

/// What `emergency` and `drill` add: they choose the backup themselves (the newest that verifies,
/// optionally of one release) and never ask.
public struct ChoosingOptions: ParsableArguments {
    /// `dbrestore latest --drill` (the flag spelling) names `latest`; nothing else may be named.
    @Argument(help: .hidden) var backup: String?

    @Option(help: ArgumentHelp("Only backups of the state this application release ran with: the release dbmigrate's log had the database at (a pre-deploy snapshot of v1.3.0 holds v1.2.3's state); the dbbackup --release label for backups taken without that log.", valueName: "release"))
    public var release: String?

    /// Accepted and ignored: these modes never ask, and scripts written for the flags may pass it.
    @Flag(name: [.short, .long], help: .hidden) var yes = false

    public init() {}

    /// Only `latest` (the old spelling) may be named.
    func refuseNamedBackup(mode: String) throws {
        if let backup, backup != "latest" {
            throw ValidationError("--\(mode) chooses the newest good backup itself; drop '\(backup)' or drop --\(mode)")
        }
    }

}

/// What `emergency` and `drill` share: they choose the newest good backup themselves and ask nothing.
public struct UnattendedRestoreOptions: ParsableArguments {
    @OptionGroup(title: "Connection") public var connection: ConnectionOptions
    @OptionGroup(title: "Repository") public var repository: RepositoryOptions
    @OptionGroup public var options: RestoreRunOptions
    @OptionGroup public var choosing: ChoosingOptions
    @OptionGroup(title: "Configuration") public var config: ConfigOptions
    @OptionGroup(title: "Output") public var output: OutputOptions

    public init() {}
}

/// `emergency` and `drill`: they choose the backup themselves and never ask; only the mode, and
/// emergency's incident record, tell them apart, so they share their checks and their run.
public protocol UnattendedRestoreCommand: ToolCommand {
    /// The mode the command restores in; its raw value is the command's name.
    static var mode: RestoreConfiguration.Mode { get }
    var unattended: UnattendedRestoreOptions { get }
    /// Where to write the incident record: `--incident-file` of emergency; nil for the others.
    var incidentFile: String? { get }
}

extension UnattendedRestoreCommand {
    public var incidentFile: String? { nil }

    public func validate() throws { try unattended.choosing.refuseNamedBackup(mode: Self.mode.rawValue) }

    public func run(in context: RunContext) throws {
        try unattended.restoreLogically(.unattended(Self.mode, release: unattended.choosing.release, incidentFile: incidentFile), in: context)
    }
}

/// `dbrestore [restore] [<backup>]`.
public struct RestoreBackupCommand: ToolCommand {
    public static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a backup into the database named by --database-url (the default subcommand).",
        discussion: """
        Steps: create a scratch database; stream the dump into it, the schema first, then the rows \
        over --jobs connections (like pg_restore -j), committed only once the file's sha256 has \
        matched at the end of the stream, then indexes and constraints, several at once; check every \
        table's row count against the manifest; end sessions on the target, rename it aside, rename \
        the scratch database into place.

        The restored database gets the backup's encoding, locale, owner, privileges, comment, settings \
        and connection limit. Sessions on the target that do not end within --swap-timeout stop the \
        swap; the target is left unchanged and open.
        """)

    @Argument(help: ArgumentHelp("Backup id, unique id prefix, or 'latest'.", valueName: "backup"))
    public var backup: String?

    @OptionGroup(title: "Connection") public var connection: ConnectionOptions
    @OptionGroup(title: "Repository") public var repository: RepositoryOptions
    @OptionGroup public var options: RestoreRunOptions

    @Flag(name: [.short, .long], help: "Do not ask for confirmation.")
    public var yes = false

    @OptionGroup(title: "Selective restore (one table, one schema)") public var selection: SelectiveRestoreOptions

    @OptionGroup(title: "Configuration") public var config: ConfigOptions
    @OptionGroup(title: "Output") public var output: OutputOptions

    public init() {}

    public func run(in context: RunContext) throws {
        if selection.isActive {
            return try selection.run(backup: backup ?? "latest", fromDatabase: options.fromDatabase, connection: connection, repository: repository, config: config, output: output,
                                     dryRun: options.dryRun, yes: yes, in: context)
        }
        try restoreLogically(.named(backup: backup ?? "latest", yes: yes), in: context)
    }
}

/// `dbrestore emergency` (also `dbrestore --emergency`).
public struct EmergencyCommand: UnattendedRestoreCommand {
    public static let configuration = CommandConfiguration(
        commandName: "emergency",
        abstract: "No prompts: restore the newest backup whose files verify, and write an incident record (also --emergency).",
        discussion: """
        Picks the newest backup of the target database (or of --from-database) whose files verify, \
        says which it skipped and why, prints a timeline \
        and writes an incident record (JSON) to --incident-file or <repo>/incidents/. A backup that \
        fails in any way of its own (unreadable, invalid manifest, replay error, row counts that \
        differ, taken from a newer PostgreSQL major than the server) is skipped and the next older \
        one tried.

        Examples:
          dbrestore --emergency
          dbrestore emergency --release v1.2.3 --dry-run
        """)
    public static let mode = RestoreConfiguration.Mode.emergency

    @OptionGroup public var unattended: UnattendedRestoreOptions

    @Option(name: .customLong("incident-file"), help: ArgumentHelp("Where to write the incident record.", valueName: "path"))
    public var incidentFile: String?

    public init() {}
}

/// `dbrestore drill` (also `dbrestore --drill`).
public struct DrillCommand: UnattendedRestoreCommand {
    public static let configuration = CommandConfiguration(
        commandName: "drill",
        abstract: "Restore drill: restore into a scratch database, verify, drop it, report the time taken (also --drill).",
        discussion: """
        The time taken is your recovery time. Like emergency, it chooses among the target database's \
        own backups (or --from-database's), and a backup that fails in any way of its \
        own is skipped and the next older one tried; the target database is never touched.

        Examples:
          dbrestore --drill --json --metrics-file /var/lib/node_exporter/drill.prom
        """)
    public static let mode = RestoreConfiguration.Mode.drill

    @OptionGroup public var unattended: UnattendedRestoreOptions

    public init() {}
}

/// `dbrestore pitr` (also `dbrestore --pitr`): point-in-time recovery into a new data directory.
public struct PITRCommand: ToolCommand {
    public static let configuration = CommandConfiguration(
        commandName: "pitr",
        abstract: "Point-in-time recovery from a physical base backup and the WAL archive into --pgdata (also --pitr).",
        discussion: """
        Chooses the newest base backup taken before the target (or the one --base-backup names), \
        restores it into --pgdata and writes recovery settings whose restore_command is dbrestore \
        wal-fetch. For --target-name the archived WAL is read for the restore point, and the \
        newest base backup that started before it is taken: recovery cannot reach a point made \
        before its base backup started. An incremental base backup \
        (PostgreSQL 17+) is rebuilt from its chain with pg_combinebackup, one member extracted at a \
        time beside --pgdata, and checked with pg_verifybackup; --dry-run shows the chain and the \
        disk it needs. A base backup with an index (base.index.json.gz, which dbbackup --physical \
        writes) is extracted on --jobs threads, each segment checked against its sha256; others in \
        one pass through tar -x.

        Examples:
          dbrestore --pitr --pgdata /srv/pg/restored --target latest --dry-run
          dbrestore pitr --pgdata /srv/pg/restored --port 5433 --start \\
              --target-time '2024-01-15 10:00:00'
          dbrestore --pitr --pgdata /srv/pg/restored --target-name before_deploy \\
              --base-backup 20240114T020000Z-3fa2 --dry-run
        """)

    @OptionGroup(title: "Connection") public var connection: ConnectionOptions
    @OptionGroup(title: "Repository") public var repository: RepositoryOptions

    @Option(help: ArgumentHelp("The new data directory (must be empty or new, unless --move-aside).", valueName: "dir"))
    public var pgdata: String?

    @Option(name: .customLong("target-time"), help: ArgumentHelp("Recover to this time ('2024-01-15 10:00:00' is UTC; or ISO 8601 with offset).", valueName: "time"))
    public var targetTime: String?

    @Option(name: .customLong("target-lsn"), help: ArgumentHelp("Recover to this WAL position (X/Y).", valueName: "lsn"))
    public var targetLSN: String?

    @Option(name: .customLong("target-name"), help: ArgumentHelp("Recover to this restore point (pg_create_restore_point).", valueName: "name"))
    public var targetName: String?

    @Option(name: .customLong("target"), help: ArgumentHelp("'latest' replays all archived WAL.", valueName: "latest"))
    public var target: String?

    @Option(name: .customLong("timeline"), help: ArgumentHelp("The timeline to recover along: 'latest' (default: the newest, following .history files across failovers and earlier restores) or its number.", valueName: "latest|n"))
    public var timeline: String?

    @Option(name: .customLong("system-identifier"), help: ArgumentHelp("The server to recover when the repository holds base backups of several (a cluster initialised again); default: the one whose WAL was archived last (dbrestore list --json: system_identifier).", valueName: "n")) public var systemIdentifier: String?

    @Option(name: .customLong("base-backup"), help: ArgumentHelp("Recover from this base backup (dbrestore list) instead of the one the plan chooses (the newest ending before the target; for --target-name, the newest started before the restore point).", valueName: "id")) public var baseBackup: String?

    @Option(help: ArgumentHelp("Port of the restored server.", valueName: "port"))
    public var port: Int?

    @Flag(help: "Start the server, follow recovery to promotion, report rows.")
    public var start = false

    @Flag(name: .customLong("move-aside"), help: "Rename a non-empty --pgdata out of the way first.")
    public var moveAside = false

    @Option(name: .customLong("jobs"), help: ArgumentHelp("Threads that decode and write the base backup at once, from its index (default: cores).", valueName: "n"))
    public var jobs: Int?

    @Flag(name: .customLong("dry-run"), help: "Print the plan and exit without changing anything.")
    public var dryRun = false

    @OptionGroup(title: "Configuration") public var config: ConfigOptions
    @OptionGroup(title: "Output") public var output: OutputOptions

    public init() {}

    public func validate() throws {
        guard pgdata != nil else { throw ValidationError("--pitr needs --pgdata DIR, the data directory to restore into") }
        guard [targetTime, targetLSN, targetName, target].compactMap({ $0 }).count == 1 else {
            throw ValidationError("--pitr needs exactly one of --target-time, --target-lsn, --target-name or --target latest")
        }
        if let target, target != "latest" { throw ValidationError("--target accepts only 'latest'") }
        if let targetTime, Self.parseTime(targetTime) == nil {
            throw ValidationError("--target-time '\(targetTime)' is not a time; write 2024-01-15 10:00:00 (UTC) or 2024-01-15T10:00:00+02:00")
        }
        if let targetLSN, WALSegmentName.parseLSN(targetLSN) == nil { throw ValidationError("--target-lsn '\(targetLSN)' is not an LSN like 0/3000060") }
        if let port, !(1...65535).contains(port) { throw ValidationError("--port \(port) is not a TCP port") }
        if let jobs, !(1...64).contains(jobs) { throw ValidationError("--jobs \(jobs) must be between 1 and 64") }
        if let timeline, TimelineChoice(timeline) == nil {
            throw ValidationError("--timeline '\(timeline)' is not a timeline; give 'latest' or a number like 2 (SELECT timeline_id FROM pg_control_checkpoint())")
        }
        if let systemIdentifier, UInt64(systemIdentifier) == nil {
            throw ValidationError("--system-identifier '\(systemIdentifier)' is not a system identifier; give the number (SELECT system_identifier FROM pg_control_system())")
        }
    }

    /// `2024-01-15 10:00:00` (UTC), with optional fraction and offset, or ISO 8601.
    static func parseTime(_ text: String) -> Date? { Timestamp.parseOperatorTime(text) }

    public func run(in context: RunContext) throws {
        let settings = context.settings
        if config.printIfAsked(context, connection: connection, repository: repository) { return }
        output.begin("dbrestore", labels: ["mode": "pitr", "database": BackupManifest.wholeServer], in: context)
        let recoveryTarget: RecoveryTarget = targetTime.flatMap(Self.parseTime).map { .time($0) }
            ?? targetLSN.flatMap(WALSegmentName.parseLSN).map { .lsn($0) } ?? targetName.map { .name($0) } ?? .latest
        let executable = PointInTimeRestore.runningExecutable()
        let directory = pgdata.map { $0.hasPrefix("/") ? $0 : FileManager.default.currentDirectoryPath + "/" + $0 } ?? ""
        var configuration = PITRConfiguration(repository: try repository.address(settings), dataDirectory: directory, target: recoveryTarget,
                                              port: port, start: start, moveAside: moveAside, tools: connection.tools(settings),
                                              connection: try connection.target(settings), dbrestorePath: executable)
        configuration.key = try repository.cipherKey(settings)
        configuration.keyFile = repository.encryptionKeyFile
        configuration.environment = repository.storageEnvironment(settings)
        configuration.timeline = timeline.flatMap(TimelineChoice.init) ?? .latest
        // As the number it is: 0771… names the same server as 771… (manifests record it without zeros).
        configuration.systemIdentifier = systemIdentifier.flatMap { UInt64($0) }.map(String.init)
        configuration.baseBackup = baseBackup
        configuration.jobs = jobs ?? min(ProcessInfo.processInfo.activeProcessorCount, 64)
        let plan = try PointInTimeRestore.plan(configuration)
        if dryRun {
            if output.json { try printJSON(plan) } else { print(plan.lines.joined(separator: "\n")) }
            return
        }
        plan.skipped.forEach { output.note("skipped base backup \($0.id): \($0.reason)") }
        if let warning = plan.restorePointWarning { output.note("warning: \(warning)") }
        let timeline = output.timeline()
        let report = try PointInTimeRestore.execute(plan, configuration, timeline: timeline, progress: output.progress)
        if output.json { return try printJSON(report) }
        if !report.started {
            print("restored base backup \(plan.backupID) into \(directory) with recovery to \(plan.target); start it with: \(plan.pgCtl ?? "pg_ctl") -D \(directory) start"
                  + (plan.pgCtlProblem.map { " (\($0))" } ?? ""))
            output.note(report.hold.map { "hold \($0.id): dbprune keeps its base backup and WAL until recovery ends (recovery_end_command releases it)" }
                        ?? "warning: \(report.holdProblem ?? "no hold written")")
            return
        }
        print("recovered to \(plan.target) and promoted; last replayed transaction: \(report.lastReplayedTransaction.map(Timestamp.format) ?? "none")")
        var table = TextTable("DATABASE", "TABLE", "ROWS")
        for (database, tables) in report.databases.sorted(by: { $0.key < $1.key }) {
            for table0 in tables { table.add(database, table0.qualifiedName, String(table0.rows)) }
        }
        print(table.rendered)
    }
}

/// `dbrestore list`.
public struct ListCommand: ToolCommand {
    public static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List the backups in a repository, newest first, with the database each is of.",
        discussion: """
        One repository may hold several databases' backups: 'latest', --emergency and --drill \
        choose among the target database's own (or --from-database's). A physical base backup \
        holds every database of its server (DATABASE "(all)"; --json: database, system_identifier). \
        --from-database NAME lists NAME's logical backups only (and any whose manifest cannot say whose it is).

        Examples:
          dbrestore list --repo /var/backups/app
          dbrestore list --from-database billing --repo /var/backups/shared
          dbrestore list --json | jq -r '.[0].id'
        """)

    @Option(name: .customLong("from-database"), help: ArgumentHelp("List this database's logical backups only.", valueName: "name"))
    public var fromDatabase: String?

    @OptionGroup public var reading: RepositoryReadOptions

    public init() {}

    public func validate() throws { try FromDatabaseOption.validate(fromDatabase) }

    public func run(in context: RunContext) throws {
        if reading.printConfigIfAsked(context) { return }
        let repository = reading.repository, output = reading.output
        let address = try repository.address(context.settings)
        let listing = try BackupListing.load(repository: address, database: fromDatabase, environment: repository.storageEnvironment(context.settings))
        if output.json {
            try printJSON(listing)
            return
        }
        guard !listing.isEmpty else {
            output.note("no backups \(fromDatabase.map { "of database \($0) " } ?? "")in \(address)")
            let store = try? Repository.open(address, create: false, environment: repository.storageEnvironment(context.settings))
            if let hint = store.flatMap(MisplacedRepository.hint(for:)) { output.note(hint) }
            return
        }
        // RELEASE is the label (`dbbackup --release`; a pre-deploy snapshot's names the release about to be
        // deployed); STATE OF, the releases whose state it holds by dbmigrate's log, which --release chooses by.
        var table = TextTable("ID", "TAKEN (UTC)", "DATABASE", "KIND", "SIZE", "ROWS", "SCHEMA", "RELEASE", "STATE OF", "PINNED", "TAGS")
        for item in listing {
            if let problem = item.problem {
                table.add(item.id, "-", "-", "-", "-", "-", "-", "-", "-", "-", "\(item.archived == true ? "ARCHIVED" : "UNREADABLE"): \(problem)")
                continue
            }
            // A base backup holds every database of its server: "all", not the one it connected to.
            table.add(item.id, item.takenAt.map { String(Timestamp.format($0).prefix(19)).replacingOccurrences(of: "T", with: " ") } ?? "-",
                      item.kind == "physical" ? BackupManifest.wholeServer : item.database ?? "-", item.kind ?? "-", ByteCount.format(item.storedBytes ?? 0), item.rows.map(String.init) ?? "-",
                      item.schemaVersion ?? "-", item.release ?? "-", item.runningReleases.map { $0.isEmpty ? "none" : $0.joined(separator: "=") } ?? "-",
                      item.pinned == true ? "yes" : "no",
                      item.tags.joined(separator: ","))
        }
        print(table.rendered)
    }
}

/// `dbrestore cleanup`: drop old pre-restore copies.
public struct CleanupCommand: ToolCommand {
    public static let configuration = CommandConfiguration(
        commandName: "cleanup",
        abstract: "Drop old <db>_pre_restore_<time> copies that earlier restores kept (only those dbrestore marked).",
        discussion: """
        Every restore keeps the database it replaced as <db>_pre_restore_<time>. This keeps the newest \
        --keep copies and any younger than --keep-within, and drops the rest. Only databases dbrestore \
        marked as its own pre-restore copies are considered, never a name that merely looks like one. \
        Scratch databases of killed restores are dropped and a target a killed swap left closed is \
        reopened first. Reopening destroys nothing, so it needs no --yes: without --yes, cleanup \
        only reopens and then lists what --yes would drop (exit 2 if there is any). Defaults: [restore] keep_pre_restore and keep_pre_restore_within in the \
        config file, else 1 and 7d.

        Examples:
          dbrestore cleanup --database-url postgresql://postgres@db1/app --dry-run
          dbrestore cleanup --keep 2 --keep-within 14d --yes --json
        """)

    @OptionGroup(title: "Connection") public var connection: ConnectionOptions

    @Option(help: ArgumentHelp("Keep this many of the newest copies.", valueName: "n"))
    public var keep: Int?

    @Option(name: .customLong("keep-within"), help: ArgumentHelp("Also keep copies younger than this (h, d or w, e.g. 7d).", valueName: "age"))
    public var keepWithin: String?

    @Flag(name: .customLong("dry-run"), help: "Show what would be dropped; change nothing.")
    public var dryRun = false

    @Flag(name: [.short, .long], help: "Drop them: cleanup drops databases only when told so (it reopens a database a killed restore left closed without it).")
    public var yes = false

    @OptionGroup(title: "Output") public var output: OutputOptions
    @OptionGroup(title: "Configuration") public var config: ConfigOptions

    public init() {}

    public func validate() throws {
        if let keep, !(0...1000).contains(keep) { throw ValidationError("--keep \(keep) must be between 0 and 1000") }
        if let keepWithin, Self.age(keepWithin) == nil { throw ValidationError("--keep-within '\(keepWithin)' is not an age; write e.g. 36h, 7d or 2w") }
    }

    static func age(_ text: String) -> RetentionDuration? {
        text.count <= 6 ? RetentionDuration.parse(text) : nil
    }

    public func run(in context: RunContext) throws {
        if config.printIfAsked(context, connection: connection, repository: nil) { return }
        output.begin("dbrestore", labels: ["mode": "cleanup"].merging(connection.databaseLabel(context.settings)) { first, _ in first }, in: context)
        let file = context.settings.configFile
        // --keep-within was checked by validate(), the file's value when the file was read.
        let within = keepWithin.flatMap(Self.age) ?? file?.keepPreRestoreWithin ?? PreRestoreCleanupConfiguration.defaultKeepWithin
        var configuration = PreRestoreCleanupConfiguration(target: try connection.target(context.settings))
        configuration.keep = keep ?? file?.keepPreRestore ?? PreRestoreCleanupConfiguration.defaultKeep
        configuration.keepWithin = within
        configuration.dryRun = dryRun
        configuration.drop = yes
        let report = try PreRestoreCleanup.run(configuration)
        let unconfirmed = RecoveryError(.usage, "dbrestore cleanup drops databases only with --yes: "
                                        + "\(report.copies.filter { $0.action == .wouldDrop }.count + report.pendingDrops) would be dropped",
                                        hint: "add --yes to drop them, or --dry-run to only list them")
        if !report.needsConfirmation {
            output.succeeded(["cleanup_dropped_bytes": Double(report.droppedBytes)], summary: "\(report.copies.count) pre-restore copies", in: context)
        }
        if output.json {
            try printJSON(report)
            if report.needsConfirmation { throw unconfirmed }
            return
        }
        report.repairs.forEach { output.note($0) }
        report.pending.forEach { output.note($0) }
        report.unmarkedNotes.forEach { output.note($0) }
        guard !report.copies.isEmpty else {
            output.note("no pre-restore copies of \(report.database)")
            if report.needsConfirmation { throw unconfirmed }
            return
        }
        var table = TextTable("DATABASE", "SET ASIDE (UTC)", "SIZE", "ACTION", "WHY")
        for copy in report.copies {
            table.add(copy.name, copy.setAsideAt.map { String(Timestamp.format($0).prefix(19)).replacingOccurrences(of: "T", with: " ") } ?? "-",
                      ByteCount.format(UInt64(max(0, copy.sizeBytes))), copy.action.rawValue, copy.reason)
        }
        print(table.rendered)
        if let failed = report.copies.first(where: { $0.action == .failed }) {
            throw RecoveryError(.databaseError, "could not drop \(failed.name): \(failed.reason)",
                                hint: "end the sessions connected to it and run dbrestore cleanup again")
        }
        if report.needsConfirmation { throw unconfirmed }
    }
}

/// `dbrestore wal-fetch <name> <path>`: PostgreSQL's `restore_command`.
public struct WALFetchCommand: ToolCommand {
    public static let configuration = CommandConfiguration(
        commandName: "wal-fetch",
        abstract: "Fetch one archived WAL file (for restore_command = 'dbrestore wal-fetch %f %p --repo …').",
        discussion: """
        Exit 0: fetched, verified and renamed into place. Exit 1: not in the archive, or another server's \
        segment (its page header's system identifier is not the recovered data directory's \
        pg_control one): PostgreSQL ends recovery there. Exit 126: it exists but could not be fetched or verified (PostgreSQL stops \
        recovery rather than ending it early).

        --prefetch N: a background prefetcher downloads the next N segments into the spool \
        directory (default: dbrecovery-prefetch next to %p, inside pg_wal), verifies and \
        decompresses them there, and later calls check each one's CRC-32 and page header again \
        and rename it into place.
        """)

    @Argument(help: ArgumentHelp("WAL file name (%f).", valueName: "name")) public var name: String?
    @Argument(help: ArgumentHelp("Where PostgreSQL wants it (%p).", valueName: "path")) public var path: String?
    @Option(name: .customLong("prefetch"), help: ArgumentHelp("Download this many following segments ahead, in the background.", valueName: "n"))
    public var prefetch: Int?
    @Option(name: .customLong("spool"), help: ArgumentHelp("--prefetch: where prefetched segments wait (default: dbrecovery-prefetch next to %p).", valueName: "dir"))
    public var spool: String?
    /// The background prefetcher itself (started by --prefetch; not for people).
    @Flag(name: .customLong("prefetcher"), help: .hidden) var prefetcher = false
    @OptionGroup(title: "Repository") public var repository: RepositoryOptions
    @OptionGroup(title: "Configuration") public var config: ConfigOptions
    /// Anything else on the line (an unquoted path split at a space, a misspelt flag), refused in validate().
    @Argument(parsing: .allUnrecognized, help: .hidden) var unexpected: [String] = []

    public init() {}

    /// A usage error here exits 126, not 2: PostgreSQL reads any code below 126 from restore_command
    /// as "not in the archive" and may end recovery early at a segment that does exist. (Checked in
    /// run(), since errors from validate() are re-coded by the argument parser.)
    func refuseUsageErrors() throws {
        if !unexpected.isEmpty {
            throw RecoveryError(.walFetchFailed, "unexpected arguments \(unexpected.map { "'\($0)'" }.joined(separator: " ")); recovery must stop here",
                                hint: "shell-quote every value in restore_command (dbrestore --pitr writes it quoted)")
        }
        if let prefetch, prefetch < 1 {
            throw RecoveryError(.walFetchFailed, "--prefetch must be at least 1; recovery must stop here", hint: "e.g. --prefetch 8")
        }
        if !config.printConfig && !prefetcher && (name == nil || path == nil) {
            throw RecoveryError(.walFetchFailed, "wal-fetch needs the WAL file name and the destination path; recovery must stop here",
                                hint: "restore_command = 'dbrestore wal-fetch %f %p --repo …'")
        }
    }

    public func run(in context: RunContext) throws {
        try refuseUsageErrors()
        if config.printIfAsked(context, connection: nil, repository: repository) { return }
        let settings = context.settings
        let environment = repository.storageEnvironment(settings)
        if prefetcher, let spool, let prefetch {
            return try WALPrefetch.run(settings: WALSpoolSettings(spool: spool, repository: try repository.address(settings), jobs: prefetch,
                                                                  environment: environment),
                                       key: try repository.cipherKey(settings))
        }
        guard let name, let path else { return }   // refuseUsageErrors() refused this already
        var found: Bool
        func fetchOnce() throws -> Bool {
            if let prefetch {
                let address = try repository.address(settings)
                let directory = spool ?? WALPrefetch.defaultSpool(destination: path)
                // The prefetcher decrypts and checks what it spools: it gets the key as this call does
                // (a key file path, or the environment), never in its arguments.
                var arguments = ["wal-fetch", "--prefetcher", "--spool", directory, "--prefetch", String(prefetch), "--repo", address]
                if let keyFile = repository.encryptionKeyFile { arguments += ["--encryption-key-file", keyFile] }
                return try WALPrefetch.fetch(name: name, destination: path,
                                             settings: WALSpoolSettings(spool: directory, repository: address, jobs: prefetch, environment: environment),
                                             key: try repository.cipherKey(settings), prefetcherArguments: arguments)
            }
            return try WALArchive.fetch(name: name, destination: path, repository: try repository.address(settings),
                                        key: try repository.cipherKey(settings), environment: environment)
        }
        do {
            found = try fetchOnce()
            if !found {
                found = try WALArchive.answerMissing(name, destination: path, repository: try repository.address(settings),
                                                     environment: environment, fetch: fetchOnce)
            }
        } catch let error as RecoveryError where error.code == .walFetchFailed {
            throw error
        } catch {
            let cause = RecoveryError.classify(error)
            throw RecoveryError(.walFetchFailed, "cannot fetch WAL file \(name): \(cause.message)", hint: cause.hint)
        }
        guard found else {
            // PostgreSQL asks for the history file of every timeline after its own to find the newest;
            // all but one are absent by design, so that answer is the quiet "not found" status.
            if name.hasSuffix(".history") { throw ExitCode(ExitStatus.failure.rawValue) }
            throw RecoveryError(.failure, "WAL file \(name) is not in the archive")
        }
        // Another server's segment under this name: "not found" (exit 1) with its own message, so
        // that recovery ends before it rather than PostgreSQL replaying into it.
        try WALOwnership.refuseForeign(name, destination: path)
    }
}
