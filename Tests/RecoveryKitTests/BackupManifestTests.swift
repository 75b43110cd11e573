import Foundation
@testable import RecoveryKit
import XCTest

final class BackupManifestTests: XCTestCase {
    static func sample(id: String = "20261124T020000Z-00aa", release: String? = "v1.2.3") -> BackupManifest {
        BackupManifest(formatVersion: 1, id: id, kind: .logical, tool: .init(name: "dbbackup", version: "0.1.0"),
                       database: .init(name: "app", serverVersion: "15.18", systemIdentifier: "7"),
                       startedAt: Date(timeIntervalSince1970: 1_700_000_000.25), finishedAt: Date(timeIntervalSince1970: 1_700_000_010),
                       tags: ["nightly"], release: release, pinned: false, schemaVersion: "42", snapshot: "00000003-1",
                       tables: [.init(schema: "public", name: "users", rows: 10)],
                       files: [.init(name: "dump.sql.gz", rawBytes: 100, storedBytes: 40, sha256: "ab", compression: "gzip", compressionLevel: 6)])
    }

    func testRoundTripsThroughJSON() throws {
        let manifest = Self.sample()
        let decoded = try BackupManifest.decode(try manifest.encoded(), source: "test")
        XCTAssertEqual(decoded, manifest)
        let text = String(decoding: try manifest.encoded(), as: UTF8.self)
        XCTAssertTrue(text.contains("\"format_version\" : 1"))
        XCTAssertTrue(text.contains("\"started_at\" : \"2023-11-14T22:13:20.250Z\""))
    }

    func testPhysicalFieldsRoundTrip() throws {
        var manifest = Self.sample()
        manifest.kind = .physical
        manifest.physical = .init(startLsn: "0/2000028", stopLsn: "0/2000100", timeline: 1,
                                  firstWalSegment: "000000010000000000000002", lastWalSegment: "000000010000000000000002")
        let text = String(decoding: try manifest.encoded(), as: UTF8.self)
        XCTAssertTrue(text.contains("\"first_wal_segment\" : \"000000010000000000000002\""), text)
        XCTAssertEqual(try BackupManifest.decode(try manifest.encoded(), source: "test"), manifest)
    }

    func testRefusesGarbageMissingFieldsAndUnknownVersions() throws {
        let cases: [(String, String)] = [
            ("{not json", "not valid JSON"),
            ("{\"id\": \"x\"}", "no format_version"),
            ("{\"format_version\": 2}", "format version 2"),
            ("{\"format_version\": 1, \"id\": \"x\"}", "lacks field"),
        ]
        for (json, expected) in cases {
            XCTAssertThrowsError(try BackupManifest.decode(Data(json.utf8), source: "m.json")) { error in
                let error = error as? RecoveryError
                XCTAssertEqual(error?.code, .backupCorrupt)
                XCTAssertTrue(error?.message.contains(expected) ?? false, "\(json): \(error?.message ?? "")")
            }
        }
    }

    func testBackupIDsSortByTimeAndValidate() {
        let early = BackupID.make(at: Date(timeIntervalSince1970: 1_000_000_000))
        let late = BackupID.make(at: Date(timeIntervalSince1970: 1_000_000_001))
        XCTAssertTrue(early.hasPrefix("20010909T014640Z-"))
        XCTAssertLessThan(early, late)
        XCTAssertTrue(BackupID.isValid(early))
        for bad in ["", "latest", "20010909T014640Z", "20010909T014640Z-XYZW", "2001090xT014640Z-00aa"] {
            XCTAssertFalse(BackupID.isValid(bad), bad)
        }
    }

    func testRowCountComparisonNamesEveryDifference() {
        let expected: [BackupManifest.TableRowCount] = [.init(schema: "public", name: "users", rows: 10),
                                                         .init(schema: "public", name: "meetings", rows: 5),
                                                         .init(schema: "public", name: "gone", rows: 1)]
        let actual: [BackupManifest.TableRowCount] = [.init(schema: "public", name: "users", rows: 9),
                                                       .init(schema: "public", name: "meetings", rows: 5),
                                                       .init(schema: "public", name: "junk", rows: 0)]
        let report = RowCountVerifier.compare(expected: expected, actual: actual, backupID: "b", database: "app")
        XCTAssertFalse(report.ok)
        XCTAssertEqual(report.tables.map(\.status), [.missing, .extra, .ok, .mismatch])
        XCTAssertEqual(report.tables.last?.difference, -1)
        XCTAssertEqual(report.summary, "public.gone is missing; public.junk is not in the backup; public.users: expected 10, found 9")
        XCTAssertTrue(RowCountVerifier.compare(expected: expected, actual: expected, backupID: "b", database: "app").ok)
    }

    func testDatabaseNamesStayWithinPostgresLimits() {
        let long = String(repeating: "a", count: 70)
        XCTAssertEqual(LogicalRestore.identifier(long, suffix: "_pre_restore_20261124_020000").utf8.count, 63)
        XCTAssertEqual(LogicalRestore.identifier("app", suffix: "_x"), "app_x")
    }

    /// A manifest naming a file outside its folder, an id that is a path, or no file at all is
    /// damaged or hostile: refused like garbage JSON, so every tool reports it and goes on.
    func testRefusesPathsOutsideTheBackupFolderAndEmptyFileLists() throws {
        var escaping = Self.sample()
        escaping.files[0].name = "../../etc/passwd"
        var nested = Self.sample()
        nested.files[0].name = "a/dump.sql.gz"
        var badID = Self.sample(id: "../x")
        badID.release = nil
        var empty = Self.sample()
        empty.files = []
        for (manifest, expected) in [(escaping, "outside its backup folder"), (nested, "outside its backup folder"),
                                     (badID, "invalid id"), (empty, "lists no files")] {
            XCTAssertThrowsError(try BackupManifest.decode(try manifest.encoded(), source: "m.json")) { error in
                let error = error as? RecoveryError
                XCTAssertEqual(error?.code, .backupCorrupt)
                XCTAssertTrue(error?.message.contains(expected) ?? false, error?.message ?? "")
            }
        }
    }

    /// Manifests written before database properties were recorded still decode (the field is nil).
    func testOlderManifestsWithoutDatabasePropertiesDecode() throws {
        var manifest = Self.sample()
        manifest.databaseProperties = DatabaseProperties(
            encoding: "LATIN1", collate: "C", ctype: "C", localeProvider: "libc", providerLocale: nil, owner: "app",
            privileges: [.init(grantee: nil, privilege: "CONNECT", grantable: false)], comment: "c", connectionLimit: 5,
            allowConnections: true, settings: ["work_mem=12MB"], roleSettings: [.init(role: "r", settings: ["statement_timeout=5s"])])
        XCTAssertEqual(try BackupManifest.decode(try manifest.encoded(), source: "m.json"), manifest)
        var object = try JSONSerialization.jsonObject(with: try manifest.encoded()) as? [String: Any] ?? [:]
        object.removeValue(forKey: "database_properties")
        let old = try BackupManifest.decode(try JSONSerialization.data(withJSONObject: object), source: "m.json")
        XCTAssertNil(old.databaseProperties)
    }

    /// Issue 17: the client programs that made a backup are recorded (path, `--version` line, major),
    /// the server's major is read from its version text, and manifests from before still decode.
    func testClientProgramsAreRecordedAndOlderManifestsWithoutThemDecode() throws {
        var manifest = Self.sample()
        manifest.database.serverVersion = "15.18 (Debian 15.18-0+deb12u1)"
        manifest.clientPrograms = [PostgresProgram(name: "pg_dump", path: "/usr/lib/postgresql/17/bin/pg_dump",
                                                   version: "pg_dump (PostgreSQL) 17.10", major: 17)]
        let text = String(decoding: try manifest.encoded(), as: UTF8.self)
        XCTAssertTrue(text.contains("\"client_programs\""), text)
        XCTAssertTrue(text.contains("\"version\" : \"pg_dump (PostgreSQL) 17.10\""), text)
        XCTAssertEqual(try BackupManifest.decode(try manifest.encoded(), source: "m.json"), manifest)
        XCTAssertEqual(manifest.serverMajor, PostgresMajor(15))
        var object = try JSONSerialization.jsonObject(with: try manifest.encoded()) as? [String: Any] ?? [:]
        object.removeValue(forKey: "client_programs")
        let old = try BackupManifest.decode(try JSONSerialization.data(withJSONObject: object), source: "m.json")
        XCTAssertNil(old.clientPrograms)
    }
}
