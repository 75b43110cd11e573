@testable import Gzip
import XCTest

final class ParallelDeflateTests: XCTestCase {
    /// `--jobs N` means N cores: never more than N blocks compress at once, however many slots wait.
    func testNeverCompressesMoreBlocksAtOnceThanJobs() throws {
        var input = [UInt8](repeating: 0, count: 8 << 20)
        var state: UInt32 = 12345
        for index in input.indices {
            state = state &* 1_103_515_245 &+ 12345
            input[index] = UInt8(truncatingIfNeeded: state >> 16) & 0x3f
        }
        for jobs in [1, 2, 3] {
            var output: [UInt8] = []
            let deflate = ParallelDeflate(level: 6, jobs: jobs, blockSize: 64 * 1024) { output.append(contentsOf: $0) }
            try input.withUnsafeBytes { try deflate.write($0) }
            try deflate.finish()
            XCTAssertGreaterThanOrEqual(deflate.peakConcurrentBlocks, 1)
            XCTAssertLessThanOrEqual(deflate.peakConcurrentBlocks, jobs, "--jobs \(jobs) compressed \(deflate.peakConcurrentBlocks) blocks at once")
            var restored: [UInt8] = []
            let decompressor = try GzipDecompressor { restored.append(contentsOf: $0) }
            try output.withUnsafeBytes { try decompressor.write($0) }
            try decompressor.finish()
            XCTAssertEqual(restored, input)
        }
    }
}
