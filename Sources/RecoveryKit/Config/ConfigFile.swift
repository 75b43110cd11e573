import PostgresClient
import Foundation
import TOMLKit

/// `/etc/dbrecovery/config.toml` (or `--config`): the lowest-precedence source of settings.
/// Flags win over environment variables, which win over this file.
public struct ConfigFile: Equatable, Sendable {
    public var path: String
    public var databaseURL: String?
    public var repository: String?
    public var s3Endpoint: String?
    public var s3Region: String?
    public var pgBin: String?
    public var policy: String?
    public var migrationsDirectory: String?
    public var metricsFile: String?
    public var notifyURL: String?
    /// `[restore] keep_pre_restore`: pre-restore copies `dbrestore cleanup` keeps per database (newest first).
    public var keepPreRestore: Int?
    /// `[restore] keep_pre_restore_within`: `dbrestore cleanup` also keeps copies younger than this (e.g. `7d`).
    public var keepPreRestoreWithin: String?
    /// `[prune] reverify_after`: how long dbprune trusts its record of having read a backup in full
    /// (default 7 days) before it reads the newest backup again.
    public var reverifyAfter: RetentionDuration?
    /// `[wal] spool`: the spool directory of `dbbackup wal-push --async`.
    public var walSpool: String?
    /// `[repositories]`: named repositories (e.g. `local`, `offsite`) that one backup run writes to.
    public var repositories: [String: String] = [:]

    /// The default location, used when it exists.
    public static let defaultPath = "/etc/dbrecovery/config.toml"

    /// The file named by `DBRECOVERY_CONFIG` (set from `--config`), else the default if present.
    ///
    /// - Throws: `RecoveryError(.configuration)` for a named file that is missing or invalid.
    public static func current(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> ConfigFile? {
        if let named = environment["DBRECOVERY_CONFIG"], !named.isEmpty { return try load(named) }
        return FileManager.default.fileExists(atPath: defaultPath) ? try load(defaultPath) : nil
    }

    /// Reads and validates a config file; unknown keys are errors.
    public static func load(_ path: String) throws -> ConfigFile {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RecoveryError(.configuration, "config file \(path) cannot be read", hint: "check --config (or DBRECOVERY_CONFIG)")
        }
        let table: TOMLTable
        do {
            table = try TOMLTable(string: String(decoding: data, as: UTF8.self))
        } catch let error as TOMLParseError {
            throw RecoveryError(.configuration, "config file \(path) is not valid TOML at line \(error.source.begin.line): \(error.description)")
        }
        let known: [String: [String]] = ["": ["database_url", "repo", "pg_bin", "metrics_file", "notify_url"], "s3": ["endpoint", "region"],
                                         "retention": ["policy"], "migrations": ["dir"], "repositories": [],
                                         "restore": ["keep_pre_restore", "keep_pre_restore_within"], "prune": ["reverify_after"], "wal": ["spool"]]
        var config = ConfigFile(path: path)
        func text(_ value: TOMLValueConvertible, _ key: String) throws -> String {
            guard let text = value.string else { throw RecoveryError(.configuration, "config file \(path): \(key) must be a string") }
            return text
        }
        for key in table.keys {
            if let section = table[key]?.table {
                guard let allowed = known[key] else {
                    throw RecoveryError(.configuration, "config file \(path): unknown section [\(key)]", hint: "sections: [s3], [retention], [migrations], [restore], [prune], [wal], [repositories]")
                }
                if key == "repositories" {
                    for (name, value) in section { config.repositories[name] = try text(value, "[repositories] \(name)") }
                    continue
                }
                for inner in section.keys {
                    guard allowed.contains(inner), let value = section[inner] else {
                        throw RecoveryError(.configuration, "config file \(path): unknown key [\(key)] \(inner)", hint: "allowed: \(allowed.joined(separator: ", "))")
                    }
                    switch (key, inner) {
                    case ("s3", "endpoint"): config.s3Endpoint = try text(value, inner)
                    case ("s3", "region"): config.s3Region = try text(value, inner)
                    case ("retention", "policy"): config.policy = try text(value, inner)
                    case ("restore", "keep_pre_restore"):
                        guard let count = value.int, count >= 0 else {
                            throw RecoveryError(.configuration, "config file \(path): [restore] keep_pre_restore must be a whole number ≥ 0",
                                                hint: "e.g. keep_pre_restore = 2")
                        }
                        config.keepPreRestore = count
                    case ("restore", "keep_pre_restore_within"): config.keepPreRestoreWithin = try text(value, inner)
                    case ("wal", "spool"): config.walSpool = try text(value, inner)
                    case ("prune", "reverify_after"):
                        let written = try text(value, "[prune] reverify_after")
                        guard let duration = RetentionDuration.parse(written) else {
                            throw RecoveryError(.configuration, "config file \(path): [prune] reverify_after = \"\(written)\" is not a duration",
                                                hint: "write hours, days or weeks, e.g. reverify_after = \"7d\"")
                        }
                        config.reverifyAfter = duration
                    default: config.migrationsDirectory = try text(value, inner)
                    }
                }
                continue
            }
            let topLevel = known[""] ?? []
            guard let value = table[key], topLevel.contains(key) else {
                throw RecoveryError(.configuration, "config file \(path): unknown key \(key)",
                                    hint: "allowed: \(topLevel.joined(separator: ", ")) and sections [s3], [retention], [migrations]")
            }
            switch key {
            case "database_url": config.databaseURL = try text(value, key)
            case "repo": config.repository = try text(value, key)
            case "pg_bin": config.pgBin = try text(value, key)
            case "metrics_file": config.metricsFile = try text(value, key)
            default: config.notifyURL = try text(value, key)
            }
        }
        return config
    }

    public init(path: String) {
        self.path = path
    }
}

/// One resolved setting and where it came from, for `--print-config`.
public struct ResolvedSetting: Codable, Sendable, Equatable {
    public var name: String
    public var value: String?
    public var source: String

    public init(name: String, value: String?, source: String) {
        self.name = name
        self.value = value
        self.source = source
    }

    /// Flag, then environment variables in order, then the config file.
    public static func resolve(_ name: String, flag: String?, flagName: String, environment names: [String],
                               file: String?, filePath: String?, fileKey: String) -> ResolvedSetting {
        if let flag { return ResolvedSetting(name: name, value: flag, source: "flag \(flagName)") }
        let environment = ProcessInfo.processInfo.environment
        for variable in names {
            if let value = environment[variable], !value.isEmpty { return ResolvedSetting(name: name, value: value, source: "environment \(variable)") }
        }
        if let file, let filePath { return ResolvedSetting(name: name, value: file, source: "\(filePath) (\(fileKey))") }
        return ResolvedSetting(name: name, value: nil, source: "not set")
    }
}

/// Masks secrets in setting values: passwords in URLs and conninfo, AWS secrets.
public enum SecretMask {
    public static func mask(_ name: String, _ value: String?) -> String? {
        guard let value else { return nil }
        let lower = name.lowercased()
        if lower.contains("secret") || lower.contains("password") || lower.contains("token") { return value.isEmpty ? "" : "****" }
        let masked = maskPassword(in: value)
        // libpq re-reads what would be shown: a password spelled any other way (`?pass%77ord=`) is
        // still found there, and then only the parsed, redacted form is shown.
        if lower == "database_url" {
            // What libpq cannot parse is not shown at all: its pieces could be anything, a password included.
            guard (try? ConnectionTarget(value)) != nil else { return ConnectionTarget.displayable(value) }
            if let leaked = try? ConnectionTarget(masked).value("password"), leaked != "****" { return ConnectionTarget.displayable(value) }
        }
        return masked
    }

    /// `postgresql://u:pw@h/db` → `postgresql://u:****@h/db`; `password=pw` → `password=****`.
    public static func maskPassword(in text: String) -> String {
        var output = text
        if let scheme = output.range(of: "://"), let at = output.range(of: "@", range: scheme.upperBound..<output.endIndex),
           let colon = output.range(of: ":", range: scheme.upperBound..<at.lowerBound) {
            output.replaceSubrange(colon.upperBound..<at.lowerBound, with: "****")
        }
        output = output.replacingOccurrences(of: "(password\\s*=\\s*)('[^']*'|[^\\s&]+)", with: "$1****", options: [.regularExpression, .caseInsensitive])
        return output
    }
}
