/// Splits SQL into statements exactly where psql does: a port of psql's lexer
/// (`src/fe_utils/psqlscan.l`, PostgreSQL 15) and of the line handling of its main loop
/// (`src/bin/psql/mainloop.c`), on bytes, never decoding text — a dump may be LATIN1 or SQL_ASCII.
///
/// Fed one line at a time (without its `\n`), as psql reads a script. A statement ends at a
/// semicolon outside quotes, comments, parentheses and `BEGIN … END` bodies of
/// `CREATE [OR REPLACE] FUNCTION|PROCEDURE`. Like psql, the lexer
/// - drops whitespace and `--` comments before a statement, keeps them inside one (psql ≥ 15),
///   and keeps `/* … */` comments (nested);
/// - joins lines with `\n`, and skips empty lines unless inside a quoted token;
/// - knows `'…'` (with `''`), `E'…'` (backslash escapes), `U&'…'`, `B'…'`, `X'…'`, `N'…'`,
///   `"…"`, `U&"…"`, `$tag$…$tag$`, string continuation across a newline, and
///   `standard_conforming_strings = off` (backslash escapes in plain `'…'`);
/// - optionally stops at psql meta-commands (a backslash outside quotes), with `\;` kept as a
///   semicolon that does not end the statement.
///
/// Not done, because nothing the toolkit reads needs it: psql variable substitution (`:name`)
/// and the byte juggling for client encodings that are not server encodings (SJIS, BIG5, …).
///
/// The one SQL splitter of the toolkit: restores (`DumpScanner`) and migrations
/// (`SQLStatements`) both use it.
struct SQLLexer {
    /// What `next(in:from:)` found.
    enum Piece: Equatable {
        /// A whole statement: what psql would send, without its semicolon and trailing whitespace.
        case statement([UInt8])
        /// A psql meta-command (a backslash outside quotes): the rest of the line from the backslash.
        case metaCommand(Range<Int>)
    }

    /// psql's exclusive start conditions that can span lines (`xb`/`xh` and `xd`/`xui` act alike here).
    private enum State: Equatable {
        case initial
        case blockComment
        case bitString
        case quoted
        case extended
        case unicodeString
        case quoteStop
        case dollarQuoted
        case delimitedIdentifier
    }

    /// Whether `'…'` is a standard string (`standard_conforming_strings = on`) or takes backslash escapes.
    var standardConformingStrings = true
    /// Whether a backslash outside quotes starts a meta-command (psql scripts such as dumps) or is
    /// an ordinary character (migrations, which are plain SQL).
    let recognizesMetaCommands: Bool

    private var state = State.initial
    /// The string kind a `quoteStop` returns to if the string continues on the next line.
    private var stateBeforeQuoteStop = State.quoted
    private var commentDepth = 0
    private var parenDepth = 0
    private var beginDepth = 0
    private var identifierCount = 0
    /// First letters of the statement's first four identifiers when they are CREATE, OR, REPLACE,
    /// FUNCTION or PROCEDURE (psql's `identifiers[4]`).
    private var identifiers: [UInt8] = [0, 0, 0, 0]
    private var dollarTag: [UInt8] = []
    /// psql's query buffer.
    private var buffer: [UInt8] = []
    /// Whether the buffer holds anything besides comments and whitespace.
    private var significant = false

    /// Whether no statement is in progress: the next line starts afresh (a `-- Name:` header of
    /// pg_dump's here is a comment between objects, not text inside one).
    var isBetweenStatements: Bool { state == .initial && buffer.isEmpty && parenDepth == 0 && beginDepth == 0 }

    init(recognizesMetaCommands: Bool = true) {
        self.recognizesMetaCommands = recognizesMetaCommands
    }

    /// Starts the next line, as psql's main loop does: an empty line outside a quoted token is
    /// skipped; otherwise a newline joins it to a statement in progress.
    ///
    /// - Returns: whether the line is to be scanned with `next(in:from:)`.
    mutating func startLine(empty: Bool) -> Bool {
        let inQuote = state != .initial && state != .quoteStop
        if empty && !inQuote { return false }
        if !buffer.isEmpty { buffer.append(UInt8(ascii: "\n")) }
        return !empty
    }

    /// Scans `line` (one line without its `\n`, after `startLine`) from `offset` to the end of the
    /// next statement or meta-command, or to the end of the line.
    ///
    /// - Returns: what was found (nil at the end of the line) and where scanning stopped.
    mutating func next(in line: UnsafeRawBufferPointer, from offset: Int) -> (piece: Piece?, next: Int) {
        let count = line.count
        var index = offset
        var echoStart = offset
        func byte(_ at: Int) -> UInt8? { at < count ? line[at] : nil }
        /// Moves the scanned text since `echoStart` into the buffer (psql's ECHO).
        func echo(upTo end: Int) {
            if end > echoStart { buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: line[echoStart..<end])) }
            echoStart = end
        }
        /// Leaves out `start..<end` (psql's rules that do not ECHO).
        func skip(_ start: Int, to end: Int) {
            echo(upTo: start)
            echoStart = end
        }

        while index < count {
            let character = line[index]
            switch state {
            case .blockComment:
                if character == UInt8(ascii: "/"), byte(index + 1) == UInt8(ascii: "*") {
                    commentDepth += 1
                    index += 2
                } else if character == UInt8(ascii: "*") {
                    var end = index
                    while end < count, line[end] == UInt8(ascii: "*") { end += 1 }
                    if byte(end) == UInt8(ascii: "/") {
                        if commentDepth <= 0 { state = .initial } else { commentDepth -= 1 }
                        end += 1
                    }
                    index = end
                } else {
                    index += 1
                }
            case .bitString:
                if character == UInt8(ascii: "'") { stopQuote(returningTo: .bitString) }
                index += 1
            case .quoted, .unicodeString:
                if character == UInt8(ascii: "'") {
                    if byte(index + 1) == UInt8(ascii: "'") { index += 2; continue }
                    stopQuote(returningTo: state)
                }
                index += 1
            case .extended:
                if character == UInt8(ascii: "'") {
                    if byte(index + 1) == UInt8(ascii: "'") { index += 2; continue }
                    stopQuote(returningTo: .extended)
                    index += 1
                } else if character == UInt8(ascii: "\\") {
                    // Every escape (\x, octal, hex, \u…) at least takes the next byte; a backslash
                    // ending the line takes nothing more (psql's `<xe>.`).
                    index += index + 1 < count ? 2 : 1
                } else {
                    index += 1
                }
            case .quoteStop:
                if let resume = Self.quoteContinuation(in: line, at: index) {
                    state = stateBeforeQuoteStop
                    index = resume
                } else {
                    state = .initial
                }
            case .dollarQuoted:
                guard character == UInt8(ascii: "$") else {
                    index += 1
                    continue
                }
                if let end = Self.dollarDelimiterEnd(in: line, at: index) {
                    if end - index == dollarTag.count, Self.equal(line, index..<end, dollarTag) {
                        state = .initial
                        index = end
                    } else {
                        // `$junk$tag$`: the closing `$` may open the real delimiter.
                        index = end - 1
                    }
                } else {
                    index = Self.identifierEnd(in: line, from: index + 1, allowDollar: false)
                }
            case .delimitedIdentifier:
                if character == UInt8(ascii: "\"") {
                    if byte(index + 1) == UInt8(ascii: "\"") { index += 2; continue }
                    state = .initial
                }
                index += 1
            case .initial:
                switch character {
                case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"), 0x0C:
                    var end = index + 1
                    while end < count, Self.isSpace(line[end]) { end += 1 }
                    echo(upTo: index)
                    if buffer.isEmpty { skip(index, to: end) }
                    index = end
                case UInt8(ascii: "-") where byte(index + 1) == UInt8(ascii: "-"):
                    // Since PostgreSQL 15 psql keeps `--` comments inside a statement (not before one).
                    var end = index + 2
                    while end < count, line[end] != UInt8(ascii: "\n"), line[end] != UInt8(ascii: "\r") { end += 1 }
                    echo(upTo: index)
                    if buffer.isEmpty { skip(index, to: end) }
                    index = end
                case UInt8(ascii: "/") where byte(index + 1) == UInt8(ascii: "*"):
                    state = .blockComment
                    commentDepth = 0
                    index += 2
                case UInt8(ascii: "'"):
                    significant = true
                    state = standardConformingStrings ? .quoted : .extended
                    index += 1
                case UInt8(ascii: "\""):
                    significant = true
                    state = .delimitedIdentifier
                    index += 1
                case UInt8(ascii: "$"):
                    significant = true
                    if let end = Self.dollarDelimiterEnd(in: line, at: index) {
                        dollarTag = Array(UnsafeRawBufferPointer(rebasing: line[index..<end]))
                        state = .dollarQuoted
                        index = end
                    } else if let digit = byte(index + 1), Self.isDigit(digit) {
                        index = Self.digitsEnd(in: line, from: index + 1)
                    } else {
                        // `$` alone, or `$name` without a closing `$`: only the `$` (psql's yyless(1)).
                        index += 1
                    }
                case UInt8(ascii: "("):
                    significant = true
                    parenDepth += 1
                    index += 1
                case UInt8(ascii: ")"):
                    significant = true
                    if parenDepth > 0 { parenDepth -= 1 }
                    index += 1
                case UInt8(ascii: ";"):
                    index += 1
                    guard parenDepth == 0 && beginDepth == 0 else {
                        significant = true
                        continue
                    }
                    echo(upTo: index - 1)
                    identifierCount = 0
                    return (takeStatement(), index)
                case UInt8(ascii: "\\") where recognizesMetaCommands:
                    if let next = byte(index + 1), next == UInt8(ascii: ";") || next == UInt8(ascii: ":") {
                        // `\;` and `\:` put the character in the buffer without their usual meaning.
                        skip(index, to: index + 1)
                        significant = true
                        if next == UInt8(ascii: ";") { identifierCount = 0 }
                        index += 2
                        continue
                    }
                    echo(upTo: index)
                    return (.metaCommand(index..<count), count)
                default:
                    significant = true
                    index = token(in: line, at: index)
                }
            }
        }
        echo(upTo: count)
        return (nil, count)
    }

    /// What is left at the end of the input: a last statement without a semicolon, as psql sends it.
    mutating func finish() -> [UInt8]? {
        defer {
            state = .initial
            parenDepth = 0
            beginDepth = 0
            identifierCount = 0
        }
        guard case .statement(let statement)? = takeStatement() else { return nil }
        return statement
    }

    /// A statement of a whole script as psql runs it.
    struct ScriptStatement: Equatable {
        /// What psql sends, without its semicolon and trailing whitespace.
        var sql: [UInt8]
        /// For `COPY … FROM STDIN`: the rows psql reads from the script itself, from the line after
        /// the statement up to a line `\.` (or the end of the script), each line with its newline.
        var copyRows: [UInt8]?
    }

    /// Every statement of a whole script (lines split at `\n`), for callers that hold all of it.
    /// Like psql, it reads the strings after `SET standard_conforming_strings = off` with escapes.
    ///
    /// - Parameter standardConformingStrings: the server's setting when the script starts (psql
    ///   reads it from the server: a database or role may have it off); `RESET` returns to it.
    static func statements(in script: [UInt8], recognizesMetaCommands: Bool = false,
                           standardConformingStrings: Bool = true) -> [[UInt8]] {
        self.script(script, recognizesMetaCommands: recognizesMetaCommands, standardConformingStrings: standardConformingStrings).map(\.sql)
    }

    /// Every statement of a whole script, with the rows of each `COPY … FROM STDIN`: like psql, the
    /// lines after such a statement are its data, not SQL, up to a line `\.` or the end of the
    /// script. Statements that follow the COPY on its own line run after it, as in psql.
    ///
    /// - Parameter copiesFromStdin: whether a statement is a `COPY … FROM STDIN` (the caller's
    ///   keyword reading; nil: no statement is).
    static func script(_ script: [UInt8], recognizesMetaCommands: Bool = false, standardConformingStrings: Bool = true,
                       copiesFromStdin: (([UInt8]) -> Bool)? = nil) -> [ScriptStatement] {
        var lexer = SQLLexer(recognizesMetaCommands: recognizesMetaCommands)
        lexer.standardConformingStrings = standardConformingStrings
        var settings = SessionSettings()
        var statements: [ScriptStatement] = []
        script.withUnsafeBytes { text in
            /// Where the line starting at `start` ends (its `\n`, or the end of the script).
            func lineEnd(from start: Int) -> Int {
                var end = start
                while end < text.count, text[end] != UInt8(ascii: "\n") { end += 1 }
                return end
            }
            var lineStart = 0
            while lineStart <= text.count {
                let end = lineEnd(from: lineStart)
                if end == text.count, lineStart == text.count { break }
                let line = UnsafeRawBufferPointer(rebasing: text[lineStart..<end])
                var copies: [Int] = []
                if lexer.startLine(empty: line.isEmpty) {
                    var offset = 0
                    while offset < line.count {
                        let (piece, next) = lexer.next(in: line, from: offset)
                        if case .statement(let statement)? = piece {
                            if copiesFromStdin?(statement) == true { copies.append(statements.count) }
                            statements.append(ScriptStatement(sql: statement))
                            if settings.absorb(statement) {
                                lexer.standardConformingStrings = settings["standard_conforming_strings"] == nil
                                    ? standardConformingStrings : settings.standardConformingStrings
                            }
                        }
                        offset = next
                    }
                }
                lineStart = end + 1
                // psql's handleCopyIn: each COPY of the line reads the lines after it, in turn.
                for copy in copies {
                    var rows: [UInt8] = []
                    while lineStart < text.count {
                        let rowEnd = lineEnd(from: lineStart)
                        let row = text[lineStart..<rowEnd]
                        lineStart = rowEnd + 1
                        if row.elementsEqual([UInt8(ascii: "\\"), UInt8(ascii: ".")]) || row.elementsEqual([UInt8(ascii: "\\"), UInt8(ascii: "."), 13]) { break }
                        rows.append(contentsOf: row)
                        if rowEnd < text.count { rows.append(UInt8(ascii: "\n")) }
                    }
                    statements[copy].copyRows = rows
                }
            }
        }
        if let last = lexer.finish() {
            // A COPY at the very end has no rows left to read: psql ends it empty.
            statements.append(ScriptStatement(sql: last, copyRows: copiesFromStdin?(last) == true ? [] : nil))
        }
        return statements
    }

    // MARK: - Tokens of the initial state

    private mutating func stopQuote(returningTo kind: State) {
        stateBeforeQuoteStop = kind
        state = .quoteStop
    }

    /// Scans one token that starts at `index` with a byte that is not whitespace, a quote, `$`,
    /// a parenthesis, `;`, a comment start or a meta-command; returns where it ends.
    private mutating func token(in line: UnsafeRawBufferPointer, at index: Int) -> Int {
        let count = line.count
        let character = line[index]
        func byte(_ at: Int) -> UInt8? { at < count ? line[at] : nil }
        let lower = character | 0x20
        if Self.isASCIILetter(character) {
            // Prefixed strings and identifiers: B'…', X'…', N'…', E'…', U&'…', U&"…".
            if byte(index + 1) == UInt8(ascii: "'") {
                switch lower {
                case UInt8(ascii: "b"), UInt8(ascii: "x"):
                    state = .bitString
                    return index + 2
                case UInt8(ascii: "e"):
                    state = .extended
                    return index + 2
                case UInt8(ascii: "n"):
                    // psql eats only the N; the quote starts an ordinary string.
                    return index + 1
                default:
                    break
                }
            }
            if lower == UInt8(ascii: "u"), byte(index + 1) == UInt8(ascii: "&") {
                if byte(index + 2) == UInt8(ascii: "'") {
                    state = .unicodeString
                    return index + 3
                }
                if byte(index + 2) == UInt8(ascii: "\"") {
                    state = .delimitedIdentifier
                    return index + 3
                }
                // `U&` alone: only the U (psql's xufailed), which is not an identifier.
                return index + 1
            }
        }
        if Self.isIdentifierStart(character) {
            let end = Self.identifierEnd(in: line, from: index + 1, allowDollar: true)
            identifier(UnsafeRawBufferPointer(rebasing: line[index..<end]))
            return end
        }
        if Self.isDigit(character) || character == UInt8(ascii: ".") && byte(index + 1).map(Self.isDigit) == true {
            return numberEnd(in: line, at: index)
        }
        return index + 1
    }

    /// psql's `{identifier}` rule: tracks `CREATE [OR REPLACE] FUNCTION|PROCEDURE` statements, in
    /// which `BEGIN` (and `CASE` inside it) opens a block that `END` closes, outside parentheses.
    private mutating func identifier(_ word: UnsafeRawBufferPointer) {
        if identifierCount == 0 { identifiers = [0, 0, 0, 0] }
        if Self.isKeyword(word, "create") || Self.isKeyword(word, "function") || Self.isKeyword(word, "procedure")
            || Self.isKeyword(word, "or") || Self.isKeyword(word, "replace") {
            if identifierCount < identifiers.count { identifiers[identifierCount] = word[0] | 0x20 }
        }
        identifierCount += 1
        let c = UInt8(ascii: "c"), f = UInt8(ascii: "f"), p = UInt8(ascii: "p"), o = UInt8(ascii: "o"), r = UInt8(ascii: "r")
        guard identifiers[0] == c,
              identifiers[1] == f || identifiers[1] == p
                || identifiers[1] == o && identifiers[2] == r && (identifiers[3] == f || identifiers[3] == p),
              parenDepth == 0 else { return }
        if Self.isKeyword(word, "begin") {
            beginDepth += 1
        } else if Self.isKeyword(word, "case") {
            if beginDepth >= 1 { beginDepth += 1 }
        } else if Self.isKeyword(word, "end") {
            if beginDepth > 0 { beginDepth -= 1 }
        }
    }

    /// The end of a number token (psql's integer, decimal, real and, from PostgreSQL 15, the
    /// `*_junk` rules that take one identifier character after a number).
    private func numberEnd(in line: UnsafeRawBufferPointer, at start: Int) -> Int {
        let count = line.count
        var end = Self.digitsEnd(in: line, from: start)
        if end < count, line[end] == UInt8(ascii: "."), !(end + 1 < count && line[end + 1] == UInt8(ascii: ".")) {
            end = Self.digitsEnd(in: line, from: end + 1)
        }
        var exponent = false
        if end < count, line[end] | 0x20 == UInt8(ascii: "e") {
            var digits = end + 1
            if digits < count, line[digits] == UInt8(ascii: "+") || line[digits] == UInt8(ascii: "-") { digits += 1 }
            if digits < count, Self.isDigit(line[digits]) {
                end = Self.digitsEnd(in: line, from: digits)
                exponent = true
            }
        }
        // `1e` without digits is realfail (the E is given back); any other identifier start is junk.
        if end < count, Self.isIdentifierStart(line[end]), exponent || line[end] | 0x20 != UInt8(ascii: "e") {
            end += 1
        }
        return end
    }

    private mutating func takeStatement() -> Piece? {
        defer {
            buffer.removeAll(keepingCapacity: true)
            significant = false
        }
        guard significant else { return nil }
        var end = buffer.count
        while end > 0, Self.isSpace(buffer[end - 1]) { end -= 1 }
        return .statement(Array(buffer[0..<end]))
    }

    // MARK: - Byte classes

    /// After a closing quote at `index - 1`: psql's `{quotecontinue}` (whitespace holding a
    /// newline, then a quote) continues the string. Returns where the string goes on, if it does.
    private static func quoteContinuation(in line: UnsafeRawBufferPointer, at start: Int) -> Int? {
        let count = line.count
        var index = start
        func skipComment() -> Bool {
            guard index + 1 < count, line[index] == UInt8(ascii: "-"), line[index + 1] == UInt8(ascii: "-") else { return false }
            while index < count, line[index] != UInt8(ascii: "\n"), line[index] != UInt8(ascii: "\r") { index += 1 }
            return true
        }
        // {horiz_whitespace}* {newline} {special_whitespace}* {quote}
        while index < count {
            if line[index] == UInt8(ascii: " ") || line[index] == UInt8(ascii: "\t") || line[index] == 0x0C {
                index += 1
            } else if !skipComment() {
                break
            }
        }
        guard index < count, line[index] == UInt8(ascii: "\n") || line[index] == UInt8(ascii: "\r") else { return nil }
        index += 1
        while index < count {
            if isSpace(line[index]) {
                index += 1
            } else if skipComment() {
                guard index < count else { return nil }
                index += 1
            } else {
                break
            }
        }
        guard index < count, line[index] == UInt8(ascii: "'") else { return nil }
        return index + 1
    }

    /// `$tag$` or `$$` at `index` (psql's `{dolqdelim}`); returns the index after it.
    private static func dollarDelimiterEnd(in line: UnsafeRawBufferPointer, at index: Int) -> Int? {
        let count = line.count
        var end = index + 1
        if end < count, isIdentifierStart(line[end]) {
            end = identifierEnd(in: line, from: end + 1, allowDollar: false)
        }
        guard end < count, line[end] == UInt8(ascii: "$") else { return nil }
        return end + 1
    }

    private static func identifierEnd(in line: UnsafeRawBufferPointer, from start: Int, allowDollar: Bool) -> Int {
        var end = start
        while end < line.count {
            let byte = line[end]
            guard isIdentifierStart(byte) || isDigit(byte) || allowDollar && byte == UInt8(ascii: "$") else { break }
            end += 1
        }
        return end
    }

    private static func digitsEnd(in line: UnsafeRawBufferPointer, from start: Int) -> Int {
        var end = start
        while end < line.count, isDigit(line[end]) { end += 1 }
        return end
    }

    private static func equal(_ line: UnsafeRawBufferPointer, _ range: Range<Int>, _ bytes: [UInt8]) -> Bool {
        guard range.count == bytes.count else { return false }
        for (offset, byte) in bytes.enumerated() where line[range.lowerBound + offset] != byte { return false }
        return true
    }

    /// ASCII case-insensitive comparison with a lower-case keyword (psql's `pg_strcasecmp`).
    private static func isKeyword(_ word: UnsafeRawBufferPointer, _ keyword: StaticString) -> Bool {
        guard word.count == keyword.utf8CodeUnitCount else { return false }
        let letters = UnsafeRawBufferPointer(start: keyword.utf8Start, count: keyword.utf8CodeUnitCount)
        for index in 0..<word.count {
            let byte = word[index]
            let folded = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
            if folded != letters[index] { return false }
        }
        return true
    }

    static func isSpace(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") || byte == 0x0C
    }

    private static func isASCIILetter(_ byte: UInt8) -> Bool {
        (byte | 0x20) >= UInt8(ascii: "a") && (byte | 0x20) <= UInt8(ascii: "z")
    }

    private static func isDigit(_ byte: UInt8) -> Bool {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }

    /// `[A-Za-z\200-\377_]`
    private static func isIdentifierStart(_ byte: UInt8) -> Bool {
        byte >= 0x80 || byte == UInt8(ascii: "_") || isASCIILetter(byte)
    }
}
