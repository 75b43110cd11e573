import BackupStorage
import Foundation
@testable import RecoveryKit
import XCTest

/// WAL names at any segment size, `.history` parsing, and the planner's walk along timelines.
final class TimelineHistoryTests: XCTestCase {
    private let mb64: UInt64 = 64 << 20

    func testSegmentNamesFollowTheSegmentSize() {
        // 64 MB: 64 segments per log, so 3F is followed by the next log's 00 (not 40).
        XCTAssertEqual(WALSegmentName.next(after: "00000001000000000000003F", segmentSize: mb64), "000000010000000100000000")
        XCTAssertEqual(WALSegmentName.next(after: "0000000100000000000000FF"), "000000010000000100000000")
        XCTAssertEqual(WALSegmentName.next(after: "00000001000000000000003F"), "000000010000000000000040")
        XCTAssertEqual(WALSegmentName.segment(containing: 0x1_0000_0000, timeline: 2, segmentSize: mb64), "000000020000000100000000")
        XCTAssertEqual(WALSegmentName.segmentNumber(of: "000000010000000100000002", segmentSize: mb64), 66)
        XCTAssertNil(WALSegmentName.segmentNumber(of: "000000010000000000000040", segmentSize: mb64), "no such segment at 64 MB")
        XCTAssertEqual(WALSegmentName.name(timeline: 3, segmentNumber: 66, segmentSize: mb64), "000000030000000100000002")
        XCTAssertEqual(WALSegmentName.timelineNumber(of: "0000000A.history"), 10)
        XCTAssertEqual(WALSegmentName.timelineNumber(of: "000000020000000000000005.partial"), 2)
        XCTAssertNil(WALSegmentName.timelineNumber(of: "000000020000000000000005.00000028.backup"))
    }

    func testHistoryFilesParseWithTheirStopTimes() throws {
        let text = "1\t0/5000120\tbefore transaction 745 at 2026-11-26 12:05:00.123456+00\n\n2\t0/9000000\tno recovery target specified\n"
        let entries = TimelineHistory.parse(text)
        XCTAssertEqual(entries.map(\.timeline), [1, 2])
        XCTAssertEqual(entries.map(\.switchLsn), [0x5000120, 0x9000000])
        let stop = try XCTUnwrap(TimelineHistory.stopTime(in: entries[0].reason))
        XCTAssertEqual(stop.timeIntervalSince1970, Timestamp.parse("2026-11-26T12:05:00.123Z")?.timeIntervalSince1970 ?? 0, accuracy: 0.001)
        XCTAssertEqual(TimelineHistory.stopTime(in: "after transaction 9 at 2026-11-26 13:05:00+01")?.timeIntervalSince1970,
                       Timestamp.parse("2026-11-26T12:05:00Z")?.timeIntervalSince1970)
        XCTAssertEqual(TimelineHistory.stopTime(in: "before 2026-11-26 12:05:00.123456+00")?.timeIntervalSince1970 ?? 0,
                       stop.timeIntervalSince1970, accuracy: 0.001, "PostgreSQL 13 and later write the time alone")
        XCTAssertNil(TimelineHistory.stopTime(in: entries[1].reason))
        let instant = Date(timeIntervalSince1970: 1_705_312_800.123456)
        XCTAssertEqual(Timestamp.parsePostgres(Timestamp.postgres(instant))?.timeIntervalSince1970 ?? 0, instant.timeIntervalSince1970, accuracy: 0.000_001)
        XCTAssertEqual(Timestamp.parsePostgres("2024-01-15 15:30:00.5+05:30")?.timeIntervalSince1970, 1_705_312_800.5)
        XCTAssertNil(Timestamp.parsePostgres("2024-01-15 10:00:00"), "PostgreSQL prints the offset")
        XCTAssertNil(TimelineHistory.stopTime(in: "before transaction 745"), "an xid target names no time")
        XCTAssertNil(TimelineHistory.stopTime(in: "after LSN 0/5000120"))
        XCTAssertNil(TimelineHistory.stopTime(in: "at restore point \"before_b\""))
    }

    private func history() -> TimelineHistory {
        // 1 → 2 at 0/5000120 (a PITR stopped before a transaction at 12:05, promoted 12:30);
        // 2 → 3 at 0/9000000 (a failover at 13:00). Timeline 4 branched off 1 later, at 0/6000000.
        TimelineHistory(histories: [
            2: TimelineHistory.parse("1\t0/5000120\tbefore transaction 745 at 2026-11-26 12:05:00+00\n"),
            3: TimelineHistory.parse("1\t0/5000120\tbefore transaction 745 at 2026-11-26 12:05:00+00\n2\t0/9000000\tno recovery target specified\n"),
            5: TimelineHistory.parse("1\t0/6000000\tno recovery target specified\n"),
        ], beganAt: [2: date("12:30"), 3: date("13:00"), 5: date("14:00")])
    }

    private func date(_ time: String) -> Date { Timestamp.parse("2026-11-26T\(time):00Z") ?? Date() }

    func testPathsLatestAndChildren() throws {
        let history = history()
        XCTAssertEqual(history.latest(from: 1), 3, "as PostgreSQL: history files 2, 3, then 4 is missing")
        XCTAssertEqual(try history.path(to: 3), [.init(timeline: 1, begin: 0, end: 0x5000120), .init(timeline: 2, begin: 0x5000120, end: 0x9000000),
                                                 .init(timeline: 3, begin: 0x9000000, end: nil)])
        XCTAssertEqual(try history.path(to: 1), [.init(timeline: 1, begin: 0, end: nil)])
        XCTAssertThrowsError(try history.path(to: 4)) { XCTAssertTrue("\($0)".contains("00000004.history"), "\($0)") }
        XCTAssertEqual(history.children(of: 1).map(\.child), [2, 5])
        XCTAssertEqual(history.children(of: 2).map(\.child), [3])
        XCTAssertEqual(PointInTimeRestore.describe(try history.path(to: 3), from: 2), "timeline 2 until 0/9000000, then timeline 3")
    }

    func testAbandonedBranchAndEndedTimelineAreRefusedWithTheReason() throws {
        let history = history()
        let path = try history.path(to: 3)
        XCTAssertNoThrow(try PointInTimeRestore.refuseAbandonedBranch(date("12:04"), path: path, history: history))
        XCTAssertNoThrow(try PointInTimeRestore.refuseAbandonedBranch(date("12:31"), path: path, history: history))
        XCTAssertThrowsError(try PointInTimeRestore.refuseAbandonedBranch(date("12:10"), path: path, history: history)) { error in
            let error = RecoveryError.classify(error)
            XCTAssertEqual(error.code, .backupNotFound)
            XCTAssertTrue(error.message.contains("after timeline 1 ended at 2026-11-26T12:05:00.000Z (switched to timeline 2"), error.message)
            XCTAssertTrue(error.hint?.contains("--timeline 1") ?? false, error.hint ?? "")
        }
        // Timeline 2 ended in a failover (no stop time in its child's history): when timeline 3 began.
        XCTAssertNoThrow(try PointInTimeRestore.refuseEndedTimeline(date("12:50"), timeline: 2, history: history))
        XCTAssertThrowsError(try PointInTimeRestore.refuseEndedTimeline(date("13:10"), timeline: 2, history: history)) { error in
            XCTAssertTrue(RecoveryError.classify(error).hint?.contains("--timeline 3") ?? false, "\(error)")
        }
        XCTAssertNoThrow(try PointInTimeRestore.refuseEndedTimeline(date("12:10"), timeline: 3, history: history))
    }

    private func archive(_ names: [String]) -> [StoredObject] {
        names.enumerated().map { StoredObject(key: "wal/\($1.prefix(8))/\($1).gz", size: 1, modified: Date(timeIntervalSince1970: Double($0))) }
    }

    func testTheWALRunFollowsTheSwitchAndIgnoresTheAbandonedBranch() throws {
        let history = history()
        let physical = BackupManifest.Physical(startLsn: "0/3000028", stopLsn: "0/3000100", timeline: 1,
                                               firstWalSegment: "000000010000000000000003", lastWalSegment: "000000010000000000000003")
        // Timeline 1 goes on to 7 (abandoned after 5); timeline 2 begins in segment 5; timeline 3 in 9.
        let objects = archive(["000000010000000000000003", "000000010000000000000004", "000000010000000000000005", "000000010000000000000006",
                               "000000010000000000000007", "00000002.history", "000000020000000000000005", "000000020000000000000006",
                               "000000020000000000000007", "000000020000000000000008", "000000020000000000000009.partial", "00000003.history",
                               "000000030000000000000009", "00000003000000000000000A"])
        let (last, count, _) = try PointInTimeRestore.walRun(from: physical, archive: objects, path: try history.path(to: 3))
        XCTAssertEqual(last, "00000003000000000000000A")
        XCTAssertEqual(count, 8)
        let (lastOnOne, countOnOne, _) = try PointInTimeRestore.walRun(from: physical, archive: objects, path: try history.path(to: 1))
        XCTAssertEqual(lastOnOne, "000000010000000000000007")
        XCTAssertEqual(countOnOne, 5)
        // Without timeline 2's copy of segment 5, recovery along 3 stops there although later segments exist.
        let gapped = objects.filter { !$0.key.hasSuffix("000000020000000000000005.gz") }
        XCTAssertThrowsError(try PointInTimeRestore.walRun(from: physical, archive: gapped, path: try history.path(to: 3))) { error in
            XCTAssertTrue(RecoveryError.classify(error).message.contains("000000020000000000000005 is missing"), "\(error)")
        }
        // A base backup taken on timeline 1 after it switched cannot start recovery along timeline 3.
        let late = BackupManifest.Physical(startLsn: "0/6000028", stopLsn: "0/6000100", timeline: 1,
                                           firstWalSegment: "000000010000000000000006", lastWalSegment: "000000010000000000000006")
        XCTAssertThrowsError(try PointInTimeRestore.checkOnPath(late, path: try history.path(to: 3), target: 3)) { error in
            XCTAssertTrue(RecoveryError.classify(error).message.contains("after that timeline switched to timeline 2 at 0/5000120"), "\(error)")
        }
        XCTAssertNoThrow(try PointInTimeRestore.checkOnPath(physical, path: try history.path(to: 3), target: 3))
    }

    func testTheWALRunCrossesALogBoundaryAt64MB() throws {
        let physical = BackupManifest.Physical(startLsn: "0/F8000028", stopLsn: "0/F8000100", timeline: 1, firstWalSegment: "00000001000000000000003E",
                                               lastWalSegment: "00000001000000000000003E", walSegmentSize: mb64)
        let objects = archive(["00000001000000000000003E", "00000001000000000000003F", "000000010000000100000000", "000000010000000100000001"])
        let (last, count, _) = try PointInTimeRestore.walRun(from: physical, archive: objects)
        XCTAssertEqual(last, "000000010000000100000001")
        XCTAssertEqual(count, 4)
    }

    /// Issue 8 (round 7): a gap refuses `latest`, times, names and LSNs at or after it, never an LSN
    /// before it; issue 11: an LSN past the last archived segment is refused without a gap too.
    func testAGapRefusesOnlyTargetsThatMayLieAtOrAfterIt() throws {
        let physical = BackupManifest.Physical(startLsn: "0/6000028", stopLsn: "0/60001B0", timeline: 1,
                                               firstWalSegment: "000000010000000000000006", lastWalSegment: "000000010000000000000006")
        let whole = archive((6...15).map { String(format: "0000000100000000000000%02X", $0) })
        let gapped = whole.filter { !$0.key.hasSuffix("00000001000000000000000A.gz") }
        func refusal(_ target: RecoveryTarget, _ objects: [StoredObject], major: Int? = 16) -> String? {
            do {
                _ = try PointInTimeRestore.walRun(from: physical, archive: objects, target: target, serverMajor: major)
                return nil
            } catch {
                return RecoveryError.classify(error).message + " HINT: " + (RecoveryError.classify(error).hint ?? "")
            }
        }
        let (last, count, _) = try PointInTimeRestore.walRun(from: physical, archive: gapped, target: .lsn(0x0700_0000), serverMajor: 16)
        XCTAssertEqual(last, "000000010000000000000009")
        XCTAssertEqual(count, 4)
        XCTAssertNil(refusal(.lsn(0x09FF_FFFF), gapped))
        for target in [RecoveryTarget.lsn(0x0A00_0000), .lsn(0x0C00_0000), .latest, .time(Date(timeIntervalSince1970: 7)), .name("before_gap")] {
            let message = try XCTUnwrap(refusal(target, gapped), "\(target)")
            XCTAssertTrue(message.contains("00000001000000000000000A is missing"), message)
            XCTAssertTrue(message.contains("--target-lsn below 0/A000000"), message)
        }
        // Before PostgreSQL 13 recovery promoted at the end of WAL short of its target: no target passes a gap.
        XCTAssertTrue(refusal(.lsn(0x0700_0000), gapped, major: 12)?.contains("PostgreSQL 12 promotes at the end of WAL short of its target") ?? false)
        // Without a gap: an LSN inside the last archived segment is accepted, one past it refused.
        XCTAssertNil(refusal(.lsn(0x0FFF_FFFF), whole))
        let beyond = try XCTUnwrap(refusal(.lsn(0x1000_0000), whole))
        XCTAssertTrue(beyond.contains("target LSN 0/10000000 is beyond the archived WAL: the last archived segment, 00000001000000000000000F, ends at 0/10000000"), beyond)
        XCTAssertNotNil(refusal(.lsn(0xFF_0000_0000), whole))
    }

    /// Issue 11 (round 7): the FATAL a recovery that ended names is the server's own, not the one
    /// our watching connection got a moment later.
    func testTheRecoveryFailureIsTheServersFATALNotAClients() throws {
        let log = NSTemporaryDirectory() + "/recovery-\(UUID().uuidString).log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        try """
        2026-11-27 06:20:01.100 UTC [4242] LOG:  restored log file "000000010000000000000010" from archive
        2026-11-27 06:20:01.200 UTC [4242] FATAL:  recovery ended before configured recovery target was reached
        2026-11-27 06:20:01.210 UTC [4240] LOG:  startup process (PID 4242) exited with exit code 1
        2026-11-27 06:20:01.250 UTC [4250] FATAL:  the database system is in recovery mode
        2026-11-27 06:20:01.300 UTC [4251] FATAL:  the database system is shutting down
        2026-11-27 06:20:01.310 UTC [4252] FATAL:  role "nobody" does not exist
        """.write(toFile: log, atomically: true, encoding: .utf8)
        let failure = try XCTUnwrap(PointInTimeRestore.recoveryFailure(log: log))
        XCTAssertTrue(failure.hasPrefix("FATAL:  recovery ended before configured recovery target was reached"), failure)
        XCTAssertTrue(failure.contains("000000010000000000000011 was not in the archive"), failure)
        // A server reason that says "does not exist" is still the server's.
        try "2026-11-27 06:20:01 UTC [1] FATAL:  recovery target timeline 5 does not exist\n2026-11-27 06:20:02 UTC [2] FATAL:  the database system is starting up\n"
            .write(toFile: log, atomically: true, encoding: .utf8)
        XCTAssertEqual(PointInTimeRestore.recoveryFailure(log: log).map { String($0.prefix(55)) }, "FATAL:  recovery target timeline 5 does not exist")
    }
}

/// The manifest fields issue 17 added, and manifests written before them.
final class StandbyManifestFieldsTests: XCTestCase {
    func testSegmentSizeStandbyAndTimelineRoundTripAndOlderManifestsMean16MB() throws {
        var manifest = BackupManifestTests.sample()
        manifest.kind = .physical
        manifest.fromStandby = true
        manifest.timeline = 3
        manifest.physical = .init(startLsn: "0/F8000028", stopLsn: "0/F8000100", timeline: 3, firstWalSegment: "00000003000000000000003E",
                                  lastWalSegment: "00000003000000000000003E", walSegmentSize: 64 << 20)
        let text = String(decoding: try manifest.encoded(), as: UTF8.self)
        for field in ["\"from_standby\" : true", "\"timeline\" : 3", "\"wal_segment_size\" : 67108864"] {
            XCTAssertTrue(text.contains(field), text)
        }
        let decoded = try BackupManifest.decode(try manifest.encoded(), source: "test")
        XCTAssertEqual(decoded, manifest)
        XCTAssertEqual(decoded.physical?.segmentSize, 64 << 20)

        // Written before these fields existed: no standby claim, 16 MB segments.
        var older = manifest
        older.fromStandby = nil
        older.timeline = nil
        older.physical?.walSegmentSize = nil
        let olderText = String(decoding: try older.encoded(), as: UTF8.self)
        XCTAssertFalse(olderText.contains("wal_segment_size") || olderText.contains("from_standby"), olderText)
        XCTAssertEqual(try BackupManifest.decode(Data(olderText.utf8), source: "old").physical?.segmentSize, 16 << 20)
    }
}

/// What "the latest timeline" may be.
final class LatestTimelineTests: XCTestCase {
    /// Found by an outside attack: timeline 2's segments archived without 00000002.history (a server
    /// promoted by --pitr with archiving off, then archiving as the primary): 'latest' stopped at timeline
    /// 1 and restored its abandoned end with exit 0. Refused, naming the file and the fix.
    func testLatestRefusesAHigherTimelineArchivedWithoutItsHistory() throws {
        let objects = ["wal/00000001/000000010000000000000003.gz", "wal/00000001/000000010000000000000004.gz",
                       "wal/00000002/000000020000000000000004.gz", "wal/00000002/000000020000000000000005.partial.gz"]
            .map { StoredObject(key: $0, size: 1, modified: nil) }
        XCTAssertThrowsError(try PointInTimeRestore.refuseTimelineWithoutHistory(above: 1, archive: objects)) { error in
            let refusal = error as? RecoveryError
            XCTAssertTrue(refusal?.message.contains("timeline 2 (from 000000020000000000000004)") == true
                          && refusal?.message.contains("00000002.history") == true, "\(error)")
            XCTAssertTrue(refusal?.hint?.contains("--timeline 1") == true, "\(error)")
        }
        XCTAssertNoThrow(try PointInTimeRestore.refuseTimelineWithoutHistory(above: 2, archive: objects))
        XCTAssertNoThrow(try PointInTimeRestore.refuseTimelineWithoutHistory(above: 1, archive: Array(objects.prefix(2))))
    }
}
