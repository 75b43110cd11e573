import BackupStorage
import Foundation
import Gzip
import Logging
import PostgresClient
import ProcessSignals

/// Where recovery should stop.
public enum RecoveryTarget: Sendable, Equatable, CustomStringConvertible {
    case time(Date)
    case lsn(UInt64)
    case name(String)
    case latest

    public var description: String {
        switch self {
        case .time(let date): return "time \(Timestamp.postgres(date))"
        case .lsn(let lsn): return "LSN \(WALSegmentName.formatLSN(lsn))"
        case .name(let name): return "restore point '\(name)'"
        case .latest: return "the end of the archived WAL"
        }
    }
}

/// Settings of one `dbrestore --pitr`.
public struct PITRConfiguration {
    public var repository: String
    public var dataDirectory: String
    public var target: RecoveryTarget
    public var port: Int?
    public var start: Bool
    public var moveAside: Bool
    public var tools: PostgresTools
    /// For `--start`: user and password to watch recovery with (host and port are the new server's).
    public var connection: ConnectionTarget
    /// Absolute path of the `dbrestore` executable, for `restore_command`.
    public var dbrestorePath: String
    /// How long `--start` waits for recovery to finish.
    public var startTimeoutSeconds: Double
    /// The repository cipher key, for encrypted backups.
    public var key: RepositoryKey? = nil
    /// The file `key` came from: `restore_command` passes this path on, never the key itself.
    public var keyFile: String? = nil
    /// The timeline to recover along (`--timeline`): the newest by default, as PostgreSQL does.
    public var timeline: TimelineChoice = .latest
    /// The server whose base backups to recover (`--system-identifier`), in a repository holding several.
    public var systemIdentifier: String? = nil
    /// The base backup to recover from (`--base-backup ID`) instead of the newest that can reach the
    /// target: a restore point made before the newest base backup is reachable only from an older one.
    public var baseBackup: String? = nil
    /// Threads that extract a base backup with an index (`--jobs`, default: the cores).
    public var jobs = ProcessInfo.processInfo.activeProcessorCount
    /// What the storage layer reads S3 settings from (see `Repository.open`); the started server
    /// gets it too, so that its restore_command (dbrestore wal-fetch) reaches the same endpoint.
    public var environment = ProcessInfo.processInfo.environment

    public init(repository: String, dataDirectory: String, target: RecoveryTarget, port: Int? = nil, start: Bool = false,
                moveAside: Bool = false, tools: PostgresTools = PostgresTools(), connection: ConnectionTarget,
                dbrestorePath: String, startTimeoutSeconds: Double = 3600) {
        self.repository = repository
        self.dataDirectory = dataDirectory
        self.target = target
        self.port = port
        self.start = start
        self.moveAside = moveAside
        self.tools = tools
        self.connection = connection
        self.dbrestorePath = dbrestorePath
        self.startTimeoutSeconds = startTimeoutSeconds
    }
}

/// What a point-in-time restore will do.
public struct PITRPlan: Codable, Sendable {
    public struct Skipped: Codable, Sendable {
        public var id: String
        public var reason: String
    }

    public var backupID: String
    public var backupFinishedAt: Date
    public var firstSegment: String
    public var lastArchivedSegment: String
    public var segmentsAvailable: Int
    public var target: String
    /// The `recovery_target_timeline` written, and the switches recovery follows to reach it
    /// ("timeline 1 until 0/5000028, then timeline 2").
    public var timeline: UInt32
    public var timelinePath: String
    public var dataDirectory: String
    public var moveAsideTo: String?
    /// The run (gone) whose partial extraction the data directory holds (`ExtractionMarker`): its
    /// contents are removed before extracting, nil when the directory is new or empty.
    public var partialExtraction: String?
    /// Staging directories of chains (`<pgdata>.dbrestore-chain-*`) left by killed runs: removed first.
    public var abandonedStaging: [String]?
    public var skipped: [Skipped]
    /// For an incremental base backup: the chain pg_combinebackup rebuilds it from, full backup first.
    public var chain: [String]?
    /// For a chain: about how many bytes the data directory and its staging take at the peak.
    public var peakDiskBytes: UInt64?
    /// The major of the server the base backup came from: only its own programs can start the data directory.
    public var serverMajor: Int?
    /// That major's pg_ctl (with `postgres` beside it), when found.
    public var pgCtl: String?
    /// The timelines recovery follows from the base backup's on: with the base backup (and its
    /// chain) and its first segment, what the run's hold (`RecoveryHold`) keeps from dbprune.
    public var timelines: [UInt32]?
    /// Why no pg_ctl of that major was found (only without `--start`, which refuses instead).
    public var pgCtlProblem: String?
    /// The server recovered and why, when the repository holds several servers' base backups or
    /// `--system-identifier` named one (`ServerChoice`).
    public var system: String?
    /// When the base backup began: a restore point made before then cannot be reached from it.
    public var backupStartedAt: Date?
    public var backupStartLsn: String?
    /// With `--target-name`: the same server's base backups older than the chosen one, newest first
    /// (`--base-backup` chooses one), for the warning and for the error when recovery ends short.
    public var olderBaseBackups: [Older]?
    /// With `--target-name`: that the restore point must follow this base backup's start (the WAL
    /// before it is not replayed), naming the older base backups.
    public var restorePointWarning: String?
    /// With `--target-name`: where the restore point was found in the archived WAL, after this base backup's start.
    public var restorePointLsn: String?
    /// Where the WAL run stopped at another server's segments under this server's names (`WALRangeOwnership`).
    public var walWarning: String?
    /// When that restore point was made (its record's time).
    public var restorePointTime: Date?
    /// With `--target-name`: every restore point of the name on the timeline path recovery follows,
    /// oldest first, with the base backup that reaches each (a name can be made several times).
    public var restorePoints: [RestorePointOccurrence]?
    /// What the run will hold from dbprune until recovery ends (`RecoveryHold`, written as the run starts).
    public var hold: Hold?

    /// The hold a run of this plan writes: the same fields as `RecoveryHold`, less the id and time it gets when written.
    public struct Hold: Codable, Sendable {
        public var backups: [String]
        public var timelines: [UInt32]
        public var firstSegment: String
        public var target: String
        public var dataDirectory: String
        /// Where and when it is written and how it goes.
        public var note = "written as locks/holds/<id>.json when the run starts (its id is made then; a repository the run cannot write gets none, with a warning); recovery_end_command releases it, or dbprune --release-hold ID"
    }

    public struct Older: Codable, Sendable {
        public var id: String
        public var startedAt: Date
    }

    /// The restore-point warning: recovery replays WAL from the base backup's start only, so a point
    /// made before it is never reached (PostgreSQL ends recovery "before configured recovery target").
    /// `searched`: the archived WAL was read for it (not with `--base-backup`) and it was not there.
    mutating func warnAboutRestorePoint(_ name: String, searched: Bool) {
        let older = (olderBaseBackups ?? []).map { "\($0.id) (started \(Timestamp.format($0.startedAt)))" }
        let lsn = backupStartLsn.map { ", LSN \($0)" } ?? ""
        restorePointWarning = "restore point '\(name)' " + (searched ? "was not found in the archived WAL; it " : "")
            + "must have been made after base backup \(backupID) started"
            + (backupStartedAt.map { started in " (\(Timestamp.format(started))\(lsn))" } ?? "")
            + ": recovery cannot reach a point made before it; "
            + (older.isEmpty ? "no older base backup of this server is in the repository"
               : "for one made earlier run with --base-backup ID of an older one: \(older.joined(separator: ", "))")
    }

    /// Finds pg_ctl of the backup's major. With `--start` a missing or other-major one refuses the
    /// plan, before anything is written; without it the plan says what starting the server will need.
    ///
    /// - Throws: `RecoveryError(.toolFailed)` naming the major needed and how to install it.
    mutating func findServer(for backup: BackupManifest, _ configuration: PITRConfiguration) throws {
        guard let major = backup.serverMajor else { return }
        serverMajor = major.number
        do {
            pgCtl = try configuration.tools.program("pg_ctl", for: major, fit: .same).path
        } catch let error as RecoveryError where !configuration.start {
            pgCtlProblem = error.message + "; " + (error.hint ?? "")
        }
    }

    public var lines: [String] {
        var lines = skipped.map { "skip base backup \($0.id): \($0.reason)" }
        if let system { lines.append("system:      \(system)") }
        lines.append("base backup: \(backupID), finished \(Timestamp.format(backupFinishedAt))")
        if let chain, chain.count > 1 {
            lines.append("chain:       \(chain.joined(separator: " → ")) (pg_combinebackup, one member extracted at a time)")
        }
        if let peakDiskBytes {
            lines.append("disk:        about \(ByteCount.format(peakDiskBytes)) at the peak beside \(dataDirectory) (staging included)")
        }
        lines.append("WAL:         \(firstSegment) … \(lastArchivedSegment) (\(segmentsAvailable) segments archived, no gaps; "
                     + "their contents are not read here: wal-fetch checks each as recovery reads it)")
        if let walWarning { lines.append("warning:     \(walWarning)") }
        lines.append("timeline:    \(timeline) (\(timelinePath))")
        lines.append("target:      \(target)" + (restorePointLsn.map { lsn in
            " at LSN \(lsn)" + (restorePointTime.map { " made \(Timestamp.format($0))" } ?? "") + " (found in the archived WAL, after this base backup started)"
        } ?? ""))
        if let restorePointWarning { lines.append("warning:     \(restorePointWarning)") }
        if let moveAsideTo { lines.append("move the existing \(dataDirectory) aside to \(moveAsideTo)") }
        if let partialExtraction { lines.append("remove the partial extraction in \(dataDirectory) left by \(partialExtraction)") }
        for staging in abandonedStaging ?? [] { lines.append("remove \(staging), staging left by a killed run") }
        lines.append("extract into \(dataDirectory), write restore_command and the recovery target, create recovery.signal")
        lines.append("hold:        keep base backup \((hold?.backups ?? chain ?? [backupID]).joined(separator: ", ")) and WAL from \(firstSegment) on "
                     + "(timeline \((hold?.timelines ?? timelines ?? [timeline]).map(String.init).joined(separator: ", "))) from dbprune until recovery ends "
                     + "(a record under locks/holds/; recovery_end_command releases it, or dbprune --release-hold ID)")
        if let serverMajor {
            lines.append("server:      PostgreSQL \(serverMajor) only (a data directory starts only under its own major): "
                         + (pgCtl.map { "\($0) -D \(dataDirectory) start" } ?? pgCtlProblem ?? "pg_ctl of \(serverMajor)"))
        }
        return lines
    }
}

/// The outcome of `dbrestore --pitr`.
public struct PITRReport: Codable, Sendable {
    public var plan: PITRPlan
    public var started: Bool
    public var promoted: Bool
    public var lastReplayedTransaction: Date?
    /// Row counts per database, when started.
    public var databases: [String: [BackupManifest.TableRowCount]]
    public var durationSeconds: Double
    /// What was done, step by step (extraction, each pg_combinebackup of a chain, recovery).
    public var steps: [Timeline.Step] = []
    /// Bytes read from the repository's backup files (each stored byte of the base backups and
    /// their indexes once; WAL is read later by the server's restore_command).
    public var bytesRead: UInt64 = 0
    /// The hold written into the repository: what dbprune keeps until recovery ends.
    public var hold: RecoveryHold? = nil
    /// Why no hold could be written (a read-only repository, a full disk): nil when one was.
    public var holdProblem: String? = nil
}

/// Point-in-time recovery from a physical base backup and the WAL archive.
public enum PointInTimeRestore {
    /// Chooses the base backup and checks the WAL reaches the target, without writing anything.
    ///
    /// - Throws: `RecoveryError` naming why no base backup qualifies (before the oldest backup,
    ///   beyond the archived WAL, a missing segment), or a non-empty data directory.
    public static func plan(_ configuration: PITRConfiguration) throws -> PITRPlan {
        if configuration.key != nil && configuration.keyFile == nil {
            throw RecoveryError(.usage, "--pitr with an encrypted repository needs the key in a file: the restored server's restore_command must read it too",
                                hint: "pass --encryption-key-file FILE (readable by the PostgreSQL server's user) instead of DBRECOVERY_ENCRYPTION_KEY")
        }
        // A live server's directory is never ours to move, fill or empty (`--dry-run` says so too).
        if let live = LivePostmaster.find(in: configuration.dataDirectory) {
            throw LivePostmaster.refusal(live, of: configuration.dataDirectory, step: configuration.moveAside ? "move aside or restore into" : "restore into")
        }
        let store = try Repository.open(configuration.repository, create: false, environment: configuration.environment)
        let manifests = try Catalog(store: store).manifests()
        let physical = manifests.filter { $0.kind == .physical && $0.physical != nil }
        guard !physical.isEmpty else {
            throw RecoveryError(.backupNotFound, "repository \(store.location) holds no physical base backup",
                                hint: "take one with dbbackup --physical (archive_mode on, archive_command = 'dbbackup wal-push %p --repo …')")
        }
        let archive = try store.list(prefix: "wal/")
        // One server's base backups only: another server's cannot recover with this WAL.
        let servers = try ServerChoice.choose(physical, archive: archive, store: store, configuration: configuration)
        let backups = servers.backups
        let named = try configuration.baseBackup.map { try namedBaseBackup($0, manifests: manifests, chosen: servers, target: configuration.target, location: store.location) }
        // Another key fails the first history file's authentication ("tampered", exit 23): the key is
        // checked against the base backup first, for the restore's own error (exit 3) naming its fingerprint.
        if configuration.key != nil, let reference = named ?? backups.first { try requireKey(for: [reference], given: configuration.key) }
        let history = try TimelineHistory.read(archive: archive, store: store, key: configuration.key)
        var skipped: [PITRPlan.Skipped] = servers.skipped
        var lastProblem: RecoveryError?
        var candidates = named.map { [$0] } ?? backups
        // A restore point is reached only from a base backup that started before it: the WAL says which.
        var restorePoints: RestorePointChoice?
        if case .name(let name) = configuration.target {
            restorePoints = try RestorePointChoice.find(name, backups: backups, named: named, archive: archive, history: history,
                                                        timeline: configuration.timeline, store: store, key: configuration.key)
            if named == nil, let points = restorePoints, let found = backups.first(where: { points.reached(from: $0) != nil }) {
                for newer in backups.prefix(while: { $0.id != found.id }) {
                    skipped.append(.init(id: newer.id, reason: points.unreachable(from: newer)))
                }
                candidates = Array(backups.drop { $0.id != found.id })
            }
        }
        for backup in candidates {
            guard let physical = backup.physical else { continue }
            switch configuration.target {
            case .time(let time) where backup.finishedAt > time:
                skipped.append(.init(id: backup.id, reason: "finished at \(Timestamp.format(backup.finishedAt)), after the target"))
                continue
            case .lsn(let lsn) where (WALSegmentName.parseLSN(physical.stopLsn) ?? .max) > lsn:
                skipped.append(.init(id: backup.id, reason: "ends at LSN \(physical.stopLsn), after the target"))
                continue
            default: break
            }
            let backupTimeline = UInt32(clamping: max(1, physical.timeline))
            let targetTimeline: UInt32
            switch configuration.timeline {
            case .latest:
                targetTimeline = history.latest(from: backupTimeline)
                try refuseTimelineWithoutHistory(above: targetTimeline, archive: archive)
            case .number(let number): targetTimeline = number
            }
            if case .time(let time) = configuration.target {
                try refuseAbandonedBranch(time, path: try history.path(to: targetTimeline), history: history)
            }
            let chain: [BackupManifest]
            do { chain = try IncrementalChain.members(of: backup, in: backups) } catch let error as RecoveryError {
                skipped.append(.init(id: backup.id, reason: error.message))
                continue
            }
            // Refused here as the restore would refuse it: a dry run must not look fine without the key.
            try requireKey(for: chain, given: configuration.key)
            if let problem = try servers.walProblem(of: backup, in: store, cipherKey: configuration.key) {
                skipped.append(.init(id: backup.id, reason: problem))
                continue
            }
            do {
                let path = try history.path(to: targetTimeline)
                try checkOnPath(physical, path: path, target: targetTimeline)
                let ownership = WALRangeOwnership(backup: backup, store: store, cipherKey: configuration.key)
                let (last, count, lastArchivedAt) = try walRun(from: physical, archive: archive, path: path, target: configuration.target,
                                                                serverMajor: backup.serverMajor?.number, ownership: ownership)
                let foreign = ownership?.stop
                if case .time(let time) = configuration.target, let lastArchivedAt, lastArchivedAt < time {
                    try refuseEndedTimeline(time, timeline: targetTimeline, history: history)
                    if let foreign {
                        throw RecoveryError(.backupNotFound,
                                            "target time \(Timestamp.format(time)) is beyond this server's archived WAL: its last segment, \(last), was archived at \(Timestamp.format(lastArchivedAt)); \(foreign.description)",
                                            hint: "choose an earlier target; " + WALOwnership.foreignHint + "; nothing was written")
                    }
                    throw RecoveryError(.backupNotFound,
                                        "target time \(Timestamp.format(time)) is beyond the archived WAL: the last segment, \(last), was archived at \(Timestamp.format(lastArchivedAt))",
                                        hint: "choose an earlier target, or wait for archiving (SELECT pg_switch_wal() on the source forces it)")
                }
                var moveAsideTo: String?
                var partialExtraction: String?
                if try !isEmptyOrMissing(configuration.dataDirectory) {
                    // A run killed while extracting left its marker: that directory is ours to empty.
                    if let abandoned = try abandonedExtraction(in: configuration.dataDirectory) ?? abandonedCombine(into: configuration.dataDirectory) {
                        partialExtraction = abandoned
                    } else {
                        guard configuration.moveAside else { throw notEmpty(configuration.dataDirectory) }
                        moveAsideTo = configuration.dataDirectory + ".moved-" + Timestamp.compact(Date(), separator: "_", zone: "")
                        try refuseUnwritableParent(of: configuration.dataDirectory)
                    }
                }
                // A chain needs pg_combinebackup and pg_verifybackup: missing ones are refused here, before anything is written.
                let needs = chain.count > 1 ? try ChainRestore.requirements(of: chain, tools: configuration.tools) : nil
                var plan = PITRPlan(backupID: backup.id, backupFinishedAt: backup.finishedAt, firstSegment: physical.firstWalSegment,
                                    lastArchivedSegment: last, segmentsAvailable: count, target: configuration.target.description,
                                    timeline: targetTimeline, timelinePath: describe(path, from: backupTimeline),
                                    dataDirectory: configuration.dataDirectory, moveAsideTo: moveAsideTo, skipped: skipped)
                plan.partialExtraction = partialExtraction
                plan.walWarning = foreign.map { "\($0.description): recovery ends before it (wal-fetch refuses it); \(WALOwnership.foreignHint)" }
                let staging = ChainRestore.abandonedStaging(of: configuration.dataDirectory).map(\.path)
                plan.abandonedStaging = staging.isEmpty ? nil : staging
                plan.chain = chain.count > 1 ? chain.map(\.id) : nil
                plan.peakDiskBytes = needs?.peakBytes
                plan.timelines = path.drop { $0.timeline != backupTimeline }.map(\.timeline)
                plan.system = servers.note
                plan.hold = PITRPlan.Hold(backups: chain.map(\.id), timelines: plan.timelines ?? [targetTimeline], firstSegment: physical.firstWalSegment,
                                          target: configuration.target.description, dataDirectory: configuration.dataDirectory)
                plan.backupStartedAt = backup.startedAt
                plan.backupStartLsn = physical.startLsn
                if case .name(let name) = configuration.target {
                    plan.olderBaseBackups = backups.filter { $0.startedAt < backup.startedAt && $0.id != backup.id }.map { PITRPlan.Older(id: $0.id, startedAt: $0.startedAt) }
                    plan.restorePoints = restorePoints.flatMap { $0.occurrences.isEmpty ? nil : $0.occurrences }
                    if let points = restorePoints, let reached = points.reached(from: backup) {
                        plan.restorePointLsn = reached.lsn
                        plan.restorePointTime = reached.time
                        plan.restorePointWarning = points.duplicateWarning(reaching: reached, from: backup.id)
                    } else {
                        plan.warnAboutRestorePoint(name, searched: restorePoints != nil)
                    }
                }
                try plan.findServer(for: backup, configuration)
                return plan
            } catch let error as RecoveryError where error.code == .backupNotFound {
                skipped.append(.init(id: backup.id, reason: error.message))
                lastProblem = error
            }
        }
        if case .time(let time) = configuration.target, let oldest = backups.last, time < oldest.finishedAt {
            throw RecoveryError(.backupNotFound,
                                "target time \(Timestamp.format(time)) is before the oldest base backup (\(oldest.id), finished \(Timestamp.format(oldest.finishedAt)))",
                                hint: "nothing was written; a point-in-time restore can only reach times after a base backup finished")
        }
        if let lastProblem, skipped.count == 1 { throw lastProblem }
        throw RecoveryError(.backupNotFound, "no base backup can reach \(configuration.target): " + skipped.map { "\($0.id): \($0.reason)" }.joined(separator: "; "),
                            hint: "nothing was written")
    }

    /// Refuses base backups whose files are encrypted when no key, or another key, was given: the
    /// error the extraction would give (exit 3), before anything is written, also in a dry run.
    ///
    /// - Throws: `RecoveryError(.configuration)` naming the backup and the key's fingerprint.
    static func requireKey(for chain: [BackupManifest], given key: RepositoryKey?) throws {
        for member in chain {
            for file in member.files { _ = try StoredFileStream.key(for: file, of: member, given: key) }
        }
    }

    /// The base backup `--base-backup ID` names, refused (nothing written) when it is not a base backup
    /// of the server being recovered, or ends after a time or LSN target (recovery cannot stop before
    /// a base backup is consistent).
    ///
    /// - Throws: `RecoveryError(.backupNotFound)` for an unknown id, a logical backup or another
    ///   server's base backup; `.usage` for one that ends after the target.
    static func namedBaseBackup(_ id: String, manifests: [BackupManifest], chosen servers: ServerChoice, target: RecoveryTarget,
                                location: String) throws -> BackupManifest {
        let ours = servers.backups.map { "\($0.id) (finished \(Timestamp.format($0.finishedAt)))" }.joined(separator: ", ")
        let list = "dbrestore list shows them; this server's base backups: \(ours.isEmpty ? "none" : ours); nothing was written"
        guard let backup = manifests.first(where: { $0.id == id }) else {
            throw RecoveryError(.backupNotFound, "--base-backup \(id): repository \(location) holds no backup with that id", hint: list)
        }
        guard let physical = backup.physical, backup.kind == .physical else {
            throw RecoveryError(.backupNotFound, "--base-backup \(id) is a logical backup of database \(backup.database.name), not a physical base backup: --pitr recovers only from those",
                                hint: list)
        }
        guard servers.backups.contains(where: { $0.id == id }) else {
            let reason = servers.skipped.first { $0.id == id }?.reason ?? "not of the server recovered"
            throw RecoveryError(.backupNotFound, "--base-backup \(id) cannot recover this server's WAL: it is \(reason)",
                                hint: "name the server with --system-identifier \(backup.database.systemIdentifier ?? "N"), or another base backup; " + list)
        }
        switch target {
        case .time(let time) where backup.finishedAt > time:
            throw RecoveryError(.usage, "--base-backup \(id) finished at \(Timestamp.format(backup.finishedAt)), after --target-time \(Timestamp.format(time)): recovery cannot stop before a base backup's end",
                                hint: "name an older base backup, or a later target; " + list)
        case .lsn(let lsn) where (WALSegmentName.parseLSN(physical.stopLsn) ?? .max) > lsn:
            throw RecoveryError(.usage, "--base-backup \(id) ends at LSN \(physical.stopLsn), after --target-lsn \(WALSegmentName.formatLSN(lsn)): recovery cannot stop before a base backup's end",
                                hint: "name an older base backup, or a later target; " + list)
        default:
            return backup
        }
    }

    /// The contiguous run of archived segments from the backup's first one, along the timeline
    /// path recovery follows: its last segment, its length and when that last segment was archived.
    ///
    /// Each segment is read from the newest timeline on the path that had begun by that segment, as
    /// PostgreSQL's recovery reads it (the segment holding a switch point comes from the new timeline).
    ///
    /// A gap (a missing segment with later ones archived) refuses `latest` (replay would end at the
    /// gap and promote there without a word) and every target that may lie at or after it. Only an
    /// LSN target tells where it lies without reading the WAL: one below the missing segment's first
    /// LSN is accepted (recovery stops before the gap; from PostgreSQL 13 on, a recovery that reaches
    /// the end of WAL before its target fails instead of promoting, so even a stop record that
    /// crosses into the gap cannot end in a wrong restore). A time or restore point may lie either side.
    /// An LSN target past the last archived segment is refused as beyond the archived WAL.
    ///
    /// - Throws: `RecoveryError(.backupNotFound)` for a segment missing before the backup is
    ///   consistent, a gap the target may lie at or after, or an LSN beyond the archive.
    static func walRun(from physical: BackupManifest.Physical, archive: [StoredObject],
                       path: [TimelineHistory.Stretch]? = nil, target: RecoveryTarget = .latest,
                       serverMajor: Int? = nil, ownership: WALRangeOwnership? = nil) throws -> (String, Int, Date?) {
        let size = physical.segmentSize
        let stretches = path ?? [TimelineHistory.Stretch(timeline: UInt32(clamping: max(1, physical.timeline)), begin: 0, end: nil)]
        var segments: [UInt32: [UInt64: Date?]] = [:]
        for object in archive {
            guard let name = WALArchive.fileName(ofKey: object.key), WALSegmentName.isSegment(name), let timeline = WALSegmentName.timelineNumber(of: name),
                  let number = WALSegmentName.segmentNumber(of: name, segmentSize: size) else { continue }
            segments[timeline, default: [:]][number] = object.modified
        }
        /// The timeline segment `number` is read from: the newest stretch begun by then.
        func timeline(of number: UInt64) -> UInt32 {
            stretches.last { $0.begin / size <= number }?.timeline ?? stretches[0].timeline
        }
        /// nil: not archived; .some(nil): archived at an unknown time.
        func archived(_ number: UInt64) -> Date?? {
            guard let onTimeline = segments[timeline(of: number)], let modified = onTimeline[number] else { return nil }
            return .some(modified)
        }
        func name(_ number: UInt64) -> String { WALSegmentName.name(timeline: timeline(of: number), segmentNumber: number, segmentSize: size) }

        guard let first = WALSegmentName.segmentNumber(of: physical.firstWalSegment, segmentSize: size),
              let needed = WALSegmentName.segmentNumber(of: physical.lastWalSegment, segmentSize: size) else {
            throw RecoveryError(.backupCorrupt, "the manifest names WAL segments \(physical.firstWalSegment) … \(physical.lastWalSegment), which do not exist at a \(size >> 20) MB segment size")
        }
        guard archived(first) != nil else {
            throw RecoveryError(.backupNotFound, "WAL segment \(name(first)), where this base backup starts, is not archived",
                                hint: "check archive_command and pg_stat_archiver on the source")
        }
        var current = first
        var count = 1
        while archived(current + 1) != nil {
            current += 1
            count += 1
        }
        // Another server's segments under this server's names end the run where they begin (wal-fetch
        // refuses them, so recovery ends there): what lies past them is not this server's WAL either.
        ownership?.stop = nil
        if let ownership, let foreign = ownership.firstForeign(in: first...current, name: name) {
            let stop = WALRangeOwnership.Stop(segment: name(foreign.number), system: foreign.system, ours: ownership.system)
            guard foreign.number > needed else {
                throw RecoveryError(.backupNotFound, "\(stop.description): the base backup is not consistent without its own",
                                    hint: WALOwnership.foreignHint)
            }
            ownership.stop = stop
            current = foreign.number - 1
            count = Int(current - first) + 1
            let end = (current + 1) * size
            if case .lsn(let lsn) = target, lsn >= end {
                throw RecoveryError(.backupNotFound,
                                    "target LSN \(WALSegmentName.formatLSN(lsn)) is beyond this server's archived WAL, which ends at \(WALSegmentName.formatLSN(end)): \(stop.description)",
                                    hint: "choose an earlier target; " + WALOwnership.foreignHint + "; nothing was written")
            }
            return (name(current), count, archived(current) ?? nil)
        }
        if current < needed {
            throw RecoveryError(.backupNotFound, "WAL segment \(name(current + 1)) is missing: the base backup is not consistent without it",
                                hint: "the source archives a segment once it is full (archive_timeout, or SELECT pg_switch_wal() on the primary forces it; a standby's backup ends in WAL the primary archives)")
        }
        // The first LSN not archived: where the missing segment begins.
        let end = (current + 1) * size
        // Later segments on the path, past the gap: replay would end at the gap without saying so.
        let later = segments.flatMap { timeline, numbers in numbers.keys.filter { $0 > current + 1 && self.isOnPath($0, timeline: timeline, stretches, size) } }.min()
        if let later {
            let missing = "WAL segment \(name(current + 1)) is missing from the archive, but later ones (from \(name(later))) exist"
            let before = "restore the missing segment into the archive, or recover to an LSN before it: --target-lsn below \(WALSegmentName.formatLSN(end)), where it begins"
            switch target {
            case .lsn(let lsn) where lsn < end && (serverMajor ?? 13) >= 13:
                break   // stops before the gap; see above
            case .lsn(let lsn) where lsn < end:
                throw RecoveryError(.backupNotFound, "\(missing): PostgreSQL \(serverMajor ?? 0) promotes at the end of WAL short of its target, so even target LSN \(WALSegmentName.formatLSN(lsn)) before the gap could end in a wrong restore",
                                    hint: "restore the missing segment into the archive first")
            case .lsn(let lsn):
                throw RecoveryError(.backupNotFound, "target LSN \(WALSegmentName.formatLSN(lsn)) is at or after a gap: \(missing)", hint: before)
            case .latest:
                throw RecoveryError(.backupNotFound, "\(missing): replay would stop at the gap and promote there", hint: before)
            case .time, .name:
                throw RecoveryError(.backupNotFound, "\(missing): \(target) may lie after the gap (only the WAL says where), and recovery cannot pass it",
                                    hint: before)
            }
        } else if case .lsn(let lsn) = target, lsn >= end {
            throw RecoveryError(.backupNotFound,
                                "target LSN \(WALSegmentName.formatLSN(lsn)) is beyond the archived WAL: the last archived segment, \(name(current)), ends at \(WALSegmentName.formatLSN(end))",
                                hint: "choose an earlier target, or wait for archiving (SELECT pg_switch_wal() on the source forces it); nothing was written")
        }
        return (name(current), count, archived(current) ?? nil)
    }

    /// Whether segment `number` of `timeline` is one recovery along `stretches` would read.
    private static func isOnPath(_ number: UInt64, timeline: UInt32, _ stretches: [TimelineHistory.Stretch], _ size: UInt64) -> Bool {
        guard let index = stretches.firstIndex(where: { $0.timeline == timeline }) else { return false }
        let begin = stretches[index].begin / size
        let nextBegin = index + 1 < stretches.count ? stretches[index + 1].begin / size : UInt64.max
        return number >= begin && number < nextBegin
    }

    /// Refuses a base backup that recovery along `path` cannot start from: its timeline is not on
    /// the path, or it was taken on that timeline after the path had left it (on the abandoned branch).
    static func checkOnPath(_ physical: BackupManifest.Physical, path: [TimelineHistory.Stretch], target: UInt32) throws {
        let timeline = UInt32(clamping: max(1, physical.timeline))
        guard let stretch = path.first(where: { $0.timeline == timeline }) else {
            throw RecoveryError(.backupNotFound, "it was taken on timeline \(timeline), which is not in the history of timeline \(target)",
                                hint: "recover with --timeline \(timeline), or from a base backup taken on timeline \(target) or one of its ancestors")
        }
        if let end = stretch.end, let stop = WALSegmentName.parseLSN(physical.stopLsn), stop > end {
            let next = path.first { $0.begin == end && $0.timeline != timeline }?.timeline ?? target
            throw RecoveryError(.backupNotFound,
                                "it ends at \(physical.stopLsn) on timeline \(timeline), after that timeline switched to timeline \(next) at \(WALSegmentName.formatLSN(end)): it holds WAL timeline \(next) abandoned",
                                hint: "recover with --timeline \(timeline) to use it, or take a base backup on timeline \(target)")
        }
    }

    /// Refuses a target time that falls after a parent timeline on the path was left and before the
    /// child began: the child has no history there, and what the parent wrote then was abandoned.
    static func refuseAbandonedBranch(_ time: Date, path: [TimelineHistory.Stretch], history: TimelineHistory) throws {
        for (index, stretch) in path.enumerated() where stretch.end != nil && index + 1 < path.count {
            let child = path[index + 1].timeline
            let reason = history.histories[child]?.first { $0.timeline == stretch.timeline }?.reason ?? ""
            guard let ended = history.switchTime(child: child, reason: reason), let began = history.beganAt[child],
                  time > ended, time < began else { continue }
            throw RecoveryError(.backupNotFound,
                                "target \(Timestamp.format(time)) is after timeline \(stretch.timeline) ended at \(Timestamp.format(ended)) (switched to timeline \(child), which began at \(Timestamp.format(began))): timeline \(stretch.timeline)'s later WAL was abandoned, and timeline \(child) holds nothing from then",
                                hint: "pick a target before \(Timestamp.format(ended)) or after \(Timestamp.format(began)), or --timeline \(stretch.timeline) to recover the abandoned branch; nothing was written")
        }
    }

    /// For a target beyond the archived WAL of a timeline that later switched to another: says so.
    static func refuseEndedTimeline(_ time: Date, timeline: UInt32, history: TimelineHistory) throws {
        for (child, _, reason) in history.children(of: timeline) {
            guard let ended = history.switchTime(child: child, reason: reason), time > ended else { continue }
            throw RecoveryError(.backupNotFound,
                                "target \(Timestamp.format(time)) is after timeline \(timeline) ended at \(Timestamp.format(ended)) (switched to timeline \(child)); timeline \(timeline)'s later WAL was abandoned",
                                hint: "pick a target before \(Timestamp.format(ended)), or --timeline \(child); nothing was written")
        }
    }

    /// "timeline 1 until 0/5000028, then timeline 2", from the backup's timeline on.
    static func describe(_ path: [TimelineHistory.Stretch], from timeline: UInt32) -> String {
        let relevant = path.drop { $0.timeline != timeline }
        guard relevant.count > 1 else { return "no timeline switch to follow" }
        return relevant.map { stretch in
            stretch.end.map { "timeline \(stretch.timeline) until \(WALSegmentName.formatLSN($0))" } ?? "timeline \(stretch.timeline)"
        }.joined(separator: ", then ")
    }

    /// Extracts the base backup and configures recovery; with `start`, runs it to promotion.
    ///
    /// - Important: writes only into a new or empty data directory (or one moved aside first).
    /// - Throws: `RecoveryError`; an extraction failure removes what it wrote.
    public static func execute(_ plan: PITRPlan, _ configuration: PITRConfiguration, timeline: Timeline,
                               progress: ProgressObserver? = nil) throws -> PITRReport {
        let store = try Repository.open(configuration.repository, create: false, environment: configuration.environment)
        // A reader lock before the manifest is read: dbprune leaves the base backup alone meanwhile.
        let reading = try StoreLock.sharedIfWritable(in: store, backupID: plan.backupID, holder: LockHolder(command: "dbrestore --pitr"))
        defer { try? reading?.release() }   // a leftover reader record only delays pruning; dbprune removes it once we are gone
        let manifest = try Catalog(store: store).resolve(plan.backupID)
        // An incremental needs every earlier member of its chain; each gets a reader lock too.
        let chain = manifest.incremental == nil ? [manifest] : try IncrementalChain.members(of: manifest, in: try Catalog(store: store).manifests())
        var memberLocks: [StoreLock] = []
        defer { for lock in memberLocks { try? lock.release() } }
        for member in chain.dropLast() {
            if let lock = try StoreLock.sharedIfWritable(in: store, backupID: member.id, holder: LockHolder(command: "dbrestore --pitr")) { memberLocks.append(lock) }
        }
        // The hold outlives this run (the server reads WAL until recovery ends); written while the
        // reader locks still keep everything, so no prune can slip between them.
        let (hold, holdProblem) = try writeHold(plan, chain: chain, configuration, store: store)
        var releaseHoldOnExit = hold != nil
        defer {
            // A run that fails or is interrupted before the data directory is prepared leaves nothing to recover: its hold goes.
            if releaseHoldOnExit, let hold { releaseHold(hold, store: store) }
        }
        let directory = configuration.dataDirectory
        CrashPoint.reached("pitr:planned")
        // Asked again: a server may have been started there since the plan (or the plan is old).
        if let live = LivePostmaster.find(in: directory) { throw LivePostmaster.refusal(live, of: directory, step: "restore into") }
        if plan.partialExtraction != nil {
            // Looked at again: the plan may be a while old. Still abandoned, or refused.
            guard let abandoned = try abandonedExtraction(in: directory) ?? abandonedCombine(into: directory) else { throw notEmpty(directory) }
            try timeline.step("remove the partial extraction in \(directory) left by \(abandoned)") {
                try ExtractionMarker.removePartial(in: directory)
            }
            releaseSupersededHolds(of: directory, keeping: hold, store: store)
        }
        // Looked for again, as the partial extraction: only staging whose run is still gone.
        for staging in ChainRestore.abandonedStaging(of: directory) {
            if let live = LivePostmaster.find(in: staging.path) { throw LivePostmaster.refusal(live, of: staging.path, step: "remove") }
            try timeline.step("remove \(staging.path), staging left by \(staging.by)") {
                try FileManager.default.removeItem(atPath: staging.path)
            }
        }
        if let aside = plan.moveAsideTo {
            try timeline.step("move \(directory) aside to \(aside)") {
                guard rename(directory, aside) == 0 else {
                    let code = errno
                    if code == EACCES || code == EPERM || code == EROFS { try refuseUnwritableParent(of: directory) }
                    throw RecoveryError(.failure, "cannot rename \(directory) to \(aside): \(String(cString: strerror(code)))",
                                        hint: "nothing was changed; rename or empty \(directory) yourself, or give another --pgdata")
                }
            }
        }
        // Before the first byte: a run killed from here on leaves a directory the next run knows as ours.
        let needed = plan.peakDiskBytes ?? manifest.files.first { $0.name == PhysicalCapture.baseFileName }?.rawBytes
        let marker = try ExtractionMarker.begin(in: directory, command: "dbrestore --pitr", needed: needed)
        do {
            try ChainRestore.materialize(chain, from: store, into: directory, key: configuration.key, jobs: configuration.jobs,
                                         tools: configuration.tools, marker: marker, timeline: timeline, progress: progress)
        } catch {
            let cleanup = removeFailedExtraction(directory)
            if Interruption.isRequested {
                CleanupLog.cleaned(cleanup)
                throw error
            }
            let failure = RecoveryError.classify(error)
            throw RecoveryError(failure.code, failure.message, hint: [failure.hint, cleanup + ", nothing was started"].compactMap { $0 }.joined(separator: "; "),
                                serverState: failure.serverState)
        }
        try timeline.step("configure recovery (\(configuration.target))") {
            try writeRecoverySettings(configuration, backupID: manifest.id, timeline: plan.timeline, holdID: hold?.id)
        }
        try marker.finish()
        // Prepared: from here the data directory waits for its WAL, and the hold stays until recovery ends.
        releaseHoldOnExit = false
        var report = PITRReport(plan: plan, started: false, promoted: false, lastReplayedTransaction: nil, databases: [:], durationSeconds: 0)
        report.bytesRead = store.reads.bytes
        report.hold = hold
        report.holdProblem = holdProblem
        if configuration.start {
            do {
                try startAndFollow(configuration, plan: plan, timeline: timeline, report: &report,
                                   segmentSize: manifest.physical?.segmentSize ?? WALSegmentName.defaultSegmentSize)
            } catch {
                guard let hold else { throw error }
                let failure = RecoveryError.classify(error)
                let kept = "the hold \(hold.id) stays (the prepared \(directory) still needs its WAL): it goes when recovery ends, or with dbprune --release-hold \(hold.id)"
                throw RecoveryError(failure.code, failure.message, hint: [failure.hint, kept].compactMap { $0 }.joined(separator: "; "),
                                    serverState: failure.serverState)
            }
            // recovery_end_command released it at promotion; a server that ran it before ours could (or
            // whose command failed, which PostgreSQL only logs) leaves it to us.
            if let hold, report.promoted { releaseHold(hold, store: store) }
        }
        report.durationSeconds = Date().timeIntervalSince(timeline.startedAt)
        report.steps = timeline.steps
        return report
    }

    /// Writes the hold of this recovery (`RecoveryHold`): the base backup and its chain, the WAL from
    /// its first segment on the timelines the plan follows. A repository this process may not write
    /// (read-only, a full disk) is still restored from, as with the reader lock, without a hold: the
    /// run then warns that dbprune may delete what this recovery will read.
    ///
    /// - Throws: `StorageError` for any other failure to write it (nothing is extracted then).
    static func writeHold(_ plan: PITRPlan, chain: [BackupManifest], _ configuration: PITRConfiguration,
                          store: BackupStore) throws -> (RecoveryHold?, String?) {
        let hold = RecoveryHold(backupID: plan.backupID, backups: plan.hold?.backups ?? chain.map(\.id), timelines: plan.hold?.timelines ?? plan.timelines ?? [plan.timeline],
                                firstSegment: plan.hold?.firstSegment ?? plan.firstSegment, target: plan.target, dataDirectory: configuration.dataDirectory)
        do {
            try hold.write(to: store)
            logger.info("hold \(hold.id) written: dbprune keeps base backup \(hold.backups.joined(separator: ", ")) and WAL from \(hold.firstSegment) on until recovery ends")
            return (hold, nil)
        } catch let error as StorageError where [.readOnly, .permissionDenied, .diskFull].contains(error.kind) {
            let problem = "no hold written (\(error.description)): a dbprune of \(store.location) may delete the WAL this recovery reads before it ends"
            logger.warning("\(problem)")
            return (nil, problem)
        }
    }

    /// A run killed (SIGKILL) while preparing `directory` could not remove its hold; this run, which
    /// removed that partial directory, does: what that hold kept nothing will recover from any more.
    /// Only holds of this host and this very directory; best effort, as `releaseHold`.
    private static func releaseSupersededHolds(of directory: String, keeping ours: RecoveryHold?, store: BackupStore) {
        let host = ProcessInfo.processInfo.hostName
        let stale = ((try? RecoveryHold.all(in: store)) ?? []).compactMap(\.hold).filter {
            $0.host == host && $0.dataDirectory == directory && $0.id != ours?.id
        }
        for hold in stale {
            logger.notice("releasing hold \(hold.id) of the killed run that prepared \(directory) at \(Timestamp.format(hold.createdAt)) (its partial directory was removed)")
            releaseHold(hold, store: store)
        }
    }

    /// Deletes a hold, best effort (a failed run's, a killed run's, or ours once promoted): a hold left
    /// behind only delays pruning until it expires, and dbprune names it on every run.
    private static func releaseHold(_ hold: RecoveryHold, store: BackupStore) {
        do {
            if try RecoveryHold.release(hold.id, in: store) { logger.info("hold \(hold.id) released") }
        } catch {
            logger.warning("hold \(hold.id) could not be released (\(error)); dbprune --release-hold \(hold.id) removes it")
        }
    }

    /// Removes what a failed extraction wrote: the data directory, or only what it holds when the
    /// directory must stay (a mount point, or a parent this user cannot write: it could not be made
    /// again). Never throws: says what it did, for the error's hint, including what it could not
    /// remove (then the marker stays, so the next run knows the rest as its own).
    static func removeFailedExtraction(_ directory: String) -> String {
        let manager = FileManager.default
        guard manager.fileExists(atPath: directory) else { return "nothing was left in \(directory)" }
        let parent = (directory as NSString).deletingLastPathComponent
        var own = stat(), above = stat()
        let mountPoint = stat(directory, &own) == 0 && stat(parent.isEmpty ? "." : parent, &above) == 0 && own.st_dev != above.st_dev
        let parentWritable = access(parent.isEmpty ? "." : parent, W_OK) == 0
        var failures: [String] = []
        let names = (try? manager.contentsOfDirectory(atPath: directory)) ?? []
        for name in names where name != ExtractionMarker.fileName {
            let path = (directory as NSString).appendingPathComponent(name)
            do { try manager.removeItem(atPath: path) } catch { failures.append("\(path): \((error as NSError).localizedDescription)") }
        }
        guard failures.isEmpty else {
            return "\(directory) still holds \(failures.count) entr\(failures.count == 1 ? "y" : "ies") that could not be removed (\(failures[0])); "
                + "its \(ExtractionMarker.fileName) stays, so the next dbrestore --pitr into it removes them"
        }
        unlink(ExtractionMarker.path(in: directory))
        if !mountPoint && parentWritable && rmdir(directory) == 0 { return "the data directory \(directory) was removed" }
        let why = mountPoint ? "it is a mount point" : parentWritable ? String(cString: strerror(errno)) : "its parent \(parent) is not writable by this user"
        return "what was extracted into \(directory) was removed; the empty directory stays (\(why))"
    }

    /// Who left the partial extraction `directory` holds (its `ExtractionMarker`), nil when it has
    /// no marker (not ours: never removed).
    ///
    /// - Throws: `RecoveryError(.usage)` when the marker's run is still extracting.
    private static func abandonedExtraction(in directory: String) throws -> String? {
        switch ExtractionMarker.inspect(directory) {
        case .none:
            return nil
        case .abandoned(let holder):
            return ExtractionMarker.killedRun(holder)
        case .running(let holder):
            throw RecoveryError(.usage, "data directory \(directory) is being extracted into by \(holder.description): a live run holds it",
                                hint: "wait for that run to finish, or stop it (kill \(holder.pid)) and run again: the next run removes its partial extraction")
        }
    }

    /// Who left `directory` half written by a chain's last pg_combinebackup (its staging directory
    /// says so; the data directory has no marker of its own then), nil when no such run died.
    private static func abandonedCombine(into directory: String) -> String? {
        ChainRestore.abandonedStaging(of: directory).first(where: \.combining).map { "\($0.by) while pg_combinebackup wrote it" }
    }

    /// `--move-aside` renames within the data directory's parent: refused (before anything is
    /// written) when this user cannot write there.
    private static func refuseUnwritableParent(of directory: String) throws {
        let parent = (directory as NSString).deletingLastPathComponent
        guard access(parent.isEmpty ? "." : parent, W_OK) != 0 else { return }
        let reason = String(cString: strerror(errno))
        throw RecoveryError(.failure, "cannot move \(directory) aside: its parent \(parent) is not writable by this user (\(reason))",
                            hint: "run as a user who may write \(parent), or move \(directory) yourself and run again without --move-aside; nothing was changed")
    }

    /// The refusal of a data directory that holds something that is not ours.
    private static func notEmpty(_ directory: String) -> RecoveryError {
        RecoveryError(.usage, "data directory \(directory) is not empty",
                      hint: "give an empty or new directory, or --move-aside to rename the existing one out of the way")
    }

    private static func isEmptyOrMissing(_ path: String) throws -> Bool {
        guard FileManager.default.fileExists(atPath: path) else { return true }
        return (try? FileManager.default.contentsOfDirectory(atPath: path).isEmpty) ?? false
    }

    /// base.tar.gz into `directory`: over `jobs` threads from its index (`ParallelExtraction`), or
    /// without one (older and encrypted backups, a damaged index) sha256 + gunzip → `tar -x`.
    static func extract(_ manifest: BackupManifest, from store: BackupStore, into directory: String, key: RepositoryKey?, jobs: Int,
                        progress: ProgressObserver?) throws {
        guard let file = manifest.files.first(where: { $0.name == PhysicalCapture.baseFileName }) else {
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id) has no \(PhysicalCapture.baseFileName)")
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        chmod(directory, 0o700)
        if let index = try usableIndex(of: manifest, file: file, from: store, key: key) {
            logger.info("backup \(manifest.id): extracting \(file.name) from its \(BaseBackupIndex.fileName) (\(index.accessPoints.count) segments, --jobs \(jobs))")
            return try ParallelExtraction.run(file, of: manifest, index: index, store: store, into: directory, jobs: jobs, progress: progress)
        }
        logger.info("backup \(manifest.id): extracting \(file.name) in one pass (tar -x): no usable \(BaseBackupIndex.fileName)")
        let tar = ["/usr/bin/tar", "/bin/tar"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/bin/tar"
        let child = try ChildProcess(executable: tar, arguments: ["-x", "-f", "-", "-C", directory], stdin: .pipe, stdout: .null, stderr: .pipe)
        let errors = OutputCollector(descriptor: child.standardError)
        var written: UInt64 = 0
        do {
            try StoredFileStream.decompress(file, of: manifest, from: store, key: key, phase: "extract", progress: progress) { plain in
                try child.writeToStandardInput(plain)
                let before = written
                written += UInt64(plain.count)
                if before < file.rawBytes / 2 && written >= file.rawBytes / 2 { CrashPoint.reached("pitr:extracting") }
            }
        } catch {
            child.send(SIGKILL)
            child.waitForExit()
            // tar gone first (a full disk) breaks our pipe: its own words say why.
            if let full = diskFull(tarOutput: errors.finish(), manifest, file: file, directory: directory) { throw full }
            throw error
        }
        child.closeStandardInput()
        let termination = child.waitForExit()
        guard termination.succeeded else {
            let output = errors.finish()
            if let full = diskFull(tarOutput: output, manifest, file: file, directory: directory) { throw full }
            let reason = output.split(separator: "\n").first { !$0.contains("Exiting with failure status") }.map(String.init) ?? termination.description
            throw RecoveryError(.toolFailed, "tar \(termination.description) extracting \(manifest.id): \(reason)")
        }
    }

    /// A `tar -x` that ran out of space: exit 20 with tar's line and what the base backup needs, not
    /// a failure of the tool.
    private static func diskFull(tarOutput: String, _ manifest: BackupManifest, file: BackupManifest.File, directory: String) -> RecoveryError? {
        guard let line = tarOutput.split(separator: "\n").first(where: { $0.contains("No space left on device") || $0.contains("Disk quota exceeded") }) else { return nil }
        return RecoveryError(.repositoryError, "no space left on device extracting base backup \(manifest.id) into \(directory): \(line)",
                             hint: "free space where --pgdata lies (the base backup needs about \(ByteCount.format(file.rawBytes))), or restore onto a larger file system")
    }

    /// The base backup's index when it has a usable one; nil otherwise. The index is optional: a
    /// damaged one is a warning and the stream is extracted in one pass.
    private static func usableIndex(of manifest: BackupManifest, file: BackupManifest.File, from store: BackupStore, key: RepositoryKey?) throws -> BaseBackupIndex? {
        guard file.encryptionKeyFingerprint == nil else { return nil }
        do {
            guard let index = try BaseBackupIndex.load(of: manifest, from: store, key: key) else { return nil }
            guard index.usable(for: file) else {
                logger.warning("backup \(manifest.id): \(BaseBackupIndex.fileName) does not describe \(file.name); extracting in one pass instead")
                return nil
            }
            return index
        } catch let error as RecoveryError where error.code == .backupCorrupt {
            // The index's errors name the backup already.
            let message = error.message.hasPrefix("backup \(manifest.id)") ? error.message : "backup \(manifest.id): \(error.message)"
            logger.warning("\(message); extracting in one pass instead (slower, same result)")
            return nil
        }
    }

    private static let logger = Logger(label: "dbrecovery.restore")

    /// The `restore_command` line: the running executable's absolute path, every value shell-quoted
    /// (and `%` doubled, which PostgreSQL would otherwise expand), the key by file, never by value.
    static func restoreCommand(_ configuration: PITRConfiguration) -> String {
        var words = [shell(configuration.dbrestorePath), "wal-fetch", "%f", "%p", "--repo", shell(absolute(configuration.repository))]
        if let keyFile = configuration.keyFile { words += ["--encryption-key-file", shell(absolute(keyFile))] }
        return words.joined(separator: " ")
    }

    /// The `recovery_end_command` line, quoted as `restoreCommand`: releases the hold once recovery
    /// ends (PostgreSQL runs it once, at promotion; a failure is only logged, and the hold then expires).
    static func releaseCommand(_ configuration: PITRConfiguration, holdID: String) -> String {
        [shell(configuration.dbrestorePath), "wal-release", shell(holdID), "--repo", shell(absolute(configuration.repository))].joined(separator: " ")
    }

    private static func absolute(_ path: String) -> String {
        path.hasPrefix("/") || path.hasPrefix("s3://") || path.hasPrefix("file://") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }

    /// One shell word for a command PostgreSQL runs: single-quoted, `%` doubled (PostgreSQL expands it).
    private static func shell(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "'\\''").replacingOccurrences(of: "%", with: "%%") + "'"
    }

    /// Absolute path of the running executable (`/proc/self/exe`), whatever argv[0] and the
    /// current directory were; falls back to argv[0] resolved where there is no `/proc`.
    public static func runningExecutable() -> String {
        if let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"), path.hasPrefix("/") { return path }
        return URL(fileURLWithPath: CommandLine.arguments.first ?? "dbrestore").resolvingSymlinksInPath().path
    }

    /// "The latest timeline" must be the latest one archived: segments of a higher timeline whose history
    /// file is not in the archive (a server promoted by `--pitr`, whose archiving was off when it promoted,
    /// turned into the primary and archiving again) mean the end of `timeline` is an abandoned branch.
    /// Recovering along it returned the abandoned rows with exit 0 (an outside attack); refused instead.
    ///
    /// - Throws: `RecoveryError(.backupNotFound)` naming the timeline, its first segment and the fix.
    static func refuseTimelineWithoutHistory(above timeline: UInt32, archive: [StoredObject]) throws {
        let higher = archive.compactMap { object -> (UInt32, String)? in
            guard let name = WALArchive.fileName(ofKey: object.key), WALSegmentName.isSegment(name), let number = WALSegmentName.timelineNumber(of: name), number > timeline else { return nil }
            return (number, name)
        }.min { $0 < $1 }
        guard let (number, first) = higher else { return }
        throw RecoveryError(.backupNotFound,
                            "the archive holds WAL of timeline \(number) (from \(first)) but not its history file \(TimelineHistory.fileName(number)): "
                                + "the end of timeline \(timeline) is a branch that timeline \(number) abandoned, and 'latest' cannot follow it",
                            hint: "archive the history file from the pg_wal directory of the server on timeline \(number) "
                                + "(dbbackup wal-push pg_wal/\(TimelineHistory.fileName(number)) --repo …), or give --timeline \(timeline) to recover that branch knowingly")
    }

    private static func writeRecoverySettings(_ configuration: PITRConfiguration, backupID: String, timeline: UInt32, holdID: String?) throws {
        let directory = configuration.dataDirectory
        // postgresql.conf strings process backslash escapes (\n, \r, \t among them) and take '' for a quote; a
        // line end must be written as its escape, or it ends the setting's line (a restore point named so).
        let quote = { (text: String) in
            "'" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "''")
                .replacingOccurrences(of: "\n", with: "\\n").replacingOccurrences(of: "\r", with: "\\r") + "'"
        }
        var lines = ["", "# Added by dbrestore --pitr at \(Timestamp.format(Date())) from base backup \(backupID).",
                     "restore_command = \(quote(restoreCommand(configuration)))",
                     "recovery_target_action = 'promote'",
                     // The timeline the plan checked (with 'latest', the newest one then).
                     "recovery_target_timeline = '\(timeline)'",
                     "# The restored cluster must not archive into the repository it was restored from.",
                     "archive_mode = 'off'"]
        if let holdID {
            lines += ["# Releases this recovery's hold on its WAL and base backup in the repository once recovery ends.",
                      "recovery_end_command = \(quote(releaseCommand(configuration, holdID: holdID)))"]
        }
        switch configuration.target {
        case .time(let time):
            lines.append("recovery_target_time = '\(Timestamp.postgres(time))'")
        case .lsn(let lsn): lines.append("recovery_target_lsn = '\(WALSegmentName.formatLSN(lsn))'")
        case .name(let name): lines.append("recovery_target_name = \(quote(name))")
        case .latest: break
        }
        if let port = configuration.port { lines.append("port = \(port)") }
        let path = directory + "/postgresql.auto.conf"
        let existing = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        try (existing + lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o600)
        guard FileManager.default.createFile(atPath: directory + "/recovery.signal", contents: Data()) else {
            throw RecoveryError(.failure, "cannot create \(directory)/recovery.signal")
        }
        for leftover in ["postmaster.pid", "standby.signal"] { unlink(directory + "/" + leftover) }
    }

    /// Starts the server, follows recovery until promotion, then reports the last replayed
    /// transaction and the row counts of every table.
    private static func startAndFollow(_ configuration: PITRConfiguration, plan: PITRPlan, timeline: Timeline, report: inout PITRReport,
                                       segmentSize: UInt64) throws {
        guard let port = configuration.port else {
            throw RecoveryError(.usage, "--start needs --port", hint: "choose a port the original server does not use")
        }
        guard geteuid() != 0 else {
            throw RecoveryError(.usage, "PostgreSQL refuses to run as root", hint: "run dbrestore --pitr --start as the postgres user (sudo -u postgres …)")
        }
        let directory = configuration.dataDirectory
        // The plan found pg_ctl of the backup's major; a backup from before majors were known gets any.
        let pgCtl = try plan.pgCtl ?? configuration.tools.path(of: "pg_ctl")
        let log = directory + "/dbrestore-recovery.log"
        try timeline.step("start PostgreSQL on port \(port) (pg_ctl, log in \(log))") {
            // The server's restore_command reads the repository: it gets the S3 credentials (as a server
            // the operator starts would have them), but the cipher key only as the file restore_command names.
            let child = try ChildProcess(executable: pgCtl, arguments: ["-D", directory, "-l", log, "-w", "-t", "600", "-o", "-p \(port) -k \(directory)", "start"],
                                         environment: configuration.environment.filter { $0.key != "DBRECOVERY_ENCRYPTION_KEY" },
                                         stdin: .null, stdout: .null, stderr: .pipe)
            let errors = OutputCollector(descriptor: child.standardError)
            let termination = child.waitForExit()
            guard termination.succeeded else {
                let failure = recoveryFailure(log: log, segmentSize: segmentSize)
                let complaint = WALFetchComplaint.read(log: log)
                if complaint == nil, let failure, let short = targetNotReached(failure, plan: plan, target: configuration.target, log: log) { throw short }
                throw RecoveryError(.restoreFailed, "the restored server did not start: \(failure ?? errors.lastLine() ?? termination.description)",
                                    hint: WALFetchComplaint.hint(complaint, log: log))
            }
        }
        report.started = true
        let target = configuration.connection.with("host", directory).with("port", String(port))
        let deadline = Date().addingTimeInterval(configuration.startTimeoutSeconds)
        try timeline.step("replay WAL until promotion") {
            while true {
                let connection: PostgresConnection?
                do {
                    connection = try PostgresConnection(target: target.with(database: "postgres"), applicationName: "dbrestore", connectTimeoutSeconds: 5)
                } catch let error as PostgresError where error.isAuthenticationFailure {
                    // The server is up and refuses us: waiting (an hour by default) would not change that.
                    throw RecoveryError(.databaseUnavailable, "the restored server at \(directory) port \(port) refused our connection: \(error.message)",
                                        hint: "the server is running (stop it with pg_ctl -D \(configuration.dataDirectory) stop); give this role's password "
                                            + "(PGPASSWORD or ~/.pgpass) as the backed-up pg_hba.conf requires, or follow recovery in \(log)")
                } catch {
                    connection = nil  // still starting, or replaying (not accepting connections yet)
                }
                if let connection, let inRecovery = try? connection.query("SELECT pg_is_in_recovery()").scalar, inRecovery == "f" {
                    report.promoted = true
                    let last = try connection.query("SELECT to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')").scalar
                    report.lastReplayedTransaction = last.flatMap(Timestamp.parse)
                    return
                }
                if let failure = recoveryFailure(log: log, segmentSize: segmentSize) {
                    let complaint = WALFetchComplaint.read(log: log)
                    throw (complaint == nil ? targetNotReached(failure, plan: plan, target: configuration.target, log: log) : nil)
                        ?? RecoveryError(.restoreFailed, "recovery stopped: \(failure)", hint: WALFetchComplaint.hint(complaint, log: log))
                }
                guard Date() < deadline else {
                    throw RecoveryError(.restoreFailed, "recovery did not finish within \(Int(configuration.startTimeoutSeconds)) s", hint: "see \(log)")
                }
                try Interruption.check()
                usleep(200_000)
            }
        }
        try timeline.step("count rows in every database") {
            let admin = try PostgresConnection(target: target.with(database: "postgres"), applicationName: "dbrestore")
            let names = try admin.query("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1").rows.compactMap { $0[0] }
            for name in names {
                let connection = try PostgresConnection(target: target.with(database: name), applicationName: "dbrestore")
                report.databases[name] = try TableCounter.countRows(on: connection)
            }
        }
    }

    /// PostgreSQL's words when replay reached the end of the archived WAL short of its target.
    static let targetNotReachedLine = "recovery ended before configured recovery target was reached"

    /// The error of a recovery that ended short of a restore point: most likely the point was made
    /// before the base backup began (its WAL is never replayed), so it names that base backup and the
    /// older ones `--base-backup` can choose. Nil for other failures and other targets.
    static func targetNotReached(_ failure: String, plan: PITRPlan, target: RecoveryTarget, log: String) -> RecoveryError? {
        guard failure.contains(targetNotReachedLine), case .name(let name) = target else { return nil }
        let taken = plan.backupStartedAt.map { " (taken \(Timestamp.format($0)))" } ?? ""
        let fix = (plan.olderBaseBackups ?? []).first.map { "run again with --base-backup \($0.id) (started \(Timestamp.format($0.startedAt))) or an older one, or with --target-time" }
            ?? "no older base backup of this server is in the repository: run again with --target-time or --target-lsn"
        return RecoveryError(.restoreFailed,
                             "recovery ended before reaching restore point '\(name)': the restore point \(name) may precede base backup \(plan.backupID)\(taken), or was never made on this server; \(fix) (the server: \(failure))",
                             hint: "the server stopped without promoting (see \(log)); give an empty --pgdata or --move-aside to run again")
    }

    /// What the server tells a client it turns away while it starts, replays or stops: FATAL lines
    /// of our own connection attempts, never the reason recovery ended.
    static let clientRefusals = ["the database system is in recovery mode", "the database system is starting up",
                                 "the database system is not yet accepting connections", "the database system is shutting down",
                                 "the database system is not accepting connections", "authentication failed for user",
                                 "no pg_hba.conf entry", "terminating connection because of crash of another server process"]

    /// Whether a log line is one of the `clientRefusals` (or a client's unknown role or database).
    static func isClientRefusal(_ line: String) -> Bool {
        clientRefusals.contains { line.contains($0) }
            || ((line.contains("FATAL:  role \"") || line.contains("FATAL:  database \"")) && line.hasSuffix("does not exist"))
    }

    /// The FATAL line of a recovery that gave up (the server's own: not one of the `clientRefusals`
    /// our watching connections got, which may come after it), with the segment that was missing if we can tell.
    static func recoveryFailure(log: String, segmentSize: UInt64 = WALSegmentName.defaultSegmentSize) -> String? {
        guard let text = try? String(contentsOfFile: log, encoding: .utf8) else { return nil }
        let lines = text.split(separator: "\n").map(String.init)
        guard let fatal = lines.last(where: { line in
            (line.contains("FATAL:") || line.contains("PANIC:")) && !isClientRefusal(line)
        }) else { return nil }
        let restored = lines.compactMap { line -> String? in
            guard let range = line.range(of: "restored log file \"") else { return nil }
            return String(line[range.upperBound...].prefix(24))
        }.last
        // wal-fetch's own word for the segment it did not hand over (damaged, another server's), else "not in the archive".
        let complaint = WALFetchComplaint.last(in: lines)
        let start = (fatal.range(of: "FATAL:") ?? fatal.range(of: "PANIC:"))?.lowerBound ?? fatal.startIndex
        let server = String(fatal[start...])
        let replayed = restored.map { "last segment replayed: \($0); " } ?? ""
        // The cause first when wal-fetch named it: the server's line only says the command failed.
        if let complaint { return "wal-fetch: \(complaint.message) (\(replayed)the server: \(server))" }
        let missing = restored.flatMap { WALSegmentName.next(after: $0, segmentSize: segmentSize) }.map { " (\(replayed)\($0) was not in the archive)" } ?? ""
        return server + missing
    }
}
