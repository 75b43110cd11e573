#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import ProcessSignals

/// Holds off SIGINT, SIGTERM and SIGHUP for a critical section (the swap, while the target is
/// closed to connections): a signal is recorded instead of ending the process, the section sees it
/// through `received` and ends on purpose, and `release()` puts the previous handlers back and, if
/// one of them was a handler of the program's own, delivers the signal to it.
final class SignalDeferral {
    static let signals: [Int32] = [SIGINT, SIGTERM, SIGHUP]
    private var previous: [(Int32, sigaction)] = []
    private var released = false

    init() {
        signalDeferralReceived = 0
        for signal in Self.signals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { signalDeferralReceived = $0 }
            sigemptyset(&action.sa_mask)
            action.sa_flags = 0
            var old = sigaction()
            if sigaction(signal, &action, &old) == 0 { previous.append((signal, old)) }
        }
    }

    deinit { release() }

    /// The signal that arrived since `init`, if any.
    var received: Int32? {
        let signal = signalDeferralReceived
        return signal == 0 ? nil : signal
    }

    /// Restores the previous handlers; a signal held off is passed on to a handler the program had
    /// installed (with the default action, the caller has already turned it into an error).
    func release() {
        guard !released else { return }
        released = true
        let pending = received
        var passOn = false
        for (signal, old) in previous {
            var restored = old
            sigaction(signal, &restored, nil)
            if signal == pending {
                let handler = old.__sigaction_handler.sa_handler.map { unsafeBitCast($0, to: Int.self) } ?? 0
                passOn = handler > 1 || old.sa_flags & Int32(SA_SIGINFO) != 0   // 0 is SIG_DFL, 1 is SIG_IGN
            }
        }
        // Our own handler (ProcessSignals) is told without running its hooks: what runs next is the
        // section's clean-up (the scratch DROP), which a late PQcancel would cancel.
        if let pending, passOn { Interruption.recordHandled(pending) }
    }

    /// `SIGTERM`, `SIGINT`, `SIGHUP`.
    static func name(_ signal: Int32) -> String {
        switch signal {
        case SIGINT: return "SIGINT"
        case SIGTERM: return "SIGTERM"
        case SIGHUP: return "SIGHUP"
        default: return "signal \(signal)"
        }
    }
}

/// Written only by the signal handler above and read by the thread in the critical section; a
/// `sig_atomic_t` is the one type a handler may safely store to.
nonisolated(unsafe) private var signalDeferralReceived: sig_atomic_t = 0
