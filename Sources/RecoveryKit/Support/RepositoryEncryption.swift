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

    /// Checks that writing with `key` (nil: plaintext) matches what the repository holds; records
    /// the repository's mode on its first write (from what it already holds, else from this write).
    ///
    /// - Parameters:
    ///   - allowMixed: `--allow-mixed-encryption`: store anyway.
    /// - Throws: `RecoveryError(.usage)` naming the mismatch and the flag; storage errors.
    public static func checkWrite(to store: BackupStore, key: RepositoryKey?, allowMixed: Bool) throws {
        let recorded = try recordedOrDetected(in: store, writing: key)
        guard !allowMixed else { return }
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

    /// The recorded mode, or (first write) the mode detected from existing backups and WAL, else
    /// the mode of this write; recorded with a create-if-absent so concurrent first writes agree.
    private static func recordedOrDetected(in store: BackupStore, writing key: RepositoryKey?) throws -> RepositoryEncryption {
        if let recorded = try read(from: store) { return recorded }
        let mode = try detect(in: store) ?? RepositoryEncryption(encrypted: key != nil, keyFingerprint: key?.fingerprint)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        if try store.create(Self.key, contents: try encoder.encode(mode)) { return mode }
        // Another first writer recorded it a moment ago: its record wins.
        return try read(from: store) ?? mode
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

    /// What a repository written before this record existed holds: the newest manifest's files,
    /// else the first archived WAL file; nil for an empty repository.
    private static func detect(in store: BackupStore) throws -> RepositoryEncryption? {
        if let manifest = try Catalog(store: store).manifests().first, let file = manifest.files.first {
            return RepositoryEncryption(encrypted: file.encryptionKeyFingerprint != nil, keyFingerprint: file.encryptionKeyFingerprint)
        }
        if let wal = try store.list(prefix: "wal/").first(where: { $0.key.hasSuffix(".gz") }) {
            let head = try store.read(wal.key).prefix(RepositoryKey.magic.count)
            return RepositoryEncryption(encrypted: Array(head) == RepositoryKey.magic, keyFingerprint: nil)
        }
        return nil
    }
}
