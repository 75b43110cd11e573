import Foundation
import PostgresClient

/// What `dbrestore cleanup` should do, resolved from flags and the config file.
public struct PreRestoreCleanupConfiguration: Sendable {
    public var target: ConnectionTarget
    /// The newest copies kept, whatever their age.
    public var keep = defaultKeep
    /// Copies younger than this are kept too (nil: age alone keeps nothing).
    public var keepWithin: RetentionDuration? = defaultKeepWithin
    public var dryRun = false
    /// Whether databases may be dropped (`--yes`). Without it only databases a killed swap left
    /// closed are reopened, which destroys nothing; what would be dropped is reported as pending.
    public var drop = true

    /// The defaults: keep the newest copy, and every copy younger than a week.
    public static let defaultKeep = 1
    public static let defaultKeepWithin = RetentionDuration(hours: 7 * 24, text: "7d")

    /// The defaults for `target`; set the rest as the flags and the config file say.
    public init(target: ConnectionTarget) { self.target = target }
}

/// The outcome of `dbrestore cleanup`.
public struct PreRestoreCleanupReport: Codable, Sendable {
    public enum Action: String, Codable, Sendable { case kept, dropped, wouldDrop = "would-drop", failed }

    /// One pre-restore copy and what happened to it.
    public struct Copy: Codable, Sendable {
        public var name: String
        /// When the restore that set it aside ran.
        public var setAsideAt: Date?
        /// The backup that replaced it.
        public var replacedBy: String?
        public var sizeBytes: Int64
        public var action: Action
        public var reason: String
    }

    public var database: String
    public var dryRun: Bool
    public var copies: [Copy]
    /// Repairs done first (scratch databases of killed restores dropped, a closed target reopened).
    public var repairs: [String]
    /// Repairs not done: all of them under `--dry-run`; without `--yes`, the drops of scratch
    /// databases. A target closed to connections by a killed restore is named here under `--dry-run`.
    public var pending: [String]
    /// Databases a killed restore's swap left closed to connections (before this run; reopened
    /// unless `dryRun`).
    public var closed: [String]
    /// Scratch and drill databases of killed restores not dropped for want of `--yes`.
    public var pendingDrops: Int
    /// Databases without a marker named exactly as this database's scratch or drill databases are
    /// (`<db>_restore_<time>`): what a restore killed while the server created its scratch database
    /// leaves (the marker is the next statement). Named with the statement that drops them, never
    /// dropped: a name alone does not make a database ours.
    public var unmarked: [String] = []

    /// One line for each of `unmarked`: what it may be, and the statement that drops it.
    public var unmarkedNotes: [String] {
        unmarked.map {
            "\($0) carries no marker but is named as a scratch database of \(database) is: a restore killed while the server created it "
                + "leaves one; dbrecovery never drops an unmarked database — if nobody else made it: DROP DATABASE \(QualifiedNames.quote($0))"
        }
    }

    /// Something would be dropped that was not, for want of `--yes`.
    public var needsConfirmation: Bool { !dryRun && (copies.contains { $0.action == .wouldDrop } || pendingDrops > 0) }

    public var droppedBytes: Int64 { copies.filter { $0.action == .dropped || $0.action == .wouldDrop }.reduce(0) { $0 + $1.sizeBytes } }
}

/// Lists and drops old pre-restore copies (`<db>_pre_restore_<time>`) of one database — only those
/// the tool marked as such, never by name.
public enum PreRestoreCleanup {
    /// Repairs what killed runs left, then drops the copies the policy does not keep.
    ///
    /// - Throws: `RecoveryError` / `PostgresError` when the server cannot be reached or another
    ///   restore of the database is running. A copy that cannot be dropped (someone is connected to
    ///   it) is reported as `failed` in the report, not thrown.
    public static func run(_ configuration: PreRestoreCleanupConfiguration) throws -> PreRestoreCleanupReport {
        let database = configuration.target.databaseName
        let admin = try LogicalRestore.connectToMaintenance(configuration.target)
        defer { admin.close() }
        try LogicalRestore.lockTarget(database, on: admin)
        let closed = try ToolDatabases.list(on: admin, target: database)
            .filter { $0.marker.closedForSwap == true && $0.marker.kind != .scratch && $0.marker.kind != .drill }.map(\.name)
        let timeline = Timeline(), pending = Timeline()
        var pendingDrops = 0
        if configuration.dryRun {
            pendingDrops = try ToolDatabases.repair(database, on: admin, timeline: pending, scope: .describe)
        } else if configuration.drop {
            try ToolDatabases.repair(database, on: admin, timeline: timeline)
        } else {
            try ToolDatabases.repair(database, on: admin, timeline: timeline, scope: .reopenOnly)
            pendingDrops = try ToolDatabases.repair(database, on: admin, timeline: pending, scope: .describe)
        }
        let copies = try ToolDatabases.list(on: admin, target: database).filter { $0.marker.kind == .preRestore }
            .sorted { ($0.marker.date ?? .distantFuture) > ($1.marker.date ?? .distantFuture) }
        let keep = plan(dates: copies.map(\.marker.date), keep: configuration.keep, keepWithin: configuration.keepWithin, now: Date())
        var report = PreRestoreCleanupReport(database: database, dryRun: configuration.dryRun, copies: [], repairs: timeline.steps.map(\.step),
                                             pending: pending.steps.map(\.step), closed: closed, pendingDrops: pendingDrops)
        report.unmarked = try lookalikes(of: database, on: admin)
        for (copy, reason) in zip(copies, keep) {
            var entry = PreRestoreCleanupReport.Copy(name: copy.name, setAsideAt: copy.marker.date, replacedBy: copy.marker.backup,
                                                     sizeBytes: copy.sizeBytes, action: .kept, reason: reason ?? "")
            if reason == nil && !copy.keepsItsName {
                entry.reason = "renamed since it was set aside as \(copy.marker.database ?? "?"): kept"
            } else if reason == nil {
                entry.reason = "older than the newest \(configuration.keep)" + (configuration.keepWithin.map { " and than \($0)" } ?? "")
                if configuration.dryRun || !configuration.drop {
                    entry.action = .wouldDrop
                } else {
                    do {
                        try admin.execute(script: "DROP DATABASE \(admin.quoteIdentifier(copy.name))")
                        entry.action = .dropped
                    } catch {
                        entry.action = .failed
                        entry.reason = RecoveryError.classify(error).message
                    }
                }
            }
            report.copies.append(entry)
        }
        return report
    }

    /// The pure policy: for copies sorted newest first, why each is kept, or nil to drop it.
    /// A copy whose date is unknown is kept.
    /// Unmarked databases named `<database>_restore_<yyyymmdd_hhmmss>` or `…_drill_…` (with a `_N` of a
    /// second one in the same second), as `PreRestoreCleanupReport.unmarked` says.
    static func lookalikes(of database: String, on admin: PostgresConnection) throws -> [String] {
        let marked = Set(try ToolDatabases.list(on: admin).map(\.name))
        let suffix = /^_(restore|drill)_[0-9]{8}_[0-9]{6}(_[0-9]+)?$/
        return try admin.query("SELECT datname::text FROM pg_catalog.pg_database WHERE pg_catalog.starts_with(datname::text, $1) ORDER BY 1",
                               [database + "_"]).rows.compactMap { $0[0] ?? nil }
            .filter { !marked.contains($0) && $0.dropFirst(database.count).wholeMatch(of: suffix) != nil }
    }

    static func plan(dates: [Date?], keep: Int, keepWithin: RetentionDuration?, now: Date) -> [String?] {
        dates.enumerated().map { index, date in
            if index < keep { return "one of the newest \(keep)" }
            guard let date else { return "set aside at an unknown time" }
            if let keepWithin, now.timeIntervalSince(date) < keepWithin.seconds { return "younger than \(keepWithin)" }
            return nil
        }
    }
}

/// What a restore says of the pre-restore copies of its target: how many there are, what they hold,
/// and the command that drops them now. The defaults (`keep 1`, `keep-within 7d`) keep every copy
/// of a week of emergency retries, so "cleanup drops old ones" alone would be untrue for a week.
public enum PreRestoreCopiesNote {
    /// Drops every copy but the newest — the one the restore just set aside — whatever their age.
    public static let dropCommand = "dbrestore cleanup --keep 1 --keep-within 0h --yes"

    /// - Parameters:
    ///   - copies: the copies of `database` and their total size: in a plan, those earlier restores
    ///     kept; after the restore, all of them, this run's included (`LogicalRestore.execute` counts again).
    ///   - keptAs: the copy this run sets aside (nil: the target did not exist).
    ///   - done: true after the restore, false in the plan.
    /// - Returns: nil when there is nothing to drop (no copy, or only this run's).
    public static func text(database: String, copies: Int, bytes: Int64, keptAs: String?, done: Bool) -> String? {
        let older = done && keptAs != nil ? copies - 1 : copies
        guard older > 0 else { return nil }
        let size = ByteCount.format(UInt64(max(0, bytes)))
        let how = "(same --database-url; add --dry-run to list them first)"
        if done, let keptAs {
            return "\(copies) pre-restore copies of \(database) exist, holding \(size): \(keptAs) (this run's) and \(older) older; "
                + "to drop the older now, keeping this run's: \(dropCommand) \(how)"
        }
        let counted = "\(copies) pre-restore cop\(copies == 1 ? "y" : "ies") of \(database) \(done ? "exist\(copies == 1 ? "s" : "")" : "kept by earlier restores"), holding \(size)"
        guard let keptAs else { return "\(counted); to drop all but the newest now: \(dropCommand) \(how)" }
        return "\(counted), and this restore keeps another (\(keptAs)); to drop all but that one after it: \(dropCommand) \(how)"
    }
}
