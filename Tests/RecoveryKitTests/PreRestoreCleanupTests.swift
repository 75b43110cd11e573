import Foundation
@testable import RecoveryKit
import XCTest

final class PreRestoreCleanupTests: XCTestCase {
    func testKeepsTheNewestAndTheYoungOnes() {
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let day: TimeInterval = 86_400
        let dates: [Date?] = [now - 1 * day, now - 3 * day, now - 10 * day, nil, now - 20 * day]
        let week = RetentionDuration(hours: 7 * 24, text: "7d")
        let plan = PreRestoreCleanup.plan(dates: dates, keep: 1, keepWithin: week, now: now)
        XCTAssertEqual(plan.map { $0 == nil }, [false, false, true, false, true])
        XCTAssertEqual(plan[1], "younger than 7d")
        XCTAssertEqual(plan[3], "set aside at an unknown time", "an undated copy is kept")
        XCTAssertEqual(PreRestoreCleanup.plan(dates: dates, keep: 0, keepWithin: nil, now: now).map { $0 == nil }, [true, true, true, false, true])
    }
}
