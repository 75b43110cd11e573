import BackupStorage
import Foundation

/// Which timeline a point-in-time restore follows: PostgreSQL's `recovery_target_timeline`.
public enum TimelineChoice: Sendable, Equatable, CustomStringConvertible {
    /// The newest timeline descending from the base backup's (PostgreSQL's 'latest').
    case latest
    case number(UInt32)

    /// `latest`, or a timeline number in decimal (as `SELECT timeline_id` prints it) or `0x` hex.
    public init?(_ text: String) {
        if text == "latest" { self = .latest; return }
        let number = text.hasPrefix("0x") ? UInt32(text.dropFirst(2), radix: 16) : UInt32(text)
        guard let number, number > 0 else { return nil }
        self = .number(number)
    }

    public var description: String {
        switch self {
        case .latest: return "latest"
        case .number(let number): return String(number)
        }
    }
}

/// The timelines of a WAL archive and where each branched from its parent, read from the archived
/// `NNNNNNNN.history` files. A failover or a point-in-time restore starts a new timeline at a
/// switch point; the parent's WAL after that point belongs to a branch the new timeline abandoned.
public struct TimelineHistory: Sendable {
    /// One line of a history file: `timeline` ended at `switchLsn` (the next line's timeline, or the
    /// file's own, began there).
    public struct Entry: Sendable, Equatable {
        public var timeline: UInt32
        public var switchLsn: UInt64
        public var reason: String
    }

    /// One stretch of the path to a target timeline: WAL of `timeline` from `begin` up to `end`.
    public struct Stretch: Sendable, Equatable {
        public var timeline: UInt32
        public var begin: UInt64
        /// Where this timeline was left for the next one; nil for the target timeline itself.
        public var end: UInt64?
    }

    /// The parsed history file of each timeline above 1.
    public private(set) var histories: [UInt32: [Entry]]
    /// When each timeline began, as far as the archive tells: when its history file (or, if earlier,
    /// its first segment) was archived. A new timeline's history is archived as it is promoted.
    public private(set) var beganAt: [UInt32: Date]

    public init(histories: [UInt32: [Entry]], beganAt: [UInt32: Date]) {
        self.histories = histories
        self.beganAt = beganAt
    }

    /// Reads every `.history` file in the archive listing (a few hundred bytes each).
    ///
    /// - Throws: `RecoveryError` when a history file cannot be read or decrypted.
    static func read(archive: [StoredObject], store: BackupStore, key: RepositoryKey?) throws -> TimelineHistory {
        var histories: [UInt32: [Entry]] = [:]
        var beganAt: [UInt32: Date] = [:]
        for object in archive {
            guard let name = WALArchive.fileName(ofKey: object.key), name.hasSuffix(".history"), name.count == 16, let timeline = WALSegmentName.timelineNumber(of: name) else { continue }
            let data = try WALArchive.decompress(try store.read(object.key), name: name, objectKey: object.key, cipherKey: key)
            histories[timeline] = parse(String(decoding: data, as: UTF8.self))
            if let modified = object.modified { beganAt[timeline] = modified }
        }
        for object in archive {
            guard let name = WALArchive.fileName(ofKey: object.key), WALSegmentName.isSegment(name), let timeline = WALSegmentName.timelineNumber(of: name), let modified = object.modified,
                  let began = beganAt[timeline], modified < began else { continue }
            beganAt[timeline] = modified
        }
        return TimelineHistory(histories: histories, beganAt: beganAt)
    }

    /// Parses a history file: `parentTLI <tab> switchpoint <tab> reason` per line, `#` comments.
    public static func parse(_ text: String) -> [Entry] {
        text.split(separator: "\n").compactMap { line in
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard !trimmed.isEmpty, !trimmed.hasPrefix("#") else { return nil }
            let fields = trimmed.split(separator: "\t", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count >= 2, let timeline = UInt32(fields[0].trimmingCharacters(in: .whitespaces)),
                  let lsn = WALSegmentName.parseLSN(fields[1].trimmingCharacters(in: .whitespaces)) else { return nil }
            return Entry(timeline: timeline, switchLsn: lsn, reason: fields.count > 2 ? String(fields[2]) : "")
        }
    }

    /// The timeline PostgreSQL's `recovery_target_timeline = 'latest'` would pick for a base backup
    /// on `timeline`: history files for the following numbers, as long as they exist.
    public func latest(from timeline: UInt32) -> UInt32 {
        var newest = timeline
        while histories[newest + 1] != nil { newest += 1 }
        return newest
    }

    /// The stretches of WAL recovery to `target` replays, oldest first.
    ///
    /// - Throws: `RecoveryError(.backupNotFound)` when `target` is above 1 and its history file is not archived.
    public func path(to target: UInt32) throws -> [Stretch] {
        guard target > 1 else { return [Stretch(timeline: target, begin: 0, end: nil)] }
        guard let entries = histories[target] else {
            throw RecoveryError(.backupNotFound, "timeline \(target) has no history file (\(Self.fileName(target))) in the archive",
                                hint: "choose another --timeline, or archive that file from the pg_wal directory of the server that created the timeline (dbbackup wal-push pg_wal/\(Self.fileName(target)) --repo …)")
        }
        var stretches: [Stretch] = []
        var begin: UInt64 = 0
        for entry in entries {
            stretches.append(Stretch(timeline: entry.timeline, begin: begin, end: entry.switchLsn))
            begin = entry.switchLsn
        }
        stretches.append(Stretch(timeline: target, begin: begin, end: nil))
        return stretches
    }

    /// Timelines that branched off `timeline`, with where: the first entry of each history naming it.
    public func children(of timeline: UInt32) -> [(child: UInt32, switchLsn: UInt64, reason: String)] {
        histories.keys.sorted().compactMap { child in
            guard let entries = histories[child], let index = entries.firstIndex(where: { $0.timeline == timeline }) else { return nil }
            // The direct child is the timeline named on the next line, or the file's own.
            let direct = index + 1 < entries.count ? entries[index + 1].timeline : child
            guard direct == child else { return nil }
            return (child, entries[index].switchLsn, entries[index].reason)
        }
    }

    /// When the parent timeline stopped being the history the child continues: the commit time of
    /// the transaction the child's recovery stopped at, when its history names one (a time target:
    /// "before 2026-11-26 12:05:00.123456+00"; before PostgreSQL 13 "before transaction 745 at …"),
    /// else when the child began.
    public func switchTime(child: UInt32, reason: String) -> Date? {
        Self.stopTime(in: reason) ?? beganAt[child]
    }

    /// The commit time in a history reason written by a recovery that stopped at a transaction.
    static func stopTime(in reason: String) -> Date? {
        guard reason.hasPrefix("before ") || reason.hasPrefix("after ") else { return nil }
        var text = reason.drop { $0 != " " }.trimmingCharacters(in: .whitespaces)
        if text.hasPrefix("transaction ") {
            guard let range = text.range(of: " at ", options: .backwards) else { return nil }
            text = String(text[range.upperBound...])
        }
        return Timestamp.parsePostgres(text)
    }

    /// `00000002.history`.
    static func fileName(_ timeline: UInt32) -> String {
        WALSegmentName.name(timeline: timeline, segmentNumber: 0).prefix(8) + ".history"
    }
}
