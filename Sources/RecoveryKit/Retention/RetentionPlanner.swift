import Foundation

/// What the planner needs to know about one backup.
public struct RetentionCandidate: Sendable, Equatable {
    public var id: String
    public var takenAt: Date
    public var pinned: Bool
    /// Storage class of its files (S3), nil for local files.
    public var storageClass: String?

    public init(id: String, takenAt: Date, pinned: Bool = false, storageClass: String? = nil) {
        self.id = id
        self.takenAt = takenAt
        self.pinned = pinned
        self.storageClass = storageClass
    }
}

/// The planner's verdict on one backup.
public struct RetentionDecision: Codable, Sendable, Equatable {
    public enum Action: String, Codable, Sendable {
        case keep
        case delete
        /// Keep, and move its files to the archive class.
        case moveToGlacier = "move-to-glacier"
    }

    public var id: String
    public var takenAt: Date
    public var ageDays: Double
    public var storageClass: String?
    public var action: Action
    /// Why it is kept: `last #2`, `daily #3`, `weekly oldest`, `within 90d`, `pinned`, `newest verified`.
    public var keptBy: [String]
    /// Why it is deleted or moved (`older than the 10 newest`, `standard→glacier after 30d`), so that
    /// `dbprune --dry-run` explains every row that changes something; nil for a plain keep.
    public var reason: String?
    /// The group it was counted in (`database app`, `physical base backups of server …`): every rule
    /// applies within one group (`RetentionGroup`). Nil when planned without one.
    public var group: String? = nil
}

/// Pure retention planning: the same inputs always give the same plan. No I/O.
public enum RetentionPlanner {
    /// Decides, for every candidate, keep, delete or move to the archive class.
    ///
    /// - Parameters:
    ///   - candidates: backups in any order.
    ///   - tier: the repository's rules.
    ///   - snapshots: calendar rules, applied when `tier.snapshots`.
    ///   - newestVerified: the newest backup whose files verify; always kept.
    ///   - now: the reference time for ages.
    ///   - group: the group the candidates are (all of one database, or one server's base backups);
    ///     named in each decision, in deletion reasons and in the refusal.
    /// - Returns: decisions, newest first.
    /// - Throws: `RecoveryError(.configuration)` when the rules would keep no backup at all.
    public static func plan(_ candidates: [RetentionCandidate], tier: RetentionPolicy.Tier, snapshots: RetentionPolicy.Snapshots,
                            newestVerified: String?, now: Date, group: RetentionGroup? = nil) throws -> [RetentionDecision] {
        let ordered = candidates.sorted { ($0.takenAt, $0.id) > ($1.takenAt, $1.id) }
        var reasons = [[String]](repeating: [], count: ordered.count)

        for index in ordered.indices.prefix(tier.keepLast) { reasons[index].append("last #\(index + 1)") }
        if let within = tier.keepWithin {
            for (index, backup) in ordered.enumerated() where now.timeIntervalSince(backup.takenAt) < within.seconds {
                reasons[index].append("within \(within)")
            }
        }
        if tier.snapshots {
            var calendar = Calendar(identifier: .iso8601)
            calendar.timeZone = TimeZone(identifier: snapshots.timeZone) ?? TimeZone(secondsFromGMT: 0) ?? .current
            let rules: [(String, Int, (Date) -> Int)] = [
                ("daily", snapshots.daily, { date in
                    let c = calendar.dateComponents([.year, .month, .day], from: date)
                    return (c.year ?? 0) * 10_000 + (c.month ?? 0) * 100 + (c.day ?? 0)
                }),
                ("weekly", snapshots.weekly, { date in
                    let c = calendar.dateComponents([.yearForWeekOfYear, .weekOfYear], from: date)
                    return (c.yearForWeekOfYear ?? 0) * 100 + (c.weekOfYear ?? 0)
                }),
                ("monthly", snapshots.monthly, { date in
                    let c = calendar.dateComponents([.year, .month], from: date)
                    return (c.year ?? 0) * 100 + (c.month ?? 0)
                }),
            ]
            for (name, slots, bucket) in rules where slots > 0 {
                var used = 0
                var lastBucket: Int?
                var keptOldest = false
                for (index, backup) in ordered.enumerated() {
                    let value = bucket(backup.takenAt)
                    guard value != lastBucket else { continue }
                    lastBucket = value
                    guard used < slots else { break }
                    used += 1
                    reasons[index].append("\(name) #\(used)")
                    keptOldest = index == ordered.count - 1
                }
                if used < slots, !keptOldest, let oldest = ordered.indices.last {
                    reasons[oldest].append("\(name) oldest")
                }
            }
        }
        for (index, backup) in ordered.enumerated() {
            if backup.pinned { reasons[index].append("pinned") }
            if backup.id == newestVerified { reasons[index].append("newest verified") }
        }
        if !ordered.isEmpty && reasons.allSatisfy(\.isEmpty) {
            throw RecoveryError(.configuration, "the retention policy would delete all \(ordered.count) backups"
                                + (group.map { " of \($0.label)" } ?? "") + "; refusing",
                                hint: "keep at least one backup: set keep_last, keep_within or snapshot counts above 0")
        }
        return ordered.enumerated().map { index, backup in
            let age = now.timeIntervalSince(backup.takenAt)
            var action: RetentionDecision.Action = reasons[index].isEmpty ? .delete : .keep
            var reason: String? = action == .delete ? deletionReason(tier: tier, snapshots: snapshots, group: group) : nil
            if action == .keep, let after = tier.glacierAfter, age >= after.seconds,
               backup.storageClass?.uppercased() != "GLACIER" {
                action = .moveToGlacier
                reason = "\((backup.storageClass ?? "standard").lowercased())→glacier after \(after)"
            }
            return RetentionDecision(id: backup.id, takenAt: backup.takenAt, ageDays: (age / 86_400 * 10).rounded() / 10,
                                     storageClass: backup.storageClass, action: action, keptBy: reasons[index], reason: reason,
                                     group: group?.label)
        }
    }

    /// Every rule of the tier that could have kept a backup and did not, as one phrase: a deleted
    /// backup missed all of them (pinned and newest-verified ones are never deleted). With a group,
    /// the count says whose newest they are: `older than the 10 newest of database app`.
    static func deletionReason(tier: RetentionPolicy.Tier, snapshots: RetentionPolicy.Snapshots, group: RetentionGroup? = nil) -> String {
        var missed: [String] = []
        if tier.keepLast > 0 { missed.append("older than the \(tier.keepLast) newest" + (group.map { " of \($0.label)" } ?? "")) }
        if let within = tier.keepWithin { missed.append("deleted at \(within)") }
        if tier.snapshots {
            let slots = [("daily", snapshots.daily), ("weekly", snapshots.weekly), ("monthly", snapshots.monthly)]
                .filter { $0.1 > 0 }.map(\.0)
            if !slots.isEmpty { missed.append("not in any \(slots.joined(separator: "/")) slot") }
        }
        return missed.isEmpty ? "no rule keeps it" : missed.joined(separator: "; ")
    }
}
