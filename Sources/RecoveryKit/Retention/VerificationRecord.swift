import BackupStorage
import Foundation

/// `backups/<id>/verified-at.json`: when `dbprune` last read a backup's files in full and found
/// them matching their sha256, and what each file looked like in the listing then (size and
/// modification time; S3 rewrites LastModified with every PUT).
///
/// Prune must know that the newest backup verifies before it deletes older ones; reading it in full
/// every night costs its whole size in I/O (and S3 egress). The record lets a nightly run skip the
/// read while the record is younger than `[prune] reverify_after` (default 7 days) and no file
/// changed size or modification time since. It lies next to the manifest, never in it (manifests
/// are immutable), is written atomically, and is deleted with the backup's folder.
///
/// Bit rot can keep a file's size and modification time, so the record must not outlive evidence
/// against it: every full read that finds the backup damaged (a restore's stream, a drill or
/// emergency candidate, `dbverify --files`, prune itself) deletes it (`forget`), and a full read
/// that passes writes it again (`recordPassed`).
struct VerificationRecord: Codable, Sendable {
    static let fileName = "verified-at.json"
    /// How long a record vouches for a backup when the config file does not say.
    static let defaultInterval = RetentionDuration(hours: 7 * 24, text: "7d")

    struct File: Codable, Sendable {
        var name: String
        var sha256: String
        var size: UInt64
        /// The listing's modification time as seconds since 1970 (a number: exact through JSON).
        var modified: Double?
    }

    var verifiedAt: Date
    var files: [File]

    static func key(of manifest: BackupManifest) -> String { manifest.folderKey + "/" + fileName }

    /// The record of a verification that just passed, from the listing taken before it.
    init(manifest: BackupManifest, listing: [String: StoredObject], at now: Date) {
        verifiedAt = now
        files = manifest.files.map { file in
            let object = listing[manifest.key(of: file)]
            return File(name: file.name, sha256: file.sha256, size: object?.size ?? file.storedBytes,
                        modified: object?.modified?.timeIntervalSince1970)
        }
    }

    /// What the repository holds as a backup's record.
    enum Stored {
        case none
        case record(VerificationRecord)
        /// There is one, but it cannot be read or decoded: the backup is read in full again.
        case corrupt

        var exists: Bool {
            if case .none = self { return false }
            return true
        }
    }

    /// The stored record of a backup.
    static func load(for manifest: BackupManifest, in store: BackupStore, listing: [String: StoredObject]) -> Stored {
        guard listing[key(of: manifest)] != nil else { return .none }
        guard let data = try? store.read(key(of: manifest)),
              let record = try? JSONOutput.decoder().decode(VerificationRecord.self, from: data) else { return .corrupt }
        return .record(record)
    }

    /// Deletes a backup's record after a read found it damaged. Best effort (a read-only
    /// repository keeps it): prune re-reads before trusting a record alone (`Pruner`).
    static func forget(_ manifest: BackupManifest, in store: BackupStore) {
        try? store.delete([key(of: manifest)])
    }

    /// Writes (or refreshes) a backup's record after a full read found every file matching.
    /// Best effort: without it the next prune reads the backup again, nothing worse.
    static func recordPassed(_ manifest: BackupManifest, in store: BackupStore, at now: Date = Date()) {
        guard let objects = try? store.list(prefix: manifest.folderKey + "/") else { return }
        let listing = Dictionary(objects.map { ($0.key, $0) }, uniquingKeysWith: { first, _ in first })
        guard let data = try? JSONOutput.encoder().encode(VerificationRecord(manifest: manifest, listing: listing, at: now)) else { return }
        try? store.write(key(of: manifest), contents: data)
    }

    /// Why this record does not vouch for the backup now; nil when it does.
    func staleness(for manifest: BackupManifest, listing: [String: StoredObject], now: Date, interval: RetentionDuration) -> String? {
        let age = now.timeIntervalSince(verifiedAt)
        if age > interval.seconds || age < -3600 { return "verified \(Timestamp.format(verifiedAt)), longer ago than \(interval.text)" }
        guard files.map(\.name) == manifest.files.map(\.name) else { return "its record names other files than the manifest" }
        for (recorded, file) in zip(files, manifest.files) {
            guard let object = listing[manifest.key(of: file)] else { return "\(file.name) is missing" }
            if recorded.sha256 != file.sha256 { return "\(file.name): the record's sha256 is not the manifest's" }
            if object.size != recorded.size { return "\(file.name) changed size since it was verified" }
            if let modified = object.modified?.timeIntervalSince1970, abs(modified - (recorded.modified ?? .nan)) < 0.001 { continue }
            return "\(file.name) was modified since it was verified"
        }
        return nil
    }
}
