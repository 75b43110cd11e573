import Foundation

/// Reads a plain-format pg_dump stream and tells its consumer what it contains, in order:
/// SQL statements, and for each `COPY … FROM stdin;` the COPY statement followed by its rows.
///
/// Streaming and bounded: bytes arrive in chunks of any size; only an unfinished line is carried
/// between chunks. Rows are handed over in runs of whole lines, never one call per row.
/// psql's `\restrict` / `\unrestrict` lines (pg_dump ≥ 15.14) are skipped: nothing here runs psql
/// meta-commands, which is what they guard against. Any other meta-command is refused.
final class DumpScanner {
    enum Event {
        case statement(String)
        case copyStart(String)
        case copyRows(UnsafeRawBufferPointer)
        case copyEnd
    }

    private var lexer = SQLLexer()
    private var inCopy = false
    private var carry: [UInt8] = []
    private let consumer: (Event) throws -> Void

    init(_ consumer: @escaping (Event) throws -> Void) {
        self.consumer = consumer
    }

    /// Reads the next bytes of the dump.
    ///
    /// - Throws: `RecoveryError(.backupCorrupt)` for a meta-command it will not run; whatever the consumer throws.
    func write(_ chunk: UnsafeRawBufferPointer) throws {
        var start = 0
        if !carry.isEmpty {
            guard let newline = Self.find(UInt8(ascii: "\n"), in: chunk, from: 0) else {
                carry.append(contentsOf: chunk)
                return
            }
            carry.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[0...newline]))
            let line = carry
            carry.removeAll(keepingCapacity: true)
            try line.withUnsafeBytes { try lines($0) }
            start = newline + 1
        }
        guard start < chunk.count else { return }
        // Whole lines now; the unfinished last line waits for the next chunk.
        var end = chunk.count
        while end > start, chunk[end - 1] != UInt8(ascii: "\n") { end -= 1 }
        if end > start { try lines(UnsafeRawBufferPointer(rebasing: chunk[start..<end])) }
        if end < chunk.count { carry.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[end...])) }
    }

    /// Ends the dump.
    ///
    /// - Throws: `RecoveryError(.backupCorrupt)` if it ends inside COPY rows.
    func finish() throws {
        if !carry.isEmpty {
            carry.append(UInt8(ascii: "\n"))
            let line = carry
            carry.removeAll()
            try line.withUnsafeBytes { try lines($0) }
        }
        guard !inCopy else {
            throw RecoveryError(.backupCorrupt, "the dump ends inside COPY data (no \\. line)", hint: "the backup is incomplete; restore another one")
        }
        if let last = lexer.finish() { try consumer(.statement(last)) }
    }

    /// Handles whole lines (`text` ends with a newline). SQL is fed to the lexer one line at a
    /// time, so a meta-command line is seen as such.
    private func lines(_ text: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < text.count {
            if inCopy {
                offset = try copyRows(text, from: offset)
                continue
            }
            let lineEnd = (Self.find(UInt8(ascii: "\n"), in: text, from: offset) ?? (text.count - 1)) + 1
            defer { offset = lineEnd }
            if !lexer.inStatement, text[offset] == UInt8(ascii: "\\") {
                try metaCommand(UnsafeRawBufferPointer(rebasing: text[offset..<lineEnd]))
                continue
            }
            let line = UnsafeRawBufferPointer(rebasing: text[offset..<lineEnd])
            var position = 0
            while position < line.count {
                let (statement, next) = lexer.next(line, from: position)
                position = next
                guard let statement else { continue }
                if Self.isCopyFromStdin(statement) {
                    // Rows start on the next line.
                    try consumer(.copyStart(statement))
                    inCopy = true
                    break
                }
                try consumer(.statement(statement))
            }
        }
    }

    /// Hands over rows up to the `\.` line; returns where the text after them starts.
    private func copyRows(_ text: UnsafeRawBufferPointer, from start: Int) throws -> Int {
        var line = start
        while line < text.count {
            if text[line] == UInt8(ascii: "\\"), line + 1 < text.count, text[line + 1] == UInt8(ascii: "."),
               line + 2 < text.count, text[line + 2] == UInt8(ascii: "\n") || text[line + 2] == UInt8(ascii: "\r") {
                if line > start { try consumer(.copyRows(UnsafeRawBufferPointer(rebasing: text[start..<line]))) }
                try consumer(.copyEnd)
                inCopy = false
                return (Self.find(UInt8(ascii: "\n"), in: text, from: line) ?? (text.count - 1)) + 1
            }
            line = (Self.find(UInt8(ascii: "\n"), in: text, from: line) ?? (text.count - 1)) + 1
        }
        if text.count > start { try consumer(.copyRows(UnsafeRawBufferPointer(rebasing: text[start..<text.count]))) }
        return text.count
    }

    private func metaCommand(_ line: UnsafeRawBufferPointer) throws {
        let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let command = text.split(separator: " ").first.map(String.init) ?? text
        guard command == "\\restrict" || command == "\\unrestrict" else {
            throw RecoveryError(.backupCorrupt, "the dump contains the psql meta-command \(command), which dbrestore does not run",
                                hint: "restore this dump by hand with psql after reviewing it")
        }
    }

    private static func isCopyFromStdin(_ statement: String) -> Bool {
        statement.hasPrefix("COPY ") && statement.hasSuffix(" FROM stdin")
    }

    private static func find(_ byte: UInt8, in text: UnsafeRawBufferPointer, from offset: Int) -> Int? {
        guard offset < text.count, let base = text.baseAddress else { return nil }
        guard let found = memchr(base + offset, Int32(byte), text.count - offset) else { return nil }
        return base.distance(to: UnsafeRawPointer(found))
    }
}
