import BackupStorage
import Foundation

/// A `--repo` that names a folder inside a repository rather than the repository itself (a typo such
/// as `/var/backups/app/backups`, a tab-completed path): said where "no backups" is said, and no
/// repository layout (incident records) is made in it.
public enum MisplacedRepository {
    /// The repository `store` probably meant: its parent directory, when that holds a repository's
    /// `backups/` and `locks/` (every repository has both after its first backup) and `store` has no
    /// `locks/` of its own — `…/app/backups`, or any other folder inside a repository. A repository
    /// that is merely named `backups` (`/srv/backups`) is not misplaced. Local directories only: an S3
    /// prefix has no parent to look at without listing another prefix. Nil otherwise.
    public static func parent(of store: BackupStore) -> String? {
        var location = store.location
        guard !location.hasPrefix("s3://") else { return nil }
        while location.hasSuffix("/") && location.count > 1 { location.removeLast() }
        guard let slash = location.lastIndex(of: "/"), slash != location.startIndex else { return nil }
        let parent = String(location[..<slash])
        func isDirectory(_ path: String) -> Bool {
            var directory: ObjCBool = false
            return FileManager.default.fileExists(atPath: path, isDirectory: &directory) && directory.boolValue
        }
        guard !isDirectory(location + "/locks"), isDirectory(parent + "/backups"), isDirectory(parent + "/locks") else { return nil }
        return parent
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
