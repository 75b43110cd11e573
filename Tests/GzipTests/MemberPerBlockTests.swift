@testable import Gzip
import Foundation
import XCTest

/// The member-per-block layout (issue 21 item 3: physical base backups compressed by libdeflate,
/// at level 1 by igzip; every test runs both):
/// standard multi-member gzip that stock gzip, `tar -xz` and our decompressor read whole; every
/// access point is a member's start that `GzipDecompressor(resumingAt:)` decodes from, as it still
/// decodes the single-member layout's points inside the member (backups already in repositories).
final class MemberPerBlockTests: XCTestCase {
    private func sampleInput(bytes: Int) -> [UInt8] {
        var input: [UInt8] = []
        input.reserveCapacity(bytes + 100)
        var state: UInt32 = 11
        var line = 0
        while input.count < bytes {
            state = state &* 1_103_515_245 &+ 12345
            input.append(contentsOf: "\(line)\tcustomer \(state % 5000)\t\(state % 977).50\tsame text again and again\n".utf8)
            if line % 97 == 0 { input.append(contentsOf: (0..<300).map { _ in state = state &* 69069 &+ 1; return UInt8(truncatingIfNeeded: state >> 24) }) }
            line += 1
        }
        return Array(input.prefix(bytes))
    }

    private func compress(_ input: [UInt8], layout: GzipCompressor.Layout, jobs: Int, level: Int = 6, blockSize: Int = 64 * 1024,
                          interval: UInt64 = 0) throws -> (bytes: [UInt8], points: [GzipAccessPoint]) {
        var output: [UInt8] = []
        var points: [GzipAccessPoint] = []
        let compressor = try GzipCompressor(level: level, jobs: jobs, blockSize: blockSize, layout: layout, accessPointInterval: interval,
                                            onAccessPoint: { point in
                                                XCTAssertEqual(point.compressedOffset, UInt64(output.count), "reported before its first byte")
                                                points.append(point)
                                            }) { output.append(contentsOf: $0) }
        try feed(input, inPiecesOf: 100_003, to: compressor.write)
        try compressor.finish()
        XCTAssertEqual(compressor.bytesIn, UInt64(input.count))
        XCTAssertEqual(compressor.bytesOut, UInt64(output.count))
        return (output, points)
    }

    /// Writes `bytes` in pieces of `size` (odd sizes, so that no piece lines up with a block or member).
    private func feed(_ bytes: [UInt8], inPiecesOf size: Int, to write: (UnsafeRawBufferPointer) throws -> Void) throws {
        var offset = 0
        while offset < bytes.count {
            let end = min(offset + size, bytes.count)
            try bytes[offset..<end].withUnsafeBytes { try write($0) }
            offset = end
        }
    }

    private func decompress(_ compressed: [UInt8]) throws -> (bytes: [UInt8], members: Int) {
        var output: [UInt8] = []
        let decompressor = try GzipDecompressor { output.append(contentsOf: $0) }
        try feed(compressed, inPiecesOf: 7_919, to: decompressor.write)
        try decompressor.finish()
        return (output, decompressor.membersCompleted)
    }

    /// One member per block, at one job and two; an empty input is still one (valid) member.
    func testEveryBlockIsOneMemberAndTheWholeRoundTrips() throws {
        for level in [6, 1] { try everyBlockIsOneMemberAndTheWholeRoundTrips(level: level) }
    }

    private func everyBlockIsOneMemberAndTheWholeRoundTrips(level: Int) throws {
        let cases: [(String, [UInt8], Int)] = [
            ("empty", [], 1), ("one byte", [9], 1), ("exactly one block", sampleInput(bytes: 65_536), 1),
            ("one block and a byte", sampleInput(bytes: 65_537), 2), ("1.5 MiB", sampleInput(bytes: 1_572_864 + 5), 25),
        ]
        for (name, input, members) in cases {
            for jobs in [1, 2] {
                let (compressed, _) = try compress(input, layout: .memberPerBlock, jobs: jobs, level: level)
                let (output, seen) = try decompress(compressed)
                XCTAssertTrue(output == input, "\(name), \(jobs) jobs, level \(level): decodes to other bytes")
                XCTAssertEqual(seen, members, "\(name), \(jobs) jobs, level \(level)")
            }
        }
    }

    /// Stock gzip reads it (`gzip -t`, `gzip -dc`), so `gunzip | psql` and `tar -xzf` keep working.
    func testStockGzipReadsTheMembers() throws {
        for level in [6, 1] { try stockGzipReadsTheMembers(level: level) }
    }

    private func stockGzipReadsTheMembers(level: Int) throws {
        let input = sampleInput(bytes: 3 << 20)
        let (compressed, _) = try compress(input, layout: .memberPerBlock, jobs: 2, level: level, blockSize: 1 << 20)
        let directory = NSTemporaryDirectory() + "members-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = FileManager.default.createFile(atPath: directory + "/data.gz", contents: Data(compressed))
        _ = FileManager.default.createFile(atPath: directory + "/data", contents: Data(input))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "gzip -t \"$1/data.gz\" && gzip -dc \"$1/data.gz\" | cmp -s - \"$1/data\"", "sh", directory]
        try process.run()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, "gzip -t / gzip -dc disagree with the member-per-block output at level \(level)")
    }

    /// Access points of both layouts decode, from their offset, exactly the rest of the input: a
    /// member's start (new) and a place inside the one member (backups already stored).
    func testAccessPointsOfBothLayoutsDecodeTheRest() throws {
        let input = sampleInput(bytes: 3 << 20)
        for (layout, level) in [(GzipCompressor.Layout.memberPerBlock, 6), (.memberPerBlock, 1), (.singleMember, 6)] {
            for jobs in [1, 2] {
                let (compressed, points) = try compress(input, layout: layout, jobs: jobs, level: level, interval: 256 * 1024)
                XCTAssertGreaterThanOrEqual(points.count, 10, "\(layout), \(jobs) jobs: one point per 256 KiB of 3 MiB")
                XCTAssertLessThanOrEqual(points.count, 12, "\(layout), \(jobs) jobs: no more points than the interval asks for")
                for point in points {
                    XCTAssertEqual(compressed[Int(point.compressedOffset)] == 0x1f, layout == .memberPerBlock, "\(layout): what starts at \(point)")
                    var decoded: [UInt8] = []
                    let decompressor = try GzipDecompressor(resumingAt: point) { decoded.append(contentsOf: $0) }
                    try compressed[Int(point.compressedOffset)...].withUnsafeBytes { try decompressor.write($0) }
                    XCTAssertTrue(decoded == Array(input[Int(point.uncompressedOffset)...]), "\(layout), \(jobs) jobs: point \(point) decodes to other bytes")
                }
                // A segment alone (one point to the next) decodes to exactly its bytes, as DumpSegments reads it.
                let middle = points.count / 2
                var segment: [UInt8] = []
                let decompressor = try GzipDecompressor(resumingAt: points[middle]) { segment.append(contentsOf: $0) }
                try compressed[Int(points[middle].compressedOffset)..<Int(points[middle + 1].compressedOffset)].withUnsafeBytes { try decompressor.write($0) }
                XCTAssertTrue(segment == Array(input[Int(points[middle].uncompressedOffset)..<Int(points[middle + 1].uncompressedOffset)]), "\(layout), \(jobs) jobs")
            }
        }
    }

    /// A damaged member is refused by its own CRC-32 even when read from an access point.
    func testADamagedMemberReadFromAnAccessPointIsCorrupt() throws {
        let input = sampleInput(bytes: 1 << 20)
        var (compressed, points) = try compress(input, layout: .memberPerBlock, jobs: 2, interval: 256 * 1024)
        let point = points[1]
        // The second-to-last byte of the member before the next point: its length field.
        compressed[Int(points[2].compressedOffset) - 2] ^= 0x01
        let decompressor = try GzipDecompressor(resumingAt: point) { _ in }
        XCTAssertThrowsError(try compressed[Int(point.compressedOffset)...].withUnsafeBytes { try decompressor.write($0) }) { error in
            XCTAssertEqual((error as? GzipError)?.kind, .corrupt, "\(error)")
        }
    }

    /// The size cost of losing the previous block as dictionary stays small at 1 MiB blocks.
    func testSizeStaysWithinTwoPercentOfOneMember() throws {
        let input = sampleInput(bytes: 6 << 20)
        let single = try compress(input, layout: .singleMember, jobs: 2, blockSize: 1 << 20).bytes.count
        let members = try compress(input, layout: .memberPerBlock, jobs: 2, blockSize: 1 << 20).bytes.count
        XCTAssertLessThan(Double(members), Double(single) * 1.02, "member per block \(members) bytes vs one member \(single)")
    }

    /// Level 0 (store) keeps one zlib member: libdeflate is not asked for it.
    func testLevelZeroStaysOneMember() throws {
        let input = sampleInput(bytes: 200_000)
        let (compressed, _) = try compress(input, layout: .memberPerBlock, jobs: 2, level: 0)
        let (output, members) = try decompress(compressed)
        XCTAssertTrue(output == input)
        XCTAssertEqual(members, 1)
    }
}
