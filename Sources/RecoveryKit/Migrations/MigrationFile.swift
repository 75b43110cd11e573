import Foundation

/// One migration version as found on disk: its up script and, if present, its down script.
public struct Migration: Sendable, Equatable {
    /// One script (up or down) with its header directives.
    public struct Script: Sendable, Equatable {
        public var path: String
        public var sql: String
        public var sha256: String
        /// `-- dbmigrate:no-transaction`: run outside a transaction (e.g. CREATE INDEX CONCURRENTLY).
        public var noTransaction: Bool
        /// `-- dbmigrate:irreversible`: must never be run backwards.
        public var irreversible: Bool

        /// True when the script has no statement at all (only comments and blanks).
        public var isEmpty: Bool { SQLStatements.split(sql).isEmpty }
    }

    public var version: Int64
    public var name: String
    public var up: Script
    public var down: Script?
}

/// Reads a migrations directory: `<version>_<name>.up.sql` and `<version>_<name>.down.sql`.
public enum MigrationDirectory {
    /// Loads every migration, ordered by numeric version.
    ///
    /// - Throws: `RecoveryError(.configuration)` for a missing directory, a duplicate version, a
    ///   down file without an up file, or a file name that does not follow the pattern.
    public static func load(_ directory: String) throws -> [Migration] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw RecoveryError(.configuration, "migrations directory \(directory) cannot be read",
                                hint: "pass --dir DIR (default ./migrations) holding <version>_<name>.up.sql files")
        }
        var ups: [Int64: (String, Migration.Script)] = [:]
        var downs: [Int64: (String, Migration.Script)] = [:]
        for file in names.sorted() where file.hasSuffix(".sql") {
            let direction: String
            if file.hasSuffix(".up.sql") { direction = "up" } else if file.hasSuffix(".down.sql") { direction = "down" } else {
                throw RecoveryError(.configuration, "migration file \(file) is neither .up.sql nor .down.sql",
                                    hint: "rename it to <version>_<name>.up.sql or <version>_<name>.down.sql")
            }
            let stem = file.dropLast(direction == "up" ? 7 : 9)
            let digits = stem.prefix { $0.isNumber }
            guard let version = Int64(digits), stem.dropFirst(digits.count).first == "_" else {
                throw RecoveryError(.configuration, "migration file \(file) does not start with <version>_",
                                    hint: "name it like 0007_add_users.\(direction).sql")
            }
            let name = String(stem.dropFirst(digits.count + 1))
            let path = directory + "/" + file
            let script = try loadScript(path)
            if direction == "up" {
                if let existing = ups[version] {
                    throw RecoveryError(.configuration, "migration version \(version) appears twice: \(existing.0) and \(name)")
                }
                ups[version] = (name, script)
            } else {
                downs[version] = (name, script)
            }
        }
        for (version, down) in downs where ups[version] == nil {
            throw RecoveryError(.configuration, "down file for version \(version) (\(down.1.path)) has no up file")
        }
        return ups.keys.sorted().map { version in
            let (name, up) = ups[version]!
            return Migration(version: version, name: name, up: up, down: downs[version]?.1)
        }
    }

    static func loadScript(_ path: String) throws -> Migration.Script {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RecoveryError(.configuration, "migration file \(path) cannot be read")
        }
        let sql = String(decoding: data, as: UTF8.self)
        var digest = StreamingDigest()
        data.withUnsafeBytes { digest.update($0) }
        let header = sql.split(separator: "\n").prefix { $0.hasPrefix("--") || $0.allSatisfy(\.isWhitespace) }
        func has(_ directive: String) -> Bool {
            header.contains { $0.replacingOccurrences(of: " ", with: "").lowercased() == "--dbmigrate:\(directive)" }
        }
        return Migration.Script(path: path, sql: sql, sha256: digest.hexDigest(),
                                noTransaction: has("no-transaction"), irreversible: has("irreversible"))
    }
}
