import Foundation

/// What a run cleaned up and what it kept, for the one line printed when a signal ends it.
public enum CleanupLog {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var cleanedItems: [String] = []
    nonisolated(unsafe) private static var keptItems: [String] = []

    /// Records, as a phrase such as "removed the partial backups/X/dump.sql.gz" or "released the
    /// repository lock", something of this run that was removed or undone.
    public static func cleaned(_ item: String) {
        lock.lock()
        defer { lock.unlock() }
        if !cleanedItems.contains(item) { cleanedItems.append(item) }
    }

    /// Records, as a noun phrase such as "database app unchanged", something deliberately left in place.
    public static func kept(_ item: String) {
        lock.lock()
        defer { lock.unlock() }
        if !keptItems.contains(item) { keptItems.append(item) }
    }

    /// Everything recorded so far.
    public static var entries: (cleaned: [String], kept: [String]) {
        lock.lock()
        defer { lock.unlock() }
        return (cleanedItems, keptItems)
    }
}
