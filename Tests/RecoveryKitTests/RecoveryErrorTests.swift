import BackupStorage
import Crypto
import Foundation
import Gzip
import PostgresClient
import ProcessSignals
@testable import RecoveryKit
import XCTest

/// Every error, whatever layer throws it, reaches the exit-code table with its own message and a hint.
final class RecoveryErrorTests: XCTestCase {
    func testEveryExitStatusHasAHint() {
        for status in ExitStatus.allCases where status != .success {
            XCTAssertFalse(status.defaultHint.isEmpty, status.name)
        }
    }

    /// After a signal every failed statement becomes an `InterruptedError`; the clean-up's drop of a
    /// scratch database must still retry the cancel (57014) the signal's hook aimed at its predecessor,
    /// or the database is left behind (round 6 f1 item 2).
    func testAStatementCancelledAfterTheSignalIsRetriedByTheCleanUp() throws {
        var attempts = 0
        let value = try ServerRetry.run(on: [PostgresError.queryCanceled], attempts: 3, pause: 0.001, afterInterruption: true) { () -> Int in
            attempts += 1
            if attempts == 1 { throw InterruptedError(signal: SIGTERM, cause: "canceling statement due to user request", serverState: "57014") }
            return 7
        }
        XCTAssertEqual(value, 7)
        XCTAssertEqual(attempts, 2, "the cancelled drop ran again")
        // Without the server's SQLSTATE (a real refusal, or no server error at all) nothing is retried.
        attempts = 0
        XCTAssertThrowsError(try ServerRetry.run(on: [PostgresError.queryCanceled], attempts: 3, pause: 0.001, afterInterruption: true) { () -> Int in
            attempts += 1
            throw InterruptedError(signal: SIGTERM, serverState: "42501")
        })
        XCTAssertEqual(attempts, 1)
    }

    /// S3 trouble, a reset, an I/O error or a refused permission is the repository's; a missing,
    /// archived or not-a-file object is the backup's own (round 6 f1 item 1).
    func testRepositoryTroubleIsToldFromABackupsOwnFault() {
        for kind: StorageError.Kind in [.remote, .io, .permissionDenied, .diskFull, .readOnly] {
            XCTAssertTrue(RecoveryError.isRepositoryTrouble(StorageError(kind, object: "s3://b/k", message: "m")), "\(kind)")
        }
        for kind: StorageError.Kind in [.notFound, .archived, .invalidLocation, .locked] {
            XCTAssertFalse(RecoveryError.isRepositoryTrouble(StorageError(kind, object: "s3://b/k", message: "m")), "\(kind)")
        }
        XCTAssertFalse(RecoveryError.isRepositoryTrouble(RecoveryError(.backupCorrupt, "sha256 does not match")))
        let wrapped = RecoveryError.repositoryTrouble(StorageError(.remote, object: "s3://b/app/backups/X/dump.sql.gz", message: "GET answered 503"),
                                                      repository: "s3://b/app", backup: "X", untouched: "app was not touched")
        XCTAssertEqual(wrapped.code, .repositoryError)
        XCTAssertTrue(RecoveryError.isRepositoryTrouble(wrapped))
        XCTAssertTrue(wrapped.message.contains("repository s3://b/app failed while reading backup X: s3://b/app/backups/X/dump.sql.gz"), wrapped.message)
        XCTAssertTrue(wrapped.hint?.contains("app was not touched") == true, wrapped.hint ?? "")
    }

    func testFileErrorsNameThePathAndAreRepositoryErrors() {
        let path = "/nonexistent/dbrecovery/incident.json"
        let classified = assertClassified(thrown { try Data("x".utf8).write(to: URL(fileURLWithPath: path)) }, as: .repositoryError, saying: path)
        XCTAssertTrue(classified.message.hasPrefix("cannot "), classified.message)
        XCTAssertFalse(classified.message.contains("cannot read"), classified.message)
        XCTAssertNotNil(classified.hint)
    }

    /// A deadlock names who waited for what (the server's detail, which psql prints and the server's
    /// hint only points at the log for), and says that the aborted transaction left nothing behind.
    func testADeadlockNamesTheSessionsAndSaysNothingOfTheTransactionWasApplied() {
        let deadlock = PostgresError(kind: .query, operation: "ALTER TABLE \"sales\".\"orders\" RENAME", message: "deadlock detected", sqlState: "40P01",
                                     detail: "Process 1286 waits for AccessExclusiveLock on relation 16396 of database 16384; blocked by process 1281.\n"
                                         + "Process 1281 waits for RowExclusiveLock on relation 16395 of database 16384; blocked by process 1286.",
                                     serverHint: "See server log for query details.")
        assertClassified(deadlock, as: .databaseError, saying: "deadlock detected (SQLSTATE 40P01): Process 1286 waits for AccessExclusiveLock on relation 16396 "
                            + "of database 16384; blocked by process 1281. Process 1281 waits", hint: "nothing of that transaction was applied; run again")
    }

    func testDamagedJSONIsABackupCorruptError() {
        struct Shape: Decodable { let id: String }
        assertClassified(thrown { _ = try JSONDecoder().decode(Shape.self, from: Data("{}".utf8)) }, as: .backupCorrupt, saying: "missing field id")
    }

    func testDecryptionFailureSaysAlteredOrWrongKey() throws {
        let sealed = try AES.GCM.seal(Data("secret".utf8), using: SymmetricKey(size: .bits256))
        assertClassified(thrown { _ = try AES.GCM.open(sealed, using: SymmetricKey(size: .bits256)) }, as: .backupCorrupt,
                         saying: "decryption failed", hint: "--encryption-key-file")
    }

    func testACompressionFailureIsNotReportedAsDamagedData() {
        let classified = assertClassified(GzipError(kind: .compression, operation: "deflate", message: "zlib stopped with code -4"),
                                          as: .failure, saying: "compressing failed")
        XCTAssertTrue(classified.message.hasPrefix("compressing failed"), classified.message)
        XCTAssertFalse(classified.message.contains("damaged"))
        assertClassified(GzipError(kind: .corrupt, operation: "inflate", message: "invalid block type"), as: .backupCorrupt,
                         saying: "compressed data is damaged: ", hint: "run dbverify --files")
    }

    /// A value JSON cannot hold is this tool's bug, not damage: exit 1, asking for a report.
    func testAnUnencodableDocumentIsAFailureNotDamage() {
        assertClassified(thrown { _ = try JSONEncoder().encode([Double.nan]) }, as: .failure, saying: "could not encode a JSON document",
                         hint: "this is a bug in dbrecovery")
    }

    func testALockTimeoutNamesTheBlockerWithItsOwnCode() {
        let error = PostgresError(kind: .query, operation: "SELECT count(*) FROM t", message: "canceling statement due to lock timeout",
                                  sqlState: PostgresError.lockNotAvailable).with(blockingSessions: "blocked by pid 42 (user app, application psql, active)")
        assertClassified(error, as: .lockTimeout, saying: "pid 42", hint: "--lock-wait")
    }

    func testAMalformedURLIsAUsageError() {
        assertClassified(PostgresError(kind: .invalidConnectionString, operation: "connect", message: "invalid port number"),
                         as: .usage, saying: "invalid port number")
    }

    func testAnUnknownErrorStillGetsAHint() {
        struct Odd: Error {}
        let classified = RecoveryError.classify(Odd())
        XCTAssertEqual(classified.code, .failure)
        XCTAssertNotNil(classified.hint)
    }

    /// What `body` throws; fails the test when it throws nothing.
    private func thrown(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> Error {
        do { try body() } catch { return error }
        XCTFail("expected an error", file: file, line: line)
        return CancellationError()
    }

    /// Classifies `error` and checks its exit code, that the message names `saying` and, when given,
    /// that the hint names `hint`; returns the classification for further checks.
    @discardableResult
    private func assertClassified(_ error: Error, as code: ExitStatus, saying: String, hint: String? = nil,
                                  file: StaticString = #filePath, line: UInt = #line) -> RecoveryError {
        let classified = RecoveryError.classify(error)
        XCTAssertEqual(classified.code, code, file: file, line: line)
        XCTAssertTrue(classified.message.contains(saying), classified.message, file: file, line: line)
        if let hint {
            XCTAssertTrue(classified.hint?.contains(hint) == true, classified.hint ?? "no hint", file: file, line: line)
        }
        return classified
    }
}
