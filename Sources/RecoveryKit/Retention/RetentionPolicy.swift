import Foundation
import TOMLKit

/// Which backups to keep, per repository tier. Parsed strictly from TOML: a typo is an error.
public struct RetentionPolicy: Equatable, Sendable {
    /// The rules of one kind of repository.
    public struct Tier: Equatable, Sendable {
        public var keepLast: Int
        /// Keep every backup younger than this.
        public var keepWithin: RetentionDuration?
        /// Move kept backups older than this to the archive class (S3 GLACIER).
        public var glacierAfter: RetentionDuration?
        /// Apply the `[snapshots]` rules too.
        public var snapshots: Bool
    }

    /// Calendar bucket rules.
    public struct Snapshots: Equatable, Sendable {
        public var daily: Int
        public var weekly: Int
        public var monthly: Int
        public var timeZone: String
    }

    public var local: Tier
    public var s3: Tier
    public var snapshots: Snapshots
    public var garbageGracePeriod: RetentionDuration

    /// The built-in default; `retention/default.toml` states the same (a test proves it).
    public static let builtIn = RetentionPolicy(
        local: Tier(keepLast: 10, keepWithin: nil, glacierAfter: nil, snapshots: false),
        s3: Tier(keepLast: 0, keepWithin: RetentionDuration(hours: 90 * 24, text: "90d"),
                 glacierAfter: RetentionDuration(hours: 30 * 24, text: "30d"), snapshots: true),
        snapshots: Snapshots(daily: 7, weekly: 4, monthly: 12, timeZone: "UTC"),
        garbageGracePeriod: RetentionDuration(hours: 24, text: "24h"))

    /// Reads a policy file.
    ///
    /// - Throws: `RecoveryError(.configuration)` naming the file, the key and the fix.
    public static func load(path: String) throws -> RetentionPolicy {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RecoveryError(.configuration, "policy file \(path) cannot be read",
                                hint: "check --policy; retention/default.toml is a documented example")
        }
        return try parse(String(decoding: data, as: UTF8.self), source: path)
    }

    /// Parses policy TOML. Sections and keys not listed in retention/default.toml are errors.
    public static func parse(_ text: String, source: String) throws -> RetentionPolicy {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw RecoveryError(.configuration, "policy \(source) is not valid TOML at line \(error.source.begin.line): \(error.description)")
        }
        let reader = PolicyReader(source: source)
        try reader.allow(table, keys: ["local", "s3", "snapshots", "garbage"], section: nil)
        var policy = builtIn
        if let section = try reader.section(table, "local") { policy.local = try reader.tier(section, name: "local", base: policy.local) }
        if let section = try reader.section(table, "s3") { policy.s3 = try reader.tier(section, name: "s3", base: policy.s3) }
        if let section = try reader.section(table, "snapshots") {
            try reader.allow(section, keys: ["daily", "weekly", "monthly", "time_zone"], section: "snapshots")
            policy.snapshots.daily = try reader.count(section, "daily", section: "snapshots") ?? policy.snapshots.daily
            policy.snapshots.weekly = try reader.count(section, "weekly", section: "snapshots") ?? policy.snapshots.weekly
            policy.snapshots.monthly = try reader.count(section, "monthly", section: "snapshots") ?? policy.snapshots.monthly
            if let zone = try reader.string(section, "time_zone", section: "snapshots") {
                guard TimeZone(identifier: zone) != nil else {
                    throw RecoveryError(.configuration, "policy \(source): [snapshots] time_zone '\(zone)' is not a known time zone",
                                        hint: "use an IANA name such as UTC or Europe/Berlin")
                }
                policy.snapshots.timeZone = zone
            }
        }
        if let section = try reader.section(table, "garbage") {
            try reader.allow(section, keys: ["grace_period"], section: "garbage")
            policy.garbageGracePeriod = try reader.duration(section, "grace_period", section: "garbage") ?? policy.garbageGracePeriod
        }
        return policy
    }
}

/// A span of time written as `24h`, `90d` or `4w`.
public struct RetentionDuration: Equatable, Sendable, CustomStringConvertible {
    public var hours: Int
    public var text: String

    public var seconds: TimeInterval { TimeInterval(hours) * 3600 }

    /// The longest duration a policy may name (1000 years).
    public static let maximumHours = 1000 * 366 * 24
    public var description: String { text }

    /// Parses `<number><unit>` with unit h, d or w; nil for anything else.
    public static func parse(_ text: String) -> RetentionDuration? {
        guard let unit = text.last, let number = Int(text.dropLast()), number >= 0 else { return nil }
        let hoursPerUnit: Int
        switch unit {
        case "h": hoursPerUnit = 1
        case "d": hoursPerUnit = 24
        case "w": hoursPerUnit = 24 * 7
        default: return nil
        }
        // Bounded so that dates computed from it stay representable: 1000 years is "forever" here.
        let (hours, overflow) = number.multipliedReportingOverflow(by: hoursPerUnit)
        guard !overflow, hours <= maximumHours else { return nil }
        return RetentionDuration(hours: hours, text: text)
    }
}

/// Strict reading of policy values with messages that name the key and the fix.
private struct PolicyReader {
    let source: String

    func allow(_ table: TOMLTable, keys: Set<String>, section: String?) throws {
        for key in table.keys where !keys.contains(key) {
            let place = section.map { "[\($0)] " } ?? ""
            throw RecoveryError(.configuration, "policy \(source): unknown key \(place)\(key)",
                                hint: "allowed here: \(keys.sorted().joined(separator: ", ")); see retention/default.toml")
        }
    }

    func section(_ table: TOMLTable, _ name: String) throws -> TOMLTable? {
        guard let value = table[name] else { return nil }
        guard let section = value.table else {
            throw RecoveryError(.configuration, "policy \(source): \(name) must be a [\(name)] section")
        }
        return section
    }

    func tier(_ table: TOMLTable, name: String, base: RetentionPolicy.Tier) throws -> RetentionPolicy.Tier {
        try allow(table, keys: ["keep_last", "keep_within", "glacier_after", "snapshots"], section: name)
        var tier = base
        tier.keepLast = try count(table, "keep_last", section: name) ?? tier.keepLast
        if table["keep_within"] != nil { tier.keepWithin = try duration(table, "keep_within", section: name) }
        if table["glacier_after"] != nil { tier.glacierAfter = try duration(table, "glacier_after", section: name) }
        if let value = table["snapshots"] {
            guard let flag = value.bool else {
                throw RecoveryError(.configuration, "policy \(source): [\(name)] snapshots must be true or false")
            }
            tier.snapshots = flag
        }
        return tier
    }

    func count(_ table: TOMLTable, _ key: String, section: String) throws -> Int? {
        guard let value = table[key] else { return nil }
        guard let number = value.int, number >= 0 else {
            throw RecoveryError(.configuration, "policy \(source): [\(section)] \(key) must be a whole number of 0 or more",
                                hint: "write for example \(key) = 7")
        }
        return number
    }

    func string(_ table: TOMLTable, _ key: String, section: String) throws -> String? {
        guard let value = table[key] else { return nil }
        guard let text = value.string else {
            throw RecoveryError(.configuration, "policy \(source): [\(section)] \(key) must be a string")
        }
        return text
    }

    func duration(_ table: TOMLTable, _ key: String, section: String) throws -> RetentionDuration? {
        guard let text = try string(table, key, section: section) else { return nil }
        guard let duration = RetentionDuration.parse(text) else {
            throw RecoveryError(.configuration, "policy \(source): [\(section)] \(key) = \"\(text)\" is not a duration",
                                hint: "write a whole number and a unit: h (hours), d (days) or w (weeks), e.g. \"30d\" (at most 1000 years)")
        }
        return duration
    }
}
