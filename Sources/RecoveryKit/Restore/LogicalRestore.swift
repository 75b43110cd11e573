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
    public var dryRun: Bool
    /// Where to write the incident record (emergency); default `<repo>/incidents/<time>.json`.
    public var incidentFile: String?
    /// The repository cipher key, for encrypted backups.
    public var key: RepositoryKey? = nil
    /// Connections that load rows and build indexes at once.
    public var jobs: Int

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
public struct RestorePlan: Codable, Sendable {
    public struct Skipped: Codable, Sendable {
        public var id: String
        public var reason: String
    }

    public var mode: RestoreConfiguration.Mode
    /// The repository the backup is read from.
    public var repository: String
    public var backupID: String
    public var backupTakenAt: Date
    public var backupRelease: String?
    public var backupSchemaVersion: String?
    public var backupRows: Int64
    public var server: String
    public var targetDatabase: String
    public var targetExists: Bool
    public var scratchDatabase: String
    /// Where the current database will be kept (nil when it does not exist, or in a drill).
    public var keptAs: String?
    public var skipped: [Skipped]

    /// The plan as lines for a person.
    public var lines: [String] {
        var lines: [String] = []
        for skip in skipped { lines.append("skip backup \(skip.id): \(skip.reason)") }
        lines.append("backup:   \(backupID) taken \(Timestamp.format(backupTakenAt))"
                     + (backupRelease.map { ", release \($0)" } ?? "") + (backupSchemaVersion.map { ", schema version \($0)" } ?? "")
                     + ", \(backupRows) rows")
        lines.append("from:     \(repository)")
        lines.append("server:   \(server)")
        lines.append("1. create scratch database \(scratchDatabase) and replay the dump into it (one transaction, sha256 checked)")
        lines.append("2. check every table's row count in \(scratchDatabase) against the manifest")
        switch mode {
        case .drill:
            lines.append("3. drop \(scratchDatabase); \(targetDatabase) is not touched")
        default:
            if let keptAs {
                lines.append("3. end sessions on \(targetDatabase), rename it to \(keptAs) (kept, never dropped)")
                lines.append("4. rename \(scratchDatabase) to \(targetDatabase)")
            } else {
                lines.append("3. \(targetDatabase) does not exist: rename \(scratchDatabase) to \(targetDatabase)")
            }
        }
        return lines
    }
}

/// The outcome of a restore, drill or emergency restore; also the incident record.
public struct RestoreReport: Codable, Sendable {
    public var plan: RestorePlan
    public var startedAt: Date
    public var finishedAt: Date
    public var durationSeconds: Double
    public var verification: RowCountVerifier.Report?
    public var timeline: [Timeline.Step]
    public var incidentFile: String?
    public var outcome: String
}

/// Verified logical restore: into a scratch database, verified there, then swapped in.
public enum LogicalRestore {
    /// Works out the plan without changing anything.
    ///
    /// - Throws: `RecoveryError` (`.backupNotFound`, `.backupCorrupt`, `.databaseUnavailable`, …).
    public static func plan(_ configuration: RestoreConfiguration, timeline: Timeline? = nil) throws -> RestorePlan {
        let database = configuration.target.databaseName
        let (manifest, repository, skipped) = try chooseBackup(configuration, timeline: timeline)
        let admin = try connectToMaintenance(configuration.target)
        defer { admin.close() }
        let exists = try databaseExists(database, on: admin)
        try checkPrivileges(on: admin, target: database, targetExists: exists, mode: configuration.mode)
        let stamp = compactTimestamp(Date())
        let scratchPurpose = configuration.mode == .drill ? "drill" : "restore"
        return RestorePlan(
            mode: configuration.mode, repository: repository, backupID: manifest.id, backupTakenAt: manifest.startedAt,
            backupRelease: manifest.release, backupSchemaVersion: manifest.schemaVersion, backupRows: manifest.totalRows,
            server: configuration.target.redactedDescription, targetDatabase: database, targetExists: exists,
            scratchDatabase: identifier(database, suffix: "_\(scratchPurpose)_\(stamp)"),
            keptAs: exists && configuration.mode != .drill ? identifier(database, suffix: "_pre_restore_\(stamp)") : nil,
            skipped: skipped)
    }

    /// Carries out a plan made by `plan(_:)`.
    ///
    /// - Important: the current database is renamed aside, never dropped. Any failure before the
    ///   swap drops only the scratch database and leaves the target as it was.
    /// - Throws: `RecoveryError`; the report of a failed emergency restore is still written.
    public static func execute(_ plan: RestorePlan, _ configuration: RestoreConfiguration, timeline: Timeline,
                               progress: ProgressObserver? = nil) throws -> RestoreReport {
        let store = try Repository.open(plan.repository, create: false)
        var verification: RowCountVerifier.Report?
        func report(_ outcome: String) -> RestoreReport {
            let finished = Date()
            return RestoreReport(plan: plan, startedAt: timeline.startedAt, finishedAt: finished,
                                 durationSeconds: (finished.timeIntervalSince(timeline.startedAt) * 1000).rounded() / 1000,
                                 verification: verification, timeline: timeline.steps, incidentFile: nil, outcome: outcome)
        }
        do {
            let outcome = try runSteps(plan, configuration, store: store, timeline: timeline, progress: progress) { verification = $0 }
            var finished = report(outcome)
            if configuration.mode == .emergency {
                finished.incidentFile = try? writeIncident(finished, configuration: configuration, store: store)
            }
            return finished
        } catch {
            if configuration.mode == .emergency {
                _ = try? writeIncident(report("failed: \(RecoveryError.classify(error).message)"), configuration: configuration, store: store)
            }
            throw error
        }
    }

    private static func runSteps(_ plan: RestorePlan, _ configuration: RestoreConfiguration, store: BackupStore, timeline: Timeline,
                                 progress: ProgressObserver?, verified: (RowCountVerifier.Report) -> Void) throws -> String {
        // A reader lock before the manifest is read: dbprune leaves a backup alone while it is read.
        let reading = try StoreLock.sharedIfWritable(in: store, backupID: plan.backupID, holder: LockHolder(command: "dbrestore"))
        defer { try? reading?.release() }   // a leftover reader record only delays pruning; dbprune removes it once we are gone
        let manifest = try Catalog(store: store).resolve(plan.backupID)
        let admin = try connectToMaintenance(configuration.target)
        defer { admin.close() }
        if configuration.mode != .drill {
            try lockTarget(plan.targetDatabase, on: admin)
            try repairAfterCrash(plan.targetDatabase, on: admin, timeline: timeline)
        }

        let scratch = plan.scratchDatabase
        var scratchExists = false
        defer {
            // A scratch database left behind would be a trap: drop it unless it became the target.
            if scratchExists { _ = try? admin.execute(script: "DROP DATABASE IF EXISTS \(admin.quoteIdentifier(scratch)) WITH (FORCE)") }
            if scratchExists && Interruption.isRequested { CleanupLog.cleaned("dropped the scratch database \(scratch)") }
        }
        try timeline.step("create scratch database \(scratch)") {
            try admin.execute(script: "CREATE DATABASE \(admin.quoteIdentifier(scratch)) TEMPLATE template0")
            scratchExists = true
        }
        try timeline.step("replay backup \(manifest.id) into \(scratch) (\(ByteCount.format(manifest.storedBytes)))") {
            try DumpApplier.apply(manifest, from: store, into: configuration.target.with(database: scratch),
                                  jobs: configuration.jobs, key: configuration.key, progress: progress)
        }
        let counts = try timeline.step("verify row counts of \(manifest.tables.count) tables in \(scratch)") { () -> RowCountVerifier.Report in
            let connection = try PostgresConnection(target: configuration.target.with(database: scratch), applicationName: "dbrestore")
            defer { connection.close() }
            let result = try RowCountVerifier.verify(manifest, on: connection)
            guard result.ok else {
                throw RecoveryError(.restoreFailed, "restored data does not match backup \(manifest.id): \(result.summary)",
                                    hint: "the target database was not touched; try an older backup")
            }
            return result
        }
        verified(counts)
        if configuration.mode == .drill {
            try timeline.step("drop scratch database \(scratch)") {
                try admin.execute(script: "DROP DATABASE \(admin.quoteIdentifier(scratch)) WITH (FORCE)")
                scratchExists = false
            }
            return "drill passed"
        }
        try timeline.step(plan.keptAs.map { "swap: \(plan.targetDatabase) → \($0), \(scratch) → \(plan.targetDatabase)" }
                          ?? "rename \(scratch) → \(plan.targetDatabase)") {
            try swap(admin: admin, target: plan.targetDatabase, scratch: scratch, keepAs: plan.keptAs)
            scratchExists = false
        }
        return "restored"
    }

    // MARK: - Choosing the backup

    /// Picks the backup and the repository to read it from.
    ///
    /// One repository, normal mode: the named backup, checked while it streams. Otherwise every
    /// candidate (newest first; in normal mode only the named one) is checked in each repository
    /// that holds it, fastest first, until a copy verifies; the others are reported with the reason.
    private static func chooseBackup(_ configuration: RestoreConfiguration, timeline: Timeline?) throws -> (BackupManifest, String, [RestorePlan.Skipped]) {
        var stores: [(String, BackupStore)] = []
        var skipped: [RestorePlan.Skipped] = []
        var openError: Error?
        for address in configuration.repositories {
            do { stores.append((address, try Repository.open(address, create: false))) } catch {
                openError = openError ?? error
                skipped.append(.init(id: "-", reason: "repository \(address) unavailable: \(RecoveryError.classify(error).message)"))
            }
        }
        guard !stores.isEmpty else { throw openError ?? RecoveryError(.usage, "no repository given") }
        if configuration.mode == .normal && stores.count == 1 {
            let manifest = try Catalog(store: stores[0].1).resolve(configuration.backup)
            guard manifest.kind == .logical else {
                throw RecoveryError(.usage, "backup \(manifest.id) is a physical backup",
                                    hint: "restore it with dbrestore --pitr, or name a logical backup")
            }
            return (manifest, stores[0].0, [])
        }
        // Candidate ids, newest first, with the repositories that hold each.
        var holders: [String: [(String, BackupStore, Catalog.Entry)]] = [:]
        for (address, store) in stores {
            let catalog = Catalog(store: store)
            if configuration.mode == .normal {
                guard let manifest = try? catalog.resolve(configuration.backup) else { continue }
                holders[manifest.id, default: []].append((address, store, Catalog.Entry(id: manifest.id, manifest: manifest, problem: nil)))
            } else {
                for entry in try catalog.entries() { holders[entry.id, default: []].append((address, store, entry)) }
            }
        }
        guard !holders.isEmpty else {
            if configuration.mode == .normal { _ = try Catalog(store: stores[0].1).resolve(configuration.backup) }
            throw RecoveryError(.backupNotFound, "no backups in \(stores.map(\.0).joined(separator: ", "))",
                                hint: "there is nothing to restore from; check --repo (or BACKUP_REPO)")
        }
        for id in holders.keys.sorted(by: >) {
            for (address, store, entry) in holders[id] ?? [] {
                let label = stores.count > 1 ? "\(id) in \(address)" : id
                guard let manifest = entry.manifest else {
                    skipped.append(.init(id: label, reason: entry.problem ?? "manifest unreadable"))
                    continue
                }
                guard manifest.kind == .logical else { continue }
                if let release = configuration.release, manifest.release != release { continue }
                // Checksums only: fast, and a damaged file is caught again while streaming.
                let check = try FileVerifier.verify(manifest, in: store, depth: .checksum)
                if check.ok {
                    timeline?.note("chose backup \(manifest.id) from \(address) (files verify)")
                    return (manifest, address, skipped)
                }
                let reason = check.firstProblem ?? "files do not verify"
                skipped.append(.init(id: label, reason: reason))
                timeline?.note("skip backup \(label)", outcome: reason)
            }
        }
        let scope = configuration.release.map { " taken at release \($0)" } ?? ""
        throw RecoveryError(configuration.mode == .normal ? .backupCorrupt : .backupNotFound,
                            "no backup\(scope) in \(stores.map(\.0).joined(separator: ", ")) verifies (\(skipped.count) skipped: \(skipped.prefix(3).map { "\($0.id): \($0.reason)" }.joined(separator: "; ")))",
                            hint: configuration.release == nil ? "dbverify --files checks each backup; check another repository"
                                : "drop --release to consider every backup")
    }

    // MARK: - Server-side steps

    private static func connectToMaintenance(_ target: ConnectionTarget) throws -> PostgresConnection {
        let maintenance = target.databaseName == "postgres" ? "template1" : "postgres"
        return try PostgresConnection(target: target.with(database: maintenance), applicationName: "dbrestore")
    }

    private static func databaseExists(_ name: String, on connection: PostgresConnection) throws -> Bool {
        try connection.query("SELECT 1 FROM pg_database WHERE datname = $1", [name]).rows.count == 1
    }

    /// One restore per target database at a time: a session-level advisory lock on the target's name,
    /// released when the connection closes, however the process ends.
    ///
    /// - Throws: `RecoveryError(.restoreFailed)` naming the session that holds it.
    private static func lockTarget(_ database: String, on connection: PostgresConnection) throws {
        let key = "dbrestore:" + database
        guard try connection.query("SELECT pg_try_advisory_lock(hashtext($1))", [key]).scalar == "t" else {
            let holder = try connection.query("""
                SELECT a.pid, coalesce(nullif(a.application_name, ''), '?') FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE l.locktype = 'advisory' AND l.granted AND l.objid = (hashtext($1)::bigint & 4294967295)::oid LIMIT 1
                """, [key]).rows.first
            throw RecoveryError(.restoreFailed,
                                "another restore of \(database) is running (pid \(holder?[0] ?? "?"), application \(holder?[1] ?? "?")); nothing was changed",
                                hint: "wait for it to finish; two restores of one database would swap over each other")
        }
    }

    /// Undoes what a restore killed half-way left (we hold the target's lock, so none is running):
    /// a target closed to connections during its swap is reopened, and its scratch databases dropped.
    private static func repairAfterCrash(_ database: String, on connection: PostgresConnection, timeline: Timeline) throws {
        let closed = try connection.query("SELECT 1 FROM pg_database WHERE datname = $1 AND NOT datallowconn", [database]).rows.count == 1
        if closed {
            try connection.execute(script: "ALTER DATABASE \(connection.quoteIdentifier(database)) ALLOW_CONNECTIONS true")
            timeline.note("reopened \(database) to connections (left closed by a restore that was killed)")
        }
        let prefix = identifier(database, suffix: "_restore_")
        let leftovers = try connection.query("SELECT datname FROM pg_database WHERE starts_with(datname, $1)", [prefix]).rows.compactMap { $0[0] }
        for name in leftovers where name.dropFirst(prefix.count).allSatisfy({ $0.isNumber || $0 == "_" }) {
            try connection.execute(script: "DROP DATABASE IF EXISTS \(connection.quoteIdentifier(name)) WITH (FORCE)")
            timeline.note("dropped \(name), the scratch database of a restore that was killed")
        }
    }

    /// Refuses before anything changes when the role cannot create or rename the databases.
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
        if targetExists && mode != .drill && !superuser {
            let owner = try connection.query("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", [target]).scalar
            guard owner == user else {
                throw RecoveryError(.databaseError, "role \(user) does not own database \(target) (owner: \(owner ?? "?")), so it cannot rename it aside",
                                    hint: "connect as \(owner ?? "the owner") or a superuser")
            }
        }
    }

    /// Ends sessions on the target and swaps the databases in one transaction.
    private static func swap(admin: PostgresConnection, target: String, scratch: String, keepAs: String?) throws {
        let quotedTarget = admin.quoteIdentifier(target), quotedScratch = admin.quoteIdentifier(scratch)
        guard let keepAs else {
            try admin.execute(script: "ALTER DATABASE \(quotedScratch) RENAME TO \(quotedTarget)")
            return
        }
        let quotedAside = admin.quoteIdentifier(keepAs)
        // New connections are refused first, so that ending sessions is not a race we lose.
        try admin.execute(script: "ALTER DATABASE \(quotedTarget) ALLOW_CONNECTIONS false")
        CrashPoint.reached("restore:during-swap")
        var lastError: Error?
        for _ in 0..<20 {
            try admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", [target])
            do {
                try Interruption.check()   // interrupted: reopen the target below, keep it as it was
                try admin.execute(script: """
                    BEGIN;
                    ALTER DATABASE \(quotedTarget) RENAME TO \(quotedAside);
                    ALTER DATABASE \(quotedScratch) RENAME TO \(quotedTarget);
                    COMMIT;
                    """)
                lastError = nil
                break
            } catch let error as PostgresError where error.sqlState == "55006" {
                // "being accessed by other users": a session had not gone yet.
                _ = try? admin.execute(script: "ROLLBACK")
                lastError = error
                usleep(250_000)
            } catch {
                _ = try? admin.execute(script: "ROLLBACK")
                _ = try? admin.execute(script: "ALTER DATABASE \(quotedTarget) ALLOW_CONNECTIONS true")
                throw error
            }
        }
        if let lastError {
            _ = try? admin.execute(script: "ALTER DATABASE \(quotedTarget) ALLOW_CONNECTIONS true")
            throw RecoveryError(.restoreFailed, "sessions on \(target) did not end, so it could not be swapped: \(lastError)",
                                hint: "stop the application's connections and run again; \(target) is unchanged")
        }
        try admin.execute(script: "ALTER DATABASE \(quotedAside) ALLOW_CONNECTIONS true")
    }

    // MARK: - Names and records

    /// A database name with a suffix, shortened to PostgreSQL's 63-byte limit.
    static func identifier(_ base: String, suffix: String) -> String {
        var head = base
        while (head + suffix).utf8.count > 63 { head.removeLast() }
        return head + suffix
    }

    static func compactTimestamp(_ date: Date) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(secondsFromGMT: 0) ?? .current
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        return String(format: "%04d%02d%02d_%02d%02d%02d", c.year ?? 0, c.month ?? 0, c.day ?? 0, c.hour ?? 0, c.minute ?? 0, c.second ?? 0)
    }

    private static func writeIncident(_ report: RestoreReport, configuration: RestoreConfiguration, store: BackupStore) throws -> String {
        let data = try JSONOutput.encoder().encode(report)
        if let path = configuration.incidentFile {
            try data.write(to: URL(fileURLWithPath: path), options: .atomic)
            chmod(path, 0o600)
            return path
        }
        let key = "incidents/\(compactTimestamp(report.startedAt))-emergency-restore.json"
        try store.write(key, contents: data)
        return "\(store.location)/\(key)"
    }
}
