import Foundation
import Logging
import PostgresClient
import ProcessSignals

/// Runs the statements of a database swap so that a lock wait cannot outlast the signal or the
/// swap's deadline.
///
/// The swap holds SIGINT/SIGTERM/SIGHUP off (`Interruption.deferring`), so the interrupt hooks that
/// cancel running statements do not run; and a statement waiting for a lock (another session's open
/// transaction after `COMMENT ON DATABASE`, or one that changed the database's settings) waits for
/// as long as `lock_timeout` (`--lock-wait`, 5 min by default) allows. While a statement runs, a
/// thread of its own watches both: a held-off signal or the passing of `--swap-timeout` cancels the
/// statement (`PQcancel`), and a wait of more than a few seconds is reported on stderr with the
/// sessions it waits for, asked of the server while the wait lasts (`pg_blocking_pids`).
final class SwapWatch: Sendable {
    /// Why a statement was cancelled.
    enum Stop: Sendable, Equatable {
        case signal(Int32)
        case deadline
    }

    private let target: String
    private let timeout: TimeInterval
    private let deadline: Date
    private let signal: @Sendable () -> Int32?
    private let reportAfter: TimeInterval
    private let report: @Sendable (String) -> Void

    /// - Parameters:
    ///   - target: the database being swapped, for the messages.
    ///   - timeout: `--swap-timeout`: the whole swap, lock waits included, ends by then.
    ///   - signal: the signal that arrived, if any (the swap's held-off one).
    ///   - reportAfter: how long a statement waits before the sessions it waits for are named.
    ///   - report: where that line goes (stderr; called from the watching thread).
    init(target: String, timeout: TimeInterval, signal: @escaping @Sendable () -> Int32?, reportAfter: TimeInterval = 3,
         report: @escaping @Sendable (String) -> Void = SwapWatch.standardError) {
        self.target = target
        self.timeout = timeout
        self.deadline = Date().addingTimeInterval(timeout)
        self.signal = signal
        self.reportAfter = reportAfter
        self.report = report
    }

    /// Whether the swap's deadline has passed.
    var expired: Bool { Date() >= deadline }

    /// Through the tools' log (stderr, `dbrestore: warning: …`): silenced by `--quiet` like every warning,
    /// and safe from the watch thread.
    @Sendable static func standardError(_ line: String) {
        logger.warning("\(line)")
    }

    private static let logger = Logger(label: "dbrecovery.restore")

    /// Runs `body` (statements on `admin`) under watch.
    ///
    /// A statement that completes is never undone: when the signal or the deadline came too late to
    /// cancel it (it committed first), `body`'s result is returned and the caller sees the signal itself.
    ///
    /// - Throws: what `body` throws; when the watch cancelled it, `RecoveryError(.interrupted)` for
    ///   a signal, `RecoveryError(.lockTimeout)` naming the sessions waited for at the deadline.
    func run<T>(on admin: PostgresConnection, _ body: () throws -> T) throws -> T {
        let watcher = Watcher(connection: Cancellable(admin), pid: admin.backendPID, server: admin.target)
        let thread = Thread { [self] in watch(watcher) }
        thread.name = "dbrecovery.swap-watch"
        thread.start()
        let result = Result { try body() }
        let (stop, blockers) = watcher.finish()
        switch (result, stop) {
        case (.success(let value), _):
            return value
        case (.failure, .signal(let number)?):
            throw RecoveryError(.interrupted, "interrupted by \(Interruption.name(of: number)) during the swap; \(target) is unchanged and open",
                                hint: "run dbrestore again to restore")
        case (.failure(let error as PostgresError), .deadline?) where error.sqlState == PostgresError.queryCanceled:
            let named = blockers.map { $0.isEmpty ? "" : ": waited for " + $0.map(\.description).joined(separator: "; ") } ?? ""
            let ending = (blockers ?? []).compactMap(\.endingQuery).joined(separator: "; ")
            throw RecoveryError(.lockTimeout,
                                "the swap of \(target) waited longer than --swap-timeout (\(Int(timeout)) s) for a lock\(named); \(target) is unchanged and open",
                                hint: (ending.isEmpty ? "end that transaction" : "end it (\(ending)) or let it finish")
                                    + ", then run again (or raise --swap-timeout)")
        case (.failure(let error), _):
            throw error
        }
    }

    /// Until the statement is over: cancel it at a signal, or at the deadline if it waits for a lock
    /// (again at each turn: a cancel reaches only a running statement, so one sent between two
    /// statements is not lost); name what it waits for once it has waited `reportAfter`, and again
    /// just before the deadline cancels it.
    private func watch(_ watcher: Watcher) {
        let started = Date()
        var reported = false
        var nextLook = Date.distantPast
        while !watcher.isFinished {
            if !watcher.isStopped {
                if let number = signal() {
                    watcher.stop(.signal(number), blockers: nil)
                } else if expired && Date() >= nextLook {
                    // Only a lock wait is cancelled at the deadline: a statement that waits for nobody (the
                    // catalogue reads between attempts) ends on its own and the caller says why the swap stopped.
                    let blockers = LockBlockers.waitedFor(by: watcher.pid, target: watcher.server)
                    if blockers.map({ !$0.isEmpty }) ?? true { watcher.stop(.deadline, blockers: blockers) }
                    nextLook = Date().addingTimeInterval(1)
                } else if !reported && Date().timeIntervalSince(started) >= reportAfter {
                    reported = true
                    if let blockers = LockBlockers.waitedFor(by: watcher.pid, target: watcher.server), !blockers.isEmpty {
                        report("the swap of \(target) has waited \(Int(reportAfter)) s for a lock held by "
                               + blockers.map(\.description).joined(separator: "; ") + "; it gives up at --swap-timeout (\(Int(timeout)) s)")
                    }
                }
            }
            if watcher.isStopped { watcher.connection.cancel() }
            watcher.pause(0.05)
        }
    }
}

/// The one thing the watching thread does to the connection: `PQcancel` (thread-safe).
private struct Cancellable: @unchecked Sendable {
    // Safe: only `cancelRunningStatement()` is called from the other thread, and the watch ends
    // (`Watcher.finish()` waits for it) before `run` returns the connection to its owner.
    private let connection: PostgresConnection
    init(_ connection: PostgresConnection) { self.connection = connection }
    func cancel() { connection.cancelRunningStatement() }
}

/// The state shared by the statement's thread and the watching one.
private final class Watcher: @unchecked Sendable {
    // Safe: every mutable field is read and written under `condition`.
    let connection: Cancellable
    let pid: Int32
    let server: ConnectionTarget
    private let condition = NSCondition()
    private var finished = false
    private var exited = false
    private var reason: SwapWatch.Stop?
    private var blockers: [LockBlockers.Blocker]?

    init(connection: Cancellable, pid: Int32, server: ConnectionTarget) {
        self.connection = connection
        self.pid = pid
        self.server = server
    }

    var isFinished: Bool {
        condition.lock()
        defer { condition.unlock() }
        if finished { exited = true; condition.broadcast() }
        return finished
    }

    var isStopped: Bool {
        condition.lock()
        defer { condition.unlock() }
        return reason != nil
    }

    func stop(_ why: SwapWatch.Stop, blockers: [LockBlockers.Blocker]?) {
        condition.lock()
        defer { condition.unlock() }
        reason = why
        self.blockers = blockers
    }

    /// Sleeps up to `seconds`, less when the statement ends meanwhile.
    func pause(_ seconds: TimeInterval) {
        condition.lock()
        defer { condition.unlock() }
        if !finished { _ = condition.wait(until: Date().addingTimeInterval(seconds)) }
    }

    /// Ends the watch and waits until the watching thread has left its loop (no cancel after this).
    func finish() -> (SwapWatch.Stop?, [LockBlockers.Blocker]?) {
        condition.lock()
        defer { condition.unlock() }
        finished = true
        condition.broadcast()
        while !exited { condition.wait() }
        return (reason, blockers)
    }
}
