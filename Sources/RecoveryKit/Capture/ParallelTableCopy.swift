import Foundation
import PostgresClient

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

    /// Starts `jobs` connections (fewer for fewer reads); they begin reading at once.
    ///
    /// - Parameters:
    ///   - target: the database (its sessions carry `--lock-wait` as `lock_timeout`: a read that waits
    ///     behind a lock request queued after the backup's own locks gives up then, as pg_dump's do).
    ///   - snapshot: the dump's exported snapshot; its transaction must stay open until `join()`.
    init(plan: TableDataPlan, target: ConnectionTarget, snapshot: String, serverVersion: Int, jobs: Int) {
        self.plan = plan
        let reads = plan.tables.flatMap(\.reads)
        let connections = min(max(1, jobs), reads.count)
        board = CopyBoard(reads: reads, connections: connections)
        let session = TableDataPlan.sessionSettings(serverVersion: serverVersion)
        let transaction = TableDataPlan.snapshotTransaction(snapshot)
        let sessionTarget = target.with("client_encoding", plan.encoding)
        for _ in 0..<connections {
            workers.enter()
            let board = self.board
            let group = workers
            Thread.detachNewThread {
                defer { group.leave() }
                board.work(target: sessionTarget, session: session, transaction: transaction)
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
    private let reads: [[UInt8]]
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

    /// Thrown into a read's row handler once the copy is stopped.
    private struct Stopped: Error {}

    init(reads: [[UInt8]], connections: Int) {
        self.reads = reads
        aheadLimit = Self.aheadLimitPerConnection * max(1, connections - 1)
        queues = Array(repeating: [], count: reads.count)
        queued = Array(repeating: 0, count: reads.count)
    }

    /// One connection's life: open it with pg_dump's settings, then read until no read is left, each in
    /// its own transaction in the snapshot.
    func work(target: ConnectionTarget, session: String, transaction: [String]) {
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
                let rows = try connection.copyOut(bytes: reads[read]) { row in
                    run.append(contentsOf: row)
                    if run.count >= Self.runSize {
                        try put(.rows(run), for: read)
                        run = spare()
                    }
                }
                if !run.isEmpty { try put(.rows(run), for: read) }
                try connection.execute(script: "COMMIT")
                try put(.done(rows), for: read)
            }
        } catch is Stopped {
            return
        } catch {
            fail(error)
        }
    }

    private var isStopped: Bool { condition.withLock { stopped || failure != nil } }

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
        run.reserveCapacity(Self.runSize + 64 * 1024)
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
