import ArgumentParser
import Foundation
import PostgresClient
import RecoveryKit

/// `dbprune`: apply the retention policy to a repository.
public struct PruneCommand: ToolCommand {
    public static let configuration = CommandConfiguration(
        commandName: "dbprune",
        abstract: "Delete the backups no retention rule keeps; explain every decision.",
        discussion: """
        Default policy (retention/default.toml): a local repository keeps its 10 most recent backups; \
        an S3 repository keeps everything for 90 days (moved to GLACIER after 30) plus 7 daily, 4 weekly \
        and 12 monthly snapshots. A backup is kept if any rule keeps it. Pinned backups, the newest \
        backup that verifies and backups with unreadable manifests are never deleted.

        The rules apply to each group on its own: the logical backups of one database, the physical \
        base backups of one server (column OF). Ten backups of app never push out billing's, nor \
        logical backups a base backup; each group keeps its own newest verified backup.

        A recovery dbrestore --pitr prepared holds its base backup and WAL (locks/holds/ in the \
        repository) until it ends: kept, "held by the recovery prepared at HOST:/path at TIME", and \
        listed with their age under HOLDS. A hold older than --hold-expiry (default 7d, [prune] \
        hold_expiry) protects nothing; every run warns of each hold before and after.

        Examples:
          dbprune --repo /var/backups/app --dry-run   # what would go and why
          dbprune --repo /var/backups/app --yes       # nightly, from cron
          dbprune --repo /var/backups/app --json \\
              --policy /etc/dbrecovery/retention.toml
          dbprune --repo /var/backups/app --release-hold 20261127T020000Z-3fa2c1d0
        """,
        version: DBRecoveryVersion.current)

    @OptionGroup(title: "Repository") var repository: RepositoryOptions

    @Option(help: ArgumentHelp("Retention policy file (default: the built-in policy, as in retention/default.toml).", valueName: "file"))
    var policy: String?

    @Flag(name: .customLong("dry-run"), help: "Print the plan and change nothing.")
    var dryRun = false

    @Flag(name: [.short, .long], help: "Delete without asking (needed when stdin is not a terminal: cron, scripts).")
    var yes = false

    @Flag(name: .customLong("apply-lifecycle"), help: "S3 only: write this prefix's bucket lifecycle rule: abort multipart uploads left open, expire only in a tier without snapshot rules, move nothing to GLACIER (dbprune moves data files itself) (with --dry-run: show the difference only).")
    var applyLifecycle = false

    @Flag(name: .customLong("all-repos"), help: "Prune every repository in the config file's [repositories], each by its own tier.")
    var allRepos = false

    @Option(name: .customLong("as-of"), help: ArgumentHelp("Judge backup ages as of this time (ISO 8601), to preview a future prune with --dry-run; without it, deletes what the rules say at that time (a recovery's hold is still judged by the real clock).", valueName: "time"))
    var asOf: String?

    @Option(name: .customLong("release-hold"), help: ArgumentHelp("Release this hold of a prepared recovery (an abandoned one) and prune nothing (with --dry-run: say which it is).", valueName: "id"))
    var releaseHold: String?

    @Option(name: .customLong("hold-expiry"), help: ArgumentHelp("A recovery's hold protects its WAL and base backup this long (h, d or w; default 7d, or [prune] hold_expiry).", valueName: "age"))
    var holdExpiry: String?

    @Option(name: .customLong("lock-wait"), help: ArgumentHelp(
        "Wait this long for the repository lock while a backup or another prune holds it, e.g. 90s, 5m, 1h (default: fail at once, exit 21).",
        valueName: "duration"))
    var lockWait: String?

    @OptionGroup(title: "Output") var output: OutputOptions
    @OptionGroup(title: "Configuration") var config: ConfigOptions

    public init() {}

    public func validate() throws {
        if let lockWait, SessionLimits.parseDuration(lockWait) == nil {
            throw ValidationError("--lock-wait '\(lockWait)' is not a duration: write 90s, 5m or 1h (1 second to 7 days)")
        }
        if let asOf, Timestamp.parse(asOf) == nil {
            throw ValidationError("--as-of '\(asOf)' is not an ISO 8601 time; write e.g. 2026-12-01T02:00:00Z")
        }
        if releaseHold != nil && (allRepos || applyLifecycle) {
            throw ValidationError("--release-hold releases one hold of one repository (--repo); run it without \(allRepos ? "--all-repos" : "--apply-lifecycle")")
        }
        if let holdExpiry, (RetentionDuration.parse(holdExpiry)?.hours ?? 0) == 0 {
            throw ValidationError("--hold-expiry '\(holdExpiry)' is not an age from 1h to 1000 years; write e.g. 36h, 7d or 2w")
        }
    }

    public func run(in context: RunContext) throws {
        let settings = context.settings
        let policyPath = settings.resolve("retention.policy", flag: policy, flagName: "--policy", environment: ["DBRECOVERY_POLICY"],
                                          file: \.policy, fileKey: "[retention] policy")
        if config.printIfAsked(context, connection: nil, repository: repository, extra: [policyPath]) { return }
        // Which repositories: two databases' nightly jobs may prune their own repositories into one METRICS_DIR.
        output.begin("dbprune", labels: (try? repository.addresses(settings)).map { ["repository": $0.joined(separator: ",")] } ?? [:], in: context)
        let policy = try policyPath.value.map { try RetentionPolicy.load(path: $0) } ?? .builtIn
        if applyLifecycle {
            let change = try LifecycleRule.apply(repository: try repository.address(settings), policy: policy, dryRun: dryRun,
                                                 environment: repository.storageEnvironment(settings))
            if output.json { return try printJSON(change) }
            print("current rule: \(change.currentRule ?? "(none)")")
            print("new rule:     \(change.newRule)")
            print(!change.changed ? "lifecycle rule is already up to date" : change.applied ? "lifecycle rule written to \(change.bucketLocation)" : "dry run: nothing written")
            return
        }
        if let releaseHold { return try release(releaseHold, settings: settings) }
        let now = asOf.flatMap(Timestamp.parse) ?? Date()
        var addresses = try repository.addresses(settings)
        if allRepos {
            guard let named = settings.configFile?.repositories, !named.isEmpty else {
                throw RecoveryError(.usage, "--all-repos needs [repositories] in the config file", hint: "or give --repo once per repository")
            }
            addresses = named.keys.sorted().compactMap { named[$0] }
        }
        var reports: [PruneReport] = []
        for address in addresses {
            let confirm: ((PruneReport) throws -> Void)? = yes ? nil : { plan in
                let deletions = "\(plan.deleted) backup(s), \(plan.garbage.filter { $0.action == "delete" }.count) garbage folder(s) and \(plan.wal.delete.count) WAL file(s)"
                try Confirmation.ask("dbprune will delete \(deletions) from \(plan.repository) (dbprune --dry-run lists them)",
                                     refusal: "dbprune would delete \(deletions) from \(plan.repository)")
            }
            var configuration = PruneConfiguration(repository: address, policy: policy, dryRun: dryRun, now: now, confirm: confirm)
            configuration.environment = repository.storageEnvironment(settings)
            configuration.lockWaitSeconds = TimeInterval(lockWait.flatMap(SessionLimits.parseDuration) ?? 0)
            if let interval = settings.configFile?.reverifyAfter { configuration.reverifyAfter = interval }
            if let expiry = holdExpiry.flatMap(RetentionDuration.parse) ?? settings.configFile?.holdExpiry { configuration.holdExpiry = expiry }
            reports.append(try Pruner.run(configuration, progress: output.progress))
        }
        if output.json {
            if reports.count == 1 { try printJSON(reports[0]) } else { try printJSON(reports) }
            // Warnings (a recovery's hold, an expired one) reach stderr in a cron line with --json too.
            for report in reports { report.notes.filter { $0.hasPrefix("warning: ") }.forEach(output.note) }
        }
        for report in reports { try render(report, header: reports.count > 1) }
        let unreadable = reports.flatMap(\.unreadable), archived = reports.flatMap(\.archived)
        if !dryRun && unreadable.isEmpty && archived.isEmpty {
            output.succeeded(["prune_kept": Double(reports.map(\.kept).reduce(0, +)), "prune_deleted": Double(reports.map(\.deleted).reduce(0, +)),
                              "prune_wal_deleted": Double(reports.map { $0.wal.delete.count }.reduce(0, +)),
                              // --quiet (cron) prints no warnings: a hold, or a forgotten one past its expiry, is still seen here.
                              "prune_holds": Double(reports.map { $0.holds.filter(\.protecting).count }.reduce(0, +)),
                              "prune_holds_expired": Double(reports.map { $0.holds.filter { !$0.protecting }.count }.reduce(0, +))],
                             summary: reports.map { "\($0.repository): kept \($0.kept), deleted \($0.deleted)" }.joined(separator: "; "), in: context)
        }
        if !unreadable.isEmpty {
            throw RecoveryError(.backupCorrupt, "\(unreadable.count) backup(s) have unreadable manifests and were left alone: \(unreadable.joined(separator: "; "))",
                                hint: "inspect them; delete the folder by hand once you are sure it is not needed")
        }
        if !archived.isEmpty {
            throw RecoveryError(.backupArchived, "\(archived.count) backup(s) have their manifest in GLACIER and were left alone (neither their age nor "
                                + "their files can be read): \(archived.joined(separator: ", "))",
                                hint: "a bucket lifecycle rule other than dbprune's moved them: restore those manifests from the archive "
                                + "(aws s3api restore-object) or delete the backups' folders; dbprune --apply-lifecycle --dry-run shows the rule to use")
        }
    }

    /// `--release-hold ID`: one hold released (or, with `--dry-run`, named); nothing pruned.
    private func release(_ id: String, settings: Settings) throws {
        let result = try HeldRecoveries.release(id, repository: try repository.address(settings), dryRun: dryRun,
                                                environment: repository.storageEnvironment(settings))
        guard result.found else {
            throw RecoveryError(.usage, "no hold \(id) in \(result.repository)",
                                hint: result.others.isEmpty ? "the repository holds no hold (released already?)" : "its holds: \(result.others.joined(separator: ", "))")
        }
        if output.json { return try printJSON(result) }
        print(HoldRelease.describe(result))
    }

    private func render(_ report: PruneReport, header: Bool) throws {
        if output.json { return }
        if header { print("== \(report.repository) (\(report.tier) tier)") }
        // WHY: the rules that keep a backup, or the ones it missed when it is deleted or moved; OF: the
        // group the rules counted it in (one database's logical backups, one server's base backups).
        var table = TextTable("ID", "OF", "AGE", "CLASS", "ACTION", "WHY")
        for decision in report.decisions {
            let why = decision.keptBy + (decision.reason.map { [$0] } ?? [])
            table.add(decision.id, decision.group ?? "-", String(format: "%.1fd", decision.ageDays), decision.storageClass ?? "-",
                      decision.action.rawValue, why.joined(separator: ", "))
        }
        for item in report.garbage {
            table.add(item.folder.replacingOccurrences(of: "backups/", with: ""), "-", String(format: "%.1fh", item.ageHours), "-",
                      item.action == "delete" ? "garbage: delete" : item.action, item.reason)
        }
        print(table.rendered)
        if !report.holds.isEmpty {
            // Every hold with its age: a forgotten one is seen here long before it expires.
            var holds = TextTable("HOLD", "MADE (UTC)", "AGE", "PREPARED AT", "KEEPS", "STATUS")
            for status in report.holds {
                holds.add(status.id, status.hold.map { String(Timestamp.format($0.createdAt).prefix(19)).replacingOccurrences(of: "T", with: " ") } ?? "-",
                          String(format: "%.1fd", status.ageHours / 24), status.hold.map { "\($0.host):\($0.dataDirectory)" } ?? "-",
                          status.hold.map { "\($0.backups.joined(separator: ",")) + WAL from \($0.firstSegment)" } ?? "-",
                          status.protecting ? "protects until \(status.expiresAt.map { String(Timestamp.format($0).prefix(16)) } ?? "?")" : "expired: protects nothing")
            }
            print(holds.rendered)
        }
        if report.wal.kept + report.wal.delete.count > 0 || report.wal.oldestNeeded != nil {
            output.note("WAL: \(report.wal.note); \(dryRun ? "would delete" : "deleted") \(report.wal.delete.count), kept \(report.wal.kept)")
        }
        for line in report.wal.held ?? [] { output.note("\(dryRun ? line.replacingOccurrences(of: "kept ", with: "would keep ") : line)") }
        for decision in report.decisions {
            for reason in decision.keptBy where reason.hasPrefix("parent of ") {
                output.note("\(dryRun ? "would keep" : "kept") \(decision.id): \(reason), an incremental base backup that is kept and cannot be restored without it")
            }
        }
        for item in report.beingRead {
            output.note("kept backup \(item) (a restore is streaming it; the next dbprune deletes it)")
        }
        for note in report.notes { output.note(note) }
        // Each group on its own: the rules counted its backups only, and its newest verified one is kept.
        for group in report.groups {
            let verified = group.verification.map { "newest verified: \($0)" } ?? "no backup of it verifies"
            output.note("\(group.group): \(group.backups) backup(s), \(dryRun ? "would keep" : "kept") \(group.kept), "
                        + "\(dryRun ? "would delete" : "deleted") \(group.deleted); \(verified)")
        }
        for problem in report.unverified {
            output.note("warning: backup \(problem) — kept only if a rule keeps it; dbverify --files tells more")
        }
        let verb = dryRun ? "would keep" : "kept"
        output.note("\(dryRun ? "dry run: " : "")\(report.tier) tier: \(verb) \(report.kept), \(dryRun ? "would delete" : "deleted") \(report.deleted)")
    }
}