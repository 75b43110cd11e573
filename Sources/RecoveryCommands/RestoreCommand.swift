import ArgumentParser
import Foundation
import RecoveryKit

/// `dbrestore`: verified restores, emergency restores, drills, and the backup listing.
public struct RestoreCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "dbrestore",
        abstract: "Restore a database from a backup, safely: into a scratch database, verified, then swapped in.",
        discussion: """
        The current database is never dropped: it is renamed to <db>_pre_restore_<time> and kept.

        Examples:
          dbrestore list --repo /var/backups/app
          dbrestore latest --database-url postgresql://postgres@db1/app --repo /var/backups/app --dry-run
          dbrestore 20261124T020000Z-3fa2 --database-url postgresql://postgres@db1/app --yes
          dbrestore --emergency                      # 3 a.m.: no questions, newest backup that verifies
          dbrestore --emergency --release v1.2.3     # newest good backup taken at that release
          dbrestore --drill --json                   # monthly restore drill from cron
        """,
        subcommands: [RestoreBackupCommand.self, ListCommand.self],
        defaultSubcommand: RestoreBackupCommand.self)

    public init() {}
}

/// `dbrestore [<backup>]`, `--emergency`, `--drill`.
public struct RestoreBackupCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a backup into the database named by --database-url (the default subcommand).",
        discussion: """
        Steps: create a scratch database; stream the dump into it through psql in one transaction, \
        committed only if the file's sha256 matches; check every table's row count against the \
        manifest; end sessions on the target, rename it aside, rename the scratch database into place.

        --emergency: no prompt; picks the newest backup whose files verify, says which it skipped and \
        why, prints a timeline and writes an incident record (JSON) to --incident-file or \
        <repo>/incidents/.
        --drill: restore into a scratch database, verify, drop it; reports the time taken (your RTO).
        """)

    @Argument(help: ArgumentHelp("Backup id, unique id prefix, or 'latest'.", valueName: "backup"))
    public var backup: String?

    @OptionGroup(title: "Connection") public var connection: ConnectionOptions
    @OptionGroup(title: "Repository") public var repository: RepositoryOptions

    @Flag(help: "No prompts: restore the newest backup whose files verify, and write an incident record.")
    public var emergency = false

    @Flag(help: "Restore drill: restore into a scratch database, verify, drop it, report the time taken.")
    public var drill = false

    @Option(help: ArgumentHelp("With --emergency or --drill: only backups taken at this release.", valueName: "release"))
    public var release: String?

    @Flag(name: .customLong("dry-run"), help: "Print the plan and exit without changing anything.")
    public var dryRun = false

    @Flag(name: [.short, .long], help: "Do not ask for confirmation.")
    public var yes = false

    @Option(name: .customLong("incident-file"), help: ArgumentHelp("With --emergency: where to write the incident record.", valueName: "path"))
    public var incidentFile: String?

    @OptionGroup(title: "Output") public var output: OutputOptions

    public init() {}

    public func validate() throws {
        if emergency && drill { throw ValidationError("--emergency and --drill cannot be combined; choose one") }
        if (emergency || drill) && backup != nil && backup != "latest" {
            throw ValidationError("--\(emergency ? "emergency" : "drill") chooses the newest good backup itself; drop '\(backup ?? "")' or drop the flag")
        }
        if release != nil && !(emergency || drill) {
            throw ValidationError("--release selects among backups only with --emergency or --drill; name the backup id instead")
        }
        if incidentFile != nil && !emergency { throw ValidationError("--incident-file goes with --emergency") }
    }

    public func run() throws {
        let mode: RestoreConfiguration.Mode = emergency ? .emergency : drill ? .drill : .normal
        let configuration = RestoreConfiguration(
            mode: mode, target: try connection.target(), repository: try repository.address(), backup: backup ?? "latest",
            release: release, dryRun: dryRun, tools: connection.tools, incidentFile: incidentFile)
        let timeline = Timeline { step in
            guard !output.quiet && !output.json else { return }
            let seconds = step.seconds.map { String(format: " (%.2f s)", $0) } ?? ""
            output.note("[\(Timestamp.format(step.at))] \(step.step): \(step.outcome)\(seconds)")
        }
        let plan = try LogicalRestore.plan(configuration, timeline: timeline)
        if dryRun {
            if output.json { try printJSON(plan) } else { print(plan.lines.joined(separator: "\n")) }
            return
        }
        if mode == .normal && !yes && isatty(0) == 1 {
            FileHandle.standardError.write(Data((plan.lines.joined(separator: "\n") + "\nProceed? [y/N] ").utf8))
            guard let answer = readLine(), ["y", "yes"].contains(answer.lowercased()) else {
                throw RecoveryError(.restoreFailed, "restore cancelled; nothing was changed")
            }
        } else if !output.json {
            plan.skipped.forEach { output.note("skipped backup \($0.id): \($0.reason)") }
        }
        let report = try LogicalRestore.execute(plan, configuration, timeline: timeline, progress: output.progress)
        if output.json {
            try printJSON(report)
            return
        }
        let seconds = String(format: "%.1f", report.durationSeconds)
        switch mode {
        case .drill:
            print("drill passed: backup \(plan.backupID) restored and verified (\(report.verification?.tables.count ?? 0) tables) in \(seconds) s; scratch database dropped")
        default:
            var line = "restored \(plan.targetDatabase) from backup \(plan.backupID) in \(seconds) s; row counts verified"
            if let kept = plan.keptAs { line += "; previous database kept as \(kept)" }
            print(line)
            if let incident = report.incidentFile { print("incident record: \(incident)") }
        }
    }
}

/// `dbrestore list`.
public struct ListCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List the backups in a repository, newest first.",
        discussion: """
        Examples:
          dbrestore list --repo /var/backups/app
          dbrestore list --json | jq -r '.[0].id'
        """)

    @OptionGroup(title: "Repository") public var repository: RepositoryOptions
    @OptionGroup(title: "Output") public var output: OutputOptions

    public init() {}

    public func run() throws {
        let listing = try BackupListing.load(repository: try repository.address())
        if output.json {
            try printJSON(listing)
            return
        }
        guard !listing.isEmpty else {
            output.note("no backups in \(try repository.address())")
            return
        }
        var table = TextTable("ID", "TAKEN (UTC)", "KIND", "SIZE", "ROWS", "SCHEMA", "RELEASE", "PINNED", "TAGS")
        for item in listing {
            if let problem = item.problem {
                table.add(item.id, "-", "-", "-", "-", "-", "-", "-", "UNREADABLE: \(problem)")
                continue
            }
            table.add(item.id, item.takenAt.map { String(Timestamp.format($0).prefix(19)).replacingOccurrences(of: "T", with: " ") } ?? "-",
                      item.kind ?? "-", ByteCount.format(item.storedBytes ?? 0), item.rows.map(String.init) ?? "-",
                      item.schemaVersion ?? "-", item.release ?? "-", item.pinned == true ? "yes" : "no",
                      item.tags.joined(separator: ","))
        }
        print(table.rendered)
    }
}
