import BackupStorage
import Foundation

/// An optional index of a physical backup's `base.tar.gz` (`base.index.json.gz`, stored beside it
/// and named in the manifest): the compressor's access points with the sha256 of each compressed
/// segment, as a logical backup's table of contents has them, and where the tar stream stands at
/// each point. With it an extraction decodes the segments on several cores, each writing the files
/// of its own part (`ParallelExtraction`); without it (older backups, encrypted ones, a damaged
/// index) `tar -x` extracts the stream in one pass, as before.
struct BaseBackupIndex: Codable, Equatable, Sendable {
    static let fileName = "base.index.json.gz"
    static let currentFormatVersion = 1

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
        formatVersion == Self.currentFormatVersion && positions.count == accessPoints.count
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
