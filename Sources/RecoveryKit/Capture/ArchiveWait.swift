import Foundation
import PostgresClient
import ProcessSignals

/// What `dbbackup --physical` makes of the server's waits while pg_basebackup runs.
///
/// pg_basebackup without WAL (`--wal-method=none`) ends only once the server has archived the
/// backup's last WAL segment (`pg_backup_stop`'s wait_for_archive), and that wait has no bound: an
/// `archive_command` that keeps failing (a segment of the same name archived with other content by
/// another server, a full disk, a typo) held a 02:00 cron run forever, in silence. The server's own
/// "still waiting" warnings go to pg_basebackup's stderr, which we keep for the failure message.
///
/// So the wait is watched here from pure samples of `pg_stat_progress_basebackup` and
/// `pg_stat_archiver`: a failure of `archive_command` during it is said at once, a slow archiver
/// gets a line every so often, and a wait with no segment archived for `timeout` seconds is given
/// up (the caller ends the server's walsender, so no backup is written). pgBackRest bounds the same
/// wait with its archive-timeout (60 s per segment); a timeout counted from the last segment the
/// archiver stored has its meaning, and lets a long backlog that keeps moving finish.
struct ArchiveWait {
    /// `pg_stat_progress_basebackup.phase` while the server waits for the archiver.
    static let archivePhase = "waiting for wal archiving to finish"
    /// … and while it waits for the backup's start checkpoint (bounded by the server's I/O, so only talked about).
    static let checkpointPhase = "waiting for checkpoint to finish"
    /// `--archive-timeout`'s default, as pgBackRest's archive-timeout.
    static let defaultTimeoutSeconds = 60
    /// How often a wait that makes no news gets a line (`DBRECOVERY_ARCHIVE_WAIT_REPORT` in seconds overrides it).
    static let defaultReportSeconds: Double = 30
    /// How long one archive_command call may run before the wait calls it hung or slow (at most half
    /// the timeout, so that it is said before the wait is given up). A failing command returns within
    /// moments and is counted; a working one archives a segment.
    static let hungSeconds: Double = 10

    /// One look at the server.
    struct Sample: Equatable {
        /// Our walsender (pg_basebackup's backend), while it runs a base backup.
        var walsender: Int32?
        var phase: String?
        var failedCount: Int
        var lastFailedWAL: String?
        var lastFailedTime: String?
        var lastArchivedWAL: String?
        /// The archiver's latest attempt failed (`last_failed_time` after `last_archived_time`): it is
        /// stuck on that file, since it archives oldest first and moves on only after a success.
        var failingNow: Bool
        /// The archiver is running archive_command right now (PostgreSQL 15's `ArchiveCommand` wait
        /// event; always false before 15).
        var commandRunning: Bool = false
        /// This role sees the archiver's row of `pg_stat_activity` (superuser or `pg_read_all_stats`):
        /// without it `commandRunning` is always false, and a hang cannot be told from a failure.
        var archiverVisible: Bool = true
    }

    /// Why the wait was given up, for the error.
    struct GaveUp: Equatable {
        var failingSegment: String?
        var failures: Int
        var lastFailureTime: String?
        var lastArchived: String?
        var waitedSeconds: Int
        /// How long one archive_command call had been running without returning (hung or slow), when
        /// that is what held the wait; an earlier failure (`failingSegment` nil then) is not the cause.
        var commandRunningSeconds: Int?
        /// The segment of the last failure before the hang, when there was one.
        var earlierFailure: String?
        /// Whether this role could see the archiver at all (else a hang looks like the last failure).
        var archiverVisible = true
    }

    /// What the watcher should do after a sample.
    enum Action: Equatable {
        case say(String)
        case giveUp(GaveUp)
    }

    let backup: String
    let timeoutSeconds: Int
    let reportSeconds: Double
    private var baselineFailures: Int?
    private var waitStart: Date?
    private var lastProgress: Date?
    private var lastArchived: String?
    private var warnedSegment: String?
    private var lastReport: Date?
    private var checkpointStart: Date?
    private var checkpointReport: Date?
    /// Since when archive_command has been seen running at every look, with no attempt ending in
    /// between (no failure counted, no segment archived): one call, not returning.
    private var running: (since: Date, failures: Int, archived: String?)?
    private var warnedHang = false
    /// The longest a call that ended in a failure had been seen running: a command that fails
    /// slowly (a connect timeout) is not hung while its current call is within that.
    private var longestFailingCall: TimeInterval = 0
    /// The last call seen to end: how long it ran, and the failure count while it ran (a failure
    /// counted at its end or a moment later is its own).
    private var endedCall: (ran: TimeInterval, failures: Int, archived: String?)?

    init(backup: String, timeoutSeconds: Int, reportSeconds: Double = ArchiveWait.defaultReportSeconds) {
        self.backup = backup
        self.timeoutSeconds = timeoutSeconds
        self.reportSeconds = reportSeconds
    }

    /// Takes one sample; returns what to say, or that the wait is over for us.
    mutating func observe(_ sample: Sample, at now: Date) -> [Action] {
        // Failures counted from the run's first look: the switch at the backup's end wakes the archiver,
        // so a broken archive_command fails again within the wait even if it broke long before.
        let baseline = baselineFailures ?? sample.failedCount
        baselineFailures = baseline
        switch sample.phase {
        case Self.checkpointPhase?:
            let start = checkpointStart ?? now
            checkpointStart = start
            guard due(now, since: checkpointReport ?? start) else { return [] }
            checkpointReport = now
            return [.say("base backup \(backup): waiting \(seconds(now, start)) s for the server's checkpoint "
                         + "(pg_basebackup --checkpoint=fast; a checkpoint writes every dirty buffer, bounded by the server's disks)")]
        case Self.archivePhase?:
            break
        default:
            return []
        }
        let start = waitStart ?? now
        if waitStart == nil {
            waitStart = now
            lastProgress = now
            lastArchived = sample.lastArchivedWAL
            lastReport = now
        }
        if sample.lastArchivedWAL != lastArchived {
            lastArchived = sample.lastArchivedWAL
            lastProgress = now
        }
        var actions: [Action] = []
        // One call of archive_command that has not returned for a while is hung or slow: what holds the
        // wait now, whatever an earlier failure says (the archiver tries again after failing, and this
        // attempt is that try). Every look must have seen it running, with no attempt ended between.
        let sameCall = sample.commandRunning && running.map { $0.failures == sample.failedCount && $0.archived == sample.lastArchivedWAL } == true
        if !sameCall {
            if let ended = running {
                endedCall = (now.timeIntervalSince(ended.since), ended.failures, ended.archived)
                // Said once per segment archived, not once per attempt.
                if sample.lastArchivedWAL != ended.archived { warnedHang = false }
            }
            running = sample.commandRunning ? (now, sample.failedCount, sample.lastArchivedWAL) : nil
        }
        if let ended = endedCall, ended.archived == sample.lastArchivedWAL, sample.failedCount > ended.failures {
            longestFailingCall = max(longestFailingCall, ended.ran)
            endedCall = nil
        }
        let runningFor = running.map { now.timeIntervalSince($0.since) } ?? 0
        let hung = running != nil && runningFor >= min(Self.hungSeconds, Double(timeoutSeconds) / 2)
            && (longestFailingCall == 0 || runningFor > longestFailingCall * 1.5 + 5)
        let earlierFailure = sample.failingNow ? sample.lastFailedWAL : nil
        // The archiver's latest attempt failed: it is stuck on that file, ours (or one before it) —
        // whether it broke during the backup or before (then failures stays 0 until its next retry).
        let failing = sample.failingNow && !hung
        let failures = max(0, sample.failedCount - baseline)
        if hung && !warnedHang {
            warnedHang = true
            lastReport = now
            actions.append(.say("warning: base backup \(backup) waits for its last WAL segment to be archived, but archive_command has been running for "
                                + "\(Int(runningFor.rounded())) s without returning\(earlierFailure.map { " (it failed earlier on \($0))" } ?? ""): "
                                + "hung or slow (ps shows it under the server's archiver process; e.g. a repository that does not answer); "
                                + "it fails after --archive-timeout \(timeoutSeconds) s without a segment archived"))
        } else if failing, let segment = sample.lastFailedWAL, warnedSegment != segment {
            warnedSegment = segment
            lastReport = now
            actions.append(.say("warning: base backup \(backup) waits for its last WAL segment to be archived, but archive_command is failing on \(segment) "
                                + "(\(Self.failureCount(failures, last: sample.lastFailedTime))): "
                                + "the server log says why ('archive command failed'); fix archive_command or what it writes to and the backup goes on, "
                                + "else it fails after --archive-timeout \(timeoutSeconds) s without a segment archived"))
        } else if due(now, since: lastReport ?? start) {
            lastReport = now
            let stuck = hung ? ", archive_command running for \(Int(runningFor.rounded())) s without returning"
                : failing ? ", archive_command still failing on \(sample.lastFailedWAL ?? "?")" : ""
            actions.append(.say("base backup \(backup): waiting \(seconds(now, start)) s for the server to archive its last WAL segment "
                                + "(last archived: \(sample.lastArchivedWAL ?? "none")\(stuck)); it gives up after --archive-timeout \(timeoutSeconds) s without a segment archived"))
        }
        if now.timeIntervalSince(lastProgress ?? start) >= Double(timeoutSeconds) {
            actions.append(.giveUp(GaveUp(failingSegment: failing ? sample.lastFailedWAL : nil, failures: failures, lastFailureTime: sample.lastFailedTime,
                                          lastArchived: sample.lastArchivedWAL, waitedSeconds: seconds(now, start),
                                          commandRunningSeconds: hung ? Int(runningFor.rounded()) : nil, earlierFailure: hung ? earlierFailure : nil,
                                          archiverVisible: sample.archiverVisible)))
        }
        return actions
    }

    /// `3 failures since the backup began, the last at …`, or for an archiver that failed before it: `failing since before the backup, last at …`.
    static func failureCount(_ failures: Int, last: String?) -> String {
        failures == 0 ? "failing since before the backup began, the last failure at \(last ?? "?")"
            : "\(failures) failure\(failures == 1 ? "" : "s") since the backup began, the last at \(last ?? "?")"
    }

    private func due(_ now: Date, since: Date) -> Bool { now.timeIntervalSince(since) >= reportSeconds }

    private func seconds(_ now: Date, _ since: Date) -> Int { Int(now.timeIntervalSince(since).rounded()) }

    /// The error of a wait given up: exit 14, naming the segment and the fix; nothing was stored.
    static func error(_ gaveUp: GaveUp, timeoutSeconds: Int) -> RecoveryError {
        if let running = gaveUp.commandRunningSeconds {
            return RecoveryError(.archiveTimeout,
                                 "the base backup's WAL never reached the archive: archive_command has been running for \(running) s without returning "
                                    + "and no segment was archived for --archive-timeout \(timeoutSeconds) s"
                                    + (gaveUp.earlierFailure.map { " (it had failed earlier on \($0); the call running now is hung, not failing)" } ?? ""),
                                 hint: "archive_command is hung or slow (ps shows it under the server's archiver process; e.g. a repository that does not answer): "
                                    + "fix it or raise --archive-timeout, then run dbbackup --physical again; nothing was stored")
        }
        if let segment = gaveUp.failingSegment {
            return RecoveryError(.archiveTimeout,
                                 "the base backup's WAL never reached the archive: archive_command failed on WAL segment \(segment) "
                                    + "(\(Self.failureCount(gaveUp.failures, last: gaveUp.lastFailureTime))) "
                                    + "and no segment was archived for --archive-timeout \(timeoutSeconds) s",
                                 hint: "the server log says why archive_command fails (for dbbackup wal-push, e.g. a segment of that name archived with other "
                                    + "content by another server: give each server its own repository); fix it, then run dbbackup --physical again; nothing was stored"
                                    + (gaveUp.archiverVisible ? "" : " (this role cannot see the archiver in pg_stat_activity, so a hung archive_command looks like "
                                        + "its last failure here: GRANT pg_read_all_stats to it to tell them apart)"))
        }
        return RecoveryError(.archiveTimeout,
                             "the base backup's WAL never reached the archive: the server archived no WAL segment for --archive-timeout \(timeoutSeconds) s "
                                + "(last archived: \(gaveUp.lastArchived ?? "none")), though archive_command reported no failure",
                             hint: "archive_command is slow or hung (ps shows it under the archiver process; the server log may say more): "
                                + "fix it or raise --archive-timeout, then run dbbackup --physical again; nothing was stored")
    }
}

/// Runs `ArchiveWait` on a thread of its own, over a session of its own, while pg_basebackup streams.
///
/// Finds pg_basebackup's walsender by the application name the caller gave pg_basebackup. When the
/// wait is given up, or the capture fails or is interrupted while the server still waits, it ends
/// that walsender (`pg_terminate_backend`, allowed on a session of one's own role): pg_basebackup then
/// fails and stores nothing, and no walsender is left waiting on the archiver after we are gone
/// (killing pg_basebackup alone would leave it, since a walsender in that wait never reads its socket).
// @unchecked Sendable: `walsender`, `result`, `endWalsender` and `stopping` are under `lock`; `thread` is set
// once, in init; the connection and the wait's own state live on the watching thread only.
final class BaseBackupWatch: @unchecked Sendable {
    private let lock = NSLock()
    private let wake = DispatchSemaphore(value: 0)
    private var thread: Background<Void>?
    private var walsender: Int32?
    private var result: ArchiveWait.GaveUp?
    private var endWalsender = false
    private var stopping = false
    let timeoutSeconds: Int

    /// Starts watching.
    ///
    /// - Parameters:
    ///   - applicationName: pg_basebackup's `application_name` (`PGAPPNAME`), unique to this run.
    ///   - write: where the lines go (stderr).
    init(target: ConnectionTarget, applicationName: String, backup: String, timeoutSeconds: Int, environment: [String: String],
         write: @escaping @Sendable (String) -> Void = BaseBackupWatch.standardError) {
        self.timeoutSeconds = timeoutSeconds
        let report = environment["DBRECOVERY_ARCHIVE_WAIT_REPORT"].flatMap(Double.init).flatMap { $0 > 0 ? $0 : nil } ?? ArchiveWait.defaultReportSeconds
        let wait = ArchiveWait(backup: backup, timeoutSeconds: timeoutSeconds, reportSeconds: report)
        thread = Background { [self] in
            self.watch(target: target, applicationName: applicationName, wait: wait, write: write)
        }
    }

    /// Why the wait was given up, if it was.
    var gaveUp: ArchiveWait.GaveUp? { lock.withLock { result } }

    /// Stops watching and waits for the thread. With `failed` (the capture failed or was interrupted),
    /// ends pg_basebackup's walsender if it is still there.
    func stop(failed: Bool) {
        lock.withLock {
            stopping = true
            endWalsender = endWalsender || failed
        }
        wake.signal()
        thread?.join()
    }

    static func standardError(_ line: String) {
        // Over a progress line a terminal shows: that line is cleared first, redrawn by the next chunk.
        let clear = isatty(2) == 1 ? "\r\u{1B}[K" : ""
        TextSink.standardError.write("\(clear)dbbackup: \(line)\n")
    }

    private static let sampleQuery = """
        SELECT b.pid::text, b.phase, s.failed_count::text, s.last_failed_wal,
               to_char(s.last_failed_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), s.last_archived_wal,
               (s.last_failed_time IS NOT NULL AND s.last_failed_time > coalesce(s.last_archived_time, '-infinity'))::text,
               EXISTS (SELECT FROM pg_catalog.pg_stat_activity WHERE backend_type = 'archiver' AND wait_event = 'ArchiveCommand')::text,
               EXISTS (SELECT FROM pg_catalog.pg_stat_activity WHERE backend_type = 'archiver')::text
          FROM pg_catalog.pg_stat_archiver s
          LEFT JOIN (SELECT p.pid, p.phase FROM pg_catalog.pg_stat_progress_basebackup p
                       JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid
                      WHERE a.application_name = $1) b ON true
        """

    private func watch(target: ConnectionTarget, applicationName: String, wait initial: ArchiveWait, write: @Sendable (String) -> Void) {
        // Without a session of its own there is nothing to watch with; pg_basebackup goes on unwatched, said once.
        let connection: PostgresConnection
        do {
            connection = try PostgresConnection(target: target, applicationName: "dbbackup")
        } catch {
            return write("warning: the base backup's wait for its WAL to be archived is not watched (a second session failed: \(RecoveryError.classify(error).message)): "
                         + "a failing archive_command will not be reported, nor the wait bounded by --archive-timeout")
        }
        defer { connection.close() }
        var wait = initial
        var errors = 0
        var givenUp = false
        while true {
            _ = wake.wait(timeout: .now() + 1)
            let (stop, end) = lock.withLock { (stopping, endWalsender) }
            // Given up, failed or interrupted: the walsender must not outlive the capture (tried again
            // each second until it is gone: pg_basebackup fails only once it is).
            if givenUp || end || Interruption.isRequested { terminateWalsender(on: connection, applicationName: applicationName) }
            if stop { return }
            if givenUp || Interruption.isRequested { continue }
            guard let sample = try? sample(on: connection, applicationName: applicationName) else {
                // A server that has no such view, or refuses it: give up watching after a few tries, saying so.
                errors += 1
                if errors >= 5 {
                    return write("warning: the base backup's wait for its WAL to be archived is not watched (pg_stat_progress_basebackup and pg_stat_archiver "
                                 + "cannot be read): a failing archive_command will not be reported, nor the wait bounded by --archive-timeout")
                }
                continue
            }
            errors = 0
            lock.withLock { if let pid = sample.walsender { walsender = pid } }
            for action in wait.observe(sample, at: Date()) {
                switch action {
                case .say(let line):
                    write(line)
                case .giveUp(let gaveUp):
                    lock.withLock { result = gaveUp }
                    givenUp = true
                    // pg_basebackup fails once its walsender is gone; the capture then stops us.
                    terminateWalsender(on: connection, applicationName: applicationName)
                }
            }
        }
    }

    private func sample(on connection: PostgresConnection, applicationName: String) throws -> ArchiveWait.Sample {
        let row = try connection.query(Self.sampleQuery, [applicationName]).rows[0]
        return ArchiveWait.Sample(walsender: row[0].flatMap { Int32($0) }, phase: row[1], failedCount: Int(row[2] ?? "") ?? 0,
                                  lastFailedWAL: row[3], lastFailedTime: row[4], lastArchivedWAL: row[5], failingNow: row[6] == "true",
                                  commandRunning: row[7] == "true", archiverVisible: row[8] == "true")
    }

    /// Ends our walsender, checking it is still ours (a pid is reused).
    private func terminateWalsender(on connection: PostgresConnection, applicationName: String) {
        guard let pid = lock.withLock({ walsender }) else { return }
        // Kept for another try when the statement failed (a signal's cancel may hit it) or was refused.
        guard let ended = try? connection.query("""
            SELECT pg_catalog.pg_terminate_backend(pid)::text FROM pg_catalog.pg_stat_activity WHERE pid = $1::int AND application_name = $2
            """, [String(pid), applicationName]), ended.scalar != "false" else { return }
        lock.withLock { walsender = nil }
    }
}
