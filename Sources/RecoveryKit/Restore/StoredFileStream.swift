import BackupStorage
import Gzip
import ProcessSignals

/// Reads one stored backup file back: sha256 and size checked, gzip decompressed into `sink`.
/// The one read path of every restore (logical replay, base backup extraction).
enum StoredFileStream {
    /// Streams `file` of `manifest` from `store`, decompressed, into `sink`.
    ///
    /// - Important: the checksum is known only at the end of the stream. Callers must not make
    ///   what they wrote permanent (COMMIT, starting a server) before this returns.
    /// - Throws: `RecoveryError(.backupCorrupt)` for damaged gzip data or a size or sha256 that
    ///   differs from the manifest (also when `sink` failed first); otherwise whatever `sink` or
    ///   the store throws.
    static func decompress(_ file: BackupManifest.File, of manifest: BackupManifest, from store: BackupStore, key: RepositoryKey?, phase: String,
                           progress: ProgressObserver?, into sink: @escaping (UnsafeRawBufferPointer) throws -> Void) throws {
        // The table of contents and the base backup index are optional (FileVerifier): --emergency would not skip the backup for them.
        let hint = file.name == DumpTableOfContents.fileName
            ? "the dump itself is unaffected: restore the whole backup (dbrestore \(manifest.id)); selective restores fall back to a full scan"
            : file.name == BaseBackupIndex.fileName ? "the base backup itself is unaffected: it is extracted in one pass without the index"
            : "nothing was applied from it; dbrestore --emergency picks the newest backup that verifies"
        let decryptKey = try StoredFileStream.key(for: file, of: manifest, given: key)
        let reader: ObjectReader
        do {
            reader = try store.makeReader(manifest.key(of: file))
        } catch let error as StorageError where error.kind == .notFound {
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id): \(file.name), named in its manifest, is missing", hint: hint)
        }
        defer {
            reader.close()
            progress?.finished()
        }
        var digest = StreamingDigest()
        var stored: UInt64 = 0
        let decompressor = try GzipDecompressor(sink: sink)
        let decryptor = decryptKey.map { key in StreamDecryptor(key: key, object: manifest.key(of: file)) { try decompressor.write($0) } }
        // Damaged gzip data, or a failure of the sink (a statement the server refuses, one the dump
        // policy refuses), stops the replay at once, but the rest of the file is still hashed (and
        // read this once only): a sha256 that differs says the stored file changed after the backup
        // (a damaged copy: the next copy or candidate is tried), one that matches says the backup
        // was written that way (the sink's own error is reported). An interruption stops the read.
        var gzipDamage: GzipError?
        var sinkFailure: Error?
        try ObjectStreaming.forEachChunk(of: reader) { chunk in
            digest.update(chunk)
            stored += UInt64(chunk.count)
            if gzipDamage == nil && sinkFailure == nil {
                do {
                    if let decryptor { try decryptor.write(chunk) } else { try decompressor.write(chunk) }
                } catch let error as GzipError {
                    gzipDamage = error
                } catch {
                    if Interruption.isRequested { throw error }
                    sinkFailure = error
                }
            }
            progress?.progress(phase: "\(phase) \(manifest.id) \(file.name)", bytes: stored, total: file.storedBytes, estimated: false)
        }
        guard stored == file.storedBytes, digest.hexDigest() == file.sha256 else {
            // The record dbprune trusts in place of a full read must not outlive this finding.
            VerificationRecord.forget(manifest, in: store)
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id): \(file.name) does not match its sha256 (file damaged)", hint: hint)
        }
        if let sinkFailure { throw sinkFailure }
        do {
            if let gzipDamage { throw gzipDamage }
            try decryptor?.finish()
            try decompressor.finish()
        } catch let error as GzipError {
            VerificationRecord.forget(manifest, in: store)
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id) is damaged: \(file.name): \(error)", hint: hint)
        }
    }

    /// The key an encrypted file needs, checked against the fingerprint in its manifest.
    ///
    /// - Throws: `RecoveryError(.configuration)` when the file is encrypted and no key, or another
    ///   key, was given.
    static func key(for file: BackupManifest.File, of manifest: BackupManifest, given key: RepositoryKey?) throws -> RepositoryKey? {
        guard let fingerprint = file.encryptionKeyFingerprint else { return nil }
        guard let key else {
            throw RecoveryError(.configuration, "backup \(manifest.id) is encrypted (key \(fingerprint)) and no key was given",
                                hint: "pass --encryption-key-file FILE or set DBRECOVERY_ENCRYPTION_KEY")
        }
        guard key.fingerprint == fingerprint else {
            throw RecoveryError(.configuration, "backup \(manifest.id) was encrypted with another key (fingerprint \(fingerprint), given \(key.fingerprint))",
                                hint: "use the key the backup was taken with")
        }
        return key
    }
}
