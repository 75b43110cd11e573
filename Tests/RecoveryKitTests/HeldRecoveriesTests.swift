import BackupStorage
import Foundation
@testable import RecoveryKit
import XCTest

/// How dbprune reads the holds of prepared recoveries: which protect, which expired, what they keep.
final class HeldRecoveriesTests: XCTestCase {
    private func decision(_ id: String, _ action: RetentionDecision.Action) -> RetentionDecision {
        RetentionDecision(id: id, takenAt: Date(), ageDays: 1, storageClass: nil, action: action, keptBy: [], reason: "older than the 1 newest")
    }

    func testAFreshHoldKeepsItsChainAnExpiredOrUnreadableOneNothingAndEachIsNamed() throws {
        let root = NSTemporaryDirectory() + "holds-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: root) }
        let store = try LocalStore(root: root, create: true)
        let now = Date()
        let fresh = RecoveryHold(backupID: "inc", backups: ["full", "inc"], timelines: [1, 2], firstSegment: "000000010000000000000004",
                                 target: "the end of the archived WAL", host: "db2", dataDirectory: "/srv/pg/restored", createdAt: now.addingTimeInterval(-3600))
        let old = RecoveryHold(backupID: "old", backups: ["old"], timelines: [1], firstSegment: "000000010000000000000002",
                               target: "LSN 0/2000000", host: "db3", dataDirectory: "/srv/pg/old", createdAt: now.addingTimeInterval(-8 * 86400))
        try fresh.write(to: store)
        try old.write(to: store)
        try store.write(RecoveryHold.key(of: "garbled"), contents: Data("{".utf8))

        let holds = try HeldRecoveries.load(from: store, now: now, expiry: HeldRecoveries.defaultExpiry)
        XCTAssertEqual(holds.map(\.id), [old.id, fresh.id, "garbled"], "oldest first (ids sort by time)")
        let byID = Dictionary(uniqueKeysWithValues: holds.map { ($0.id, $0) })
        XCTAssertEqual(byID[fresh.id]?.protecting, true)
        XCTAssertEqual(byID[old.id]?.protecting, false)
        XCTAssertEqual(byID["garbled"]?.protecting, false)

        var decisions = [decision("inc", .delete), decision("full", .moveToGlacier), decision("old", .delete), decision("other", .delete)]
        HeldRecoveries.keep(&decisions, holds: holds)
        XCTAssertEqual(decisions.map(\.action), [.keep, .keep, .delete, .delete])
        XCTAssertEqual(decisions[1].keptBy, ["held by the recovery prepared at db2:/srv/pg/restored at \(Timestamp.format(fresh.createdAt))"])
        XCTAssertEqual(byID[fresh.id]?.hold?.preparedBy, fresh.preparedBy, "read back as written")

        let wal = HeldRecoveries.wal(holds)
        XCTAssertEqual(wal.map(\.firstSegment), ["000000010000000000000004"])
        XCTAssertEqual(wal.first?.timelines, [1, 2])

        let warnings = HeldRecoveries.warnings(holds, expiry: HeldRecoveries.defaultExpiry, dryRun: true)
        XCTAssertTrue(warnings.contains { $0.contains("held by the recovery prepared at db2:/srv/pg/restored") && $0.contains("stops protecting at")
                                          && $0.contains("dbprune --release-hold \(fresh.id)") }, "\(warnings)")
        XCTAssertTrue(warnings.contains { $0.contains("hold \(old.id)") && $0.contains("protects nothing any more") }, "\(warnings)")
        XCTAssertTrue(warnings.contains { $0.contains("unreadable hold record locks/holds/garbled.json") && $0.contains("--release-hold garbled") }, "\(warnings)")

        // Released by id; a second release finds nothing.
        XCTAssertTrue(try RecoveryHold.release(fresh.id, in: store))
        XCTAssertFalse(try RecoveryHold.release(fresh.id, in: store))
        XCTAssertFalse(RecoveryHold.isValidID("../backups/x/manifest"))
        XCTAssertTrue(RecoveryHold.isValidID(fresh.id))
    }

    /// Found by an outside attack: a record dated in the future (the preparing host's clock ahead, a hand
    /// edit) never expired; one named by hand (`my copy.json`) protected but its warning named a release
    /// command that refuses that name.
    func testAFutureDatedHoldAgesFromWhenItWasStoredAndAHandNamedOneSaysHowToRemoveIt() throws {
        let root = NSTemporaryDirectory() + "holds-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: root) }
        let store = try LocalStore(root: root, create: true)
        let future = RecoveryHold(backupID: "b", backups: ["b"], timelines: [1], firstSegment: "000000010000000000000002",
                                  target: "the end of the archived WAL", host: "db9", dataDirectory: "/srv/pg/x",
                                  createdAt: Date(timeIntervalSince1970: 4_070_908_800))   // 2099-01-01
        try future.write(to: store)
        try store.write(RecoveryHold.prefix + "my copy.json", contents: try store.read(RecoveryHold.key(of: future.id)))
        // Eight days after it was stored, by the repository's clock: past the 7-day expiry.
        let holds = try HeldRecoveries.load(from: store, now: Date().addingTimeInterval(8 * 86_400), expiry: HeldRecoveries.defaultExpiry)
        XCTAssertEqual(holds.count, 2)
        XCTAssertTrue(holds.allSatisfy { !$0.protecting }, "\(holds.map { ($0.id, $0.expiresAt as Any) })")
        let fresh = try HeldRecoveries.load(from: store, now: Date(), expiry: HeldRecoveries.defaultExpiry)
        XCTAssertTrue(fresh.allSatisfy(\.protecting))
        let warnings = HeldRecoveries.warnings(fresh, expiry: HeldRecoveries.defaultExpiry, dryRun: true)
        XCTAssertTrue(warnings.contains { $0.contains("delete locks/holds/my copy.json from the repository by hand") }, "\(warnings)")
        XCTAssertTrue(warnings.contains { $0.contains("dbprune --release-hold \(future.id)") }, "\(warnings)")
    }
}
