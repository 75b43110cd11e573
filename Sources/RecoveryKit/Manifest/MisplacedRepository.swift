import BackupStorage
import Foundation

/// A `--repo` that names a folder inside a repository rather than the repository itself (a typo such
/// as `/var/backups/app/backups`, a tab-completed path): said where "no backups" is said, and no
/// repository layout (incident records) is made in it.
public enum MisplacedRepository {
    /// The repository `store` probably meant, when its address ends in `/backups` or (a local
    /// directory) it holds no `backups/` but its parent does; nil otherwise.
    public static func parent(of store: BackupStore) -> String? {
        var location = store.location
        while location.hasSuffix("/") && location.count > 1 { location.removeLast() }
        guard let slash = location.lastIndex(of: "/") else { return nil }
        let parent = String(location[..<slash])
        guard !parent.isEmpty, parent != "s3:/" else { return nil }
        if location[location.index(after: slash)...] == "backups" { return parent }
        guard !location.hasPrefix("s3://") else { return nil }
        var isDirectory: ObjCBool = false
        let ownBackups = FileManager.default.fileExists(atPath: location + "/backups", isDirectory: &isDirectory) && isDirectory.boolValue
        let parentBackups = FileManager.default.fileExists(atPath: parent + "/backups", isDirectory: &isDirectory) && isDirectory.boolValue
        return !ownBackups && parentBackups ? parent : nil
    }

    /// The hint of a "holds no backups" error when `store` looks misplaced (`parent(of:)`).
    public static func hint(for store: BackupStore) -> String? {
        guard let parent = parent(of: store) else { return nil }
        return "\(store.location) looks like a folder inside the repository \(parent): give --repo \(parent)"
    }

    /// True when `store` holds neither backups nor WAL: not a repository (yet), so nothing but a
    /// backup should make a repository layout in it.
    public static func isEmptyOfBackups(_ store: BackupStore) throws -> Bool {
        try store.list(prefix: "backups/").isEmpty && store.list(prefix: "wal/").isEmpty
    }
}
