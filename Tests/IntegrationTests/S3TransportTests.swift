@testable import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// Issue 21 item 4: S3 requests go through libcurl's easy interface (HTTPTransport), not URLSession.
/// What the transport must keep doing under faults the fault proxy makes: a connection reset in the
/// middle of a body is retried like any dropped transfer, and a SIGTERM while the server holds a part
/// upload ends the run at once (URLSession waited for the answer) and leaves nothing behind.
final class S3TransportTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useDatabase(prefix: "transport", seed: Self.eventsSeed)
        try useS3Repository(prefix: "app")
    }

    func testAConnectionResetInTheMiddleOfABodyIsRetriedAndTheRestoreCompletes() throws {
        let id = try backup()
        // The first two GETs of the dump announce the whole body, send half of it, then reset the connection.
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--cut-match", "\(bucket!)/app/backups/\(id)/dump.sql.gz", "--cut-first", "2"])
        defer { proxy.stop() }
        let target = "reset_\(UInt32.random(in: 0...UInt32.max))"
        let restore = try tool("dbrestore", [id, "--yes", "--repo", repository, "--database-url", cluster.url(database: target)],
                               environment: s3.environment(endpoint: proxy.endpoint))
        XCTAssertEqual(restore.status, 0, restore.standardError)
        let retries = restore.standardError.split(separator: "\n").filter { $0.contains("S3 attempt") && $0.contains("dump.sql.gz") }
        XCTAssertEqual(retries.count, 2, "each cut transfer was seen and retried: \(restore.standardError)")
        for secret in ["test-secret-key", "Signature=", "Credential="] {
            XCTAssertFalse(restore.standardError.contains(secret), "no credential in the retry messages: \(restore.standardError)")
        }
        XCTAssertEqual(try cluster.rowCounts(database: target)["public.events"], 300000)
    }

    func testASignalWhileTheServerHoldsAPartUploadEndsTheBackupAtOnceAndLeavesNothing() throws {
        // Part uploads of the dump reach the proxy, which holds them.
        let (status, waited, errors) = try interruptHeld("dbbackup", common, hold: ["--hold-match", "/dump.sql.gz", "--hold-method", "PUT"])
        XCTAssertEqual(status, ExitStatus.interrupted.rawValue, errors)
        XCTAssertLessThan(waited, 10, "the held part upload was abandoned at the signal, not waited out")
        let errorLines = errors.split(separator: "\n").filter { $0.contains(": error: ") }
        XCTAssertEqual(errorLines.count, 1, "one error line: \(errors)")
        XCTAssertTrue(errorLines.first?.contains("interrupted by SIGTERM") == true, errors)
        XCTAssertTrue(errors.contains("HINT: "), errors)
        XCTAssertEqual(try bucketStore(prefix: "app").list(prefix: "backups/").map(\.key), [], "the interrupted backup left objects")
        XCTAssertEqual(try bucketStore(prefix: "app").openMultipartUploads(), [], "the multipart upload was not aborted")
        XCTAssertFalse(try bucketStore(prefix: "app").list(prefix: "locks/").contains { $0.key.hasSuffix("repository.lock") }, "lock released")
    }
}
