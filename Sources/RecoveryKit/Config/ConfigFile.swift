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
    public var keepPreRestoreWithin: RetentionDuration?
    /// `[prune] reverify_after`: how long dbprune trusts its record of having read a backup in full
    /// (default 7 days) before it reads the newest backup again.
    public var reverifyAfter: RetentionDuration?
    /// `[prune] hold_expiry`: how long a recovery's hold on its WAL and base backup protects them
    /// from dbprune (default 7 days); an older hold protects nothing and every run warns of it.
    public var holdExpiry: RetentionDuration?
    /// `[wal] spool`: the spool directory of `dbbackup wal-push --async`.
    public var walSpool: String?
    /// `[repositories]`: named repositories (e.g. `local`, `offsite`) that one backup run writes to.
    public var repositories: [String: String] = [:]

    /// The default location, used when it exists.
    public static let defaultPath = "/etc/dbrecovery/config.toml"

    /// Reads and validates a config file; unknown keys are errors.
    ///
    /// - Throws: `RecoveryError(.configuration)` naming the file and the key: unreadable, not TOML,
    ///   an unknown section or key, or a value of the wrong type.
    public static func load(_ path: String) throws -> ConfigFile {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RecoveryError(.configuration, "config file \(path) cannot be read", hint: "check --config (or DBRECOVERY_CONFIG)")
        }
        let document: Document
        do {
            // Strict: every key must be one Document decodes, so a typo is an error, never ignored.
            document = try TOMLDecoder(strictDecoding: true).decode(Document.self, from: String(decoding: data, as: UTF8.self))
        } catch let error as TOMLParseError {
            throw RecoveryError(.configuration, "config file \(path) is not valid TOML at line \(error.source.begin.line): \(error.description)")
        } catch let error as UnexpectedKeysError {
            let unknown = error.keys.values.map { $0.map(\.stringValue) }.sorted { $0.joined(separator: ".") < $1.joined(separator: ".") }
            let first = unknown.first ?? []
            if first.count == 1, isTable(first[0], in: data) {
                throw RecoveryError(.configuration, "config file \(path): unknown section [\(first[0])]",
                                    hint: "sections: [s3], [retention], [migrations], [restore], [prune], [wal], [repositories]")
            }
            let name = first.count == 2 ? "[\(first[0])] \(first[1])" : first.joined(separator: ".")
            let allowed = first.count == 2 ? Document.allowed[first[0]] ?? [] : Document.topLevel
            throw RecoveryError(.configuration, "config file \(path): unknown key \(name)",
                                hint: "allowed: \(allowed.joined(separator: ", "))\(first.count == 2 ? "" : " and sections [s3], [retention], [migrations], [restore], [prune], [wal], [repositories]")")
        } catch let error as DecodingError {
            throw RecoveryError(.configuration, "config file \(path): \(describe(error))", hint: "see the example config (config.example.toml)")
        }
        if let count = document.restore?.keepPreRestore, count < 0 {
            throw RecoveryError(.configuration, "config file \(path): [restore] keep_pre_restore must be a whole number ≥ 0", hint: "e.g. keep_pre_restore = 2")
        }
        var config = ConfigFile(path: path)
        config.databaseURL = document.databaseURL
        config.repository = document.repo
        config.pgBin = document.pgBin
        config.metricsFile = document.metricsFile
        config.notifyURL = document.notifyURL
        config.s3Endpoint = document.s3?.endpoint
        config.s3Region = document.s3?.region
        config.policy = document.retention?.policy
        config.migrationsDirectory = document.migrations?.dir
        config.keepPreRestore = document.restore?.keepPreRestore
        if let written = document.restore?.keepPreRestoreWithin {
            // Checked here, so every command refuses it (only `dbrestore cleanup` reads it).
            guard written.count <= 6, let age = RetentionDuration.parse(written) else {
                throw RecoveryError(.configuration, "config file \(path): [restore] keep_pre_restore_within = \"\(written)\" is not an age",
                                    hint: "write hours, days or weeks, e.g. keep_pre_restore_within = \"7d\"")
            }
            config.keepPreRestoreWithin = age
        }
        // A repository path cron would resolve against its own working directory, or none at all.
        let named = (document.repositories ?? [:]).sorted(by: { $0.key < $1.key }).map { ("[repositories] \($0.key)", Optional($0.value)) }
        for (key, value) in [("repo", document.repo)] + named {
            guard let value else { continue }
            if value.trimmingCharacters(in: .whitespaces).isEmpty {
                throw RecoveryError(.configuration, "config file \(path): \(key) is empty",
                                    hint: "give the repository (e.g. \(key.hasPrefix("[") ? key.dropFirst(15) : "repo") = \"/var/backups/app\" or \"s3://bucket/prefix\"), or remove the line")
            }
            if !value.hasPrefix("/") && !value.contains("://") {
                throw RecoveryError(.configuration, "config file \(path): \(key) = \"\(value)\" is a relative path, which each run (cron's from /) would resolve against its own working directory",
                                    hint: "write an absolute path, e.g. /var/backups/\(value)")
            }
        }
        config.repositories = document.repositories ?? [:]
        config.walSpool = document.wal?.spool
        if let written = document.prune?.reverifyAfter {
            guard let duration = RetentionDuration.parse(written) else {
                throw RecoveryError(.configuration, "config file \(path): [prune] reverify_after = \"\(written)\" is not a duration",
                                    hint: "write hours, days or weeks, e.g. reverify_after = \"7d\"")
            }
            config.reverifyAfter = duration
        }
        if let written = document.prune?.holdExpiry {
            guard let duration = RetentionDuration.parse(written), duration.hours > 0 else {
                throw RecoveryError(.configuration, "config file \(path): [prune] hold_expiry = \"\(written)\" is not a duration from 1h to 1000 years",
                                    hint: "write hours, days or weeks, e.g. hold_expiry = \"7d\"")
            }
            config.holdExpiry = duration
        }
        return config
    }

    /// Whether `key` holds a table (a section) rather than a value.
    private static func isTable(_ key: String, in data: Data) -> Bool {
        (try? TOMLTable(string: String(decoding: data, as: UTF8.self)))?[key]?.table != nil
    }

    /// A type or value error as the file's key and what it must be.
    private static func describe(_ error: DecodingError) -> String {
        let (path, problem): ([CodingKey], String)
        switch error {
        case .typeMismatch(let type, let context):
            path = context.codingPath
            problem = type == Int.self ? "must be a whole number ≥ 0" : type == String.self ? "must be a string" : "has the wrong type"
        case .valueNotFound(_, let context), .dataCorrupted(let context):
            path = context.codingPath
            problem = "has an invalid value"
        case .keyNotFound(let key, let context):
            // Every key here is optional: TOMLKit reports a value of the wrong type as "not found",
            // with the type it wanted in the description.
            path = context.codingPath.last?.stringValue == key.stringValue ? context.codingPath : context.codingPath + [key]
            problem = context.debugDescription.contains("\"Int\"") ? "must be a whole number ≥ 0"
                : context.debugDescription.contains("\"String\"") ? "must be a string" : "has the wrong type"
        @unknown default:
            return "\(error)"
        }
        let names = path.map(\.stringValue)
        let name = names.count == 2 ? "[\(names[0])] \(names[1])" : names.joined(separator: ".")
        return "\(name) \(problem)"
    }

    /// The file's layout, decoded strictly: the keys here are the only ones accepted.
    private struct Document: Decodable {
        var databaseURL: String?
        var repo: String?
        var pgBin: String?
        var metricsFile: String?
        var notifyURL: String?
        var s3: S3?
        var retention: Retention?
        var migrations: Migrations?
        var restore: Restore?
        var repositories: [String: String]?
        var prune: Prune?
        var wal: WAL?

        enum CodingKeys: String, CodingKey {
            case databaseURL = "database_url", repo, pgBin = "pg_bin", metricsFile = "metrics_file", notifyURL = "notify_url"
            case s3, retention, migrations, restore, repositories, prune, wal
        }

        struct S3: Decodable { var endpoint: String?; var region: String? }
        struct Retention: Decodable { var policy: String? }
        struct Migrations: Decodable { var dir: String? }
        struct Prune: Decodable {
            var reverifyAfter: String?
            var holdExpiry: String?
            enum CodingKeys: String, CodingKey { case reverifyAfter = "reverify_after", holdExpiry = "hold_expiry" }
        }
        struct WAL: Decodable { var spool: String? }
        struct Restore: Decodable {
            var keepPreRestore: Int?
            var keepPreRestoreWithin: String?
            enum CodingKeys: String, CodingKey { case keepPreRestore = "keep_pre_restore", keepPreRestoreWithin = "keep_pre_restore_within" }
        }

        /// For messages: what each section and the top level accept.
        static let topLevel = ["database_url", "repo", "pg_bin", "metrics_file", "notify_url"]
        static let allowed = ["s3": ["endpoint", "region"], "retention": ["policy"], "migrations": ["dir"],
                              "restore": ["keep_pre_restore", "keep_pre_restore_within"], "prune": ["reverify_after", "hold_expiry"], "wal": ["spool"]]
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
}

/// Masks secrets in setting values: passwords in URLs and conninfo, AWS secrets.
public enum SecretMask {
    public static func mask(_ name: String, _ value: String?) -> String? {
        guard let value else { return nil }
        let lower = name.lowercased()
        // A variable naming a file holds its path, not the secret (AWS_WEB_IDENTITY_TOKEN_FILE): shown, since a wrong path is what to check.
        if !lower.hasSuffix("_file") && (lower.contains("secret") || lower.contains("password") || lower.contains("token")) { return value.isEmpty ? "" : "****" }
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
