import Foundation
@testable import RecoveryKit
import Synchronization
import XCTest

/// Issue 21 item 4: the background pusher and prefetcher run many segments at once so that their
/// round trips overlap, but compress or decompress them in turns, the oldest first and never
/// more at once than there are slots (cores): PostgreSQL waits for the oldest segment, and eight
/// segments compressed at once on two cores are all ready only when the last one is.
final class CPUTurnsTests: XCTestCase {
    /// What the turns did, shared by the test's threads.
    final class Record: Sendable {
        let state = Mutex<(order: [String], running: Int, most: Int)>(([], 0, 0))
    }

    func testTheOldestWaitingSegmentGoesFirstAndNoMoreThanTheSlotsAtOnce() {
        let turns = CPUTurns(slots: 2)
        let names = (1...8).map { String(format: "00000001000000000000%04X", $0) }
        let log = Record()
        // Both slots held while every other segment queues, in an order unlike the names'.
        let release = DispatchSemaphore(value: 0), holding = DispatchSemaphore(value: 0)
        let group = DispatchGroup()
        for holder in ["00000001000000000000FFF0", "00000001000000000000FFF1"] {
            group.enter()
            Thread.detachNewThread {
                turns.run(holder) {
                    holding.signal()
                    release.wait()
                }
                group.leave()
            }
        }
        holding.wait()
        holding.wait()
        for name in names.shuffled() {
            group.enter()
            Thread.detachNewThread {
                turns.run(name) {
                    log.state.withLock { state in
                        state.order.append(name)
                        state.running += 1
                        state.most = max(state.most, state.running)
                    }
                    usleep(20_000)
                    log.state.withLock { $0.running -= 1 }
                }
                group.leave()
            }
        }
        usleep(200_000)   // every segment is waiting for a turn by now
        XCTAssertEqual(log.state.withLock { $0.order }, [], "no turn while both slots are held")
        release.signal()
        release.signal()
        XCTAssertEqual(group.wait(timeout: .now() + 30), .success)
        let result = log.state.withLock { $0 }
        XCTAssertLessThanOrEqual(result.most, 2, "never more at once than the slots")
        // Two slots: each turn goes to one of the two oldest still waiting.
        XCTAssertEqual(result.order.sorted(), names)
        for (index, name) in result.order.enumerated() {
            let waiting = names.filter { !result.order[..<index].contains($0) }
            XCTAssertTrue(waiting.prefix(2).contains(name), "turn \(index) went to \(name) with older segments waiting: \(result.order)")
        }
        XCTAssertEqual(result.order.first.map { [names[0], names[1]].contains($0) }, true, "the oldest segment is among the first two")
    }

    func testOneSlotIsStrictlyOldestFirstAndTwoCallersOfOneNameBothRun() {
        let turns = CPUTurns(slots: 1)
        let names = ["000000010000000000000003", "000000010000000000000001", "000000010000000000000002", "000000010000000000000001"]
        let order = Record()
        let release = DispatchSemaphore(value: 0), holding = DispatchSemaphore(value: 0)
        let group = DispatchGroup()
        group.enter()
        Thread.detachNewThread {
            turns.run("00000001000000000000FFFF") {
                holding.signal()
                release.wait()
            }
            group.leave()
        }
        holding.wait()
        for name in names {
            group.enter()
            Thread.detachNewThread {
                turns.run(name) { order.state.withLock { $0.order.append(name) } }
                group.leave()
            }
        }
        usleep(200_000)
        release.signal()
        XCTAssertEqual(group.wait(timeout: .now() + 30), .success, "a name asked for twice does not block the second caller")
        XCTAssertEqual(order.state.withLock { $0.order }, names.sorted())
    }
}
