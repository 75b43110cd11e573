import ArgumentParser
import BackupStorage
import Foundation
import ProcessSignals
import Logging
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
        "Directory holding the PostgreSQL programs to use, and no other (default: $PG_BIN, else those matching the server's major).",
        discussion: "Without it: /usr/lib/postgresql/<major>/bin, the scripts/pg-majors.sh cache, then PATH; pg_dump of the server's major or newer, pg_basebackup and pg_ctl of the same major.",
        valueName: "dir"))
    public var pgBin: String?

    @Option(name: .customLong("lock-wait"), help: ArgumentHelp(
        "Longest wait for a lock another session holds, e.g. 90s, 5m, 1h (default: 5m; dbrestore --replace: 5s); then fail naming that session.",
        discussion: "Given, dbbackup (and dbmigrate down's backup) also waits this long for the repository lock while another backup or a prune holds it (saying so once); without it, a locked repository fails at once (exit 21).",
        valueName: "duration"))
    public var lockWait: String?

    public init() {}

    /// Refuses a `--lock-wait` that is not a duration (exit 2, naming the flag and the form it takes).
    public func validate() throws {
        if let lockWait, SessionLimits.parseDuration(lockWait) == nil {
            throw ValidationError("--lock-wait '\(lockWait)' is not a duration: write 90s, 5m or 1h (1 second to 7 days)")
        }
    }

    /// `lock_timeout` (from `--lock-wait`) and `statement_timeout` for every session the tool opens.
    public var sessionLimits: SessionLimits {
        SessionLimits(lockWaitSeconds: explicitLockWaitSeconds ?? SessionLimits.defaultLockWaitSeconds)
    }

    /// `--lock-wait` in seconds, when given.
    public var explicitLockWaitSeconds: Int? { lockWait.flatMap(SessionLimits.parseDuration) }

    /// The connection target from the flag, then `DATABASE_URL`, then the config file, then libpq's
    /// own defaults (PG* variables, ~/.pgpass); with the session limits in its options.
    public func target(_ settings: Settings) throws -> ConnectionTarget {
        let text = databaseURLSetting(settings).value
        do {
            return sessionLimits.applied(to: try ConnectionTarget(text))
        } catch {
            throw RecoveryError.classify(error)
        }
    }

    /// The metrics label of the database a run is about (`database`, the `--database-url`'s): with
    /// it, the runs of several databases sharing a metrics file or an alert rule each keep their own
    /// series. Empty when the URL is missing or malformed (the run then fails on it, still reported).
    func databaseLabel(_ settings: Settings) -> [String: String] {
        (try? target(settings)).map { ["database": $0.databaseName] } ?? [:]
    }

    func databaseURLSetting(_ settings: Settings) -> ResolvedSetting {
        settings.resolve("database_url", flag: databaseURL, flagName: "--database-url", environment: ["DATABASE_URL"],
                         file: \.databaseURL, fileKey: "database_url")
    }

    func pgBinSetting(_ settings: Settings) -> ResolvedSetting {
        settings.resolve("pg_bin", flag: pgBin, flagName: "--pg-bin", environment: ["PG_BIN"], file: \.pgBin, fileKey: "pg_bin")
    }

    /// Where the PostgreSQL programs are.
    public func tools(_ settings: Settings) -> PostgresTools {
        let setting = pgBinSetting(settings)
        return PostgresTools(directory: setting.value, source: setting.source, environment: settings.environment)
    }
}

/// `--repo`, the same in every tool.
public struct RepositoryOptions: ParsableArguments {
    @Option(name: .customLong("repo"), help: ArgumentHelp(
        "Backup repository: a directory, file:///path or s3://bucket/prefix (default: $BACKUP_REPO, then s3://$BACKUP_S3_BUCKET). Repeat it to write one backup to several repositories at once.",
        valueName: "repository"))
    public var repositories: [String] = []

    /// The first `--repo`, for commands that read one repository.
    var repository: String? { repositories.first }

    @Option(name: .customLong("s3-endpoint"), help: ArgumentHelp(
        "S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, then AWS).", valueName: "url"))
    public var s3Endpoint: String?

    @Option(name: .customLong("s3-region"), help: ArgumentHelp("S3 region (default: $AWS_REGION, then us-east-1).", valueName: "region"))
    public var s3Region: String?

    @Option(name: .customLong("encryption-key-file"), help: ArgumentHelp(
        "Encrypt (and read) backups and WAL with AES-256-GCM using the key in this file (default: $DBRECOVERY_ENCRYPTION_KEY). The key is never stored in the repository.",
        valueName: "path"))
    public var encryptionKeyFile: String?

    /// The repository cipher key, if one was given (`--encryption-key-file`, else `DBRECOVERY_ENCRYPTION_KEY`).
    public func cipherKey(_ settings: Settings) throws -> RepositoryKey? {
        try RepositoryKey.load(file: encryptionKeyFile, environment: settings.environment)
    }

    public init() {}

    /// The repository address from the flag, then `BACKUP_REPO`, then `BACKUP_S3_BUCKET`.
    public func address(_ settings: Settings) throws -> String {
        guard let address = self.settings(settings)[0].value else {
            throw RecoveryError(.usage, "no backup repository given",
                                hint: "pass --repo /path/to/repository, set BACKUP_REPO, or repo in /etc/dbrecovery/config.toml")
        }
        return address
    }

    /// Every repository given (`--repo` repeated), else the single resolved one; local ones first,
    /// since they are the fastest to read.
    public func addresses(_ settings: Settings) throws -> [String] {
        var all: [String]
        if repositories.count > 1 {
            all = repositories
        } else if repositories.isEmpty, let named = settings.configFile?.repositories, !named.isEmpty,
                  self.settings(settings)[0].value == nil {
            // No --repo, BACKUP_REPO or repo: the config file's [repositories], all of them.
            all = named.keys.sorted().compactMap { named[$0] }
        } else {
            all = [try address(settings)]
        }
        return all.filter { !$0.hasPrefix("s3://") } + all.filter { $0.hasPrefix("s3://") }
    }

    /// What the storage layer reads S3 settings from: the run's environment with the resolved
    /// endpoint and region in the variables it reads, so that a flag (or the config file's `[s3]`) and
    /// its variable can never mean different things. Passed down; the process environment is untouched.
    public func storageEnvironment(_ settings: Settings) -> [String: String] {
        let resolved = self.settings(settings)
        var environment = settings.environment
        if let endpoint = resolved[1].value { environment["AWS_ENDPOINT_URL_S3"] = endpoint }
        if let region = resolved[2].value { environment["AWS_REGION"] = region }
        return environment
    }

    /// Repository, S3 endpoint and region, each with its source.
    func settings(_ settings: Settings) -> [ResolvedSetting] {
        var repositorySetting = settings.resolve("repo", flag: repository, flagName: "--repo", environment: ["BACKUP_REPO"],
                                                 file: \.repository, fileKey: "repo")
        if repositorySetting.source.hasPrefix("flag") == false && repositorySetting.source.hasPrefix("environment") == false,
           let bucket = settings.environment["BACKUP_S3_BUCKET"], !bucket.isEmpty {
            repositorySetting = ResolvedSetting(name: "repo", value: "s3://\(bucket)", source: "environment BACKUP_S3_BUCKET")
        }
        // The S3 client's bounds (timeout, attempts, speed floor, CA file), as set or by default.
        let s3Tunables = repositorySetting.value?.hasPrefix("s3://") == true
            ? S3Settings.tunables(environment: settings.environment).map { ResolvedSetting(name: $0.name, value: $0.value, source: $0.source) } : []
        return [
            repositorySetting,
            settings.resolve("s3.endpoint", flag: s3Endpoint, flagName: "--s3-endpoint", environment: ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
                             file: \.s3Endpoint, fileKey: "[s3] endpoint"),
            settings.resolve("s3.region", flag: s3Region, flagName: "--s3-region", environment: ["AWS_REGION", "AWS_DEFAULT_REGION"],
                             file: \.s3Region, fileKey: "[s3] region"),
        ] + s3Tunables
    }
}

/// `--allow-mixed-encryption`, for the commands that store data (dbbackup, wal-push).
public struct EncryptionWriteOptions: ParsableArguments {
    @Flag(name: .customLong("allow-mixed-encryption"), help: ArgumentHelp(
        "Store plaintext in a repository that holds encrypted backups, or encrypted data in a plaintext one (refused otherwise)."))
    public var allowMixedEncryption = false

    public init() {}

    /// The key to write with, once every repository written to has been checked to hold data of
    /// the same kind (encrypted with this key, or plaintext), unless `--allow-mixed-encryption`.
    ///
    /// `database`: the database a logical backup stores (nil for base backups and WAL), see
    /// `RepositoryEncryption.checkWrite`.
    ///
    /// - Throws: `RecoveryError(.usage)` naming the repository and the mismatch.
    public func key(from repository: RepositoryOptions, writingTo addresses: [String], _ settings: Settings, database: String? = nil) throws -> RepositoryKey? {
        let key = try repository.cipherKey(settings)
        try check(addresses, writtenWith: key, repository: repository, settings, database: database)
        return key
    }

    /// The check of `key(from:…)` alone, for a writer that has the key already.
    public func check(_ addresses: [String], writtenWith key: RepositoryKey?, repository: RepositoryOptions, _ settings: Settings,
                      database: String? = nil) throws {
        for address in addresses {
            do {
                try RepositoryEncryption.checkWrite(to: try Repository.open(address, create: true, environment: repository.storageEnvironment(settings)),
                                                    key: key, allowMixed: allowMixedEncryption, database: database)
            } catch is StorageError {
                // Unreachable or unwritable: the capture meets the same failure and handles it per
                // repository (the others still get the backup, exit 50), so it is not decided here.
            }
        }
    }

    /// After a write: records each repository's encryption from what it now holds (the check
    /// before the write records nothing in a repository that holds nothing yet).
    public func recordStored(in addresses: [String], key: RepositoryKey?, repository: RepositoryOptions, _ settings: Settings, database: String? = nil) {
        for address in addresses {
            guard let store = try? Repository.open(address, create: false, environment: repository.storageEnvironment(settings)) else { continue }
            RepositoryEncryption.recordStored(in: store, key: key, database: database)
        }
    }
}

/// `--json`, `--quiet` and monitoring, the same in every tool.
public struct OutputOptions: ParsableArguments {
    @Flag(name: .long, help: "Print one JSON document on stdout instead of text.")
    public var json = false

    @Flag(name: [.short, .long], help: "No progress or summary on stderr; errors are still printed.")
    public var quiet = false

    @Flag(name: [.short, .long], help: "Say more on stderr: -v what was skipped and why, -vv also debug detail (server notices).")
    public var verbose: Int

    /// The stderr log level these flags ask for (`--quiet` wins over `-v`).
    public var logLevel: Logger.Level { quiet ? .error : verbose >= 2 ? .debug : verbose == 1 ? .info : .notice }

    @Option(name: .customLong("metrics-file"), help: ArgumentHelp(
        "Write Prometheus metrics of this run here, atomically (node_exporter textfile collector).", valueName: "path"))
    public var metricsFile: String?

    @Option(name: .customLong("notify-url"), help: ArgumentHelp("POST a JSON event here when the run fails.", valueName: "url"))
    public var notifyURL: String?

    @Flag(name: .customLong("notify-on-success"), help: "With --notify-url: also post when the run succeeds.")
    public var notifyOnSuccess = false

    public init() {}

    /// Starts reporting this run to `--metrics-file` / `--notify-url` (or the config file's); the
    /// context keeps the reporter, so that a failure on the way out is reported too.
    public func begin(_ tool: String, labels: [String: String] = [:], in context: RunContext) {
        let metrics = metricsFile ?? context.settings.configFile?.metricsFile
        let notify = notifyURL ?? context.settings.environment["DBRECOVERY_NOTIFY_URL"] ?? context.settings.configFile?.notifyURL
        guard metrics != nil || notify != nil else { return }
        if let notify, URL(string: notify).map({ ["http", "https"].contains($0.scheme?.lowercased() ?? "") && !($0.host ?? "").isEmpty }) != true {
            // Said at the start of every run, not only when a failure finds it out: the run goes on (a
            // notification setting is no reason to skip a backup), but its failure notices cannot be sent.
            let source = notifyURL != nil ? "--notify-url" : context.settings.environment["DBRECOVERY_NOTIFY_URL"] != nil ? "DBRECOVERY_NOTIFY_URL" : "notify_url in the config file"
            TextSink.standardError.write("\(tool): warning: \(source) is not an http(s) URL, so failure notices cannot be sent; fix it (e.g. https://hooks.example.com/dbrecovery)\n")
        }
        context.reporter = RunReporter(tool: tool, metricsFile: metrics, notifyURL: notify, notifyOnSuccess: notifyOnSuccess, labels: labels)
    }

    /// Records a successful run for monitoring.
    public func succeeded(_ values: [String: Double], summary: String, in context: RunContext) {
        context.reporter?.succeeded(values, summary: summary)
    }

    /// A progress line on stderr when it is a terminal and output is not quiet or JSON.
    public var progress: ProgressObserver? { TerminalProgress.ifTerminal(quiet: quiet || json) }

    /// A timeline that prints each step on stderr as it ends (unless quiet or JSON).
    public func timeline() -> Timeline {
        Timeline { step in
            guard !quiet && !json else { return }
            let seconds = step.seconds.map { String(format: " (%.2f s)", $0) } ?? ""
            note("[\(Timestamp.format(step.at))] \(step.step): \(step.outcome)\(seconds)")
        }
    }

    /// Writes a human line to stderr unless quiet.
    public func note(_ text: String) {
        if !quiet { TextSink.standardError.write(text + "\n") }
    }
}

/// `--config` and `--print-config`, the same in every tool.
public struct ConfigOptions: ParsableArguments {
    @Option(name: .customLong("config"), help: ArgumentHelp(
        "Config file (default: /etc/dbrecovery/config.toml if present). Flags win over environment, environment over this file.",
        valueName: "path"))
    public var configFile: String?

    @Flag(name: .customLong("print-config"), help: "Print the resolved settings, secrets masked, and where each came from; then exit.")
    public var printConfig = false

    public init() {}

    /// With `--print-config`, prints the settings this command would use and returns true.
    public func printIfAsked(_ context: RunContext, connection: ConnectionOptions?, repository: RepositoryOptions?,
                             extra: [ResolvedSetting] = []) -> Bool {
        guard printConfig else { return false }
        var settings: [ResolvedSetting] = []
        if let connection { settings += [connection.databaseURLSetting(context.settings), connection.pgBinSetting(context.settings)] }
        if let repository { settings += repository.settings(context.settings) }
        settings += extra
        let environment = context.settings.environment
        // The AWS credential chain's settings as set; which source answers is found only when a run asks it.
        for name in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGPASSFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                     "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                     "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                     "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                     "AWS_EC2_METADATA_DISABLED"] where environment[name].map({ !$0.isEmpty }) ?? false {
            settings.append(ResolvedSetting(name: name, value: environment[name], source: "environment \(name)"))
        }
        let config = context.settings.configFile
        settings.append(ResolvedSetting(name: "config_file", value: config?.path, source: config == nil ? "none found" : "loaded"))
        var table = TextTable("SETTING", "VALUE", "SOURCE")
        for setting in settings {
            let masked = setting.name == "AWS_ACCESS_KEY_ID" ? setting.value.map { String($0.prefix(4)) + "…" } : SecretMask.mask(setting.name, setting.value)
            table.add(setting.name, masked ?? "-", setting.source)
        }
        print(table.rendered)
        return true
    }
}

/// What the commands that only read a repository take (`dbrestore list`, `dbrestore contents`):
/// the repository, the output and the configuration, in that order on the help screen.
public struct RepositoryReadOptions: ParsableArguments {
    @OptionGroup(title: "Repository") public var repository: RepositoryOptions
    @OptionGroup(title: "Output") public var output: OutputOptions
    @OptionGroup(title: "Configuration") public var config: ConfigOptions

    public init() {}

    /// With `--print-config`, prints the settings such a command would use (no connection) and returns true.
    func printConfigIfAsked(_ context: RunContext) -> Bool {
        config.printIfAsked(context, connection: nil, repository: repository)
    }
}
