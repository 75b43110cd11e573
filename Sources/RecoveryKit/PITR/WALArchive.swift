import BackupStorage
import Foundation
import Gzip

/// `archive_command` and `restore_command`: WAL files gzip-compressed under `wal/<timeline>/`.
public enum WALArchive {
    /// The repository key of a WAL file (`wal/00000001/000000010000000000000003.gz`).
    public static func key(for name: String) throws -> String {
        guard let timeline = WALSegmentName.timeline(of: name), !name.contains("/"), name.count <= 64 else {
            throw RecoveryError(.usage, "'\(name)' is not a WAL file name",
                                hint: "archive_command passes %p (a path ending in the segment name) and restore_command %f")
        }
        return "wal/\(timeline)/\(name).gz"
    }

    /// What `wal-push` did.
    public enum PushOutcome: String, Codable, Sendable {
        case stored
        /// The same content was already archived (a retry after a crash): success.
        case alreadyArchived = "already-archived"
    }

    /// Archives one WAL file: gzip, store atomically (fsync / completed upload), before returning.
    ///
    /// - Important: a file already archived with different content is never overwritten.
    /// - Throws: `RecoveryError` when the file cannot be read, differs from the stored copy, or the
    ///   repository fails; PostgreSQL then keeps the segment and retries.
    public static func push(path: String, repository: String, key cipherKey: RepositoryKey? = nil,
                            environment: [String: String] = ProcessInfo.processInfo.environment) throws -> PushOutcome {
        let name = (path as NSString).lastPathComponent
        _ = try key(for: name)
        let data = try readSegment(path)
        let store = try Repository.open(repository, create: true, environment: environment)
        // A retry of an archived segment is common (PostgreSQL retries after any failure): answer it
        // without compressing and uploading the file again.
        return try self.store(data, name: name, in: store, key: cipherKey)
    }

    /// The bytes of the WAL file at `path` (archive_command's %p).
    static func readSegment(_ path: String) throws -> Data {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RecoveryError(.failure, "cannot read WAL file \(path)", hint: "archive_command must pass %p, relative to the data directory")
        }
        return data
    }

    /// Stores the WAL file `name` holding `data` in `store` and confirms it there (the
    /// synchronous push). It looks for an archived copy first: one request more per segment, one
    /// upload less per retry. The background pusher of `wal-push --async` skips the look-up (a
    /// copy already there is found by the create-if-absent and compared just the same) and calls
    /// `compress` and `store(compressed:…)` itself, so that a segment is acknowledged on the same
    /// evidence either way.
    static func store(_ data: Data, name: String, in store: BackupStore, key cipherKey: RepositoryKey?) throws -> PushOutcome {
        let key = try key(for: name)
        if let outcome = try compareWithArchived(data, name: name, objectKey: key, store: store, cipherKey: cipherKey) {
            return outcome
        }
        return try self.store(compressed: compress(data, objectKey: key, cipherKey: cipherKey), of: data, name: name, in: store, key: cipherKey)
    }

    /// What is stored for the WAL bytes `data` under `objectKey`: gzip level 1 (WAL is written
    /// once and read back only in a recovery; the fastest level keeps archive_command ahead of a
    /// busy server), then encrypted when the repository is.
    static func compress(_ data: Data, objectKey: String, cipherKey: RepositoryKey?) throws -> Data {
        var compressed = Data()
        let compressor = try GzipCompressor(level: 1) { compressed.append(contentsOf: $0) }
        try data.withUnsafeBytes { try compressor.write($0) }
        try compressor.finish()
        guard let cipherKey else { return compressed }
        var encrypted = Data()
        let encryptor = try StreamEncryptor(key: cipherKey, object: objectKey) { encrypted.append(contentsOf: $0) }
        try compressed.withUnsafeBytes { try encryptor.write($0) }
        try encryptor.finish()
        return encrypted
    }

    /// The second half of `store`: stores `compressed` (what `compress` made of `data`) and
    /// confirms it, or compares `data` with what the name already holds. The background pusher
    /// compresses first, in its turn at the CPU, and uploads with the others at once.
    static func store(compressed: Data, of data: Data, name: String, in store: BackupStore, key cipherKey: RepositoryKey?) throws -> PushOutcome {
        let key = try key(for: name)
        // Created only if absent (link() locally, If-None-Match on S3): of two concurrent pushes of one
        // name exactly one stores its copy; the other compares with what won.
        if try store.create(key, contents: compressed) {
            // Confirm what the name now holds: an S3-compatible server whose If-None-Match check and
            // store are not one step (moto) can let a concurrent push of the same name overwrite ours.
            // The push whose bytes are not the ones stored did not win, and compares like any other.
            // (AWS S3 makes the conditional PUT atomic; there this only confirms it.) A check that fails
            // here is not an answer: the comparison below reads again and reports its own error.
            if store.holds(key, contents: compressed) { return .stored }
        }
        guard let outcome = try compareWithArchived(data, name: name, objectKey: key, store: store, cipherKey: cipherKey) else {
            throw RecoveryError(.repositoryError, "WAL file \(name) was archived and removed again while we stored it",
                                hint: "something deletes from \(store.location)/wal while archiving runs; PostgreSQL will retry")
        }
        return outcome
    }

    /// `.alreadyArchived` when the archive holds exactly `data` under `objectKey`, nil when it holds nothing.
    ///
    /// - Throws: `RecoveryError(.repositoryError)` when it holds different content (which is kept).
    private static func compareWithArchived(_ data: Data, name: String, objectKey: String, store: BackupStore,
                                            cipherKey: RepositoryKey?) throws -> PushOutcome? {
        let existing: Data
        do {
            existing = try store.read(objectKey)
        } catch let error as StorageError where error.kind == .notFound {
            return nil
        }
        let stored = try decompress(existing, name: name, objectKey: objectKey, cipherKey: cipherKey)
        if stored == data { return .alreadyArchived }
        throw RecoveryError(.repositoryError,
                            "WAL file \(name) is already archived in \(store.location) with DIFFERENT content; the archived copy was kept",
                            hint: "two clusters may be archiving into one repository; give each its own --repo")
    }

    /// Fetches one WAL file for `restore_command`: download, verify (gzip CRC and length),
    /// decompress to a temporary file, rename to `destination`.
    ///
    /// - Returns: false when the file is not in the archive (recovery ends there).
    /// - Throws: any other failure, which must stop recovery rather than end it early.
    public static func fetch(name: String, destination: String, repository: String, key cipherKey: RepositoryKey? = nil,
                             environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Bool {
        let key = try key(for: name)
        let store = try Repository.open(repository, create: false, environment: environment)
        let compressed: Data
        do {
            compressed = try store.read(key)
        } catch let error as StorageError where error.kind == .notFound {
            return false
        }
        try install(try decompress(compressed, name: name, objectKey: key, cipherKey: cipherKey), at: destination)
        return true
    }

    /// Writes a verified WAL file where restore_command was asked to: a temporary file, then a rename.
    static func install(_ data: Data, at destination: String) throws {
        let temporary = destination + ".dbrecovery-partial"
        guard FileManager.default.createFile(atPath: temporary, contents: data) else {
            throw RecoveryError(.failure, "cannot write \(temporary)")
        }
        guard rename(temporary, destination) == 0 else {
            unlink(temporary)
            throw RecoveryError(.failure, "cannot rename \(temporary) to \(destination): \(String(cString: strerror(errno)))")
        }
    }

    static func decompress(_ stored: Data, name: String, objectKey: String, cipherKey: RepositoryKey?) throws -> Data {
        var output = Data()
        try decompress(stored, name: name, objectKey: objectKey, cipherKey: cipherKey) { output.append(contentsOf: $0) }
        return output
    }

    /// Decrypts (when encrypted) and decompresses a stored WAL file, handing the WAL bytes to
    /// `sink` as they come (each chunk valid only during the call): the prefetcher writes them to
    /// its spool this way instead of holding the whole segment in memory first.
    ///
    /// - Throws: `RecoveryError(.backupCorrupt)` when the gzip stream is damaged or cut short (the
    ///   bytes handed over so far are then not the segment), `.configuration` without the key, or
    ///   whatever `sink` throws.
    static func decompress(_ stored: Data, name: String, objectKey: String, cipherKey: RepositoryKey?,
                           into sink: @escaping (UnsafeRawBufferPointer) throws -> Void) throws {
        do {
            let decompressor = try GzipDecompressor(sink: sink)
            if stored.starts(with: RepositoryKey.magic) {
                guard let cipherKey else {
                    throw RecoveryError(.configuration, "archived WAL file \(name) is encrypted and no key was given",
                                        hint: "pass --encryption-key-file FILE or set DBRECOVERY_ENCRYPTION_KEY in restore_command's environment")
                }
                let decryptor = StreamDecryptor(key: cipherKey, object: objectKey) { try decompressor.write($0) }
                try stored.withUnsafeBytes { try decryptor.write($0) }
                try decryptor.finish()
            } else {
                try stored.withUnsafeBytes { try decompressor.write($0) }
            }
            try decompressor.finish()
        } catch let error as GzipError {
            throw RecoveryError(.backupCorrupt, "archived WAL file \(name) is damaged: \(error)",
                                hint: "this segment cannot be replayed; recovery can only reach the point before it")
        }
    }
}
