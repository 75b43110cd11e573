import BackupStorage
import Foundation
import Gzip

/// Re-reads a backup's stored files and checks them against the manifest, without a database.
public enum FileVerifier {
    /// How deep to look.
    public enum Depth: Sendable {
        /// Stored size only, from a `stat` or HEAD: reads no data. A restore chooses its candidate
        /// this way and checks the sha256 on its one streaming pass.
        case size
        /// sha256 and stored size only: fast, catches any changed byte.
        case checksum
        /// sha256, stored size, and the whole gzip stream decompressed (raw size and CRC).
        case full
    }

    /// Files that only speed a restore up: a problem with one is a warning, never a reason to skip the backup.
    static let optionalIndexes: Set<String> = [DumpTableOfContents.fileName, BaseBackupIndex.fileName]

    /// The verdict on one file.
    public struct FileResult: Codable, Sendable {
        public var name: String
        public var ok: Bool
        public var problem: String?
        /// The file is intact but archived (S3 GLACIER): it needs a restore request, it is not damaged.
        public var archived: Bool = false
        /// The file is an optional index (the table of contents): a problem with it is a warning, the
        /// backup still restores in full (and selectively, by a full scan of the dump).
        public var optionalIndex: Bool = false
    }

    /// The verdict on one backup.
    public struct Report: Codable, Sendable {
        public var id: String
        public var files: [FileResult]
        /// `dbprune` removed the backup while it was being checked (`dbverify --files all`): gone,
        /// not damaged, and no file is listed. Never set for a backup that still has its manifest.
        public var pruned: Bool = false
        /// Whose backup it is: the database of a logical backup, `(all)` for a base backup (its whole
        /// server), as `dbrestore list` shows it; nil when the manifest could not be read.
        public var database: String? = nil
        /// Every file the restore needs verifies (a damaged optional index does not count: see `warnings`).
        public var ok: Bool { files.allSatisfy { $0.ok || $0.optionalIndex } }
        /// Not ok only because files are archived.
        public var onlyArchived: Bool { !ok && files.allSatisfy { $0.ok || $0.archived || $0.optionalIndex } }
        /// The first problem, for one-line messages.
        public var firstProblem: String? { files.first { !$0.ok && !$0.optionalIndex }.map { "\($0.name): \($0.problem ?? "damaged")" } }
        /// Problems with optional indexes: reported, never a reason to skip the backup.
        public var warnings: [String] { files.filter { !$0.ok && $0.optionalIndex }.map { "\($0.name): \($0.problem ?? "damaged")" } }
    }

    /// Checks every file of a backup.
    ///
    /// - Returns: a report; damage is reported in it, not thrown.
    /// - Throws: `StorageError` only when the repository itself cannot be read.
    public static func verify(_ manifest: BackupManifest, in store: BackupStore, depth: Depth = .full,
                              cipherKey: RepositoryKey? = nil, progress: ProgressObserver? = nil) throws -> Report {
        var results: [FileResult] = []
        for file in manifest.files {
            // An encrypted file without its key can still be checked against its sha256.
            let key = file.encryptionKeyFingerprint == nil ? nil : cipherKey
            let fileDepth = file.encryptionKeyFingerprint != nil && key == nil && depth == .full ? .checksum : depth
            if let key, key.fingerprint != file.encryptionKeyFingerprint {
                results.append(FileResult(name: file.name, ok: false, problem: "encrypted with another key (fingerprint \(file.encryptionKeyFingerprint ?? ""))"))
                continue
            }
            var result = try verify(file, key: manifest.key(of: file), in: store, depth: fileDepth, cipherKey: key,
                                    phase: "verify \(manifest.id) \(file.name)", progress: progress)
            // The table of contents only speeds up selective restores (which fall back to a full scan
            // without it), the base backup index only the extraction (tar -x without it): a backup whose
            // data verifies must stay a restore candidate without them.
            result.optionalIndex = optionalIndexes.contains(file.name)
            results.append(result)
        }
        var report = Report(id: manifest.id, files: results)
        report.database = manifest.shownDatabase
        return report
    }

    private static func verify(_ file: BackupManifest.File, key: String, in store: BackupStore, depth: Depth,
                               cipherKey: RepositoryKey?, phase: String, progress: ProgressObserver?) throws -> FileResult {
        let reader: ObjectReader
        do {
            if depth == .size { return sizeResult(file, stored: try store.objectInfo(key).size) ?? FileResult(name: file.name, ok: true, problem: nil) }
            reader = try store.makeReader(key)
        } catch let error as StorageError where error.kind == .notFound {
            return FileResult(name: file.name, ok: false, problem: "file is missing")
        } catch let error as StorageError where error.kind == .archived {
            return FileResult(name: file.name, ok: false, problem: "\(error.message); \(error.hint ?? "")", archived: true)
        }
        defer { reader.close() }
        var digest = StreamingDigest()
        var stored: UInt64 = 0
        let decompressor = depth == .full ? try GzipDecompressor { _ in } : nil
        let decryptor = decompressor.flatMap { inflater in cipherKey.map { StreamDecryptor(key: $0, object: key) { try inflater.write($0) } } }
        var gzipProblem: String?
        try ObjectStreaming.forEachChunk(of: reader) { chunk in
            digest.update(chunk)
            stored += UInt64(chunk.count)
            if gzipProblem == nil, let decompressor {
                do {
                    if let decryptor { try decryptor.write(chunk) } else { try decompressor.write(chunk) }
                } catch { gzipProblem = "\(error)" }
            }
            progress?.progress(phase: phase, bytes: stored, total: file.storedBytes, estimated: false)
        }
        progress?.finished()
        if let wrongSize = sizeResult(file, stored: stored) { return wrongSize }
        if digest.hexDigest() != file.sha256 {
            return FileResult(name: file.name, ok: false, problem: "sha256 does not match the manifest (file damaged)")
        }
        if let decompressor {
            if gzipProblem == nil {
                do {
                    try decryptor?.finish()
                    try decompressor.finish()
                } catch { gzipProblem = "\(error)" }
            }
            if let gzipProblem { return FileResult(name: file.name, ok: false, problem: "gzip stream: \(gzipProblem)") }
            if decompressor.bytesOut != file.rawBytes {
                return FileResult(name: file.name, ok: false,
                                  problem: "decompresses to \(decompressor.bytesOut) bytes, manifest says \(file.rawBytes)")
            }
        }
        return FileResult(name: file.name, ok: true, problem: nil)
    }
}

extension FileVerifier {
    /// The verdict when a file's stored size is not the manifest's, nil when it is.
    static func sizeResult(_ file: BackupManifest.File, stored: UInt64) -> FileResult? {
        guard stored != file.storedBytes else { return nil }
        return FileResult(name: file.name, ok: false, problem: "size is \(stored) bytes, manifest says \(file.storedBytes) (truncated or replaced)")
    }
}
