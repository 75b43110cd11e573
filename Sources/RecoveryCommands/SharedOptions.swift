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
        "Backup repository: a directory, file:///path or s3://bucket/prefix (default: $BACKUP_REPO, then s3://$BACKUP_S3_BUCKET).",
        valueName: "repository"))
    public var repository: String?

    @Option(name: .customLong("s3-endpoint"), help: ArgumentHelp(
        "S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, then AWS).", valueName: "url"))
    public var s3Endpoint: String?

    @Option(name: .customLong("s3-region"), help: ArgumentHelp("S3 region (default: $AWS_REGION, then us-east-1).", valueName: "region"))
    public var s3Region: String?

    public init() {}

    /// The repository address from the flag, then `BACKUP_REPO`, then `BACKUP_S3_BUCKET`.
    ///
    /// S3 flags are handed to the storage layer through the environment variables it reads, so that
    /// a flag and its variable can never mean different things.
    public func address() throws -> String {
        if let s3Endpoint { setenv("AWS_ENDPOINT_URL_S3", s3Endpoint, 1) }
        if let s3Region { setenv("AWS_REGION", s3Region, 1) }
        let environment = ProcessInfo.processInfo.environment
        if let repository { return repository }
        if let fromEnvironment = environment["BACKUP_REPO"], !fromEnvironment.isEmpty { return fromEnvironment }
        if let bucket = environment["BACKUP_S3_BUCKET"], !bucket.isEmpty { return "s3://\(bucket)" }
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
