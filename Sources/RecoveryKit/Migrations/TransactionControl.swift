import Foundation

/// Finds statements that must not run inside the transaction dbmigrate wraps a step in: transaction
/// control (`BEGIN`, `COMMIT`, `ROLLBACK`, `SAVEPOINT`, …), which would end or split the runner's
/// transaction, and statements the server refuses inside a transaction block (`VACUUM`,
/// `CREATE INDEX CONCURRENTLY`, …); and `COPY … TO STDOUT`, whose rows no step could show.
///
/// Pure: classifies the statements `SQLStatements.split(_:)` yields by their leading keywords.
/// `BEGIN ATOMIC` bodies stay inside their `CREATE FUNCTION` statement, so they are never seen here.
public enum TransactionControl {
    /// One offending statement.
    public struct Violation: Sendable, Equatable {
        public enum Kind: Sendable, Equatable {
            /// Ends, starts or splits a transaction.
            case transactionControl
            /// The server refuses it inside a transaction block.
            case cannotRunInTransaction
            /// Streams rows out to the client (`COPY … TO STDOUT`), which a migration runner has no use for.
            case needsClientData
            /// A psql meta-command (`\set`, `\i`, …): psql runs it, the server would read a syntax error.
            case psqlMetaCommand
        }

        public var kind: Kind
        /// What was found, e.g. `COMMIT` or `CREATE INDEX CONCURRENTLY`.
        public var what: String
        /// 1-based line in the file where the statement starts (0 when it cannot be located).
        public var line: Int
        /// 1-based position of the statement in the file.
        public var statement: Int
    }

    /// Every statement of `sql` that cannot run inside the runner's transaction.
    ///
    /// - Parameters:
    ///   - serverVersion: `server_version_num`, for rules that depend on it (`ALTER TYPE … ADD VALUE`
    ///     runs in a transaction only from PostgreSQL 12); nil when unknown.
    public static func violations(in sql: String, serverVersion: Int? = nil) -> [Violation] {
        var found: [Violation] = []
        var locator = LineLocator(sql)
        for (index, statement) in SQLStatements.split(sql).enumerated() {
            let line = locator.line(of: statement)
            if let (kind, what) = classify(statement, serverVersion: serverVersion) {
                found.append(Violation(kind: kind, what: what, line: line, statement: index + 1))
            }
        }
        return found
    }

    /// True when `statement` ends the transaction by rolling it back rather than committing it.
    public static func rollsBack(_ statement: String) -> Bool {
        let words = keywords(statement, limit: 3)
        guard let first = words.first, ["ROLLBACK", "ABORT"].contains(first) else { return false }
        return !(words.count > 1 && ["TO", "PREPARED"].contains(words[1]))
    }

    /// Why `statement` cannot run inside the runner's transaction, or nil when it can.
    static func classify(_ statement: String, serverVersion: Int?) -> (Violation.Kind, String)? {
        if let meta = metaCommand(statement) { return (.psqlMetaCommand, meta) }
        let words = keywords(statement, limit: 64)
        guard let first = words.first else { return nil }
        let second = words.count > 1 ? words[1] : ""
        func control(_ what: String) -> (Violation.Kind, String) { (.transactionControl, what) }
        func outside(_ what: String) -> (Violation.Kind, String) { (.cannotRunInTransaction, what) }
        switch first {
        case "BEGIN" where second != "ATOMIC": return control("BEGIN")
        case "START" where second == "TRANSACTION": return control("START TRANSACTION")
        case "COMMIT": return second == "PREPARED" ? outside("COMMIT PREPARED") : control(second == "AND" ? "COMMIT AND CHAIN" : "COMMIT")
        case "END": return control("END")
        case "ABORT": return control("ABORT")
        case "ROLLBACK":
            if second == "PREPARED" { return outside("ROLLBACK PREPARED") }
            return control(second == "TO" ? "ROLLBACK TO SAVEPOINT" : words.contains("CHAIN") ? "ROLLBACK AND CHAIN" : "ROLLBACK")
        case "SAVEPOINT": return control("SAVEPOINT")
        case "RELEASE": return control("RELEASE SAVEPOINT")
        case "PREPARE" where second == "TRANSACTION": return control("PREPARE TRANSACTION")
        case "VACUUM": return outside("VACUUM")
        case "COPY" where words.contains("STDOUT") && !copiesFromStdin(statement):
            return (.needsClientData, "COPY … TO STDOUT")
        case "REINDEX":
            if words.contains("CONCURRENTLY") { return outside("REINDEX CONCURRENTLY") }
            if let kind = words.dropFirst().first(where: { $0 != "(" && $0 != "VERBOSE" }), ["DATABASE", "SYSTEM"].contains(kind) {
                return outside("REINDEX \(kind)")
            }
        case "CLUSTER" where words.dropFirst().allSatisfy { $0 == "VERBOSE" || $0 == "(" }: return outside("CLUSTER without a table")
        case "DISCARD" where second == "ALL": return outside("DISCARD ALL")
        case "CREATE":
            let rest = words.dropFirst().filter { $0 != "UNIQUE" }
            if rest.starts(with: ["INDEX", "CONCURRENTLY"]) { return outside("CREATE INDEX CONCURRENTLY") }
            if ["DATABASE", "TABLESPACE", "SUBSCRIPTION"].contains(second) { return outside("CREATE \(second)") }
        case "DROP":
            if words.dropFirst().starts(with: ["INDEX", "CONCURRENTLY"]) { return outside("DROP INDEX CONCURRENTLY") }
            if ["DATABASE", "TABLESPACE"].contains(second) { return outside("DROP \(second)") }
        case "ALTER":
            if second == "SYSTEM" { return outside("ALTER SYSTEM") }
            if second == "DATABASE", let set = words.firstIndex(of: "SET"), words.dropFirst(set + 1).first == "TABLESPACE" {
                return outside("ALTER DATABASE … SET TABLESPACE")
            }
            if second == "TABLE", let detach = words.firstIndex(of: "DETACH"), words.dropFirst(detach).contains("CONCURRENTLY") {
                return outside("ALTER TABLE … DETACH PARTITION CONCURRENTLY")
            }
            if second == "TYPE", let serverVersion, serverVersion < 120_000,
               let add = words.firstIndex(of: "ADD"), words.dropFirst(add + 1).first == "VALUE" {
                return outside("ALTER TYPE … ADD VALUE (before PostgreSQL 12)")
            }
        default: break
        }
        return nil
    }

    /// Where the `--` or (nested) `/* */` comment that starts at `index` ends: the line comment's
    /// newline, the byte after the block comment, `endIndex` for one left open; nil when no
    /// comment starts there.
    static func commentEnd(in bytes: ArraySlice<UInt8>, at start: Int) -> Int? {
        func at(_ offset: Int) -> UInt8? { offset < bytes.endIndex ? bytes[offset] : nil }
        var index = start
        if bytes[index] == UInt8(ascii: "-") && at(index + 1) == UInt8(ascii: "-") {
            while index < bytes.endIndex && bytes[index] != UInt8(ascii: "\n") { index += 1 }
            return index
        }
        guard bytes[index] == UInt8(ascii: "/") && at(index + 1) == UInt8(ascii: "*") else { return nil }
        var depth = 1
        index += 2
        while index < bytes.endIndex && depth > 0 {
            if bytes[index] == UInt8(ascii: "*") && at(index + 1) == UInt8(ascii: "/") { depth -= 1; index += 2 }
            else if bytes[index] == UInt8(ascii: "/") && at(index + 1) == UInt8(ascii: "*") { depth += 1; index += 2 }
            else { index += 1 }
        }
        return index
    }

    /// The statement's words in upper case, skipping comments, quoted text and punctuation except `(`.
    /// The psql meta-command a statement starts with (`\set`), after blanks and comments: psql
    /// splits it off as its own command, so it reaches us glued to the statement after it.
    static func metaCommand(_ statement: String) -> String? {
        let bytes = Array(statement.utf8)
        var index = 0
        while index < bytes.count {
            if let end = commentEnd(in: bytes[...], at: index) { index = end; continue }
            if [0x20, 0x09, 0x0A, 0x0D, 0x0C].contains(bytes[index]) { index += 1; continue }
            guard bytes[index] == UInt8(ascii: "\\") else { return nil }
            let word = bytes[index...].prefix { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }.prefix(32)
            return String(decoding: word, as: UTF8.self)
        }
        return nil
    }

    /// Whether `statement` is `COPY table … FROM STDIN`, whose rows psql (and dbmigrate) read from
    /// the lines of the script after it. (The `COPY (query)` form only copies out.)
    static func copiesFromStdin(_ statement: String) -> Bool {
        let words = keywords(statement, limit: .max)
        guard words.first == "COPY", words.dropFirst().first != "(", let from = words.firstIndex(of: "FROM") else { return false }
        return words.dropFirst(from + 1).first == "STDIN"
    }

    static func keywords(_ statement: String, limit: Int) -> [String] {
        let bytes = Array(statement.utf8)
        var words: [String] = []
        var index = 0
        func at(_ offset: Int) -> UInt8? { offset < bytes.count ? bytes[offset] : nil }
        func isWordByte(_ byte: UInt8) -> Bool {
            (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || byte == 0x5F || byte >= 0x80
                || (byte >= 0x30 && byte <= 0x39) || byte == UInt8(ascii: "$")
        }
        while index < bytes.count && words.count < limit {
            let byte = bytes[index]
            if let end = commentEnd(in: bytes[...], at: index) {
                index = end
            } else if byte == UInt8(ascii: "'") || byte == UInt8(ascii: "\"") {
                let escapes = byte == UInt8(ascii: "'") && index > 0 && (bytes[index - 1] | 0x20) == UInt8(ascii: "e")
                index += 1
                while index < bytes.count {
                    if escapes && bytes[index] == UInt8(ascii: "\\") { index += 2; continue }
                    if bytes[index] == byte {
                        if at(index + 1) == byte { index += 2; continue }
                        break
                    }
                    index += 1
                }
                index += 1
                words.append(byte == UInt8(ascii: "\"") ? "\"IDENTIFIER\"" : "'LITERAL'")
            } else if byte == UInt8(ascii: "$") {
                // A dollar quote $tag$…$tag$ (tag: letters, digits, underscores); otherwise a parameter.
                var end = index + 1
                while let next = at(end), next != UInt8(ascii: "$"), isWordByte(next) { end += 1 }
                if at(end) == UInt8(ascii: "$") {
                    let tag = Array(bytes[index...end])
                    var search = end + 1
                    while search + tag.count <= bytes.count && Array(bytes[search..<(search + tag.count)]) != tag { search += 1 }
                    index = min(search + tag.count, bytes.count)
                    words.append("'LITERAL'")
                } else {
                    index = end
                }
            } else if isWordByte(byte) {
                var end = index
                while end < bytes.count && isWordByte(bytes[end]) { end += 1 }
                words.append(String(decoding: bytes[index..<end], as: UTF8.self).uppercased())
                index = end
            } else {
                if byte == UInt8(ascii: "(") { words.append("(") }
                index += 1
            }
        }
        return words
    }

    /// Finds the line where each statement (in order) starts in the original text.
    struct LineLocator {
        private let text: [UInt8]
        private var cursor = 0

        init(_ text: String) { self.text = Array(text.utf8) }

        /// The 1-based line where `statement`'s first token (after any leading comments) is, searching
        /// on from the previous statement; 0 if not found.
        ///
        /// The statement is found whole (the splitter yields it verbatim), so a keyword that also
        /// appears in an earlier comment (`-- then COMMIT`) is not mistaken for it.
        mutating func line(of statement: String) -> Int {
            let whole = Array(statement.utf8)
            // The statement's code starts at the next token after the previous statement (past its
            // semicolon and any comments); a keyword inside those comments is never it.
            let body = whole[Self.firstToken(whole[...])...]
            var start = cursor
            while true {
                start = Self.firstToken(text[start...])
                guard start < text.count, text[start] == UInt8(ascii: ";") else { break }
                start += 1
            }
            if !body.isEmpty, text[start...].starts(with: body) {
                cursor = start + body.count
                return 1 + Self.newlines(text[0..<start])
            }
            if let position = find(whole) {
                cursor = position + whole.count
                return 1 + Self.newlines(text[0..<position]) + Self.newlines(whole[0..<Self.firstToken(whole[...])])
            }
            // Not verbatim (should not happen): the first line with code, searched for on its own.
            let firstLine = statement.split(whereSeparator: \.isNewline)
                .map { $0.trimmingCharacters(in: .whitespaces) }
                .first { !$0.isEmpty && !$0.hasPrefix("--") } ?? ""
            let needle = Array(firstLine.utf8)
            guard let position = find(needle) else { return 0 }
            cursor = position + needle.count
            return 1 + Self.newlines(text[0..<position])
        }

        /// Where `needle` next occurs from the cursor on.
        private func find(_ needle: [UInt8]) -> Int? {
            guard !needle.isEmpty, needle.count <= text.count else { return nil }
            var position = cursor
            while position + needle.count <= text.count {
                if text[position] == needle[0] && text[position..<(position + needle.count)].elementsEqual(needle) { return position }
                position += 1
            }
            return nil
        }

        private static func newlines(_ bytes: ArraySlice<UInt8>) -> Int {
            bytes.reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
        }

        /// Index of the first byte that is neither whitespace nor inside a `--` or `/* */` comment
        /// (`endIndex` when there is none).
        static func firstToken(_ bytes: ArraySlice<UInt8>) -> Int {
            var index = bytes.startIndex
            while index < bytes.endIndex {
                let byte = bytes[index]
                if byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") {
                    index += 1
                } else if let end = TransactionControl.commentEnd(in: bytes, at: index) {
                    index = end
                } else {
                    return index
                }
            }
            return min(index, bytes.endIndex)
        }
    }
}
