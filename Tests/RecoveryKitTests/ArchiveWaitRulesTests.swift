import Foundation
@testable import RecoveryKit
import XCTest

/// The rules `dbbackup --physical` applies to the server's wait for its WAL to be archived, from
/// samples of `pg_stat_progress_basebackup` and `pg_stat_archiver` (ArchiveWaitTests runs them on a real server).
final class ArchiveWaitRulesTests: XCTestCase {
    private let start = Date(timeIntervalSince1970: 1_800_000_000)

    private func sample(_ phase: String?, failed: Int = 0, failedWAL: String? = nil, archived: String? = "000000010000000000000003",
                        failingNow: Bool = false, running: Bool = false) -> ArchiveWait.Sample {
        ArchiveWait.Sample(walsender: 42, phase: phase, failedCount: failed, lastFailedWAL: failedWAL, lastFailedTime: failedWAL == nil ? nil : "2027-01-15T02:00:01Z",
                           lastArchivedWAL: archived, failingNow: failingNow, commandRunning: running)
    }

    private func lines(_ actions: [ArchiveWait.Action]) -> [String] {
        actions.compactMap { if case .say(let line) = $0 { return line } else { return nil } }
    }

    private func gaveUp(_ actions: [ArchiveWait.Action]) -> ArchiveWait.GaveUp? {
        actions.lazy.compactMap { if case .giveUp(let gaveUp) = $0 { return gaveUp } else { return nil } }.first
    }

    func testAFailureDuringTheWaitIsSaidOnceNamingTheSegmentAndTheWaitIsGivenUpAfterTheTimeout() {
        var wait = ArchiveWait(backup: "B", timeoutSeconds: 60, reportSeconds: 30)
        // Failures from before the run (archiving broke long ago) are the baseline.
        XCTAssertEqual(wait.observe(sample("streaming database files", failed: 7, failedWAL: "000000010000000000000004", failingNow: true), at: start), [])
        // Stuck already when the wait begins (the archiver's latest attempt failed): said at once.
        let warned = lines(wait.observe(sample(ArchiveWait.archivePhase, failed: 7, failedWAL: "000000010000000000000004", failingNow: true),
                                        at: start.addingTimeInterval(1)))
        XCTAssertEqual(warned.count, 1)
        XCTAssertTrue(warned.first?.contains("archive_command is failing on 000000010000000000000004 (failing since before the backup began") == true, "\(warned)")
        XCTAssertTrue(warned.first?.contains("the server log says why") == true, "\(warned)")
        let failing = sample(ArchiveWait.archivePhase, failed: 8, failedWAL: "000000010000000000000004", failingNow: true)
        XCTAssertEqual(wait.observe(failing, at: start.addingTimeInterval(2)), [], "said once per segment")
        // Another segment failing (the first was archived, then the next one fails) is said again.
        let next = lines(wait.observe(sample(ArchiveWait.archivePhase, failed: 9, failedWAL: "000000010000000000000005", archived: "000000010000000000000004",
                                             failingNow: true), at: start.addingTimeInterval(3)))
        XCTAssertTrue(next.first?.contains("failing on 000000010000000000000005 (2 failures since the backup began") == true, "\(next)")
        XCTAssertNil(gaveUp(wait.observe(sample(ArchiveWait.archivePhase, failed: 10, failedWAL: "000000010000000000000005", archived: "000000010000000000000004",
                                                failingNow: true), at: start.addingTimeInterval(62))), "the clock restarted when 04 was archived")
        let end = wait.observe(sample(ArchiveWait.archivePhase, failed: 11, failedWAL: "000000010000000000000005", archived: "000000010000000000000004",
                                      failingNow: true), at: start.addingTimeInterval(63))
        let given = try? XCTUnwrap(gaveUp(end))
        XCTAssertEqual(given?.failingSegment, "000000010000000000000005")
        XCTAssertEqual(given?.failures, 4)
        let error = ArchiveWait.error(given ?? ArchiveWait.GaveUp(failingSegment: nil, failures: 0, lastFailureTime: nil, lastArchived: nil, waitedSeconds: 0), timeoutSeconds: 60)
        XCTAssertEqual(error.code, .archiveTimeout)
        XCTAssertTrue(error.message.contains("archive_command failed on WAL segment 000000010000000000000005 (4 failures since the backup began"), error.message)
    }

    func testASlowArchiverThatKeepsArchivingIsReportedAndNeverGivenUp() {
        var wait = ArchiveWait(backup: "B", timeoutSeconds: 60, reportSeconds: 30)
        var said: [String] = []
        for second in 0...300 {
            // A backlog: one segment archived every 50 s (within the timeout), no failure.
            let archived = String(format: "0000000100000000000000%02X", 3 + second / 50)
            let actions = wait.observe(sample(ArchiveWait.archivePhase, archived: archived), at: start.addingTimeInterval(Double(second)))
            XCTAssertNil(gaveUp(actions), "given up at \(second) s while the archiver kept going")
            said += lines(actions)
        }
        XCTAssertEqual(said.count, 10, said.joined(separator: "\n"))
        XCTAssertTrue(said.allSatisfy { $0.contains("s for the server to archive its last WAL segment") && !$0.contains("warning") }, said.joined(separator: "\n"))
    }

    func testAHungArchiverWithoutFailuresIsGivenUpWithoutNamingASegment() {
        var wait = ArchiveWait(backup: "B", timeoutSeconds: 10, reportSeconds: 30)
        XCTAssertNil(gaveUp(wait.observe(sample(ArchiveWait.archivePhase), at: start)))
        let given = gaveUp(wait.observe(sample(ArchiveWait.archivePhase), at: start.addingTimeInterval(10)))
        XCTAssertNotNil(given)
        XCTAssertNil(given?.failingSegment)
        XCTAssertTrue(ArchiveWait.error(given ?? ArchiveWait.GaveUp(failingSegment: nil, failures: 0, lastFailureTime: nil, lastArchived: nil, waitedSeconds: 0), timeoutSeconds: 10)
            .message.contains("though archive_command reported no failure"))
    }

    /// archive_command failed on 04, then its retry hangs (PostgreSQL 15's ArchiveCommand wait event
    /// at every look, no attempt ending): the wait says it is hung, not failing, and gives up saying so.
    func testAHungCallAfterAnEarlierFailureIsCalledHungNotFailing() {
        var wait = ArchiveWait(backup: "B", timeoutSeconds: 60, reportSeconds: 30)
        let failed = "000000010000000000000004"
        let first = lines(wait.observe(sample(ArchiveWait.archivePhase, failed: 3, failedWAL: failed, failingNow: true), at: start))
        XCTAssertTrue(first.first?.contains("archive_command is failing on \(failed)") == true, "\(first)")
        var said: [String] = []
        var given: ArchiveWait.GaveUp?
        for second in 1...60 {
            let actions = wait.observe(sample(ArchiveWait.archivePhase, failed: 3, failedWAL: failed, failingNow: true, running: true),
                                       at: start.addingTimeInterval(Double(second)))
            said += lines(actions)
            given = given ?? gaveUp(actions)
        }
        XCTAssertEqual(said.filter { $0.contains("warning") }.count, 1, said.joined(separator: "\n"))
        XCTAssertTrue(said.first?.contains("archive_command has been running for 10 s without returning (it failed earlier on \(failed))") == true,
                      said.joined(separator: "\n"))
        XCTAssertTrue(said.contains { $0.contains("archive_command running for 40 s without returning") }, said.joined(separator: "\n"))
        let hung = try? XCTUnwrap(given)
        XCTAssertNil(hung?.failingSegment)
        XCTAssertEqual(hung?.commandRunningSeconds, 59)
        let error = ArchiveWait.error(hung ?? ArchiveWait.GaveUp(failingSegment: nil, failures: 0, lastFailureTime: nil, lastArchived: nil, waitedSeconds: 0),
                                      timeoutSeconds: 60)
        XCTAssertTrue(error.message.contains("archive_command has been running for 59 s without returning"), error.message)
        XCTAssertTrue(error.message.contains("the call running now is hung, not failing"), error.message)
        XCTAssertTrue(error.hint?.contains("hung or slow") == true)
    }

    /// A command that keeps failing is seen running at many looks (each retry), but every attempt
    /// ends with a failure counted: never called hung.
    func testRetriesThatKeepFailingAreNeverCalledHung() {
        var wait = ArchiveWait(backup: "B", timeoutSeconds: 20, reportSeconds: 30)
        var said: [String] = []
        var given: ArchiveWait.GaveUp?
        for second in 0...20 {
            let actions = wait.observe(sample(ArchiveWait.archivePhase, failed: second / 2, failedWAL: "000000010000000000000004", failingNow: true, running: true),
                                       at: start.addingTimeInterval(Double(second)))
            said += lines(actions)
            given = given ?? gaveUp(actions)
        }
        XCTAssertFalse(said.contains { $0.contains("without returning") }, said.joined(separator: "\n"))
        XCTAssertEqual(given?.failingSegment, "000000010000000000000004")
        XCTAssertNil(given?.commandRunningSeconds)
    }

    /// A command that fails slowly (each call ~20 s, a connect timeout): its calls run past the 10 s
    /// mark, but once one has ended in a failure the next is not called hung within that time, and
    /// the give-up names the failing segment.
    func testACommandThatFailsSlowlyIsFailingNotHung() {
        var wait = ArchiveWait(backup: "B", timeoutSeconds: 60, reportSeconds: 300)
        var said: [String] = []
        var given: ArchiveWait.GaveUp?
        for second in 0...60 {
            let failed = second / 21   // a call starts every 21 s and fails after 20
            let running = second % 21 != 20
            let actions = wait.observe(sample(ArchiveWait.archivePhase, failed: failed, failedWAL: failed > 0 ? "000000010000000000000004" : nil,
                                              failingNow: failed > 0, running: running), at: start.addingTimeInterval(Double(second)))
            said += lines(actions)
            given = given ?? gaveUp(actions)
        }
        XCTAssertEqual(said.filter { $0.contains("without returning") }.count, 1, "only the first slow call, before any failed: \(said)")
        XCTAssertEqual(given?.failingSegment, "000000010000000000000004", "\(String(describing: given))")
        XCTAssertNil(given?.commandRunningSeconds)
    }

    /// A role that cannot see the archiver (no pg_read_all_stats) cannot tell a hang from the last
    /// failure: the error says so and how to fix it.
    func testARoleThatCannotSeeTheArchiverIsToldWhy() {
        var wait = ArchiveWait(backup: "B", timeoutSeconds: 10, reportSeconds: 300)
        var hidden = sample(ArchiveWait.archivePhase, failed: 2, failedWAL: "000000010000000000000004", failingNow: true)
        hidden.archiverVisible = false
        _ = wait.observe(hidden, at: start)
        let given = gaveUp(wait.observe(hidden, at: start.addingTimeInterval(10)))
        let error = ArchiveWait.error(given ?? ArchiveWait.GaveUp(failingSegment: nil, failures: 0, lastFailureTime: nil, lastArchived: nil, waitedSeconds: 0),
                                      timeoutSeconds: 10)
        XCTAssertTrue(error.hint?.contains("GRANT pg_read_all_stats") == true, error.hint ?? "")
    }

    func testALongCheckpointIsTalkedAboutButNotBounded() {
        var wait = ArchiveWait(backup: "B", timeoutSeconds: 5, reportSeconds: 30)
        XCTAssertEqual(wait.observe(sample(ArchiveWait.checkpointPhase), at: start), [])
        let actions = wait.observe(sample(ArchiveWait.checkpointPhase), at: start.addingTimeInterval(30))
        XCTAssertEqual(lines(actions).count, 1)
        XCTAssertTrue(lines(actions).first?.contains("for the server's checkpoint") == true)
        XCTAssertEqual(wait.observe(sample(ArchiveWait.checkpointPhase), at: start.addingTimeInterval(31)), [], "one line per 30 s")
        let late = wait.observe(sample(ArchiveWait.checkpointPhase), at: start.addingTimeInterval(600))
        XCTAssertNil(gaveUp(late))
        XCTAssertEqual(lines(late).count, 1)
    }
}
