@testable import Gzip
import Foundation
import XCTest

/// Access points (issue 18): a selective restore starts decompressing near the object it needs,
/// so each point must decode on its own to exactly the bytes from its offset on, and the file
/// must stay one gzip member that stock gzip reads.
final class AccessPointTests: XCTestCase {
    /// Text with long-range repeats, so that a block primed with the previous one would refer back.
    private func sampleInput(megabytes: Int) -> [UInt8] {
        var input: [UInt8] = []
        input.reserveCapacity(megabytes << 20)
        var state: UInt32 = 7
        var line = 0
        while input.count < megabytes << 20 {
            state = state &* 1_103_515_245 &+ 12345
            input.append(contentsOf: "\(line)\tcustomer \(state % 5000)\t\(state % 977).50\tsame text again and again\n".utf8)
            line += 1
        }
        return input
    }

    func testEveryAccessPointDecodesTheRestOfTheStreamOnItsOwn() throws {
        let input = sampleInput(megabytes: 3)
        for jobs in [1, 2] {
            var output: [UInt8] = []
            var points: [GzipAccessPoint] = []
            let compressor = try GzipCompressor(level: 5, jobs: jobs, blockSize: 64 * 1024, accessPointInterval: 256 * 1024,
                                                onAccessPoint: { point in
                                                    // Reported before its first byte reaches the sink.
                                                    XCTAssertEqual(point.compressedOffset, UInt64(output.count))
                                                    points.append(point)
                                                }) { output.append(contentsOf: $0) }
            try input.withUnsafeBytes { try compressor.write($0) }
            try compressor.finish()
            XCTAssertGreaterThanOrEqual(points.count, 10, "jobs \(jobs): about one point per 256 KiB of 3 MiB")
            XCTAssertEqual(points.map(\.uncompressedOffset), points.map(\.uncompressedOffset).sorted())

            // Still one ordinary gzip member: stock gzip -d reads it.
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("ap-\(jobs)-\(UUID().uuidString).gz")
            let original = FileManager.default.temporaryDirectory.appendingPathComponent("ap-\(jobs)-\(UUID().uuidString).txt")
            try Data(output).write(to: file)
            try Data(input).write(to: original)
            defer {
                try? FileManager.default.removeItem(at: file)
                try? FileManager.default.removeItem(at: original)
            }
            let gunzip = Process()
            gunzip.executableURL = URL(fileURLWithPath: "/bin/sh")
            gunzip.arguments = ["-c", "gzip -dc \"$1\" | cmp -s - \"$2\"", "sh", file.path, original.path]
            try gunzip.run()
            gunzip.waitUntilExit()
            XCTAssertEqual(gunzip.terminationStatus, 0, "gzip -d of the stream with access points differs from the input (jobs \(jobs))")

            for point in [points[0], points[points.count / 2], points[points.count - 1]] {
                var decoded: [UInt8] = []
                let decompressor = try GzipDecompressor(resumingAt: point) { decoded.append(contentsOf: $0) }
                try output[Int(point.compressedOffset)...].withUnsafeBytes { try decompressor.write($0) }
                XCTAssertTrue(decompressor.reachedEnd)
                XCTAssertEqual(decoded.count, input.count - Int(point.uncompressedOffset), "jobs \(jobs), point \(point)")
                XCTAssertTrue(decoded == Array(input[Int(point.uncompressedOffset)...]), "jobs \(jobs): point \(point) decodes to other bytes")
            }
        }
    }

    /// Without an interval nothing changes: no points, the same bytes as before.
    func testNoIntervalMeansNoAccessPoints() throws {
        let input = sampleInput(megabytes: 1)
        var plain: [UInt8] = [], withHook: [UInt8] = []
        var reported = 0
        let first = try GzipCompressor(level: 5, jobs: 2, blockSize: 64 * 1024) { plain.append(contentsOf: $0) }
        try input.withUnsafeBytes { try first.write($0) }
        try first.finish()
        let second = try GzipCompressor(level: 5, jobs: 2, blockSize: 64 * 1024, onAccessPoint: { _ in reported += 1 }) { withHook.append(contentsOf: $0) }
        try input.withUnsafeBytes { try second.write($0) }
        try second.finish()
        XCTAssertEqual(reported, 0)
        XCTAssertEqual(plain, withHook)
    }
}
