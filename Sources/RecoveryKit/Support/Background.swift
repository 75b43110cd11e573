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

    /// Blocks until the work has finished and returns its error, if it failed: the root cause when
    /// another failure (a child program's) was only its consequence.
    func failure() -> Error? {
        do {
            _ = try wait()
            return nil
        } catch {
            return error
        }
    }
}
