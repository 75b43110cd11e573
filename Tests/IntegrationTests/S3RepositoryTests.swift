@testable import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// dbbackup, dbverify and dbrestore with an `s3://` repository on a real S3-compatible server.
final class S3RepositoryTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useS3Repository(prefix: "prod/app")
        // About 24 MB of incompressible data: more than three 5 MiB parts after gzip.
        try useDatabase(prefix: "s3", seed: """
            CREATE TABLE blobs (id int PRIMARY KEY, data bytea);
            INSERT INTO blobs SELECT g, decode(string_agg(md5(g::text || ':' || i::text), ''), 'hex')
            FROM generate_series(1, 3000) g, generate_series(1, 500) i GROUP BY g;
            CREATE TABLE users (id int PRIMARY KEY, email text);
            INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 1000) g;
            """)
    }

    private func tool(_ name: String, _ arguments: [String], endpoint: String) throws -> TestProcess.Result {
        try TestProcess.tool(name, arguments, cluster: cluster, environment: s3.environment(endpoint: endpoint))
    }

    private func store() throws -> S3Store {
        try bucketStore(prefix: "prod/app")
    }

    func testBackupOfSeveralPartsIsListedVerifiedAndRestored() throws {
        let backup = try tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository, "--json"])
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let summary = try JSONSerialization.jsonObject(with: Data(backup.standardOutput.utf8)) as? [String: Any]
        let id = try XCTUnwrap(summary?["id"] as? String)
        XCTAssertGreaterThan(summary?["stored_bytes"] as? Int ?? 0, 3 * 5 * 1024 * 1024, "needs more than three 5 MiB parts")
        XCTAssertEqual(try store().openMultipartUploads(), [])

        let list = try tool("dbrestore", ["list", "--repo", repository, "--json"])
        XCTAssertEqual(list.status, 0, list.standardError)
        XCTAssertTrue(list.standardOutput.contains(id))

        let files = try tool("dbverify", ["--files", "latest", "--repo", repository])
        XCTAssertEqual(files.status, 0, files.standardError + files.standardOutput)

        let target = "restored_\(UInt32.random(in: 0...UInt32.max))"
        let restore = try tool("dbrestore", [id, "--yes", "--repo", repository, "--database-url", cluster.url(database: target)])
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertEqual(try cluster.rowCounts(database: target), ["public.blobs": 3000, "public.users": 1000])
    }

    func testVirtualHostedAddressingAndServerSideEncryption() throws {
        // libcurl resolves *.localhost itself, so bucket.localhost reaches the loopback server.
        let endpoint = s3.endpoint.replacingOccurrences(of: "127.0.0.1", with: "localhost")
        var environment = s3.environment(endpoint: endpoint)
        environment["DBRECOVERY_S3_ADDRESSING"] = "virtual"
        environment["DBRECOVERY_S3_SSE"] = "AES256"
        let backup = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository, "--json"],
                                          cluster: cluster, environment: environment)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let id = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(backup.standardOutput.utf8)) as? [String: Any])?["id"] as? String)
        let head = try TestProcess.run("/usr/bin/env", ["python3", "-c", """
            import urllib.request
            r = urllib.request.urlopen(urllib.request.Request('\(s3.endpoint)/\(bucket!)/prod/app/backups/\(id)/dump.sql.gz', method='HEAD',
                headers={'Authorization': 'AWS4-HMAC-SHA256 Credential=A/20240101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0'}))
            print(r.headers.get('x-amz-server-side-encryption'))
            """])
        XCTAssertEqual(head.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines), "AES256", head.standardError)
        XCTAssertEqual(try tool("dbverify", ["--files", id, "--repo", repository]).status, 0)
    }

    func testListingFollowsContinuationTokensAndDeletesInBatches() throws {
        let store = try store()
        store.listPageSize = 7
        let keys = (0..<23).map { String(format: "backups/20260101T0000%02dZ-0000/file", $0) }
        for key in keys { try store.write(key, contents: Data(key.utf8)) }
        XCTAssertEqual(try store.list(prefix: "backups/").map(\.key), keys)
        XCTAssertEqual(try store.read(keys[5]), Data(keys[5].utf8))
        try store.delete(keys)
        XCTAssertEqual(try store.list(prefix: "backups/").map(\.key), [])
    }

    /// `--s3-endpoint`/`--s3-region` and the config file's `[s3]` reach the storage layer of every
    /// command by being passed down with the run's settings (no variable is exported for them).
    func testEndpointAndRegionFromFlagsOrTheConfigFileReachEveryCommand() throws {
        var environment = s3.environment()
        let endpoint = try XCTUnwrap(environment["AWS_ENDPOINT_URL_S3"])
        environment["AWS_ENDPOINT_URL_S3"] = ""   // empty counts as unset
        environment["AWS_REGION"] = ""
        let flags = ["--s3-endpoint", endpoint, "--s3-region", "us-east-1"]
        let backup = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository] + flags,
                                          cluster: cluster, environment: environment)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let id = backup.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        let list = try TestProcess.tool("dbrestore", ["list", "--json", "--repo", repository] + flags, environment: environment)
        XCTAssertEqual(list.status, 0, list.standardError)
        XCTAssertTrue(list.standardOutput.contains(id), list.standardOutput)

        let config = NSTemporaryDirectory() + "s3-config-\(UUID().uuidString).toml"
        try "[s3]\nendpoint = \"\(endpoint)\"\nregion = \"us-east-1\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: config) }
        let files = try TestProcess.tool("dbverify", ["--files", id, "--repo", repository, "--config", config], environment: environment)
        XCTAssertEqual(files.status, 0, files.standardError + files.standardOutput)
        let prune = try TestProcess.tool("dbprune", ["--dry-run", "--repo", repository, "--config", config], environment: environment)
        XCTAssertEqual(prune.status, 0, prune.standardError)
        XCTAssertTrue(prune.standardOutput.contains(id), prune.standardOutput)
    }

    func testInjectedFaultsNeitherFailNorCorruptTheBackup() throws {
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--fail-every", "5", "--drop-every", "11"])
        defer { proxy.stop() }
        let backup = try tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository, "--json"], endpoint: proxy.endpoint)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        // Each retry is logged on stderr with its attempt number and S3's answer, never a credential,
        // and --json's stdout stays one JSON document.
        let retries = backup.standardError.split(separator: "\n").filter { $0.hasPrefix("dbbackup: warning: S3 attempt ") }
        XCTAssertFalse(retries.isEmpty, backup.standardError)
        XCTAssertTrue(retries.contains { $0.contains(" of 8 failed: ") && $0.contains("503 SlowDown") }, backup.standardError)
        for secret in [s3.environment()["AWS_SECRET_ACCESS_KEY"], s3.environment()["AWS_ACCESS_KEY_ID"]].compactMap({ $0 }) {
            XCTAssertFalse(backup.standardError.contains(secret), "a credential reached the log")
        }
        XCTAssertFalse(backup.standardError.contains("\u{1B}["), "no ANSI codes when stderr is not a terminal")
        XCTAssertNotNil(try JSONSerialization.jsonObject(with: Data(backup.standardOutput.utf8)) as? [String: Any], backup.standardOutput)
        // Checked straight against the server, not through the proxy.
        let files = try tool("dbverify", ["--files", "latest", "--repo", repository])
        XCTAssertEqual(files.status, 0, files.standardError + files.standardOutput)
        XCTAssertEqual(try store().openMultipartUploads(), [])
        let target = "faulty_\(UInt32.random(in: 0...UInt32.max))"
        let restore = try tool("dbrestore", ["--from-database", database!, "latest", "--yes", "--quiet", "--repo", repository, "--database-url", cluster.url(database: target)],
                               endpoint: proxy.endpoint)
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertFalse(restore.standardError.contains("S3 attempt"), "--quiet logs errors only: \(restore.standardError)")
        XCTAssertEqual(try cluster.rowCounts(database: target)["public.blobs"], 3000)
    }

    func testASlowServerHitsTheRequestTimeoutAndFailsCleanly() throws {
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--delay", "3"])
        defer { proxy.stop() }
        var environment = s3.environment(endpoint: proxy.endpoint)
        environment["DBRECOVERY_S3_TIMEOUT_SECONDS"] = "1"
        environment["DBRECOVERY_S3_MAX_ATTEMPTS"] = "2"
        let started = Date()
        let backup = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository],
                                          cluster: cluster, environment: environment)
        XCTAssertEqual(backup.status, ExitStatus.repositoryError.rawValue, backup.standardError)
        XCTAssertTrue(backup.standardError.contains("gave up after 2 attempts"), backup.standardError)
        XCTAssertLessThan(Date().timeIntervalSince(started), 30, "timeouts are honoured, not waited out")
        XCTAssertFalse(try store().list(prefix: "backups/").contains { $0.key.hasSuffix("manifest.json") })
    }

    func testServerGoneForGoodFailsCleanlyWithoutManifestOrOpenUpload() throws {
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--fail-parts-after", "1"])
        defer { proxy.stop() }
        let backup = try tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository], endpoint: proxy.endpoint)
        XCTAssertEqual(backup.status, ExitStatus.repositoryError.rawValue, backup.standardError)
        XCTAssertTrue(backup.standardError.contains("503"), backup.standardError)
        XCTAssertFalse(try store().list(prefix: "backups/").contains { $0.key.hasSuffix("manifest.json") })
        XCTAssertEqual(try store().openMultipartUploads(), [], "the failed upload must be aborted")
        XCTAssertFalse(try store().list(prefix: "locks/").contains { $0.key.hasSuffix("repository.lock") }, "lock released")

        let unreachable = try tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository],
                                   endpoint: "http://127.0.0.1:1")
        XCTAssertEqual(unreachable.status, ExitStatus.repositoryError.rawValue, unreachable.standardError)
    }
}
