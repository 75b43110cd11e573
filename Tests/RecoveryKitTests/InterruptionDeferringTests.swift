import Foundation
import ProcessSignals
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// `Interruption.deferring`, the critical section the database swap runs in. (With the tools' own
/// handlers installed, SignalTests and RestoreSafetyTests cover it end to end; these tests leave the
/// process's handlers as they were, so nothing else in the run is interrupted.)
final class InterruptionDeferringTests: XCTestCase {
    private func handler(of signal: Int32) -> Int {
        var current = sigaction()
        sigaction(signal, nil, &current)
        return current.__sigaction_handler.sa_handler.map { unsafeBitCast($0, to: Int.self) } ?? 0
    }

    /// A SIGTERM inside the section is recorded, not fatal; afterwards the previous (default) handler is
    /// back and, since it was not ours, the run does not count as interrupted.
    func testASignalInsideTheSectionIsHeldOffAndSeenByTheSection() {
        let before = handler(of: SIGTERM)
        let seen: (Int32?, Int32?) = Interruption.deferring { signals in
            let first = signals.received
            raise(SIGTERM)
            return (first, signals.received)
        }
        XCTAssertNil(seen.0)
        XCTAssertEqual(seen.1, SIGTERM)
        XCTAssertEqual(handler(of: SIGTERM), before, "the previous handler must be back")
        XCTAssertFalse(Interruption.isRequested, "a held-off signal with the default action is the section's to act on")
        // A later section starts clean.
        XCTAssertNil(Interruption.deferring { $0.received })
    }

    /// A signal the process ignores (`nohup`'s SIGHUP) stays ignored: it must not abandon the swap.
    func testAnIgnoredSignalStaysIgnored() {
        let previous = signal(SIGHUP, SIG_IGN)
        defer { signal(SIGHUP, previous) }
        let seen = Interruption.deferring { signals in
            raise(SIGHUP)
            return signals.received
        }
        XCTAssertNil(seen)
        XCTAssertEqual(handler(of: SIGHUP), 1, "SIGHUP is still SIG_IGN")
    }
}
