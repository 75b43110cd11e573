import PostgresClient
import XCTest

final class ConnectionTargetTests: XCTestCase {
    func testURLBecomesChildEnvironmentWithoutArgv() throws {
        let target = try ConnectionTarget("postgresql://app:s3cret@db1.example.com:6543/appdb?sslmode=require&application_name=x")
        let environment = target.childEnvironment
        XCTAssertEqual(environment["PGHOST"], "db1.example.com")
        XCTAssertEqual(environment["PGPORT"], "6543")
        XCTAssertEqual(environment["PGUSER"], "app")
        XCTAssertEqual(environment["PGPASSWORD"], "s3cret")
        XCTAssertEqual(environment["PGDATABASE"], "appdb")
        XCTAssertEqual(environment["PGSSLMODE"], "require")
        XCTAssertEqual(target.databaseName, "appdb")
    }

    func testRedactedDescriptionNeverHoldsThePassword() throws {
        let target = try ConnectionTarget("host=db1 port=5433 user=app password=s3cret dbname=appdb")
        XCTAssertEqual(target.redactedDescription, "app@db1:5433/appdb")
        XCTAssertFalse(target.redactedDescription.contains("s3cret"))
    }

    func testSwitchingDatabaseKeepsTheRest() throws {
        let target = try ConnectionTarget("postgresql://app@db1/appdb").with(database: "postgres")
        XCTAssertEqual(target.databaseName, "postgres")
        XCTAssertEqual(target.value("host"), "db1")
    }

    func testMalformedStringsAreRejectedWithoutEchoingThem() {
        for bad in ["host=db1 bogus_keyword=s3cret", "postgresql://[::1"] {
            XCTAssertThrowsError(try ConnectionTarget(bad), bad) { error in
                let error = error as? PostgresError
                XCTAssertEqual(error?.kind, .invalidConnectionString)
                XCTAssertFalse(error?.description.contains("s3cret:") ?? true, error?.description ?? "")
            }
        }
    }
}
