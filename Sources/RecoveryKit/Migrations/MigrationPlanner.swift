import Foundation

/// A row of `schema_version`: one applied (or mid-flight) migration.
public struct AppliedMigration: Codable, Sendable, Equatable {
    public var version: Int64
    public var name: String
    public var upSHA256: String
    public var downSHA256: String?
    public var appliedAt: Date
    public var release: String?
    /// `applied`, or `applying` / `reverting` when a non-transactional step failed half-way.
    public var state: String

    public init(version: Int64, name: String, upSHA256: String, downSHA256: String? = nil, appliedAt: Date,
                release: String? = nil, state: String = "applied") {
        self.version = version
        self.name = name
        self.upSHA256 = upSHA256
        self.downSHA256 = downSHA256
        self.appliedAt = appliedAt
        self.release = release
        self.state = state
    }
}

/// A row of `schema_version_log`, the append-only history.
public struct MigrationLogEntry: Codable, Sendable, Equatable {
    public var id: Int64
    public var version: Int64?
    /// `up`, `down`, `failed`, `resolve-applied`, `resolve-reverted`, `release`.
    public var action: String
    public var release: String?

    public init(id: Int64, version: Int64?, action: String, release: String?) {
        self.id = id
        self.version = version
        self.action = action
        self.release = release
    }
}

/// One step of a plan.
public struct MigrationStep: Codable, Sendable, Equatable {
    public enum Direction: String, Codable, Sendable { case up, down }
    public var version: Int64
    public var name: String
    public var direction: Direction
    public var path: String
    public var sql: String
    public var sha256: String
    public var noTransaction: Bool
}

/// `dbmigrate status`: one line per version known on disk or in the database.
public struct MigrationStatus: Codable, Sendable, Equatable {
    public var version: Int64
    public var name: String
    /// `applied`, `pending`, `applying`, `reverting`.
    public var state: String
    public var appliedAt: Date?
    public var release: String?
    /// Problems: `up file edited since applied`, `file missing`, `no down file`, `irreversible`.
    public var notes: [String]
}

/// Pure planning of migrations: no server, no files, unit-tested.
public enum MigrationPlanner {
    /// Status of every version on disk or applied.
    public static func status(available: [Migration], applied: [AppliedMigration]) -> [MigrationStatus] {
        let onDisk = Dictionary(uniqueKeysWithValues: available.map { ($0.version, $0) })
        let inDatabase = Dictionary(uniqueKeysWithValues: applied.map { ($0.version, $0) })
        return Set(onDisk.keys).union(inDatabase.keys).sorted().map { version in
            let file = onDisk[version], row = inDatabase[version]
            var notes: [String] = []
            if let row, let file, row.upSHA256 != file.up.sha256 { notes.append("up file edited since applied") }
            if row != nil && file == nil { notes.append("file missing") }
            if let file, file.down == nil { notes.append("no down file") }
            if let down = file?.down, down.irreversible { notes.append("irreversible") }
            return MigrationStatus(version: version, name: row?.name ?? file?.name ?? "?", state: row?.state ?? "pending",
                                   appliedAt: row?.appliedAt, release: row?.release, notes: notes)
        }
    }

    /// The steps that bring the database up to `target` (default: the newest on disk).
    ///
    /// - Throws: `RecoveryError(.migrationRefused)` listing every problem, before anything runs.
    public static func planUp(available: [Migration], applied: [AppliedMigration], to target: Int64? = nil) throws -> [MigrationStep] {
        var problems = midFlightProblems(applied)
        let appliedVersions = Set(applied.map(\.version))
        let onDisk = Dictionary(uniqueKeysWithValues: available.map { ($0.version, $0) })
        for row in applied {
            if let file = onDisk[row.version], file.up.sha256 != row.upSHA256 {
                problems.append("version \(row.version) (\(row.name)): \((file.up.path as NSString).lastPathComponent) was edited after it was applied")
            }
        }
        if let target, onDisk[target] == nil && !appliedVersions.contains(target) {
            problems.append("version \(target) is not in the migrations directory")
        }
        let highestApplied = applied.map(\.version).max() ?? Int64.min
        let pending = available.filter { !appliedVersions.contains($0.version) && $0.version <= (target ?? .max) }
        for migration in pending where migration.version < highestApplied {
            problems.append("version \(migration.version) (\(migration.name)) is older than the applied version \(highestApplied) but was never applied")
        }
        if !problems.isEmpty { throw refusal(problems) }
        return pending.map { step(for: $0, direction: .up) }
    }

    /// The steps that revert `versions`, in applied order, newest first.
    ///
    /// Pre-flight of the whole plan: every down file exists, is not empty, is not irreversible;
    /// the up file is unchanged since it was applied; nothing is mid-flight; and in one
    /// transaction no step may need to run outside a transaction.
    ///
    /// - Throws: `RecoveryError(.migrationRefused)` listing every problem, before anything runs.
    public static func planDown(available: [Migration], applied: [AppliedMigration], reverting versions: Set<Int64>,
                                singleTransaction: Bool) throws -> [MigrationStep] {
        var problems = midFlightProblems(applied)
        let onDisk = Dictionary(uniqueKeysWithValues: available.map { ($0.version, $0) })
        let rows = applied.filter { versions.contains($0.version) }
            .sorted { ($0.appliedAt, $0.version) > ($1.appliedAt, $1.version) }
        var steps: [MigrationStep] = []
        for row in rows {
            let label = "version \(row.version) (\(row.name))"
            guard let file = onDisk[row.version] else {
                problems.append("\(label): its migration files are missing")
                continue
            }
            if file.up.sha256 != row.upSHA256 {
                problems.append("\(label): \((file.up.path as NSString).lastPathComponent) was edited after it was applied")
            }
            guard let down = file.down else {
                problems.append("\(label): no down file (\(row.version)_\(file.name).down.sql)")
                continue
            }
            if down.irreversible {
                problems.append("\(label): marked -- dbmigrate:irreversible")
            } else if down.isEmpty {
                problems.append("\(label): down file is empty")
            } else if singleTransaction && down.noTransaction {
                problems.append("\(label): down file is marked no-transaction; run with --per-step")
            }
            steps.append(step(for: file, direction: .down))
        }
        if !problems.isEmpty { throw refusal(problems) }
        return steps
    }

    /// The versions applied right after the last migration run recorded for `release`.
    ///
    /// Replays the log: up and resolve-applied add a version, down and resolve-reverted remove it.
    /// - Throws: `RecoveryError(.migrationRefused)` when the release never ran dbmigrate.
    public static func versions(atRelease release: String, log: [MigrationLogEntry]) throws -> Set<Int64> {
        let ordered = log.sorted { $0.id < $1.id }
        guard let last = ordered.lastIndex(where: { $0.release == release && ["up", "release"].contains($0.action) }) else {
            throw RecoveryError(.migrationRefused, "no migration run is recorded for release \(release)",
                                hint: "dbmigrate status lists the releases that applied each version; use --to VERSION instead")
        }
        var versions = Set<Int64>()
        for entry in ordered[...last] {
            guard let version = entry.version else { continue }
            switch entry.action {
            case "up", "resolve-applied": versions.insert(version)
            case "down", "resolve-reverted": versions.remove(version)
            default: break
            }
        }
        return versions
    }

    private static func midFlightProblems(_ applied: [AppliedMigration]) -> [String] {
        applied.filter { $0.state != "applied" }.map {
            "version \($0.version) (\($0.name)) is mid-flight (\($0.state)): a non-transactional step failed; check the schema, then run dbmigrate resolve \($0.version) --mark-applied or --mark-reverted"
        }
    }

    private static func refusal(_ problems: [String]) -> RecoveryError {
        RecoveryError(.migrationRefused, "refused before running anything: " + problems.joined(separator: "; "),
                      hint: "nothing was changed; fix the files or the database as described, then run again")
    }

    private static func step(for migration: Migration, direction: MigrationStep.Direction) -> MigrationStep {
        let script = direction == .up ? migration.up : migration.down!
        return MigrationStep(version: migration.version, name: migration.name, direction: direction, path: script.path,
                             sql: script.sql, sha256: script.sha256, noTransaction: script.noTransaction)
    }
}
