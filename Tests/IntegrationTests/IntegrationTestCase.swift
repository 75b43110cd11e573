import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// The start most integration test classes share, in one place: the suite's cluster with a fresh
/// database seeded with the class's tables, a local repository path not made yet, a migrations
/// directory, and for S3 classes a fresh bucket on the shared S3 server. Each class calls what it needs from its own
/// `setUpWithError`, so that what a test starts from stays visible next to it.
///
/// Kept in this module rather than in TestSupport, so that test discovery on Linux, which reads this
/// module's index, sees the whole chain from each class to `XCTestCase`.
class IntegrationTestCase: XCTestCase {
    var cluster: PostgresCluster!
    var database: String!
    var repository: String!
    var s3: S3Server!
    var bucket: String!
    var migrations: String!

    /// The cluster every test shares (started once for the whole run).
    func useCluster() throws {
        cluster = try PostgresCluster.shared()
    }

    /// 300 000 rows of md5 text in `public.events`, about 35 MB of SQL and 16 MB gzipped: a dump that
    /// takes seconds and goes to S3 in several 5 MiB parts, long enough to interrupt.
    static let eventsSeed = """
        CREATE TABLE events (id bigint PRIMARY KEY, payload text NOT NULL);
        INSERT INTO events SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) FROM generate_series(1, 300000) g;
        """

    /// The shared cluster and a new database named after `prefix`, seeded with `seed` if given.
    func useDatabase(prefix: String, seed: String? = nil) throws {
        try useCluster()
        database = try cluster.createDatabase(prefix: prefix, seed: seed)
    }

    /// A new local repository path (`TestPaths.repositoryPath`); the first tool to use it creates it.
    func useLocalRepository(prefix: String = "repo") {
        repository = TestPaths.repositoryPath(prefix: prefix)
    }

    /// A new migrations directory holding `files` (file name → SQL).
    func useMigrations(_ files: [String: String] = [:]) throws {
        migrations = TestPaths.temporaryDirectory(prefix: "migrations")
        try writeMigrations(files)
    }

    /// Adds (or replaces) `files` (file name → SQL) in the migrations directory.
    func writeMigrations(_ files: [String: String]) throws {
        for (name, sql) in files { try sql.write(toFile: migrations + "/" + name, atomically: true, encoding: .utf8) }
    }

    /// `dbmigrate` with `arguments` on the migrations directory, against `url`, else the database
    /// `name`, else the test's database; whatever its outcome.
    func migrate(_ arguments: [String], database name: String? = nil, url: String? = nil) throws -> TestProcess.Result {
        try TestProcess.tool("dbmigrate", arguments + ["--database-url", url ?? cluster.url(database: name ?? database), "--dir", migrations],
                             cluster: cluster)
    }

    /// `migrate(arguments)`, asserting it ends with `status` and that its stderr says each of `saying`.
    @discardableResult
    func migrate(_ arguments: [String], fails status: ExitStatus, saying: [String], file: StaticString = #filePath, line: UInt = #line) throws -> TestProcess.Result {
        let result = try migrate(arguments)
        XCTAssertEqual(result.status, status.rawValue, result.standardError, file: file, line: line)
        for words in saying { XCTAssertTrue(result.standardError.contains(words), "\(words) not in: \(result.standardError)", file: file, line: line) }
        return result
    }

    /// Starts `tool` through a proxy that holds the requests `hold` names for ten minutes, waits until one
    /// is held, sends SIGTERM and returns the exit status, the seconds it took after the signal and stderr.
    func interruptHeld(_ tool: String, _ arguments: [String], hold: [String]) throws -> (status: Int32?, seconds: TimeInterval, errors: String) {
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: hold + ["--hold", "600"])
        defer { proxy.stop() }
        let held = OutputCollector(descriptor: proxy.process.standardOutput, limit: 1 << 16)
        // The defaults (60 s idle timeout, 8 attempts): without the signal this run would wait about eight minutes.
        let process = try TestProcess.start(tool, arguments, cluster: cluster, environment: s3.environment(endpoint: proxy.endpoint))
        let errors = OutputCollector(descriptor: process.standardError, limit: 1 << 20)
        let deadline = Date().addingTimeInterval(60)
        while !held.soFar.contains("HELD ") && !errors.ended && Date() < deadline { usleep(10_000) }
        XCTAssertTrue(held.soFar.contains("HELD "), "no request reached the proxy's hold: \(errors.soFar)")
        usleep(300_000)
        let signalled = Date()
        process.send(SIGTERM)
        let termination = process.waitForExit(within: 60, orFail: "\(tool) did not stop within 60 s of SIGTERM: \(errors.soFar)")
        let seconds = Date().timeIntervalSince(signalled)
        return (termination.exitCode, seconds, errors.finish())
    }

    /// A new bucket on the shared S3 server.
    func useBucket() throws {
        s3 = try S3Server.shared()
        bucket = try s3.createBucket()
    }

    /// A new bucket, and `s3://BUCKET/prefix` as the class's repository.
    func useS3Repository(prefix: String) throws {
        try useBucket()
        repository = "s3://\(bucket!)/\(prefix)"
    }

    /// The objects under `prefix` in the class's bucket, read straight from the server (past any fault
    /// proxy a test puts between the tools and it).
    func bucketStore(prefix: String) throws -> S3Store {
        S3Store(configuration: try S3Settings.configuration(bucket: bucket, environment: s3.environment()), prefix: prefix)
    }

    /// `--database-url` and `--repo` for this class's database and local repository.
    var common: [String] { ["--database-url", cluster.url(database: database), "--repo", repository] }

    /// Rewrites a backup's manifest in the local repository as `edit` changes its JSON object (a
    /// damaged manifest, or one written before a field existed).
    func editManifest(_ id: String, _ edit: (inout [String: Any]) -> Void) throws {
        let path = "\(repository!)/backups/\(id)/manifest.json"
        var object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any] ?? [:]
        edit(&object)
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: path))
    }

    /// What every `tool` run of this class gets besides the cluster's password: the S3 server's
    /// settings once `useBucket` ran; a class adds its own by overriding it.
    var toolEnvironment: [String: String] { s3.map { $0.environment() } ?? [:] }

    /// Runs one of our tools with `toolEnvironment` and `environment` over it.
    func tool(_ name: String, _ arguments: [String], environment: [String: String] = [:]) throws -> TestProcess.Result {
        try TestProcess.tool(name, arguments, cluster: cluster, environment: toolEnvironment.merging(environment) { _, new in new })
    }

    /// `dbbackup` of the database into the local repository (`extra` arguments added); asserts it
    /// succeeded and returns the new backup's id.
    @discardableResult
    func backup(_ extra: [String] = []) throws -> String {
        let result = try tool("dbbackup", common + extra)
        XCTAssertEqual(result.status, 0, result.standardError)
        return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A backup's manifest in the local repository.
    func manifest(_ id: String) throws -> BackupManifest {
        try Catalog(store: try LocalStore(root: repository, create: false)).resolve(id)
    }

    /// The databases on the cluster whose names are `LIKE pattern`, sorted.
    /// Waits until `condition` (a query returning one boolean) is true in the test's database, asked
    /// every 20 ms on one connection (a moment that passes quickly is not missed); fails the test after
    /// `seconds`.
    func waitFor(_ condition: String, seconds: Double = 20) throws {
        let watcher = try cluster.connect(database: database)
        defer { watcher.close() }
        let deadline = Date().addingTimeInterval(seconds)
        while try watcher.query(condition).scalar != "t" {
            guard Date() < deadline else { return XCTFail("timed out waiting for \(condition)") }
            usleep(20_000)
        }
    }

    /// A new database seeded with `seed`, backed up, and that backup restored by id (`--jobs 2`) into
    /// a new database; both names and the restore's peak RSS in KiB, for tests that compare a
    /// restore's memory with and without something big in the backup.
    func backupAndRestore(prefix: String, seed: String) throws -> (source: String, restored: String, peakKilobytes: Int) {
        let source = try cluster.createDatabase(prefix: prefix, seed: seed)
        let backup = try tool("dbbackup", ["--database-url", cluster.url(database: source), "--repo", repository])
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let id = backup.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        let restored = "\(prefix)_restored_\(UInt32.random(in: 0...UInt32.max))"
        let result = try tool("dbrestore", [id, "--yes", "--jobs", "2", "--repo", repository, "--database-url", cluster.url(database: restored)])
        XCTAssertEqual(result.status, 0, result.standardError)
        return (source, restored, result.maxResidentKilobytes)
    }

    func databases(like pattern: String) throws -> [String] {
        try cluster.connect().query("SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY 1", [pattern]).rows.compactMap { $0[0] }
    }
}
