import Foundation
@testable import RecoveryKit
import XCTest

final class VersionTableTests: XCTestCase {
    private func column(_ name: String, _ type: String, notNull: Bool = false, filled: Bool = false) -> VersionTable.Column {
        VersionTable.Column(name: name, type: type, notNull: notNull, filledByServer: filled)
    }

    func testTheRunbookShapesAreUsable() {
        for (version, appliedAt) in [("integer", "timestamp with time zone"), ("bigint", "timestamp without time zone"),
                                     ("smallint", "timestamp(0) with time zone")] {
            let table = VersionTable(qualifiedName: "public.schema_version", kind: "r",
                                     columns: [column("version", version, notNull: true), column("applied_at", appliedAt),
                                               column("note", "text"), column("id", "bigint", notNull: true, filled: true)])
            XCTAssertNil(table.unusableReason(), "\(version), \(appliedAt)")
            XCTAssertNil(table.refusal())
        }
    }

    func testUnusableShapesNameTheTableAndOneCommandThatAdoptsIt() throws {
        let text = VersionTable(qualifiedName: "public.schema_version", kind: "r",
                                columns: [column("version", "text"), column("applied_at", "date"), column("who", "text", notNull: true)])
        let refusal = try XCTUnwrap(text.refusal())
        XCTAssertEqual(refusal.code, .migrationRefused)
        XCTAssertTrue(refusal.message.contains("public.schema_version (version text, applied_at date, who text)"), refusal.message)
        XCTAssertTrue(refusal.message.contains("column version is text, not an integer type"), refusal.message)
        XCTAssertTrue(refusal.message.contains("column who is NOT NULL without a default"), refusal.message)
        XCTAssertEqual(text.unusableReason()?.fix,
                       "psql -c 'ALTER TABLE public.schema_version ALTER COLUMN version TYPE bigint USING version::bigint, ALTER COLUMN applied_at TYPE timestamptz USING applied_at::timestamptz, ALTER COLUMN who DROP NOT NULL'")

        let renamed = VersionTable(qualifiedName: "app.schema_version", kind: "r", columns: [column("ver", "integer"), column("installed_on", "timestamp with time zone")])
        XCTAssertEqual(renamed.unusableReason()?.fix,
                       "psql -c 'ALTER TABLE app.schema_version RENAME COLUMN ver TO version; ALTER TABLE app.schema_version RENAME COLUMN installed_on TO applied_at'")

        let view = VersionTable(qualifiedName: "public.schema_version", kind: "v", columns: [column("version", "integer"), column("applied_at", "timestamp with time zone")])
        XCTAssertTrue(view.refusal()?.message.contains("is a view") ?? false)
        XCTAssertEqual(view.refusal()?.hint,
                       "nothing was changed; move it aside with: psql -c 'ALTER VIEW public.schema_version RENAME TO schema_version_old' — then record the version the database is at: dbmigrate baseline --version N")
    }

    func testEarlierDbmigrateColumnsAreRecognised() {
        let earlier = VersionTable(qualifiedName: "public.schema_version", kind: "r",
                                   columns: ["version", "name", "up_sha256", "down_sha256", "applied_at", "release", "state"].map { column($0, $0 == "version" ? "bigint" : $0 == "applied_at" ? "timestamp with time zone" : "text") })
        XCTAssertTrue(earlier.hasEarlierDbmigrateColumns)
        XCTAssertNil(earlier.unusableReason())
    }
}
