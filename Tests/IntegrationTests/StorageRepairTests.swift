@testable import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// Issue 19, the storage part: leftovers of killed runs are removed by the next run (and said),
/// large objects change storage class by multipart copy, paths are byte-exact, symlinks inside a
/// repository are followed by every command, and three inputs that crashed now fail in one line.
final class StorageRepairTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useDatabase(prefix: "repair", seed: "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 100)")
    }

    private func backup(_ repository: String, environment: [String: String] = [:]) throws -> TestProcess.Result {
        try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository], cluster: cluster, environment: environment)
    }

    func testTheNextRunRemovesThePartialFileOfAKilledBackup() throws {
        try cluster.connect(database: database).execute(script: """
            CREATE TABLE big AS SELECT g, md5(g::text) || md5((g * 7)::text) AS d FROM generate_series(1, 400000) g
            """)
        let repository = TestPaths.repositoryPath(prefix: "killed")
        // zlib's one member: slow enough to be killed midway.
        let killed = try TestProcess.start("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository, "--compression-level", "9"],
                                           cluster: cluster, environment: ["DBRECOVERY_DUMP_LAYOUT": "single-member"])
        let deadline = Date().addingTimeInterval(60)
        var partial: String?
        while partial == nil && Date() < deadline {
            partial = (FileManager.default.enumerator(atPath: repository)?.allObjects as? [String])?.first { $0.contains(".partial-") && $0.hasPrefix("backups/") }
            usleep(5_000)
        }
        killed.send(SIGKILL)
        _ = killed.waitForExit()
        let leftover = try XCTUnwrap(partial, "the killed backup never wrote its partial file")
        XCTAssertTrue(FileManager.default.fileExists(atPath: repository + "/" + leftover))

        let next = try backup(repository)
        XCTAssertEqual(next.status, 0, next.standardError)
        XCTAssertTrue(next.standardError.contains("removed \(leftover)") && next.standardError.contains("left by killed process \(killed.pid)"),
                      next.standardError)
        XCTAssertTrue(next.standardError.contains("removed the stale lock of dbbackup (pid \(killed.pid)"), next.standardError)
        let files = FileManager.default.enumerator(atPath: repository + "/backups")?.allObjects as? [String] ?? []
        XCTAssertFalse(files.contains { $0.contains(".partial-") }, "\(files)")
        XCTAssertEqual(Set(files.compactMap { $0.split(separator: "/").first.map(String.init) }).count, 1, "only the new backup's folder: \(files)")
    }

    func testTheNextRunAbortsMultipartUploadsLeftOpenOnS3() throws {
        try useBucket()
        let store = try bucketStore(prefix: "app")
        // What a SIGKILLed S3 backup leaves: an upload with a part, never completed nor aborted.
        let writer = try store.makeWriter("backups/20260101T000000Z-dead/dump.sql.gz")
        let part = Data(repeating: 7, count: 5 * 1024 * 1024 + 10)
        try part.withUnsafeBytes { try writer.write($0) }
        XCTAssertEqual(try store.openMultipartUploads(), ["app/backups/20260101T000000Z-dead/dump.sql.gz"])
        Thread.sleep(forTimeInterval: 1.1)   // S3 times have whole seconds

        let prune = try TestProcess.tool("dbprune", ["--yes", "--repo", "s3://\(bucket!)/app"], environment: s3.environment())
        XCTAssertEqual(prune.status, 0, prune.standardError)
        XCTAssertTrue(prune.standardError.contains("aborted an open multipart upload of backups/20260101T000000Z-dead/dump.sql.gz"), prune.standardError)
        XCTAssertEqual(try store.openMultipartUploads(), [])
        _ = writer   // kept open until here, as a killed process would have
    }

    func testObjectsOverTheCopyLimitChangeStorageClassByMultipartCopy() throws {
        try useBucket()
        let store = try bucketStore(prefix: "big")
        store.copyObjectLimit = 6 * 1024 * 1024        // stands in for S3's 5 GiB CopyObject limit
        store.copyPartSize = 5 * 1024 * 1024
        let content = Data((0..<(13 * 1024 * 1024)).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 7) })
        try store.write("backups/x/dump.sql.gz", contents: content)
        try store.changeStorageClass("backups/x/dump.sql.gz", to: "GLACIER")
        let head = try store.client.send("HEAD", key: "big/backups/x/dump.sql.gz")
        XCTAssertEqual(head.header("x-amz-storage-class"), "GLACIER")
        XCTAssertTrue(head.header("ETag")?.hasSuffix("-3\"") ?? false, "three UploadPartCopy parts: \(head.headers)")
        XCTAssertEqual(try store.openMultipartUploads(), [])
        let restore = Data("<RestoreRequest><Days>1</Days></RestoreRequest>".utf8)
        _ = try store.client.send("POST", key: "big/backups/x/dump.sql.gz", query: [("restore", "")],
                                  headers: ["content-type": "application/xml", "content-md5": contentMD5(restore)], body: restore)
        XCTAssertEqual(try store.read("backups/x/dump.sql.gz"), content, "the copy holds the same bytes")
        try store.changeStorageClass("backups/x/dump.sql.gz", to: "GLACIER")   // already there: nothing to do
    }

    func testRepositoryPathsAreByteExactAndSymlinksInsideAreFollowed() throws {
        let parent = TestPaths.temporaryDirectory(prefix: "paths")
        let spaced = parent + "/repo "
        XCTAssertEqual(try backup(spaced).status, 0)
        XCTAssertTrue(FileManager.default.fileExists(atPath: spaced + "/backups"), "the backup went to 'repo ' (trailing space kept)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: parent + "/repo"))
        // A name that is not UTF-8 cannot be used byte-exact: refused, nothing written anywhere.
        let latin1 = try TestProcess.shell("cd '\(parent)' && '\(TestPaths.executable("dbbackup"))' --database-url '\(cluster.url(database: database))' --repo $'caf\\xe9'",
                                           environment: cluster.environment)
        XCTAssertEqual(latin1.status, ExitStatus.usage.rawValue, latin1.standardError)
        XCTAssertTrue(latin1.standardError.contains("not UTF-8"), latin1.standardError)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: parent).sorted(), ["repo "])

        // <repo>/backups is a symlink to another disk: every command sees the same backups.
        let repository = parent + "/linked"
        let elsewhere = parent + "/elsewhere"
        try FileManager.default.createDirectory(atPath: repository, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: elsewhere, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: repository + "/backups", withDestinationPath: elsewhere)
        var ids: [String] = []
        for _ in 0..<3 {
            let result = try backup(repository)
            XCTAssertEqual(result.status, 0, result.standardError)
            ids.append(result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines))
            Thread.sleep(forTimeInterval: 1.1)
        }
        let list = try TestProcess.tool("dbrestore", ["list", "--repo", repository])
        XCTAssertTrue(ids.allSatisfy { list.standardOutput.contains($0) }, list.standardOutput + list.standardError)
        XCTAssertEqual(try TestProcess.tool("dbverify", ["--files", "all", "--repo", repository]).status, 0)
        let target = "linked_\(UInt32.random(in: 0...UInt32.max))"
        let restore = try TestProcess.tool("dbrestore", [ids[0], "--yes", "--repo", repository, "--database-url", cluster.url(database: target)], cluster: cluster)
        XCTAssertEqual(restore.status, 0, restore.standardError)
        let policy = parent + "/policy.toml"
        try Data("[local]\nkeep_last = 1\n".utf8).write(to: URL(fileURLWithPath: policy))
        let prune = try TestProcess.tool("dbprune", ["--yes", "--repo", repository, "--policy", policy])
        XCTAssertEqual(prune.status, 0, prune.standardError)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: elsewhere), [ids[2]], "prune acted through the symlink")
        XCTAssertEqual((try? FileManager.default.destinationOfSymbolicLink(atPath: repository + "/backups")), elsewhere, "the symlink itself is kept")
    }

    func testInputsThatCrashedNowFailInOneLineWithADocumentedCode() throws {
        let repository = TestPaths.repositoryPath(prefix: "crash")
        let first = try backup(repository)
        XCTAssertEqual(first.status, 0, first.standardError)
        let id = first.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        // A copy under a name that is no backup id (`cp -a ID ID-copy`) is not a backup: left alone, the run
        // succeeds (it failed every night with exit 23). One under another backup's id names the wrong folder: refused.
        XCTAssertEqual(try TestProcess.run("/bin/cp", ["-a", "\(repository)/backups/\(id)", "\(repository)/backups/\(id)-copy"]).status, 0)
        let copied = try TestProcess.tool("dbprune", ["--yes", "--repo", repository])
        XCTAssertEqual(copied.status, 0, copied.standardError)
        XCTAssertTrue(copied.standardOutput.contains("not ours, left alone"), copied.standardOutput)
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(repository)/backups/\(id)-copy/manifest.json"), "the copy is not ours to delete")
        let other = "20200101T000000Z-beef"
        XCTAssertEqual(try TestProcess.run("/bin/cp", ["-a", "\(repository)/backups/\(id)", "\(repository)/backups/\(other)"]).status, 0)
        let duplicated = try TestProcess.tool("dbprune", ["--yes", "--repo", repository])
        XCTAssertEqual(duplicated.status, ExitStatus.backupCorrupt.rawValue, duplicated.standardError)
        XCTAssertTrue(duplicated.standardError.contains("lies in folder backups/\(other)"), duplicated.standardError)
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(repository)/backups/\(id)/manifest.json"), "nothing deleted")

        let policy = TestPaths.temporaryDirectory(prefix: "crash") + "/policy.toml"
        try Data("[local]\nkeep_within = \"9223372036854775807w\"\n".utf8).write(to: URL(fileURLWithPath: policy))
        let huge = try TestProcess.tool("dbprune", ["--yes", "--repo", repository, "--policy", policy])
        XCTAssertEqual(huge.status, ExitStatus.configuration.rawValue, huge.standardError)
        XCTAssertTrue(huge.standardError.contains("is not a duration"), huge.standardError)

        let region = try TestProcess.tool("dbrestore", ["list", "--repo", "s3://bucket"],
                                          environment: ["AWS_REGION": "us east-1", "AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B"])
        XCTAssertEqual(region.status, ExitStatus.usage.rawValue, region.standardError)
        XCTAssertTrue(region.standardError.contains("AWS_REGION"), region.standardError)
        for result in [duplicated, huge, region] {
            let lines = result.standardError.split(separator: "\n")
            XCTAssertEqual(lines.filter { $0.contains(": error: ") }.count, 1, result.standardError)
            XCTAssertFalse(result.standardError.contains("Fatal error"), result.standardError)
            if let error = lines.firstIndex(where: { $0.contains(": error: ") }), error + 1 < lines.count {
                XCTAssertTrue(lines[error + 1].hasPrefix("HINT: "), result.standardError)
            }
        }
    }
}
