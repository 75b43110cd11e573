import BackupStorage
import Foundation
import Gzip
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
        case .time(let date): return "time \(Timestamp.format(date))"
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
    public var dataDirectory: String
    public var moveAsideTo: String?
    public var skipped: [Skipped]
    /// The major of the server the base backup came from: only its own programs can start the data directory.
    public var serverMajor: Int?
    /// That major's pg_ctl (with `postgres` beside it), when found.
    public var pgCtl: String?
    /// Why no pg_ctl of that major was found (only without `--start`, which refuses instead).
    public var pgCtlProblem: String?

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
        lines.append("base backup: \(backupID), finished \(Timestamp.format(backupFinishedAt))")
        lines.append("WAL:         \(firstSegment) … \(lastArchivedSegment) (\(segmentsAvailable) segments archived, no gaps)")
        lines.append("target:      \(target)")
        if let moveAsideTo { lines.append("move the existing \(dataDirectory) aside to \(moveAsideTo)") }
        lines.append("extract into \(dataDirectory), write restore_command and the recovery target, create recovery.signal")
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
        let store = try Repository.open(configuration.repository, create: false, environment: configuration.environment)
        let backups = try Catalog(store: store).manifests().filter { $0.kind == .physical && $0.physical != nil }
        guard !backups.isEmpty else {
            throw RecoveryError(.backupNotFound, "repository \(store.location) holds no physical base backup",
                                hint: "take one with dbbackup --physical (archive_mode on, archive_command = 'dbbackup wal-push %p --repo …')")
        }
        let archive = try store.list(prefix: "wal/")
        var skipped: [PITRPlan.Skipped] = []
        var lastProblem: RecoveryError?
        for backup in backups {
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
            do {
                let (last, count, lastArchivedAt) = try walRun(from: physical, archive: archive)
                if case .time(let time) = configuration.target, let lastArchivedAt, lastArchivedAt < time {
                    throw RecoveryError(.backupNotFound,
                                        "target time \(Timestamp.format(time)) is beyond the archived WAL: the last segment, \(last), was archived at \(Timestamp.format(lastArchivedAt))",
                                        hint: "choose an earlier target, or wait for archiving (SELECT pg_switch_wal() on the source forces it)")
                }
                var moveAsideTo: String?
                if try !isEmptyOrMissing(configuration.dataDirectory) {
                    guard configuration.moveAside else {
                        throw RecoveryError(.usage, "data directory \(configuration.dataDirectory) is not empty",
                                            hint: "give an empty or new directory, or --move-aside to rename the existing one out of the way")
                    }
                    moveAsideTo = configuration.dataDirectory + ".moved-" + Timestamp.compact(Date(), separator: "_", zone: "")
                }
                var plan = PITRPlan(backupID: backup.id, backupFinishedAt: backup.finishedAt, firstSegment: physical.firstWalSegment,
                                    lastArchivedSegment: last, segmentsAvailable: count, target: configuration.target.description,
                                    dataDirectory: configuration.dataDirectory, moveAsideTo: moveAsideTo, skipped: skipped)
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

    /// The contiguous run of archived segments from the backup's first one: its last segment, its
    /// length and when that last segment was archived.
    ///
    /// - Throws: `RecoveryError(.backupNotFound)` for a segment missing before the backup is
    ///   consistent, or a gap followed by later segments (replay would stop there silently).
    static func walRun(from physical: BackupManifest.Physical, archive: [StoredObject]) throws -> (String, Int, Date?) {
        let timeline = String(physical.firstWalSegment.prefix(8))
        var segments: [String: Date?] = [:]
        for object in archive {
            let name = String((object.key as NSString).lastPathComponent.dropLast(3))
            if WALSegmentName.isSegment(name) && name.hasPrefix(timeline) { segments[name] = object.modified }
        }
        var current = physical.firstWalSegment
        guard segments[current] != nil else {
            throw RecoveryError(.backupNotFound, "WAL segment \(current), where this base backup starts, is not archived",
                                hint: "check archive_command and pg_stat_archiver on the source")
        }
        var count = 1
        while let next = WALSegmentName.next(after: current), segments[next] != nil {
            current = next
            count += 1
        }
        if current < physical.lastWalSegment {
            throw RecoveryError(.backupNotFound, "WAL segment \(WALSegmentName.next(after: current) ?? "?") is missing: the base backup is not consistent without it")
        }
        if let later = segments.keys.filter({ $0 > current }).min() {
            throw RecoveryError(.backupNotFound,
                                "WAL segment \(WALSegmentName.next(after: current) ?? "?") is missing from the archive, but later ones (from \(later)) exist: replay would stop at the gap",
                                hint: "restore the missing segment into the archive, or choose a target before it with --target-lsn")
        }
        return (current, count, segments[current] ?? nil)
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
        let directory = configuration.dataDirectory
        if let aside = plan.moveAsideTo {
            try timeline.step("move \(directory) aside to \(aside)") {
                guard rename(directory, aside) == 0 else {
                    throw RecoveryError(.failure, "cannot rename \(directory) to \(aside): \(String(cString: strerror(errno)))")
                }
            }
        }
        try timeline.step("extract base backup \(manifest.id) into \(directory)") {
            do {
                try extract(manifest, from: store, into: directory, key: configuration.key, progress: progress)
            } catch {
                try? FileManager.default.removeItem(atPath: directory)
                throw error
            }
        }
        try timeline.step("configure recovery (\(configuration.target))") {
            try writeRecoverySettings(configuration, backupID: manifest.id)
        }
        var report = PITRReport(plan: plan, started: false, promoted: false, lastReplayedTransaction: nil, databases: [:], durationSeconds: 0)
        if configuration.start {
            try startAndFollow(configuration, pgCtl: plan.pgCtl, timeline: timeline, report: &report)
        }
        report.durationSeconds = Date().timeIntervalSince(timeline.startedAt)
        return report
    }

    private static func isEmptyOrMissing(_ path: String) throws -> Bool {
        guard FileManager.default.fileExists(atPath: path) else { return true }
        return (try? FileManager.default.contentsOfDirectory(atPath: path).isEmpty) ?? false
    }

    /// base.tar.gz → sha256 + gunzip → `tar -x`.
    private static func extract(_ manifest: BackupManifest, from store: BackupStore, into directory: String, key: RepositoryKey?,
                                progress: ProgressObserver?) throws {
        guard let file = manifest.files.first(where: { $0.name == PhysicalCapture.baseFileName }) else {
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id) has no \(PhysicalCapture.baseFileName)")
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        chmod(directory, 0o700)
        let tar = ["/usr/bin/tar", "/bin/tar"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/bin/tar"
        let child = try ChildProcess(executable: tar, arguments: ["-x", "-f", "-", "-C", directory], stdin: .pipe, stdout: .null, stderr: .pipe)
        let errors = OutputCollector(descriptor: child.standardError)
        do {
            try StoredFileStream.decompress(file, of: manifest, from: store, key: key, phase: "extract", progress: progress) { plain in
                try child.writeToStandardInput(plain)
            }
        } catch {
            child.send(SIGKILL)
            child.waitForExit()
            throw error
        }
        child.closeStandardInput()
        let termination = child.waitForExit()
        guard termination.succeeded else {
            throw RecoveryError(.toolFailed, "tar \(termination.description) extracting \(manifest.id): \(errors.lastLine() ?? "")")
        }
    }

    /// The `restore_command` line: the running executable's absolute path, every value shell-quoted
    /// (and `%` doubled, which PostgreSQL would otherwise expand), the key by file, never by value.
    static func restoreCommand(_ configuration: PITRConfiguration) -> String {
        func absolute(_ path: String) -> String {
            path.hasPrefix("/") || path.hasPrefix("s3://") || path.hasPrefix("file://") ? path : FileManager.default.currentDirectoryPath + "/" + path
        }
        func shell(_ text: String) -> String {
            "'" + text.replacingOccurrences(of: "'", with: "'\\''").replacingOccurrences(of: "%", with: "%%") + "'"
        }
        var words = [shell(configuration.dbrestorePath), "wal-fetch", "%f", "%p", "--repo", shell(absolute(configuration.repository))]
        if let keyFile = configuration.keyFile { words += ["--encryption-key-file", shell(absolute(keyFile))] }
        return words.joined(separator: " ")
    }

    /// Absolute path of the running executable (`/proc/self/exe`), whatever argv[0] and the
    /// current directory were; falls back to argv[0] resolved where there is no `/proc`.
    public static func runningExecutable() -> String {
        if let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"), path.hasPrefix("/") { return path }
        return URL(fileURLWithPath: CommandLine.arguments.first ?? "dbrestore").resolvingSymlinksInPath().path
    }

    private static func writeRecoverySettings(_ configuration: PITRConfiguration, backupID: String) throws {
        let directory = configuration.dataDirectory
        // postgresql.conf strings process backslash escapes and take '' for a quote.
        let quote = { (text: String) in "'" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "''") + "'" }
        var lines = ["", "# Added by dbrestore --pitr at \(Timestamp.format(Date())) from base backup \(backupID).",
                     "restore_command = \(quote(restoreCommand(configuration)))",
                     "recovery_target_action = 'promote'",
                     "recovery_target_timeline = 'latest'",
                     "# The restored cluster must not archive into the repository it was restored from.",
                     "archive_mode = 'off'"]
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
    private static func startAndFollow(_ configuration: PITRConfiguration, pgCtl: String?, timeline: Timeline, report: inout PITRReport) throws {
        guard let port = configuration.port else {
            throw RecoveryError(.usage, "--start needs --port", hint: "choose a port the original server does not use")
        }
        guard geteuid() != 0 else {
            throw RecoveryError(.usage, "PostgreSQL refuses to run as root", hint: "run dbrestore --pitr --start as the postgres user (sudo -u postgres …)")
        }
        let directory = configuration.dataDirectory
        // The plan found pg_ctl of the backup's major; a backup from before majors were known gets any.
        let pgCtl = try pgCtl ?? configuration.tools.path(of: "pg_ctl")
        let log = directory + "/dbrestore-recovery.log"
        try timeline.step("start PostgreSQL on port \(port) (pg_ctl, log in \(log))") {
            let child = try ChildProcess(executable: pgCtl, arguments: ["-D", directory, "-l", log, "-w", "-t", "600", "-o", "-p \(port) -k \(directory)", "start"],
                                         environment: configuration.environment, stdin: .null, stdout: .null, stderr: .pipe)
            let errors = OutputCollector(descriptor: child.standardError)
            let termination = child.waitForExit()
            guard termination.succeeded else {
                throw RecoveryError(.restoreFailed, "the restored server did not start: \(recoveryFailure(log: log) ?? errors.lastLine() ?? termination.description)",
                                    hint: "see \(log)")
            }
        }
        report.started = true
        let target = configuration.connection.with("host", directory).with("port", String(port))
        let deadline = Date().addingTimeInterval(configuration.startTimeoutSeconds)
        try timeline.step("replay WAL until promotion") {
            while true {
                if let connection = try? PostgresConnection(target: target.with(database: "postgres"), applicationName: "dbrestore", connectTimeoutSeconds: 5),
                   let inRecovery = try? connection.query("SELECT pg_is_in_recovery()").scalar, inRecovery == "f" {
                    report.promoted = true
                    let last = try connection.query("SELECT to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')").scalar
                    report.lastReplayedTransaction = last.flatMap(Timestamp.parse)
                    return
                }
                if let failure = recoveryFailure(log: log) {
                    throw RecoveryError(.restoreFailed, "recovery stopped: \(failure)", hint: "see \(log)")
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

    /// The FATAL line of a recovery that gave up, with the segment that was missing if we can tell.
    static func recoveryFailure(log: String) -> String? {
        guard let text = try? String(contentsOfFile: log, encoding: .utf8) else { return nil }
        let lines = text.split(separator: "\n").map(String.init)
        guard let fatal = lines.last(where: { $0.contains("FATAL:") || $0.contains("PANIC:") }) else { return nil }
        let restored = lines.compactMap { line -> String? in
            guard let range = line.range(of: "restored log file \"") else { return nil }
            return String(line[range.upperBound...].prefix(24))
        }.last
        let missing = restored.flatMap { WALSegmentName.next(after: $0) }.map { " (last segment replayed: \(restored ?? ""); \($0) was not in the archive)" } ?? ""
        let start = (fatal.range(of: "FATAL:") ?? fatal.range(of: "PANIC:"))?.lowerBound ?? fatal.startIndex
        return String(fatal[start...]) + missing
    }
}
