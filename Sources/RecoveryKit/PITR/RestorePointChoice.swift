import BackupStorage
import Foundation

/// One restore point record of the target name in the archived WAL (`--dry-run --json`: `restore_points`).
public struct RestorePointOccurrence: Codable, Sendable, Equatable {
    public var lsn: String
    /// `rp_time`: when `pg_create_restore_point` made it.
    public var time: Date
    public var timeline: UInt32
    /// The base backup recovery reaches this one from: the newest that started after the previous
    /// point of the name and before this one (recovery stops at the first it replays). Nil: none did.
    public var reachedFrom: String?

    var description: String {
        "LSN \(lsn) (made \(Timestamp.format(time)), timeline \(timeline), "
            + (reachedFrom.map { "reached from base backup \($0)" } ?? "reached from no base backup") + ")"
    }
}

/// Where `--target-name`'s restore point lies in the archived WAL, and so which base backup reaches it.
///
/// PostgreSQL replays WAL from the base backup's start and stops at the first restore point of the
/// name it replays: one made before the base backup started is never reached, and of a name made
/// twice the base backup decides which one. Everything the WAL tells is said before anything is
/// extracted: a point before every base backup, or only on a timeline the recovery does not follow,
/// is refused naming the way out; a name made several times is listed with which one this plan reaches.
struct RestorePointChoice {
    var name: String
    /// The points of the name on the timeline path recovery follows, oldest first.
    var occurrences: [RestorePointOccurrence]
    /// Whether every archived segment on that path was read (a damaged one stops the search).
    var complete: Bool

    /// The point recovery from `backup` stops at: the first at or after its start.
    func stop(from backup: BackupManifest) -> RestorePointOccurrence? {
        guard let start = backup.physical.flatMap({ WALSegmentName.parseLSN($0.startLsn) }) else { return nil }
        return occurrences.first { (WALSegmentName.parseLSN($0.lsn) ?? 0) >= start }
    }

    /// The point recovery from `backup` reaches: where it stops, unless that lies before the base
    /// backup's end (a point made while it was taken): the server stops there before the data is
    /// consistent and refuses to start ("requested recovery stop point is before consistent recovery point").
    func reached(from backup: BackupManifest) -> RestorePointOccurrence? {
        guard let point = stop(from: backup), !Self.isInside(point, backup) else { return nil }
        return point
    }

    /// Whether `point` lies between `backup`'s start and end.
    static func isInside(_ point: RestorePointOccurrence, _ backup: BackupManifest) -> Bool {
        guard let stop = backup.physical.flatMap({ WALSegmentName.parseLSN($0.stopLsn) }) else { return false }
        return (WALSegmentName.parseLSN(point.lsn) ?? 0) < stop
    }

    /// Why recovery from `backup` does not reach the name: every point precedes its start, or the one it stops at lies inside it.
    func unreachable(from backup: BackupManifest) -> String {
        let physical = backup.physical
        if let point = stop(from: backup) {
            return "restore point '\(name)' (LSN \(point.lsn)) was made while it was taken (LSN \(physical?.startLsn ?? "?") … \(physical?.stopLsn ?? "?")): "
                + "recovery from it would stop there before the base backup is consistent, and the server would not start"
        }
        return "restore point '\(name)' (LSN \(occurrences.last?.lsn ?? "?")) was made before it started (\(physical?.startLsn ?? "?")): recovery from it would never reach it"
    }

    /// The warning of a name made more than once: each point, which one this plan reaches, and that `--base-backup` decides.
    func duplicateWarning(reaching reached: RestorePointOccurrence, from backup: String) -> String? {
        guard occurrences.count > 1 else { return nil }
        return "restore point '\(name)' was made \(occurrences.count) times: " + occurrences.map(\.description).joined(separator: "; ")
            + "; recovery stops at the first one after the base backup's start: from base backup \(backup) the one at LSN \(reached.lsn) (made \(Timestamp.format(reached.time)))"
            + "; --base-backup ID decides which one"
    }

    /// Reads the archived WAL for restore point `name` along the path recovery from `reference` (the
    /// named base backup, or the newest) follows, and refuses what recovery could never reach.
    ///
    /// - Parameters:
    ///   - backups: the server's base backups, newest first.
    ///   - named: the base backup `--base-backup` named.
    /// - Returns: nil when the path cannot be worked out (the plan says why for each base backup).
    /// - Throws: `RecoveryError(.configuration)` without the key or with another one (as a restore
    ///   says it); `.backupNotFound` for a point made before every base backup (or before the named
    ///   one, naming those that reach it), made while the base backup recovery would start from was
    ///   taken, or found only on a timeline the recovery does not follow.
    static func find(_ name: String, backups: [BackupManifest], named: BackupManifest?, archive: [StoredObject], history: TimelineHistory,
                     timeline choice: TimelineChoice, store: BackupStore, key: RepositoryKey?) throws -> RestorePointChoice? {
        guard let reference = named ?? backups.first, let physical = reference.physical else { return nil }
        // The key first: the WAL is encrypted with it too, and "not found" would hide that it is missing.
        try PointInTimeRestore.requireKey(for: [reference], given: key)
        let size = physical.segmentSize
        let target: UInt32
        switch choice {
        case .latest: target = history.latest(from: UInt32(clamping: max(1, physical.timeline)))
        case .number(let number): target = number
        }
        guard let path = try? history.path(to: target) else { return nil }
        let (hits, complete) = try RestorePointScan.occurrences(of: name, along: path, segmentSize: size, archive: archive, store: store, key: key)
        let ranges = backups.compactMap { backup in
            backup.physical.flatMap { physical in WALSegmentName.parseLSN(physical.startLsn).map { (backup, $0, WALSegmentName.parseLSN(physical.stopLsn) ?? $0) } }
        }
        var occurrences: [RestorePointOccurrence] = []
        var previous: UInt64?
        for (hit, timeline) in hits {
            // Newest first: the first that started after the previous point and ended before this one.
            let from = ranges.first { _, start, stop in stop <= hit.lsn && (previous.map { start > $0 } ?? true) }?.0.id
            occurrences.append(RestorePointOccurrence(lsn: WALSegmentName.formatLSN(hit.lsn), time: hit.time, timeline: timeline, reachedFrom: from))
            previous = hit.lsn
        }
        let found = RestorePointChoice(name: name, occurrences: occurrences, complete: complete)
        if occurrences.isEmpty {
            try refuseOtherTimeline(name, path: path, target: target, choice: choice, size: size, archive: archive, history: history, store: store, key: key)
            return found
        }
        let reaching = named.map { [$0] } ?? backups
        guard complete, let first = occurrences.first, !reaching.contains(where: { found.reached(from: $0) != nil }) else { return found }
        let alternative = occurrences.first { $0.reachedFrom != nil }
        let instead = alternative.flatMap { other in other.reachedFrom.map { "run with --base-backup \($0) (reaches the one at LSN \(other.lsn))" } }
        if let inside = reaching.first(where: { found.stop(from: $0) != nil }), let point = found.stop(from: inside), let physical = inside.physical {
            throw RecoveryError(.backupNotFound,
                                "restore point '\(name)' (LSN \(point.lsn), made \(Timestamp.format(point.time))) was made while base backup \(inside.id) was taken (LSN \(physical.startLsn) … \(physical.stopLsn)): "
                                    + "recovery from it stops there before the base backup is consistent, and the server does not start",
                                hint: (instead ?? "no base backup that ended before it reaches it: recover to the end of \(inside.id) with --target-lsn \(physical.stopLsn), or later")
                                    + "; nothing was written")
        }
        let made = "restore point '\(name)' (LSN \(first.lsn), made \(Timestamp.format(first.time))"
            + (occurrences.count > 1 ? "; \(occurrences.count - 1) more of the name, the last at LSN \(occurrences.last?.lsn ?? "")" : "") + ")"
        if let named, let instead {
            throw RecoveryError(.backupNotFound,
                                "\(made) precedes the start of base backup \(named.id) (started \(Timestamp.format(named.startedAt)), LSN \(named.physical?.startLsn ?? "?")): recovery from it never replays it",
                                hint: "\(instead), or without --base-backup; nothing was written")
        }
        // Every point before the oldest start: no base backup can reach one (otherwise one lies inside an older base backup, said above for the one planned).
        guard let oldest = backups.last, let oldestPhysical = oldest.physical,
              let last = occurrences.last.flatMap({ WALSegmentName.parseLSN($0.lsn) }), let oldestStart = WALSegmentName.parseLSN(oldestPhysical.startLsn),
              last < oldestStart else { return found }
        throw RecoveryError(.backupNotFound,
                            "\(made) precedes the oldest base backup of this server, \(oldest.id) (started \(Timestamp.format(oldest.startedAt)), LSN \(oldestPhysical.startLsn)): "
                                + "no base backup precedes it, so recovery cannot reach it",
                            hint: "the earliest target reachable is the end of \(oldest.id): --target-lsn \(oldestPhysical.stopLsn) or --target-time '\(Timestamp.postgres(oldest.finishedAt))'; nothing was written")
    }

    /// A name not on the path recovery follows, but on another timeline's (made on a branch the target
    /// timeline abandoned, or on a timeline that is not the newest): refused naming the `--timeline` that reaches it.
    private static func refuseOtherTimeline(_ name: String, path: [TimelineHistory.Stretch], target: UInt32, choice: TimelineChoice, size: UInt64,
                                            archive: [StoredObject], history: TimelineHistory, store: BackupStore, key: RepositoryKey?) throws {
        func timeline(of number: UInt64, on stretches: [TimelineHistory.Stretch]) -> UInt32 {
            stretches.last { $0.begin / size <= number }?.timeline ?? stretches[0].timeline
        }
        let others = Set([1] + Array(history.histories.keys)).subtracting([target]).sorted()
        for other in others {
            guard let otherPath = try? history.path(to: other) else { continue }
            // Only where the two paths part: the WAL before that was read (and held no such point).
            let begins = Set((path + otherPath).map { $0.begin / size })
            guard let parting = begins.filter({ timeline(of: $0, on: path) != timeline(of: $0, on: otherPath) }).min() else { continue }
            let (hits, _) = try RestorePointScan.occurrences(of: name, along: otherPath, segmentSize: size, from: parting == 0 ? 0 : parting - 1,
                                                             archive: archive, store: store, key: key)
            guard let (hit, made) = hits.first else { continue }
            let switched: String
            if let index = path.firstIndex(where: { $0.timeline == made }), let end = path[index].end, index + 1 < path.count {
                switched = ", after timeline \(made) switched to timeline \(path[index + 1].timeline) at LSN \(WALSegmentName.formatLSN(end)): on the branch timeline \(target) abandoned"
            } else {
                switched = ", which timeline \(target) does not descend from"
            }
            throw RecoveryError(.backupNotFound,
                                "restore point '\(name)' is not in the history of timeline \(target) (\(choice == .latest ? "the newest, which recovery follows by default" : "--timeline \(target)")): "
                                    + "it was made on timeline \(made) at LSN \(WALSegmentName.formatLSN(hit.lsn)) (\(Timestamp.format(hit.time)))\(switched)",
                                hint: "run with --timeline \(other) to recover to it; nothing was written")
        }
    }
}
