import Foundation
@testable import RecoveryKit
import XCTest

/// The restore point record is found in WAL bytes with the page headers taken out: across a page
/// boundary, at its own LSN, never in row data that merely holds the name.
final class RestorePointScanTests: XCTestCase {
    /// A restore point record of `name` (98 bytes: header, XLR_BLOCK_ID_DATA_SHORT 72, time, name).
    private func record(_ name: String) -> [UInt8] {
        var bytes: [UInt8] = [98, 0, 0, 0] + [7, 0, 0, 0] + [UInt8](repeating: 1, count: 8) + [0x70, 0, 0, 0] + [9, 9, 9, 9]
        bytes += [0xFF, 72] + [UInt8](repeating: 5, count: 8)
        bytes += Array(name.utf8) + [0] + [UInt8](repeating: 0xAB, count: 63 - name.utf8.count)   // rp_name's rest is not cleared
        return bytes
    }

    /// Pages of 8192 bytes: a long header (40) on the first, short ones (24) after; `stream` laid into what follows them.
    private func segment(pages: Int, stream: [UInt8]) -> Data {
        var bytes = [UInt8](repeating: 0, count: pages * 8192)
        var rest = stream[...]
        for page in 0..<pages {
            let header = page == 0 ? 40 : 24
            bytes[page * 8192 + 2] = page == 0 ? 0x02 : 0x01
            if page == 0 { bytes[36] = 0x00; bytes[37] = 0x20 }   // xlp_xlog_blcksz 8192
            let room = 8192 - header
            let chunk = rest.prefix(room)
            bytes.replaceSubrange((page * 8192 + header)..<(page * 8192 + header + chunk.count), with: chunk)
            rest = rest.dropFirst(chunk.count)
        }
        return Data(bytes)
    }

    func testARestorePointAcrossAPageBoundaryIsFoundAtItsLSNAndRowDataIsNot() {
        let base: UInt64 = 0x3000000
        // Row data holding the name first (not a record), then the record starting 40 bytes before page 1.
        var stream = [UInt8](repeating: 0, count: 8192 - 40 - 40)
        stream.replaceSubrange(1000..<1008, with: Array("rp_one\0\0".utf8))
        stream += record("rp_one")
        let data = segment(pages: 3, stream: stream)
        var scan = RestorePointScan(name: "rp_one")
        XCTAssertEqual(scan.feed(data, base: base, from: base), base + 8192 - 40)
        var later = RestorePointScan(name: "rp_one")
        XCTAssertNil(later.feed(data, base: base, from: base + 8192), "a point before `from` is not the one recovery reaches")
        var other = RestorePointScan(name: "rp_on")
        XCTAssertNil(other.feed(data, base: base, from: base), "a prefix of the name is another name")
    }

    func testARestorePointRunningOnIntoTheNextSegmentIsFound() {
        let size: UInt64 = 2 * 8192
        let whole = record("rp_two")
        // The first segment ends 16 bytes into the record; the next one's first page holds the rest.
        let first = segment(pages: 2, stream: [UInt8](repeating: 0, count: 2 * 8192 - 40 - 24 - 16) + whole.prefix(16))
        let second = segment(pages: 2, stream: Array(whole.dropFirst(16)))
        var scan = RestorePointScan(name: "rp_two")
        XCTAssertNil(scan.feed(first, base: size, from: size))
        XCTAssertEqual(scan.feed(second, base: 2 * size, from: size), 2 * size - 16)
    }

    /// A name made twice: both points, each with its `rp_time`, each reported once though the next
    /// segment's search starts in the record's worth kept from this one.
    func testEveryPointOfANameIsReportedOnceWithItsTime() {
        let size: UInt64 = 2 * 8192
        var second = record("rp_dup")
        // rp_time 2026-01-01 00:00:00 UTC: 820_540_800 s after 2000-01-01, in microseconds, little-endian.
        let micros = Int64(820_540_800) * 1_000_000
        second.replaceSubrange(26..<34, with: (0..<8).map { UInt8(truncatingIfNeeded: micros >> (8 * $0)) })
        let stream = record("rp_dup") + [UInt8](repeating: 0, count: 102) + second + [UInt8](repeating: 0, count: 6)
        var scan = RestorePointScan(name: "rp_dup")
        let hits = scan.feedAll(segment(pages: 2, stream: stream), base: size, from: 0)
        XCTAssertEqual(hits.map(\.lsn), [size + 40, size + 40 + 98 + 102])
        XCTAssertEqual(hits.last?.time, Date(timeIntervalSince1970: 1_767_225_600))
        XCTAssertEqual(scan.feedAll(segment(pages: 2, stream: []), base: 2 * size, from: 0), [], "the kept tail is not reported again")
    }
}
