import Foundation

/// `lock_timeout` and `statement_timeout` for every session a tool opens, so that no run waits forever
/// behind a lock or a stuck statement (and no `idle_in_transaction_session_timeout`, which would end
/// the snapshot connection while pg_dump streams).
///
/// Carried in the connection target's `options` (`-c lock_timeout=… -c statement_timeout=…`), so that
/// every connection made from the target — and libpq programs given its environment (`PGOPTIONS`) —
/// gets them from its first statement on. A value the operator already put in `options` wins.
public struct SessionLimits: Sendable, Equatable {
    /// Longest wait for a lock, in seconds (`--lock-wait`).
    public var lockWaitSeconds: Int
    /// Longest single statement, in seconds: a net against a hang, far above any real statement
    /// (a count or a COPY of the largest table), not a performance limit.
    public var statementSeconds: Int

    /// Five minutes: longer than any lock a healthy application holds, far shorter than a night.
    public static let defaultLockWaitSeconds = 300
    /// Twelve hours.
    public static let defaultStatementSeconds = 12 * 3600

    public init(lockWaitSeconds: Int = SessionLimits.defaultLockWaitSeconds,
                statementSeconds: Int = SessionLimits.defaultStatementSeconds) {
        self.lockWaitSeconds = lockWaitSeconds
        self.statementSeconds = statementSeconds
    }

    /// `target` with these limits in its `options`, after whatever options it already had.
    public func applied(to target: ConnectionTarget) -> ConnectionTarget {
        let existing = target.value("options") ?? ""
        var options: [String] = []
        if !existing.contains("lock_timeout") { options.append("-c lock_timeout=\(Self.milliseconds(lockWaitSeconds))") }
        if !existing.contains("statement_timeout") { options.append("-c statement_timeout=\(Self.milliseconds(statementSeconds))") }
        // The snapshot connection sits idle in its transaction while pg_dump streams (pg_dump turns this
        // off for its own session too); a server-wide idle timeout would kill it and fail the backup.
        if !existing.contains("idle_in_transaction_session_timeout") { options.append("-c idle_in_transaction_session_timeout=0") }
        guard !options.isEmpty else { return target }
        return target.with("options", ([existing] + options).filter { !$0.isEmpty }.joined(separator: " "))
    }

    /// Seconds as the server's milliseconds, saturating instead of overflowing.
    static func milliseconds(_ seconds: Int) -> Int {
        let (product, overflow) = max(0, seconds).multipliedReportingOverflow(by: 1000)
        return overflow ? Int(Int32.max) : min(product, Int(Int32.max))
    }

    /// Parses `--lock-wait` values: `90`, `90s`, `5m`, `1h` (seconds when no unit).
    ///
    /// - Returns: seconds, or nil when the text is not such a duration (or is zero or absurd).
    public static func parseDuration(_ text: String) -> Int? {
        var digits = Substring(text.trimmingCharacters(in: .whitespaces) )
        var unit = 1
        switch digits.last {
        case "s": digits.removeLast()
        case "m": digits.removeLast(); unit = 60
        case "h": digits.removeLast(); unit = 3600
        default: break
        }
        guard !digits.isEmpty, digits.allSatisfy(\.isASCIIDigit), let value = Int(digits) else { return nil }
        let (seconds, overflow) = value.multipliedReportingOverflow(by: unit)
        guard !overflow, (1...(7 * 24 * 3600)).contains(seconds) else { return nil }
        return seconds
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}
