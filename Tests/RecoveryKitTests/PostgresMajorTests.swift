@testable import RecoveryKit
import XCTest

/// Issue 17: the one place that knows what differs between PostgreSQL majors.
final class PostgresMajorTests: XCTestCase {
    func testMajorsAreReadFromEveryVersionTextPostgresWrites() {
        XCTAssertEqual(PostgresMajor(versionText: "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"), PostgresMajor(15))
        XCTAssertEqual(PostgresMajor(versionText: "pg_basebackup (PostgreSQL) 18.6"), PostgresMajor(18))
        XCTAssertEqual(PostgresMajor(versionText: "17.10"), PostgresMajor(17))
        XCTAssertEqual(PostgresMajor(versionText: "18beta2"), PostgresMajor(18))
        XCTAssertNil(PostgresMajor(versionText: "pg_dump (PostgreSQL)"))
        XCTAssertNil(PostgresMajor(versionText: ""))
        XCTAssertEqual(PostgresMajor(serverVersionNumber: 140022), PostgresMajor(14))
        XCTAssertEqual(PostgresMajor(serverVersionNumber: 180006).description, "18")
    }

    /// The catalogue columns and statements that changed between 14 and 18.
    func testCatalogueDifferencesBetweenMajors() {
        XCTAssertNil(PostgresMajor(14).providerLocaleColumn)
        XCTAssertFalse(PostgresMajor(14).hasLocaleProvider)
        XCTAssertEqual(PostgresMajor(15).providerLocaleColumn, "daticulocale")
        XCTAssertEqual(PostgresMajor(16).providerLocaleColumn, "daticulocale")
        XCTAssertEqual(PostgresMajor(17).providerLocaleColumn, "datlocale")
        XCTAssertEqual(PostgresMajor(18).providerLocaleColumn, "datlocale")
        XCTAssertEqual(PostgresMajor.supported.filter { PostgresMajor($0).hasICURules }, [16, 17, 18])
        XCTAssertEqual(PostgresMajor.supported.filter { PostgresMajor($0).hasParameterPrivileges }, [15, 16, 17, 18])
        XCTAssertEqual(PostgresMajor.supported.filter { PostgresMajor($0).hasBuiltinLocaleProvider }, [17, 18])
        XCTAssertEqual(PostgresMajor(16).unknownDumpSettings, ["transaction_timeout"])
        XCTAssertEqual(PostgresMajor(17).unknownDumpSettings, [])
    }

    /// pg_dump may be newer than the server; pg_basebackup and pg_ctl must be of its own major.
    func testWhichProgramMajorsFitAServer() {
        let server = PostgresMajor(16)
        XCTAssertTrue(PostgresMajor.Fit.sameOrNewer.accepts(PostgresMajor(18), server: server))
        XCTAssertTrue(PostgresMajor.Fit.sameOrNewer.accepts(PostgresMajor(16), server: server))
        XCTAssertFalse(PostgresMajor.Fit.sameOrNewer.accepts(PostgresMajor(15), server: server))
        XCTAssertTrue(PostgresMajor.Fit.same.accepts(PostgresMajor(16), server: server))
        XCTAssertFalse(PostgresMajor.Fit.same.accepts(PostgresMajor(17), server: server))
        XCTAssertEqual(PostgresMajor.Fit.sameOrNewer.describe(server), "16 or newer")
        XCTAssertEqual(PostgresMajor.Fit.same.describe(server), "16")
    }
}
