import Foundation
import Gzip

/// Builds a dump's table of contents (`DumpTableOfContents`) while the dump streams past: at
/// backup time from pg_dump's output and the compressor's access points, or by a full scan of
/// an older backup's stream.
///
/// pg_dump's headers are found by the restore's own `DumpScanner` (psql's statement rules), so a
/// line that merely looks like a header inside COPY rows or a function body is never taken for one.
/// A dump the scanner cannot read (which the restore would refuse too) leaves the builder
/// `failed`: the backup goes on without a table of contents rather than failing.
final class DumpContentsBuilder {
    private let scanner: DumpScanner
    private var entries: [DumpTableOfContents.Entry] = []
    private var settings: [DumpTableOfContents.Setting] = []
    /// Tables and views seen so far: what a view's query can name.
    private var relations = Set<DumpTableOfContents.Name>()
    /// The compressor's access points and each segment's sha256.
    let segments: SegmentDigests
    private var dumpBytes: UInt64 = 0
    /// Why no table of contents can be built, once something went wrong.
    private(set) var failure: String?
    /// The rows of each COPY block, in the dump's order: the backup's row counts (`CopyRowCounts`).
    private var copies = CopyRowCounts()
    /// The table whose COPY rows are being read.
    private var copying: CopyRowCounts.Block?
    /// The table the last `TABLE DATA` header names, in the dump's bytes, while its entry lasts.
    private var dataEntry: (schema: [UInt8], name: [UInt8])?
    /// Whether that entry's COPY loads it through its partitioned root (pg_dump's comment says so).
    private var viaRoot = false
    private static let viaRootPrefix = Array("-- load via partition root ".utf8)
    /// Uncompressed distance between the access points the compressor is asked for.
    var accessPointInterval: UInt64 { segments.interval }
    /// The gzip layout the compressor writes: it sets the table of contents' format version.
    private let layout: GzipCompressor.Layout

    private static let namePrefix = Array("-- Name: ".utf8)
    private static let dataPrefix = Array("-- Data for Name: ".utf8)

    /// - Parameters:
    ///   - backupID: the backup the dump belongs to, for messages.
    ///   - accessPointInterval: see `DumpTableOfContents.accessPointInterval(in:)`.
    ///   - layout: the dump's gzip layout, as the compressor writes it (`GzipCompressor.effectiveLayout`).
    init(backupID: String, accessPointInterval: UInt64 = DumpTableOfContents.defaultAccessPointInterval, layout: GzipCompressor.Layout = .memberPerBlock) {
        self.layout = layout
        segments = SegmentDigests(interval: accessPointInterval)
        let statements = StatementBox()
        scanner = DumpScanner(backupID: backupID) { event in
            switch event {
            case .statement(let statement): statements.handler?(statement.sql)
            case .copyStart(let statement): statements.copyStart?(statement)
            case .copyEnd: statements.copyEnd?()
            case .copyRows: break
            }
        }
        statements.handler = { [unowned self] sql in analyze(sql) }
        statements.copyStart = { [unowned self] statement in copyStart(statement) }
        statements.copyEnd = { [unowned self] in copyEnd() }
        scanner.onCommentLine = { [unowned self] line, offset in header(line, at: offset) }
        scanner.onSetting = { [unowned self] sql, offset in
            settings.append(.init(offset: offset, sql: Data(sql).base64EncodedString()))
        }
    }

    /// Lets the scanner's consumer reach the builder, which owns the scanner.
    private final class StatementBox {
        var handler: (([UInt8]) -> Void)?
        var copyStart: ((DumpScanner.Statement) -> Void)?
        var copyEnd: (() -> Void)?
    }

    /// `COPY schema.table (columns) FROM stdin`: pg_dump always qualifies the name.
    private func copyStart(_ statement: DumpScanner.Statement) {
        let prefix = "COPY ".utf8.count
        let (parts, _, _) = QualifiedNames.byteChain(in: statement.sql, from: prefix, to: statement.sql.count)
        let encoding = statement.settings.clientEncoding
        if copies.encoding == nil { copies.encoding = encoding }
        guard parts.count == 2, encoding == copies.encoding else {
            copies.unreadable.append(statement.excerpt)
            copying = nil
            return
        }
        // pg_dump loads a partition through its partitioned root where the partition's rows could
        // belong to another partition once restored (hash partitions of an enum key): the entry names
        // the partition, its COPY names the root. The rows are the partition's, as its header says.
        if viaRoot, let dataEntry {
            copying = .init(schema: dataEntry.schema, name: dataEntry.name, rows: 0)
            return
        }
        copying = .init(schema: parts[0], name: parts[1], rows: 0)
    }

    private func copyEnd() {
        guard var block = copying else { return }
        block.rows = scanner.copyRowCount
        copies.blocks.append(block)
        copying = nil
    }

    /// The rows of every COPY block of the dump, once `finish()` has read it all; nil if the dump
    /// could not be read (`failure` says why).
    var copyRowCounts: CopyRowCounts? {
        failure == nil ? copies : nil
    }

    /// What a statement says about its object: the table an index, an owned sequence or an
    /// identity belongs to; the table a foreign key references; the relations a view reads.
    private func analyze(_ sql: [UInt8]) {
        guard let last = entries.indices.last,
              ["INDEX", "SEQUENCE OWNED BY", "SEQUENCE", "FK CONSTRAINT", "VIEW", "MATERIALIZED VIEW", "TABLE", "TABLE ATTACH",
               "INDEX ATTACH", "STATISTICS", "DEFAULT"].contains(entries[last].kind) else { return }
        if entries[last].kind == "DEFAULT" || (entries[last].kind == "TABLE" && sql.starts(with: Array("CREATE ".utf8))) {
            // ALTER TABLE ONLY schema.t ALTER COLUMN c SET DEFAULT nextval('schema.seq'::regclass), or the same default
            // inline in CREATE TABLE: the sequences it draws from (a table's `references`; its parents are `inherits`).
            let sequences = QualifiedNames.references(in: sql).filter { $0.inLiteral && $0.parts.count == 2 }
                .map { DumpTableOfContents.Name(schema: $0.parts[0], name: $0.parts[1]) }
            if !sequences.isEmpty { entries[last].references = sequences }
            if entries[last].kind == "DEFAULT" { return }
        }
        let names = QualifiedNames.references(in: sql).filter { !$0.inLiteral }
        func name(_ reference: QualifiedNames.Reference) -> DumpTableOfContents.Name {
            .init(schema: reference.parts[0], name: reference.parts[1])
        }
        switch entries[last].kind {
        case "INDEX":
            // CREATE [UNIQUE] INDEX name ON [ONLY] schema.table …: the index's own name is not qualified.
            if entries[last].table == nil, let table = names.first(where: { $0.parts.count == 2 }) { entries[last].table = name(table) }
        case "SEQUENCE OWNED BY":
            // ALTER SEQUENCE schema.seq OWNED BY schema.table.column
            if let column = names.first(where: { $0.parts.count == 3 }) { entries[last].table = name(column) }
        case "SEQUENCE":
            // An identity: ALTER TABLE schema.table ALTER COLUMN … ADD GENERATED … (SEQUENCE NAME schema.seq …)
            if sql.starts(with: Array("ALTER TABLE ".utf8)), let table = names.first { entries[last].table = name(table) }
        case "FK CONSTRAINT":
            // ALTER TABLE ONLY schema.table ADD CONSTRAINT name FOREIGN KEY (…) REFERENCES schema.other(…)
            let referenced = names.dropFirst().map(name)
            if !referenced.isEmpty { entries[last].references = referenced }
        case "TABLE":
            // CREATE TABLE schema.t (…)\nINHERITS (schema.parent, …) / (…)\nPARTITION BY …: pg_dump ends the
            // statement with these clauses on their own lines (a partition is attached by a TABLE ATTACH entry).
            guard sql.starts(with: Array("CREATE ".utf8)) else { return }
            if let inherits = Self.lastLine(startingWith: "INHERITS (", in: sql) {
                let parents = names.filter { $0.schemaRange.lowerBound > inherits && $0.parts.count == 2 }.map(name)
                if !parents.isEmpty { entries[last].inherits = parents }
            }
            if Self.lastLine(startingWith: "PARTITION BY ", in: sql) != nil { entries[last].partitioned = true }
        case "TABLE ATTACH":
            // ALTER TABLE ONLY schema.parent ATTACH PARTITION schema.partition FOR VALUES …
            let tables = names.filter { $0.parts.count == 2 }.map(name)
            if tables.count >= 2 {
                entries[last].table = tables[1]
                entries[last].references = [tables[0]]
            }
        case "STATISTICS":
            // CREATE STATISTICS schema.name [(kinds)] ON columns or expressions FROM schema.table
            if sql.starts(with: Array("CREATE STATISTICS ".utf8)), let table = names.last(where: { $0.parts.count == 2 }) { entries[last].table = name(table) }
        case "INDEX ATTACH":
            // ALTER INDEX schema.parent_index ATTACH PARTITION schema.partition_index: the tables of both indexes.
            let indexes = names.filter { $0.parts.count == 2 }.map(name)
            func table(of index: DumpTableOfContents.Name) -> DumpTableOfContents.Name? {
                entries.last { $0.kind == "INDEX" && $0.schema == index.schema && $0.name == index.name }?.table
            }
            if indexes.count >= 2, let partition = table(of: indexes[1]), let parent = table(of: indexes[0]) {
                entries[last].table = partition
                entries[last].references = [parent]
            }
        case "VIEW", "MATERIALIZED VIEW":
            guard sql.starts(with: Array("CREATE ".utf8)) else { return }
            let own = DumpTableOfContents.Name(schema: entries[last].schema ?? "", name: entries[last].name)
            var read: [DumpTableOfContents.Name] = []
            // Only relations the dump created before (pg_dump orders a view after what it reads);
            // `orders.total` in the query is a column, not a relation.
            for reference in names.map(name) where reference != own && relations.contains(reference) && !read.contains(reference) { read.append(reference) }
            entries[last].references = read
        default:
            return
        }
    }

    /// Offset of the last line of `sql` that starts with `prefix` (outside the first line), if any.
    private static func lastLine(startingWith prefix: String, in sql: [UInt8]) -> Int? {
        let marker = Array(("\n" + prefix).utf8)
        guard sql.count > marker.count else { return nil }
        for start in stride(from: sql.count - marker.count, through: 0, by: -1) where sql[start] == 0x0A && sql[start..<(start + marker.count)].elementsEqual(marker) {
            return start + 1
        }
        return nil
    }

    /// The next bytes of the uncompressed dump.
    func write(_ chunk: UnsafeRawBufferPointer) {
        dumpBytes += UInt64(chunk.count)
        guard failure == nil else { return }
        do { try scanner.write(chunk) } catch { failure = "\(error)" }
    }

    /// The table of contents, or nil (with `failure` set) when the dump could not be read.
    func finish() -> DumpTableOfContents? {
        if failure == nil {
            do { try scanner.finish() } catch { failure = "\(error)" }
        }
        guard failure == nil else { return nil }
        let accessPoints = segments.finish()
        var entries = self.entries
        for index in entries.indices {
            entries[index].end = index + 1 < entries.count ? entries[index + 1].start : dumpBytes
        }
        return DumpTableOfContents(formatVersion: DumpTableOfContents.formatVersion(for: layout), dumpBytes: dumpBytes, compressedBytes: segments.compressedBytes,
                                   entries: entries, settings: settings, accessPoints: accessPoints)
    }

    /// The listing of a stream read without compression facts (a full scan of an older backup).
    func finishScan() -> DumpTableOfContents? {
        let contents = finish()
        return contents.map { var copy = $0; copy.accessPoints = []; copy.compressedBytes = 0; return copy }
    }

    /// A `-- Name: x; Type: T; Schema: s; Owner: o` or `-- Data for Name: …` line, parsed; nil for any other line.
    static func header(_ bytes: [UInt8]) -> (name: String, type: String, schema: String)? {
        let rest: ArraySlice<UInt8>
        if bytes.starts(with: namePrefix) {
            rest = bytes[namePrefix.count...]
        } else if bytes.starts(with: dataPrefix) {
            rest = bytes[dataPrefix.count...]
        } else {
            return nil
        }
        // One header parser for the toolkit: the schema normaliser's (names may hold "; Type: ").
        return SchemaNormalizer.parseHeader("-- Name: " + ByteText.utf8OrLatin1(Array(rest)))
    }

    /// Takes `-- Name: x; Type: T; Schema: s; Owner: o` and `-- Data for Name: …` lines.
    private func header(_ line: UnsafeRawBufferPointer, at offset: UInt64) {
        let bytes = Array(line)
        if bytes.starts(with: Self.viaRootPrefix) { viaRoot = true }
        guard let parsed = Self.header(bytes) else { return }
        viaRoot = false
        let schema = parsed.schema == "-" ? nil : parsed.schema
        dataEntry = nil
        if parsed.type == "TABLE DATA", let schema {
            let wasUTF8 = String(validating: bytes, as: UTF8.self) != nil
            if let schemaBytes = ByteText.bytes(of: schema, wasUTF8: wasUTF8), let nameBytes = ByteText.bytes(of: parsed.name, wasUTF8: wasUTF8) {
                dataEntry = (schemaBytes, nameBytes)
            }
        }
        entries.append(.init(kind: parsed.type, schema: schema, name: parsed.name, start: offset, end: offset))
        if let schema, ["TABLE", "FOREIGN TABLE", "VIEW", "MATERIALIZED VIEW"].contains(parsed.type) {
            relations.insert(.init(schema: schema, name: parsed.name))
        }
    }
}
