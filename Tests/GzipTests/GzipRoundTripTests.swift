import Foundation
import Gzip
import XCTest

final class GzipRoundTripTests: XCTestCase {
    private func compress(_ input: [UInt8], level: Int = 6, chunk: Int = 65_536, jobs: Int = 1, blockSize: Int = 1 << 20) throws -> [UInt8] {
        var output: [UInt8] = []
        let compressor = try GzipCompressor(level: level, jobs: jobs, blockSize: blockSize) { output.append(contentsOf: $0) }
        var offset = 0
        while offset < input.count {
            let end = min(offset + chunk, input.count)
            try input[offset..<end].withUnsafeBytes { try compressor.write($0) }
            offset = end
        }
        try compressor.finish()
        XCTAssertEqual(compressor.bytesIn, UInt64(input.count))
        XCTAssertEqual(compressor.bytesOut, UInt64(output.count))
        return output
    }

    private func decompress(_ input: [UInt8], chunk: Int = 7_919) throws -> [UInt8] {
        var output: [UInt8] = []
        let decompressor = try GzipDecompressor { output.append(contentsOf: $0) }
        var offset = 0
        while offset < input.count {
            let end = min(offset + chunk, input.count)
            try input[offset..<end].withUnsafeBytes { try decompressor.write($0) }
            offset = end
        }
        try decompressor.finish()
        return output
    }

    private func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed
        return (0..<count).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 33)
        }
    }

    private func textBytes(_ count: Int) -> [UInt8] {
        let line = Array("INSERT INTO public.users VALUES (42, 'someone@example.com', '2024-01-15 10:00:00');\n".utf8)
        return (0..<count).map { line[$0 % line.count] }
    }

    func testRoundTripsManySizesAndKinds() throws {
        let inputs: [(String, [UInt8])] = [
            ("empty", []),
            ("one byte", [0x41]),
            ("text 100 KiB", textBytes(100 * 1024)),
            ("text 5 MiB", textBytes(5 * 1024 * 1024 + 17)),
            ("incompressible 3 MiB", randomBytes(3 * 1024 * 1024 + 3, seed: 7)),
        ]
        for (name, input) in inputs {
            for level in [1, 6, 9] {
                let compressed = try compress(input, level: level)
                XCTAssertEqual(try decompress(compressed), input, "\(name) at level \(level)")
            }
        }
    }

    func testParallelCompressionRoundTripsAsOneMemberAndKeepsTheRatio() throws {
        let inputs: [(String, [UInt8])] = [
            ("empty", []), ("one byte", [7]), ("exactly one block", textBytes(65_536)),
            ("text 3.3 MiB", textBytes(3_400_000)), ("incompressible 1 MiB", randomBytes(1 << 20, seed: 9)),
        ]
        for (name, input) in inputs {
            for jobs in [2, 3] {
                let compressed = try compress(input, level: 6, chunk: 100_000, jobs: jobs, blockSize: 65_536)
                var members = 0
                var output: [UInt8] = []
                let decompressor = try GzipDecompressor { output.append(contentsOf: $0) }
                try compressed.withUnsafeBytes { try decompressor.write($0) }
                try decompressor.finish()
                members = decompressor.membersCompleted
                XCTAssertEqual(output, input, "\(name), \(jobs) jobs")
                XCTAssertEqual(members, 1, "\(name): one gzip member")
            }
        }
        let text = textBytes(4_000_000) + randomBytes(200_000, seed: 4)
        let serial = try compress(text, level: 6).count
        let parallel = try compress(text, level: 6, jobs: 2, blockSize: 128 * 1024).count
        XCTAssertLessThan(Double(parallel), Double(serial) * 1.02, "parallel output within 2% of serial gzip -6")
    }

    func testParallelOutputIsReadByStockGzip() throws {
        try checkWithStockGzip(try compress(textBytes(3 * 1024 * 1024) + randomBytes(500_000, seed: 8), jobs: 2, blockSize: 200_000),
                               expected: textBytes(3 * 1024 * 1024) + randomBytes(500_000, seed: 8))
    }

    private func checkWithStockGzip(_ compressed: [UInt8], expected input: [UInt8]) throws {
        let directory = NSTemporaryDirectory() + "gzip-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/data.gz"
        _ = FileManager.default.createFile(atPath: path, contents: Data(compressed))
        _ = FileManager.default.createFile(atPath: path + ".raw", contents: Data(input))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "gzip -t '\(path)' && gzip -dc '\(path)' | cmp - '\(path).raw'"]
        try process.run()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, "gzip -t / gzip -dc disagree with our output")
    }

    func testOutputIsReadByStockGzip() throws {
        let input = textBytes(2 * 1024 * 1024) + randomBytes(300_000, seed: 3)
        try checkWithStockGzip(try compress(input), expected: input)
    }

    func testReadsMultiMemberFiles() throws {
        let first = textBytes(70_000), second = randomBytes(10_000, seed: 11), third = textBytes(1)
        let joined = try compress(first) + compress(second) + compress(third)
        XCTAssertEqual(try decompress(joined, chunk: 1_000), first + second + third)
    }

    func testTruncatedStreamIsRejected() throws {
        let compressed = try compress(textBytes(200_000))
        for cut in [1, 10, compressed.count / 2, compressed.count - 1] {
            XCTAssertThrowsError(try decompress(Array(compressed[0..<cut])), "cut at \(cut)") { error in
                XCTAssertEqual((error as? GzipError)?.kind, .truncated, "cut at \(cut): \(error)")
            }
        }
        XCTAssertThrowsError(try decompress([]))
    }

    func testFlippedByteIsRejected() throws {
        var compressed = try compress(randomBytes(100_000, seed: 5))
        compressed[compressed.count / 2] ^= 0x01
        XCTAssertThrowsError(try decompress(compressed)) { error in
            XCTAssertEqual((error as? GzipError)?.kind, .corrupt)
        }
    }

    /// WAL segments are compressed whole (`WholeBufferGzip`, ISA-L's igzip) and read back by the
    /// same streaming decompressor as everything else, by libdeflate's whole member, and by stock gzip.
    func testWholeBufferGzipIsReadByOurDecompressorAndStockGzip() throws {
        let walLike = (0..<64).flatMap { page in randomBytes(2048, seed: UInt64(page)) + [UInt8](repeating: UInt8(page), count: 6144) }
        let inputs: [(String, [UInt8])] = [
            ("empty", []),
            ("one byte", [0x41]),
            ("text 5 MiB", textBytes(5 * 1024 * 1024 + 17)),
            ("incompressible 3 MiB", randomBytes(3 * 1024 * 1024 + 3, seed: 7)),
            ("WAL-like pages", walLike),
            ("a 16 MiB segment, text and random runs", (0..<16).flatMap { textBytes(786_432) + randomBytes(262_144, seed: UInt64($0)) }),
        ]
        for (name, input) in inputs {
            let compressed = [UInt8](try input.withUnsafeBytes { try WholeBufferGzip.compress($0) })
            XCTAssertEqual(try decompress(compressed), input, name)
            XCTAssertEqual(compressed.withUnsafeBytes { WholeBufferGzip.decompressMember($0, sizeLimit: 1 << 30) }.map { [UInt8]($0) }, input, name)
            // Incompressible input is stored: never much larger than it was.
            XCTAssertLessThanOrEqual(compressed.count, input.count + input.count / 1000 + 64, name)
        }
        // Smaller than its input where there is something to gain, as zlib's level 1 is.
        let walCompressed = try walLike.withUnsafeBytes { try WholeBufferGzip.compress($0) }
        XCTAssertLessThan(walCompressed.count, walLike.count / 2)
        try checkWithStockGzip([UInt8](walCompressed), expected: walLike)
    }

    /// One member within the size limit is inflated whole; anything else is left (nil) to the
    /// streaming decompressor, so that a damaged stream is never half-accepted here.
    func testDecompressMemberTakesOnlyOneWholeValidMember() throws {
        let input = textBytes(300_000) + randomBytes(50_000, seed: 9)
        let member = [UInt8](try input.withUnsafeBytes { try WholeBufferGzip.compress($0) })
        let zlibMember = try compress(input, level: 6)
        for (name, stream) in [("igzip's", member), ("zlib's", zlibMember)] {
            XCTAssertEqual(stream.withUnsafeBytes { WholeBufferGzip.decompressMember($0, sizeLimit: 1 << 30) }.map { [UInt8]($0) }, input, name)
        }
        var flipped = member, wrongCRC = member, wrongLength = member
        flipped[member.count / 2] ^= 0x10
        wrongCRC[member.count - 8] ^= 0x01
        wrongLength[member.count - 1] ^= 0x01
        let refused: [(String, [UInt8], Int)] = [
            ("two members", member + member, 1 << 30),
            ("a flipped byte", flipped, 1 << 30),
            ("a wrong CRC", wrongCRC, 1 << 30),
            ("a wrong length", wrongLength, 1 << 30),
            ("cut short", Array(member.dropLast(100)), 1 << 30),
            ("past the size limit", member, input.count - 1),
            ("empty", [], 1 << 30),
        ]
        for (name, stream, limit) in refused {
            XCTAssertNil(stream.withUnsafeBytes { WholeBufferGzip.decompressMember($0, sizeLimit: limit) }, name)
        }
    }

    func testInvalidLevelIsRefused() {
        XCTAssertThrowsError(try GzipCompressor(level: 10) { _ in })
        XCTAssertThrowsError(try GzipCompressor(level: -1) { _ in })
    }
}
