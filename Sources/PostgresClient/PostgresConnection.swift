#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Logging
import ProcessSignals
internal import CLibPQ

/// One libpq connection. Not thread-safe: use it from one thread at a time.
///
/// Deliberately narrow (connect, query with text parameters, a few typed decoders): libpq does
/// the talking for row counts, snapshots, locks, migrations, restores (COPY FROM STDIN) and
/// logical backups' table data (COPY TO STDOUT);
/// pg_dump and pg_basebackup do the rest.
public final class PostgresConnection {
    private var handle: OpaquePointer?
    /// Where notices nobody asked for go: at debug (`-vv`), warnings at info (`-v`).
    private let logger = Logger(label: "dbrecovery.postgres")
    /// The COPY statement in progress, for error messages.
    private var copyStatement = ""
    /// The target this connection was opened with (for messages; never includes the password).
    public let target: ConnectionTarget
    /// `PQcancel` on the running statement when a signal interrupts the run.
    private var interruptHook: InterruptHook?
    /// Knows whether a statement is running, so that only a running one is ever cancelled.
    private var canceller: Canceller?

    /// Opens a connection, failing fast rather than hanging on an unreachable host.
    ///
    /// - Parameters:
    ///   - target: where to connect.
    ///   - applicationName: shown in `pg_stat_activity`, so operators can see who holds what.
    ///   - connectTimeoutSeconds: used unless the target sets `connect_timeout` itself.
    /// - Throws: `PostgresError.connection` with libpq's reason.
    public init(target: ConnectionTarget, applicationName: String = "dbrecovery",
                connectTimeoutSeconds: Int = 10) throws {
        self.target = target
        var effective = target
        if target.value("connect_timeout") == nil {
            effective = effective.with("connect_timeout", String(connectTimeoutSeconds))
        }
        if target.value("application_name") == nil {
            effective = effective.with("application_name", applicationName)
        }
        // Text is decoded as UTF-8 on this side, so the server must send UTF-8 whatever the database's
        // encoding (a LATIN1 table `café` would otherwise come back as invalid UTF-8 and be garbled).
        // A restore's dump sets its own client_encoding on the connections that replay it.
        if target.value("client_encoding") == nil {
            effective = effective.with("client_encoding", "UTF8")
        }
        let keywords = effective.parameters.map { strdup($0.keyword) } + [nil]
        let values = effective.parameters.map { strdup($0.value) } + [nil]
        defer {
            keywords.forEach { free($0) }
            values.forEach { free($0) }
        }
        let connection = keywords.map { UnsafePointer($0) }.withUnsafeBufferPointer { keywordPointers in
            values.map { UnsafePointer($0) }.withUnsafeBufferPointer { valuePointers in
                PQconnectdbParams(keywordPointers.baseAddress, valuePointers.baseAddress, 0)
            }
        }
        guard let connection, PQstatus(connection) == CONNECTION_OK else {
            let message = connection.map { String(cString: PQerrorMessage($0)) } ?? "out of memory"
            PQfinish(connection)
            let reason = Self.firstMeaningfulLine(message)
            // "invalid port number", "invalid sslmode value", …: the URL is malformed, the server was never asked.
            let malformed = reason.hasPrefix("invalid ") && !reason.hasPrefix("invalid password")
            throw Interruption.explain(PostgresError(kind: malformed ? .invalidConnectionString : .connection,
                                                     operation: "connect to \(target.redactedDescription)", message: reason))
        }
        handle = connection
        if let cancel = PQgetCancel(connection) {
            let canceller = Canceller(cancel)
            self.canceller = canceller
            interruptHook = Interruption.onInterrupt { canceller.cancelRunningStatement() }
        }
        // Notices go to `onNotice`; while it is nil they are logged below the default level (our own
        // "skipping" notices are not the operator's business, but -v/-vv shows them).
        // Unretained: libpq only calls back during calls made through `self`.
        PQsetNoticeReceiver(connection, { context, result in
            guard let context, let result else { return }
            let connection = Unmanaged<PostgresConnection>.fromOpaque(context).takeUnretainedValue()
            func field(_ code: UInt8) -> String? { PQresultErrorField(result, Int32(code)).map { String(cString: $0) } }
            let notice = PostgresNotice(severity: field(UInt8(ascii: "V")) ?? field(UInt8(ascii: "S")) ?? "NOTICE",
                                        message: field(UInt8(ascii: "M")) ?? "")
            guard let onNotice = connection.onNotice else {
                connection.logger.log(level: notice.severity == "WARNING" ? .info : .debug, "server \(notice.severity): \(notice.message)")
                return
            }
            onNotice(notice)
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    /// Called with every NOTICE and WARNING the server sends while this is set; nil logs them (debug,
    /// warnings at info).
    public var onNotice: ((PostgresNotice) -> Void)?

    /// Whether the session is inside a transaction block (libpq's `PQtransactionStatus`), so a caller
    /// can notice a transaction that a statement ended behind its back.
    public var transactionState: TransactionState {
        guard let handle else { return .unknown }
        switch PQtransactionStatus(handle) {
        case PQTRANS_IDLE: return .idle
        case PQTRANS_INTRANS: return .inTransaction
        case PQTRANS_INERROR: return .failedTransaction
        case PQTRANS_ACTIVE: return .active
        default: return .unknown
        }
    }

    deinit { close() }

    /// Closes the connection; further use throws.
    public func close() {
        // Removing the hook waits for a PQcancel in flight, so the handle it names is still open then.
        interruptHook?.remove()
        interruptHook = nil
        if let handle { PQfinish(handle) }
        handle = nil
        canceller = nil
    }

    /// Asks the server to cancel the statement running on this connection, if any; safe to call from
    /// another thread while the connection's own thread waits for the result (which then fails).
    public func cancelRunningStatement() {
        canceller?.cancelRunningStatement()
    }

    /// The server's backend process id (as in `pg_stat_activity.pid`).
    public var backendPID: Int32 {
        handle.map { PQbackendPID($0) } ?? 0
    }

    /// The server's version number, e.g. 150018 for 15.18.
    public var serverVersionNumber: Int {
        handle.map { Int(PQserverVersion($0)) } ?? 0
    }

    /// Runs one statement with text parameters (`$1`, `$2`, …) and returns all its rows.
    ///
    /// - Parameters:
    ///   - sql: a single statement.
    ///   - parameters: text values; nil is SQL NULL.
    /// - Returns: the rows, decoded as text.
    /// - Throws: `PostgresError.query` with the server's SQLSTATE, message, detail and hint.
    @discardableResult
    public func query(_ sql: String, _ parameters: [String?] = []) throws -> QueryResult {
        let handle = try openHandle(for: sql)
        canceller?.statementStarts()
        defer { canceller?.statementEnds() }
        let cParameters = parameters.map { $0.map { strdup($0) } ?? nil }
        defer { cParameters.forEach { free($0) } }
        let result = cParameters.map { UnsafePointer($0) }.withUnsafeBufferPointer { buffer in
            PQexecParams(handle, sql, Int32(parameters.count), nil, buffer.baseAddress, nil, nil, 0)
        }
        defer { PQclear(result) }
        let status = PQresultStatus(result)
        guard status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK else {
            throw failure(from: result, sql: sql)
        }
        return QueryResult(copying: result)
    }

    /// Runs a script of one or more statements without parameters (simple query protocol).
    ///
    /// - Throws: `PostgresError.query` for the first failing statement.
    public func execute(script sql: String) throws {
        try exec(sql, expecting: [PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY])
    }

    /// Runs a script given as bytes, sent exactly as they are: they are read by the server in the
    /// connection's `client_encoding`, which need not be UTF-8.
    ///
    /// - Throws: `PostgresError.query` for the first failing statement.
    public func execute(bytes sql: [UInt8]) throws {
        try exec(bytes: sql, expecting: [PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY])
    }

    /// Starts `COPY … FROM STDIN`; send rows with `putCopyData(_:)` and end with `endCopy()`.
    ///
    /// - Throws: `PostgresError.query` if the server refuses the statement.
    public func beginCopy(_ sql: String) throws {
        try beginCopy(bytes: Array(sql.utf8))
    }

    /// `beginCopy(_:)` with the statement as bytes, sent exactly as they are (see `execute(bytes:)`).
    public func beginCopy(bytes sql: [UInt8]) throws {
        try exec(bytes: sql, expecting: [PGRES_COPY_IN])
        copyStatement = String(decoding: sql, as: UTF8.self)
        // The COPY runs until endCopy(): cancellable all along.
        canceller?.statementStarts()
    }

    /// Sends COPY data (whole rows in the COPY text format) for the COPY started by `beginCopy(_:)`.
    ///
    /// - Throws: `PostgresError.connection` if the connection broke; row errors surface at `endCopy()`.
    public func putCopyData(_ bytes: UnsafeRawBufferPointer) throws {
        let handle = try openHandle(for: copyStatement)
        guard let base = bytes.baseAddress else { return }
        var offset = 0
        while offset < bytes.count {
            let length = min(bytes.count - offset, 1 << 30)
            let sent = PQputCopyData(handle, base.advanced(by: offset).assumingMemoryBound(to: CChar.self), Int32(length))
            guard sent == 1 else { throw Interruption.explain(brokenConnection(handle, during: copyStatement)) }
            offset += length
        }
    }

    /// Ends the COPY started by `beginCopy(_:)`.
    ///
    /// - Returns: the number of rows the server stored.
    /// - Throws: `PostgresError.query` with the server's reason (e.g. a malformed row).
    @discardableResult
    public func endCopy() throws -> Int64 {
        let handle = try openHandle(for: copyStatement)
        defer { canceller?.statementEnds() }
        guard PQputCopyEnd(handle, nil) == 1 else { throw Interruption.explain(brokenConnection(handle, during: copyStatement)) }
        let (rows, firstFailure) = copyResults(handle, sql: copyStatement)
        if let firstFailure { throw firstFailure }
        return rows
    }

    /// The results that end a COPY: its row count (`PQcmdTuples`), and the first failure if any
    /// (all results are read, so that the connection is ready for the next statement).
    private func copyResults(_ handle: OpaquePointer, sql: String) -> (rows: Int64, failure: Error?) {
        var rows: Int64 = 0
        var firstFailure: Error?
        while let result = PQgetResult(handle) {
            if PQresultStatus(result) == PGRES_COMMAND_OK {
                rows = Int64(String(cString: PQcmdTuples(result))) ?? 0
            } else if firstFailure == nil {
                firstFailure = failure(from: result, sql: sql)
            }
            PQclear(result)
        }
        return (rows, firstFailure)
    }

    /// Runs `COPY … TO STDOUT` and hands each row (one line of COPY's text format, newline included)
    /// to `row` as the server sends it, without buffering the table.
    ///
    /// If `row` throws, the COPY is cancelled on the server and the rest of its output discarded,
    /// so the connection can be used (or closed) afterwards; the error is rethrown.
    ///
    /// - Parameter sql: the statement, as bytes sent exactly as they are (see `execute(bytes:)`).
    /// - Returns: the rows the server reports it copied (`PQcmdTuples`).
    /// - Throws: `PostgresError.query` with the server's reason; whatever `row` throws.
    @discardableResult
    public func copyOut(bytes sql: [UInt8], row: (UnsafeRawBufferPointer) throws -> Void) throws -> Int64 {
        try exec(bytes: sql, expecting: [PGRES_COPY_OUT])
        let description = String(decoding: sql.prefix(200), as: UTF8.self)
        let handle = try openHandle(for: description)
        canceller?.statementStarts()
        defer { canceller?.statementEnds() }
        var consumerFailure: Error?
        while true {
            var buffer: UnsafeMutablePointer<CChar>?
            let length = PQgetCopyData(handle, &buffer, 0)
            if length > 0, let buffer {
                if consumerFailure == nil {
                    do {
                        try row(UnsafeRawBufferPointer(start: buffer, count: Int(length)))
                    } catch {
                        // Stop the server's side; what it already sent is read and dropped below.
                        consumerFailure = error
                        canceller?.cancelRunningStatement()
                    }
                }
                PQfreemem(buffer)
                continue
            }
            if let buffer { PQfreemem(buffer) }
            if length == -1 { break }
            // -2: the connection broke (or libpq could not read the data).
            if let consumerFailure { throw consumerFailure }
            throw Interruption.explain(brokenConnection(handle, during: description))
        }
        let (rows, firstFailure) = copyResults(handle, sql: description)
        if let consumerFailure { throw consumerFailure }
        if let firstFailure { throw firstFailure }
        return rows
    }

    /// Quotes an identifier the way the server expects (`"my table"`).
    public func quoteIdentifier(_ identifier: String) -> String {
        "\"" + identifier.replacingAll("\"", with: "\"\"") + "\""
    }

    private func openHandle(for sql: String) throws -> OpaquePointer {
        guard let handle else {
            throw PostgresError(kind: .connection, operation: Self.summary(of: sql), message: "connection is closed")
        }
        return handle
    }

    /// Runs `sql` with the simple query protocol; any status but `statuses` is an error.
    private func exec(_ sql: String, expecting statuses: [ExecStatusType]) throws {
        try exec(bytes: Array(sql.utf8), describedAs: sql, expecting: statuses)
    }

    /// The one place statements are sent: bytes as they are (text in the client encoding, which
    /// need not be UTF-8), described in errors by `description`; cancellable while it runs.
    private func exec(bytes sql: [UInt8], describedAs description: String? = nil, expecting statuses: [ExecStatusType]) throws {
        let description = description ?? String(decoding: sql.prefix(200), as: UTF8.self)
        let handle = try openHandle(for: description)
        canceller?.statementStarts()
        defer { canceller?.statementEnds() }
        let terminated = sql + [0]
        let result = terminated.withUnsafeBytes { PQexec(handle, $0.bindMemory(to: CChar.self).baseAddress) }
        defer { PQclear(result) }
        guard statuses.contains(PQresultStatus(result)) else {
            throw failure(from: result, sql: description)
        }
    }

    /// The error a failed statement throws: `InterruptedError` when a signal cancelled it; for a lock
    /// timeout, the server's error naming the sessions that held or queued the lock.
    private func failure(from result: OpaquePointer?, sql: String) -> Error {
        let failure = error(from: result, sql: sql)
        if Interruption.isRequested { return Interruption.explain(failure, serverState: failure.sqlState) }
        if failure.sqlState == PostgresError.lockNotAvailable {
            return failure.with(blockingSessions: LockBlockers.describe(target: target, excluding: [backendPID]))
        }
        return failure
    }

    private func brokenConnection(_ handle: OpaquePointer, during sql: String) -> PostgresError {
        PostgresError(kind: .connection, operation: Self.summary(of: sql),
                      message: Self.firstMeaningfulLine(String(cString: PQerrorMessage(handle))))
    }

    private func error(from result: OpaquePointer?, sql: String) -> PostgresError {
        func field(_ code: Int32) -> String? {
            guard let result, let value = PQresultErrorField(result, code) else { return nil }
            return String(cString: value)
        }
        let fallback = handle.map { String(cString: PQerrorMessage($0)) } ?? "unknown error"
        let brokenConnection = handle.map { PQstatus($0) != CONNECTION_OK } ?? true
        return PostgresError(
            kind: brokenConnection ? .connection : .query,
            operation: Self.summary(of: sql),
            message: field(Int32(UInt8(ascii: "M"))) ?? Self.firstMeaningfulLine(fallback),
            sqlState: field(Int32(UInt8(ascii: "C"))),
            detail: field(Int32(UInt8(ascii: "D"))),
            serverHint: field(Int32(UInt8(ascii: "H"))))
    }

    static func summary(of sql: String) -> String {
        let words = sql.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).prefix(4)
        return words.joined(separator: " ")
    }

    private static func firstMeaningfulLine(_ message: String) -> String {
        // libpq writes `connection to server at "h", port p failed: <reason>` and then advice lines;
        // the reason is what matters, the target is already named by our operation text.
        let first = message.split(separator: "\n").first { !$0.allSatisfy(\.isWhitespace) }.map(String.init) ?? message
        if let range = first.range(of: " failed: ", options: .backwards) {
            return String(first[range.upperBound...]).trimmingTrailingNewlines()
        }
        return first.trimmingTrailingNewlines()
    }
}

/// A NOTICE or WARNING sent by the server (e.g. "there is no transaction in progress").
public struct PostgresNotice: Sendable, Equatable {
    /// `NOTICE`, `WARNING`, `INFO`, … (not localized).
    public var severity: String
    public var message: String
}

/// Where a session stands with respect to a transaction block.
public enum TransactionState: Sendable, Equatable {
    case idle, active, inTransaction, failedTransaction, unknown
}

/// libpq's cancel handle for one connection, and whether a statement is running on it.
///
/// Only a running statement is cancelled: a cancel request that reached an idle connection could
/// otherwise land on the clean-up statement that comes next (a scratch database's DROP). The lock is
/// held while `PQcancel` runs, and `PQcancel` returns once the server has signalled the backend, so a
/// statement that ends meanwhile cannot be followed by a new one before the request was handled (an
/// idle backend drops it).
private final class Canceller: @unchecked Sendable {
    // Safe: `handle` is immutable and freed only in deinit, after the interrupt hook calling
    // `cancelRunningStatement()` was removed (`InterruptHook.remove()` waits for a running hook);
    // `running` is only touched under `lock`.
    private let handle: OpaquePointer
    private let lock = NSLock()
    private var running = 0

    init(_ handle: OpaquePointer) { self.handle = handle }

    deinit { PQfreeCancel(handle) }

    func statementStarts() {
        lock.lock()
        running += 1
        lock.unlock()
    }

    func statementEnds() {
        lock.lock()
        running = max(0, running - 1)
        lock.unlock()
    }

    /// `PQcancel` (thread-safe: it opens its own socket) if a statement is running.
    func cancelRunningStatement() {
        lock.lock()
        defer { lock.unlock() }
        guard running > 0 else { return }
        var buffer = [CChar](repeating: 0, count: 256)
        _ = PQcancel(handle, &buffer, Int32(buffer.count))
    }
}

extension String {
    func replacingAll(_ target: Character, with replacement: String) -> String {
        var output = ""
        for character in self {
            if character == target { output += replacement } else { output.append(character) }
        }
        return output
    }
}
