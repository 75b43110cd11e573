import Foundation

/// One applied (or mid-flight) version: its `schema_version` row joined with dbmigrate's own record.
public struct AppliedMigration: Codable, Sendable, Equatable {
    public var version: Int64
    public var name: String
    /// The up file's sha256 when it was applied; nil for a version adopted without a file to read.
    public var upSHA256: String?
    public var downSHA256: String?
    public var appliedAt: Date
    public var release: String?
    /// `applied`, or `applying` / `reverting` when a step failed half-way outside a transaction.
    public var state: String
    /// Found in `schema_version` rather than applied by dbmigrate (or recorded by `baseline`).
    public var adopted: Bool

    public init(version: Int64, name: String, upSHA256: String?, downSHA256: String? = nil, appliedAt: Date,
                release: String? = nil, state: String = "applied", adopted: Bool = false) {
        self.version = version
        self.name = name
        self.upSHA256 = upSHA256
        self.downSHA256 = downSHA256
        self.appliedAt = appliedAt
        self.release = release
        self.state = state
        self.adopted = adopted
    }
}

/// A row of `schema_version_log`, the append-only history.
public struct MigrationLogEntry: Codable, Sendable, Equatable {
    public var id: Int64
    public var version: Int64?
    /// `up`, `down`, `failed`, `resolve-applied`, `resolve-reverted`, `release`, `adopt`, `baseline`.
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
    /// The version's down file checksum, recorded when it is applied.
    public var downSHA256: String?
}

/// `dbmigrate status`: one line per version known on disk or in the database.
public struct MigrationStatus: Codable, Sendable, Equatable {
    public var version: Int64
    public var name: String
    /// `applied`, `pending`, `applying`, `reverting`.
    public var state: String
    /// Applied before dbmigrate managed the database (found in `schema_version`, or `baseline`).
    public var adopted: Bool
    public var appliedAt: Date?
    public var release: String?
    /// `adopted`, and problems: `up file edited since applied`, `file missing`, `no down file`, `irreversible`.
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
            if row?.adopted == true { notes.append("adopted") }
            if let row, let file, drift(row, file) != nil { notes.append("up file edited since applied") }
            if let row, file == nil { notes.append(row.adopted ? "no file (applied before dbmigrate)" : "file missing") }
            if let file, file.down == nil { notes.append("no down file") }
            if let down = file?.down, down.irreversible { notes.append("irreversible") }
            let name = row.flatMap { $0.name.isEmpty ? nil : $0.name } ?? file?.name ?? "-"
            return MigrationStatus(version: version, name: name, state: row?.state ?? "pending", adopted: row?.adopted ?? false,
                                   appliedAt: row?.appliedAt, release: row?.release, notes: notes)
        }
    }

    /// The steps that bring the database up to `target` (default: the newest on disk).
    ///
    /// Pre-flight of the whole plan: nothing mid-flight, no applied file edited since, no gap, and
    /// every transactional step free of transaction control and of statements that cannot run in a
    /// transaction.
    /// - Parameters:
    ///   - singleTransaction: the plan runs in one transaction (no `--per-step`).
    ///   - serverVersion: `server_version_num`, for version-dependent rules; nil when unknown.
    /// - Throws: `RecoveryError(.migrationRefused)` listing every problem, before anything runs.
    public static func planUp(available: [Migration], applied: [AppliedMigration], to target: Int64? = nil,
                              singleTransaction: Bool = true, serverVersion: Int? = nil) throws -> [MigrationStep] {
        var problems = midFlightProblems(applied)
        let appliedVersions = Set(applied.map(\.version))
        let onDisk = Dictionary(uniqueKeysWithValues: available.map { ($0.version, $0) })
        for row in applied {
            if let file = onDisk[row.version], let drift = drift(row, file) { problems.append(drift) }
        }
        if let target, onDisk[target] == nil && !appliedVersions.contains(target) {
            problems.append("version \(target) is not in the migrations directory")
        }
        let highestApplied = applied.map(\.version).max() ?? Int64.min
        let pending = available.filter { !appliedVersions.contains($0.version) && $0.version <= (target ?? .max) }
        for migration in pending where migration.version < highestApplied {
            problems.append("version \(migration.version) (\(migration.name)) is older than the applied version \(highestApplied) but was never applied")
        }
        let steps = pending.map { step(for: $0, script: $0.up, direction: .up) }
        problems += transactionProblems(steps, singleTransaction: singleTransaction, serverVersion: serverVersion)
        if !problems.isEmpty { throw refusal(problems) }
        return steps
    }

    /// The steps that revert `versions`, in applied order, newest first.
    ///
    /// Pre-flight of the whole plan: every down file exists, is not empty, is not irreversible;
    /// the up file is unchanged since it was applied; nothing is mid-flight; and transactional steps
    /// hold no transaction control and nothing that cannot run in a transaction.
    ///
    /// - Throws: `RecoveryError(.migrationRefused)` listing every problem, before anything runs.
    public static func planDown(available: [Migration], applied: [AppliedMigration], reverting versions: Set<Int64>,
                                singleTransaction: Bool, serverVersion: Int? = nil) throws -> [MigrationStep] {
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
            if let drift = drift(row, file) { problems.append(drift) }
            guard let down = file.down else {
                problems.append("\(label): no down file (\(row.version)_\(file.name).down.sql)")
                continue
            }
            if down.irreversible {
                problems.append("\(label): marked -- dbmigrate:irreversible")
            } else if down.isEmpty {
                problems.append("\(label): down file is empty")
            } else {
                steps.append(step(for: file, script: down, direction: .down))
            }
        }
        problems += transactionProblems(steps, singleTransaction: singleTransaction, serverVersion: serverVersion)
        if !problems.isEmpty { throw refusal(problems) }
        return steps
    }

    /// How an applied file's edit explains itself: which file, applied when, old and new checksums,
    /// and the commands that accept or undo the edit; nil when the file is as applied, line endings
    /// and a byte-order mark aside (or the version was adopted without a checksum).
    public static func drift(_ row: AppliedMigration, _ file: Migration) -> String? {
        guard let recorded = row.upSHA256, recorded != file.up.sha256, recorded != file.up.bytesSHA256 else { return nil }
        let name = (file.up.path as NSString).lastPathComponent
        return "version \(row.version) (\(row.name.isEmpty ? file.name : row.name)): \(name) was edited after it was applied"
            + " (applied \(Timestamp.format(row.appliedAt)); sha256 then \(recorded), now \(file.up.sha256));"
            + " if the database already matches the edited file, accept it with: dbmigrate resolve \(row.version) --mark-applied;"
            + " otherwise undo the edit (git checkout -- \(file.up.path))"
    }

    /// Pre-flight of how each step may run: a transactional step holds no transaction control and
    /// nothing that cannot run in a transaction; a no-transaction step does not share the plan's
    /// one transaction with others.
    static func transactionProblems(_ steps: [MigrationStep], singleTransaction: Bool, serverVersion: Int?) -> [String] {
        var problems: [String] = []
        for step in steps {
            let label = "version \(step.version) (\(step.name))"
            let file = (step.path as NSString).lastPathComponent
            if step.noTransaction && singleTransaction && steps.count > 1 {
                problems.append("\(label): \(file) is marked -- dbmigrate:no-transaction and cannot share the plan's one transaction; run with --per-step")
            }
            for violation in TransactionControl.violations(in: step.sql, serverVersion: serverVersion)
            where !step.noTransaction || [.needsClientData, .psqlMetaCommand].contains(violation.kind) {
                let place = violation.line > 0 ? "\(file) line \(violation.line)" : "\(file) statement \(violation.statement)"
                switch violation.kind {
                case .needsClientData:
                    problems.append("\(place): `\(violation.what)` sends rows to the client, which dbmigrate does not show; remove it, or COPY to a file on the server")
                case .psqlMetaCommand:
                    problems.append("\(place): `\(violation.what)` is a psql meta-command, which only psql runs (the server would read a syntax error); dbmigrate sends SQL: remove it, or write it as SQL (e.g. SET …)")
                case .transactionControl:
                    problems.append("\(place): `\(violation.what)` would end or split dbmigrate's transaction; remove it (dbmigrate runs every step in a transaction of its own), or, if the file must manage its transactions, put -- dbmigrate:no-transaction on its first line")
                case .cannotRunInTransaction:
                    problems.append("\(place): `\(violation.what)` cannot run inside a transaction; move it to a file of its own whose first line is -- dbmigrate:no-transaction")
                }
            }
        }
        return problems
    }

    /// The versions applied right after the last migration run recorded for `release`.
    ///
    /// Replays the log: up and resolve-applied add a version, down and resolve-reverted remove it.
    /// - Throws: `RecoveryError(.migrationRefused)` when the release never ran dbmigrate.
    /// The releases the database's state is by `log`, newest first: every release recorded (`up
    /// --release`, or a release with nothing to migrate) whose versions are the ones applied now. Several
    /// when releases share a schema (one with nothing to migrate); after `down --to-release v1.2.3`,
    /// v1.2.3 among them; none after a hand-run `down --to 7` that no release had. A release whose
    /// deploy failed after its last step (`failed` logged after it: a `--per-step` run stopped
    /// midway) is not one the database ran with.
    public static func runningReleases(log: [MigrationLogEntry]) -> [String] {
        let ordered = log.sorted { $0.id < $1.id }
        let current = appliedVersions(after: ordered[...])
        var seen = Set<String>()
        var releases: [String] = []
        for (index, entry) in ordered.enumerated().reversed() where ["up", "release"].contains(entry.action) {
            guard let release = entry.release, seen.insert(release).inserted else { continue }
            let failedAfter = ordered[(index + 1)...].contains { $0.action == "failed" && $0.release == release }
            if !failedAfter, (try? versions(atRelease: release, log: log)) == current { releases.append(release) }
        }
        return releases
    }

    public static func versions(atRelease release: String, log: [MigrationLogEntry]) throws -> Set<Int64> {
        let ordered = log.sorted { $0.id < $1.id }
        guard let last = ordered.lastIndex(where: { $0.release == release && ["up", "release"].contains($0.action) }) else {
            throw RecoveryError(.migrationRefused, "no migration run is recorded for release \(release)",
                                hint: "dbmigrate status lists the releases that applied each version; use --to VERSION instead")
        }
        return appliedVersions(after: ordered[...last])
    }

    /// The versions applied after `entries` (in log order) ran.
    private static func appliedVersions(after entries: ArraySlice<MigrationLogEntry>) -> Set<Int64> {
        var versions = Set<Int64>()
        for entry in entries {
            guard let version = entry.version else { continue }
            switch entry.action {
            case "up", "resolve-applied", "adopt", "baseline": versions.insert(version)
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

    private static func step(for migration: Migration, script: Migration.Script, direction: MigrationStep.Direction) -> MigrationStep {
        return MigrationStep(version: migration.version, name: migration.name, direction: direction, path: script.path,
                             sql: script.sql, sha256: script.sha256, noTransaction: script.noTransaction,
                             downSHA256: migration.down?.sha256)
    }
}
