@testable import BackupStorage
import Foundation
import XCTest

/// Round 8, finding 3: S3 takes at most 10,000 parts per upload, so with a fixed 16 MiB part no
/// backup above 156 GiB could ever be stored (and it failed only at the very end, every night).
/// Parts now double every 1,000 up to 512 MiB: terabytes fit, small objects keep small parts.
final class S3PartScheduleTests: XCTestCase {
    private let mebibyte = 1024 * 1024
    private let tebibyte: UInt64 = 1 << 40

    func testPartsDoubleEveryThousandUpToTheCap() {
        let schedule = S3PartSchedule(base: 16 * mebibyte)
        XCTAssertEqual(schedule.size(ofPart: 1), 16 * mebibyte)
        XCTAssertEqual(schedule.size(ofPart: 1000), 16 * mebibyte, "an object below 15.6 GiB keeps the configured part size")
        XCTAssertEqual(schedule.size(ofPart: 1001), 32 * mebibyte)
        XCTAssertEqual(schedule.size(ofPart: 2001), 64 * mebibyte)
        XCTAssertEqual(schedule.size(ofPart: 5001), 512 * mebibyte)
        XCTAssertEqual(schedule.size(ofPart: 10_000), 512 * mebibyte, "never above the cap: each part is held in memory")
        // A base above the cap stays as configured (S3 allows parts of up to 5 GiB).
        XCTAssertEqual(S3PartSchedule(base: 1024 * mebibyte).size(ofPart: 9_999), 1024 * mebibyte)
    }

    func testEveryAllowedBasePartSizeHoldsMoreThanOneTebibyteInTenThousandParts() {
        for megabytes in [5, 8, 16, 64, 100, 512, 5120] {
            let schedule = S3PartSchedule(base: megabytes * mebibyte)
            XCTAssertGreaterThanOrEqual(schedule.ceiling, tebibyte, "base \(megabytes) MiB")
            // The object at the ceiling takes exactly 10,000 parts; one byte more cannot be uploaded.
            XCTAssertEqual(schedule.parts(for: schedule.ceiling), S3PartSchedule.maximumParts, "base \(megabytes) MiB")
            XCTAssertNil(schedule.parts(for: schedule.ceiling + 1), "base \(megabytes) MiB")
            guard let forOneTiB = schedule.parts(for: tebibyte) else { return XCTFail("1 TiB must fit with base \(megabytes) MiB") }
            XCTAssertLessThanOrEqual(forOneTiB, S3PartSchedule.maximumParts)
        }
        // The default: 2.9 TiB (the old fixed 16 MiB part stopped at 156.25 GiB).
        XCTAssertEqual(S3PartSchedule(base: 16 * mebibyte).ceiling, UInt64(3_056_000) * UInt64(mebibyte))
        XCTAssertEqual(S3PartSchedule(base: 16 * mebibyte).parts(for: 600 * (1 << 30)), 5_232, "a 600 GiB base backup")
        XCTAssertEqual(S3PartSchedule(base: 16 * mebibyte).parts(for: 0), 1, "an empty object is one (empty) part")
    }

    func testAShorterStepAndALowerLimitAreHonouredForTests() {
        let schedule = S3PartSchedule(base: 5 * mebibyte, partsPerStep: 2, partLimit: 3)
        XCTAssertEqual((1...7).map { schedule.size(ofPart: $0) / mebibyte }, [5, 5, 10, 10, 20, 20, 40])
        XCTAssertEqual(schedule.ceiling, UInt64(20 * mebibyte))
        XCTAssertNil(schedule.parts(for: UInt64(20 * mebibyte) + 1))
    }
}
