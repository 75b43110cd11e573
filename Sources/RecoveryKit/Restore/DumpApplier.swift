import BackupStorage
import Foundation
import Gzip
import PostgresClient

/// Replays a logical backup's dump into a (scratch) database over several connections, the way
/// `pg_restore -j` does for custom-format archives, from the plain gzip stream:
///
/// 1. schema (everything before the first COPY) on one connection, in dump order;
/// 2. rows: each table's COPY data is cut into runs of about 1 MiB of whole rows, handed to
///    whichever of `jobs` connections has the least queued, each holding one open transaction;
/// 3. at the end of the stream the stored file's sha256 is checked; only then are the row
///    transactions committed — a mismatch rolls them all back;
/// 4. post-data (indexes, constraints, triggers, grants) in dump order, with runs of index and
///    primary-key/unique builds on different tables spread over the connections.
enum DumpApplier {
    /// `maintenance_work_mem` for the restore's index builds (`DBRECOVERY_RESTORE_MAINTENANCE_WORK_MEM`).
    static var maintenanceWorkMem: String {
        let value = ProcessInfo.processInfo.environment["DBRECOVERY_RESTORE_MAINTENANCE_WORK_MEM"] ?? "256MB"
        return value.allSatisfy { $0.isLetter || $0.isNumber } ? value : "256MB"
    }

    /// Streams `backups/<id>/dump.sql.gz` → sha256 + gunzip → parsed dump → `jobs` connections.
    ///
    /// - Important: the rows are committed only after the whole stream has been read and its
    ///   sha256 matched; callers restore into a scratch database and drop it on any failure.
    /// - Throws: `RecoveryError` (`.backupCorrupt`, `.restoreFailed`) or `StorageError`.
    static func apply(_ manifest: BackupManifest, from store: BackupStore, into target: ConnectionTarget,
                      jobs: Int, key: RepositoryKey?, progress: ProgressObserver?) throws {
        guard manifest.kind == .logical, let file = manifest.files.first(where: { $0.name == LogicalCapture.dumpFileName }) else {
            throw RecoveryError(.usage, "backup \(manifest.id) is a \(manifest.kind.rawValue) backup; a logical restore needs a logical one",
                                hint: "restore physical backups with dbrestore --pitr")
        }
        let loader = try ParallelLoader(target: target, jobs: max(1, jobs), backupID: manifest.id)
        defer { loader.abandon() }
        let scanner = DumpScanner { try loader.handle($0) }
        try StoredFileStream.decompress(file, of: manifest, from: store, key: key, phase: "restore", progress: progress) { plain in
            try scanner.write(plain)
        }
        try scanner.finish()
        try loader.finish()
    }

    /// A server error while replaying, as the operator reads it: which statement, what the server said.
    static func failure(_ error: Error, in sql: String, backupID: String) -> Error {
        guard let error = error as? PostgresError else { return error }
        let statement = sql.split(whereSeparator: \.isNewline).first.map { String($0.prefix(80)) } ?? ""
        return RecoveryError(.restoreFailed, "replaying backup \(backupID) failed at `\(statement)`: \(error.message)",
                             hint: "nothing was applied; the target database is unchanged")
    }
}

/// The connections of one restore and what runs on each.
final class ParallelLoader {
    private let target: ConnectionTarget
    private let jobs: Int
    private let backupID: String
    private let main: PostgresConnection
    private var workers: [CopyWorker] = []
    /// Session settings of the dump (`SET …`, `set_config(…)`), replayed on every connection.
    private var settings: [String] = []
    private var dataStarted = false
    private var copyStatement: String?
    private var rows: [UInt8] = []
    /// Row buffers handed back by the workers, reused (a fresh 1 MiB buffer per run costs 256 page faults).
    private let spares = BufferPool()
    /// Statements after the rows, run once the rows are committed.
    private var postData: [String] = []
    private static let runSize = 1 << 20

    init(target: ConnectionTarget, jobs: Int, backupID: String) throws {
        self.target = target
        self.jobs = jobs
        self.backupID = backupID
        main = try ParallelLoader.connect(target)
    }

    static func connect(_ target: ConnectionTarget) throws -> PostgresConnection {
        let connection = try PostgresConnection(target: target, applicationName: "dbrestore")
        // A fresh scratch database nobody else uses: index builds may take more memory, and a lost
        // commit is a failed restore that is run again, so no need to wait for the WAL flush.
        try connection.execute(script: "SET maintenance_work_mem = '\(DumpApplier.maintenanceWorkMem)'; SET synchronous_commit = off")
        return connection
    }

    func handle(_ event: DumpScanner.Event) throws {
        switch event {
        case .statement(let sql):
            if Self.isSessionSetting(sql) {
                settings.append(sql)
                try run(sql, on: main)
            } else if !dataStarted || sql.hasPrefix("SELECT pg_catalog.setval(") {
                try run(sql, on: main)
            } else {
                postData.append(sql)
            }
        case .copyStart(let sql):
            dataStarted = true
            copyStatement = sql
        case .copyRows(let bytes):
            rows.append(contentsOf: bytes)
            if rows.count >= Self.runSize { try dispatchRows() }
        case .copyEnd:
            try dispatchRows()
            copyStatement = nil
        }
    }

    /// Commits the rows (the stream has been read and verified), then runs the post-data.
    func finish() throws {
        for worker in workers { try worker.finish() }
        for worker in workers { try run("COMMIT", on: worker.connection) }
        workers.removeAll()
        var index = 0
        while index < postData.count {
            var batch: [(key: String, sql: String)] = []
            while index < postData.count, let key = Self.parallelKey(postData[index]) {
                batch.append((key, postData[index]))
                index += 1
            }
            if batch.count > 1 {
                try runConcurrently(batch)
            } else if let single = batch.first {
                try run(single.sql, on: main)
            } else {
                try run(postData[index], on: main)
                index += 1
            }
        }
    }

    /// Another connection to the database being restored, with the dump's session settings so far.
    private func openConnection() throws -> PostgresConnection {
        let connection = try Self.connect(target)
        for setting in settings { try run(setting, on: connection) }
        return connection
    }

    /// Stops everything without committing (open transactions roll back as connections close).
    func abandon() {
        for worker in workers { worker.cancel() }
        workers.removeAll()
        main.close()
    }

    private func dispatchRows() throws {
        guard !rows.isEmpty, let copyStatement else { return }
        if workers.count < jobs, workers.allSatisfy({ $0.queuedBytes > 0 }) {
            let connection = try openConnection()
            try run("BEGIN", on: connection)
            workers.append(CopyWorker(connection: connection, backupID: backupID, spares: spares))
        }
        guard let worker = workers.min(by: { $0.queuedBytes < $1.queuedBytes }) else { return }
        try worker.submit(copyStatement, rows: rows)
        rows = spares.take(capacity: Self.runSize + 64 * 1024)
    }

    /// Index and key builds on different tables at once, over up to `jobs` connections; builds on
    /// the same table stay on one connection, in order. A deadlock reported by the server is
    /// retried alone afterwards.
    private func runConcurrently(_ batch: [(key: String, sql: String)]) throws {
        var groups: [[String]] = []
        var groupOfKey: [String: Int] = [:]
        for (key, sql) in batch {
            if let group = groupOfKey[key] { groups[group].append(sql) } else {
                groupOfKey[key] = groups.count
                groups.append([sql])
            }
        }
        let lanes = min(jobs, groups.count)
        var connections = [main]
        defer { connections.dropFirst().forEach { $0.close() } }
        while connections.count < lanes { connections.append(try openConnection()) }
        let state = BatchState(groups: groups)
        let failures = (1..<max(1, lanes)).map { lane in
            Background { try state.drain(on: connections[lane], loader: self) }
        }
        var firstError: Error?
        do { try state.drain(on: main, loader: self) } catch { firstError = error }
        for failure in failures {
            do { try failure.wait() } catch { firstError = firstError ?? error }
        }
        if let firstError { throw firstError }
        for sql in state.deadlocked { try run(sql, on: main) }
    }

    private final class BatchState: @unchecked Sendable {
        private let lock = NSLock()
        private var groups: [[String]]
        private(set) var deadlocked: [String] = []
        private var failed = false

        init(groups: [[String]]) { self.groups = groups }

        func drain(on connection: PostgresConnection, loader: ParallelLoader) throws {
            while let group = next() {
                for sql in group {
                    do {
                        try connection.execute(script: sql)
                    } catch let error as PostgresError where error.sqlState == "40P01" {
                        lock.withLock { deadlocked.append(sql) }
                    } catch {
                        lock.withLock { failed = true }
                        throw loader.failure(error, in: sql)
                    }
                }
            }
        }

        private func next() -> [String]? {
            lock.withLock { failed || groups.isEmpty ? nil : groups.removeFirst() }
        }
    }

    fileprivate func run(_ sql: String, on connection: PostgresConnection) throws {
        do {
            try connection.execute(script: sql)
        } catch {
            throw failure(error, in: sql)
        }
    }

    fileprivate func failure(_ error: Error, in sql: String) -> Error {
        DumpApplier.failure(error, in: sql, backupID: backupID)
    }

    private static func isSessionSetting(_ sql: String) -> Bool {
        sql.hasPrefix("SET ") || sql.hasPrefix("SELECT pg_catalog.set_config(")
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

/// One connection loading COPY rows on its own thread, fed through a bounded queue.
private final class CopyWorker: @unchecked Sendable {
    let connection: PostgresConnection
    private let backupID: String
    private let condition = NSCondition()
    private var queue: [(statement: String, rows: [UInt8])] = []
    private var queued = 0
    private var closed = false
    private var cancelled = false
    private var failure: Error?
    private var loop: Background<Void>?
    /// The COPY this connection has open.
    private var openCopy: String?
    /// Bytes waiting before `submit` blocks: keeps memory bounded when the server is the slower side.
    private static let maximumQueued = 4 << 20

    private let spares: BufferPool

    init(connection: PostgresConnection, backupID: String, spares: BufferPool) {
        self.connection = connection
        self.backupID = backupID
        self.spares = spares
        loop = Background { [self] in run() }
    }

    var queuedBytes: Int { condition.withLock { queued } }

    func submit(_ statement: String, rows: [UInt8]) throws {
        condition.lock()
        defer { condition.unlock() }
        while queued > Self.maximumQueued && failure == nil { condition.wait() }
        if let failure { throw failure }
        queue.append((statement, rows))
        queued += rows.count
        condition.broadcast()
    }

    /// Ends the open COPY once the queue is drained; throws the first error the connection had.
    func finish() throws {
        condition.withLock {
            closed = true
            condition.broadcast()
        }
        loop?.join()
        if let failure = condition.withLock({ failure }) { throw failure }
    }

    /// Stops after the current run; the open transaction rolls back when the connection closes.
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
            var item = queue.removeFirst()
            let healthy = failure == nil
            condition.unlock()
            var error: Error?
            if healthy {
                do { try load(item.statement, item.rows) } catch let caught { error = caught }
            }
            let size = item.rows.count
            spares.give(&item.rows)
            condition.withLock {
                queued -= size
                if let error, failure == nil { failure = error }
                condition.broadcast()
            }
        }
        guard condition.withLock({ !cancelled && failure == nil }), let statement = openCopy else { return }
        do {
            try connection.endCopy()
        } catch {
            condition.withLock { failure = DumpApplier.failure(error, in: statement, backupID: backupID) }
        }
    }

    private func load(_ statement: String, _ rows: [UInt8]) throws {
        do {
            if openCopy != statement {
                if openCopy != nil { try connection.endCopy() }
                openCopy = nil
                try connection.beginCopy(statement)
                openCopy = statement
            }
            try rows.withUnsafeBytes { try connection.putCopyData($0) }
        } catch {
            throw DumpApplier.failure(error, in: openCopy ?? statement, backupID: backupID)
        }
    }
}

/// A few emptied byte buffers kept for reuse between threads.
private final class BufferPool: @unchecked Sendable {
    private let lock = NSLock()
    private var buffers: [[UInt8]] = []

    func take(capacity: Int) -> [UInt8] {
        if let buffer = lock.withLock({ buffers.popLast() }) { return buffer }
        var buffer: [UInt8] = []
        buffer.reserveCapacity(capacity)
        return buffer
    }

    /// Takes the buffer (leaving an empty one): it must be the only reference, or a copy is kept.
    func give(_ buffer: inout [UInt8]) {
        buffer.removeAll(keepingCapacity: true)
        let kept = buffer
        buffer = []
        lock.withLock { if buffers.count < 16 { buffers.append(kept) } }
    }
}
