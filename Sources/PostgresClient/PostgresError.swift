/// A failure reported by libpq or by the server, carrying the SQLSTATE when the server sent one.
public struct PostgresError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable {
        /// Could not connect or authenticate; nothing was done on the server.
        case connection
        /// The server rejected a statement; `sqlState` says why.
        case query
        /// The connection string itself is malformed.
        case invalidConnectionString
        /// A result did not have the shape the caller expected.
        case protocolViolation
    }

    public let kind: Kind
    /// What we were doing, such as `connect to 127.0.0.1:5432/app` or the statement's first words.
    public let operation: String
    /// The server's or libpq's primary message, without trailing newline.
    public let message: String
    /// Five-character SQLSTATE, for `.query` errors.
    public let sqlState: String?
    public let detail: String?
    public let serverHint: String?
    /// For a lock timeout: "blocked by …", the sessions that held or queued the lock we waited for, as
    /// found right after (`LockBlockers`).
    public private(set) var blockingSessions: String?

    /// SQLSTATE of `lock_timeout` (and `NOWAIT`) failures.
    public static let lockNotAvailable = "55P03"
    /// SQLSTATE of a cancelled statement (`statement_timeout`, `PQcancel`).
    public static let queryCanceled = "57014"
    /// `deadlock_detected`: the server aborted this transaction to break a cycle of lock waits.
    public static let deadlockDetected = "40P01"
    /// `object_in_use`: e.g. DROP DATABASE while a session is still connecting to it.
    public static let objectInUse = "55006"

    /// The same error, naming the sessions that blocked the statement.
    public func with(blockingSessions: String?) -> PostgresError {
        var copy = self
        copy.blockingSessions = blockingSessions
        return copy
    }

    public init(kind: Kind, operation: String, message: String, sqlState: String? = nil,
                detail: String? = nil, serverHint: String? = nil) {
        self.kind = kind
        self.operation = operation
        self.message = message
        self.sqlState = sqlState
        self.detail = detail
        self.serverHint = serverHint
    }

    public var description: String {
        var text = "\(operation): \(message)"
        if let sqlState { text += " (SQLSTATE \(sqlState))" }
        // Which sessions waited for what: the only record of a deadlock the operator gets.
        if sqlState == Self.deadlockDetected, let detail { text += ": " + detail.split(whereSeparator: \.isNewline).joined(separator: " ") }
        if let blockingSessions { text += "; \(blockingSessions)" }
        return text
    }

    /// True when the server refused the credentials, as opposed to being unreachable.
    public var isAuthenticationFailure: Bool {
        message.contains("password authentication failed") || message.contains("authentication failed")
            || message.contains("no password supplied") || sqlState == "28P01" || sqlState == "28000"
    }
}
