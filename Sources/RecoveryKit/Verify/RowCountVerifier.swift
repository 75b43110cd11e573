import PostgresClient

/// The row counts a restore has without counting: what the server reported for the dump's COPYs.
struct LoadedRows: Sendable {
    /// Rows by table oid, for the tables where the COPY results are what `count(*)` answers.
    var exact: [String: Int64]
    /// Why no COPY result can stand for a count (user code could have written rows), if so.
    var inexact: String?
}

/// Compares a live database's exact row counts with a backup's manifest.
public enum RowCountVerifier {
    public enum Status: String, Codable, Sendable {
        case ok, mismatch, missing, extra
    }

    /// One table's comparison.
    public struct TableResult: Codable, Sendable, Equatable {
        public var table: String
        public var expected: Int64?
        public var actual: Int64?
        public var status: Status
        /// actual − expected, when both are known.
        public var difference: Int64? {
            guard let expected, let actual else { return nil }
            return actual - expected
        }
    }

    /// The whole comparison.
    public struct Report: Codable, Sendable {
        public var backupID: String
        public var database: String
        public var tables: [TableResult]
        /// Why this backup was the one compared with, when it was not named (e.g. `restored from it at …`).
        public var basis: String? = nil
        /// The database the backup was taken of (`dbverify`: said when it is not `database`).
        public var backupDatabase: String? = nil
        public var ok: Bool { tables.allSatisfy { $0.status == .ok } }
        public var problems: [TableResult] { tables.filter { $0.status != .ok } }

        /// One line naming the first few differences, e.g. `public.users: expected 10, found 9`.
        public var summary: String {
            if ok { return "all \(tables.count) tables match the manifest" }
            let described = problems.prefix(3).map { result -> String in
                switch result.status {
                case .missing: return "\(result.table) is missing"
                case .extra: return "\(result.table) is not in the backup"
                default: return "\(result.table): expected \(result.expected ?? 0), found \(result.actual ?? 0)"
                }
            }
            let more = problems.count > 3 ? " and \(problems.count - 3) more" : ""
            return described.joined(separator: "; ") + more
        }
    }

    /// Counts rows on `connection` and compares them with `manifest`.
    ///
    /// - Throws: `PostgresError` if counting fails.
    public static func verify(_ manifest: BackupManifest, on connection: PostgresConnection) throws -> Report {
        try compare(manifest, live: try TableCounter.countRows(on: connection), on: connection)
    }

    /// The manifest's counts against the live ones, with the partitions a restore may reroute pooled
    /// per tree on both sides (`pooled`).
    private static func compare(_ manifest: BackupManifest, live: [BackupManifest.TableRowCount], on connection: PostgresConnection) throws -> Report {
        let rerouted = try TableCounter.rerouted(on: connection)
        return compare(expected: pooled(manifest.tables, rerouted), actual: pooled(live, rerouted), backupID: manifest.id,
                       database: connection.target.databaseName)
    }

    /// Which table a count is of: its (schema, name) pair — `"a.b"."c"` and `"a"."b.c"` are two tables
    /// though both read `a.b.c` joined with a dot — and whether it pools a partition tree (`pooled`).
    struct Key: Hashable, Comparable {
        var table: DumpTableOfContents.Name
        var pool = false

        init(_ count: BackupManifest.TableRowCount) { table = .init(schema: count.schema, name: count.name) }

        init(pooling root: DumpTableOfContents.Name) {
            table = root
            pool = true
        }

        /// As reports show it: `sales."order"` (quoted where SQL needs it, so two tables never read
        /// the same), `public.feelings (its partitions together)` for a pool.
        var shown: String { table.qualified + (pool ? " (its partitions together)" : "") }

        static func < (a: Key, b: Key) -> Bool { (a.table, a.pool ? 1 : 0) < (b.table, b.pool ? 1 : 0) }
    }

    /// The counts with the partitions a restore may reroute (`TableCounter.rerouted`) summed into
    /// one count per tree, named `root (its partitions together)`: their own counts may differ
    /// from the backup's while every row is there.
    static func pooled(_ counts: [BackupManifest.TableRowCount], _ rerouted: [DumpTableOfContents.Name: DumpTableOfContents.Name]) -> [Key: Int64] {
        var keyed: [Key: Int64] = [:]
        for count in counts {
            let key = rerouted[.init(schema: count.schema, name: count.name)].map(Key.init(pooling:)) ?? Key(count)
            if key.pool { keyed[key, default: 0] += count.rows } else if keyed[key] == nil { keyed[key] = count.rows }
        }
        return keyed
    }

    /// Counts rows on `connection` and compares them with `manifest`, taking the counts a restore
    /// already has from its COPY results (`loaded`) instead of scanning those tables again.
    ///
    /// - Returns: the comparison, and how many tables' counts came from the COPY results.
    /// - Throws: `PostgresError` if counting fails.
    static func verify(_ manifest: BackupManifest, on connection: PostgresConnection,
                       loaded: LoadedRows) throws -> (report: Report, fromCopies: Int) {
        guard !loaded.exact.isEmpty else { return (try verify(manifest, on: connection), 0) }
        // The tables TableCounter counts; `count(*)` only for those the COPY results do not cover.
        let tables = try TableCounter.tables(on: connection)
        let live = try TableCounter.totals(of: tables) { try loaded.exact[$0.oid] ?? TableCounter.count($0, on: connection) }
        return (try compare(manifest, live: live, on: connection), tables.filter { loaded.exact[$0.oid] != nil }.count)
    }

    /// Whether row-level security may hide rows from this connection's counts: a table with it
    /// enabled that applies to this role (not the owner, unless forced) and a role that is neither
    /// superuser nor BYPASSRLS. A failed probe says no.
    static func rowSecurityMayHideRows(on connection: PostgresConnection) -> Bool {
        let found = try? connection.query("""
            SELECT (EXISTS (SELECT FROM pg_catalog.pg_class c
                            WHERE c.relrowsecurity AND (c.relforcerowsecurity OR NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')))
                    AND NOT (SELECT r.rolsuper OR r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.rolname = current_user))::text
            """).scalar
        return found == "true"
    }

    /// The pure comparison (unit-tested without a server).
    public static func compare(expected: [BackupManifest.TableRowCount], actual: [BackupManifest.TableRowCount],
                               backupID: String, database: String) -> Report {
        compare(expected: pooled(expected, [:]), actual: pooled(actual, [:]), backupID: backupID, database: database)
    }

    /// The comparison by table (`Key`), each shown as `Key.shown`.
    static func compare(expected expectedByName: [Key: Int64], actual actualByName: [Key: Int64], backupID: String, database: String) -> Report {
        let names = Set(expectedByName.keys).union(actualByName.keys).sorted()
        let results = names.map { name -> TableResult in
            let want = expectedByName[name], have = actualByName[name]
            let status: Status
            switch (want, have) {
            case let (want?, have?): status = want == have ? .ok : .mismatch
            case (_?, nil): status = .missing
            default: status = .extra
            }
            return TableResult(table: name.shown, expected: want, actual: have, status: status)
        }
        return Report(backupID: backupID, database: database, tables: results)
    }
}
