#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
internal import CSignalPipe

/// SIGINT, SIGTERM and SIGHUP turned into a run's cancellation.
///
/// The first signal sets a process-wide flag and, from a dedicated thread, runs the hooks that make
/// blocked work return: child programs are sent SIGTERM, running libpq statements are cancelled
/// (`PQcancel`). The code that was blocked then fails, sees `isRequested` (or calls `check()`), throws
/// `InterruptedError`, and the run unwinds through its ordinary error paths, which remove what it
/// made. The tool exits 130. A second signal exits 130 at once, from the signal handler.
///
/// Process-wide by nature (a signal is delivered to the process, not to a value), so this is the
/// one deliberate exception to "no process-global state" (DESIGN.md).
public enum Interruption {
    private static let registry = HookRegistry()

    /// Installs the signal handlers and starts the thread that runs the hooks. Call once, first thing
    /// in `main`; later calls do nothing.
    ///
    /// - Parameter tool: named in the message printed when a second signal ends the run at once.
    public static func installSignalHandlers(tool: String) {
        registry.install(tool: tool)
    }

    /// The first signal received, if any.
    public static var signal: Int32? {
        let number = CSignalPipe_received()
        return number == 0 ? nil : Int32(number)
    }

    /// True once a signal asked the run to stop.
    public static var isRequested: Bool { CSignalPipe_received() != 0 }

    /// Throws `InterruptedError` if a signal asked the run to stop; call it where a loop can stop.
    public static func check() throws {
        if let signal { throw InterruptedError(signal: signal) }
    }

    /// Waits `seconds`, in slices of at most 50 ms so that a SIGINT/SIGTERM ends the wait at once
    /// (`InterruptedError`). With `interruptible` false (clean-up that must still run after the
    /// signal) it simply sleeps.
    public static func pause(_ seconds: TimeInterval, interruptible: Bool = true) throws {
        guard interruptible else { return Thread.sleep(forTimeInterval: max(0, seconds)) }
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            try check()
            Thread.sleep(forTimeInterval: min(0.05, max(0, end.timeIntervalSinceNow)))
        }
        try check()
    }

    /// `error` unchanged, or `InterruptedError` when a signal is what made it happen.
    ///
    /// Used where a failure (a killed child, a cancelled statement, a closed pipe) is the consequence
    /// of the interruption rather than a problem of its own.
    /// - Parameter serverState: the SQLSTATE of a failed statement, carried in the `InterruptedError`
    ///   so that clean-up after the signal can still tell a cancel it may retry (57014) from a refusal.
    public static func explain(_ error: Error, serverState: String? = nil) -> Error {
        if error is InterruptedError { return error }
        if let signal { return InterruptedError(signal: signal, cause: "\(error)", serverState: serverState) }
        return error
    }

    /// Registers work to run once, on a thread of its own, when the first signal arrives: it must only
    /// make blocked work return (send a signal, cancel a statement), never clean up itself.
    ///
    /// - Returns: a registration; call `remove()` (or let it go) when the work it guards is over.
    ///   A hook registered after the signal does not run (it belongs to clean-up work).
    public static func onInterrupt(_ hook: @escaping @Sendable () -> Void) -> InterruptHook {
        InterruptHook(registry: registry, identifier: registry.add(hook))
    }

    /// Runs `body` as a critical section with SIGINT, SIGTERM and SIGHUP held off (the database swap,
    /// while the target is closed to connections): a signal is recorded instead of acted on, `body`
    /// sees it through `signals.received` and ends on purpose, leaving things as they should be.
    ///
    /// Afterwards the previous handlers are back; if the held-off signal had ours, the run counts as
    /// interrupted from then on but the hooks do not run, since what runs next is the section's own
    /// clean-up (the scratch DROP), which a late `PQcancel` or SIGTERM would break. A signal the process
    /// ignores (`nohup`) stays ignored. One section at a time (not reentrant).
    public static func deferring<T>(_ body: (DeferredSignals) throws -> T) rethrows -> T {
        CSignalPipe_defer_begin()
        defer { _ = CSignalPipe_defer_end() }
        return try body(DeferredSignals())
    }

    /// Runs `body` (a blocking read of the operator's answer) so that a signal ends the process at
    /// once, exit 130: a prompt has nothing to clean up, and a read restarted after the signal would
    /// otherwise ignore Ctrl-C until Enter.
    public static func atPrompt<T>(_ body: () throws -> T) rethrows -> T {
        registry.setPrompting(true)
        defer { registry.setPrompting(false) }
        return try body()
    }

    /// `SIGTERM`, `SIGINT`, `SIGHUP` or `signal N`.
    public static func name(of signal: Int32) -> String {
        switch signal {
        case SIGINT: return "SIGINT"
        case SIGTERM: return "SIGTERM"
        case SIGHUP: return "SIGHUP"
        default: return "signal \(signal)"
        }
    }
}

/// What a critical section (`Interruption.deferring`) sees of the signals it holds off.
public struct DeferredSignals: Sendable {
    fileprivate init() {}

    /// The signal that arrived since the section began, if any.
    public var received: Int32? {
        let number = CSignalPipe_deferred()
        return number == 0 ? nil : Int32(number)
    }
}

/// A run was stopped by a signal. Classified as exit 130.
public struct InterruptedError: Error, CustomStringConvertible, Sendable {
    public let signal: Int32
    /// The failure the interruption caused, for `--verbose`-style diagnostics; never shown as the reason.
    public let cause: String?
    /// The SQLSTATE of the server error the interruption turned into this one, if it was one: the
    /// clean-up's own statements retry a cancel (57014) that the signal's hook aimed at their predecessor.
    public let serverState: String?

    /// - Parameters:
    ///   - signal: the signal that stopped the run.
    ///   - cause: the failure it caused, kept for diagnostics only.
    ///   - serverState: the SQLSTATE of that failure, when the server gave one.
    public init(signal: Int32, cause: String? = nil, serverState: String? = nil) {
        self.signal = signal
        self.cause = cause
        self.serverState = serverState
    }

    public var description: String { "interrupted by \(Interruption.name(of: signal))" }
}

/// One registered interrupt hook; removes itself when released.
public final class InterruptHook: Sendable {
    private let registry: HookRegistry
    private let identifier: Int

    fileprivate init(registry: HookRegistry, identifier: Int) {
        self.registry = registry
        self.identifier = identifier
    }

    deinit { remove() }

    /// Unregisters the hook; when it is running right now, waits until it has finished, so that what
    /// it acts on (a PID, a cancel handle) may be released safely afterwards.
    public func remove() { registry.remove(identifier) }
}

/// Hooks by identifier, and the thread that runs them when the pipe says a signal came.
private final class HookRegistry: @unchecked Sendable {
    // Safe: every mutable field is read and written under `lock`.
    private let lock = NSCondition()
    private var hooks: [Int: @Sendable () -> Void] = [:]
    private var nextIdentifier = 0
    private var fired = false
    /// Hooks running now; `remove` waits for its own to finish.
    private var running: Set<Int> = []
    private var installed = false
    private var prompting = false
    private var tool = "dbrecovery"

    func install(tool: String) {
        lock.lock()
        defer { lock.unlock() }
        guard !installed else { return }
        installed = true
        self.tool = tool
        let descriptor = CSignalPipe_install("\n\(tool): second signal: exiting at once; clean-up skipped, the next run repairs what is left\n")
        guard descriptor >= 0 else {
            TextSink.standardError.write("\(tool): warning: cannot install signal handlers: \(String(cString: strerror(errno)))\n")
            return
        }
        let thread = Thread { [self] in
            var byte: UInt8 = 0
            while true {
                let count = read(descriptor, &byte, 1)
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { return }
                // Only a signal this process received (never a byte from a child between fork and exec).
                if CSignalPipe_received() != 0 { runHooks() }
            }
        }
        thread.name = "dbrecovery.signals"
        thread.start()
    }

    func setPrompting(_ value: Bool) {
        lock.lock()
        defer { lock.unlock() }
        prompting = value
        if value && fired { exitAtPrompt() }
    }

    /// Called with `lock` held.
    private func exitAtPrompt() -> Never {
        TextSink.standardError.write("\n\(tool): error: interrupted at the prompt; nothing was changed\nHINT: run the command again when ready\n")
        // _exit, not exit: the main thread is inside readLine holding stdin's lock.
        _exit(130)
    }

    func add(_ hook: @escaping @Sendable () -> Void) -> Int {
        lock.lock()
        defer { lock.unlock() }
        nextIdentifier += 1
        if !fired { hooks[nextIdentifier] = hook }
        return nextIdentifier
    }

    func remove(_ identifier: Int) {
        lock.lock()
        defer { lock.unlock() }
        hooks.removeValue(forKey: identifier)
        while running.contains(identifier) { lock.wait() }
    }

    /// Runs every hook at once, each on its own thread: a `PQcancel` to a server that does not answer
    /// must not delay the SIGTERM to a child.
    private func runHooks() {
        lock.lock()
        guard !fired else {
            lock.unlock()
            return
        }
        fired = true
        if prompting && installed { exitAtPrompt() }
        let pending = hooks
        hooks.removeAll()
        running = Set(pending.keys)
        lock.unlock()
        for (identifier, hook) in pending {
            Thread.detachNewThread { [self] in
                hook()
                lock.lock()
                running.remove(identifier)
                lock.broadcast()
                lock.unlock()
            }
        }
    }
}
