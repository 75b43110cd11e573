@testable import RecoveryKit
import XCTest

final class DatabasePropertiesTests: XCTestCase {
    func testSecretLookingSettingsAreMaskedForDisplayOnly() {
        let properties = DatabaseProperties(
            encoding: "UTF8", collate: "C", ctype: "C", localeProvider: "libc", providerLocale: nil, owner: "app", privileges: nil,
            comment: nil, connectionLimit: -1, allowConnections: true, settings: ["app.jwt_secret=s3cr3t=x", "work_mem=4MB"],
            roleSettings: [.init(role: "api", settings: ["app.api_key=k"])])
        let shown = properties.maskedForDisplay
        XCTAssertEqual(shown.settings, ["app.jwt_secret=********", "work_mem=4MB"])
        XCTAssertEqual(shown.roleSettings[0].settings, ["app.api_key=********"])
        XCTAssertFalse(shown.lines.joined().contains("s3cr3t"))
        XCTAssertEqual(properties.settings[0], "app.jwt_secret=s3cr3t=x", "the values to restore are untouched")
    }
}
