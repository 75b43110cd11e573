import Foundation

/// Runs one piece of work on its own thread while the caller does something else; `wait()` joins it.
///
/// Used where two waits on different resources can overlap, e.g. counting rows on the snapshot's
/// connection while pg_dump streams the same snapshot. Public so tests can bound a wait the same way.
// @unchecked Sendable: `work` (and what it captures) is handed to one thread and not touched by the caller until
// `wait()`/`join()`; `result` is written before `done.signal()` and read only after `done.wait()`; `joined` is under `lock`.
public final class Background<Value>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private let work: () throws -> Value
    private var result: Result<Value, Error>?
    private var joined = false

    public init(_ work: @escaping () throws -> Value) {
        self.work = work
        Thread.detachNewThread { [self] in
            result = Result { try self.work() }
            done.signal()
        }
    }

    /// Blocks until the work has finished; returns its value or rethrows its error.
    public func wait() throws -> Value {
        lock.withLock {
            if !joined {
                done.wait()
                joined = true
            }
        }
        guard let result else { preconditionFailure("Background work signalled without a result") }
        return try result.get()
    }

    /// Blocks until the work has finished, ignoring its outcome (for cleanup paths).
    public func join() { _ = try? wait() }

    /// True once the work has finished, waiting at most `seconds` for it.
    public func finished(within seconds: Double) -> Bool {
        lock.withLock {
            if joined { return true }
            guard done.wait(timeout: .now() + seconds) == .success else { return false }
            joined = true
            return true
        }
    }

    /// The work's error if it fails within `seconds` (nil if it succeeded or is still running): the
    /// root cause when another failure (a child program's) may have been only its consequence.
    public func failure(within seconds: Double) -> Error? {
        guard finished(within: seconds), case .failure(let error) = result else { return nil }
        return error
    }
}
