import ArgumentParser
import Foundation
import PostgresClient
import RecoveryKit

/// `--database-url`, the same in every tool.
public struct ConnectionOptions: ParsableArguments {
    @Option(name: .customLong("database-url"), help: ArgumentHelp(
        "PostgreSQL URL or conninfo (default: $DATABASE_URL, then PG* variables and ~/.pgpass).",
        discussion: "Put the password in PGPASSWORD or ~/.pgpass rather than in the URL where you can.",
        valueName: "url"))
    public var databaseURL: String?

    @Option(name: .customLong("pg-bin"), help: ArgumentHelp(
        "Directory holding pg_dump and psql (default: $PG_BIN, PATH, then /usr/lib/postgresql/<newest>/bin).",
        valueName: "dir"))
    public var pgBin: String?

    public init() {}

    /// The connection target from the flag, then `DATABASE_URL`, then libpq's own defaults.
    public func target() throws -> ConnectionTarget {
        let text = databaseURL ?? ProcessInfo.processInfo.environment["DATABASE_URL"].flatMap { $0.isEmpty ? nil : $0 }
        do {
            return try ConnectionTarget(text)
        } catch {
            throw RecoveryError.classify(error)
        }
    }

    /// Where the PostgreSQL programs are.
    public var tools: PostgresTools { PostgresTools(directory: pgBin) }
}

/// `--repo`, the same in every tool.
public struct RepositoryOptions: ParsableArguments {
    @Option(name: .customLong("repo"), help: ArgumentHelp(
        "Backup repository: a directory or file:///path (default: $BACKUP_REPO).", valueName: "repository"))
    public var repository: String?

    public init() {}

    /// The repository address from the flag, then `BACKUP_REPO`.
    public func address() throws -> String {
        if let repository { return repository }
        if let fromEnvironment = ProcessInfo.processInfo.environment["BACKUP_REPO"], !fromEnvironment.isEmpty {
            return fromEnvironment
        }
        throw RecoveryError(.usage, "no backup repository given", hint: "pass --repo /path/to/repository or set BACKUP_REPO")
    }
}

/// `--json` and `--quiet`, the same in every tool.
public struct OutputOptions: ParsableArguments {
    @Flag(name: .long, help: "Print one JSON document on stdout instead of text.")
    public var json = false

    @Flag(name: [.short, .long], help: "No progress or summary on stderr; errors are still printed.")
    public var quiet = false

    public init() {}

    /// A progress line on stderr when it is a terminal and output is not quiet or JSON.
    public var progress: ProgressObserver? { TerminalProgress.ifTerminal(quiet: quiet || json) }

    /// Writes a human line to stderr unless quiet.
    public func note(_ text: String) {
        if !quiet { FileHandle.standardError.write(Data((text + "\n").utf8)) }
    }
}
