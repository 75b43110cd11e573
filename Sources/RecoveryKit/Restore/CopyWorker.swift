import Foundation
import Synchronization

/// One connection loading COPY rows on its own thread, fed through a bounded queue.
///
/// Each COPY it runs is its own transaction, committed when the worker moves on to another table,
/// is flushed, or finishes: the scratch database is the isolation, so a table's rows may be
/// visible as soon as they are loaded (a failed restore drops the whole scratch database).
final class CopyWorker: @unchecked Sendable {
    // Safe: `queue`, `queued`, `busy`, `closed`, `cancelled` and `failure` are only touched under
    // `condition`; `connection` and `openCopy` only by the worker's thread, or after `join()`.
    private enum Item {
        case rows(copy: Int, statement: DumpScanner.Statement, rows: [UInt8])
        case flush
    }

    let connection: LoaderConnection
    private let condition = NSCondition()
    private var queue: [Item] = []
    private var queued = 0
    private var busy = false
    private var closed = false
    private var cancelled = false
    private var failure: Error?
    private var loop: Background<Void>?
    /// The COPY this connection has open: its number in the dump and its statement.
    private var openCopy: (number: Int, statement: DumpScanner.Statement)?
    private let spares: BufferPool
    /// Where each committed COPY's row count goes (the server's own `COPY n`).
    private let tally: CopyRowTally
    /// Bytes waiting before `submit` blocks: keeps memory bounded when the server is the slower side.
    private static let maximumQueued = 4 << 20

    init(connection: LoaderConnection, spares: BufferPool, tally: CopyRowTally) {
        self.connection = connection
        self.spares = spares
        self.tally = tally
        loop = Background { [self] in run() }
    }

    var queuedBytes: Int { condition.withLock { queued } }

    /// Queues rows of the dump's `copy`-th COPY; blocks while too much is queued.
    ///
    /// - Throws: the first error this connection had.
    func submit(copy: Int, _ statement: DumpScanner.Statement, rows: [UInt8]) throws {
        condition.lock()
        defer { condition.unlock() }
        while queued > Self.maximumQueued && failure == nil { condition.wait() }
        if let failure { throw failure }
        queue.append(.rows(copy: copy, statement: statement, rows: rows))
        queued += rows.count
        condition.broadcast()
    }

    /// Waits until everything queued is loaded and committed.
    ///
    /// - Throws: the first error this connection had.
    func flush() throws {
        condition.lock()
        defer { condition.unlock() }
        queue.append(.flush)
        condition.broadcast()
        while (!queue.isEmpty || busy) && failure == nil { condition.wait() }
        if let failure { throw failure }
    }

    /// Commits what is queued and stops the thread; throws the first error the connection had.
    func finish() throws {
        condition.withLock {
            closed = true
            condition.broadcast()
        }
        loop?.join()
        if let failure = condition.withLock({ failure }) { throw failure }
    }

    /// Stops after the current run; an open COPY is rolled back as the connection closes.
    func cancel() {
        condition.withLock {
            closed = true
            cancelled = true
            condition.broadcast()
        }
        loop?.join()
        connection.close()
    }

    private func run() {
        while true {
            condition.lock()
            while queue.isEmpty && !closed { condition.wait() }
            if cancelled || queue.isEmpty && closed {
                condition.unlock()
                break
            }
            let item = queue.removeFirst()
            busy = true
            let healthy = failure == nil
            condition.unlock()
            var error: Error?
            var size = 0
            switch item {
            case .rows(let copy, let statement, var rows):
                if healthy {
                    do { try load(copy, statement, rows) } catch let caught { error = caught }
                }
                size = rows.count
                spares.give(&rows)
            case .flush:
                if healthy {
                    do { try commit() } catch let caught { error = caught }
                }
            }
            condition.withLock {
                queued -= size
                busy = false
                if let error, failure == nil { failure = error }
                condition.broadcast()
            }
        }
        guard condition.withLock({ !cancelled && failure == nil }) else { return }
        do {
            try commit()
        } catch {
            condition.withLock { failure = error }
        }
    }

    private func load(_ copy: Int, _ statement: DumpScanner.Statement, _ rows: [UInt8]) throws {
        if openCopy?.number != copy {
            try commit()
            try connection.beginCopy(statement)
            openCopy = (copy, statement)
        }
        do {
            try rows.withUnsafeBytes { try connection.connection.putCopyData($0) }
        } catch {
            throw DumpApplier.failure(error, in: statement.excerpt, backupID: connection.backupID)
        }
    }

    /// Ends the open COPY, which commits its rows, and records how many the server says it loaded.
    private func commit() throws {
        guard let open = openCopy else { return }
        openCopy = nil
        do {
            tally.add(try connection.connection.endCopy(), to: open.number)
        } catch {
            throw DumpApplier.failure(error, in: open.statement.excerpt, backupID: connection.backupID)
        }
    }
}

/// The rows the server reported for each COPY of the dump (`COPY n`, PQcmdTuples), summed over the
/// pieces a table's rows were split into across connections.
final class CopyRowTally: Sendable {
    private let rows = Mutex<[Int: Int64]>([:])

    func add(_ count: Int64, to copy: Int) { rows.withLock { $0[copy, default: 0] += count } }

    /// Rows loaded by the dump's `copy`-th COPY (0 when it had none).
    func rows(of copy: Int) -> Int64 { rows.withLock { $0[copy] ?? 0 } }
}
