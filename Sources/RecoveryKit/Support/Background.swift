import Foundation

/// Runs one piece of work on its own thread while the caller does something else; `wait()` joins it.
///
/// Used where two waits on different resources can overlap, e.g. counting rows on the snapshot's
/// connection while pg_dump streams the same snapshot.
final class Background<Value>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<Value, Error>?
    private var joined = false

    init(_ work: @escaping () throws -> Value) {
        Thread.detachNewThread { [self] in
            result = Result { try work() }
            done.signal()
        }
    }

    /// Blocks until the work has finished; returns its value or rethrows its error.
    func wait() throws -> Value {
        if !joined {
            done.wait()
            joined = true
        }
        guard let result else { preconditionFailure("Background work signalled without a result") }
        return try result.get()
    }

    /// Blocks until the work has finished, ignoring its outcome (for cleanup paths).
    func join() { _ = try? wait() }

    /// True once the work has finished, waiting at most `seconds` for it.
    func finished(within seconds: Double) -> Bool {
        if joined { return true }
        guard done.wait(timeout: .now() + seconds) == .success else { return false }
        joined = true
        return true
    }

    /// The work's error if it fails within `seconds` (nil if it succeeded or is still running): the
    /// root cause when another failure (a child program's) may have been only its consequence.
    func failure(within seconds: Double) -> Error? {
        guard finished(within: seconds), case .failure(let error) = result else { return nil }
        return error
    }
}
