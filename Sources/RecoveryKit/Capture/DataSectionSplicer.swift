import Foundation

/// Puts the tables' entries the backup copied itself (`ParallelTableCopy`) into pg_dump's plain
/// output where its data section starts, so that the stream is the one pg_dump would have written.
///
/// pg_dump writes every pre-data entry before any data entry, and every data entry before any
/// post-data one (its section boundaries are dependencies of every object), and each entry starts
/// with a `--` line followed by its `-- Name: …; Type: T; …` header. Its `TABLE DATA` entries come
/// first in the data section. So the copied entries go before the `--` line of the first header
/// whose type is not pre-data, or before the dump's closing comment if there is none. The headers
/// are found by the restore's own `DumpScanner` (a header-like line in a function body is not one).
/// Only the pre-data is held back (the schema, not the rows); the rest streams through.
final class DataSectionSplicer {
    /// Entry types pg_dump writes in its pre-data section (PostgreSQL 9.2 to 18).
    static let preDataTypes: Set<String> = [
        "SCHEMA", "EXTENSION", "TYPE", "SHELL TYPE", "DOMAIN", "FUNCTION", "PROCEDURE", "AGGREGATE", "OPERATOR", "OPERATOR CLASS",
        "OPERATOR FAMILY", "COLLATION", "CONVERSION", "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "TEXT SEARCH DICTIONARY",
        "TEXT SEARCH CONFIGURATION", "FOREIGN DATA WRAPPER", "SERVER", "USER MAPPING", "TABLE", "FOREIGN TABLE", "VIEW",
        "MATERIALIZED VIEW", "SEQUENCE", "SEQUENCE OWNED BY", "DEFAULT", "TABLE ATTACH", "PROCEDURAL LANGUAGE", "CAST", "TRANSFORM",
        "ACCESS METHOD", "BLOB", "BLOB METADATA", "LARGE OBJECT", "DATABASE", "DATABASE PROPERTIES",
        // Written right after the object they belong to, whatever its section.
        "COMMENT", "SECURITY LABEL",
    ]
    /// Entry types of the data and post-data sections, and the grants pg_dump writes after both.
    static let laterTypes: Set<String> = [
        "TABLE DATA", "SEQUENCE SET", "BLOBS", "LARGE OBJECTS", "STATISTICS DATA", "MATERIALIZED VIEW DATA", "INDEX", "INDEX ATTACH",
        "CONSTRAINT", "CHECK CONSTRAINT", "FK CONSTRAINT", "TRIGGER", "EVENT TRIGGER", "RULE", "POLICY", "ROW SECURITY", "STATISTICS",
        "PUBLICATION", "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA", "SUBSCRIPTION", "SUBSCRIPTION TABLE", "ACL", "DEFAULT ACL",
    ]
    private static let closingComment = Array("-- PostgreSQL database dump complete".utf8)
    private static let entryStart = Array("--\n".utf8)
    private static let encodingSetting = Array("SET client_encoding = '".utf8)

    private let scanner: DumpScanner
    private let encoding: String
    private let insert: ((UnsafeRawBufferPointer) throws -> Void) throws -> Void
    /// pg_dump's bytes not passed on yet: its pre-data, until the data section is found.
    private var held: [UInt8] = []
    private var boundary: Int?
    private var dumpEncoding: String?
    private var problem: String?
    private var spliced = false

    /// - Parameters:
    ///   - encoding: the client encoding the copied rows are in; the dump must be in the same.
    ///   - insert: writes the copied entries to the sink it is given.
    init(encoding: String, insert: @escaping ((UnsafeRawBufferPointer) throws -> Void) throws -> Void) {
        self.encoding = encoding
        self.insert = insert
        scanner = DumpScanner(backupID: "") { _ in }
        scanner.onCommentLine = { [unowned self] line, offset in header(line, at: offset) }
        scanner.onSetting = { [unowned self] sql, _ in
            if sql.starts(with: Self.encodingSetting) {
                dumpEncoding = String(decoding: sql.dropFirst(Self.encodingSetting.count).prefix { $0 != UInt8(ascii: "'") }, as: UTF8.self)
            }
        }
    }

    /// The next bytes of pg_dump's output; what can be passed on goes to `deliver`.
    ///
    /// - Throws: `RecoveryError(.toolFailed)` if the dump cannot be read as pg_dump's output (then
    ///   the entries could not be placed); whatever `insert` or `deliver` throws.
    func write(_ chunk: UnsafeRawBufferPointer, to deliver: (UnsafeRawBufferPointer) throws -> Void) throws {
        if spliced { return try deliver(chunk) }
        held.append(contentsOf: chunk)
        do { try scanner.write(chunk) } catch { problem = problem ?? "\(error)" }
        try spliceIfFound(deliver)
    }

    /// The end of pg_dump's output.
    ///
    /// - Throws: `RecoveryError(.toolFailed)` if its data section was never found.
    func finish(to deliver: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard !spliced else { return }
        do { try scanner.finish() } catch { problem = problem ?? "\(error)" }
        try spliceIfFound(deliver)
        guard spliced else {
            throw RecoveryError(.toolFailed, "pg_dump's output has no place for the tables' rows (\(problem ?? "no data section and no closing comment")); nothing was stored",
                                hint: "back up with --data-by pg_dump, and report this with the pg_dump version")
        }
    }

    private func spliceIfFound(_ deliver: (UnsafeRawBufferPointer) throws -> Void) throws {
        if let problem, boundary == nil {
            throw RecoveryError(.toolFailed, "pg_dump's output could not be read to place the tables' rows: \(problem); nothing was stored",
                                hint: "back up with --data-by pg_dump, and report this with the pg_dump version")
        }
        guard let boundary else { return }
        guard dumpEncoding == encoding else {
            throw RecoveryError(.toolFailed, "pg_dump wrote its dump in \(dumpEncoding ?? "an unknown encoding"), the tables' rows were read in \(encoding); nothing was stored",
                                hint: "unset PGCLIENTENCODING, or back up with --data-by pg_dump")
        }
        spliced = true
        let pending = held
        held = []
        try pending.withUnsafeBytes { bytes in
            try deliver(UnsafeRawBufferPointer(rebasing: bytes[..<boundary]))
            try insert(deliver)
            try deliver(UnsafeRawBufferPointer(rebasing: bytes[boundary...]))
        }
    }

    /// A `--` line between statements at `offset`: the data section starts before the `--` line that
    /// opens the first entry of a later section, or the dump's closing comment.
    private func header(_ line: UnsafeRawBufferPointer, at offset: UInt64) {
        guard boundary == nil, problem == nil else { return }
        let bytes = Array(line)
        var later = bytes == Self.closingComment
        if !later, let header = DumpContentsBuilder.header(bytes) {
            if Self.laterTypes.contains(header.type) {
                later = true
            } else if !Self.preDataTypes.contains(header.type) {
                problem = "pg_dump wrote an entry of a type this version does not know (\(header.type))"
                return
            }
        }
        guard later else { return }
        let start = Int(offset) - Self.entryStart.count
        guard start >= 0, held[start..<Int(offset)].elementsEqual(Self.entryStart) else {
            problem = "an entry header at byte \(offset) is not where pg_dump starts its entries"
            return
        }
        boundary = start
    }
}
