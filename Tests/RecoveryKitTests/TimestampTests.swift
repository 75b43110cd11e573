import Foundation
import RecoveryKit
import XCTest

/// The one UTC formatter: every text form the toolkit writes (manifests, ids, SigV4, kept databases,
/// recovery targets) and reads back.
final class TimestampTests: XCTestCase {
    /// 2024-01-15 10:00:00.123456 UTC.
    private let instant = Date(timeIntervalSince1970: 1_705_312_800.123456)

    func testISO8601WithMillisecondsRoundTripsAndPlainISO8601Parses() throws {
        XCTAssertEqual(Timestamp.format(instant), "2024-01-15T10:00:00.123Z")
        let parsed = try XCTUnwrap(Timestamp.parse("2024-01-15T10:00:00.123Z"))
        XCTAssertEqual(parsed.timeIntervalSince1970, 1_705_312_800.123, accuracy: 0.0005)
        XCTAssertEqual(Timestamp.parse("2024-01-15T10:00:00Z"), Date(timeIntervalSince1970: 1_705_312_800))
        // S3 listings write an offset form too.
        XCTAssertEqual(Timestamp.parse("2024-01-15T11:00:00+01:00"), Date(timeIntervalSince1970: 1_705_312_800))
        XCTAssertNil(Timestamp.parse("yesterday"))
    }

    func testCompactFormsSortAsTextAndStandInNames() {
        XCTAssertEqual(Timestamp.compact(instant), "20240115T100000Z")
        XCTAssertEqual(Timestamp.compact(instant, separator: "_", zone: ""), "20240115_100000")
        XCTAssertTrue(BackupID.isValid(BackupID.make(at: instant)))
        XCTAssertTrue(BackupID.make(at: instant).hasPrefix("20240115T100000Z-"))
    }

    /// Two backups within one second sort in the order they were taken (`latest` is the newest).
    func testIdentifiersOfOneSecondSortByTheMillisecond() {
        let second = Date(timeIntervalSince1970: 1_705_312_800)
        let ids = stride(from: 0.0, to: 0.999, by: 0.0123).map { BackupID.make(at: second.addingTimeInterval($0)) }
        XCTAssertEqual(ids, ids.sorted(), "ids sort as they were taken")
        XCTAssertTrue(ids.allSatisfy(BackupID.isValid))
        XCTAssertEqual(Set(ids.map { $0.prefix(16) }), ["20240115T100000Z"])
    }

    func testPostgresInputKeepsMicrosecondsAndIsUTC() {
        XCTAssertEqual(Timestamp.postgres(instant), "2024-01-15 10:00:00.123456+00")
        XCTAssertEqual(Timestamp.postgres(Date(timeIntervalSince1970: 0)), "1970-01-01 00:00:00.000000+00")
        XCTAssertEqual(Timestamp.postgres(Date(timeIntervalSince1970: -0.5)), "1969-12-31 23:59:59.500000+00")
    }

    func testOperatorInputIsUTCUnlessAnOffsetIsGiven() {
        let hour = Date(timeIntervalSince1970: 1_705_312_800)
        XCTAssertEqual(Timestamp.parseOperatorTime("2024-01-15 10:00:00"), hour)
        XCTAssertEqual(Timestamp.parseOperatorTime("2024-01-15T10:00:00"), hour)
        XCTAssertEqual(Timestamp.parseOperatorTime("2024-01-15 12:00:00+02:00"), hour)
        XCTAssertEqual(Timestamp.parseOperatorTime("2024-01-15T10:00:00Z"), hour)
        XCTAssertEqual(Timestamp.parseOperatorTime("2024-01-15 10:00:00.250")?.timeIntervalSince1970 ?? 0,
                       1_705_312_800.25, accuracy: 0.0005)
        XCTAssertNil(Timestamp.parseOperatorTime("15/01/2024 10:00"))
    }

    /// Issue 4 (round 7): a target time keeps every microsecond the operator typed, in each form
    /// PostgreSQL and psql print, and is written back to recovery_target_time digit for digit.
    func testOperatorTimesKeepMicrosecondsAndRoundTripExactly() throws {
        let forms = ["2026-11-27 06:09:53.047548", "2026-11-27T06:09:53.047548", "2026-11-27 06:09:53.047548+00",
                     "2026-11-27 06:09:53.047548Z", "2026-11-27 08:09:53.047548+02:00", "2026-11-27 01:39:53.047548-0430",
                     "2026-11-27T06:09:53.0475475Z"]
        for form in forms {
            let date = try XCTUnwrap(Timestamp.parseOperatorTime(form), form)
            XCTAssertEqual(Timestamp.postgres(date), "2026-11-27 06:09:53.047548+00", form)
        }
        XCTAssertEqual(Timestamp.operatorMicroseconds("2026-11-27 06:09:53.704966+00"), 1_795_759_793_704_966)
        XCTAssertEqual(Timestamp.operatorMicroseconds("1970-01-01 00:00:00"), 0)
        XCTAssertEqual(Timestamp.operatorMicroseconds("1969-12-31 23:59:59.5"), -500_000)
        XCTAssertEqual(Timestamp.operatorMicroseconds("2024-02-29 00:00:00"), 1_709_164_800_000_000)
        // Every microsecond of a second survives the Double of a Date and back.
        for micros in stride(from: Int64(1_795_759_793_000_000), to: 1_795_759_794_000_000, by: 997) {
            XCTAssertEqual(Int64((Double(micros) / 1_000_000 * 1_000_000).rounded()), micros)
        }
        for bad in ["2023-02-29 00:00:00", "2026-13-01 00:00:00", "2026-11-27 24:00:00", "2026-11-27 06:09:53.", "2026-11-27 06:09:53+16",
                    "2026-11-27 06:09:53 garbage", "2026-11-27 06:09"] {
            XCTAssertNil(Timestamp.operatorMicroseconds(bad), bad)
        }
    }
}
