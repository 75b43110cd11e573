import Foundation
import PostgresClient
import Synchronization

/// The connections of one restore and what runs on each (see `DumpApplier` for the plan).
final class ParallelLoader {
    private let target: ConnectionTarget
    private let jobs: Int
    private let backupID: String
    private let maintenanceWorkMem: String
    private let main: LoaderConnection
    private var workers: [CopyWorker] = []
    private var dataStarted = false
    /// Tables (as pg_dump names them in COPY, in the dump's encoding) that must load in dump order, alone.
    private var serialTables: Set<[UInt8]> = []
    /// The COPY being read: its statement, its number in the dump, and the worker it is pinned to if serial.
    private var copy: (statement: DumpScanner.Statement, number: Int, serial: Bool, worker: CopyWorker?)?
    private var copies = 0
    private var rows: [UInt8] = []
    private let spares = BufferPool()
    /// Statements after the rows, run once the rows are committed.
    private var postData: [DumpScanner.Statement] = []
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
            if !dataStarted || statement.sql.starts(with: "SELECT pg_catalog.setval(".utf8) {
                try runAlone(statement, on: main)
            } else {
                postData.append(statement)
            }
        case .copyStart(let statement):
            if !dataStarted {
                dataStarted = true
                // In the dump's client encoding, so that table names come back as COPY spells them.
                try main.use(statement.settings)
                serialTables = try tablesThatMustLoadAlone()
            }
            copies += 1
            let serial = serialTables.contains(Self.copyTarget(statement.sql))
            if serial { try flushWorkers() }
            copy = (statement, copies, serial, nil)
        case .copyRows(let bytes):
            rows.append(contentsOf: bytes)
            if rows.count >= Self.runSize { try dispatchRows() }
        case .copyEnd:
            try dispatchRows()
            if copy?.serial == true { try flushWorkers() }
            copy = nil
        }
    }

    /// Commits the last rows (the stream has been read and verified), then runs the post-data.
    func finish() throws {
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
    private func extraConnection(required: Bool) throws -> LoaderConnection? {
        guard !connectionsRefused || required else { return nil }
        do {
            return try LoaderConnection(target: target, backupID: backupID, maintenanceWorkMem: maintenanceWorkMem)
        } catch let error as PostgresError where error.kind == .connection && !required {
            connectionsRefused = true
            return nil
        }
    }

    // MARK: - Rows

    private func dispatchRows() throws {
        guard !rows.isEmpty, let current = copy else { return }
        let worker: CopyWorker
        if let pinned = current.worker {
            worker = pinned
        } else {
            if workers.count < jobs, workers.allSatisfy({ $0.queuedBytes > 0 }),
               let connection = try extraConnection(required: workers.isEmpty) {
                workers.append(CopyWorker(connection: connection, spares: spares))
            }
            guard let idlest = workers.min(by: { $0.queuedBytes < $1.queuedBytes }) else { return }
            worker = idlest
            if current.serial { copy?.worker = idlest }
        }
        try worker.submit(copy: current.number, current.statement, rows: rows)
        rows = spares.take(capacity: Self.runSize + 64 * 1024)
    }

    /// Waits until every row handed out so far is loaded and committed.
    private func flushWorkers() throws {
        for worker in workers { try worker.flush() }
    }

    /// Tables whose rows psql's order matters for: a CHECK constraint, a domain of one of their
    /// columns (also inside arrays, composites, ranges and multiranges) or a generated column
    /// calls a function that is user-defined or not immutable — it
    /// may read other tables, which psql has loaded and committed (and only those) by then.
    private func tablesThatMustLoadAlone() throws -> Set<[UInt8]> {
        let sql = """
            WITH RECURSIVE column_types(relation, type) AS (
                SELECT a.attrelid, a.atttypid
                FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
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
                ) AS inner_types(type)
            ), expressions(relation, expression) AS (
                SELECT conrelid, conbin::pg_catalog.text FROM pg_catalog.pg_constraint WHERE contype = 'c' AND conrelid <> 0
              UNION ALL
                SELECT column_types.relation, c.conbin::pg_catalog.text
                FROM column_types JOIN pg_catalog.pg_constraint c ON c.contypid = column_types.type WHERE c.contype = 'c'
              UNION ALL
                SELECT d.adrelid, d.adbin::pg_catalog.text
                FROM pg_catalog.pg_attrdef d JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
                WHERE a.attgenerated <> ''
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
                    } catch let error as PostgresError where error.sqlState == LoaderConnection.deadlockDetected {
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
