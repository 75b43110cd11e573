import ArgumentParser
import Foundation
import RecoveryKit

/// `dbprune`: apply the retention policy to a repository.
public struct PruneCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "dbprune",
        abstract: "Delete the backups no retention rule keeps; explain every decision.",
        discussion: """
        Default policy (retention/default.toml): a local repository keeps its 10 most recent backups; \
        an S3 repository keeps everything for 90 days (moved to GLACIER after 30) plus 7 daily, 4 weekly \
        and 12 monthly snapshots. A backup is kept if any rule keeps it. Pinned backups, the newest \
        backup that verifies and backups with unreadable manifests are never deleted.

        Examples:
          dbprune --repo /var/backups/app --dry-run      # what would go, and which rule keeps the rest
          dbprune --repo /var/backups/app                # nightly, after dbbackup
          dbprune --repo /var/backups/app --policy /etc/dbrecovery/retention.toml --json
        """)

    @OptionGroup(title: "Repository") var repository: RepositoryOptions

    @Option(help: ArgumentHelp("Retention policy file (default: the built-in policy, as in retention/default.toml).", valueName: "file"))
    var policy: String?

    @Flag(name: .customLong("dry-run"), help: "Print the plan and change nothing.")
    var dryRun = false

    @OptionGroup(title: "Output") var output: OutputOptions

    public init() {}

    public func run() throws {
        let policy = try self.policy.map { try RetentionPolicy.load(path: $0) } ?? .builtIn
        let report = try Pruner.run(PruneConfiguration(repository: try repository.address(), policy: policy, dryRun: dryRun),
                                    progress: output.progress)
        if output.json {
            try printJSON(report)
        } else {
            var table = TextTable("ID", "AGE", "CLASS", "ACTION", "KEPT BY")
            for decision in report.decisions {
                table.add(decision.id, String(format: "%.1fd", decision.ageDays), decision.storageClass ?? "-",
                          decision.action.rawValue, decision.keptBy.joined(separator: ", "))
            }
            for item in report.garbage { table.add(item.folder.replacingOccurrences(of: "backups/", with: ""), String(format: "%.1fh", item.ageHours), "-", "garbage: \(item.action)", "no manifest") }
            print(table.rendered)
            let verb = dryRun ? "would keep" : "kept"
            output.note("\(dryRun ? "dry run: " : "")\(report.tier) tier: \(verb) \(report.kept), \(dryRun ? "would delete" : "deleted") \(report.deleted)")
        }
        if !report.unreadable.isEmpty {
            throw RecoveryError(.backupCorrupt, "\(report.unreadable.count) backup(s) have unreadable manifests and were left alone: \(report.unreadable.joined(separator: "; "))",
                                hint: "inspect them; delete the folder by hand once you are sure it is not needed")
        }
    }
}
