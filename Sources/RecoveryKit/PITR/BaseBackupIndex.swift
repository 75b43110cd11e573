import BackupStorage
import Foundation
import Gzip

/// An optional index of a physical backup's `base.tar.gz` (`base.index.json.gz`, stored beside it
/// and named in the manifest): the compressor's access points with the sha256 of each compressed
/// segment, as a logical backup's table of contents has them, and where the tar stream stands at
/// each point. With it an extraction decodes the segments on several cores, each writing the files
/// of its own part (`ParallelExtraction`); without it (older backups, encrypted ones, a damaged
/// index) `tar -x` extracts the stream in one pass, as before.
struct BaseBackupIndex: Codable, Equatable, Sendable {
    static let fileName = "base.index.json.gz"
    /// 1: access points inside base.tar.gz's one gzip member; 2: each point a member's start
    /// (`GzipCompressor.Layout.memberPerBlock`, base backups since issue 21 item 3). A dbrecovery
    /// from before 2 finds a 2 unusable and extracts such a backup in one pass (`tar -x` from its
    /// decompressor, which reads members), where its segment reader would have read raw deflate.
    static let currentFormatVersion = 2
    static let readableFormatVersions = 1...2

    /// The format version an index of a base.tar.gz in `layout` carries.
    static func formatVersion(for layout: GzipCompressor.Layout) -> Int {
        layout == .memberPerBlock ? currentFormatVersion : 1
    }

    /// How base backups are compressed: one gzip member per 1 MiB block, by libdeflate (about
    /// 2.4× less CPU than zlib at level 6 for about 1 % more bytes); `DBRECOVERY_BASE_BACKUP_LAYOUT=single-member`
    /// gives the one zlib member of backups before it (the tests' older backups; the smallest file).
    static func layout(in environment: [String: String]) -> GzipCompressor.Layout {
        environment["DBRECOVERY_BASE_BACKUP_LAYOUT"] == "single-member" ? .singleMember : .memberPerBlock
    }

    var formatVersion: Int
    /// Size of the uncompressed tar stream.
    var tarBytes: UInt64
    /// Size of the compressed (not encrypted) file.
    var compressedBytes: UInt64
    /// The first is the start of the file; each carries its segment's sha256.
    var accessPoints: [DumpTableOfContents.AccessPoint]
    /// One per access point: the member the point falls in (nil: a header starts there).
    var positions: [TarPosition?]

    /// Whether the index describes `file` and every point is one a reader can start at.
    func usable(for file: BackupManifest.File) -> Bool {
        Self.readableFormatVersions.contains(formatVersion) && positions.count == accessPoints.count
            && DumpSegments.usable(file, points: accessPoints, uncompressedBytes: tarBytes, compressedBytes: compressedBytes)
            && zip(accessPoints, positions).allSatisfy { point, position in
                // The point lies inside the record the position names (its header, data or padding).
                position.map { position in
                    position.headerOffset < point.uncompressedOffset
                        && point.uncompressedOffset < position.headerOffset + (position.member?.recordBytes ?? TarMember.blockSize)
                        && (position.member?.hasSafePath ?? true)
                } ?? true
            }
    }

    /// Reads and checks the index of `manifest`'s base backup, if it has one.
    ///
    /// - Returns: nil for backups without one.
    /// - Throws: `RecoveryError(.backupCorrupt)` when the file is damaged or unreadable (the
    ///   caller extracts without it: the index is optional).
    static func load(of manifest: BackupManifest, from store: BackupStore, key: RepositoryKey?) throws -> BaseBackupIndex? {
        guard let file = manifest.files.first(where: { $0.name == fileName }) else { return nil }
        var data = Data()
        try StoredFileStream.decompress(file, of: manifest, from: store, key: key, phase: "read \(fileName)", progress: nil) { data.append(contentsOf: $0) }
        do {
            return try JSONOutput.decoder().decode(BaseBackupIndex.self, from: data)
        } catch {
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id): \(fileName) is unreadable: \(error)",
                                hint: "the base backup itself is unaffected; it is extracted in one pass without the index")
        }
    }
}
