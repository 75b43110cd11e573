import Foundation

/// Reads a plain-format pg_dump stream the way psql does and tells its consumer what it contains,
/// in order: SQL statements, and for each `COPY … FROM stdin;` the COPY statement followed by its
/// rows — all as bytes, never decoded (a dump may be LATIN1 or SQL_ASCII).
///
/// Statements are split by `SQLLexer` (psql's own rules). Session settings (`SET …`,
/// `set_config(…, false)`, roles) are not handed over as statements: every statement carries the
/// `SessionSettings` in force where it stood, so that whoever runs it, wherever, runs it as psql would.
///
/// Streaming and bounded: bytes arrive in chunks of any size; only an unfinished line is carried
/// between chunks. Rows are handed over in runs of whole lines, never one call per row — except a
/// row longer than `rowPieceBytes` (a 200 MB document or bytea value): it is never held whole, but
/// handed over in pieces as its bytes arrive (as psql sends it), the last piece ending at its newline.
/// A run that does not end with a newline therefore ends inside such a row, and the next run goes on
/// with it: whoever splits runs over several COPYs must keep a row's pieces on one of them, in order.
/// psql's `\restrict` / `\unrestrict` lines (pg_dump ≥ 15.14) are skipped: nothing here runs psql
/// meta-commands, which is what they guard against. Any other meta-command is refused, and so is
/// every statement pg_dump never writes (`DumpStatementPolicy`), before it reaches the consumer.
final class DumpScanner {
    /// A statement of the dump and the session settings in force where it stood.
    struct Statement {
        /// The statement's bytes, as psql would send them (without the semicolon).
        var sql: [UInt8]
        var settings: SessionSettings

        /// The statement for messages and logs: its first line up to its first string or
        /// dollar-quoted literal (which may hold a secret: `CREATE SUBSCRIPTION … CONNECTION
        /// 'password=…'`, `CREATE USER MAPPING … OPTIONS (password '…')`), at most 80 bytes,
        /// decoded leniently; `…` marks what was left out.
        var excerpt: String {
            let firstLine = sql.prefix { $0 != UInt8(ascii: "\n") }
            let shown = firstLine.prefix { $0 != UInt8(ascii: "'") && $0 != UInt8(ascii: "$") }.prefix(80)
            let text = String(decoding: shown, as: UTF8.self)
            return shown.count < sql.count ? text + "…" : text
        }

        /// The statement decoded leniently, for recognising its kind (never sent anywhere).
        var text: String { String(decoding: sql, as: UTF8.self) }
    }

    enum Event {
        case statement(Statement)
        case copyStart(Statement)
        /// Rows, whole lines; or a piece of a row longer than `rowPieceBytes` (see the type's description).
        case copyRows(UnsafeRawBufferPointer)
        case copyEnd
    }

    /// Rows longer than this are handed over in pieces rather than carried whole: 4 MiB, or
    /// `DBRECOVERY_COPY_PIECE_KB` (internal, 4 or more: the tests cut a 1 MB value in 64 KB pieces).
    static let defaultRowPieceBytes: Int = {
        if let text = ProcessInfo.processInfo.environment["DBRECOVERY_COPY_PIECE_KB"], let kilobytes = Int(text), kilobytes >= 4 {
            return kilobytes << 10
        }
        return 4 << 20
    }()

    /// See `defaultRowPieceBytes`; at least 4 bytes, so that the end-of-data line (`\.`, CR, newline)
    /// is always carried whole and recognised.
    let rowPieceBytes: Int

    private var lexer = SQLLexer(recognizesMetaCommands: true)
    /// The session settings in force where the scanner is.
    private(set) var settings = SessionSettings()
    private var inCopy = false
    /// The dump's unfinished last line: a statement's line (psql too holds a whole statement), or the
    /// start of a COPY row, at most `rowPieceBytes` of it.
    private var carry: [UInt8] = []
    /// Inside a COPY row longer than `rowPieceBytes` whose first pieces were handed over: the rest
    /// goes to the consumer as it arrives, up to and with its newline.
    private var inLongRow = false
    private let consumer: (Event) throws -> Void
    /// Bytes of the dump read before the current chunk: where each line stands in the stream.
    private var consumed: UInt64 = 0

    /// Told of each line that starts with `--` between statements (pg_dump's `-- Name: …` headers),
    /// with its offset in the uncompressed dump. For the table of contents (`DumpContentsBuilder`).
    var onCommentLine: ((UnsafeRawBufferPointer, UInt64) throws -> Void)?
    /// Told of each session setting taken in (`SET …`, `set_config(…)`), with the offset of the
    /// line where it ended: a reader that skips part of the dump replays these to be where psql is.
    var onSetting: (([UInt8], UInt64) throws -> Void)?
    /// Offset in the dump of the line being read.
    private var lineOffset: UInt64 = 0
    /// Lines of the current (or, at `copyEnd`, the just finished) COPY block's rows. In COPY's text
    /// format each row is one line (newlines in values are written `\n`), so this is the number of
    /// rows the block loads: counted as the rows are split off, at no extra pass over their bytes.
    private(set) var copyRowCount: Int64 = 0
    /// The backup the dump belongs to, for messages.
    private let backupID: String

    /// - Parameter rowPieceBytes: see `defaultRowPieceBytes` (tests cut rows finer).
    init(backupID: String, rowPieceBytes: Int = DumpScanner.defaultRowPieceBytes, _ consumer: @escaping (Event) throws -> Void) {
        self.backupID = backupID
        self.rowPieceBytes = max(4, rowPieceBytes)
        self.consumer = consumer
    }

    /// Reads the next bytes of the dump.
    ///
    /// - Throws: `RecoveryError(.backupCorrupt)` for a meta-command it will not run or a statement
    ///   pg_dump never writes; whatever the consumer throws.
    func write(_ chunk: UnsafeRawBufferPointer) throws {
        defer { consumed += UInt64(chunk.count) }
        var start = 0
        let firstNewline = Self.find(UInt8(ascii: "\n"), in: chunk, from: 0)
        if inCopy && !inLongRow && !carry.isEmpty && carry.count + (firstNewline.map { $0 + 1 } ?? chunk.count) > rowPieceBytes {
            // The carried row grows past a piece with this chunk (whether or not it ends in it).
            try startLongRow()
        }
        if inLongRow {
            guard let newline = firstNewline else {
                if !chunk.isEmpty { try consumer(.copyRows(chunk)) }
                return
            }
            try consumer(.copyRows(UnsafeRawBufferPointer(rebasing: chunk[0...newline])))
            inLongRow = false
            copyRowCount += 1
            start = newline + 1
        } else if !carry.isEmpty {
            guard let newline = firstNewline else {
                carry.append(contentsOf: chunk)
                return
            }
            let base = consumed - UInt64(carry.count)
            carry.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[0...newline]))
            // Handed over where it lies: a copy would hold a second line (a statement may be long too).
            try carry.withUnsafeBytes { try lines($0, at: base) }
            if carry.capacity > 2 * rowPieceBytes { carry = [] } else { carry.removeAll(keepingCapacity: true) }
            start = newline + 1
        }
        guard start < chunk.count else { return }
        // Whole lines now; the unfinished last line waits for the next chunk.
        var end = chunk.count
        while end > start, chunk[end - 1] != UInt8(ascii: "\n") { end -= 1 }
        if end > start { try lines(UnsafeRawBufferPointer(rebasing: chunk[start..<end]), at: consumed + UInt64(start)) }
        if end < chunk.count { try carryOver(UnsafeRawBufferPointer(rebasing: chunk[end...])) }
    }

    /// Keeps the start of an unfinished line for the next chunk; in COPY rows, a row that would be
    /// longer than a piece is handed over instead (what was carried of it first), and the rest of
    /// it as it arrives.
    private func carryOver(_ tail: UnsafeRawBufferPointer) throws {
        guard inCopy && carry.count + tail.count > rowPieceBytes else {
            carry.append(contentsOf: tail)
            return
        }
        try startLongRow()
        try consumer(.copyRows(tail))
    }

    /// Hands over what is carried of a row that turned out longer than a piece, and streams the rest.
    /// Never the end-of-data line: `\.` CR is shorter than any piece.
    private func startLongRow() throws {
        if !carry.isEmpty { try carry.withUnsafeBytes { try consumer(.copyRows($0)) } }
        carry = []
        inLongRow = true
    }

    /// Ends the dump; a last statement without a semicolon is handed over, as psql sends it.
    ///
    /// - Throws: `RecoveryError(.backupCorrupt)` if it ends inside COPY rows.
    func finish() throws {
        if !carry.isEmpty {
            let base = consumed - UInt64(carry.count)
            carry.append(UInt8(ascii: "\n"))
            try carry.withUnsafeBytes { try lines($0, at: base) }
            carry.removeAll()
        }
        guard !inCopy else {
            throw RecoveryError(.backupCorrupt, "the dump ends inside COPY data (no \\. line)", hint: "the backup is incomplete; restore another one")
        }
        if let last = lexer.finish() { try statement(last) }
    }

    /// Handles whole lines (`text` ends with a newline and starts at `base` in the dump), one at a
    /// time as psql reads them.
    private func lines(_ text: UnsafeRawBufferPointer, at base: UInt64) throws {
        var offset = 0
        while offset < text.count {
            if inCopy {
                offset = try copyRows(text, from: offset)
                continue
            }
            let newline = Self.find(UInt8(ascii: "\n"), in: text, from: offset) ?? text.count
            defer { offset = newline + 1 }
            let line = UnsafeRawBufferPointer(rebasing: text[offset..<newline])
            lineOffset = base + UInt64(offset)
            if let onCommentLine, line.count >= 2, line[0] == UInt8(ascii: "-"), line[1] == UInt8(ascii: "-"), lexer.isBetweenStatements {
                try onCommentLine(line, lineOffset)
            }
            guard lexer.startLine(empty: line.isEmpty) else { continue }
            var position = 0
            while position < line.count {
                let (piece, next) = lexer.next(in: line, from: position)
                position = next
                switch piece {
                case nil:
                    break
                case .metaCommand(let range)?:
                    try metaCommand(UnsafeRawBufferPointer(rebasing: line[range]))
                case .statement(let sql)?:
                    if try statement(sql) {
                        // COPY rows start on the next line (psql reads them from there).
                        position = line.count
                    }
                }
            }
        }
    }

    /// Hands over one statement, or takes it into the session settings.
    ///
    /// - Returns: whether it began COPY rows.
    @discardableResult
    private func statement(_ sql: [UInt8]) throws -> Bool {
        // Before absorbing too: a session setting is replayed on every connection.
        guard DumpStatementPolicy.allows(sql, standardConformingStrings: settings.standardConformingStrings) else {
            throw DumpStatementPolicy.refusal(Statement(sql: sql, settings: settings), backupID: backupID)
        }
        if settings.absorb(sql) {
            lexer.standardConformingStrings = settings.standardConformingStrings
            try onSetting?(sql, lineOffset)
            return false
        }
        let statement = Statement(sql: sql, settings: settings)
        if Self.isCopyFromStdin(sql) {
            copyRowCount = 0
            try consumer(.copyStart(statement))
            inCopy = true
            return true
        }
        try consumer(.statement(statement))
        return false
    }

    /// Hands over rows up to the `\.` line; returns where the text after them starts.
    private func copyRows(_ text: UnsafeRawBufferPointer, from start: Int) throws -> Int {
        var line = start
        while line < text.count {
            let newline = Self.find(UInt8(ascii: "\n"), in: text, from: line) ?? (text.count - 1)
            // psql ends the rows at a line that is exactly `\.` (or `\.` CR).
            let length = newline - line
            if text[line] == UInt8(ascii: "\\"), length == 2 || length == 3, text[line + 1] == UInt8(ascii: "."),
               length == 2 || text[line + 2] == UInt8(ascii: "\r") {
                if line > start { try consumer(.copyRows(UnsafeRawBufferPointer(rebasing: text[start..<line]))) }
                try consumer(.copyEnd)
                inCopy = false
                return newline + 1
            }
            copyRowCount += 1
            line = newline + 1
        }
        if text.count > start { try consumer(.copyRows(UnsafeRawBufferPointer(rebasing: text[start..<text.count]))) }
        return text.count
    }

    private func metaCommand(_ line: UnsafeRawBufferPointer) throws {
        var end = 0
        while end < line.count, !SQLLexer.isSpace(line[end]) { end += 1 }
        let command = String(decoding: UnsafeRawBufferPointer(rebasing: line[0..<end]), as: UTF8.self)
        guard command == "\\restrict" || command == "\\unrestrict" else {
            throw RecoveryError(.backupCorrupt, "the dump contains the psql meta-command \(command), which dbrestore does not run",
                                hint: "restore this dump by hand with psql after reviewing it")
        }
    }

    /// pg_dump's `COPY name (columns) FROM stdin` (the lexer has dropped the semicolon).
    static func isCopyFromStdin(_ sql: [UInt8]) -> Bool {
        sql.starts(with: "COPY ".utf8) && sql.reversed().starts(with: " FROM stdin".utf8.reversed())
    }

    private static func find(_ byte: UInt8, in text: UnsafeRawBufferPointer, from offset: Int) -> Int? {
        guard offset < text.count, let base = text.baseAddress else { return nil }
        guard let found = memchr(base + offset, Int32(byte), text.count - offset) else { return nil }
        return base.distance(to: UnsafeRawPointer(found))
    }
}
