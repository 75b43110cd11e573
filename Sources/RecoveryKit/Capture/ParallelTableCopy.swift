import Foundation
import Logging
import PostgresClient
import ProcessSignals

/// Reads the rows of a `TableDataPlan` over several connections that share the dump's exported
/// snapshot, and writes them in the plan's order as pg_dump's `TABLE DATA` entries: one stream,
/// byte for byte what pg_dump would have written for those tables.
///
/// Each connection takes the next read (a table, or one block range of a big one) as soon as it is
/// free; the reads ahead of the one being written wait, with at most 8 MiB per connection queued,
/// until their turn, so memory stays bounded whatever the tables' sizes. The rows of each read are
/// counted by the server (`PQcmdTuples`).
final class ParallelTableCopy {
    private let plan: TableDataPlan
    private let board: CopyBoard
    private let workers = DispatchGroup()
    private var joined = false
    /// A signal stops the reads, and so the writer waiting for them (a read that runs no statement
    /// at that moment, queued or waiting for its turn, is not ended by the signal's cancel requests).
    private var interruption: InterruptHook?

    /// Starts `jobs` connections (fewer for fewer reads); they begin reading at once.
    ///
    /// - Parameters:
    ///   - target: the database.
    ///   - snapshot: the dump's exported snapshot; its transaction must stay open until `join()`.
    ///   - exporter: the connection that exported it, holding ACCESS SHARE on every planned table: a
    ///     read whose table a copying connection cannot lock at once runs there (`SnapshotConnection`).
    init(plan: TableDataPlan, target: ConnectionTarget, snapshot: String, exporter: SnapshotConnection, jobs: Int) {
        self.plan = plan
        let reads = plan.tables.flatMap { table in table.reads.map { (statement: $0, table: table.qualified) } }
        let connections = min(max(1, jobs), reads.count)
        let session = TableDataPlan.sessionSettings(serverVersion: exporter.connection.serverVersionNumber)
        board = CopyBoard(reads: reads, connections: connections, exporter: exporter, session: session, encoding: plan.encoding)
        let transaction = TableDataPlan.snapshotTransaction(snapshot)
        let sessionTarget = target.with("client_encoding", plan.encoding)
        interruption = Interruption.onInterrupt { [board] in board.stop() }
        for _ in 0..<connections {
            workers.enter()
            let board = self.board
            let group = workers
            Thread.detachNewThread {
                defer { group.leave() }
                board.work(target: sessionTarget, transaction: transaction)
            }
        }
    }

    deinit { stop() }

    /// Writes every planned table's entry, in order, to `deliver`; returns once all are written.
    ///
    /// - Returns: the rows the server copied for each table, by oid.
    /// - Throws: the first read's error (`PostgresError`), or whatever `deliver` throws; the
    ///   other reads are stopped then (call `stop()` on any other failure).
    func write(to deliver: (UnsafeRawBufferPointer) throws -> Void) throws -> [String: Int64] {
        var rows: [String: Int64] = [:]
        var read = 0
        do {
            for table in plan.tables {
                try table.entryHead.withUnsafeBytes(deliver)
                var tableRows: Int64 = 0
                for _ in table.reads {
                    reading: while true {
                        switch try board.take(read) {
                        case .rows(let bytes):
                            try bytes.withUnsafeBytes(deliver)
                            board.recycle(bytes)
                        case .done(let count):
                            tableRows += count
                            break reading
                        }
                    }
                    read += 1
                }
                rows[table.oid] = tableRows
                try TableDataPlan.entryTail.withUnsafeBytes(deliver)
            }
        } catch {
            stop()
            throw error
        }
        join()
        return rows
    }

    /// Stops every read (cancelling what runs on the server) and waits until every connection is closed.
    func stop() {
        board.stop()
        join()
    }

    private func join() {
        guard !joined else { return }
        workers.wait()
        joined = true
        interruption?.remove()
    }
}

/// What the copying connections and the writer share; every field is under `condition`.
// @unchecked Sendable: all mutable state is read and written only while `condition` is locked.
private final class CopyBoard: @unchecked Sendable {
    enum Piece {
        case rows([UInt8])
        case done(Int64)
    }

    /// Rows are handed over in runs of about this size.
    static let runSize = 256 << 10
    /// The read the writer is on waits once this much of it is queued (the writer is taking it).
    static let headLimit = 2 << 20
    /// Reads ahead of the writer wait once this much of them all is queued, per connection ahead: twice
    /// the heap of a block range (`TableDataPlan.defaultSplitPages`), so that a range's text usually fits
    /// whole and its connection goes on to the next one while the writer is still busy with an earlier one.
    /// What bounds memory (about `jobs` × 8 MiB), whatever the tables' sizes.
    static let aheadLimitPerConnection = 8 << 20

    private let condition = NSCondition()
    /// Each read's statement and the table it reads (quoted, for its lock).
    private let reads: [(statement: [UInt8], table: String)]
    private let exporter: SnapshotConnection
    /// pg_dump's session settings (`TableDataPlan.sessionSettings`) and the dump's client encoding.
    private let session: String
    private let encoding: String
    private let aheadLimit: Int
    private var next = 0
    /// The read the writer is on.
    private var head = 0
    private var queues: [[Piece]]
    private var queued: [Int]
    private var totalQueued = 0
    /// Run buffers given back by the writer, for the connections to fill again (no allocation per run).
    private var spares: [[UInt8]] = []
    private var failure: Error?
    private var stopped = false
    /// Cancels the statement each live connection runs (thread-safe: `PostgresConnection.cancelRunningStatement`).
    private var cancels: [Int: @Sendable () -> Void] = [:]
    private var nextWorker = 0
    /// Tables some of whose reads ran on the exporting connection (each is reported once).
    private var redirected: Set<String> = []

    /// Thrown into a read's row handler once the copy is stopped.
    private struct Stopped: Error {}

    init(reads: [(statement: [UInt8], table: String)], connections: Int, exporter: SnapshotConnection, session: String, encoding: String) {
        self.reads = reads
        self.exporter = exporter
        self.session = session
        self.encoding = encoding
        aheadLimit = Self.aheadLimitPerConnection * max(1, connections - 1)
        queues = Array(repeating: [], count: reads.count)
        queued = Array(repeating: 0, count: reads.count)
    }

    /// One connection's life: open it with pg_dump's settings, then read until no read is left, each in
    /// its own transaction in the snapshot.
    ///
    /// Each read first locks its table with `NOWAIT`. A session that asked for a lock the backup's own
    /// ACCESS SHARE blocks (an `ALTER TABLE`) is queued ahead of any later request, so a plain lock here
    /// would wait for it while it waits for the backup: until `--lock-wait` failed the backup (pg_dump's
    /// parallel workers fail at once). Such a read runs on the exporting connection instead, which
    /// holds the table's lock already and so never queues.
    func work(target: ConnectionTarget, transaction: [String]) {
        do {
            guard !isStopped else { return }
            let connection = try PostgresConnection(target: target, applicationName: "dbbackup")
            defer { connection.close() }
            let canceller = ConnectionCanceller(connection)
            let worker = register { canceller.cancel() }
            defer { unregister(worker) }
            try connection.execute(script: session)
            while let read = claim() {
                for statement in transaction { try connection.execute(script: statement) }
                var run = spare()
                // A row longer than a run (a 200 MB value) is queued in runs too: the writer only
                // concatenates them, and queued whole it would be held beside libpq's copy of it, then
                // kept as a spare at its size.
                let sink: (UnsafeRawBufferPointer) throws -> Void = { row in
                    var rest = row
                    while !rest.isEmpty {
                        let take = min(rest.count, Self.runSize - run.count)
                        run.append(contentsOf: UnsafeRawBufferPointer(rebasing: rest[0..<take]))
                        rest = UnsafeRawBufferPointer(rebasing: rest[take...])
                        if run.count >= Self.runSize {
                            try self.put(.rows(run), for: read)
                            run = self.spare()
                        }
                    }
                }
                let rows: Int64
                if try lockNow(reads[read].table, on: connection) {
                    rows = try connection.copyOut(bytes: reads[read].statement, row: sink)
                    try connection.execute(script: "COMMIT")
                } else {
                    try connection.execute(script: "ROLLBACK")
                    if condition.withLock({ redirected.insert(reads[read].table).inserted }) {
                        Self.logger.warning("""
                            --data-by copy: a session waits behind the backup for a lock on \(reads[read].table) (an ALTER TABLE, or a LOCK); \
                            its rows are read on the backup's own connection, which holds that lock already
                            """)
                    }
                    // Only the read the writer is on may take the exporting connection: a read ahead of it
                    // waits for the writer to take its rows, and would keep the connection from the read
                    // the writer waits for (a deadlock in this process, which no signal would end).
                    try waitForTurn(read)
                    rows = try exporter.copyOut(reads[read].statement, session: session, encoding: encoding, row: sink)
                }
                if !run.isEmpty { try put(.rows(run), for: read) }
                try put(.done(rows), for: read)
            }
        } catch is Stopped {
            return
        } catch {
            fail(error)
        }
    }

    private var isStopped: Bool { condition.withLock { stopped || failure != nil } }

    private static let logger = Logger(label: "dbrecovery.backup")

    /// Whether `table` was locked (ACCESS SHARE) at once; false when another session's lock, granted or
    /// queued, stands in the way (55P03).
    private func lockNow(_ table: String, on connection: PostgresConnection) throws -> Bool {
        do {
            try connection.execute(script: "LOCK TABLE ONLY \(table) IN ACCESS SHARE MODE NOWAIT")
            return true
        } catch let error as PostgresError where error.sqlState == PostgresError.lockNotAvailable {
            return false
        }
    }

    private func register(_ cancel: @escaping @Sendable () -> Void) -> Int {
        condition.withLock {
            nextWorker += 1
            cancels[nextWorker] = cancel
            return nextWorker
        }
    }

    private func unregister(_ worker: Int) {
        _ = condition.withLock { cancels.removeValue(forKey: worker) }
    }

    private func claim() -> Int? {
        condition.withLock {
            guard !stopped, failure == nil, next < reads.count else { return nil }
            next += 1
            return next - 1
        }
    }

    /// An empty run buffer, recycled when there is one.
    private func spare() -> [UInt8] {
        var run = condition.withLock { spares.popLast() } ?? []
        run.removeAll(keepingCapacity: true)
        run.reserveCapacity(Self.runSize)
        return run
    }

    /// Gives a run buffer the writer is done with back for reuse.
    func recycle(_ run: [UInt8]) {
        condition.withLock { if spares.count < 64 { spares.append(run) } }
    }

    /// Queues a piece of a read. The read the writer is on waits only for the writer; reads ahead wait
    /// while the reads ahead hold `aheadLimit` (never on the head, so the writer always gets on).
    private func put(_ piece: Piece, for read: Int) throws {
        condition.lock()
        defer { condition.unlock() }
        if case .rows = piece {
            while !stopped && failure == nil
                    && (read == head ? queued[read] >= Self.headLimit : totalQueued - queued[head] >= aheadLimit) {
                condition.wait()
            }
        }
        guard !stopped, failure == nil else { throw Stopped() }
        if case .rows(let bytes) = piece {
            queued[read] += bytes.count
            totalQueued += bytes.count
        }
        queues[read].append(piece)
        condition.broadcast()
    }

    /// Waits until the writer is on `read`.
    private func waitForTurn(_ read: Int) throws {
        condition.lock()
        defer { condition.unlock() }
        while head != read && !stopped && failure == nil { condition.wait() }
        guard !stopped, failure == nil else { throw Stopped() }
    }

    /// The next piece of a read, waiting for it; the writer is on that read from now on.
    func take(_ read: Int) throws -> Piece {
        condition.lock()
        defer { condition.unlock() }
        if head != read {
            head = read
            condition.broadcast()
        }
        while queues[read].isEmpty && failure == nil && !stopped { condition.wait() }
        if let failure { throw failure }
        guard !queues[read].isEmpty else { throw Stopped() }
        let piece = queues[read].removeFirst()
        if case .rows(let bytes) = piece {
            queued[read] -= bytes.count
            totalQueued -= bytes.count
        }
        condition.broadcast()
        return piece
    }

    /// The other connections' reads are useless now: they are ended on the server. (Under the lock: a
    /// connection is unregistered, under it too, before it is closed.)
    private func fail(_ error: Error) {
        condition.withLock {
            if failure == nil && !stopped { failure = error }
            condition.broadcast()
            cancels.values.forEach { $0() }
        }
    }

    func stop() {
        condition.withLock {
            stopped = true
            condition.broadcast()
            cancels.values.forEach { $0() }
        }
    }
}

/// Lets another thread cancel the statement a connection runs.
// @unchecked Sendable: only `cancelRunningStatement()` is called through it, which is safe from any thread
// (libpq's PQcancel on its own socket); the connection is closed only after the canceller is unregistered.
private final class ConnectionCanceller: @unchecked Sendable {
    private let connection: PostgresConnection
    init(_ connection: PostgresConnection) { self.connection = connection }
    func cancel() { connection.cancelRunningStatement() }
}

/// The connection that exported the dump's snapshot, shared by the threads that need it, one at a
/// time: the `--count-check` pass, and the reads a copying connection could not lock at once.
///
/// From before the copy starts it holds ACCESS SHARE on every table the backup copies, so a read
/// here never queues behind another session's lock request.
// @unchecked Sendable: `connection` is used only under `lock` (by `use` and `copyOut`); the owner uses it
// directly only before the copy starts and after it has ended, and `cancelRunningStatement()` is thread-safe.
final class SnapshotConnection: @unchecked Sendable {
    let connection: PostgresConnection
    private let lock = NSLock()

    init(_ connection: PostgresConnection) { self.connection = connection }

    /// Runs `body` with the connection to itself.
    func use<T>(_ body: (PostgresConnection) throws -> T) rethrows -> T {
        try lock.withLock { try body(connection) }
    }

    /// The settings a copying connection's session has that this one must take for a read, so that
    /// every value is written as pg_dump writes it (`TableDataPlan.sessionSettings`), and put back after.
    private static let copySettings = ["DateStyle", "IntervalStyle", "extra_float_digits", "synchronize_seqscans", "statement_timeout",
                                       "idle_in_transaction_session_timeout", "row_security", "search_path", "client_encoding",
                                       "transaction_timeout"]

    /// One read as a copying connection makes it: in pg_dump's session settings and the dump's
    /// encoding, inside the snapshot's own transaction; the session's settings are put back after.
    ///
    /// - Returns: the rows the server copied (`PQcmdTuples`).
    func copyOut(_ statement: [UInt8], session: String, encoding: String, row: (UnsafeRawBufferPointer) throws -> Void) throws -> Int64 {
        try use { connection in
            let saved = try connection.query("""
                SELECT name, setting FROM (SELECT name, pg_catalog.current_setting(name, true) AS setting
                                           FROM pg_catalog.unnest($1::text[]) AS name) AS s WHERE setting IS NOT NULL
                """, ["{" + Self.copySettings.joined(separator: ",") + "}"]).rows
            try connection.execute(script: session + ";\nSET client_encoding = '\(encoding.replacingOccurrences(of: "'", with: "''"))'")
            let rows = try connection.copyOut(bytes: statement, row: row)
            for setting in saved {
                _ = try connection.query("SELECT pg_catalog.set_config($1, $2, false)", [try setting.string(0), try setting.string(1)])
            }
            return rows
        }
    }
}
