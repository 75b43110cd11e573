import Foundation
import ProcessSignals

/// Runs a piece of work again when the server refused it in a way that left nothing done: a
/// deadlock it broke by aborting our transaction (40P01), a cancel meant for a statement that had
/// just ended (57014), a database still in use for a moment (55006). The one retry loop of the
/// toolkit: the selective swap, a migration plan that is one transaction, and the drop of our
/// own scratch databases.
enum ServerRetry {
    /// - Parameters:
    ///   - states: the SQLSTATEs (of a `PostgresError`, or of a `RecoveryError` wrapping one) that
    ///     mean the attempt changed nothing.
    ///   - attempts: runs at most; the last failure is thrown.
    ///   - pause: seconds waited after the first failure, as much more after each next one.
    ///   - afterInterruption: whether to go on once a signal asked the run to stop (the clean-up's
    ///     own drops must; new work must not).
    ///   - again: told the attempt that failed and its error before the next run (to roll back, or
    ///     to say what happened).
    static func run<T>(on states: Set<String>, attempts: Int, pause: Double, afterInterruption: Bool = false,
                       again: (_ attempt: Int, _ error: Error) -> Void = { _, _ in }, _ body: () throws -> T) throws -> T {
        var attempt = 1
        while true {
            do {
                return try body()
            } catch {
                guard attempt < attempts, afterInterruption || !Interruption.isRequested,
                      let state = RecoveryError.serverState(of: error), states.contains(state) else { throw error }
                again(attempt, error)
                usleep(UInt32(pause * 1_000_000 * Double(attempt)))
                attempt += 1
            }
        }
    }
}
