import BackupStorage
import Foundation
import Gzip
import ProcessSignals

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

    /// The WAL file name a repository key holds (`key(for:)` read back); nil for anything else
    /// under `wal/` (a temporary file of a write in progress).
    static func fileName(ofKey key: String) -> String? {
        let last = (key as NSString).lastPathComponent
        return last.hasSuffix(".gz") ? String(last.dropLast(3)) : nil
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

    /// The bytes of the WAL file at `path` (archive_command's %p), read into memory of our own: what
    /// is compressed and stored is one snapshot of the file, even if something writes to it meanwhile
    /// (a mapping would let the gzip's CRC and its data see different bytes).
    static func readSegment(_ path: String) throws -> Data {
        try requireReadable(path)
        guard let data = FileManager.default.contents(atPath: path) else { throw unreadable(path) }
        return data
    }

    /// Throws `unreadable` unless `path` is a regular file this process may read, and an error
    /// naming its size when it is named like a segment but is not a segment's size: PostgreSQL
    /// archives whole segments only (a `.partial` one too), so a file cut short or of another size
    /// is not what it claims to be, and archiving it would put a wrong segment under a real name.
    static func requireReadable(_ path: String) throws {
        var status = stat()
        guard stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFREG, access(path, R_OK) == 0 else { throw unreadable(path) }
        let name = (path as NSString).lastPathComponent
        let size = status.st_size
        if WALSegmentName.isSegment(String(name.prefix(24))) && (name.count == 24 || name.dropFirst(24) == ".partial"),
           !WALSegmentName.isSegmentSize(UInt64(max(size, 0))) {
            throw RecoveryError(.failure, "WAL file \(path) is \(size) bytes, not a segment's size (a power of two from 1 MB to 1 GB); it was not archived",
                                hint: "PostgreSQL archives whole segments only: this copy was cut short or is not PostgreSQL's; the archive was left as it was")
        }
    }

    /// The error for a WAL file that cannot be read, saying why (no such file, a directory, no permission).
    static func unreadable(_ path: String) -> RecoveryError {
        var status = stat()
        var denied = false
        let reason: String
        if stat(path, &status) != 0 {
            denied = errno == EACCES
            reason = String(cString: strerror(errno))
        } else if status.st_mode & S_IFMT == S_IFDIR {
            reason = "it is a directory"
        } else if status.st_mode & S_IFMT != S_IFREG {
            reason = "it is not a regular file"
        } else if access(path, R_OK) != 0 {
            denied = errno == EACCES
            reason = String(cString: strerror(errno))
        } else {
            reason = "read failed"
        }
        return RecoveryError(.failure, "cannot read WAL file \(path): \(reason)",
                             hint: denied ? "let the user running archive_command (PostgreSQL's) read it and its directory, as PostgreSQL made them"
                                : "archive_command must pass %p (relative to the data directory, where PostgreSQL runs it) of a segment that is still there")
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
        return try self.store(compressed: compress(data, objectKey: key, cipherKey: cipherKey), of: { data }, name: name, in: store, key: cipherKey)
    }

    /// What is stored for the WAL bytes `data` under `objectKey`: gzip at igzip's level 1 (WAL is
    /// written once and read back only in a recovery; the fastest level keeps archive_command ahead
    /// of a busy server and off its CPU), then encrypted when the repository is. The segment is in
    /// memory whole, so it is compressed at once (`WholeBufferGzip`): the same gzip as a stream's.
    static func compress(_ data: Data, objectKey: String, cipherKey: RepositoryKey?) throws -> Data {
        try data.withUnsafeBytes { try compress($0, objectKey: objectKey, cipherKey: cipherKey) }
    }

    /// `compress` of bytes in memory the caller owns.
    static func compress(_ bytes: UnsafeRawBufferPointer, objectKey: String, cipherKey: RepositoryKey?) throws -> Data {
        let compressed = try WholeBufferGzip.compress(bytes)
        guard let cipherKey else { return compressed }
        var encrypted = Data()
        let encryptor = try StreamEncryptor(key: cipherKey, object: objectKey) { encrypted.append(contentsOf: $0) }
        try compressed.withUnsafeBytes { try encryptor.write($0) }
        try encryptor.finish()
        return encrypted
    }

    /// The second half of `store`: stores `compressed` (what `compress` made of the segment) and
    /// confirms it, or compares the segment (`original`, asked for only then) with what the name
    /// already holds. The background pusher compresses first, in its turn at the CPU, and uploads
    /// with the others at once.
    static func store(compressed: Data, of original: () throws -> Data, name: String, in store: BackupStore,
                      key cipherKey: RepositoryKey?) throws -> PushOutcome {
        let key = try key(for: name)
        // Created only if absent (link() locally, If-None-Match on S3): of two concurrent pushes of one
        // name exactly one stores its copy; the other compares with what won.
        // And confirmed: an S3-compatible server whose If-None-Match check and store are not one step
        // (moto) can let a concurrent push of the same name overwrite ours. The push whose bytes are
        // not the ones stored did not win, and compares like any other. (AWS S3 makes the conditional
        // PUT atomic; there this only confirms it.) A confirmation that fails is not an answer: the
        // comparison below reads again and reports its own error.
        if try store.createConfirmed(key, contents: compressed) { return .stored }
        guard let outcome = try compareWithArchived(original(), name: name, objectKey: key, store: store, cipherKey: cipherKey) else {
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
        // Another server's segment under the same name (a cluster initialised again, or a second one
        // given this --repo): named by both servers' system identifiers, from each copy's first page.
        if let archived = WALServer.systemIdentifier(ofHeader: stored.prefix(64)),
           let ours = WALServer.systemIdentifier(ofHeader: data.prefix(64)), archived != ours {
            throw RecoveryError(.repositoryError,
                                "WAL file \(name) is already archived in \(store.location) with DIFFERENT content, written by another server "
                                + "(system \(archived)), not this one (system \(ours)); the archived copy was kept",
                                hint: "two servers archive into one repository under the same WAL names: give this server its own --repo "
                                + "(its WAL is not archived until then; a base backup of it needs its own WAL)")
        }
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

    /// What `restore_command` does about a segment the archive does not hold. At the archive's end
    /// that is "not found", which ends recovery. But where later segments of its timeline are archived,
    /// the archive has a hole (a segment deleted by hand, lost, or pruned under a restored server that
    /// was still replaying): ending recovery there would promote the server short of the archive and
    /// say nothing. A segment uploaded out of order (`wal-push --async` stores several at once) fills
    /// its hole in moments, so the hole is looked at again for `DBRECOVERY_WAL_HOLE_WAIT` seconds
    /// (default 120) before it counts. A standby (`standby.signal` beside `pg_wal`) only waits and asks
    /// again, so it gets "not found" as before.
    ///
    /// - Parameter fetch: fetches `name` again; true once it is there.
    /// - Returns: true when the segment came while waiting (fetched), false for the archive's end.
    /// - Throws: `RecoveryError(.walFetchFailed)` for a hole that stayed, naming the next archived segment.
    public static func answerMissing(_ name: String, destination: String, repository: String, environment: [String: String],
                                     fetch: () throws -> Bool) throws -> Bool {
        guard WALSegmentName.isSegment(name), let timeline = WALSegmentName.timeline(of: name) else { return false }
        let dataDirectory = ((destination as NSString).deletingLastPathComponent as NSString).deletingLastPathComponent
        if FileManager.default.fileExists(atPath: (dataDirectory.isEmpty ? "." : dataDirectory) + "/standby.signal") { return false }
        let store = try Repository.open(repository, create: false, environment: environment)
        // Later segments of the timeline: this one's log and the next (a hole wider than 4 GiB of WAL
        // at the very end of a log goes unseen; anything nearer is found with two short listings).
        let log = String(name.dropFirst(8).prefix(8))
        var prefixes = ["wal/\(timeline)/\(timeline)\(log)"]
        if let number = UInt32(log, radix: 16), number < UInt32.max { prefixes.append("wal/\(timeline)/\(timeline)" + String(format: "%08X", number + 1)) }
        func laterSegment() throws -> String? {
            for prefix in prefixes {
                let later = try store.list(prefix: prefix).compactMap { fileName(ofKey: $0.key) }.filter { WALSegmentName.isSegment($0) && $0 > name }
                if let first = later.min() { return first }
            }
            return nil
        }
        guard var later = try laterSegment() else { return false }
        // `dbrestore --pitr --target-lsn` below a hole (the plan accepts it): recovery needs nothing from
        // here on, though its read-ahead asks; "not found" cannot promote short of the target (from
        // PostgreSQL 13 on, a recovery that ends before its target fails).
        if try targetLiesBefore(name, dataDirectory: dataDirectory.isEmpty ? "." : dataDirectory, store: store) { return false }
        let wait = Double(environment["DBRECOVERY_WAL_HOLE_WAIT"] ?? "").flatMap { $0 >= 0 ? $0 : nil } ?? 120
        let deadline = Date().addingTimeInterval(wait)
        while Date() < deadline {
            try Interruption.pause(min(1, max(0, deadline.timeIntervalSinceNow)))
            if try fetch() { return true }
            guard let still = try laterSegment() else { return false }
            later = still
        }
        throw RecoveryError(.walFetchFailed,
                            "WAL file \(name) is missing from \(store.location), but later segments of its timeline are archived (\(later) …): "
                            + "ending recovery here would promote the server short of them, so recovery stops",
                            hint: "put \(name) back in the archive (another repository, the old server's pg_wal) and start the server again, "
                            + "or recover to a target before it (dbrestore --pitr --target-lsn/--target-time)")
    }

    /// Whether the data directory's `recovery_target_lsn` lies before segment `name` begins (the
    /// segment size from the repository's base backups; one size, or no answer).
    private static func targetLiesBefore(_ name: String, dataDirectory: String, store: BackupStore) throws -> Bool {
        guard let settings = try? String(contentsOfFile: dataDirectory + "/postgresql.auto.conf", encoding: .utf8),
              let line = settings.split(separator: "\n").last(where: { $0.trimmingCharacters(in: .whitespaces).hasPrefix("recovery_target_lsn") }),
              let quoted = line.split(separator: "'").dropFirst().first, let target = WALSegmentName.parseLSN(String(quoted)) else { return false }
        let sizes = Set(try Catalog(store: store).manifests().compactMap { $0.physical?.segmentSize })
        guard sizes.count == 1, let size = sizes.first, let number = WALSegmentName.segmentNumber(of: name, segmentSize: size) else { return false }
        return target < number * size
    }

    /// Writes a verified WAL file where restore_command was asked to: a temporary file, then a rename.
    static func install(_ data: Data, at destination: String) throws {
        let temporary = destination + ".dbrecovery-partial"
        do {
            try data.write(to: URL(fileURLWithPath: temporary))
        } catch {
            unlink(temporary)
            throw RecoveryError(.failure, "cannot write \(temporary): \(RecoveryError.classify(error).message)",
                                hint: "the server's user must be able to write where restore_command puts the file (the data directory's pg_wal), and that file system needs room for one segment")
        }
        guard rename(temporary, destination) == 0 else {
            unlink(temporary)
            throw RecoveryError(.failure, "cannot rename \(temporary) to \(destination): \(String(cString: strerror(errno)))")
        }
    }

    /// The largest WAL file there is (`--wal-segsize` 1024 MiB): a stored file claiming more is not
    /// inflated whole but streamed, and the streaming decompressor finds what is wrong with it.
    static let largestFile = 1 << 30

    /// Decrypts (when encrypted) and decompresses a stored WAL file whole (`wal-fetch`, the prefetcher). What
    /// `compress` stores unencrypted is one gzip member: libdeflate inflates it at once
    /// (`WholeBufferGzip.decompressMember`, a third of zlib's CPU, checking the CRC-32 and length
    /// just the same). Anything else (encrypted, another valid gzip, a damaged or cut-short stream)
    /// goes through the streaming decompressor below, which reads every valid stream and says what
    /// is wrong with the others.
    ///
    /// - Throws: as the streaming `decompress`.
    static func decompress(_ stored: Data, name: String, objectKey: String, cipherKey: RepositoryKey?) throws -> Data {
        if !stored.starts(with: RepositoryKey.magic),
           let whole = stored.withUnsafeBytes({ WholeBufferGzip.decompressMember($0, sizeLimit: largestFile) }) {
            return whole
        }
        var output = Data()
        try decompress(stored, name: name, objectKey: objectKey, cipherKey: cipherKey) { output.append(contentsOf: $0) }
        return output
    }

    /// Decrypts (when encrypted) and decompresses a stored WAL file, handing the WAL bytes to
    /// `sink` as they come (each chunk valid only during the call): what the whole-buffer
    /// `decompress` falls back to.
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
            throw RecoveryError(.backupCorrupt, "archived WAL file \(name) is damaged: \(error)", hint: damagedHint(name))
        }
    }

    /// The fix for a damaged archived segment, in `wal-fetch`'s message and `dbrestore --pitr`'s
    /// error when recovery stopped at it.
    static func damagedHint(_ name: String) -> String {
        "this segment cannot be replayed: put an intact copy of \(name) into the archive (another repository, the old server's pg_wal) "
            + "and start again, or recover to a target before it (dbrestore --pitr --target-lsn/--target-time)"
    }
}
