import Foundation
import Synchronization

/// What a run cleaned up and what it kept, for the one line printed when a signal ends it.
public enum CleanupLog {
    private static let items = Mutex<(cleaned: [String], kept: [String])>(([], []))

    /// Records, as a phrase such as "removed the partial backups/X/dump.sql.gz" or "released the
    /// repository lock", something of this run that was removed or undone.
    public static func cleaned(_ item: String) {
        items.withLock { if !$0.cleaned.contains(item) { $0.cleaned.append(item) } }
    }

    /// Records, as a noun phrase such as "database app unchanged", something deliberately left in place.
    public static func kept(_ item: String) {
        items.withLock { if !$0.kept.contains(item) { $0.kept.append(item) } }
    }

    /// Everything recorded so far.
    public static var entries: (cleaned: [String], kept: [String]) {
        items.withLock { $0 }
    }
}
