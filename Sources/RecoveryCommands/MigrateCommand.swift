import ArgumentParser
import Foundation
import ProcessSignals
import RecoveryKit

/// `dbmigrate`: migrations up and down against `schema_version`.
public struct MigrateCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "dbmigrate",
        abstract: "Apply and revert schema migrations against a schema_version table, safely.",
        discussion: """
        Migrations live in a directory (default ./migrations) as <version>_<name>.up.sql and \
        <version>_<name>.down.sql. Header directives: -- dbmigrate:no-transaction, -- dbmigrate:irreversible.
        An existing schema_version (version, applied_at) table is adopted as it is: its versions count \
        as applied. dbmigrate keeps its own records in dbmigrate_versions and schema_version_log.

        Examples:
          dbmigrate status
          dbmigrate up --release v1.3.0
          dbmigrate down --to-release v1.2.3 --repo /var/backups/app --dry-run
          dbmigrate down --steps 1 --repo /var/backups/app --yes
          dbmigrate resolve 12 --mark-reverted
          dbmigrate baseline --version 3
        """,
        version: DBRecoveryVersion.current,
        subcommands: [Status.self, Up.self, Down.self, Verify.self, Resolve.self, Baseline.self])

    public init() {}

    /// Options every subcommand shares: the database, the migrations directory, the config file.
    public struct Common: ParsableArguments {
        @OptionGroup(title: "Connection") var connection: ConnectionOptions

        @Option(name: .customLong("dir"), help: ArgumentHelp("Migrations directory (default: ./migrations, or [migrations] dir in the config file).", valueName: "dir"))
        public var directoryFlag: String?

        @OptionGroup(title: "Configuration") var config: ConfigOptions

        /// `--dir`, else the config file's `[migrations] dir`, else `./migrations`.
        func directory(_ settings: Settings) -> String { directoryFlag ?? settings.configFile?.migrationsDirectory ?? "migrations" }

        public init() {}

        /// The run's configuration; nil once `--print-config` has printed the settings (the run ends there).
        func configuration(_ context: RunContext, release: String? = nil, perStep: Bool = false,
                           lockTimeout: String = "10s", statementTimeout: String = "15min") throws -> MigrationConfiguration? {
            if config.printIfAsked(context, connection: connection, repository: nil) { return nil }
            var configuration = MigrationConfiguration(target: try connection.target(context.settings), directory: directory(context.settings),
                                                       release: release, perStep: perStep,
                                                       // --lock-wait (ConnectionOptions) also bounds the wait for another dbmigrate's lock; 30 s unless given.
                                                       lockWaitSeconds: Double(connection.explicitLockWaitSeconds ?? 30),
                                                       lockTimeout: lockTimeout, statementTimeout: statementTimeout)
            // And, given, the pre-downgrade backup's wait for the repository lock (fails at once without it, as dbbackup).
            configuration.repositoryLockWaitSeconds = TimeInterval(connection.explicitLockWaitSeconds ?? 0)
            return configuration
        }
    }

    /// Options of the commands that run SQL.
    public struct Running: ParsableArguments {
        @Flag(name: .customLong("dry-run"), help: "Print the plan and the full SQL, change nothing.")
        public var dryRun = false
        @Flag(name: [.short, .long], help: "Do not ask for confirmation.")
        public var yes = false
        @Flag(name: .customLong("per-step"), help: "One transaction per step instead of one for the whole plan.")
        public var perStep = false
        @Option(name: .customLong("lock-timeout"), help: ArgumentHelp("lock_timeout for migration statements.", valueName: "interval"))
        public var lockTimeout = "10s"
        @Option(name: .customLong("statement-timeout"), help: ArgumentHelp("statement_timeout for migration statements.", valueName: "interval"))
        public var statementTimeout = "15min"

        public init() {}

        /// The run's configuration: the shared options plus this command's transaction and timeout
        /// choices; the server's notices and warnings go to stderr as they arrive.
        func configuration(_ common: Common, _ context: RunContext, release: String?, output: OutputOptions,
                           requireRestorePoint: Bool = false) throws -> MigrationConfiguration? {
            guard var configuration = try common.configuration(context, release: release, perStep: perStep, lockTimeout: lockTimeout,
                                                               statementTimeout: statementTimeout) else { return nil }
            configuration.requireRestorePoint = requireRestorePoint
            configuration.onServerMessage = { output.note("server \($0)") }
            configuration.onNote = { output.note($0) }
            return configuration
        }

        /// Asks on a terminal unless `--yes`. A destructive plan with no terminal to ask on and no
        /// `--yes` is refused (exit 2): cron and CI must say yes explicitly.
        func confirm(_ plan: MigrationPlan, destructive: Bool) throws {
            guard !yes else { return }
            try Confirmation.ask(plan.lines(includingSQL: false).joined(separator: "\n"),
                                 refusal: "dbmigrate \(plan.direction.rawValue) would revert \(plan.steps.count) version(s)", required: destructive)
        }
    }

    static func render(_ plan: MigrationPlan, _ report: MigrationReport?, dryRun: Bool, output: OutputOptions) throws {
        struct Result: Encodable { var plan: MigrationPlan; var report: MigrationReport? }
        if output.json { return try printJSON(Result(plan: plan.shown, report: report)) }
        if dryRun {
            print(plan.lines(includingSQL: true).joined(separator: "\n"))
            return
        }
        guard let report, !report.steps.isEmpty else {
            print("nothing to do: database is at version \(plan.fromVersion.map(String.init) ?? "none")")
            return
        }
        plan.warnings.forEach { output.note("WARNING: \($0)") }
        report.warnings.filter { !plan.warnings.contains($0) }.forEach { output.note("warning: \($0)") }
        var line = "\(report.direction == .up ? "upgraded" : "downgraded") from \(report.fromVersion.map(String.init) ?? "none") to \(report.toVersion.map(String.init) ?? "none") (\(report.steps.count) step\(report.steps.count == 1 ? "" : "s"), \(String(format: "%.1f", report.durationSeconds)) s)"
        if let backup = report.backupID { line += "; backup \(backup)" }
        if let point = report.restorePoint { line += "; restore point \(point)" }
        print(line)
    }

    public struct Status: ToolCommand {
        public static let configuration = CommandConfiguration(abstract: "Show applied and pending versions, and drift.")
        @OptionGroup var common: Common
        @OptionGroup(title: "Output") var output: OutputOptions
        public init() {}

        public func run(in context: RunContext) throws {
            guard let configuration = try common.configuration(context) else { return }
            let rows = try Migrations.status(configuration)
            if output.json { return try printJSON(rows) }
            var table = TextTable("VERSION", "NAME", "STATE", "APPLIED AT (UTC)", "RELEASE", "NOTES")
            for row in rows {
                table.add(String(row.version), row.name, row.adopted ? "\(row.state) (adopted)" : row.state,
                          row.appliedAt.map { String(Timestamp.format($0).prefix(19)) } ?? "-",
                          row.release ?? "-", row.notes.filter { $0 != "adopted" }.joined(separator: "; "))
            }
            print(table.rendered)
        }
    }

    public struct Up: ToolCommand {
        public static let configuration = CommandConfiguration(abstract: "Apply pending migrations (up to --to).")
        @OptionGroup var common: Common
        @OptionGroup var running: Running
        @Option(help: ArgumentHelp("Stop at this version.", valueName: "version")) var to: Int64?
        @Option(help: ArgumentHelp("The release applying these migrations, recorded for down --to-release.", valueName: "release")) var release: String?
        @OptionGroup(title: "Output") var output: OutputOptions
        public init() {}

        public func validate() throws {
            if let to, to < 0 { throw ValidationError("--to \(to) must be a version number of 0 or more") }
        }

        public func run(in context: RunContext) throws {
            guard let configuration = try running.configuration(common, context, release: release, output: output) else { return }
            let (plan, report) = try Migrations.up(configuration, to: to, dryRun: running.dryRun) { try running.confirm($0, destructive: false) }
            try MigrateCommand.render(plan, report, dryRun: running.dryRun, output: output)
        }
    }

    public struct Down: ToolCommand {
        public static let configuration = CommandConfiguration(
            abstract: "Revert migrations: pre-flight the whole plan, back up, then revert in one transaction.",
            discussion: "Exactly one of --to, --steps, --to-release. A backup tagged pre-downgrade is taken first (needs --repo or BACKUP_REPO) unless --no-backup.")
        @OptionGroup var common: Common
        @OptionGroup var running: Running
        @Option(help: ArgumentHelp("Revert every applied version above this one.", valueName: "version")) var to: Int64?
        @Option(help: ArgumentHelp("Revert the N most recently applied versions.", valueName: "n")) var steps: Int?
        @Option(name: .customLong("to-release"), help: ArgumentHelp("Return to the versions present when this release was migrated.", valueName: "release"))
        var toRelease: String?
        @Flag(name: .customLong("no-backup"), help: "Do not take a backup first (not recommended).") var noBackup = false
        @Flag(name: .customLong("require-restore-point"),
              help: "Refuse to revert when no restore point can be created (missing privilege, wal_level = minimal, standby), instead of warning.")
        var requireRestorePoint = false
        @Option(help: ArgumentHelp("Recorded in the log as the release doing the downgrade.", valueName: "release")) var release: String?
        @OptionGroup(title: "Repository") var repository: RepositoryOptions
        @OptionGroup(title: "Output") var output: OutputOptions
        public init() {}

        public func validate() throws {
            let chosen = [to != nil, steps != nil, toRelease != nil].filter { $0 }.count
            guard chosen == 1 else { throw ValidationError("give exactly one of --to VERSION, --steps N or --to-release RELEASE") }
            if let to, to < 0 { throw ValidationError("--to \(to) must be a version number of 0 or more") }
            if let steps, steps < 1 { throw ValidationError("--steps \(steps) must be 1 or more") }
        }

        public func run(in context: RunContext) throws {
            guard var configuration = try running.configuration(common, context, release: release, output: output,
                                                                requireRestorePoint: requireRestorePoint) else { return }
            configuration.environment = repository.storageEnvironment(context.settings)
            let selection: DowngradeSelection = to.map { .toVersion($0) } ?? steps.map { .steps($0) } ?? .toRelease(toRelease ?? "")
            var backupRepository: String?
            if !noBackup {
                do {
                    backupRepository = try repository.address(context.settings)
                } catch {
                    throw RecoveryError(.usage, "a downgrade takes a backup first, but no repository is given",
                                        hint: "pass --repo DIR (or set BACKUP_REPO), or --no-backup to skip it")
                }
            }
            let progress = output.progress
            let (plan, report) = try Migrations.down(configuration, selection: selection, backupRepository: backupRepository,
                                                     tools: common.connection.tools(context.settings), key: try repository.cipherKey(context.settings), dryRun: running.dryRun,
                                                     progress: progress) { plan in
                try running.confirm(plan, destructive: true)
                // On a terminal, say what the next seconds are spent on before the dump's progress line starts.
                if plan.takesBackup && progress != nil { output.note("taking a backup (tag pre-downgrade) before reverting…") }
            }
            try MigrateCommand.render(plan, report, dryRun: running.dryRun, output: output)
        }
    }

    public struct Verify: ToolCommand {
        public static let configuration = CommandConfiguration(abstract: "Check applied versions against their files (edited, missing, mid-flight).")
        @OptionGroup var common: Common
        @OptionGroup(title: "Output") var output: OutputOptions
        public init() {}

        public func run(in context: RunContext) throws {
            guard let configuration = try common.configuration(context) else { return }
            let problems = try Migrations.verify(configuration)
            if output.json { try printJSON(problems) } else {
                problems.forEach { print("version \($0.version) (\($0.name)): \($0.state); \($0.notes.joined(separator: "; "))") }
            }
            guard problems.isEmpty else {
                throw RecoveryError(.verificationMismatch, "\(problems.count) applied version(s) differ from their files",
                                    hint: "restore the edited files from version control, or accept an edit with dbmigrate resolve VERSION --mark-applied (dbmigrate up shows both checksums); resolve mid-flight versions with dbmigrate resolve")
            }
            if !output.json { print("all applied versions match their files") }
        }
    }

    public struct Resolve: ToolCommand {
        public static let configuration = CommandConfiguration(
            abstract: "Mark a version applied or reverted by hand (audited), after checking the schema yourself.")
        @Argument(help: ArgumentHelp("The version to resolve.", valueName: "version")) var version: Int64
        @Flag(name: .customLong("mark-applied"), help: "Record the version as applied: its up.sql took effect (you checked the schema).")
        var markApplied = false
        @Flag(name: .customLong("mark-reverted"), help: "Record the version as reverted: its down.sql took effect, or its up.sql never did.")
        var markReverted = false
        @OptionGroup var common: Common
        public init() {}

        public func validate() throws {
            guard markApplied != markReverted else { throw ValidationError("give exactly one of --mark-applied or --mark-reverted") }
        }

        public func run(in context: RunContext) throws {
            guard let configuration = try common.configuration(context) else { return }
            let warnings = try Migrations.resolve(configuration, version: version, applied: markApplied)
            warnings.forEach { TextSink.standardError.write("warning: \($0)\n") }
            print("version \(version) marked \(markApplied ? "applied" : "reverted"); recorded in schema_version_log")
        }
    }

    public struct Baseline: ToolCommand {
        public static let configuration = CommandConfiguration(
            abstract: "Record versions up to --version as applied without running them (schema_version missing or empty).",
            discussion: "For a database whose schema already matches the migrations up to VERSION but that has no schema_version rows. A schema_version that already holds rows needs no baseline: its versions are adopted as they are.")
        @Option(help: ArgumentHelp("The version the database is at: it and every version on disk below it are recorded.", valueName: "version"))
        var version: Int64
        @OptionGroup var common: Common
        @OptionGroup(title: "Output") var output: OutputOptions
        public init() {}

        public func validate() throws {
            if version < 0 { throw ValidationError("--version \(version) must be a version number of 0 or more") }
        }

        public func run(in context: RunContext) throws {
            guard let configuration = try common.configuration(context) else { return }
            let recorded = try Migrations.baseline(configuration, version: version)
            if output.json { return try printJSON(["baselined": recorded]) }
            print("recorded version(s) \(recorded.map(String.init).joined(separator: ", ")) as applied (baseline) without running them; dbmigrate up applies what comes after \(version)")
        }
    }
}
