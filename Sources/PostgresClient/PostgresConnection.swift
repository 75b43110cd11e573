#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
internal import CLibPQ

/// One libpq connection. Not thread-safe: use it from one thread at a time.
///
/// Deliberately narrow (connect, query with text parameters, a few typed decoders): libpq does
/// the talking for row counts, snapshots, locks, migrations and restores (COPY FROM STDIN);
/// pg_dump and pg_basebackup do the rest.
public final class PostgresConnection {
    private var handle: OpaquePointer?
    /// The COPY statement in progress, for error messages.
    private var copyStatement = ""
    /// The target this connection was opened with (for messages; never includes the password).
    public let target: ConnectionTarget

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
            throw PostgresError(kind: .connection, operation: "connect to \(target.redactedDescription)",
                                message: Self.firstMeaningfulLine(message))
        }
        handle = connection
        // Our own notices (e.g. "table does not exist, skipping") are not the operator's business.
        PQsetNoticeProcessor(connection, { _, _ in }, nil)
    }

    deinit { close() }

    /// Closes the connection; further use throws.
    public func close() {
        if let handle { PQfinish(handle) }
        handle = nil
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
        let cParameters = parameters.map { $0.map { strdup($0) } ?? nil }
        defer { cParameters.forEach { free($0) } }
        let result = cParameters.map { UnsafePointer($0) }.withUnsafeBufferPointer { buffer in
            PQexecParams(handle, sql, Int32(parameters.count), nil, buffer.baseAddress, nil, nil, 0)
        }
        defer { PQclear(result) }
        let status = PQresultStatus(result)
        guard status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK else {
            throw error(from: result, sql: sql)
        }
        return QueryResult(copying: result)
    }

    /// Runs a script of one or more statements without parameters (simple query protocol).
    ///
    /// - Throws: `PostgresError.query` for the first failing statement.
    public func execute(script sql: String) throws {
        try exec(sql, expecting: [PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY])
    }

    /// Starts `COPY … FROM STDIN`; send rows with `putCopyData(_:)` and end with `endCopy()`.
    ///
    /// - Throws: `PostgresError.query` if the server refuses the statement.
    public func beginCopy(_ sql: String) throws {
        try exec(sql, expecting: [PGRES_COPY_IN])
        copyStatement = sql
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
            guard sent == 1 else { throw brokenConnection(handle, during: copyStatement) }
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
        guard PQputCopyEnd(handle, nil) == 1 else { throw brokenConnection(handle, during: copyStatement) }
        var rows: Int64 = 0
        var failure: PostgresError?
        while let result = PQgetResult(handle) {
            if PQresultStatus(result) == PGRES_COMMAND_OK {
                rows = Int64(String(cString: PQcmdTuples(result))) ?? 0
            } else if failure == nil {
                failure = error(from: result, sql: copyStatement)
            }
            PQclear(result)
        }
        if let failure { throw failure }
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
        let handle = try openHandle(for: sql)
        let result = PQexec(handle, sql)
        defer { PQclear(result) }
        guard statuses.contains(PQresultStatus(result)) else {
            throw error(from: result, sql: sql)
        }
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

    private static func summary(of sql: String) -> String {
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

extension String {
    func replacingAll(_ target: Character, with replacement: String) -> String {
        var output = ""
        for character in self {
            if character == target { output += replacement } else { output.append(character) }
        }
        return output
    }
}
