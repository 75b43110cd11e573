import BackupStorage
import Foundation
@testable import RecoveryKit
import XCTest

/// Which server an archived WAL segment is of, and which segment was archived last.
final class WALServerTests: XCTestCase {
    /// The first bytes of a segment as PostgreSQL 15 writes them on x86: magic, info, timeline, page
    /// address, remaining length, padding, then the long header's system identifier.
    private func header(info: UInt16, system: UInt64) -> Data {
        var bytes = [UInt8](repeating: 0, count: 40)
        bytes[0] = 0x10; bytes[1] = 0xD1                       // xlp_magic 0xD110
        bytes[2] = UInt8(info & 0xFF); bytes[3] = UInt8(info >> 8)
        bytes[4] = 1                                            // xlp_tli
        for index in 0..<8 { bytes[24 + index] = UInt8(truncatingIfNeeded: system >> (8 * UInt64(index))) }
        return Data(bytes)
    }

    func testTheSystemIdentifierIsReadFromALongPageHeaderOnly() {
        XCTAssertEqual(WALServer.systemIdentifier(ofHeader: header(info: 0x0006, system: 7_712_846_341_234_845_090)), "7712846341234845090")
        XCTAssertNil(WALServer.systemIdentifier(ofHeader: header(info: 0x0004, system: 7_712_846_341_234_845_090)), "a short header has no xlp_sysid")
        XCTAssertNil(WALServer.systemIdentifier(ofHeader: header(info: 0x0002, system: 1).prefix(31)), "cut before the identifier ends")
    }

    func testTheNewestSegmentIsTheOneArchivedLastNotTheHighestName() {
        let early = Date(timeIntervalSince1970: 1_000), late = Date(timeIntervalSince1970: 2_000)
        let archive = [
            StoredObject(key: "wal/00000001/00000001000000000000005A.gz", size: 1, modified: early),
            StoredObject(key: "wal/00000001/000000010000000000000003.gz", size: 1, modified: late),
            StoredObject(key: "wal/00000002/00000002.history.gz", size: 1, modified: late.addingTimeInterval(5)),
        ]
        XCTAssertEqual(WALServer.newestSegment(in: archive)?.name, "000000010000000000000003")
        XCTAssertNil(WALServer.newestSegment(in: [archive[2]]), "a history file is no segment")
    }

    /// A segment of `system`: its long header, then 256 KiB that do not compress (what is read past the
    /// header would show), stored as wal-push stores it (encrypted under `key` when given).
    private func archive(_ name: String, system: UInt64, in store: LocalStore, key: RepositoryKey? = nil) throws {
        var segment = header(info: 0x0002, system: system)
        var state: UInt64 = system
        segment.append(contentsOf: (0..<(256 << 10)).map { _ -> UInt8 in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: state >> 33)
        })
        let objectKey = try WALArchive.key(for: name)
        try store.write(objectKey, contents: try WALArchive.compress(segment, objectKey: objectKey, cipherKey: key))
    }

    func testTheSystemIdentifierOfAnArchivedSegmentIsReadFromItsFirstBytesPlainOrEncrypted() throws {
        let root = NSTemporaryDirectory() + "walserver-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: root) }
        let store = try LocalStore(root: root, create: true)
        let key = try RepositoryKey(material: Data("unit-test-key-material".utf8))
        try archive("000000010000000000000001", system: 11, in: store)
        try archive("000000010000000000000002", system: 12, in: store, key: key)
        func read(_ name: String, _ key: RepositoryKey?) throws -> String? {
            try WALServer.systemIdentifier(ofKey: try WALArchive.key(for: name), name: name, in: store, cipherKey: key)
        }
        XCTAssertEqual(try read("000000010000000000000001", nil), "11")
        XCTAssertEqual(try read("000000010000000000000002", key), "12")
        XCTAssertNil(try read("000000010000000000000003", nil), "not archived")
        XCTAssertThrowsError(try read("000000010000000000000002", nil), "encrypted, no key")
    }

    /// The plan's check of a run: another server's names continuing this one's are found at their
    /// first segment, with a few header reads.
    func testTheFirstForeignSegmentOfARunIsFoundByBisection() throws {
        let root = NSTemporaryDirectory() + "walrange-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: root) }
        let store = try LocalStore(root: root, create: true)
        let name = { (number: UInt64) in WALSegmentName.name(timeline: 1, segmentNumber: number) }
        for number in UInt64(2)...12 { try archive(name(number), system: number < 9 ? 100 : 200, in: store) }
        let ownership = WALRangeOwnership(system: "100", store: store, cipherKey: nil)
        let found = try XCTUnwrap(ownership.firstForeign(in: 2...12, name: name))
        XCTAssertEqual(found.number, 9)
        XCTAssertEqual(found.system, "200")
        XCTAssertNil(ownership.firstForeign(in: 2...8, name: name), "this server's only")
        XCTAssertEqual(WALRangeOwnership(system: "200", store: store, cipherKey: nil).firstForeign(in: 2...12, name: name)?.number, 2)
    }
}
