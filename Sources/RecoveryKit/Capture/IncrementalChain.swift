import BackupStorage
import Foundation

/// Chains of incremental base backups (PostgreSQL 17+): which backup an incremental is taken on,
/// which members a restore needs, and which backups retention must keep for a kept incremental.
///
/// A chain is a full base backup (its root) followed by incrementals, each naming its parent in
/// `BackupManifest.incremental`. Every physical backup stores pg_basebackup's own
/// `backup_manifest` (as `backup_manifest.gz`), which `pg_basebackup --incremental` needs from
/// the parent and `pg_combinebackup` finds inside each extracted member.
public enum IncrementalChain {
    /// pg_basebackup's manifest of a physical backup, stored beside `base.tar.gz`.
    public static let serverManifestFileName = "backup_manifest.gz"
    /// PostgreSQL's `server_version_num` from which `pg_basebackup --incremental` exists.
    static let minimumServerVersionNumber = 170000

    /// The backup a new incremental of this system chains on: the newest physical backup (full or
    /// incremental) with the same system identifier and timeline.
    ///
    /// - Throws: `RecoveryError(.backupNotFound)` when there is none, or when the newest one was
    ///   taken before physical backups stored their `backup_manifest`.
    static func parent(systemIdentifier: String?, timeline: Int, in manifests: [BackupManifest], repository: String) throws -> BackupManifest {
        let candidates = manifests.filter {
            $0.kind == .physical && $0.physical?.timeline == timeline && $0.database.systemIdentifier == systemIdentifier
        }
        guard let newest = candidates.max(by: { $0.id < $1.id }) else {
            throw RecoveryError(.backupNotFound, "repository \(repository) holds no base backup of this server (system \(systemIdentifier ?? "?"), timeline \(timeline)) to take an incremental on",
                                hint: "take a full base backup first: dbbackup --physical")
        }
        guard newest.files.contains(where: { $0.name == serverManifestFileName }) else {
            throw RecoveryError(.backupNotFound, "base backup \(newest.id) has no stored backup_manifest (taken by an older dbbackup), so no incremental can be taken on it",
                                hint: "take a full base backup first: dbbackup --physical")
        }
        return newest
    }

    /// The members a restore of `manifest` needs, root (the full backup) first, `manifest` last.
    ///
    /// - Throws: `RecoveryError(.backupNotFound)` naming the first member that is missing.
    public static func members(of manifest: BackupManifest, in manifests: [BackupManifest]) throws -> [BackupManifest] {
        let byID = Dictionary(manifests.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        var chain = [manifest]
        var seen: Set<String> = [manifest.id]
        while let parentID = chain[0].incremental?.parent {
            guard let parent = byID[parentID], !seen.contains(parentID) else {
                throw RecoveryError(.backupNotFound, "incremental backup \(manifest.id) needs \(parentID) (parent of \(chain[0].id)), which is not in the repository",
                                    hint: "an incremental cannot be restored without every earlier member of its chain; restore an older full backup or a complete chain")
            }
            chain.insert(parent, at: 0)
            seen.insert(parentID)
        }
        return chain
    }

    /// For each backup a kept incremental depends on, the nearest kept incremental that needs it
    /// (`parent id → child id`). Backups already kept depend on their own parents too.
    public static func parentsNeeded(byKept kept: Set<String>, in manifests: [BackupManifest]) -> [String: String] {
        let byID = Dictionary(manifests.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        var needed: [String: String] = [:]
        for id in kept.sorted(by: >) {
            var child = id
            var seen: Set<String> = [id]
            while let parent = byID[child]?.incremental?.parent, !seen.contains(parent) {
                if needed[parent] == nil && !kept.contains(parent) { needed[parent] = child }
                seen.insert(parent)
                child = parent
            }
        }
        return needed
    }
}
