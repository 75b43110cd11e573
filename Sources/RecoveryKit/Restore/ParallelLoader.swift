import Foundation
import PostgresClient
import Synchronization

/// The connections of one restore and what runs on each (see `DumpApplier` for the plan).
final class ParallelLoader {
    private let target: ConnectionTarget
    let jobs: Int
    private let backupID: String
    private let maintenanceWorkMem: String
    let main: LoaderConnection
    private var workers: [CopyWorker] = []
    private var dataStarted = false
    /// Tables (as pg_dump names them in COPY, in the dump's encoding) that must load in dump order, alone.
    private var serialTables: Set<[UInt8]> = []
    /// The COPY being read: its statement, its number in the dump, and the worker it is pinned to if serial.
    private var copy: (statement: DumpScanner.Statement, number: Int, serial: Bool, worker: CopyWorker?)?
    private var copies = 0
    /// The table each COPY of the dump named, as written (by its number in the dump).
    private var copyTargets: [Int: [UInt8]] = [:]
    /// The rows the server reported for each COPY.
    private let tally = CopyRowTally()
    /// Why the COPY results cannot stand for the restored tables' row counts, once something showed it.
    private var countsInexact: String?
    /// The run of rows being gathered, at most `runSize`: it ends at a row's end, except when one
    /// row is longer than a run (then the run is a piece of it).
    private var rows: [UInt8] = []
    private let spares = BufferPool(keepsAtMost: ParallelLoader.runSize)
    /// The worker the last run went to, while that run ended inside a row: the rest of the row must
    /// follow it into the same COPY, in order.
    private var rowWorker: CopyWorker?
    /// Statements after the rows, run once the rows are committed.
    private var postData: [DumpScanner.Statement] = []
    /// Inside the large objects' data (pg_dump's `BEGIN; lo_open … lowrite … lo_close … COMMIT;`, after
    /// the tables' rows): run at once on the main connection, as `setval` is, rather than held with the
    /// post-data: they depend on no table's rows, and held back they would all be in memory at once.
    private var inLargeObjects = false
    /// A `BEGIN` read after the rows, until the next statement tells what it opens.
    private var heldBegin: DumpScanner.Statement?
    /// Whether the server refused a connection beyond those open (until the workers' are closed).
    private var connectionsRefused = false
    private static let runSize = 1 << 20

    init(target: ConnectionTarget, jobs: Int, backupID: String, maintenanceWorkMem: String) throws {
        self.target = target
        self.jobs = jobs
        self.backupID = backupID
        self.maintenanceWorkMem = maintenanceWorkMem
        main = try LoaderConnection(target: target, backupID: backupID, maintenanceWorkMem: maintenanceWorkMem)
    }

    func handle(_ event: DumpScanner.Event) throws {
        switch event {
        case .statement(let statement):
            // A BEGIN after the rows waits for the statement after it: with `lo_open` it opens the large
            // objects' data, which runs at once; with anything else both wait with the post-data.
            if dataStarted && !inLargeObjects && Self.keyword(of: statement) == "BEGIN" && heldBegin == nil {
                heldBegin = statement
                return
            }
            if let begin = heldBegin {
                heldBegin = nil
                if statement.sql.starts(with: "SELECT pg_catalog.lo_open(".utf8) {
                    inLargeObjects = true
                    try runAlone(begin, on: main)
                } else {
                    postData.append(begin)
                }
            }
            if !dataStarted || inLargeObjects || statement.sql.starts(with: "SELECT pg_catalog.setval(".utf8) {
                try runAlone(statement, on: main)
                if inLargeObjects && Self.keyword(of: statement) == "COMMIT" { inLargeObjects = false }
            } else {
                if statement.sql.starts(with: "REFRESH MATERIALIZED VIEW ".utf8) {
                    countsInexact = countsInexact ?? "a materialized view is refreshed after the rows are loaded (its query may call functions that write)"
                }
                postData.append(statement)
            }
        case .copyStart(let statement):
            if let begin = heldBegin { postData.append(begin); heldBegin = nil }  // where it went before
            try beginData(statement.settings)
            copies += 1
            copyTargets[copies] = Self.copyTarget(statement.sql)
            let serial = serialTables.contains(Self.copyTarget(statement.sql))
            if serial { try flushWorkers() }
            copy = (statement, copies, serial, nil)
        case .copyRows(let bytes):
            try take(bytes)
        case .copyEnd:
            try dispatchRows()
            if copy?.serial == true { try flushWorkers() }
            copy = nil
        }
    }

    /// Where the rows start (the first COPY, or the first table's rows in the table of contents):
    /// from here on statements other than `setval` wait for the rows, and the catalogue tells which
    /// tables must load alone and whether user code could write rows as they load.
    ///
    /// - Parameter settings: the session settings in force there.
    func beginData(_ settings: SessionSettings) throws {
        guard !dataStarted else { return }
        dataStarted = true
        // In the dump's client encoding, so that table names come back as COPY spells them.
        try main.use(settings)
        serialTables = try tablesThatMustLoadAlone()
        countsInexact = try userCodeBeforeRows()
    }

    /// Whether tables may load in any order, each on its own connection (`TableLanes`): no table
    /// must load alone, and no user code exists yet that could see the order or write rows.
    var rowsMayLoadInLanes: Bool { serialTables.isEmpty && countsInexact == nil }

    /// A COPY of the dump that another connection ran (`TableLanes`) and the rows the server reported.
    func recordCopy(of target: [UInt8], rows: Int64) {
        copies += 1
        copyTargets[copies] = target
        tally.add(rows, to: copies)
    }

    /// Says why the COPY results cannot stand for the row counts (the first reason is kept).
    func markInexact(_ reason: String) { countsInexact = countsInexact ?? reason }

    /// Tables (as `tablesThatMustLoadAlone` names them) that a connection may empty and load with
    /// `COPY … FREEZE` in one transaction: ordinary, still empty (nothing but the dump's rows can be
    /// lost), not an extension's (its script may have filled it), without triggers (TRUNCATE fires
    /// them) or foreign keys pointing at them (TRUNCATE refuses), and this role may truncate them.
    func tablesToFreeze() throws -> Set<[UInt8]> {
        let sql = """
            SELECT pg_catalog.encode(pg_catalog.convert_to(
                       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname),
                       pg_catalog.pg_client_encoding()), 'hex')
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND pg_catalog.pg_relation_size(c.oid) = 0
              AND pg_catalog.has_table_privilege(c.oid, 'TRUNCATE')
              AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                              AND d.objid = c.oid AND d.deptype = 'e')
              AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
              AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint f WHERE f.contype = 'f' AND f.confrelid = c.oid)
            """
        do {
            return Set(try main.connection.query(sql).rows.map { try Self.bytes(hex: try $0.string(0)) })
        } catch {
            throw DumpApplier.failure(error, in: "finding the tables to load with COPY FREEZE", backupID: backupID)
        }
    }

    /// SQL: whether the database defines functions of its own (not an extension's). Any of them may
    /// read or write other tables, even one declared IMMUTABLE.
    private static let ownFunctionsExist = """
        EXISTS (SELECT FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND p.prokind <> 'p'
                  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                                  WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND d.deptype = 'e'))
        """

    /// The index and key builds that open the post-data (read so far), by table in dump order, with
    /// their places in it: what `TableLanes` may run as soon as the table's rows are in. None once
    /// a COPY was read here (its table's rows may still be loading), nor when the database defines
    /// functions of its own (an index expression calling one may read tables still loading).
    func leadingBuilds() throws -> [(table: String, statements: [(index: Int, statement: DumpScanner.Statement)])] {
        guard copies == 0 else { return [] }
        do {
            guard try main.connection.query("SELECT (\(Self.ownFunctionsExist))::text").scalar == "false" else { return [] }
        } catch {
            throw DumpApplier.failure(error, in: "finding functions of the database's own", backupID: backupID)
        }
        var groups: [(table: String, statements: [(index: Int, statement: DumpScanner.Statement)])] = []
        var groupOfTable: [String: Int] = [:]
        for (index, statement) in postData.enumerated() {
            guard let table = Self.parallelKey(statement.text) else { break }
            if let group = groupOfTable[table] { groups[group].statements.append((index, statement)) } else {
                groupOfTable[table] = groups.count
                groups.append((table, [(index, statement)]))
            }
        }
        return groups
    }

    /// Leaves out of the post-data the statements another connection has run (by their places).
    func skipPostData(_ done: Set<Int>) {
        postData = postData.enumerated().filter { !done.contains($0.offset) }.map(\.element)
    }

    /// Commits the last rows (the stream has been read and verified), runs the post-data, and
    /// says how many rows each table got from the dump's COPYs, where that is its exact count.
    @discardableResult
    func finish() throws -> LoadedRows {
        if let begin = heldBegin { postData.append(begin); heldBegin = nil }
        for worker in workers { try worker.finish() }
        for worker in workers { worker.connection.close() }
        workers.removeAll()
        // The workers' connections are free again for the post-data.
        connectionsRefused = false
        var index = 0
        while index < postData.count {
            var batch: [(key: String, statement: DumpScanner.Statement)] = []
            while index < postData.count, let key = Self.parallelKey(postData[index].text) {
                batch.append((key, postData[index]))
                index += 1
            }
            if batch.count > 1 {
                try runConcurrently(batch)
            } else if let single = batch.first {
                try runAlone(single.statement, on: main)
            } else {
                try runAlone(postData[index], on: main)
                index += 1
            }
        }
        return try loadedRows()
    }

    /// Stops everything without committing (open COPYs roll back as connections close).
    func abandon() {
        for worker in workers { worker.cancel() }
        workers.removeAll()
        main.close()
    }

    // MARK: - Connections

    /// Another connection for parallel work, or nil once the server refuses one (`max_connections`,
    /// reserved slots, a role's or the database's connection limit): the restore goes on over the
    /// connections it has, as with a smaller `--jobs`, since parallelism must never change the outcome.
    ///
    /// - Parameter required: the connection is the only one rows can go to: a refusal is thrown.
    func extraConnection(required: Bool) throws -> LoaderConnection? {
        guard !connectionsRefused || required else { return nil }
        do {
            return try LoaderConnection(target: target, backupID: backupID, maintenanceWorkMem: maintenanceWorkMem)
        } catch let error as PostgresError where error.kind == .connection && !required {
            connectionsRefused = true
            return nil
        }
    }

    // MARK: - Rows

    /// Gathers rows (or pieces of a long row, `DumpScanner`) into runs of at most `runSize`, each
    /// cut at the last row's end that fits; only a row longer than a run is cut inside. So however
    /// long a value, no more than a run of it is held here.
    private func take(_ bytes: UnsafeRawBufferPointer) throws {
        // The scanner hands rows over only inside a COPY; without one no run could be dispatched.
        guard copy != nil else {
            throw RecoveryError(.backupCorrupt, "backup \(backupID): COPY rows outside a COPY block", hint: "restore another backup")
        }
        var rest = bytes
        while rest.count > Self.runSize - rows.count {
            let room = Self.runSize - rows.count
            if let newline = UnsafeRawBufferPointer(rebasing: rest[0..<room]).lastIndex(of: UInt8(ascii: "\n")) {
                rows.append(contentsOf: UnsafeRawBufferPointer(rebasing: rest[0...newline]))
                rest = UnsafeRawBufferPointer(rebasing: rest[(newline + 1)...])
            } else if rows.last != UInt8(ascii: "\n") {
                // Inside a row longer than a run: this run is a piece of it.
                rows.append(contentsOf: UnsafeRawBufferPointer(rebasing: rest[0..<room]))
                rest = UnsafeRawBufferPointer(rebasing: rest[room...])
            }
            // Else the run holds whole rows and the next row does not fit: it starts the next run.
            try dispatchRows()
        }
        rows.append(contentsOf: rest)
        if rows.count >= Self.runSize { try dispatchRows() }
    }

    private func dispatchRows() throws {
        guard !rows.isEmpty, let current = copy else { return }
        let worker: CopyWorker
        if let pinned = current.worker ?? rowWorker {
            worker = pinned
        } else {
            if workers.count < jobs, workers.allSatisfy({ $0.queuedBytes > 0 }),
               let connection = try extraConnection(required: workers.isEmpty) {
                workers.append(CopyWorker(connection: connection, spares: spares, tally: tally))
            }
            guard let idlest = workers.min(by: { $0.queuedBytes < $1.queuedBytes }) else { return }
            worker = idlest
            if current.serial { copy?.worker = idlest }
        }
        let endsInsideARow = rows.last != UInt8(ascii: "\n")
        try worker.submit(copy: current.number, current.statement, rows: rows)
        rowWorker = endsInsideARow ? worker : nil
        rows = spares.take(capacity: Self.runSize)
    }

    /// Waits until every row handed out so far is loaded and committed.
    private func flushWorkers() throws {
        for worker in workers { try worker.flush() }
    }

    /// Tables whose rows psql's order matters for: a function that is user-defined or not immutable
    /// checks or computes their rows — it may read other tables, which psql has loaded and committed
    /// (and only those) by then. Found in every expression a row meets as a COPY writes it: the table's
    /// CHECK constraints, its generated columns, the partition key expressions of the trees it is a
    /// partition of (its partition constraint), and the CHECK constraints of every domain it reaches —
    /// through its columns' types (also inside arrays, composites, ranges and multiranges) and through a
    /// cast to a domain inside any of those expressions, a domain's own CHECK included.
    private func tablesThatMustLoadAlone() throws -> Set<[UInt8]> {
        let sql = """
            WITH RECURSIVE own_expressions(relation, expression) AS (
                SELECT conrelid, conbin::pg_catalog.text FROM pg_catalog.pg_constraint WHERE contype = 'c' AND conrelid <> 0
              UNION ALL
                SELECT d.adrelid, d.adbin::pg_catalog.text
                FROM pg_catalog.pg_attrdef d JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
                WHERE a.attgenerated <> ''
              UNION ALL
                SELECT c.oid, p.partexprs::pg_catalog.text
                FROM pg_catalog.pg_class c CROSS JOIN LATERAL pg_catalog.pg_partition_ancestors(c.oid) AS a(relid)
                JOIN pg_catalog.pg_partitioned_table p ON p.partrelid = a.relid
                WHERE c.relkind IN ('r', 'p') AND c.relispartition AND p.partexprs IS NOT NULL
            ), column_types(relation, type) AS (
                SELECT a.attrelid, a.atttypid
                FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
              UNION
                SELECT e.relation, (m.found)[1]::pg_catalog.oid
                FROM own_expressions e CROSS JOIN LATERAL pg_catalog.regexp_matches(e.expression, ':resulttype ([0-9]+)', 'g') AS m(found)
              UNION
                SELECT column_types.relation, inner_types.type
                FROM column_types JOIN pg_catalog.pg_type t ON t.oid = column_types.type
                CROSS JOIN LATERAL (
                    SELECT t.typbasetype WHERE t.typtype = 'd'
                    UNION ALL SELECT t.typelem WHERE t.typelem <> 0
                    UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a
                        WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
                    UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE r.rngtypid = t.oid
                    UNION ALL SELECT d.refobjid FROM pg_catalog.pg_depend d
                        WHERE t.typtype = 'm' AND d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.objid = t.oid
                          AND d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.deptype = 'i'
                    UNION ALL SELECT (m.found)[1]::pg_catalog.oid FROM pg_catalog.pg_constraint k
                        CROSS JOIN LATERAL pg_catalog.regexp_matches(k.conbin::pg_catalog.text, ':resulttype ([0-9]+)', 'g') AS m(found)
                        WHERE t.typtype = 'd' AND k.contypid = t.oid AND k.contype = 'c'
                ) AS inner_types(type)
            ), expressions(relation, expression) AS (
                SELECT relation, expression FROM own_expressions
              UNION ALL
                SELECT column_types.relation, c.conbin::pg_catalog.text
                FROM column_types JOIN pg_catalog.pg_constraint c ON c.contypid = column_types.type WHERE c.contype = 'c'
            )
            SELECT DISTINCT pg_catalog.encode(pg_catalog.convert_to(
                       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname),
                       pg_catalog.pg_client_encoding()), 'hex')
            FROM expressions e JOIN pg_catalog.pg_class c ON c.oid = e.relation
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE EXISTS (
                SELECT FROM pg_catalog.regexp_matches(e.expression, ':(?:funcid|opfuncid) ([0-9]+)', 'g') AS m(id)
                JOIN pg_catalog.pg_proc p ON p.oid = (m.id)[1]::pg_catalog.oid
                WHERE p.oid >= 16384 OR p.provolatile <> 'i')
            """
        do {
            let result = try main.connection.query(sql)
            return Set(try result.rows.map { try Self.bytes(hex: try $0.string(0)) })
        } catch {
            throw DumpApplier.failure(error, in: "finding tables whose constraints read other tables", backupID: backupID)
        }
    }

    // MARK: - Row counts

    /// Whether user code could change rows besides the COPYs while they load: a trigger or an
    /// enabled event trigger already there (pg_dump creates triggers after the rows, event triggers
    /// last), or a table whose constraints call functions that may write (`serialTables`).
    private func userCodeBeforeRows() throws -> String? {
        if !serialTables.isEmpty { return "a CHECK constraint, domain or generated column calls a function that may write" }
        do {
            let found = try main.connection.query("""
                SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger WHERE NOT tgisinternal)::text,
                       EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtenabled <> 'D')::text
                """).rows.first
            if found?[0] != "false" { return "a trigger existed before the rows were loaded" }
            if found?[1] != "false" { return "an event trigger existed before the rows were loaded" }
            return nil
        } catch {
            throw DumpApplier.failure(error, in: "finding triggers defined before the rows", backupID: backupID)
        }
    }

    /// The rows each table got from the dump's COPYs (the server's own `COPY n`, summed over the
    /// pieces a table was split into), for the tables where that is exactly what `count(*)` answers:
    /// an ordinary table without inheritance children (a parent's `count(*)` includes its children's
    /// rows), when no user code that could write rows ran meanwhile (`countsInexact`: triggers,
    /// event triggers, constraints calling functions, a materialized view refreshed) and no COPY went
    /// through a partitioned table (whose rows land in partitions). The other tables are counted
    /// with `count(*)` by `RowCountVerifier`.
    private func loadedRows() throws -> LoadedRows {
        if countsInexact == nil {
            // User code runs after the rows too: a CHECK added in the post-data runs on every row, an
            // index expression or predicate on every row it indexes, a partition key expression on
            // every row a COPY sends to a partition, a user-defined operator in a foreign key's
            // validation. Any function of the database's own (not an extension's) may write rows
            // there, even one declared IMMUTABLE, so with any such function the COPY results are not
            // taken for the counts.
            let found = try? main.connection.query("""
                SELECT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtenabled <> 'D')::text,
                       \(Self.ownFunctionsExist)::text
                """).rows.first
            if found?[0] != "false" {
                countsInexact = "an event trigger exists (it may have written rows as the post-data ran)"
            } else if found?[1] != "false" {
                countsInexact = "the database defines functions of its own (a constraint, index or partition key calling one may have written rows)"
            }
        }
        if let countsInexact { return LoadedRows(exact: [:], inexact: countsInexact) }
        let names = Set(copyTargets.values.map(ByteText.hex))
        guard !names.isEmpty else { return LoadedRows(exact: [:], inexact: nil) }
        var tables: [String: (oid: String, kind: String, parent: Bool)] = [:]
        do {
            // The server reads each name as COPY did (its quoting, the dump's client encoding).
            let result = try main.connection.query("""
                SELECT t.name, c.oid::text, c.relkind::text,
                       EXISTS (SELECT FROM pg_catalog.pg_inherits i WHERE i.inhparent = c.oid)::text
                FROM pg_catalog.unnest($1::text[]) AS t(name)
                JOIN pg_catalog.pg_class c
                  ON c.oid = pg_catalog.to_regclass(pg_catalog.convert_from(pg_catalog.decode(t.name, 'hex'), pg_catalog.pg_client_encoding()))
                """, ["{" + names.sorted().joined(separator: ",") + "}"])
            for row in result.rows {
                guard let name = row[0], let oid = row[1], let kind = row[2] else { continue }
                tables[name] = (oid, kind, row[3] == "true")
            }
        } catch {
            throw DumpApplier.failure(error, in: "finding the tables the COPYs loaded", backupID: backupID)
        }
        var exact: [String: Int64] = [:]
        for (number, target) in copyTargets {
            guard let table = tables[ByteText.hex(target)] else {
                return LoadedRows(exact: [:], inexact: "a table a COPY loaded is no longer found by that name")
            }
            guard table.kind == "r" else {
                return LoadedRows(exact: [:], inexact: "a COPY loaded a relation that is not an ordinary table (a partitioned table routes its rows)")
            }
            if !table.parent { exact[table.oid, default: 0] += tally.rows(of: number) }
        }
        return LoadedRows(exact: exact, inexact: nil)
    }

    /// The table a `COPY name (columns) FROM stdin` loads, as written (quotes kept).
    static func copyTarget(_ sql: [UInt8]) -> [UInt8] {
        var name: [UInt8] = []
        var quoted = false
        for byte in sql.dropFirst("COPY ".utf8.count) {
            if byte == UInt8(ascii: "\"") { quoted.toggle() }
            if !quoted && SQLLexer.isSpace(byte) { break }
            name.append(byte)
        }
        return name
    }

    private static func bytes(hex: String) throws -> [UInt8] {
        guard let bytes = ByteText.bytes(hex: hex) else {
            throw RecoveryError(.restoreFailed, "the server returned a table name that is not hex: \(hex)")
        }
        return bytes
    }

    // MARK: - Post-data

    /// Index and key builds on different tables at once, over up to `jobs` connections; builds on
    /// the same table stay on one connection, in order. A deadlock reported by the server is
    /// retried alone afterwards.
    private func runConcurrently(_ batch: [(key: String, statement: DumpScanner.Statement)]) throws {
        var groups: [[DumpScanner.Statement]] = []
        var groupOfKey: [String: Int] = [:]
        for (key, statement) in batch {
            if let group = groupOfKey[key] { groups[group].append(statement) } else {
                groupOfKey[key] = groups.count
                groups.append([statement])
            }
        }
        let lanes = min(jobs, groups.count)
        var connections = [main]
        defer { connections.dropFirst().forEach { $0.close() } }
        while connections.count < lanes, let connection = try extraConnection(required: false) { connections.append(connection) }
        let state = BatchState(groups: groups)
        let failures = (1..<connections.count).map { lane in
            Background { [connections] in try state.drain(on: connections[lane]) }
        }
        var firstError: Error?
        do { try state.drain(on: main) } catch { firstError = error }
        for failure in failures {
            do { try failure.wait() } catch { firstError = firstError ?? error }
        }
        if let firstError { throw firstError }
        for statement in state.deadlocked { try runAlone(statement, on: main) }
    }

    /// Runs a statement with nothing beside it; every server error (a deadlock too) names the statement.
    /// The statement's first word, upper-cased (`BEGIN`, `COMMIT`, `SELECT`).
    private static func keyword(of statement: DumpScanner.Statement) -> String {
        TransactionControl.keywords(statement.text, limit: 1).first ?? ""
    }

    private func runAlone(_ statement: DumpScanner.Statement, on connection: LoaderConnection) throws {
        do {
            try connection.run(statement)
        } catch {
            throw DumpApplier.failure(error, in: statement.excerpt, backupID: backupID)
        }
    }

    /// The groups of one batch, taken by the lanes one at a time.
    private final class BatchState: Sendable {
        private struct Shared {
            var groups: [[DumpScanner.Statement]]
            var deadlocked: [DumpScanner.Statement] = []
            var failed = false
        }
        private let shared: Mutex<Shared>

        init(groups: [[DumpScanner.Statement]]) { shared = Mutex(Shared(groups: groups)) }

        /// Statements that deadlocked beside others, to run again alone.
        var deadlocked: [DumpScanner.Statement] { shared.withLock { $0.deadlocked } }

        func drain(on connection: LoaderConnection) throws {
            while let group = next() {
                for statement in group {
                    do {
                        try connection.run(statement)
                    } catch let error as PostgresError where error.sqlState == PostgresError.deadlockDetected {
                        shared.withLock { $0.deadlocked.append(statement) }
                    } catch {
                        shared.withLock { $0.failed = true }
                        throw DumpApplier.failure(error, in: statement.excerpt, backupID: connection.backupID)
                    }
                }
            }
        }

        private func next() -> [DumpScanner.Statement]? {
            shared.withLock { $0.failed || $0.groups.isEmpty ? nil : $0.groups.removeFirst() }
        }
    }

    /// The table an index or key build works on, if the statement may run beside others.
    static func parallelKey(_ sql: String) -> String? {
        if sql.hasPrefix("CREATE INDEX ") || sql.hasPrefix("CREATE UNIQUE INDEX ") {
            guard let on = sql.range(of: " ON ") else { return nil }
            let rest = sql[on.upperBound...].drop { $0 == " " }
            let table = rest.hasPrefix("ONLY ") ? rest.dropFirst(5) : rest
            return table.split(separator: " ").first.map(String.init)
        }
        if sql.hasPrefix("ALTER TABLE ONLY "), sql.contains(" PRIMARY KEY ") || sql.contains(" UNIQUE ("),
           sql.contains("ADD CONSTRAINT "), !sql.contains(" FOREIGN KEY ") {
            return sql.dropFirst("ALTER TABLE ONLY ".count).split(whereSeparator: { $0 == " " || $0.isNewline }).first.map(String.init)
        }
        return nil
    }
}
