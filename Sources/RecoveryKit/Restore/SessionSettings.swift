/// The session state a dump has set up at one point of its text — `SET …`,
/// `SELECT pg_catalog.set_config(…, false)`, `SET ROLE`, `SET SESSION AUTHORIZATION`, `RESET …` —
/// kept as the statements that set each parameter, in bytes exactly as the dump has them.
///
/// psql runs every statement on one connection, so each one runs under the settings written
/// before it. A parallel restore runs statements later and elsewhere (post-data after the rows,
/// COPY on other connections); each statement carries the settings in force where it stood and
/// the connection that runs it is brought to them first (`statements(toReach:)`).
struct SessionSettings: Equatable {
    /// A session parameter and the statement that set it.
    struct Entry: Equatable {
        var name: String
        var statement: [UInt8]
    }

    /// How a statement changes the session, if it does.
    enum Change: Equatable {
        case set(String)
        case reset(String)
        case resetAll
    }

    /// In the order the dump first set them.
    private(set) var entries: [Entry] = []

    /// Parameters that decide who runs the statements; `RESET ALL` leaves them alone.
    private static let identity = ["session_authorization", "role"]
    /// Parameters that decide how the server reads the bytes of the statements that follow.
    private static let encoding = ["client_encoding", "standard_conforming_strings"]

    /// Updates the state with `statement` if it is a session setting.
    ///
    /// - Returns: whether it was one (it then needs no running of its own: it is applied with the
    ///   state to whatever connection runs the statements after it).
    mutating func absorb(_ statement: [UInt8]) -> Bool {
        guard let change = Self.change(made: statement) else { return false }
        switch change {
        case .set(let name):
            if let index = entries.firstIndex(where: { $0.name == name }) {
                entries[index].statement = statement
            } else {
                entries.append(Entry(name: name, statement: statement))
            }
        case .reset(let name):
            entries.removeAll { $0.name == name }
        case .resetAll:
            entries.removeAll { !Self.identity.contains($0.name) }
        }
        return true
    }

    /// The statement in force for a parameter, if the dump set it.
    subscript(name: String) -> [UInt8]? {
        entries.first { $0.name == name }?.statement
    }

    /// Whether plain `'…'` strings are standard (no backslash escapes) under these settings.
    var standardConformingStrings: Bool {
        guard let statement = self["standard_conforming_strings"], let value = Self.value(setBy: statement) else { return true }
        // The spellings of false that the server's boolean parser accepts (and DEFAULT, which is on).
        let text = String(decoding: value, as: UTF8.self).lowercased()
        return !["off", "of", "false", "fals", "fal", "fa", "f", "no", "n", "0"].contains(text)
    }

    /// The `client_encoding` the dump set (e.g. `UTF8`, `SQL_ASCII`), the encoding of the bytes after it; nil if it set none.
    var clientEncoding: String? {
        self["client_encoding"].flatMap(Self.value(setBy:)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The statements that take a connection whose dump settings are `current` to these.
    ///
    /// Encoding parameters come first (they decide how the server reads the bytes of the others);
    /// a change of role or session authorization first returns to the login role, so that the
    /// other settings are made with the rights the dump made them with, then sets the new one.
    func statements(from current: SessionSettings) -> [[UInt8]] {
        guard current != self else { return [] }
        var statements: [[UInt8]] = []
        let identityChanges = Self.identity.contains { current[$0] != self[$0] }
        let names = (entries.map(\.name) + current.entries.map(\.name)).filter { !Self.identity.contains($0) }
        var changed: [String] = []
        for name in names where !changed.contains(name) && current[name] != self[name] { changed.append(name) }
        changed.sort { Self.encoding.contains($0) && !Self.encoding.contains($1) }
        let returnToLogin = identityChanges || !changed.isEmpty && Self.identity.contains { current[$0] != nil }
        if returnToLogin {
            if current["role"] != nil { statements.append(Array("RESET ROLE".utf8)) }
            if current["session_authorization"] != nil { statements.append(Array("RESET SESSION AUTHORIZATION".utf8)) }
        }
        for name in changed {
            statements.append(self[name] ?? Array("RESET \(name)".utf8))
        }
        if returnToLogin {
            for name in Self.identity { if let statement = self[name] { statements.append(statement) } }
        }
        return statements
    }

    // MARK: - Recognising session settings

    /// What `statement` changes in the session, or nil when it is not a session setting
    /// (`SET LOCAL`, `SET TRANSACTION`, `SET CONSTRAINTS`, `set_config(…, true)` and everything else).
    static func change(made statement: [UInt8]) -> Change? {
        var words = Words(statement)
        switch words.keyword() {
        case "set":
            var name = words.keyword()
            if name == "session" {
                let next = words.keyword()
                if next == "authorization" { return .set("session_authorization") }
                if next == "characteristics" { return nil }
                name = next
            }
            switch name {
            case nil, "local", "transaction", "constraints": return nil
            case "time": return words.keyword() == "zone" ? .set("timezone") : nil
            case "names": return .set("client_encoding")
            case "schema": return .set("search_path")
            case "xml": return words.keyword() == "option" ? .set("xmloption") : nil
            case let name?: return .set(name)
            }
        case "reset":
            switch words.keyword() {
            case nil: return nil
            case "all": return .resetAll
            case "session": return words.keyword() == "authorization" ? .reset("session_authorization") : nil
            case "time": return words.keyword() == "zone" ? .reset("timezone") : nil
            case let name?: return .reset(name)
            }
        case "select":
            let function = words.keyword()
            guard function == "pg_catalog.set_config" || function == "set_config" else { return nil }
            words.skipSpace()
            guard words.take(UInt8(ascii: "(")) else { return nil }
            let literals = Self.literals(in: statement)
            guard literals.count >= 2, let name = words.value(), words.skipSpace(), words.take(UInt8(ascii: ",")),
                  Self.endsWith(statement, "false)") else { return nil }
            return .set(String(decoding: name, as: UTF8.self).lowercased())
        default:
            return nil
        }
    }

    /// The value a setting statement gives: `SET name {=|TO} value` or `set_config('name', 'value', false)`.
    private static func value(setBy statement: [UInt8]) -> [UInt8]? {
        var words = Words(statement)
        if words.keyword() == "select" { return literals(in: statement).dropFirst().first }
        if words.keyword() == "session" { _ = words.keyword() }
        words.skipSpace()
        if !words.take(UInt8(ascii: "=")) { _ = words.keyword() }
        return words.value()
    }

    /// The contents of the plain `'…'` literals of a statement (`''` undoubled).
    private static func literals(in statement: [UInt8]) -> [[UInt8]] {
        var words = Words(statement)
        var found: [[UInt8]] = []
        while !words.atEnd {
            if words.peek == UInt8(ascii: "'"), let value = words.value() { found.append(value) } else { words.advance() }
        }
        return found
    }

    /// Whether the statement ends with `suffix`, ignoring whitespace and ASCII case.
    private static func endsWith(_ statement: [UInt8], _ suffix: String) -> Bool {
        let compact = statement.filter { !SQLLexer.isSpace($0) }.map { $0 >= 65 && $0 <= 90 ? $0 | 0x20 : $0 }
        return compact.count >= suffix.utf8.count && Array(compact.suffix(suffix.utf8.count)) == Array(suffix.utf8)
    }
}

/// A tiny reader over the bytes of a settings statement: keywords, names, literals.
private struct Words {
    private let bytes: [UInt8]
    private var index = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var atEnd: Bool { index >= bytes.count }
    var peek: UInt8? { atEnd ? nil : bytes[index] }
    mutating func advance() { index += 1 }

    @discardableResult
    mutating func skipSpace() -> Bool {
        while let byte = peek, SQLLexer.isSpace(byte) { index += 1 }
        return true
    }

    mutating func take(_ byte: UInt8) -> Bool {
        guard peek == byte else { return false }
        index += 1
        return true
    }

    /// The next word (letters, digits, `_`, `$`, dotted parts; `"…"` quoted), lower-cased, if any.
    mutating func keyword() -> String? {
        skipSpace()
        var word: [UInt8] = []
        while let byte = peek {
            if byte == UInt8(ascii: "\"") {
                index += 1
                while let quoted = peek {
                    index += 1
                    if quoted == UInt8(ascii: "\"") {
                        guard take(UInt8(ascii: "\"")) else { break }
                    }
                    word.append(quoted)
                }
            } else if byte >= 0x80 || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "$") || byte == UInt8(ascii: ".")
                        || (byte | 0x20) >= UInt8(ascii: "a") && (byte | 0x20) <= UInt8(ascii: "z")
                        || byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") {
                word.append(byte >= 65 && byte <= 90 ? byte | 0x20 : byte)
                index += 1
            } else {
                break
            }
        }
        return word.isEmpty ? nil : String(decoding: word, as: UTF8.self)
    }

    /// The next value: a `'…'` literal's contents, or a bare word as written.
    mutating func value() -> [UInt8]? {
        skipSpace()
        guard peek == UInt8(ascii: "'") else {
            let start = index
            while let byte = peek, !SQLLexer.isSpace(byte), byte != UInt8(ascii: ","), byte != UInt8(ascii: ")") { index += 1 }
            return index > start ? Array(bytes[start..<index]) : nil
        }
        index += 1
        var value: [UInt8] = []
        while let byte = peek {
            index += 1
            if byte == UInt8(ascii: "'") {
                guard take(UInt8(ascii: "'")) else { return value }
            }
            value.append(byte)
        }
        return value
    }
}
