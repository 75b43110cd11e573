import BackupStorage
import Crypto
import Foundation
import Gzip
import PostgresClient
@testable import RecoveryKit
import XCTest

/// Every error, whatever layer throws it, reaches the exit-code table with its own message and a hint.
final class RecoveryErrorTests: XCTestCase {
    func testEveryExitStatusHasAHint() {
        for status in ExitStatus.allCases where status != .success {
            XCTAssertFalse(status.defaultHint.isEmpty, status.name)
        }
    }

    func testFileErrorsNameThePathAndAreRepositoryErrors() {
        let path = "/nonexistent/dbrecovery/incident.json"
        var caught: Error?
        do { try Data("x".utf8).write(to: URL(fileURLWithPath: path)) } catch { caught = error }
        let classified = RecoveryError.classify(caught ?? CocoaError(.fileWriteUnknown))
        XCTAssertEqual(classified.code, .repositoryError)
        XCTAssertTrue(classified.message.contains(path), classified.message)
        XCTAssertTrue(classified.message.hasPrefix("cannot "), classified.message)
        XCTAssertFalse(classified.message.contains("cannot read"), classified.message)
        XCTAssertNotNil(classified.hint)
    }

    func testDamagedJSONIsABackupCorruptError() {
        struct Shape: Decodable { let id: String }
        var caught: Error?
        do { _ = try JSONDecoder().decode(Shape.self, from: Data("{}".utf8)) } catch { caught = error }
        let classified = RecoveryError.classify(caught ?? CocoaError(.coderReadCorrupt))
        XCTAssertEqual(classified.code, .backupCorrupt)
        XCTAssertTrue(classified.message.contains("missing field id"), classified.message)
    }

    func testDecryptionFailureSaysAlteredOrWrongKey() throws {
        let sealed = try AES.GCM.seal(Data("secret".utf8), using: SymmetricKey(size: .bits256))
        var caught: Error?
        do { _ = try AES.GCM.open(sealed, using: SymmetricKey(size: .bits256)) } catch { caught = error }
        let classified = RecoveryError.classify(caught ?? CocoaError(.coderReadCorrupt))
        XCTAssertEqual(classified.code, .backupCorrupt)
        XCTAssertTrue(classified.message.contains("decryption failed"), classified.message)
        XCTAssertTrue(classified.hint?.contains("--encryption-key-file") == true)
    }

    func testACompressionFailureIsNotReportedAsDamagedData() {
        let classified = RecoveryError.classify(GzipError(kind: .compression, operation: "deflate", message: "zlib stopped with code -4"))
        XCTAssertEqual(classified.code, .failure)
        XCTAssertTrue(classified.message.hasPrefix("compressing failed"), classified.message)
        XCTAssertFalse(classified.message.contains("damaged"))
        let damaged = RecoveryError.classify(GzipError(kind: .corrupt, operation: "inflate", message: "invalid block type"))
        XCTAssertEqual(damaged.code, .backupCorrupt)
    }

    func testALockTimeoutNamesTheBlockerWithItsOwnCode() {
        let error = PostgresError(kind: .query, operation: "SELECT count(*) FROM t", message: "canceling statement due to lock timeout",
                                  sqlState: PostgresError.lockNotAvailable).with(blockingSessions: "blocked by pid 42 (user app, application psql, active)")
        let classified = RecoveryError.classify(error)
        XCTAssertEqual(classified.code, .lockTimeout)
        XCTAssertTrue(classified.message.contains("pid 42"), classified.message)
        XCTAssertTrue(classified.hint?.contains("--lock-wait") == true)
    }

    func testAMalformedURLIsAUsageError() {
        let classified = RecoveryError.classify(PostgresError(kind: .invalidConnectionString, operation: "connect", message: "invalid port number"))
        XCTAssertEqual(classified.code, .usage)
    }

    func testAnUnknownErrorStillGetsAHint() {
        struct Odd: Error {}
        let classified = RecoveryError.classify(Odd())
        XCTAssertEqual(classified.code, .failure)
        XCTAssertNotNil(classified.hint)
    }
}
