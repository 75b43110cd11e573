import BackupStorage
import Foundation
import PostgresClient
import ProcessSignals

/// What a restore should do, resolved from flags and environment.
public struct RestoreConfiguration {
    public enum Mode: String, Codable, Sendable {
        /// Restore the named backup, after confirmation.
        case normal
        /// No prompts; the newest backup that verifies; an incident record.
        case emergency
        /// Restore into a scratch database, verify, drop it; report the time taken.
        case drill
    }

    public var mode: Mode
    public var target: ConnectionTarget
    /// Repositories to restore from, fastest (local) first; the first with a verifying copy is used.
    public var repositories: [String]
    public var repository: String { repositories[0] }
    /// `latest`, an id or an id prefix (normal mode).
    public var backup: String
    /// Only backups taken at this release (emergency and drill).
    public var release: String?
    /// `--from-database`: choose among this database's backups instead of the target's (`latest`,
    /// emergency, drill). A backup named by its id needs none: it is restored whatever database it is of.
    public var fromDatabase: String?
    /// The database whose backups `latest`, emergency and drill choose among.
    public var sourceDatabase: String { fromDatabase ?? target.databaseName }
    public var dryRun: Bool
    /// Where pg_dump is found (schema verification runs `pg_dump --schema-only` on the scratch database).
    public var tools = PostgresTools()
    /// Where to write the incident record (emergency); default `<repo>/incidents/<time>.json`.
    public var incidentFile: String?
    /// The repository cipher key, for encrypted backups.
    public var key: RepositoryKey? = nil
    /// Connections that load rows and build indexes at once.
    public var jobs: Int
    /// How long the swap waits for the target's sessions to end before it gives up (target unchanged).
    public var swapTimeout: TimeInterval = 30
    /// What the storage layer reads S3 settings from (see `Repository.open`).
    public var environment = ProcessInfo.processInfo.environment

    public init(mode: Mode, target: ConnectionTarget, repositories: [String], backup: String = "latest", release: String? = nil,
                dryRun: Bool = false, jobs: Int = ProcessInfo.processInfo.activeProcessorCount, incidentFile: String? = nil) {
        self.mode = mode
        self.target = target
        self.repositories = repositories
        self.backup = backup
        self.release = release
        self.dryRun = dryRun
        self.jobs = max(1, jobs)
        self.incidentFile = incidentFile
    }
}

/// What a restore will do, shown before it does it (`--dry-run`, the prompt).
public struct RestorePlan: Encodable, Sendable {
    public struct Skipped: Codable, Sendable {
        public var id: String
        public var reason: String
    }

    public var mode: RestoreConfiguration.Mode
    /// The chosen backup as `dbrestore list --json` shows it, with the repository it is read from
    /// (and the database it was taken of, said in the plan when it is not the target): set by
    /// `choose(_:)`, built from the manifest by `BackupSummary(manifest:repository:)`.
    public var backup: BackupSummary
    /// The chosen backup's files as a restore reads them (compressed, encrypted): the dump, and its
    /// table of contents where the restore reads parts of the dump at once (`DumpApplier.filesRead`).
    public var backupStoredBytes: Int64 = 0
    public var server: String
    public var targetDatabase: String
    public var targetExists: Bool
    public var scratchDatabase: String
    /// Where the current database will be kept (nil when it does not exist, or in a drill).
    public var keptAs: String?
    public var skipped: [Skipped]
    /// The database properties the restored database gets, secret-looking setting values masked
    /// (nil: the backup did not record them).
    public var databaseProperties: DatabaseProperties?
    /// What this restore cannot restore, said before it starts.
    public var warnings: [String] = []
    /// `--dry-run`: what was checked of the backup's files.
    public var filesChecked: String?
    /// Pre-restore copies of the target kept by earlier restores, and their size.
    public var preRestoreCopies: Int = 0
    public var preRestoreBytes: Int64 = 0
    /// The major of the server the backup came from, and of the server it goes into.
    public var backupServerMajor: Int?
    public var targetServerMajor: Int?
    /// Set when they differ, e.g. `restoring a PostgreSQL 14 backup into 17`.
    public var versionNote: String?

    /// The plan as lines for a person.
    public var lines: [String] {
        var lines: [String] = []
        for skip in skipped { lines.append("skip backup \(skip.id): \(skip.reason)") }
        var facts = ["taken \(Timestamp.format(backup.startedAt))"]
        if let running = backup.runningReleases {
            facts.append(running.isEmpty ? "database at no recorded release" : "database at release \(running.joined(separator: " = "))")
        }
        if let release = backup.release { facts.append("labelled release \(release)") }
        if let version = backup.schemaVersion { facts.append("schema version \(version)") }
        facts.append("\(backup.totalRows) rows")
        lines.append("backup:   \(backup.id) " + facts.joined(separator: ", "))
        lines.append("from:     \(backup.repository)")
        if !backup.database.isSameDatabaseName(as: targetDatabase) {
            lines.append("note:     backup \(backup.id) is of database \(backup.database); it is restored into \(targetDatabase)")
        }
        if let filesChecked { lines.append("files:    \(filesChecked)") }
        lines.append("server:   \(server)")
        var steps = ["create scratch database \(scratchDatabase)" + (databaseProperties.map { " (encoding \($0.encoding), locale \($0.collate))" } ?? "")
                     + " and replay the dump into it (sha256 checked)",
                     "check every table's row count in \(scratchDatabase) against the manifest"]
        if let databaseProperties {
            steps.append("give \(scratchDatabase) the database properties of the backup:\n" + databaseProperties.lines.map { "     " + $0 }.joined(separator: "\n"))
        }
        switch mode {
        case .drill:
            steps.append("drop \(scratchDatabase); \(targetDatabase) is not touched")
        default:
            if let keptAs {
                steps.append("end sessions on \(targetDatabase), rename it to \(keptAs) (kept, never dropped)")
                steps.append("rename \(scratchDatabase) to \(targetDatabase)")
            } else {
                steps.append("\(targetDatabase) does not exist: rename \(scratchDatabase) to \(targetDatabase)")
            }
        }
        lines += steps.enumerated().map { "\($0.offset + 1). \($0.element)" }
        lines += warnings.map { "warning: \($0)" }
        if let versionNote { lines.append("note: \(versionNote)") }
        if let note = PreRestoreCopiesNote.text(database: targetDatabase, copies: preRestoreCopies, bytes: preRestoreBytes, keptAs: keptAs, done: false) {
            lines.append("note: \(note)")
        }
        return lines
    }
}

extension RestorePlan {
    /// The plan's JSON keys (`--dry-run --json`, a report's `plan`, the incident record): the chosen
    /// backup's fields stand flat beside the plan's own, under the names they had before the plan
    /// held a `BackupSummary`, which scripts read.
    private enum Key: String, CodingKey {
        case mode, repository, backupID, backupTakenAt, backupRelease, backupRunningReleases, backupSchemaVersion, backupRows, backupDatabase, backupStoredBytes
        case server, targetDatabase, targetExists, scratchDatabase, keptAs, skipped, databaseProperties, warnings, filesChecked
        case preRestoreCopies, preRestoreBytes, backupServerMajor, targetServerMajor, versionNote
    }

    public func encode(to encoder: Encoder) throws {
        var json = encoder.container(keyedBy: Key.self)
        try json.encode(mode, forKey: .mode)
        try json.encode(backup.repository, forKey: .repository)
        try json.encode(backup.id, forKey: .backupID)
        try json.encode(backup.startedAt, forKey: .backupTakenAt)
        try json.encodeIfPresent(backup.release, forKey: .backupRelease)
        try json.encodeIfPresent(backup.runningReleases, forKey: .backupRunningReleases)
        try json.encodeIfPresent(backup.schemaVersion, forKey: .backupSchemaVersion)
        try json.encode(backup.totalRows, forKey: .backupRows)
        try json.encode(backup.database, forKey: .backupDatabase)
        try json.encode(backupStoredBytes, forKey: .backupStoredBytes)
        try json.encode(server, forKey: .server)
        try json.encode(targetDatabase, forKey: .targetDatabase)
        try json.encode(targetExists, forKey: .targetExists)
        try json.encode(scratchDatabase, forKey: .scratchDatabase)
        try json.encodeIfPresent(keptAs, forKey: .keptAs)
        try json.encode(skipped, forKey: .skipped)
        try json.encodeIfPresent(databaseProperties, forKey: .databaseProperties)
        try json.encode(warnings, forKey: .warnings)
        try json.encodeIfPresent(filesChecked, forKey: .filesChecked)
        try json.encode(preRestoreCopies, forKey: .preRestoreCopies)
        try json.encode(preRestoreBytes, forKey: .preRestoreBytes)
        try json.encodeIfPresent(backupServerMajor, forKey: .backupServerMajor)
        try json.encodeIfPresent(targetServerMajor, forKey: .targetServerMajor)
        try json.encodeIfPresent(versionNote, forKey: .versionNote)
    }
}

/// The outcome of a restore, drill or emergency restore; also the incident record.
public struct RestoreReport: Encodable, Sendable {
    public var plan: RestorePlan
    public var startedAt: Date
    public var finishedAt: Date
    public var durationSeconds: Double
    public var verification: RowCountVerifier.Report?
    public var timeline: [Timeline.Step]
    public var incidentFile: String?
    public var outcome: String
    /// Bytes of backup files this run streamed from the repository, every candidate tried included
    /// (manifests and lock records not counted): the chosen backup's stored size when nothing failed.
    public var bytesRead: UInt64 = 0
}

/// Verified logical restore: into a scratch database, verified there, then swapped in.
///
/// The pieces: `CandidateSelection` picks the backup (and the next older one when a candidate fails
/// in `--emergency` or `--drill`), `DatabaseSwap` creates the scratch database as the source was,
/// gives it the source's properties and swaps it in, `ToolDatabases` marks what the tool made and
/// repairs what a killed run left.
public enum LogicalRestore {
    /// Works out the plan without changing anything. With `dryRun`, the chosen backup's files are
    /// read in full (sha256 and the whole gzip stream).
    ///
    /// - Throws: `RecoveryError` (`.backupNotFound`, `.backupCorrupt`, `.databaseUnavailable`, …).
    public static func plan(_ configuration: RestoreConfiguration, timeline: Timeline? = nil) throws -> RestorePlan {
        let database = configuration.target.databaseName
        // The server first: its major decides which candidates --emergency and --drill can use.
        let admin = try connectToMaintenance(configuration.target)
        defer { admin.close() }
        let serverMajor = PostgresMajor(serverVersionNumber: admin.serverVersionNumber)
        // And its identity: of a database's backups from several servers, its own are restored.
        let targetSystem = ServerScope.systemIdentifier(of: admin)
        let choice: CandidateSelection.Choice
        do {
            // A real restore reads nothing to choose: the one streaming pass checks the sha256.
            choice = try CandidateSelection.choose(configuration, depth: configuration.dryRun ? .full : .size, serverMajor: serverMajor, targetSystem: targetSystem, timeline: timeline)
        } catch {
            if configuration.mode == .emergency && !configuration.dryRun, let timeline { recordFailedSearch(error, configuration, timeline: timeline) }
            throw error
        }
        let exists = try databaseExists(database, on: admin)
        try checkPrivileges(on: admin, target: database, targetExists: exists, mode: configuration.mode)
        let stamp = Timestamp.compact(Date(), separator: "_", zone: "")
        let scratchPurpose = configuration.mode == .drill ? "drill" : "restore"
        var plan = RestorePlan(
            choice, mode: configuration.mode, server: configuration.target.redactedDescription, targetDatabase: database, targetExists: exists,
            scratchDatabase: try unusedIdentifier(database, suffix: "_\(scratchPurpose)_\(stamp)", on: admin),
            keptAs: exists && configuration.mode != .drill ? try unusedIdentifier(database, suffix: "_pre_restore_\(stamp)", on: admin) : nil)
        try plan.checkMajors(choice.manifest, into: serverMajor, tools: configuration.tools)
        if configuration.dryRun {
            plan.filesChecked = "\(choice.manifest.files.map(\.name).joined(separator: ", ")) verified: size, sha256 and the whole gzip stream"
        }
        let copies = try ToolDatabases.list(on: admin, target: database).filter { $0.marker.kind == .preRestore }
        plan.preRestoreCopies = copies.count
        plan.preRestoreBytes = copies.reduce(0) { $0 + $1.sizeBytes }
        return plan
    }

    /// Carries out a plan made by `plan(_:)`.
    ///
    /// In `--emergency` and `--drill`, a candidate that fails for any reason of its own (replay
    /// error, row counts that do not match, files that turn out damaged) is dropped with its scratch
    /// database, recorded in the plan's `skipped` with the reason, and the next older candidate is
    /// tried, until one restores and verifies or none is left. A failure of the server itself, or of
    /// the swap, stops the run.
    ///
    /// - Important: the current database is renamed aside, never dropped. Any failure before the
    ///   swap drops only the scratch database and leaves the target as it was.
    /// - Throws: `RecoveryError`; the report of a failed emergency restore is still written.
    public static func execute(_ plan: RestorePlan, _ configuration: RestoreConfiguration, timeline: Timeline,
                               progress: ProgressObserver? = nil) throws -> RestoreReport {
        var plan = plan
        var verification: RowCountVerifier.Report?
        // What this run streamed is what the stores it opens counted (a fallback opens another).
        var opened: [BackupStore] = []
        func open(_ address: String) throws -> BackupStore {
            let store = try Repository.open(address, create: false, environment: configuration.environment)
            opened.append(store)
            return store
        }
        func report(_ outcome: String) -> RestoreReport {
            let finished = Date()
            return RestoreReport(plan: plan, startedAt: timeline.startedAt, finishedAt: finished,
                                 durationSeconds: (finished.timeIntervalSince(timeline.startedAt) * 1000).rounded() / 1000,
                                 verification: verification, timeline: timeline.steps, incidentFile: nil, outcome: outcome,
                                 bytesRead: opened.reduce(0) { $0 + $1.reads.bytes })
        }
        var store = try open(plan.backup.repository)
        do {
            let admin = try connectToMaintenance(configuration.target)
            defer { admin.close() }
            let serverMajor = PostgresMajor(serverVersionNumber: admin.serverVersionNumber)
            let targetSystem = ServerScope.systemIdentifier(of: admin)
            if configuration.mode == .drill {
                // A drill never swaps and must not block an emergency restore of the same target: it
                // takes no target lock, and holds its drill database by name instead (`claimScratchName`).
                // It repairs what killed runs left only while no restore or clean-up of the target runs.
                if try lockTarget(plan.targetDatabase, on: admin, required: false) {
                    defer { unlockTarget(plan.targetDatabase, on: admin) }
                    try ToolDatabases.repair(plan.targetDatabase, on: admin, timeline: timeline)
                }
            } else {
                try lockTarget(plan.targetDatabase, on: admin)
                try ToolDatabases.repair(plan.targetDatabase, on: admin, timeline: timeline)
            }
            plan.scratchDatabase = try claimScratchName(plan.scratchDatabase, mode: configuration.mode, target: plan.targetDatabase, on: admin)
            plan.warnings.forEach { timeline.note("backup \(plan.backup.id)", outcome: "warning: \($0)") }
            if let note = plan.versionNote { timeline.note("backup \(plan.backup.id)", outcome: note) }
            var outcome: String
            var latestGone = 0
            var excluded: Set<String> = []
            var onlyDamagedFiles = true
            while true {
                var reachedSwap = false
                do {
                    outcome = try runSteps(plan, configuration, store: store, admin: admin, timeline: timeline, progress: progress,
                                           reachedSwap: &reachedSwap) { verification = $0 }
                    break
                } catch let gone as RecoveryError where gone.code == .backupNotFound && configuration.mode == .normal
                            && configuration.backup == "latest" && latestGone < 3 {
                    // `latest` was pruned between the plan and the reader lock (newer backups came in
                    // meanwhile): the newest one now is what was asked for. Nothing was created yet.
                    latestGone += 1
                    timeline.note("backup \(plan.backup.id)", outcome: "\(gone.message); taking the newest again")
                    let newest = try CandidateSelection.choose(configuration, depth: .size, serverMajor: serverMajor, targetSystem: targetSystem, timeline: timeline)
                    plan.choose(newest)
                    try plan.checkMajors(newest.manifest, into: serverMajor, tools: configuration.tools)
                    store = try open(plan.backup.repository)
                } catch {
                    // A damaged file (sha256, size or gzip stream, found while streaming) is this copy's
                    // fault: another repository's copy of the same backup may be whole, also for a normal restore.
                    let damagedCopy = RecoveryError.classify(error).code == .backupCorrupt
                    // The repository failing mid-read (after the S3 client's retries) is not the backup's
                    // fault: stop (exit 20) rather than restore an older backup because S3 hiccupped; but
                    // another repository's copy of this same backup may be read instead, as while choosing.
                    let trouble = !reachedSwap && !Interruption.isRequested && RecoveryError.isRepositoryTrouble(error)
                        ? RecoveryError.repositoryTrouble(error, repository: plan.backup.repository, backup: plan.backup.id,
                                                          untouched: "\(plan.targetDatabase) was not touched") : nil
                    if let trouble, configuration.repositories.count < 2 { throw trouble }
                    guard trouble != nil || configuration.mode != .normal || (damagedCopy && configuration.repositories.count > 1),
                          !reachedSwap, trouble != nil || isCandidateFailure(error, admin: admin) else { throw error }
                    let reason = RecoveryError.classify(error).message
                    let label = CandidateSelection.label(plan.backup.id, in: plan.backup.repository, of: configuration)
                    plan.skipped.append(.init(id: label, reason: reason))
                    timeline.note("skip backup \(label)", outcome: reason)
                    verification = nil
                    onlyDamagedFiles = onlyDamagedFiles && damagedCopy
                    // A replay or verification failure would repeat with any copy of the backup: skip them all.
                    excluded.insert(damagedCopy || trouble != nil ? label : plan.backup.id)
                    let next: CandidateSelection.Choice
                    do {
                        next = try CandidateSelection.choose(configuration, excluding: excluded, skipped: plan.skipped, depth: .size,
                                                             serverMajor: serverMajor, targetSystem: targetSystem, timeline: timeline)
                    } catch let none as RecoveryError where trouble == nil && (none.code == .backupNotFound || none.code == .backupCorrupt) {
                        // Only damaged files so far: no usable backup, as when damage is found before streaming.
                        if onlyDamagedFiles { throw none }
                        // A candidate was replayed and failed: the run failed as a restore.
                        throw RecoveryError(.restoreFailed, none.message, hint: "\(plan.targetDatabase) was not touched; " + (none.hint ?? ""))
                    } catch where trouble != nil {
                        throw trouble ?? error
                    }
                    // After repository trouble only the same backup will do, never an older one.
                    if let trouble, next.manifest.id != plan.backup.id { throw trouble }
                    plan.choose(next)
                    try plan.checkMajors(next.manifest, into: serverMajor, tools: configuration.tools)
                    if let note = plan.versionNote { timeline.note("backup \(plan.backup.id)", outcome: note) }
                    // A fresh name, in case the failed candidate's scratch database could not be dropped.
                    plan.scratchDatabase = try claimScratchName(
                        unusedIdentifier(plan.targetDatabase, suffix: "_\(configuration.mode == .drill ? "drill" : "restore")_\(Timestamp.compact(Date(), separator: "_", zone: ""))", on: admin),
                        mode: configuration.mode, target: plan.targetDatabase, on: admin)
                    plan.warnings.forEach { timeline.note("backup \(plan.backup.id)", outcome: "warning: \($0)") }
                    store = try open(plan.backup.repository)
                }
            }
            if configuration.mode != .drill {
                // What the operator now keeps around, this restore's copy included.
                let copies = try ToolDatabases.list(on: admin, target: plan.targetDatabase).filter { $0.marker.kind == .preRestore }
                plan.preRestoreCopies = copies.count
                plan.preRestoreBytes = copies.reduce(0) { $0 + $1.sizeBytes }
            }
            var finished = report(outcome)
            if configuration.mode == .emergency {
                finished.incidentFile = recordIncident(finished, configuration: configuration, store: store, timeline: timeline)
            }
            return finished
        } catch {
            if configuration.mode == .emergency {
                _ = recordIncident(report("failed: \(RecoveryError.classify(error).message)"), configuration: configuration, store: store, timeline: timeline)
            }
            throw error
        }
    }

    /// Writes the incident record; a failure to write it is said on the timeline (and so on stderr),
    /// never allowed to turn a restore that worked into a failed one.
    private static func recordIncident(_ report: RestoreReport, configuration: RestoreConfiguration, store: BackupStore,
                                       timeline: Timeline) -> String? {
        do {
            return try writeIncident(report, configuration: configuration, store: store)
        } catch {
            timeline.note("write the incident record", outcome: "failed: \(RecoveryError.classify(error).message)")
            return nil
        }
    }

    /// A failure that is the candidate's own, so an older backup may still restore: anything but an
    /// interruption, the repository's trouble (`RecoveryError.isRepositoryTrouble`) or the server's
    /// own trouble (a full disk, no memory, a crash, a lost connection):
    /// with those an older backup fails the same way, or, smaller, fits and restores older data
    /// where the newest backup was fine.
    private static func isCandidateFailure(_ error: Error, admin: PostgresConnection) -> Bool {
        // An interruption ends the run (whatever error the cancelled work surfaced as), never the candidate.
        if Interruption.isRequested || [.interrupted, .databaseUnavailable].contains(RecoveryError.classify(error).code) { return false }
        if RecoveryError.isServerTrouble(error) || RecoveryError.isRepositoryTrouble(error) { return false }
        // The probe's own error is not interesting: a server that cannot answer SELECT 1 stops the run.
        return (try? admin.query("SELECT 1").scalar) == "1"
    }

    private static func runSteps(_ plan: RestorePlan, _ configuration: RestoreConfiguration, store: BackupStore, admin: PostgresConnection,
                                 timeline: Timeline, progress: ProgressObserver?, reachedSwap: inout Bool,
                                 verified: (RowCountVerifier.Report) -> Void) throws -> String {
        // A reader lock before the manifest is read: dbprune leaves a backup alone while it is read.
        let reading = try StoreLock.sharedIfWritable(in: store, backupID: plan.backup.id, holder: LockHolder(command: "dbrestore"))
        defer { try? reading?.release() }   // a leftover reader record only delays pruning; dbprune removes it once we are gone
        // Only this backup's manifest is read again (the plan holds its full id): the choice already read them all.
        guard let manifest = try Catalog(store: store).manifestAsReader(plan.backup.id)?.unsealed(with: configuration.key) else {
            throw RecoveryError(.backupNotFound, "backup \(plan.backup.id) was removed (by dbprune?) before this restore could read it",
                                hint: "restore another backup; nothing was changed")
        }
        let scratch = plan.scratchDatabase
        var scratchExists = false
        defer {
            // A scratch database left behind would be a trap: drop it unless it became the target.
            if scratchExists {
                do {
                    try DatabaseSwap.dropOwn(scratch, on: admin)
                    if Interruption.isRequested { CleanupLog.cleaned("dropped the scratch database \(scratch)") }
                } catch {
                    timeline.note("drop scratch database \(scratch)", outcome: "failed: \(RecoveryError.classify(error).message); it is marked, the next dbrestore drops it")
                    // The last line after a signal names what is left, never "nothing needed removing".
                    CleanupLog.kept("the scratch database \(scratch) (could not be dropped: marked, the next dbrestore or dbrestore cleanup --yes drops it)")
                }
            }
        }
        let kind: ToolDatabases.Marker.Kind = configuration.mode == .drill ? .drill : .scratch
        try timeline.step("create scratch database \(scratch)") {
            try DatabaseSwap.createScratch(scratch, marker: .init(kind, target: plan.targetDatabase, backup: manifest.id),
                                           properties: manifest.databaseProperties, on: admin)
            scratchExists = true
        }
        let loaded = try timeline.step("replay backup \(manifest.id) into \(scratch) (\(ByteCount.format(manifest.storedBytes)))") {
            try DumpApplier.apply(manifest, from: store, into: configuration.target.with(database: scratch),
                                  jobs: configuration.jobs, maintenanceWorkMem: LoaderConnection.maintenanceWorkMem(in: configuration.environment),
                                  key: configuration.key, progress: progress)
        }
        let counts = try timeline.step("verify row counts of \(manifest.tables.count) tables in \(scratch)") { () -> RowCountVerifier.Report in
            let connection = try PostgresConnection(target: configuration.target.with(database: scratch), applicationName: "dbrestore")
            defer { connection.close() }
            // The COPY results stand for the counts where they are exact; the rest is counted.
            let (result, fromCopies) = try RowCountVerifier.verify(manifest, on: connection, loaded: loaded)
            timeline.note("row counts of \(scratch)", outcome: loaded.inexact.map { "all counted with count(*): \($0)" }
                          ?? "\(fromCopies) of \(result.tables.count) tables from the server's COPY results"
                             + (fromCopies < result.tables.count ? ", the rest counted with count(*)" : ""))
            guard result.ok else {
                // Row-level security hides rows from a role it applies to: the data may be whole and the count short.
                let hidden = RowCountVerifier.rowSecurityMayHideRows(on: connection)
                throw RecoveryError(.restoreFailed, "restored data does not match backup \(manifest.id): \(result.summary)",
                                    hint: hidden ? "row-level security hides rows from this role's count(*) (tables with ENABLE ROW LEVEL SECURITY): "
                                                   + "restore as a superuser or a role with BYPASSRLS; the target database was not touched"
                                                 : "the target database was not touched; try an older backup")
            }
            return result
        }
        verified(counts)
        // The properties go on once the rows are in (settings such as default_transaction_read_only or
        // statement_timeout must not reach the loading sessions) and before any check that reads the
        // database as a new session does — pg_dump renders strings by standard_conforming_strings.
        if let properties = manifest.databaseProperties {
            let warnings = try timeline.step("give \(scratch) the database properties of backup \(manifest.id)") {
                try DatabaseSwap.apply(properties, to: scratch, on: admin)
            }
            warnings.forEach { timeline.note("database properties of \(scratch)", outcome: "warning: \($0)") }
        }
        try SchemaVerifier.verifyRestore(manifest, scratch: configuration.target.with(database: scratch),
                                         server: PostgresMajor(serverVersionNumber: admin.serverVersionNumber), tools: configuration.tools, timeline: timeline)
        CrashPoint.reached("restore:after-verify")
        if configuration.mode == .drill {
            try timeline.step("drop scratch database \(scratch)") {
                try DatabaseSwap.dropOwn(scratch, on: admin)
                scratchExists = false
            }
            return "drill passed"
        }
        reachedSwap = true
        try timeline.step(plan.keptAs.map { "swap: \(plan.targetDatabase) → \($0), \(scratch) → \(plan.targetDatabase)" }
                          ?? "rename \(scratch) → \(plan.targetDatabase)") {
            try DatabaseSwap.swap(admin: admin, target: plan.targetDatabase, scratch: scratch, keepAs: plan.keptAs, backupID: manifest.id,
                                  allowConnections: manifest.databaseProperties?.allowConnections ?? true,
                                  timeout: configuration.swapTimeout, timeline: timeline)
            scratchExists = false
        }
        return "restored"
    }

    // MARK: - Server-side steps

    static func connectToMaintenance(_ target: ConnectionTarget) throws -> PostgresConnection {
        let maintenance = target.databaseName == "postgres" ? "template1" : "postgres"
        return try PostgresConnection(target: target.with(database: maintenance), applicationName: "dbrestore")
    }

    private static func databaseExists(_ name: String, on connection: PostgresConnection) throws -> Bool {
        try connection.query("SELECT 1 FROM pg_database WHERE datname = $1", [name]).rows.count == 1
    }

    /// One restore or clean-up per target database at a time: a session-level advisory lock on the
    /// target's name, released when the connection closes, however the process ends. Drills do not
    /// hold it while they run (they never swap): a monthly drill must not block the 3 a.m. restore.
    ///
    /// A holder busy with a statement may be the server session of a dbrestore that is gone (a second
    /// Ctrl-C exits at once while its `DROP DATABASE` runs on): the server ends that session, and the
    /// lock with it, once the statement is over. So while the holder is busy, the lock is waited for
    /// up to `leftoverWaitSeconds`; an idle holder is a live run (a session whose client is gone ends
    /// as soon as it is idle) and is reported at once.
    ///
    /// - Parameter required: false to only try (a drill's repair of leftovers): false is returned when it is held.
    /// - Returns: true once held.
    /// - Throws: `RecoveryError(.lockTimeout)` naming the session that holds it (when `required`).
    @discardableResult
    static func lockTarget(_ database: String, on connection: PostgresConnection, required: Bool = true) throws -> Bool {
        let key = "dbrestore:" + database
        func tryLock() throws -> Bool { try connection.query("SELECT pg_try_advisory_lock(hashtext($1))", [key]).scalar == "t" }
        func holder() throws -> [String?]? {
            try connection.query("""
                SELECT a.pid::text, coalesce(nullif(a.application_name, ''), '?'), a.state, coalesce(a.query, ''),
                       extract(epoch FROM now() - a.query_start)::int::text
                FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE l.locktype = 'advisory' AND l.granted AND l.objid = (hashtext($1)::bigint & 4294967295)::oid LIMIT 1
                """, [key]).rows.first.map { row in (0..<5).map { row[$0] } }
        }
        guard try !tryLock() else { return true }
        guard required else { return false }
        var session = try holder()
        let waitUntil = Date().addingTimeInterval(leftoverWaitSeconds)
        while session?[2] == "active" && Date() < waitUntil {
            try Interruption.pause(0.2)
            if try tryLock() { return true }
            session = try holder()
        }
        if session == nil, try tryLock() { return true }  // released between the try and the look
        let pid = session?[0] ?? "?", application = session?[1] ?? "?"
        if session?[2] == "active" {
            let statement = LockBlockers.statementHead(session?[3] ?? "")
            throw RecoveryError(.lockTimeout,
                                "restores of \(database) are held by server session pid \(pid) (application \(application), busy for \(session?[4] ?? "?") s"
                                + (statement.isEmpty ? "" : " with \(statement)")
                                + "): another restore or clean-up that is running, or the server session of one that was stopped, which ends with its statement; nothing was changed",
                                hint: "wait for it to finish; if no dbrestore of \(database) is running, run again once the statement is over (or end it: SELECT pg_terminate_backend(\(pid)))")
        }
        throw RecoveryError(.lockTimeout,
                            "another restore of \(database) is running (pid \(pid), application \(application)); nothing was changed",
                            hint: "wait for it to finish; two restores of one database would swap over each other")
    }

    /// How long `lockTarget` waits for a holder that is busy with a statement (see there).
    static let leftoverWaitSeconds: TimeInterval = 20

    /// Releases `lockTarget` early (a drill's repair); best effort: closing the connection releases it anyway.
    static func unlockTarget(_ database: String, on connection: PostgresConnection) {
        _ = try? connection.query("SELECT pg_advisory_unlock(hashtext($1))", ["dbrestore:" + database])
    }

    /// The scratch database name a run uses. A drill's is also held by the drill for as long as it
    /// runs (`ToolDatabases.claimDrillDatabase`), since it holds no target lock: a second drill picks
    /// another name, and a restore's or clean-up's repair leaves a running drill's database alone.
    static func claimScratchName(_ name: String, mode: RestoreConfiguration.Mode, target: String, on admin: PostgresConnection) throws -> String {
        guard mode == .drill else { return name }
        var candidate = name
        var counter = 2
        while try !ToolDatabases.claimDrillDatabase(candidate, on: admin) {
            candidate = identifier(name, suffix: "_\(counter)")
            counter += 1
        }
        return candidate
    }

    /// Refuses before anything changes when the role cannot create, mark or rename the databases.
    private static func checkPrivileges(on connection: PostgresConnection, target: String, targetExists: Bool,
                                        mode: RestoreConfiguration.Mode) throws {
        let role = try connection.query("""
            SELECT current_user, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user
            """).rows[0]
        let user = try role.string(0), superuser = try role.bool(1), createdb = try role.bool(2)
        guard superuser || createdb else {
            throw RecoveryError(.databaseError, "role \(user) may not create databases, which a verified restore needs",
                                hint: "connect as a superuser or grant it: ALTER ROLE \(user) CREATEDB")
        }
        try ToolDatabases.requireMarkPrivilege(on: connection)
        if targetExists && mode != .drill && !superuser {
            let owner = try connection.query("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", [target]).scalar
            guard owner == user else {
                throw RecoveryError(.databaseError, "role \(user) does not own database \(target) (owner: \(owner ?? "?")), so it cannot rename it aside",
                                    hint: "connect as \(owner ?? "the owner") or a superuser")
            }
        }
    }

    // MARK: - Names and records

    /// A database name with a suffix, shortened to PostgreSQL's 63-byte limit.
    static func identifier(_ base: String, suffix: String) -> String {
        var head = base
        while (head + suffix).utf8.count > 63 { head.removeLast() }
        return head + suffix
    }

    /// `identifier(base, suffix:)`, or with `_2`, `_3`, … added when a database of that name exists
    /// (two restores within one second, or a user database that happens to have the name).
    static func unusedIdentifier(_ base: String, suffix: String, on connection: PostgresConnection) throws -> String {
        var candidate = identifier(base, suffix: suffix)
        var counter = 2
        while try databaseExists(candidate, on: connection) {
            candidate = identifier(base, suffix: suffix + "_\(counter)")
            counter += 1
        }
        return candidate
    }

    private static func writeIncident<Record: Encodable>(_ record: Record, startedAt: Date, configuration: RestoreConfiguration,
                                                         store: BackupStore) throws -> String {
        let data = try JSONOutput.encoder().encode(record)
        if let path = configuration.incidentFile {
            try data.write(to: URL(fileURLWithPath: path), options: .atomic)
            chmod(path, 0o600)
            return path
        }
        let key = "incidents/\(Timestamp.compact(startedAt, separator: "_", zone: ""))-emergency-restore.json"
        try store.write(key, contents: data)
        return "\(store.location)/\(key)"
    }

    private static func writeIncident(_ report: RestoreReport, configuration: RestoreConfiguration, store: BackupStore) throws -> String {
        try writeIncident(report, startedAt: report.startedAt, configuration: configuration, store: store)
    }

    /// The incident record of an emergency restore that found no candidate to try: what failed and
    /// the timeline, which names every backup passed over and why.
    private struct FailedSearch: Encodable {
        var startedAt: Date
        var outcome: String
        var timeline: [Timeline.Step]
    }

    /// Writes the incident record of an emergency whose search found nothing, into the first
    /// repository that can be opened (or `--incident-file`); best effort: the search's error is the
    /// one the operator needs.
    ///
    /// A `--repo` that holds no backups and no WAL is not a repository (often a typo: the repository's
    /// own backups/ folder), and an `incidents/` made there would be a folder the tools later meet
    /// where they expect only their own: nothing is written there. The record of a search that found
    /// nothing holds no more than the error the run prints, so it is then only said where it is not
    /// (a file dropped in whatever directory cron runs in would be found by nobody); `--incident-file`
    /// still writes it.
    private static func recordFailedSearch(_ error: Error, _ configuration: RestoreConfiguration, timeline: Timeline) {
        let record = FailedSearch(startedAt: timeline.startedAt, outcome: "failed: \(RecoveryError.classify(error).message)", timeline: timeline.steps)
        var notRepositories: [String] = []
        for address in configuration.repositories {
            guard let store = try? Repository.open(address, create: false, environment: configuration.environment) else { continue }  // unavailable: try the next
            if configuration.incidentFile == nil, (try? MisplacedRepository.isEmptyOfBackups(store)) ?? true {
                notRepositories.append(store.location)
                continue
            }
            if let written = try? writeIncident(record, startedAt: record.startedAt, configuration: configuration, store: store) {
                timeline.note("incident record written to \(written)")
                return
            }
        }
        if !notRepositories.isEmpty {
            timeline.note("write the incident record", outcome: "not written: \(notRepositories.joined(separator: ", ")) holds no backups (not a repository), "
                          + "so no incidents/ folder was made there; give --incident-file to keep one")
            return
        }
        timeline.note("write the incident record", outcome: "failed: no repository or --incident-file could take it")
    }
}

extension RestorePlan {
    /// A plan to restore `choice` into `targetDatabase`; `choose(_:)` points it at another backup later.
    init(_ choice: CandidateSelection.Choice, mode: RestoreConfiguration.Mode, server: String, targetDatabase: String, targetExists: Bool,
         scratchDatabase: String, keptAs: String?) {
        self.mode = mode
        self.server = server
        self.targetDatabase = targetDatabase
        self.targetExists = targetExists
        self.scratchDatabase = scratchDatabase
        self.keptAs = keptAs
        (backup, backupStoredBytes, skipped, databaseProperties, warnings) = Self.backupSide(of: choice, mode: mode, into: targetDatabase)
    }

    /// Points the plan at a chosen backup (the next older after a candidate failed, or the newest
    /// again after `latest` was pruned); the target side stays.
    mutating func choose(_ choice: CandidateSelection.Choice) {
        (backup, backupStoredBytes, skipped, databaseProperties, warnings) = Self.backupSide(of: choice, mode: mode, into: targetDatabase)
    }

    /// What a plan takes from its chosen backup: the backup's summary, the bytes the restore reads,
    /// the candidates passed over, the database properties it restores and what it cannot restore.
    private static func backupSide(of choice: CandidateSelection.Choice, mode: RestoreConfiguration.Mode, into target: String)
        -> (summary: BackupSummary, storedBytes: Int64, skipped: [Skipped], properties: DatabaseProperties?, warnings: [String]) {
        let manifest = choice.manifest
        let warnings = manifest.databaseProperties != nil || mode == .drill ? [] : [
            "backup \(manifest.id) was taken by \(manifest.tool.name) \(manifest.tool.version), which did not record database properties: "
            + "the owner, privileges, comment, settings, connection limit, encoding and locale of \(target) cannot be restored "
            + "(the restored database gets the server's defaults; set them again by hand)"]
        return (BackupSummary(manifest: manifest, repository: choice.repository),
                Int64(DumpApplier.filesRead(of: manifest).reduce(0) { $0 + $1.storedBytes }),
                choice.skipped, manifest.databaseProperties?.maskedForDisplay, warnings)
    }

    /// Why a backup from a newer major is refused, or passed over by `--emergency` and `--drill`.
    static let majorRule = "a logical backup restores only into the same or a newer major"

    /// A logical backup restores into a server of the same or a newer major (pg_dump's output is
    /// meant to load into newer servers, not older ones): records both majors and says so when they
    /// differ; refuses an older target. Also finds the pg_dump that will fingerprint the restored
    /// schema, so that a missing one stops the restore before anything is created.
    ///
    /// - Throws: `RecoveryError(.restoreFailed)` for an older target; `RecoveryError(.toolFailed)`
    ///   when no pg_dump fits the target server.
    mutating func checkMajors(_ manifest: BackupManifest, into target: PostgresMajor, tools: PostgresTools) throws {
        backupServerMajor = manifest.serverMajor?.number
        targetServerMajor = target.number
        versionNote = nil
        if let source = manifest.serverMajor, source != target {
            guard source < target else {
                throw RecoveryError(.restoreFailed,
                                    "backup \(manifest.id) was taken from PostgreSQL \(source); the target server is PostgreSQL \(target), "
                                        + "and \(Self.majorRule)",
                                    hint: "restore it into a PostgreSQL \(source) or newer server; \(targetDatabase) was not touched")
            }
            versionNote = "restoring a PostgreSQL \(source) backup into \(target)"
        }
        if let expected = manifest.schemaFingerprint {
            _ = try SchemaVerifier.pgDump(for: target, expected: expected, tools: tools)
        }
    }
}
