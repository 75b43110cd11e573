import Foundation

/// The runbooks' `schema_version (version, applied_at)` table as dbmigrate finds it, and whether
/// dbmigrate can keep it: one row per applied version, the current one being
/// `SELECT version, applied_at FROM schema_version ORDER BY applied_at DESC LIMIT 1`.
///
/// dbmigrate never alters this table's columns or existing rows: it inserts `(version, applied_at)`
/// when a version is applied and deletes that version's rows when it is reverted. Everything else it
/// knows (name, checksums, who, how long, adopted) lives in its own `dbmigrate_versions` table.
public struct VersionTable: Sendable, Equatable {
    /// One column as the catalog describes it.
    public struct Column: Sendable, Equatable {
        public var name: String
        /// `format_type()` text, e.g. `bigint`, `timestamp with time zone`.
        public var type: String
        public var notNull: Bool
        /// Has a default, or is an identity or generated column (so an INSERT may leave it out).
        public var filledByServer: Bool
    }

    /// The table's qualified name, e.g. `public.schema_version`.
    public var qualifiedName: String
    /// `pg_class.relkind`: `r` table, `p` partitioned table, `v` view, …
    public var kind: String
    public var columns: [Column]

    /// The name the runbooks query.
    public static let name = "schema_version"

    /// True when the table still has the columns dbmigrate itself added before it kept its own table
    /// (`name`, `up_sha256`, `state`, …), whose values are then taken over as its records.
    public var hasEarlierDbmigrateColumns: Bool {
        let names = Set(columns.map(\.name))
        return ["name", "up_sha256", "down_sha256", "state", "release"].allSatisfy(names.contains)
    }

    /// The largest version the `version` column can hold.
    public var largestVersion: Int64 {
        switch columns.first(where: { $0.name == "version" })?.type {
        case "smallint": return Int64(Int16.max)
        case "integer": return Int64(Int32.max)
        default: return Int64.max
        }
    }

    /// The smallest step `applied_at` can tell apart, as interval text: `1 second` for `timestamp(0)`,
    /// `1 microsecond` for a column of full precision.
    public var appliedAtResolution: String {
        guard let type = columns.first(where: { $0.name == "applied_at" })?.type,
              let open = type.firstIndex(of: "("), let close = type[open...].firstIndex(of: ")"),
              let digits = Int(type[type.index(after: open)..<close]), (0...6).contains(digits) else { return "1 microsecond" }
        return "\((0..<(6 - digits)).reduce(1) { value, _ in value * 10 }) microseconds"
    }

    /// Why dbmigrate cannot use this table, with the one command that makes it usable; nil when usable.
    ///
    /// Usable: a table (not a view) with an integer `version`, a `timestamp`/`timestamptz`
    /// `applied_at`, and no other column an `INSERT (version, applied_at)` would leave NULL against a
    /// NOT NULL constraint.
    public func unusableReason() -> (problems: [String], fix: String)? {
        let described = "\(qualifiedName) (" + columns.map { "\($0.name) \($0.type)" }.joined(separator: ", ") + ")"
        guard kind == "r" || kind == "p" else {
            let what = ["v": "a view", "m": "a materialized view", "f": "a foreign table"][kind] ?? "not a table"
            let keyword = ["v": "VIEW", "m": "MATERIALIZED VIEW", "f": "FOREIGN TABLE"][kind] ?? "TABLE"
            return (["\(described) is \(what)"], "psql -c 'ALTER \(keyword) \(qualifiedName) RENAME TO schema_version_old'")
        }
        var problems: [String] = []
        var renames: [String] = []
        var alterations: [String] = []
        let integerTypes: Set = ["smallint", "integer", "bigint"]
        let byName = Dictionary(columns.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        if let version = byName["version"] {
            if !integerTypes.contains(version.type) {
                problems.append("column version is \(version.type), not an integer type")
                alterations.append("ALTER COLUMN version TYPE bigint USING version::bigint")
            }
        } else {
            problems.append("it has no column named version")
            let candidate = columns.first { integerTypes.contains($0.type) && $0.name != "applied_at" }
            renames.append("RENAME COLUMN \(candidate.map { Self.quoted($0.name) } ?? "<your version column>") TO version")
        }
        if let appliedAt = byName["applied_at"] {
            if !appliedAt.type.hasPrefix("timestamp") {
                problems.append("column applied_at is \(appliedAt.type), not a timestamp")
                alterations.append("ALTER COLUMN applied_at TYPE timestamptz USING applied_at::timestamptz")
            }
        } else if let candidate = columns.first(where: { $0.type.hasPrefix("timestamp") && $0.name != "version" }) {
            problems.append("it has no column named applied_at")
            renames.append("RENAME COLUMN \(Self.quoted(candidate.name)) TO applied_at")
        } else {
            problems.append("it has no column named applied_at")
            alterations.append("ADD COLUMN applied_at timestamptz NOT NULL DEFAULT now()")
        }
        for column in columns where column.notNull && !column.filledByServer && !["version", "applied_at"].contains(column.name)
            && !renames.contains(where: { $0.hasPrefix("RENAME COLUMN \(Self.quoted(column.name)) ") }) {
            problems.append("column \(column.name) is NOT NULL without a default, so dbmigrate cannot insert a row")
            alterations.append("ALTER COLUMN \(Self.quoted(column.name)) DROP NOT NULL")
        }
        guard !problems.isEmpty else { return nil }
        let statements = renames.map { "ALTER TABLE \(qualifiedName) \($0)" }
            + (alterations.isEmpty ? [] : ["ALTER TABLE \(qualifiedName) " + alterations.joined(separator: ", ")])
        return (problems.map { "\(described): \($0)" }, "psql -c '\(statements.joined(separator: "; ").replacingOccurrences(of: "'", with: "'\\''"))'")
    }

    /// The refusal for an unusable table; nil when usable.
    public func refusal() -> RecoveryError? {
        guard let (problems, fix) = unusableReason() else { return nil }
        let hint = kind == "r" || kind == "p"
            ? "nothing was changed; adopt it with: \(fix) — then dbmigrate status lists its rows as applied (adopted)"
            : "nothing was changed; move it aside with: \(fix) — then record the version the database is at: dbmigrate baseline --version N"
        return RecoveryError(.migrationRefused, "schema_version cannot be adopted: " + problems.joined(separator: "; "), hint: hint)
    }

    /// An identifier as SQL text, quoted only when it needs to be.
    static func quoted(_ name: String) -> String {
        let plain = name.first.map { $0 == "_" || ($0.isASCII && $0.isLowercase) } == true
            && name.allSatisfy { $0 == "_" || ($0.isASCII && ($0.isLowercase || $0.isNumber)) }
        return plain ? name : "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
