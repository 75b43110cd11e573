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
}
