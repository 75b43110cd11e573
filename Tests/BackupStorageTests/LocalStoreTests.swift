import BackupStorage
import Foundation
import XCTest

final class LocalStoreTests: XCTestCase {
    var root: String!
    var store: LocalStore!

    override func setUpWithError() throws {
        root = NSTemporaryDirectory() + "store-\(UUID().uuidString)/repo"
        let top = (root as NSString).deletingLastPathComponent
        addTeardownBlock { try? FileManager.default.removeItem(atPath: top) }
        store = try LocalStore(root: root, create: true)
    }

    private func mode(_ path: String) throws -> Int? {
        try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
    }

    func testWriterIsInvisibleUntilCommitAndModesArePrivate() throws {
        let writer = try store.makeWriter("backups/a/data")
        try [UInt8](repeating: 7, count: 1000).withUnsafeBytes { try writer.write($0) }
        XCTAssertEqual(try store.list(prefix: "backups/").map(\.key).filter { !$0.contains(".partial-") }, [])
        try writer.commit()
        XCTAssertEqual(try store.list(prefix: "backups/").map(\.key), ["backups/a/data"])
        XCTAssertEqual(try store.list(prefix: "backups/")[0].size, 1000)
        XCTAssertEqual(try mode(root + "/backups/a/data"), 0o600)
        XCTAssertEqual(try mode(root + "/backups/a"), 0o700)
        XCTAssertEqual(try mode(root), 0o700)
    }

    func testAbortLeavesNothing() throws {
        let writer = try store.makeWriter("backups/b/data")
        try [UInt8](repeating: 1, count: 10).withUnsafeBytes { try writer.write($0) }
        try writer.abort()
        XCTAssertEqual(try store.list(prefix: "").map(\.key), [])
    }

    func testReadsBackWhatWasWrittenAndDeletesInOrder() throws {
        try store.write("backups/c/manifest.json", contents: Data("{}".utf8))
        try store.write("backups/c/dump.sql.gz", contents: Data([1, 2]))
        XCTAssertEqual(try store.read("backups/c/manifest.json"), Data("{}".utf8))
        try store.delete(["backups/c/manifest.json", "backups/c/dump.sql.gz", "backups/c/never-existed"])
        XCTAssertEqual(try store.list(prefix: "").map(\.key), [])
        XCTAssertFalse(FileManager.default.fileExists(atPath: root + "/backups/c"), "empty backup folder should go")
        XCTAssertThrowsError(try store.read("backups/c/manifest.json")) { error in
            XCTAssertEqual((error as? StorageError)?.kind, .notFound)
        }
    }

    func testRefusesKeysThatEscapeTheRepository() {
        for key in ["../x", "a/../../x", "/etc/passwd", "", "a//b", "./a"] {
            XCTAssertThrowsError(try store.write(key, contents: Data()), key)
        }
    }

    /// Issue 19: a failed (aborted) write leaves no empty backup folder behind.
    func testAnAbortedWriteLeavesNoEmptyFolder() throws {
        let writer = try store.makeWriter("backups/20260101T000000Z-gone/dump.sql.gz")
        try Data([1, 2, 3]).withUnsafeBytes { try writer.write($0) }
        try writer.abort()
        XCTAssertFalse(FileManager.default.fileExists(atPath: store.root + "/backups/20260101T000000Z-gone"))
    }

    func testSecondLockFailsAndNamesTheHolder() throws {
        let first = try store.lock(holder: LockHolder(command: "dbbackup", pid: 1234, host: "db1"))
        XCTAssertThrowsError(try store.lock(holder: LockHolder(command: "dbprune"))) { error in
            let error = error as? StorageError
            XCTAssertEqual(error?.kind, .locked)
            XCTAssertTrue(error?.message.contains("dbbackup (pid 1234 on db1") ?? false, error?.message ?? "")
        }
        try first.release()
        let second = try store.lock(holder: LockHolder(command: "dbprune"))
        try second.release()
    }

    func testRepositoryAddressesParse() throws {
        XCTAssertEqual(try RepositoryLocation(parsing: "/var/backups"), .local(path: "/var/backups"))
        XCTAssertEqual(try RepositoryLocation(parsing: "file:///var/my%20backups"), .local(path: "/var/my backups"))
        XCTAssertEqual(try RepositoryLocation(parsing: "s3://bucket/some/prefix/"), .s3(bucket: "bucket", prefix: "some/prefix"))
        for bad in ["", "file://relative", "ftp://host/x", "s3://ab"] {
            XCTAssertThrowsError(try RepositoryLocation(parsing: bad), bad)
        }
        // A '%' that starts no escape is kept as written (its next two characters were dropped).
        XCTAssertEqual(try RepositoryLocation(parsing: "file:///var/100%zz/a%2"), .local(path: "/var/100%zz/a%2"))
        XCTAssertEqual(try RepositoryLocation(parsing: "file:///var/%C3%A9t%c3%a9"), .local(path: "/var/été"))
    }

    /// Round 8, finding 7: libcurl removes '.' and '..' segments from a URL after it was signed, so
    /// s3://bkt/prod/./app was written under prod/app (another repository's space, its lock included)
    /// and listed under prod/./app, or refused by S3 as a bad signature blamed on the credentials.
    func testDotSegmentsInAnS3PrefixAreRefusedWithTheFix() throws {
        for (bad, fix) in [("s3://bkt/prod/./app", "s3://bkt/prod/app"), ("s3://bkt/prod/../staging/", "s3://bkt/staging"),
                           ("s3://bkt/./", "s3://bkt/"), ("s3://bkt/a/..", "s3://bkt/")] {
            XCTAssertThrowsError(try RepositoryLocation(parsing: bad), bad) { error in
                guard let error = error as? StorageError else { return XCTFail("\(bad): \(error)") }
                XCTAssertEqual(error.kind, .invalidLocation, bad)
                XCTAssertTrue(error.message.contains("path segment"), "\(bad): \(error.message)")
                XCTAssertTrue(error.hint?.contains(fix) ?? false, "\(bad): \(error.hint ?? "")")
            }
        }
        // Dots inside a name are names, and a local path is resolved by the file system for reads and writes alike.
        XCTAssertEqual(try RepositoryLocation(parsing: "s3://bkt/prod/.hidden/..x/a.b"), .s3(bucket: "bkt", prefix: "prod/.hidden/..x/a.b"))
        XCTAssertEqual(try RepositoryLocation(parsing: "/var/backups/../b"), .local(path: "/var/backups/../b"))
    }

    /// Selective restores read one part of a dump: exactly the bytes asked for, and a file that
    /// ends before the range is an error, not a short read.
    func testRangedReaderReadsExactlyTheRange() throws {
        let bytes = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        try store.write("backups/a/data", contents: Data(bytes))
        func read(_ range: Range<UInt64>) throws -> [UInt8] {
            let reader = try store.makeReader("backups/a/data", range: range)
            defer { reader.close() }
            var result: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 333)
            while true {
                let count = try buffer.withUnsafeMutableBytes { try reader.read(into: $0) }
                if count == 0 { return result }
                result += buffer[0..<count]
            }
        }
        XCTAssertEqual(try read(1234..<5678), Array(bytes[1234..<5678]))
        XCTAssertEqual(try read(0..<10_000), bytes)
        XCTAssertEqual(try read(9_999..<10_000), [bytes[9_999]])
        XCTAssertThrowsError(try read(9_000..<10_001)) { error in
            XCTAssertTrue("\(error)".contains("truncated"), "\(error)")
        }
    }
}

/// A lock holder killed while its parent does not collect it (a supervisor, a container entrypoint)
/// stays a zombie: `kill(pid, 0)` succeeds, yet it holds nothing. An outside attack found such a
/// holder's lock kept until `--lock-wait` ran out, "reclaimed once that process is gone".
final class ProcessLivenessTests: XCTestCase {
    func testAZombieHolderIsGone() throws {
        var pid: pid_t = 0
        let arguments = ["/bin/true"]
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        XCTAssertEqual(posix_spawn(&pid, "/bin/true", nil, nil, &argv, environ), 0)
        defer { var status: Int32 = 0; waitpid(pid, &status, 0) }   // collected at the end, not before
        let deadline = Date().addingTimeInterval(10)
        while !ProcessLiveness.hasExited(pid), Date() < deadline { usleep(10_000) }
        XCTAssertTrue(ProcessLiveness.hasExited(pid), "the child never became a zombie")
        XCTAssertEqual(kill(pid, 0), 0, "a zombie still answers kill(pid, 0)")
        XCTAssertTrue(ProcessLiveness.isGone(LockHolder(command: "dbbackup", pid: pid)))
        XCTAssertFalse(ProcessLiveness.isGone(LockHolder(command: "dbbackup")), "this process runs")
    }
}
