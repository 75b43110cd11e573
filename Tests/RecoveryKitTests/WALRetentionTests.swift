import BackupStorage
import Foundation
@testable import RecoveryKit
import XCTest

final class WALRetentionTests: XCTestCase {
    private func physical(_ first: String, timeline: Int = 1) -> BackupManifest.Physical {
        .init(startLsn: "0/0", stopLsn: "0/0", timeline: timeline, firstWalSegment: first, lastWalSegment: first)
    }

    func testDeletesOnlyWhatNoKeptBaseBackupNeeds() {
        let keys = [
            "wal/00000001/000000010000000000000003.gz", "wal/00000001/0000000100000000000000FF.gz",
            "wal/00000001/000000010000000100000000.gz", "wal/00000001/000000010000000100000001.gz",
            "wal/00000001/000000010000000000000004.00000028.backup.gz", "wal/00000002/00000002.history.gz",
            "wal/00000002/000000020000000100000002.gz",
        ]
        let plan = WALRetention.plan(keys: keys, keptPhysical: [physical("000000010000000100000001"), physical("000000020000000100000002", timeline: 2)])
        XCTAssertEqual(plan.delete, ["wal/00000001/000000010000000000000003.gz", "wal/00000001/0000000100000000000000FF.gz",
                                     "wal/00000001/000000010000000100000000.gz", "wal/00000001/000000010000000000000004.00000028.backup.gz"])
        XCTAssertEqual(plan.kept, 3)
        XCTAssertEqual(plan.oldestNeeded, "000000010000000100000001")
    }

    /// A recovery's hold keeps the WAL it reads from its first segment on, on the timelines it
    /// follows, though no kept base backup needs it; the plan says which hold kept how many.
    func testAHoldKeepsTheWALItsRecoveryReadsOnItsTimelines() {
        let keys = ["wal/00000001/000000010000000000000003.gz", "wal/00000001/000000010000000000000004.gz",
                    "wal/00000001/000000010000000000000004.00000028.backup.gz", "wal/00000001/000000010000000000000005.gz",
                    "wal/00000001/000000010000000000000009.gz"]
        let hold = WALRetention.Hold(firstSegment: "000000010000000000000004", timelines: [1], reason: "held by the recovery prepared at h:/d at t")
        let plan = WALRetention.plan(keys: keys, keptPhysical: [physical("000000010000000000000009")], holds: [hold])
        XCTAssertEqual(plan.delete, ["wal/00000001/000000010000000000000003.gz"])
        XCTAssertEqual(plan.kept, 4)
        XCTAssertEqual(plan.held, ["kept 4 WAL file(s) from 000000010000000000000004 on: held by the recovery prepared at h:/d at t"])
        // Another timeline's hold keeps nothing of timeline 1.
        let other = WALRetention.plan(keys: keys, keptPhysical: [physical("000000010000000000000009")],
                                      holds: [WALRetention.Hold(firstSegment: "000000020000000000000004", timelines: [2], reason: "r")])
        XCTAssertEqual(other.delete.count, 4)
        XCTAssertEqual(other.held, ["kept 0 WAL file(s) from 000000020000000000000004 on: r"])
    }

    func testWithoutAKeptBaseBackupNothingIsDeleted() {
        let plan = WALRetention.plan(keys: ["wal/00000001/000000010000000000000003.gz"], keptPhysical: [])
        XCTAssertEqual(plan.delete, [])
        XCTAssertNil(plan.oldestNeeded)
    }
}

/// Pruner on a real local repository holding physical backups and WAL, observed through a wrapper
/// that records the order of deletions.
final class PrunerOrderTests: XCTestCase {
    final class RecordingStore: BackupStore {
        let inner: LocalStore
        var deletions: [[String]] = []
        init(_ inner: LocalStore) { self.inner = inner }
        var location: String { inner.location }
        var features: StoreFeatures { inner.features }
        var reads: RepositoryReads { inner.reads }
        func list(prefix: String) throws -> [StoredObject] { try inner.list(prefix: prefix) }
        func read(_ key: String) throws -> Data { try inner.read(key) }
        func write(_ key: String, contents: Data) throws { try inner.write(key, contents: contents) }
        func makeWriter(_ key: String) throws -> ObjectWriter { try inner.makeWriter(key) }
        func makeReader(_ key: String) throws -> ObjectReader { try inner.makeReader(key) }
        func makeReader(_ key: String, range: Range<UInt64>) throws -> ObjectReader { try inner.makeReader(key, range: range) }
        func delete(_ keys: [String]) throws {
            deletions.append(keys)
            try inner.delete(keys)
        }
        func changeStorageClass(_ key: String, to storageClass: String) throws { try inner.changeStorageClass(key, to: storageClass) }
        func create(_ key: String, contents: Data) throws -> Bool { try inner.create(key, contents: contents) }
        func readVersioned(_ key: String) throws -> VersionedObject { try inner.readVersioned(key) }
        func delete(_ key: String, ifVersion version: String) throws -> Bool { try inner.delete(key, ifVersion: version) }
        func removeLeftovers(before cutoff: Date) throws -> [String] { try inner.removeLeftovers(before: cutoff) }
    }

    func testManifestGoesFirstAndWALFollowsTheKeptBaseBackups() throws {
        let root = NSTemporaryDirectory() + "pruner-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: root) }
        let store = RecordingStore(try LocalStore(root: root, create: true))
        let data = Data("base".utf8)
        var digest = StreamingDigest()
        data.withUnsafeBytes { digest.update($0) }
        let checksum = digest.hexDigest()
        var ids: [String] = []
        for (index, first) in ["000000010000000000000002", "000000010000000000000005", "000000010000000000000009"].enumerated() {
            var manifest = BackupManifestTests.sample(id: BackupID.make(at: Date(timeIntervalSince1970: 1_700_000_000 + Double(index) * 86_400)))
            manifest.startedAt = Date(timeIntervalSince1970: 1_700_000_000 + Double(index) * 86_400)
            manifest.kind = .physical
            manifest.files = [.init(name: "base.tar.gz", rawBytes: 4, storedBytes: 4, sha256: checksum, compression: "gzip", compressionLevel: 6)]
            manifest.physical = .init(startLsn: "0/0", stopLsn: "0/0", timeline: 1, firstWalSegment: first, lastWalSegment: first)
            try store.write("backups/\(manifest.id)/base.tar.gz", contents: data)
            try store.write("backups/\(manifest.id)/manifest.json", contents: try manifest.encoded())
            ids.append(manifest.id)
        }
        for segment in 1...10 {
            try store.write(String(format: "wal/00000001/0000000100000000%08X.gz", segment), contents: Data([1]))
        }
        var policy = RetentionPolicy.builtIn
        policy.local.keepLast = 2
        let report = try Pruner.run(PruneConfiguration(repository: root, policy: policy, now: Date(timeIntervalSince1970: 1_800_000_000)), store: store)
        XCTAssertEqual(report.decisions.filter { $0.action == .delete }.map(\.id), [ids[0]], "\(report.decisions)")
        XCTAssertEqual(store.deletions.first, ["backups/\(ids[0])/manifest.json"], "the manifest is deleted before the data")
        XCTAssertEqual(store.deletions.dropFirst().first, ["backups/\(ids[0])/base.tar.gz"])
        XCTAssertEqual(report.wal.oldestNeeded, "000000010000000000000005")
        let remaining = try store.list(prefix: "wal/").map { String($0.key.suffix(11).prefix(8)) }
        XCTAssertEqual(remaining, (5...10).map { String(format: "%08X", $0) })
    }
}
