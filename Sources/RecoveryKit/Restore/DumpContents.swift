import BackupStorage
import Foundation
import Gzip

/// A logical backup's table of contents (`toc.json.gz`, next to the dump, written at backup time):
/// where each object pg_dump names (`-- Name: …; Type: …; Schema: …` headers) sits in the
/// uncompressed dump, and access points into the compressed stream, so a reader can start
/// decompressing near any object instead of at byte 0 (issue 18).
///
/// The dump itself is standard gzip that `gunzip | psql` restores: since format 3 one member per
/// 1 MiB block (`GzipCompressor.Layout.memberPerBlock`), before it one member.
public struct DumpTableOfContents: Codable, Equatable, Sendable {
    /// Name of the file inside a logical backup's folder.
    public static let fileName = "toc.json.gz"
    /// 2: statistics tied to their table and shared-sequence defaults recorded, access points inside
    /// the dump's one gzip member. 3: the same contents, each access point a member's start (one
    /// libdeflate member per block, issue 21). A format-1 table of contents is passed over (the
    /// stream is scanned instead), and so is a format newer than this dbrecovery knows. A
    /// dbrecovery that reads only 2 takes a 3 for a table of contents that does not describe its
    /// dump (a warning in `dbrestore contents` and selective restores) and reads the dump in one
    /// pass, whose decompressor reads members, where its segment reader would have read raw
    /// deflate at a member's header.
    public static let currentFormatVersion = 3
    public static let readableFormatVersions = 2...3

    /// The format version a table of contents of a dump in `layout` carries.
    static func formatVersion(for layout: GzipCompressor.Layout) -> Int {
        layout == .memberPerBlock ? 3 : 2
    }

    /// How dumps are compressed: one gzip member per 1 MiB block, by libdeflate (about 2.2× less
    /// CPU than zlib at level 6 on pg_dump output, and smaller); `DBRECOVERY_DUMP_LAYOUT=single-member`
    /// gives the one zlib member of dumps before it (the tests' older backups, the bench's comparison).
    static func layout(in environment: [String: String]) -> GzipCompressor.Layout {
        environment["DBRECOVERY_DUMP_LAYOUT"] == "single-member" ? .singleMember : .memberPerBlock
    }

    /// Uncompressed distance between access points: at most this much is decompressed in vain
    /// before the first byte a selective read needs (about 20 ms of inflate per 8 MiB).
    public static let defaultAccessPointInterval: UInt64 = 8 << 20

    /// The interval a backup uses: `DBRECOVERY_TOC_ACCESS_POINT_KB` (64 or more) in the run's
    /// resolved environment (tests use small dumps), else the default.
    public static func accessPointInterval(in environment: [String: String]) -> UInt64 {
        if let text = environment["DBRECOVERY_TOC_ACCESS_POINT_KB"], let kilobytes = UInt64(text), kilobytes >= 64 {
            return kilobytes << 10
        }
        return defaultAccessPointInterval
    }

    /// One object of the dump: from its `-- Name:` (or `-- Data for Name:`) header to the next header.
    public struct Entry: Codable, Equatable, Sendable {
        /// pg_dump's type: `TABLE`, `TABLE DATA`, `INDEX`, `FK CONSTRAINT`, `SEQUENCE SET`, `ACL`, …
        public var kind: String
        /// nil for objects outside any schema (`-` in the header).
        public var schema: String?
        /// pg_dump's tag: `orders`, `orders orders_pkey` (table and constraint), `TABLE orders` (ACL, COMMENT), `f(integer)`.
        public var name: String
        /// For an index, a sequence owned by or an identity of a table: that table (from the statement).
        public var table: Name? = nil
        /// For a foreign key: the table it references; for a view: the relations its query names; for a
        /// `TABLE ATTACH` / `INDEX ATTACH` (whose `table` is the partition): the partitioned table.
        /// For a table or a `DEFAULT`: the sequences its defaults draw from (`nextval('schema.seq'::regclass)`).
        public var references: [Name]? = nil
        /// For a table: the tables it inherits from (`INHERITS`).
        public var inherits: [Name]? = nil
        /// For a table: it is partitioned (`PARTITION BY`); its partitions' `TABLE ATTACH` entries name it in `references`.
        public var partitioned: Bool? = nil
        /// Offset of the header line in the uncompressed dump.
        public var start: UInt64
        /// Offset where the next object's header starts (or the dump's end).
        public var end: UInt64
        /// Bytes of the dump the entry covers (for `TABLE DATA`, the table's COPY rows and their statement).
        public var bytes: UInt64 { end - start }
    }

    /// A schema-qualified name.
    public struct Name: Codable, Hashable, Sendable, Comparable {
        public var schema: String
        public var name: String

        public init(schema: String, name: String) {
            self.schema = schema
            self.name = name
        }

        /// `schema.name`, each part quoted only where SQL needs it.
        public var qualified: String { "\(QualifiedNames.display(schema)).\(QualifiedNames.display(name))" }

        public static func < (a: Name, b: Name) -> Bool { (a.schema, a.name) < (b.schema, b.name) }
    }

    /// A session setting (`SET …`, `set_config(…)`) and where it stood: replayed in order by a
    /// reader that skips the parts in between, so every object runs as psql would run it.
    public struct Setting: Codable, Equatable, Sendable {
        public var offset: UInt64
        /// The statement's bytes, base64 (a dump may be LATIN1; names in `SET ROLE` need not be UTF-8).
        public var sql: String
    }

    /// Where decompression can start (zlib's `zran` terms): the compressed offset in the file,
    /// the uncompressed offset of the first byte decoded from there, the bit offset and the 32 KiB
    /// window before it. The compressor makes every point byte-aligned and independent of what
    /// came before (a block without a dictionary after a sync flush, or a full flush), so
    /// `bitOffset` is 0 and `window` is empty; they are kept so the format can carry zran points.
    /// The first point is the start of the file (its gzip header).
    public struct AccessPoint: Codable, Equatable, Sendable {
        public var compressedOffset, uncompressedOffset: UInt64
        public var bitOffset: Int = 0
        /// Base64 of the window; empty for the points this toolkit writes.
        public var window: String = ""
        /// sha256 of the compressed bytes from this point to the next (or to the end of the file):
        /// a ranged read checks every segment it decodes, as a full read checks the file's sha256.
        public var segmentSha256: String
    }

    public var formatVersion: Int
    /// Size of the uncompressed dump.
    public var dumpBytes: UInt64
    /// Size of the compressed (not encrypted) stream.
    public var compressedBytes: UInt64
    public var entries: [Entry]
    public var settings: [Setting]
    public var accessPoints: [AccessPoint]

    /// Where the first object starts: what comes before is the preamble every reader replays.
    public var preambleEnd: UInt64 { entries.first?.start ?? dumpBytes }

    /// Reads and checks the table of contents of `manifest`, if it has one.
    ///
    /// - Returns: nil for backups taken before tables of contents existed.
    /// - Throws: `RecoveryError(.backupCorrupt)` when the file is damaged or does not describe the dump.
    static func load(of manifest: BackupManifest, from store: BackupStore, key: RepositoryKey?) throws -> DumpTableOfContents? {
        guard let file = manifest.files.first(where: { $0.name == fileName }) else { return nil }
        var data = Data()
        try StoredFileStream.decompress(file, of: manifest, from: store, key: key, phase: "read \(fileName)", progress: nil) { data.append(contentsOf: $0) }
        // An older table of contents lacks what selective restore now relies on (statistics tied to
        // their table, shared-sequence defaults), a newer one may describe a layout this reader does
        // not know: the stream is scanned instead, as for a backup taken before tables of contents existed.
        struct Version: Decodable { var formatVersion: Int }
        if let version = try? JSONOutput.decoder().decode(Version.self, from: data), !readableFormatVersions.contains(version.formatVersion) { return nil }
        let contents: DumpTableOfContents
        do {
            contents = try JSONOutput.decoder().decode(DumpTableOfContents.self, from: data)
        } catch {
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id): \(fileName) is unreadable: \(error)",
                                hint: "the dump itself is unaffected; restore the whole backup (dbrestore \(manifest.id)), or another backup")
        }
        guard readableFormatVersions.contains(contents.formatVersion),
              let dump = manifest.files.first(where: { $0.name == LogicalCapture.dumpFileName }), dump.rawBytes == contents.dumpBytes else {
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id): \(fileName) does not describe its dump (format \(contents.formatVersion), \(contents.dumpBytes) bytes)",
                                hint: "the dump itself is unaffected; restore the whole backup")
        }
        return contents
    }
}
