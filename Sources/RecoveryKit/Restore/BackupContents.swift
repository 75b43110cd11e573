import BackupStorage
import Foundation
import Logging

/// What a logical backup holds (`dbrestore contents`): schemas, tables with their row counts
/// (from the manifest) and their size in the dump, sequences, functions, views, and every other
/// object by pg_dump's kind. Read from the backup's table of contents, or for a backup taken
/// before tables of contents existed, from a full scan of its dump.
public struct BackupContents: Codable, Sendable {
    /// A schema-qualified object.
    public struct Object: Codable, Sendable, Equatable {
        public var schema: String?
        public var name: String
        /// As SQL reads it: `sales."order"`, quoted where a part needs it (a keyword, capitals); a
        /// function's name keeps its argument list as pg_dump wrote it (`f(integer)`).
        public var qualified: String

        public init(schema: String?, name: String, relation: Bool) {
            self.schema = schema
            self.name = name
            let shown = relation ? QualifiedNames.display(name) : name
            qualified = schema.map { QualifiedNames.display($0) + "." + shown } ?? shown
        }

    }

    public struct Table: Codable, Sendable, Equatable {
        public var schema: String
        public var name: String
        /// Exact rows in the dump's snapshot (the manifest); nil for tables the manifest does not count (foreign, partitioned parents).
        public var rows: Int64?
        /// Bytes of the uncompressed dump its rows take (its COPY block); 0 when it has no data entry.
        public var dumpBytes: UInt64
        /// As SQL reads it: `sales."order"` (what `--table` takes).
        public var qualified: String

        public init(schema: String, name: String, rows: Int64?, dumpBytes: UInt64) {
            self.schema = schema
            self.name = name
            self.rows = rows
            self.dumpBytes = dumpBytes
            qualified = DumpTableOfContents.Name(schema: schema, name: name).qualified
        }

    }

    public enum Source: String, Codable, Sendable {
        /// The table of contents written at backup time.
        case tableOfContents = "table-of-contents"
        /// A full scan of the dump (backups taken before tables of contents existed).
        case fullScan = "full-scan"
    }

    public var backupID: String
    /// The database the backup was taken of (nil for a manifest that does not say).
    public var database: String?
    public var source: Source
    public var schemas: [String]
    public var tables: [Table]
    public var sequences: [Object]
    public var functions: [Object]
    public var views: [Object]
    /// Every other object, by pg_dump's kind (`INDEX`, `CONSTRAINT`, `TRIGGER`, `TYPE`, …).
    public var other: [String: [Object]]
    /// Access points into the compressed dump (0 after a full scan).
    public var accessPoints: Int
    /// What the listing cannot show exactly: tables whose name holds a line break, which pg_dump's
    /// headers (the table of contents) write as a space.
    public var notes: [String] = []

    /// Reads the contents of `reference` (`latest`, an id or a prefix) in `repository`. `latest` is
    /// the newest backup of `database` (`--from-database`), or of the only database the repository
    /// holds backups of (`Catalog.resolve(_:namedDatabase:)`).
    ///
    /// - Throws: `RecoveryError` (`.backupNotFound`, `.backupCorrupt`, `.usage` for a physical backup or
    ///   `latest` in a repository of several databases, `.configuration` for a missing key).
    public static func read(repository: String, backup reference: String, database: String? = nil, key: RepositoryKey?,
                            environment: [String: String] = ProcessInfo.processInfo.environment, progress: ProgressObserver? = nil) throws -> BackupContents {
        let store = try Repository.open(repository, create: false, environment: environment)
        let manifest = try Catalog(store: store).resolve(reference, namedDatabase: database)
        let (toc, source) = try tableOfContents(of: manifest, from: store, key: key, progress: progress)
        return BackupContents(manifest: manifest, toc: toc, source: source)
    }

    /// The table of contents of a logical backup: its own, or one built by a full scan of the dump.
    static func tableOfContents(of manifest: BackupManifest, from store: BackupStore, key: RepositoryKey?,
                                progress: ProgressObserver?) throws -> (DumpTableOfContents, Source) {
        guard manifest.kind == .logical, let dump = manifest.files.first(where: { $0.name == LogicalCapture.dumpFileName }) else {
            throw RecoveryError(.usage, "backup \(manifest.id) is a \(manifest.kind.rawValue) backup; its contents are a data directory, not objects",
                                hint: "pick a logical backup (dbrestore list shows the kind)")
        }
        // The table of contents is an optional index: a missing or damaged one costs a full scan, never the restore.
        do {
            if let toc = try DumpTableOfContents.load(of: manifest, from: store, key: key) { return (toc, .tableOfContents) }
        } catch let error as RecoveryError where error.code == .backupCorrupt {
            logger.warning("backup \(manifest.id): \(error.message); reading the whole dump instead (slower, same result)")
        }
        let builder = DumpContentsBuilder(backupID: manifest.id)
        try StoredFileStream.decompress(dump, of: manifest, from: store, key: key, phase: "scan", progress: progress) { builder.write($0) }
        guard let toc = builder.finishScan() else {
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id): the dump cannot be read: \(builder.failure ?? "unknown reason")",
                                hint: "a restore would refuse it too; use another backup")
        }
        return (toc, .fullScan)
    }

    private static let logger = Logger(label: "dbrecovery.restore")

    init(manifest: BackupManifest, toc: DumpTableOfContents, source: Source) {
        backupID = manifest.id
        database = manifest.database.name
        self.source = source
        accessPoints = source == .tableOfContents ? toc.accessPoints.count : 0
        var schemas = Set<String>()
        var sequences: [Object] = [], functions: [Object] = [], views: [Object] = [], other: [String: [Object]] = [:]
        var tableNames: [Object] = []
        // Keyed by (schema, name): `"a.b"."c"` and `"a"."b.c"` are two tables, one `a.b.c` as text.
        var dataBytes: [DumpTableOfContents.Name: UInt64] = [:]
        for entry in toc.entries {
            let object = Object(schema: entry.schema, name: entry.name,
                                relation: TableSelection.relationKinds.contains(entry.kind) && !["DEFAULT", "CONSTRAINT", "CHECK CONSTRAINT", "FK CONSTRAINT", "TRIGGER", "RULE", "POLICY"].contains(entry.kind))
            if let schema = entry.schema { schemas.insert(schema) }
            switch entry.kind {
            case "SCHEMA": schemas.insert(entry.name)
            case "TABLE", "FOREIGN TABLE": tableNames.append(object)
            case "TABLE DATA": dataBytes[.init(schema: entry.schema ?? "", name: entry.name), default: 0] += entry.bytes
            case "SEQUENCE": sequences.append(object)
            case "FUNCTION", "PROCEDURE", "AGGREGATE": functions.append(object)
            case "VIEW", "MATERIALIZED VIEW": views.append(object)
            default: other[entry.kind, default: []].append(object)
            }
        }
        let counts = Dictionary(manifest.tables.map { (DumpTableOfContents.Name(schema: $0.schema, name: $0.name), $0.rows) },
                                uniquingKeysWith: { first, _ in first })
        tables = tableNames.map { table in
            let key = DumpTableOfContents.Name(schema: table.schema ?? "", name: table.name)
            return Table(schema: key.schema, name: key.name, rows: counts[key], dumpBytes: dataBytes[key] ?? 0)
        }
        self.schemas = schemas.sorted()
        self.sequences = sequences
        self.functions = functions
        self.views = views
        self.other = other
        // A name with a line break is in the table of contents by its header form: listed by its exact
        // name (`app."a\nb"`) where no other table has that form, else its rows are not shown (which
        // entry holds which cannot be told); either way, said.
        for exact in manifest.tables where TableSelection.hasLineBreak(exact.schema) || TableSelection.hasLineBreak(exact.name) {
            let form = DumpTableOfContents.Name(schema: TableSelection.headerForm(exact.schema), name: TableSelection.headerForm(exact.name))
            let shown = TableSelection.shown(.init(schema: exact.schema, name: exact.name))
            let listed = tables.indices.filter { tables[$0].schema == form.schema && tables[$0].name == form.name }
            let twin = manifest.tables.contains { $0.schema == form.schema && $0.name == form.name }
            if listed.count == 1, !twin, let index = listed.first {
                tables[index] = Table(schema: exact.schema, name: exact.name, rows: exact.rows, dumpBytes: tables[index].dumpBytes)
                tables[index].qualified = shown
            } else {
                for index in listed { tables[index].rows = nil }
            }
            notes.append("table \(shown) has a line break in its name, which pg_dump's headers write as a space (\(form.qualified))"
                         + (listed.count == 1 && !twin ? "" : ", the same as another table's: their rows are not shown")
                         + "; a selective restore refuses it (restore the whole backup into a new database)")
        }
    }
}
