import Foundation
@testable import RecoveryKit
import XCTest

final class ToolDatabasesTests: XCTestCase {
    func testMarkersRoundTripAndRejectForeignText() {
        var marker = ToolDatabases.Marker(.preRestore, target: "app \"quoted\"", backup: "20261124T020000Z-3fa2",
                                          at: Date(timeIntervalSince1970: 1_800_000_000))
        marker.closedForSwap = true
        let json = marker.json
        XCTAssertTrue(json.contains("\"kind\":\"pre_restore\""), json)
        XCTAssertTrue(json.contains("\"closed_for_swap\":true"), json)
        XCTAssertEqual(ToolDatabases.Marker.parse(json), marker)
        marker.database = "app_pre_restore_20261124_020000"
        XCTAssertTrue(marker.json.contains("\"database\":\"app_pre_restore_20261124_020000\""), marker.json)
        XCTAssertNil(ToolDatabases.Marker.parse("set by hand"))
        XCTAssertNil(ToolDatabases.Marker.parse("{\"kind\":\"mine\",\"target\":\"x\",\"at\":\"\"}"))
    }
}
