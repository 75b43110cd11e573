/// The statements a restore lets reach the server: those a single-database plain `pg_dump` writes,
/// recognised by their heads (an allowlist: anything else is refused before it runs).
///
/// Why (issue 21): a restore reads its backup once and applies statements as they stream in; the
/// dump's sha256 is known only at the end of the stream. Whatever runs before then must not be able
/// to act outside the scratch database it is replayed into, which is dropped when the digest turns
/// out wrong. So statements that act on the cluster or the server — `DROP/CREATE/ALTER DATABASE`,
/// roles and role membership, `ALTER SYSTEM`, tablespaces, `COPY` to or from files or programs,
/// `DO`, `CHECKPOINT`, `VACUUM`, `LOAD`, `LISTEN/NOTIFY`, `SELECT` of anything but the few
/// pg_catalog functions pg_dump calls with literal arguments — are never sent: a dump holding one
/// is a damaged or wrong file (`backupCorrupt`), and `--emergency`/`--drill` go on with the next
/// candidate.
///
/// Threat model: in a plaintext repository the sha256 catches accidents (bit rot, truncation, a
/// wrong file). A writer who can replace the dump can also rewrite its manifest, so only an
/// encrypted repository (authenticated frames) defends against deliberate tampering; this policy
/// keeps a damaged or wrong stream inside the scratch database until its digest is known. It looks
/// at statement heads, not into function bodies or expressions (an index on a function of a
/// tampered dump still runs that function in the scratch database).
enum DumpStatementPolicy {
    /// Whether pg_dump writes a statement like this one.
    ///
    /// - Parameter standardConformingStrings: how `'…'` literals are read where the statement stood.
    static func allows(_ sql: [UInt8], standardConformingStrings: Bool) -> Bool {
        guard let tokens = Tokens.read(sql, standardConformingStrings: standardConformingStrings),
              let first = tokens.first?.word else { return false }
        let rest = tokens.dropFirst()
        switch first {
        case "SET", "RESET":
            // Session settings of this connection only (SessionSettings replays them per connection).
            return true
        case "BEGIN", "COMMIT":
            // Around large-object data in plain dumps.
            return rest.isEmpty
        case "CREATE":
            return createsAllowedKind(rest)
        case "ALTER", "DROP":
            return objectKind(rest, allowed: alterKinds)
        case "COMMENT":
            guard rest.first?.word == "ON" else { return false }
            return objectKind(rest.dropFirst(), allowed: commentKinds)
        case "SECURITY":
            guard rest.first?.word == "LABEL", let on = rest.firstIndex(where: { $0.word == "ON" }) else { return false }
            return objectKind(rest[(on + 1)...], allowed: commentKinds)
        case "GRANT", "REVOKE":
            return grantsObjectPrivileges(rest)
        case "REFRESH":
            return rest.prefix(2).map(\.word) == ["MATERIALIZED", "VIEW"]
        case "INSERT":
            // `pg_dump --inserts` / `--column-inserts`.
            return rest.first?.word == "INTO"
        case "SELECT":
            return callsDumpFunction(rest)
        case "COPY":
            // Only `COPY … FROM stdin` (`DumpScanner.isCopyFromStdin`) carries a dump's rows.
            return DumpScanner.isCopyFromStdin(sql)
        default:
            return false
        }
    }

    /// The refusal of a statement `allows` refused: its start only (no literal: it may hold a secret).
    static func refusal(_ statement: DumpScanner.Statement, backupID: String) -> RecoveryError {
        let shown = String(statement.excerpt.prefix(60))
        return RecoveryError(.backupCorrupt, "backup \(backupID) contains a statement pg_dump never writes: \(shown)",
                             hint: "the file is damaged or not this database's dump; nothing of it ran outside the scratch database, "
                                 + "which was dropped; dbrestore --emergency picks the newest backup that verifies")
    }

    // MARK: - Kinds of objects

    /// What `CREATE`, `ALTER`, `DROP`, `COMMENT ON`, `SECURITY LABEL … ON` may name: objects that live
    /// in the database being restored (never DATABASE, ROLE, USER, GROUP, TABLESPACE, SYSTEM).
    private static let databaseObjectKinds: Set<String> = [
        "SCHEMA", "EXTENSION", "TYPE", "DOMAIN", "FUNCTION", "PROCEDURE", "ROUTINE", "AGGREGATE", "OPERATOR", "CAST",
        "COLLATION", "CONVERSION", "LANGUAGE", "TABLE", "SEQUENCE", "VIEW", "MATERIALIZED", "INDEX", "TRIGGER", "EVENT",
        "RULE", "POLICY", "PUBLICATION", "SUBSCRIPTION", "FOREIGN", "SERVER", "TEXT", "TRANSFORM", "ACCESS", "STATISTICS",
        "LARGE",
    ]
    private static let alterKinds = databaseObjectKinds.union(["DEFAULT"])   // ALTER DEFAULT PRIVILEGES
    private static let commentKinds = databaseObjectKinds.union(["COLUMN", "CONSTRAINT"])
    /// `GRANT … ON <kind>`: the object privileges pg_dump writes (never ON DATABASE, TABLESPACE, PARAMETER).
    private static let grantKinds: Set<String> = [
        "TABLE", "SEQUENCE", "FUNCTION", "PROCEDURE", "ROUTINE", "SCHEMA", "TYPE", "DOMAIN", "LANGUAGE", "LARGE", "FOREIGN",
    ]
    /// Words between CREATE and the kind.
    private static let createModifiers: Set<String> = ["OR", "REPLACE", "UNIQUE", "UNLOGGED", "TRUSTED", "PROCEDURAL", "DEFAULT", "CONSTRAINT"]

    private static func objectKind(_ tokens: ArraySlice<Token>, allowed: Set<String>) -> Bool {
        guard let kind = tokens.first?.word else { return false }
        if kind == "PROCEDURAL" { return tokens.dropFirst().first?.word == "LANGUAGE" }
        return allowed.contains(kind)
    }

    private static func createsAllowedKind(_ tokens: ArraySlice<Token>) -> Bool {
        var rest = tokens
        while let word = rest.first?.word, createModifiers.contains(word) { rest = rest.dropFirst() }
        // CREATE USER MAPPING FOR …, never CREATE USER name.
        if rest.first?.word == "USER" { return rest.dropFirst().prefix(2).map(\.word) == ["MAPPING", "FOR"] }
        return objectKind(rest, allowed: databaseObjectKinds)
    }

    /// `GRANT|REVOKE privileges ON kind name TO|FROM …`; role membership (`GRANT role TO role`)
    /// has no ON before its TO/FROM.
    private static func grantsObjectPrivileges(_ tokens: ArraySlice<Token>) -> Bool {
        for (index, token) in zip(tokens.indices, tokens) {
            switch token.word {
            case "ON": return objectKind(tokens[(index + 1)...], allowed: grantKinds)
            case "TO", "FROM": return false
            default: continue
            }
        }
        return false
    }

    // MARK: - SELECT

    /// The functions pg_dump calls: session settings, sequence values, large objects, and (pg_dump
    /// ≥ 18 with statistics) the statistics it restores.
    private static let dumpFunctions: Set<String> = [
        "PG_CATALOG.SET_CONFIG", "PG_CATALOG.SETVAL", "PG_CATALOG.LO_CREATE", "PG_CATALOG.LO_OPEN", "PG_CATALOG.LOWRITE",
        "PG_CATALOG.LO_CLOSE", "PG_CATALOG.LO_UNLINK", "PG_CATALOG.LO_FROM_BYTEA",
        "PG_CATALOG.PG_RESTORE_RELATION_STATS", "PG_CATALOG.PG_RESTORE_ATTRIBUTE_STATS",
    ]

    /// `SELECT [* FROM] pg_catalog.f(literal, …)` with nothing after: literals are strings, numbers,
    /// `true`/`false`/`NULL`, each optionally cast (`'…'::integer`, `::real[]`).
    private static func callsDumpFunction(_ tokens: ArraySlice<Token>) -> Bool {
        var rest = tokens
        if rest.first == .punctuation(UInt8(ascii: "*")) {
            guard rest.dropFirst().first?.word == "FROM" else { return false }
            rest = rest.dropFirst(2)
        }
        guard let function = rest.first?.word, dumpFunctions.contains(function),
              rest.dropFirst().first == .punctuation(UInt8(ascii: "(")) else { return false }
        var items = Array(rest.dropFirst(2))
        guard items.last == .punctuation(UInt8(ascii: ")")) else { return false }
        items.removeLast()
        var index = 0
        func take(_ byte: Unicode.Scalar) -> Bool {
            guard index < items.count, items[index] == .punctuation(UInt8(ascii: byte)) else { return false }
            index += 1
            return true
        }
        while index < items.count {
            _ = take("-")
            guard index < items.count else { return false }
            switch items[index] {
            case .string: break
            case .word(let word) where word.first?.isNumber == true || ["TRUE", "FALSE", "NULL"].contains(word): break
            default: return false
            }
            index += 1
            if take(":") {
                guard take(":"), index < items.count, items[index].word != nil else { return false }
                index += 1
                if take("[") { guard take("]") else { return false } }
            }
            if index < items.count { guard take(",") else { return false } }
        }
        return true
    }

    // MARK: - Tokens

    enum Token: Equatable {
        /// An unquoted word (letters, digits, `_`, `$`, `.`), upper-cased.
        case word(String)
        /// A `"…"` identifier: never a keyword.
        case quoted
        /// A string literal of any kind.
        case string
        case punctuation(UInt8)

        var word: String? { if case .word(let word) = self { return word } else { return nil } }
    }

    /// Splits a statement into tokens, comments dropped; nil when a quote or comment does not end.
    enum Tokens {
        static func read(_ sql: [UInt8], standardConformingStrings: Bool) -> [Token]? {
            var tokens: [Token] = []
            var index = 0
            func at(_ offset: Int) -> UInt8? { index + offset < sql.count ? sql[index + offset] : nil }
            func isWordByte(_ byte: UInt8) -> Bool {
                byte >= 0x80 || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "$") || byte == UInt8(ascii: ".")
                    || (byte | 0x20) >= UInt8(ascii: "a") && (byte | 0x20) <= UInt8(ascii: "z")
                    || byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
            }
            /// Skips a quoted run from the opening quote; false when it does not end.
            func skipQuoted(_ quote: UInt8, backslashEscapes: Bool) -> Bool {
                index += 1
                while let byte = at(0) {
                    index += 1
                    if backslashEscapes && byte == UInt8(ascii: "\\") {
                        index += 1
                    } else if byte == quote {
                        guard at(0) == quote else { return true }
                        index += 1
                    }
                }
                return false
            }
            while let byte = at(0) {
                if SQLLexer.isSpace(byte) {
                    index += 1
                } else if byte == UInt8(ascii: "-"), at(1) == UInt8(ascii: "-") {
                    while let next = at(0), next != UInt8(ascii: "\n") { index += 1 }
                } else if byte == UInt8(ascii: "/"), at(1) == UInt8(ascii: "*") {
                    var depth = 0
                    repeat {
                        if at(0) == UInt8(ascii: "/"), at(1) == UInt8(ascii: "*") { depth += 1; index += 2 }
                        else if at(0) == UInt8(ascii: "*"), at(1) == UInt8(ascii: "/") { depth -= 1; index += 2 }
                        else if at(0) == nil { return nil }
                        else { index += 1 }
                    } while depth > 0
                } else if byte == UInt8(ascii: "'") {
                    guard skipQuoted(byte, backslashEscapes: !standardConformingStrings) else { return nil }
                    tokens.append(.string)
                } else if byte == UInt8(ascii: "\"") {
                    guard skipQuoted(byte, backslashEscapes: false) else { return nil }
                    tokens.append(.quoted)
                } else if byte == UInt8(ascii: "$"), let end = dollarTag(sql, at: index) {
                    let tag = Array(sql[index..<end])
                    guard let close = find(tag, in: sql, from: end) else { return nil }
                    index = close + tag.count
                    tokens.append(.string)
                } else if isWordByte(byte) {
                    let start = index
                    while let next = at(0), isWordByte(next) { index += 1 }
                    let word = String(decoding: sql[start..<index], as: UTF8.self).uppercased()
                    // E'…', X'…', B'…', N'…', U&'…' are string literals.
                    if at(0) == UInt8(ascii: "'"), ["E", "X", "B", "N"].contains(word) {
                        guard skipQuoted(UInt8(ascii: "'"), backslashEscapes: word == "E" || !standardConformingStrings) else { return nil }
                        tokens.append(.string)
                    } else {
                        tokens.append(.word(word))
                    }
                } else {
                    tokens.append(.punctuation(byte))
                    index += 1
                }
            }
            return tokens
        }

        /// The end of a `$tag$` starting at `start`, if one does.
        private static func dollarTag(_ sql: [UInt8], at start: Int) -> Int? {
            var index = start + 1
            while index < sql.count, sql[index] != UInt8(ascii: "$") {
                let byte = sql[index]
                guard byte >= 0x80 || byte == UInt8(ascii: "_") || (byte | 0x20) >= UInt8(ascii: "a") && (byte | 0x20) <= UInt8(ascii: "z")
                        || index > start + 1 && byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else { return nil }
                index += 1
            }
            return index < sql.count ? index + 1 : nil
        }

        private static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int) -> Int? {
            guard needle.count <= haystack.count else { return nil }
            var index = start
            while index + needle.count <= haystack.count {
                if haystack[index] == needle[0], Array(haystack[index..<(index + needle.count)]) == needle { return index }
                index += 1
            }
            return nil
        }
    }
}
