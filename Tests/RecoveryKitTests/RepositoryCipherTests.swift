import Foundation
@testable import RecoveryKit
import XCTest

final class RepositoryCipherTests: XCTestCase {
    private let key = try! RepositoryKey(material: Data("unit-test-key-material".utf8))

    private func encrypt(_ plain: Data, object: String = "backups/x/dump.sql.gz") throws -> Data {
        var out = Data()
        let encryptor = try StreamEncryptor(key: key, object: object) { out.append(contentsOf: $0) }
        try plain.withUnsafeBytes { try encryptor.write($0) }
        try encryptor.finish()
        return out
    }

    private func decrypt(_ data: Data, object: String = "backups/x/dump.sql.gz", key: RepositoryKey? = nil) throws -> Data {
        var out = Data()
        let decryptor = StreamDecryptor(key: key ?? self.key, object: object) { out.append(contentsOf: $0) }
        try data.withUnsafeBytes { try decryptor.write($0) }
        try decryptor.finish()
        return out
    }

    func testRoundTripAcrossFrames() throws {
        for size in [0, 1, StreamEncryptor.frameSize, StreamEncryptor.frameSize * 2 + 17] {
            let plain = Data((0..<size).map { UInt8(truncatingIfNeeded: $0) })
            XCTAssertEqual(try decrypt(try encrypt(plain)), plain, "size \(size)")
        }
    }

    func testTruncationReorderingMovingAndWrongKeysAreDetected() throws {
        let plain = Data(repeating: 7, count: StreamEncryptor.frameSize * 2 + 5)
        let sealed = try encrypt(plain)
        let frame = 4 + 12 + StreamEncryptor.frameSize + 16
        let header = RepositoryKey.magic.count
        // Dropping the last frame: every remaining frame is authentic, but the stream has no end.
        XCTAssertThrowsError(try decrypt(sealed.prefix(header + 2 * frame)))
        // Swapping the first two frames.
        var swapped = Data(sealed.prefix(header))
        swapped += sealed[(header + frame)..<(header + 2 * frame)] + sealed[header..<(header + frame)] + sealed[(header + 2 * frame)...]
        XCTAssertThrowsError(try decrypt(swapped))
        // The same bytes presented as another object.
        XCTAssertThrowsError(try decrypt(sealed, object: "backups/y/dump.sql.gz"))
        // Another key.
        XCTAssertThrowsError(try decrypt(sealed, key: try RepositoryKey(material: Data("another-key-material!".utf8))))
        XCTAssertThrowsError(try RepositoryKey(material: Data("short".utf8)))
    }

    /// Issue 19: a (corrupted) header declaring a frame larger than the frame size is refused at
    /// once, before anything is buffered towards it.
    func testAFrameLongerThanTheFrameSizeIsRefusedAtOnce() throws {
        let sealed = try encrypt(Data(repeating: 1, count: 100))
        var forged = Data(sealed.prefix(RepositoryKey.magic.count))
        forged += [0xFF, 0xFF, 0xFF, 0xF0]   // declares almost 4 GiB
        forged += Data(repeating: 0, count: 64)
        XCTAssertThrowsError(try decrypt(forged)) { error in
            XCTAssertTrue("\(error)".contains("more than the"), "\(error)")
        }
    }
}
