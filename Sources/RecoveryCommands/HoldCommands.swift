import ArgumentParser
import Foundation
import RecoveryKit

/// `dbrestore wal-release <id>`: the `recovery_end_command` `dbrestore --pitr` writes. Deletes the
/// recovery's hold (`RecoveryHold`) so that dbprune may prune its WAL and base backup again.
public struct WALReleaseCommand: ToolCommand {
    public static let configuration = CommandConfiguration(
        commandName: "wal-release",
        abstract: "Release a prepared recovery's hold on its WAL and base backup (recovery_end_command = 'dbrestore wal-release <id> --repo …').",
        discussion: """
        dbrestore --pitr records a hold in the repository (locks/holds/<id>.json) so that dbprune keeps \
        the base backup and the WAL the recovery will read, and writes this command as \
        recovery_end_command: PostgreSQL runs it once, when recovery ends and the server is promoted. \
        A hold that is already gone is not an error (exit 0). By hand: dbprune --release-hold <id> \
        (dbprune --dry-run lists the holds).

        Examples:
          dbrestore wal-release 20261127T020000Z-3fa2 --repo /var/backups/app --dry-run
        """)

    @Argument(help: ArgumentHelp("The hold's id (dbprune --dry-run lists them).", valueName: "id"))
    public var id: String

    @OptionGroup(title: "Repository") public var repository: RepositoryOptions
    @OptionGroup(title: "Configuration") public var config: ConfigOptions
    @OptionGroup(title: "Output") public var output: OutputOptions

    @Flag(help: "Say which hold would be released; change nothing.")
    public var dryRun = false

    public init() {}

    public func run(in context: RunContext) throws {
        if config.printIfAsked(context, connection: nil, repository: repository) { return }
        let settings = context.settings
        let result = try HeldRecoveries.release(id, repository: try repository.address(settings), dryRun: dryRun,
                                                environment: repository.storageEnvironment(settings))
        if output.json { return try printJSON(result) }
        // The server runs this at the end of every recovery: a hold released by hand first is no failure.
        output.note(HoldRelease.describe(result))
    }
}

/// What `wal-release` and `dbprune --release-hold` say about a release.
enum HoldRelease {
    static func describe(_ result: HeldRecoveries.Release) -> String {
        guard result.found else { return "no hold \(result.id) in \(result.repository) (already released)" }
        let what = result.hold.map { " of \($0.preparedBy) (base backup \($0.backups.joined(separator: ", ")), WAL from \($0.firstSegment))" } ?? " (unreadable record)"
        return (result.dryRun ? "would release hold " : "released hold ") + result.id + what
            + (result.dryRun ? "" : ": dbprune prunes them again as its rules say")
    }
}
