import BackupStorage
import Foundation

/// Whether a repository stores encrypted or plaintext data, recorded in `encryption.json` at its
/// root, so that a backup or WAL push without the key never slips plaintext into an encrypted
/// repository (or the reverse) unnoticed.
public struct RepositoryEncryption: Codable, Sendable, Equatable {
    /// True when the repository's backups and WAL are encrypted.
    public var encrypted: Bool
    /// Fingerprint of the key (never the key), when encrypted.
    public var keyFingerprint: String?

    private enum CodingKeys: String, CodingKey {
        case encrypted
        case keyFingerprint = "key_fingerprint"
    }

    /// The record's key in the repository.
    public static let key = "encryption.json"

    /// Checks that writing with `key` (nil: plaintext) matches what the repository holds. Only a
    /// repository that holds backups or WAL is bound: its mode is recorded (if not yet) from what it
    /// holds. A repository that holds neither is not: its first stored backup decides, and nothing
    /// is recorded before one exists, so a run that fails before storing anything (a wrong password,
    /// a server down, a dry run) leaves no record behind to refuse the next one.
    ///
    /// - Parameters:
    ///   - allowMixed: `--allow-mixed-encryption`: store anyway.
    ///   - database: the database a logical backup stores (nil: a base backup or WAL); what it is held
    ///     to in a repository without a record whose databases were stored in different modes.
    /// - Throws: `RecoveryError(.usage)` naming the mismatch and the flag; storage errors.
    public static func checkWrite(to store: BackupStore, key: RepositoryKey?, allowMixed: Bool, database: String? = nil) throws {
        guard let recorded = try binding(in: store, writing: key, database: database), !allowMixed else { return }
        switch (recorded.encrypted, key) {
        case (true, nil):
            throw RecoveryError(.usage, "repository \(store.location) holds encrypted backups; refusing to store plaintext in it",
                                hint: "pass the repository's key with --encryption-key-file (or DBRECOVERY_ENCRYPTION_KEY); --allow-mixed-encryption stores plaintext anyway")
        case (false, .some):
            throw RecoveryError(.usage, "repository \(store.location) holds unencrypted backups; refusing to mix encrypted ones into it",
                                hint: "use a new repository for encrypted backups, or pass --allow-mixed-encryption")
        case (true, .some(let key)) where recorded.keyFingerprint != nil && recorded.keyFingerprint != key.fingerprint:
            throw RecoveryError(.usage, "repository \(store.location) is encrypted with another key (fingerprint \(recorded.keyFingerprint ?? "?"), this key \(key.fingerprint))",
                                hint: "pass the repository's key; --allow-mixed-encryption stores with this one anyway")
        default:
            return
        }
    }

    /// Records the mode of a repository a write has just stored data in, from what it now holds.
    /// Best effort: a repository left without a record gets one at its next write's check.
    public static func recordStored(in store: BackupStore, key: RepositoryKey?, database: String? = nil) {
        _ = try? binding(in: store, writing: key, database: database)
    }

    /// Whether writing with `key` is what this record says the repository holds.
    private func agrees(with key: RepositoryKey?) -> Bool {
        guard let key else { return !encrypted }
        return encrypted && (keyFingerprint == nil || keyFingerprint == key.fingerprint)
    }

    /// The mode a write must match: the record, or (first write to a repository that holds data,
    /// e.g. one from before this record existed) the mode detected from its backups and WAL, then
    /// recorded with a create-if-absent so concurrent writers agree. Nil when the repository holds
    /// neither backups nor WAL.
    private static func binding(in store: BackupStore, writing key: RepositoryKey?, database: String?) throws -> RepositoryEncryption? {
        if let recorded = try read(from: store) {
            // The usual case costs one read; only a disagreement looks at what the repository holds.
            if recorded.agrees(with: key) { return recorded }
            guard try Holdings.read(from: store).isEmpty else { return recorded }
            // A record on a repository that holds nothing was written by a run that stored nothing
            // (versions before this one recorded the mode before connecting to the server): it
            // binds nothing, and is removed so that the first backup's own mode is recorded next.
            try removeUnbacked(in: store)
            return nil
        }
        let holdings = try Holdings.read(from: store)
        guard let mode = holdings.repositoryMode else {
            // Held in several modes (`--allow-mixed-encryption`, or versions before the record): the
            // repository has no one mode to record, and whichever database was stored last must not
            // decide another's. Each write is held to what it adds to: its own database's newest backup.
            return holdings.mode(of: database)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        if try store.create(Self.key, contents: try encoder.encode(mode)) { return mode }
        // Another writer recorded it a moment ago: its record wins.
        return try read(from: store) ?? mode
    }

    /// Deletes the record, only if it is still the one read (another writer may have replaced it).
    private static func removeUnbacked(in store: BackupStore) throws {
        do {
            let current = try store.readVersioned(Self.key)
            _ = try store.delete(Self.key, ifVersion: current.version)
        } catch let error as StorageError where error.kind == .notFound {
            return
        }
    }

    private static func read(from store: BackupStore) throws -> RepositoryEncryption? {
        let data: Data
        do {
            data = try store.read(Self.key)
        } catch let error as StorageError where error.kind == .notFound {
            return nil
        }
        do {
            return try JSONDecoder().decode(RepositoryEncryption.self, from: data)
        } catch {
            throw RecoveryError(.repositoryError, "repository \(store.location): \(Self.key) is unreadable",
                                hint: "restore it from another copy, or delete it and the next write records the repository's mode again")
        }
    }

    /// What a repository without a record holds (one written before the record existed): the mode
    /// of each group's newest backup (a database's logical backups, a server's base backups) and of
    /// its WAL. The repository's mode is theirs only when they all agree.
    private struct Holdings {
        var groups: [RetentionGroup: RepositoryEncryption] = [:]
        /// The mode of each database name's newest logical backup, of whichever server (one name may have several groups).
        var databases: [DatabaseNameKey: RepositoryEncryption] = [:]
        var wal: RepositoryEncryption?
        /// The newest base backup's, of any server.
        var newestBaseBackup: RepositoryEncryption?

        var isEmpty: Bool { groups.isEmpty && wal == nil }

        static func read(from store: BackupStore) throws -> Holdings {
            var holdings = Holdings()
            // The WAL is looked at while the backups are listed: a round trip less on S3, where the
            // first write to a new repository (an async WAL pusher's start) waits for this.
            let walMode = Background {
                try store.list(prefix: "wal/").first(where: { $0.key.hasSuffix(".gz") }).map { wal in
                    RepositoryEncryption(encrypted: Array(try store.readFirst(RepositoryKey.magic.count, of: wal)) == RepositoryKey.magic,
                                         keyFingerprint: nil)
                }
            }
            defer { walMode.join() }
            let manifests = try Catalog(store: store).manifests()
            for (group, members) in RetentionGroup.split(manifests) {
                guard let newest = members.first.flatMap(mode) else { continue }
                holdings.groups[group] = newest
            }
            for manifest in manifests where manifest.kind == .logical && holdings.databases[DatabaseNameKey(manifest.database.name)] == nil {
                holdings.databases[DatabaseNameKey(manifest.database.name)] = mode(manifest)
            }
            holdings.newestBaseBackup = manifests.first { $0.kind == .physical }.flatMap(mode)
            holdings.wal = try walMode.wait()
            return holdings
        }

        /// The one mode everything is stored in (a WAL file names no key: it agrees with any key);
        /// nil when empty or mixed.
        var repositoryMode: RepositoryEncryption? {
            let modes = Array(groups.values)
            guard let first = modes.first ?? wal,
                  modes.allSatisfy({ $0 == first }), wal.map({ $0.encrypted == first.encrypted }) ?? true else { return nil }
            return first
        }

        /// In a mixed repository: the mode of `database`'s newest logical backup; for a base backup
        /// or WAL (`database` nil), the WAL's, else the newest base backup's; nil for something new.
        func mode(of database: String?) -> RepositoryEncryption? {
            if let database { return databases[DatabaseNameKey(database)] }
            return wal ?? newestBaseBackup
        }

        /// The mode a backup's files were stored in; nil for one without files.
        private static func mode(_ manifest: BackupManifest) -> RepositoryEncryption? {
            manifest.files.first.map { RepositoryEncryption(encrypted: $0.encryptionKeyFingerprint != nil, keyFingerprint: $0.encryptionKeyFingerprint) }
        }
    }
}
