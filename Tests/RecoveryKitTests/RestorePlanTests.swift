import Foundation
@testable import RecoveryKit
import XCTest

/// The plan's JSON is what scripts read from `dbrestore --dry-run --json` and from every restore
/// report and incident record: the plan holds the chosen backup's `BackupSummary`, and still writes
/// its fields flat under the `backup_*` names (issue 20).
final class RestorePlanTests: XCTestCase {
    private func plan() -> RestorePlan {
        let manifest = BackupManifestTests.sample()
        var plan = RestorePlan(CandidateSelection.Choice(manifest: manifest, repository: "/srv/backups", skipped: [.init(id: "X", reason: "damaged")]),
                               mode: .normal, server: "postgres@db1:5432/app_copy", targetDatabase: "app_copy", targetExists: true,
                               scratchDatabase: "app_copy_restore_1", keptAs: "app_copy_pre_restore_1")
        plan.filesChecked = "dump.sql.gz verified"
        plan.backupServerMajor = 15
        plan.targetServerMajor = 17
        plan.versionNote = "restoring a PostgreSQL 15 backup into 17"
        return plan
    }

    private func json(_ plan: RestorePlan) throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: try JSONOutput.encoder().encode(plan)) as? [String: Any])
    }

    func testTheChosenBackupStandsFlatUnderItsOldNames() throws {
        let object = try json(plan())
        XCTAssertEqual(object["backup_id"] as? String, "20261124T020000Z-00aa")
        XCTAssertEqual(object["backup_taken_at"] as? String, "2023-11-14T22:13:20.250Z")
        XCTAssertEqual(object["backup_release"] as? String, "v1.2.3")
        XCTAssertEqual(object["backup_schema_version"] as? String, "42")
        XCTAssertEqual(object["backup_rows"] as? Int, 10)
        XCTAssertEqual(object["backup_database"] as? String, "app")
        XCTAssertEqual(object["backup_stored_bytes"] as? Int, 40, "the dump the restore reads")
        XCTAssertEqual(object["repository"] as? String, "/srv/backups")
        XCTAssertNil(object["backup"], "no nested summary")
        XCTAssertEqual((object["skipped"] as? [[String: Any]])?.first?["reason"] as? String, "damaged")
        XCTAssertTrue(plan().lines.contains("note:     backup 20261124T020000Z-00aa is of database app; it is restored into app_copy"), "\(plan().lines)")
    }

    /// Every field of the plan that holds a value reaches the JSON: one added to the plan but not to its hand-written
    /// encoding fails here, instead of silently missing from what scripts read.
    func testEveryFieldOfThePlanIsWritten() throws {
        let plan = plan()
        let backupKeys: Set = ["repository", "backup_id", "backup_taken_at", "backup_release", "backup_schema_version", "backup_rows", "backup_database"]
        // The plan's stored fields that hold a value (nil optionals are left out of the JSON).
        let fields = Mirror(reflecting: plan).children.filter { child in
            let value = Mirror(reflecting: child.value)
            return child.label != "backup" && !(value.displayStyle == .optional && value.children.isEmpty)
        }.compactMap(\.label).map(Self.snakeCase)
        XCTAssertEqual(fields.count, 15, "the sample leaves only database_properties unset: \(fields)")
        XCTAssertEqual(Set(try json(plan).keys), backupKeys.union(fields))
        // An absent release, schema version or kept name is left out, as before.
        var bare = plan
        bare.backup.release = nil
        bare.backup.schemaVersion = nil
        bare.keptAs = nil
        XCTAssertEqual(Set(try json(plan).keys).subtracting(try json(bare).keys), ["backup_release", "backup_schema_version", "kept_as"])
    }

    /// `backupStoredBytes` → `backup_stored_bytes`, `backupID` → `backup_id`, as `JSONOutput`'s key strategy writes them.
    private static func snakeCase(_ name: String) -> String {
        var result = ""
        var previous: Character?
        for character in name {
            if character.isUppercase, previous?.isLowercase == true { result += "_" }
            result += character.lowercased()
            previous = character
        }
        return result
    }
}
