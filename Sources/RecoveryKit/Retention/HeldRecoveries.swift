import BackupStorage
import Foundation

/// What `dbprune` reads of the repository's holds (`RecoveryHold`): which protect, which have
/// expired, and the keep reasons and warnings they give.
public enum HeldRecoveries {
    /// `[prune] hold_expiry` when the config file does not say: a week, longer than any replay
    /// should take, short enough that a forgotten hold does not fill the repository's disk unseen.
    public static let defaultExpiry = RetentionDuration(hours: 7 * 24, text: "7d")

    /// One hold as a prune run sees it.
    public struct Status: Codable, Sendable {
        /// What `--release-hold` takes.
        public var id: String
        /// Nil when the record cannot be read (it protects nothing: it does not say what).
        public var hold: RecoveryHold?
        public var ageHours: Double
        /// When it stops protecting.
        public var expiresAt: Date?
        /// False once older than the expiry, or unreadable.
        public var protecting: Bool
        /// "held by the recovery prepared at db2:/srv/pg/restored at …": the keep reason.
        public var reason: String
    }

    /// The holds in `store`, judged as of `now`.
    ///
    /// - Throws: `StorageError` when they cannot be listed or read.
    public static func load(from store: BackupStore, now: Date, expiry: RetentionDuration) throws -> [Status] {
        try RecoveryHold.all(in: store).map { stored in
            guard let hold = stored.hold else {
                let age = stored.modified.map { now.timeIntervalSince($0) } ?? 0
                return Status(id: stored.id, hold: nil, ageHours: hours(age), expiresAt: nil, protecting: false,
                              reason: "unreadable hold record \(stored.key)")
            }
            // From when the repository stored it if that is earlier: a record whose time is in the future (the
            // preparing host's clock ahead, or a hand edit) would otherwise never expire.
            let since = min(hold.createdAt, stored.modified ?? hold.createdAt)
            let age = now.timeIntervalSince(since)
            return Status(id: stored.id, hold: hold, ageHours: hours(age), expiresAt: since.addingTimeInterval(expiry.seconds),
                          protecting: age < expiry.seconds, reason: "held by \(hold.preparedBy)")
        }
    }

    private static func hours(_ seconds: TimeInterval) -> Double { (max(0, seconds) / 360).rounded() / 10 }

    /// Keeps every backup a protecting hold names (rather than delete it or move it to GLACIER,
    /// where `wal-fetch` and the extraction could not read it quickly), adding the hold's reason.
    static func keep(_ decisions: inout [RetentionDecision], holds: [Status]) {
        for status in holds where status.protecting {
            guard let hold = status.hold else { continue }
            for index in decisions.indices where hold.backups.contains(decisions[index].id) || decisions[index].id == hold.backupID {
                decisions[index].action = .keep
                if !decisions[index].keptBy.contains(status.reason) { decisions[index].keptBy.append(status.reason) }
            }
        }
    }

    /// The WAL the protecting holds keep.
    static func wal(_ holds: [Status]) -> [WALRetention.Hold] {
        holds.filter(\.protecting).compactMap { status in
            status.hold.map { WALRetention.Hold(firstSegment: $0.firstSegment, timelines: $0.timelines, reason: status.reason) }
        }
    }

    /// One warning per hold, for every prune run: a protecting hold says what it keeps and when it
    /// stops (a forgotten one must be seen long before it expires); an expired or unreadable one
    /// says it protects nothing any more. Each names the release.
    static func warnings(_ holds: [Status], expiry: RetentionDuration, dryRun: Bool) -> [String] {
        holds.map { status in
            // A record someone named by hand (`my copy.json`) protects too, but --release-hold takes only hold ids.
            let release = RecoveryHold.isValidID(status.id) ? "dbprune --release-hold \(status.id)"
                : "delete \(RecoveryHold.key(of: status.id)) from the repository by hand (its name is no hold id dbprune takes)"
            guard let hold = status.hold else {
                return "warning: \(status.reason) protects nothing (it does not say what to keep); remove it with \(release)"
            }
            let what = "base backup\(hold.backups.count > 1 ? "s" : "") \(hold.backups.joined(separator: ", ")) and WAL from \(hold.firstSegment) on (timeline \(hold.timelines.map(String.init).joined(separator: ", ")))"
            let age = String(format: "%.1f", status.ageHours / 24)
            if status.protecting {
                return "warning: \(status.reason) (hold \(status.id), \(age)d old, target \(hold.target)) \(dryRun ? "would keep" : "kept") \(what); "
                    + "it stops protecting at \(status.expiresAt.map(Timestamp.format) ?? "?") (hold_expiry \(expiry.text)). "
                    + "The server releases it when recovery ends; if that recovery was abandoned: \(release)"
            }
            return "warning: hold \(status.id) of \(hold.preparedBy) is \(age)d old, past hold_expiry \(expiry.text): it protects nothing any more "
                + "(\(what) are pruned as the rules say; a recovery still waiting for that WAL fails). Remove it with \(release)"
        }
    }
}

extension HeldRecoveries {
    /// What a release of one hold did or would do (`dbrestore wal-release`, `dbprune --release-hold`).
    public struct Release: Codable, Sendable {
        public var repository: String
        public var id: String
        /// The hold as it was, nil when there was none (already released) or it could not be read.
        public var hold: RecoveryHold?
        public var found: Bool
        public var released: Bool
        public var dryRun: Bool
        /// The ids of the holds the repository has (for "no such hold" messages).
        public var others: [String]
    }

    /// Releases (unless `dryRun`) the hold `id` of a repository.
    ///
    /// - Throws: `RecoveryError(.usage)` for an id that cannot be one (`../x`); `StorageError` when the
    ///   repository cannot be read or the record not deleted.
    public static func release(_ id: String, repository: String, dryRun: Bool,
                               environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Release {
        guard RecoveryHold.isValidID(id) else {
            let shown = (id.count > 64 ? String(id.prefix(64)) + "…" : id).replacingOccurrences(of: "\n", with: "\\n")
            throw RecoveryError(.usage, "'\(shown)' is not a hold id (letters, digits and '-', e.g. 20261127T020000Z-3fa2c1d0)",
                                hint: "dbprune --dry-run lists the holds of a repository with their ids")
        }
        let store = try Repository.open(repository, create: false, environment: environment)
        // Its own record only: the server's recovery_end_command runs this while promotion waits, and a
        // stalled read of another recovery's record delayed the server's opening by minutes.
        var result = Release(repository: store.location, id: id, hold: nil, found: false, released: false, dryRun: dryRun, others: [])
        do {
            let data = try store.read(RecoveryHold.key(of: id))
            result.found = true
            result.hold = RecoveryHold.decode(data)
        } catch let error as StorageError where error.kind == .notFound {
            // For the "no such hold" message: the ids there are, from one listing (no record is read).
            result.others = try store.list(prefix: RecoveryHold.prefix).map(\.key).filter { $0.hasSuffix(".json") }.map(RecoveryHold.id(ofKey:)).sorted()
            return result
        }
        if !dryRun {
            result.released = try RecoveryHold.release(id, in: store)
        }
        return result
    }
}
