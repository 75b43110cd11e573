/// The backups retention counts together: the logical backups of one database, or the physical base
/// backups of one server.
///
/// One repository may hold several databases' backups (a shared `BACKUP_REPO`) and both kinds (the
/// README's own examples use one repository for `dbbackup` and `dbbackup --physical`). Counting them
/// together let ten hourly backups of `app` push `billing`'s only two out of "the 10 newest", and ten
/// logical backups push out the only base backup (leaving PITR impossible while all the WAL stayed).
/// So every rule — keep_last, keep_within, snapshot slots, the newest backup that verifies, the
/// refusal to delete a group's every backup — applies within each group.
public struct RetentionGroup: Sendable, Hashable, Comparable {
    public var kind: BackupManifest.Kind
    /// The database of a logical group; for a physical group the server's `systemIdentifier`, or nil
    /// for base backups whose manifest did not record it (counted together).
    public var name: String?

    public init(kind: BackupManifest.Kind, name: String?) {
        self.kind = kind
        self.name = name
    }

    /// The group a backup counts in.
    public init(of manifest: BackupManifest) {
        kind = manifest.kind
        name = manifest.kind == .logical ? manifest.database.name : manifest.database.systemIdentifier
    }

    /// As reports name it: `database app`, `physical base backups of server 7301…`.
    public var label: String {
        switch kind {
        case .logical: return "database \(name ?? "?")"
        case .physical: return name.map { "physical base backups of server \($0)" } ?? "physical base backups"
        }
    }

    /// Logical groups by database name, then the physical ones.
    public static func < (lhs: RetentionGroup, rhs: RetentionGroup) -> Bool {
        (lhs.kind == .physical ? 1 : 0, lhs.name ?? "") < (rhs.kind == .physical ? 1 : 0, rhs.name ?? "")
    }

    /// Splits manifests into their groups, each keeping the order it was given (newest first).
    public static func split(_ manifests: [BackupManifest]) -> [(group: RetentionGroup, manifests: [BackupManifest])] {
        var members: [RetentionGroup: [BackupManifest]] = [:]
        for manifest in manifests { members[RetentionGroup(of: manifest), default: []].append(manifest) }
        return members.keys.sorted().map { ($0, members[$0] ?? []) }
    }
}
