import Foundation
@testable import RecoveryKit
import XCTest

final class MigrationFileTests: XCTestCase {
    private var directory = ""

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("migration-files-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func write(_ files: [String: String]) throws {
        for (name, sql) in files { try sql.write(toFile: directory + "/" + name, atomically: true, encoding: .utf8) }
    }

    private func refusal() -> RecoveryError? {
        do {
            _ = try MigrationDirectory.load(directory)
            return nil
        } catch {
            return error as? RecoveryError
        }
    }

    func testLoadsPairsAndHeaderDirectives() throws {
        try write(["0001_a.up.sql": "CREATE TABLE a (x int);", "0001_a.down.sql": "DROP TABLE a;",
                   "0002_b.up.sql": "-- dbmigrate:no-transaction\r\nCREATE INDEX CONCURRENTLY b ON a (x);",
                   "0002_b.down.sql": "-- dbmigrate:irreversible\n"])
        let migrations = try MigrationDirectory.load(directory)
        XCTAssertEqual(migrations.map(\.version), [1, 2])
        XCTAssertEqual(migrations[0].down?.sql, "DROP TABLE a;")
        XCTAssertTrue(migrations[1].up.noTransaction)
        XCTAssertEqual(migrations[1].down?.irreversible, true, "an irreversible down file may hold no statement")
    }

    func testAByteOrderMarkIsNotPartOfTheSQL() throws {
        try Data([0xEF, 0xBB, 0xBF] + Array("CREATE TABLE a (x int);".utf8)).write(to: URL(fileURLWithPath: directory + "/0001_a.up.sql"))
        let migration = try XCTUnwrap(try MigrationDirectory.load(directory).first)
        XCTAssertEqual(SQLStatements.split(migration.up.sql), ["CREATE TABLE a (x int)"])
    }

    func testHiddenFilesAreIgnoredAndMiscasedOnesRefused() throws {
        try write(["0001_a.up.sql": "SELECT 1;", "._0001_a.up.sql": "\u{0}", ".0002_b.up.sql.swp": "x"])
        XCTAssertEqual(try MigrationDirectory.load(directory).map(\.version), [1])
        try write(["0002_b.UP.SQL": "SELECT 2;"])
        XCTAssertThrowsError(try MigrationDirectory.load(directory)) { error in
            XCTAssertTrue((error as? RecoveryError)?.message.contains("0002_b.UP.SQL is neither .up.sql nor .down.sql") ?? false)
        }
    }

    func testDuplicateDownFilesAreRefused() throws {
        try write(["0001_a.up.sql": "SELECT 1;", "0001_a.down.sql": "SELECT 2;", "0001_a_fix.down.sql": "SELECT 3;"])
        let error = try XCTUnwrap(refusal())
        XCTAssertEqual(error.code, .migrationRefused)
        XCTAssertTrue(error.message.contains("version 1 has 2 down files: 0001_a.down.sql, 0001_a_fix.down.sql"), error.message)
    }

    func testOrphanedAndMismatchedDownFilesAreRefused() throws {
        try write(["0001_a.up.sql": "SELECT 1;", "0002_b.down.sql": "SELECT 2;", "0003_c.up.sql": "SELECT 3;", "0003_d.down.sql": "SELECT 4;"])
        let error = try XCTUnwrap(refusal())
        XCTAssertEqual(error.code, .migrationRefused)
        XCTAssertTrue(error.message.contains("0002_b.down.sql has no up file (0002_b.up.sql)"), error.message)
        XCTAssertTrue(error.message.contains("0003_d.down.sql does not match its up file 0003_c.up.sql"), error.message)
    }

    func testInvalidUTF8AndOversizedVersionsAreRefused() throws {
        try Data([0x53, 0x45, 0x4C, 0x45, 0x43, 0x54, 0x20, 0x27, 0xE9, 0x27, 0x3B]).write(to: URL(fileURLWithPath: directory + "/0001_latin1.up.sql"))
        XCTAssertTrue(refusal()?.message.contains("0001_latin1.up.sql is not valid UTF-8") ?? false, refusal()?.message ?? "")
        try FileManager.default.removeItem(atPath: directory + "/0001_latin1.up.sql")
        try write(["99999999999999999999_big.up.sql": "SELECT 1;"])
        XCTAssertTrue(refusal()?.message.contains("version too large") ?? false, refusal()?.message ?? "")
    }

    func testEmptyFilesAreRefused() throws {
        try write(["0001_a.up.sql": "", "0002_b.up.sql": "-- nothing yet\n  \n", "0002_b.down.sql": "DROP TABLE b;", "0003_c.up.sql": "SELECT 1;", "0003_c.down.sql": "\n"])
        let error = try XCTUnwrap(refusal())
        for file in ["0001_a.up.sql", "0002_b.up.sql", "0003_c.down.sql"] {
            XCTAssertTrue(error.message.contains("\(file) has no SQL statement"), error.message)
        }
        XCTAssertTrue(error.hint?.contains("-- dbmigrate:irreversible") ?? false)
    }
}
