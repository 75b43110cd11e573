import BackupStorage
import Foundation
import PostgresClient

/// A plan shown before anything runs (`--dry-run`, the prompt).
public struct MigrationPlan: Codable, Sendable {
    public var direction: MigrationStep.Direction
    public var fromVersion: Int64?
    public var toVersion: Int64?
    public var steps: [MigrationStep]
    public var singleTransaction: Bool
    /// A backup will be taken first (downgrades, unless --no-backup).
    public var takesBackup: Bool
    /// A restore point will be created first (downgrades whose role and server allow it).
    public var createsRestorePoint: Bool
    public var warnings: [String]
    /// Versions the release had that are not applied now (down --to-release only).
    public var notes: [String]

    /// The plan as shown (`--json`): each step's SQL with its passwords masked.
    public var shown: MigrationPlan {
        var plan = self
        plan.steps = steps.map { step in
            var step = step
            step.sql = MigrationRunner.maskingPasswords(step.sql)
            return step
        }
        return plan
    }

    /// The plan for a person, with or without the full SQL (passwords masked).
    public func lines(includingSQL: Bool) -> [String] {
        var lines = ["\(direction == .up ? "upgrade" : "downgrade") from version \(fromVersion.map(String.init) ?? "none") to \(toVersion.map(String.init) ?? "none"): \(steps.count) step\(steps.count == 1 ? "" : "s"), \(singleTransaction ? "one transaction" : "one transaction per step")"]
        if direction == .down && !steps.isEmpty {
            switch (takesBackup, createsRestorePoint) {
            case (true, true): lines.append("first: a backup (tag pre-downgrade), then a restore point")
            case (true, false): lines.append("first: a backup (tag pre-downgrade); no restore point (see the warning)")
            case (false, true): lines.append("first: a restore point; no backup (--no-backup)")
            case (false, false): lines.append("no backup (--no-backup) and no restore point (see the warning)")
            }
        }
        for note in notes { lines.append("note: \(note)") }
        for warning in warnings { lines.append("WARNING: \(warning)") }
        for step in steps {
            lines.append("\(step.direction.rawValue) \(step.version) \(step.name)\(step.noTransaction ? " (no transaction)" : "")  [\((step.path as NSString).lastPathComponent)]")
            if includingSQL {
                lines.append(contentsOf: MigrationRunner.maskingPasswords(step.sql).split(separator: "\n", omittingEmptySubsequences: false).map { "    " + $0 })
            }
        }
        return lines
    }
}

/// Which applied versions a downgrade reverts.
public enum DowngradeSelection: Sendable {
    case toVersion(Int64)
    case steps(Int)
    case toRelease(String)
}

/// The entry points of `dbmigrate`.
public enum Migrations {
    /// `dbmigrate status`.
    public static func status(_ configuration: MigrationConfiguration) throws -> [MigrationStatus] {
        let available = try MigrationDirectory.load(configuration.directory)
        let runner = try MigrationRunner(configuration)
        return MigrationPlanner.status(available: available, applied: try runner.applied())
    }

    /// `dbmigrate verify`: applied versions whose files changed or disappeared.
    public static func verify(_ configuration: MigrationConfiguration) throws -> [MigrationStatus] {
        try status(configuration).filter { row in
            row.state == "applying" || row.state == "reverting"
                || (row.state != "pending" && row.notes.contains { $0 == "up file edited since applied" || $0 == "file missing" })
        }
    }

    /// `dbmigrate up`.
    ///
    /// - Parameters:
    ///   - confirm: shown the plan before anything runs; throw to cancel.
    /// - Returns: the plan and, unless `dryRun`, the report.
    public static func up(_ configuration: MigrationConfiguration, to target: Int64?, dryRun: Bool,
                          confirm: (MigrationPlan) throws -> Void) throws -> (MigrationPlan, MigrationReport?) {
        return try locked(configuration) { available, runner, applied, started in
            let steps = try MigrationPlanner.planUp(available: available, applied: applied, to: target,
                                                    singleTransaction: !configuration.perStep, serverVersion: runner.serverVersion)
            try runner.checkCapacity(for: steps.map(\.version))
            if !steps.isEmpty { try refuseUnlessRecordable(.up, runner) }
            let current = applied.map(\.version).max()
            let plan = MigrationPlan(direction: .up, fromVersion: current, toVersion: steps.last?.version ?? current, steps: steps,
                                     singleTransaction: !configuration.perStep, takesBackup: false, createsRestorePoint: false,
                                     warnings: try runner.versionTableWarnings(), notes: steps.isEmpty ? [] : try runner.bookkeepingNotes())
            if dryRun { return (plan, nil) }
            if steps.isEmpty {
                if let release = configuration.release { try runner.recordRelease(release, version: current, available: available) }
            } else {
                try confirm(plan)
                try runner.run(steps, backupID: nil, available: available)
            }
            return (plan, MigrationReport(direction: .up, fromVersion: current, toVersion: plan.toVersion, steps: steps.map(\.version),
                                          backupID: nil, restorePoint: nil, warnings: [], serverMessages: runner.serverMessages,
                                          durationSeconds: Date().timeIntervalSince(started)))
        }
    }

    /// `dbmigrate down`: pre-flight the whole plan, back up, set a restore point, then revert.
    ///
    /// - Important: nothing runs unless every step passes pre-flight; with one transaction (the
    ///   default) the database ends at the target or unchanged.
    /// - Parameters:
    ///   - backupRepository: where the pre-downgrade backup goes; nil means no backup (`--no-backup`).
    ///   - progress: told how far the pre-downgrade backup has got.
    ///   - confirm: shown the plan before anything runs; throw to cancel.
    /// - Throws: `RecoveryError(.migrationRefused)` before anything runs when a step fails pre-flight,
    ///   the backup could not be taken (missing privileges), or `requireRestorePoint` is set and no
    ///   restore point can be created.
    public static func down(_ configuration: MigrationConfiguration, selection: DowngradeSelection, backupRepository: String?,
                            tools: PostgresTools, key: RepositoryKey? = nil, dryRun: Bool, progress: ProgressObserver? = nil,
                            confirm: (MigrationPlan) throws -> Void) throws -> (MigrationPlan, MigrationReport?) {
        return try locked(configuration) { available, runner, applied, started in
            let appliedVersions = Set(applied.map(\.version))
            var notes: [String] = []
            let reverting: Set<Int64>
            switch selection {
            case .toVersion(let version):
                reverting = appliedVersions.filter { $0 > version }
            case .steps(let count):
                reverting = Set(applied.sorted { ($0.appliedAt, $0.version) > ($1.appliedAt, $1.version) }.prefix(count).map(\.version))
            case .toRelease(let release):
                let wanted = try MigrationPlanner.versions(atRelease: release, log: try runner.log())
                reverting = appliedVersions.subtracting(wanted)
                let missing = wanted.subtracting(appliedVersions).sorted()
                if !missing.isEmpty {
                    notes.append("release \(release) also had version(s) \(missing.map(String.init).joined(separator: ", ")), not applied now; run dbmigrate up --to afterwards if needed")
                }
            }
            let steps = try MigrationPlanner.planDown(available: available, applied: applied, reverting: reverting,
                                                      singleTransaction: !configuration.perStep, serverVersion: runner.serverVersion)
            let current = applied.map(\.version).max()
            let remaining = appliedVersions.subtracting(reverting).max()
            var warnings = try runner.versionTableWarnings() + runner.destructiveWarnings(steps)
            var restorePointProblem: String?
            if !steps.isEmpty {
                try refuseUnlessRecordable(.down, runner)
                if let backupRepository, let problem = try repositoryProblem(backupRepository) ?? runner.backupProblem() {
                    throw RecoveryError(.migrationRefused, "refused before running anything: \(problem)",
                                        hint: "nothing was changed; fix it as described (or pass --no-backup to go without a backup), then run again")
                }
                restorePointProblem = try runner.restorePointProblem()
                if let problem = restorePointProblem {
                    if configuration.requireRestorePoint {
                        throw RecoveryError(.migrationRefused, "refused before running anything (--require-restore-point): no restore point can be created: \(problem)",
                                            hint: "nothing was changed; fix it as described, or drop --require-restore-point to revert without one")
                    }
                    warnings.append("no restore point will be created: \(problem); the downgrade would go ahead without one (--require-restore-point refuses instead)")
                }
            }
            let plan = MigrationPlan(direction: .down, fromVersion: current, toVersion: remaining, steps: steps,
                                     singleTransaction: !configuration.perStep, takesBackup: backupRepository != nil && !steps.isEmpty,
                                     createsRestorePoint: !steps.isEmpty && restorePointProblem == nil,
                                     warnings: warnings, notes: notes + (steps.isEmpty ? [] : try runner.bookkeepingNotes()))
            // The pre-downgrade backup follows the repository's encryption like any other (checked in
            // the dry run too): no plaintext into an encrypted repository, no key into a plaintext one.
            if let backupRepository, plan.takesBackup {
                try RepositoryEncryption.checkWrite(to: try Repository.open(backupRepository, create: true, environment: configuration.environment), key: key, allowMixed: false,
                                                    database: configuration.target.databaseName)
            }
            if dryRun || steps.isEmpty { return (plan, nil) }
            try confirm(plan)
            var backupID: String?
            if let backupRepository {
                var capture = CaptureConfiguration(target: configuration.target, repositories: [backupRepository],
                                                   tags: ["pre-downgrade"], release: configuration.release, tools: tools)
                capture.key = key
                capture.environment = configuration.environment
                capture.repositoryLockWaitSeconds = configuration.repositoryLockWaitSeconds
                let result = try LogicalCapture.run(LogicalCaptureConfiguration(capture), progress: progress)
                backupID = result.manifest.id
            }
            let point = runner.createRestorePoint("dbmigrate-down-\(current.map(String.init) ?? "0")-to-\(remaining.map(String.init) ?? "0")-\(Int(Date().timeIntervalSince1970))")
            if let warning = point.warning, configuration.requireRestorePoint {
                throw RecoveryError(.migrationRefused, "nothing was reverted (--require-restore-point): \(warning)",
                                    hint: backupID.map { "backup \($0) was taken and stays; fix the restore point, then run again" } ?? "fix the restore point, then run again")
            }
            try runner.run(steps, backupID: backupID, available: available)
            return (plan, MigrationReport(direction: .down, fromVersion: current, toVersion: remaining, steps: steps.map(\.version),
                                          backupID: backupID, restorePoint: point.name,
                                          warnings: plan.warnings + [point.warning].compactMap { $0 }, serverMessages: runner.serverMessages,
                                          durationSeconds: Date().timeIntervalSince(started)))
        }
    }

    /// Refuses, in the dry run as in the real run, a plan whose steps the role could run but not record.
    private static func refuseUnlessRecordable(_ direction: MigrationStep.Direction, _ runner: MigrationRunner) throws {
        let problems = try runner.bookkeepingProblems(direction)
        guard !problems.isEmpty else { return }
        throw RecoveryError(.migrationRefused, "refused before running anything: dbmigrate could not record the \(direction == .up ? "upgrade" : "downgrade"): " + problems.joined(separator: "; "),
                            hint: "nothing was changed; grant as described (or connect as the role that owns the schema), then run again")
    }

    /// Why a backup into a local repository could not be written (the nearest existing folder on
    /// the way is a file, or not writable); nil when it can, and for S3, which only a write can tell.
    private static func repositoryProblem(_ address: String) -> String? {
        // A malformed address was refused with its own message when the command read --repo.
        guard case .local(let path)? = try? RepositoryLocation(parsing: address) else { return nil }
        var existing = (path as NSString).standardizingPath
        var isDirectory: ObjCBool = false
        while !FileManager.default.fileExists(atPath: existing, isDirectory: &isDirectory) && existing != "/" {
            existing = (existing as NSString).deletingLastPathComponent
        }
        if !isDirectory.boolValue {
            return "the pre-downgrade backup would fail: \(existing) is a file, so repository \(path) cannot be created; pass another --repo (or --no-backup)"
        }
        if access(existing, W_OK | X_OK) != 0 {
            return "the pre-downgrade backup would fail: \(existing) is not writable (\(String(cString: strerror(errno)))); pass a writable --repo (or --no-backup)"
        }
        return nil
    }

    /// Reads the migration files (before connecting, so a bad directory changes nothing), then runs
    /// `body` under the migration lock with what is applied now.
    private static func locked<T>(_ configuration: MigrationConfiguration,
                                  _ body: ([Migration], MigrationRunner, [AppliedMigration], Date) throws -> T) throws -> T {
        let available = try MigrationDirectory.load(configuration.directory)
        let runner = try MigrationRunner(configuration)
        return try runner.withLock { try body(available, runner, try runner.applied(), Date()) }
    }

    /// `dbmigrate resolve V --mark-applied|--mark-reverted`.
    /// - Returns: warnings to show (invalid indexes left that the version's up.sql creates).
    @discardableResult
    public static func resolve(_ configuration: MigrationConfiguration, version: Int64, applied: Bool) throws -> [String] {
        try locked(configuration) { available, runner, _, _ in
            try runner.resolve(version, applied: applied, available: available)
        }
    }

    /// `dbmigrate baseline --version N`: for a database whose `schema_version` is missing or empty,
    /// records every version on disk up to N (and N itself) as applied without running it.
    ///
    /// - Returns: the versions recorded.
    /// - Throws: `RecoveryError(.migrationRefused)` when `schema_version` already holds versions.
    public static func baseline(_ configuration: MigrationConfiguration, version: Int64) throws -> [Int64] {
        try locked(configuration) { available, runner, _, _ in
            let versions = Array(Set(available.map(\.version).filter { $0 <= version } + [version])).sorted()
            try runner.checkCapacity(for: versions)
            try runner.baseline(versions, available: available)
            return versions
        }
    }
}
