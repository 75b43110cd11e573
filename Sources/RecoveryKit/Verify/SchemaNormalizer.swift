import Foundation

/// Reads `pg_dump --schema-only` output as it streams and cuts it into the objects of a
/// `SchemaFingerprint`, leaving out only what pg_dump writes differently for the same schema:
///
/// - the `\restrict` / `\unrestrict` lines (a random key per run, pg_dump ≥ 15.14);
/// - comment lines and blank lines between statements (the headers, `-- Dumped from …`);
/// - `SET default_tablespace = …` lines (pg_dump emits them only when the tablespace changes from
///   the previous object's; each object's header names its own tablespace instead);
/// - what pg_dump majors write differently for the same schema (`PostgresMajor` knows the server
///   side): pg_dump 17+'s `SET transaction_timeout = 0;` is left out, and the ownership lines that
///   pg_dump 16+ writes as `ALTER VIEW|SEQUENCE|MATERIALIZED VIEW … OWNER TO` are read as the
///   `ALTER TABLE … OWNER TO` that 14 and 15 write (the object's header names its type either way).
///
/// Everything else is hashed byte for byte, never decoded: the same lines in another encoding
/// are different lines. Comment-looking and blank lines *inside* string literals, quoted
/// identifiers, dollar-quoted bodies and block comments are content and are kept — this is why it
/// follows quoting itself rather than trusting line shapes. It is deliberately separate from the
/// restore's statement splitter: a verifier that shared the splitter's mistakes could not catch them.
///
/// `SET default_table_access_method = …` is written, like the tablespace, only when it changes
/// from one table to the next; it is left out as a line and counted instead in every table and
/// materialised view it is in force for, so a missing object does not make its neighbour look changed.
///
/// A table that inherits (`CREATE TABLE … ( … ) INHERITS (…)`) has its column lines compared as a
/// set: pg_dump writes them in the table's own column order, but replaying that statement puts the
/// parents' columns first, so a table made by `ALTER TABLE … INHERIT` comes back (from psql just
/// the same) with its columns reordered. Every other table's column order counts.
///
/// Memory: one line at a time (plus one digest and one entry per object, and the column lines of
/// the table being read).
public struct SchemaNormalizer {
    private enum State: Equatable {
        case code
        case quoted(UInt8, escapes: Bool)
        case dollarQuoted([UInt8])
        case blockComment(depth: Int)
    }

    private struct Section {
        var type: String
        var schema: String
        var name: String
        var digest = StreamingDigest()
    }

    private var state = State.code
    /// `SET standard_conforming_strings = off` makes backslashes escape in '…' strings too.
    private var backslashEscapes = false
    /// Names in headers are in the dump's `client_encoding`; UTF-8 until it says otherwise.
    private var namesAreUTF8 = true
    private var carry: [UInt8] = []
    private var current = Section(type: SchemaFingerprint.settingsType, schema: "-", name: "(before the first object)")
    /// The `default_table_access_method` in force, as pg_dump last set it.
    private var accessMethod: [UInt8]?
    private var objects: [SchemaFingerprint.Object] = []
    private var pgDumpVersion: String?
    private var serverVersion: String?
    /// The column lines of the `CREATE TABLE` being read, held until it is known whether it inherits.
    private var tableColumns: [[UInt8]]?
    /// The `)` line that closed them, held until the next line says whether `INHERITS (` follows.
    private var tableClose: [UInt8]?

    public init() {}

    /// Reads the next bytes of the dump (chunks of any size).
    public mutating func write(_ chunk: UnsafeRawBufferPointer) {
        var start = 0
        while let newline = chunk[start...].firstIndex(of: UInt8(ascii: "\n")) {
            if carry.isEmpty {
                line(Array(chunk[start...newline]))
            } else {
                carry.append(contentsOf: chunk[start...newline])
                let whole = carry
                carry.removeAll(keepingCapacity: true)
                line(whole)
            }
            start = newline + 1
        }
        if start < chunk.count { carry.append(contentsOf: chunk[start...]) }
    }

    /// Ends the dump and returns its fingerprint.
    public mutating func finish() -> SchemaFingerprint {
        if !carry.isEmpty {
            let last = carry
            carry.removeAll()
            line(last)
        }
        flushTable(inherits: false)
        close(current)
        return SchemaFingerprint(objects: objects, pgDumpVersion: pgDumpVersion, serverVersion: serverVersion)
    }

    // MARK: - Lines

    private mutating func line(_ bytes: [UInt8]) {
        if tableClose != nil {
            flushTable(inherits: state == .code && bytes.starts(with: Self.inherits))
        } else if tableColumns != nil {
            if state == .code && bytes.first == UInt8(ascii: ")") {
                tableClose = bytes
            } else {
                tableColumns?.append(bytes)
            }
            scan(bytes)
            return
        }
        if state == .code {
            let text = bytes.drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
            if text.allSatisfy({ $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }) {
                return
            }
            if text.starts(with: Self.commentStart) {
                comment(bytes)
                return
            }
            if bytes.starts(with: Self.restrict) || bytes.starts(with: Self.unrestrict) || bytes.starts(with: Self.defaultTablespace)
                || bytes.starts(with: Self.transactionTimeout) {
                return
            }
            if let owned = Self.ownershipAsTable(bytes) {
                hash(owned)
                scan(bytes)
                return
            }
            if bytes.starts(with: Self.defaultAccessMethod) {
                accessMethod = Array(bytes.dropFirst(Self.defaultAccessMethod.count))
                return
            }
            if bytes.starts(with: Self.standardConformingStrings) {
                backslashEscapes = bytes.starts(with: Self.standardConformingStrings + Array("off".utf8))
            }
            if bytes.starts(with: Self.clientEncoding) {
                namesAreUTF8 = bytes.starts(with: Self.clientEncoding + Array("'UTF8'".utf8))
            }
        }
        let opensTable = state == .code && Self.createTable.contains { bytes.starts(with: $0) } && bytes.suffix(3).elementsEqual(Array(" (\n".utf8))
        hash(bytes)
        scan(bytes)
        if opensTable && state == .code { tableColumns = [] }
    }

    /// Hashes the held column lines and their closing line: as they stand, or, for a table that
    /// inherits, sorted without their trailing commas.
    private mutating func flushTable(inherits: Bool) {
        guard var columns = tableColumns else { return }
        if inherits {
            columns = columns.map { line in
                var line = line
                if line.last == UInt8(ascii: "\n") { line.removeLast() }
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                if line.last == UInt8(ascii: ",") { line.removeLast() }
                return line + [UInt8(ascii: "\n")]
            }.sorted { $0.lexicographicallyPrecedes($1) }
        }
        columns.forEach { hash($0) }
        if let tableClose { hash(tableClose) }
        tableColumns = nil
        tableClose = nil
    }

    /// A comment line between statements: an object header starts the next object; the version
    /// lines are remembered; the rest is dropped.
    private mutating func comment(_ bytes: [UInt8]) {
        let text = decode(bytes).trimmingCharacters(in: .whitespacesAndNewlines)
        if let header = Self.parseHeader(text) {
            close(current)
            current = Section(type: header.type, schema: header.schema, name: header.name)
            hash(bytes)
            if let accessMethod, header.type == "TABLE" || header.type == "MATERIALIZED VIEW" {
                hash(Self.defaultAccessMethod + accessMethod)
            }
        } else if text.hasPrefix("-- Dumped by pg_dump version ") {
            pgDumpVersion = String(text.dropFirst("-- Dumped by pg_dump version ".count))
        } else if text.hasPrefix("-- Dumped from database version ") {
            serverVersion = String(text.dropFirst("-- Dumped from database version ".count))
        }
    }

    private mutating func hash(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { current.digest.update($0) }
    }

    private mutating func close(_ section: Section) {
        objects.append(.init(type: section.type, schema: section.schema, name: section.name, sha256: section.digest.hexDigest()))
    }

    private func decode(_ bytes: [UInt8]) -> String {
        // Latin-1 maps every byte to one character, so names in other encodings stay distinct.
        namesAreUTF8 ? ByteText.utf8OrLatin1(bytes) : ByteText.latin1(bytes)
    }

    // MARK: - Quoting

    /// Follows quoting through one line, so that the next line is known to start in code or not.
    private mutating func scan(_ bytes: [UInt8]) {
        var index = 0
        let count = bytes.count
        while index < count {
            let byte = bytes[index]
            switch state {
            case .quoted(let quote, let escapes):
                if escapes && byte == UInt8(ascii: "\\") {
                    index += 2
                } else if byte == quote {
                    if index + 1 < count && bytes[index + 1] == quote { index += 2 } else { state = .code; index += 1 }
                } else {
                    index += 1
                }
            case .dollarQuoted(let tag):
                if byte == UInt8(ascii: "$") && bytes[index...].starts(with: tag) {
                    state = .code
                    index += tag.count
                } else {
                    index += 1
                }
            case .blockComment(let depth):
                if byte == UInt8(ascii: "*") && index + 1 < count && bytes[index + 1] == UInt8(ascii: "/") {
                    state = depth == 1 ? .code : .blockComment(depth: depth - 1)
                    index += 2
                } else if byte == UInt8(ascii: "/") && index + 1 < count && bytes[index + 1] == UInt8(ascii: "*") {
                    state = .blockComment(depth: depth + 1)
                    index += 2
                } else {
                    index += 1
                }
            case .code:
                let next = index + 1 < count ? bytes[index + 1] : 0
                switch byte {
                case UInt8(ascii: "-") where next == UInt8(ascii: "-"):
                    return  // a comment to the end of the line
                case UInt8(ascii: "/") where next == UInt8(ascii: "*"):
                    state = .blockComment(depth: 1)
                    index += 2
                case UInt8(ascii: "'"):
                    let escapeString = index > 0 && bytes[index - 1] | 0x20 == UInt8(ascii: "e")
                        && (index < 2 || !Self.isIdentifier(bytes[index - 2]))
                    state = .quoted(byte, escapes: backslashEscapes || escapeString)
                    index += 1
                case UInt8(ascii: "\""):
                    state = .quoted(byte, escapes: false)
                    index += 1
                case UInt8(ascii: "$"):
                    if let tag = Self.dollarTag(in: bytes, at: index) {
                        state = .dollarQuoted(tag)
                        index += tag.count
                    } else {
                        index += 1
                    }
                default:
                    index += 1
                }
            }
        }
    }

    private static func isIdentifier(_ byte: UInt8) -> Bool {
        byte >= 0x80 || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "$")
            || (byte | 0x20) >= UInt8(ascii: "a") && (byte | 0x20) <= UInt8(ascii: "z")
            || byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }

    /// `$tag$` or `$$` at `index` — not `$1`, and not inside an identifier such as `a$b`.
    private static func dollarTag(in bytes: [UInt8], at index: Int) -> [UInt8]? {
        if index > 0 && isIdentifier(bytes[index - 1]) { return nil }
        var end = index + 1
        while end < bytes.count && bytes[end] != UInt8(ascii: "$") && isIdentifier(bytes[end]) { end += 1 }
        guard end < bytes.count && bytes[end] == UInt8(ascii: "$") else { return nil }
        if end > index + 1 && bytes[index + 1] >= UInt8(ascii: "0") && bytes[index + 1] <= UInt8(ascii: "9") { return nil }
        return Array(bytes[index...end])
    }

    // MARK: - Headers

    /// Parses `-- Name: users users_pkey; Type: CONSTRAINT; Schema: public; Owner: app[; Tablespace: t]`.
    ///
    /// Names may contain `; Type: ` themselves, so the type is taken from the last place where an
    /// upper-case type word is followed by `; Schema: ` (types never contain `;`).
    static func parseHeader(_ text: String) -> (name: String, type: String, schema: String)? {
        let prefix = "-- Name: "
        guard text.hasPrefix(prefix) else { return nil }
        let rest = text.dropFirst(prefix.count)
        var search = rest.endIndex
        while let typeMarker = rest.range(of: "; Type: ", options: .backwards, range: rest.startIndex..<search) {
            search = typeMarker.lowerBound
            let afterType = rest[typeMarker.upperBound...]
            guard let schemaMarker = afterType.range(of: "; Schema: ") else { continue }
            let type = afterType[..<schemaMarker.lowerBound]
            guard !type.isEmpty, type.allSatisfy({ $0.isUppercase || $0 == " " }) else { continue }
            let afterSchema = afterType[schemaMarker.upperBound...]
            let schema = afterSchema.range(of: "; Owner: ").map { afterSchema[..<$0.lowerBound] } ?? afterSchema
            return (String(rest[..<typeMarker.lowerBound]), String(type), String(schema))
        }
        return nil
    }

    /// `ALTER VIEW x OWNER TO r;` (pg_dump 16+) as `ALTER TABLE x OWNER TO r;` (pg_dump 14, 15);
    /// nil for any other line (`ALTER SEQUENCE … OWNED BY …` included).
    static func ownershipAsTable(_ bytes: [UInt8]) -> [UInt8]? {
        guard let prefix = ownershipPrefixes.first(where: { bytes.starts(with: $0) }) else { return nil }
        let marker = Array(" OWNER TO ".utf8)
        guard bytes.count > marker.count,
              (0...(bytes.count - marker.count)).contains(where: { bytes[$0..<($0 + marker.count)].elementsEqual(marker) }) else { return nil }
        return Array("ALTER TABLE ".utf8) + bytes.dropFirst(prefix.count)
    }

    private static let ownershipPrefixes = ["ALTER VIEW ", "ALTER SEQUENCE ", "ALTER MATERIALIZED VIEW "].map { Array($0.utf8) }
    private static let transactionTimeout = Array("SET transaction_timeout = ".utf8)
    private static let commentStart = Array("--".utf8)
    private static let inherits = Array("INHERITS (".utf8)
    private static let createTable = [Array("CREATE TABLE ".utf8), Array("CREATE UNLOGGED TABLE ".utf8)]
    private static let restrict = Array("\\restrict ".utf8)
    private static let unrestrict = Array("\\unrestrict ".utf8)
    private static let defaultTablespace = Array("SET default_tablespace = ".utf8)
    private static let standardConformingStrings = Array("SET standard_conforming_strings = ".utf8)
    private static let clientEncoding = Array("SET client_encoding = ".utf8)
    private static let defaultAccessMethod = Array("SET default_table_access_method = ".utf8)
}
