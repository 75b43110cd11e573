import Foundation

/// One migration version as found on disk: its up script and, if present, its down script.
public struct Migration: Sendable, Equatable {
    /// One script (up or down) with its header directives.
    public struct Script: Sendable, Equatable {
        public var path: String
        public var sql: String
        /// sha256 of the text with its line endings as LF and without a byte-order mark, so that a
        /// checkout that only changed line endings (git autocrlf, an editor) is not an edit.
        public var sha256: String
        /// sha256 of the file's bytes as they are, which dbmigrate recorded before it ignored line
        /// endings: a record holding it still matches. Nil where the two are the same.
        public var bytesSHA256: String? = nil
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
    /// Nothing connects before this returns, so a broken directory changes nothing.
    /// - Throws: `RecoveryError(.configuration)` for a missing directory or a file name that does not
    ///   follow the pattern; `RecoveryError(.migrationRefused)` listing every duplicate version,
    ///   down file without its up file, and file with no SQL statement.
    public static func load(_ directory: String) throws -> [Migration] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw RecoveryError(.configuration, "migrations directory \(directory) cannot be read",
                                hint: "pass --dir DIR (default ./migrations) holding <version>_<name>.up.sql files")
        }
        typealias Entry = (file: String, prefix: String, name: String, script: Migration.Script)
        var ups: [Int64: [Entry]] = [:]
        var downs: [Int64: [Entry]] = [:]
        var problems: [String] = []
        // Hidden files (editor and AppleDouble leftovers) are not migrations; any other *.sql, in any case, must be one.
        for file in names.sorted() where !file.hasPrefix(".") && file.lowercased().hasSuffix(".sql") {
            let isUp: Bool
            if file.hasSuffix(".up.sql") { isUp = true } else if file.hasSuffix(".down.sql") { isUp = false } else {
                throw RecoveryError(.configuration, "migration file \(file) is neither .up.sql nor .down.sql",
                                    hint: "rename it to <version>_<name>.up.sql or <version>_<name>.down.sql")
            }
            let stem = file.dropLast(isUp ? 7 : 9)
            let digits = stem.prefix { $0.isASCII && $0.isNumber }
            if !digits.isEmpty && Int64(digits) == nil {
                throw RecoveryError(.configuration, "migration file \(file) has a version too large for a 64-bit integer",
                                    hint: "use a version of at most 19 digits, e.g. a date stamp like 20261126093000")
            }
            guard let version = Int64(digits), stem.dropFirst(digits.count).first == "_" else {
                throw RecoveryError(.configuration, "migration file \(file) does not start with <version>_",
                                    hint: "name it like 0007_add_users.\(isUp ? "up" : "down").sql")
            }
            let script = try loadScript(directory + "/" + file)
            if script.sql.unicodeScalars.contains("\u{FFFD}"),
               let raw = FileManager.default.contents(atPath: directory + "/" + file), String(data: raw, encoding: .utf8) == nil {
                problems.append("\(file) is not valid UTF-8 (convert it, e.g. iconv -f latin1 -t utf-8)")
            }
            if script.isEmpty && !(script.irreversible && !isUp) {
                problems.append("\(file) has no SQL statement (empty, or only comments)")
            }
            let entry = (file: file, prefix: String(digits), name: String(stem.dropFirst(digits.count + 1)), script: script)
            if isUp { ups[version, default: []].append(entry) } else { downs[version, default: []].append(entry) }
        }
        for (version, files) in ups where files.count > 1 {
            problems.append("version \(version) has \(files.count) up files: \(files.map(\.file).joined(separator: ", "))")
        }
        for (version, files) in downs {
            if files.count > 1 {
                problems.append("version \(version) has \(files.count) down files: \(files.map(\.file).joined(separator: ", "))")
            }
            guard let up = ups[version]?.first else {
                problems.append(files.map { "\($0.file) has no up file (\($0.prefix)_\($0.name).up.sql)" }.joined(separator: "; "))
                continue
            }
            for file in files where file.name != up.name && (ups[version]?.count ?? 0) == 1 {
                problems.append("\(file.file) does not match its up file \(up.file) (\(up.prefix)_\(up.name).down.sql expected)")
            }
        }
        if !problems.isEmpty {
            let encoding = "convert each file that is not UTF-8 (iconv -f latin1 -t utf-8 FILE > FILE.utf8, then rename it)"
            let layout = "keep exactly one <version>_<name>.up.sql (and at most one matching .down.sql) per version, each with SQL in it; mark a down file that must never run with -- dbmigrate:irreversible"
            let onlyEncoding = problems.allSatisfy { $0.contains("is not valid UTF-8") }
            throw RecoveryError(.migrationRefused, "migrations directory \(directory) refused before connecting: " + problems.sorted().joined(separator: "; "),
                                hint: onlyEncoding ? encoding : problems.contains { $0.contains("is not valid UTF-8") } ? layout + "; " + encoding : layout)
        }
        return ups.keys.sorted().compactMap { version in
            guard let up = ups[version]?.first else { return nil }
            return Migration(version: version, name: up.name, up: up.script, down: downs[version]?.first?.script)
        }
    }

    static func loadScript(_ path: String) throws -> Migration.Script {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RecoveryError(.configuration, "migration file \(path) cannot be read",
                                hint: "check the file's permissions (the user running dbmigrate must be able to read it)")
        }
        var sql = String(decoding: data, as: UTF8.self)
        // A byte-order mark (some Windows editors write one) is not SQL, and not part of the checksum.
        if sql.hasPrefix("\u{FEFF}") { sql.removeFirst() }
        var bytesDigest = StreamingDigest()
        data.withUnsafeBytes { bytesDigest.update($0) }
        var digest = StreamingDigest()
        Data(sql.replacingOccurrences(of: "\r\n", with: "\n").utf8).withUnsafeBytes { digest.update($0) }
        let header = sql.split(whereSeparator: \.isNewline).prefix { $0.hasPrefix("--") || $0.allSatisfy(\.isWhitespace) }
        func has(_ directive: String) -> Bool {
            header.contains { $0.replacingOccurrences(of: " ", with: "").trimmingCharacters(in: .whitespacesAndNewlines).lowercased() == "--dbmigrate:\(directive)" }
        }
        let sha256 = digest.hexDigest(), bytesSHA256 = bytesDigest.hexDigest()
        return Migration.Script(path: path, sql: sql, sha256: sha256, bytesSHA256: bytesSHA256 == sha256 ? nil : bytesSHA256,
                                noTransaction: has("no-transaction"), irreversible: has("irreversible"))
    }
}
