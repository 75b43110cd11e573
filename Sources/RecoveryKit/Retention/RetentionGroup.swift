/// The backups retention counts together: the logical backups of one database, or the physical base
/// backups of one server.
///
/// One repository may hold several databases' backups (a shared `BACKUP_REPO`) and both kinds (the
/// README's own examples use one repository for `dbbackup` and `dbbackup --physical`). Counting them
/// together let ten hourly backups of `app` push `billing`'s only two out of "the 10 newest", and ten
/// logical backups push out the only base backup (leaving PITR impossible while all the WAL stayed).
/// So every rule — keep_last, keep_within, snapshot slots, the newest backup that verifies, the
/// refusal to delete a group's every backup — applies within each group.
///
/// A logical group is one database of one server: the name by its bytes (NFC and NFD `café` are two
/// databases to PostgreSQL, one String to Swift) and the server's `system_identifier` (`app` on
/// server A and `app` on server B sharing a bucket are two databases: counted together, one server's
/// backups pushed the other's out). A backup whose manifest did not record the server groups with the
/// name's others that did not either: more is kept then, never more deleted.
public struct RetentionGroup: Sendable, Hashable, Comparable {
    public var kind: BackupManifest.Kind
    /// The database of a logical group; for a physical group the server's `systemIdentifier`, or nil
    /// for base backups whose manifest did not record it (counted together).
    public var name: String?
    /// For a logical group, the server's `systemIdentifier` (nil: not recorded).
    public var system: String?
    /// How `label` tells this group from another that reads the same (set by `split`; not part of the identity).
    var distinction: Distinction = .none

    enum Distinction: Sendable { case none, server, bytes }

    public init(kind: BackupManifest.Kind, name: String?, system: String? = nil) {
        self.kind = kind
        self.name = name
        self.system = kind == .logical ? system : nil
    }

    /// The group a backup counts in.
    public init(of manifest: BackupManifest) {
        self.init(kind: manifest.kind, name: manifest.kind == .logical ? manifest.database.name : manifest.database.systemIdentifier,
                  system: manifest.database.systemIdentifier)
    }

    public static func == (lhs: RetentionGroup, rhs: RetentionGroup) -> Bool {
        lhs.kind == rhs.kind && lhs.system == rhs.system && lhs.nameBytes == rhs.nameBytes
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(kind)
        hasher.combine(system)
        hasher.combine(nameBytes)
    }

    private var nameBytes: [UInt8]? { name.map { Array($0.utf8) } }

    /// As reports name it: `database app`, `physical base backups of server 7301…`; a database whose
    /// name is another group's too says its server (`database app of server 7301…`) or, when the two
    /// names only read the same, its bytes (`database café (UTF-8 636166c3a9)`).
    public var label: String {
        switch kind {
        case .logical:
            let shown = "database \(name ?? "?")"
            switch distinction {
            case .none: return shown
            case .server: return shown + (system.map { " of server \($0)" } ?? " of a server not recorded")
            case .bytes: return shown + " (UTF-8 " + (name ?? "").utf8.map { String(format: "%02x", $0) }.joined() + ")"
            }
        case .physical: return name.map { "physical base backups of server \($0)" } ?? "physical base backups"
        }
    }

    /// Logical groups by database name (its bytes) and server, then the physical ones.
    public static func < (lhs: RetentionGroup, rhs: RetentionGroup) -> Bool {
        if lhs.kind != rhs.kind { return lhs.kind == .logical }
        let left = Array((lhs.name ?? "").utf8), right = Array((rhs.name ?? "").utf8)
        if left != right { return left.lexicographicallyPrecedes(right) }
        return (lhs.system ?? "") < (rhs.system ?? "")
    }

    /// Splits manifests into their groups, each keeping the order it was given (newest first).
    public static func split(_ manifests: [BackupManifest]) -> [(group: RetentionGroup, manifests: [BackupManifest])] {
        var members: [RetentionGroup: [BackupManifest]] = [:]
        for manifest in manifests { members[RetentionGroup(of: manifest), default: []].append(manifest) }
        let groups = members.keys.sorted()
        return groups.map { group in
            var shown = group
            if group.kind == .logical {
                let alike = groups.filter { $0 != group && $0.kind == .logical && $0.name == group.name }   // String ==: reads the same
                if alike.contains(where: { $0.nameBytes != group.nameBytes }) {
                    shown.distinction = .bytes
                } else if !alike.isEmpty {
                    shown.distinction = .server
                }
            }
            return (shown, members[group] ?? [])
        }
    }
}
