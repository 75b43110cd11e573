@testable import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// Issue 16: 20 rounds of two `dbbackup`, one `dbprune` and one `dbrestore` at once on one S3
/// repository, through a proxy that answers 503, cuts connections and loses replies after the
/// server acted. Never two lock holders, never a failure blamed on itself, every backup complete
/// and valid or absent.
final class ConcurrencyTests: XCTestCase {
    func testBackupsPruneAndRestoreRaceOnOneS3RepositoryThroughFaults() throws {
        let cluster = try PostgresCluster.shared()
        let s3 = try S3Server.shared()
        let bucket = try s3.createBucket()
        let repository = "s3://\(bucket)/race"
        let database = try cluster.createDatabase(prefix: "race", seed: "CREATE TABLE t (x int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 500)")
        let policy = TestPaths.temporaryDirectory(prefix: "racepolicy") + "/policy.toml"
        try Data("[s3]\nkeep_last = 2\nkeep_within = \"0h\"\nsnapshots = false\n[garbage]\ngrace_period = \"0h\"\n".utf8)
            .write(to: URL(fileURLWithPath: policy))
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--lose-reply-every", "7", "--fail-every", "11", "--drop-every", "13"])
        defer { proxy.stop() }
        var environment = s3.environment(endpoint: proxy.endpoint)
        environment["DBRECOVERY_S3_TIMEOUT_SECONDS"] = "10"
        let direct = S3Store(configuration: try S3Settings.configuration(bucket: bucket, environment: s3.environment()), prefix: "race")
        // A first backup, so that every round's restore has something to read.
        let first = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository],
                                         cluster: cluster, environment: environment)
        XCTAssertEqual(first.status, 0, first.standardError)

        var outcomes: [String: Int] = [:]
        for round in 0..<20 {
            let target = "race_target_\(round)_\(UInt32.random(in: 0...UInt32.max))"
            let ordered: [(String, [String])] = [
                ("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository]),
                ("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository]),
                ("dbprune", ["--yes", "--repo", repository, "--policy", policy]),
                ("dbrestore", ["--from-database", database, "latest", "--yes", "--jobs", "1", "--repo", repository, "--database-url", cluster.url(database: target)]),
            ]
            // Every other round the prune and the restore start first.
            let commands = round % 2 == 0 ? ordered : Array(ordered.reversed())
            // Started within half a second of each other, in a different order each round, so that
            // sometimes they collide at the lock and sometimes one runs into another's middle.
            var processes: [ChildProcess] = []
            for (index, command) in commands.enumerated() {
                if index > 0 { Thread.sleep(forTimeInterval: Double.random(in: 0...0.25)) }
                processes.append(try TestProcess.start(command.0, command.1, cluster: cluster, environment: environment))
            }
            let errors = processes.map { OutputCollector(descriptor: $0.standardError, limit: 1 << 20) }
            let codes = processes.map { $0.waitForExit().exitCode ?? -1 }
            for (index, (tool, _)) in commands.enumerated() {
                let message = errors[index].finish()
                let code = codes[index]
                outcomes["\(tool) \(code)", default: 0] += 1
                let context = "round \(round) \(tool) (pid \(processes[index].pid)) exit \(code): \(message)"
                if tool == "dbrestore" {
                    XCTAssertEqual(code, 0, context)
                } else {
                    XCTAssertTrue(code == 0 || code == ExitStatus.repositoryLocked.rawValue, context)
                }
                if code == ExitStatus.repositoryLocked.rawValue {
                    XCTAssertFalse(message.contains("(pid \(processes[index].pid) on"), "blamed on itself: \(context)")
                }
                // A holder whose record was removed or replaced would say so when releasing: two holders.
                XCTAssertFalse(message.contains("lock was not released") || message.contains("removed by someone else") || message.contains("now belongs to"),
                               "two lock holders: \(context)")
            }
            _ = try? cluster.connect(database: "postgres").execute(script: "DROP DATABASE IF EXISTS \(target) WITH (FORCE)")
        }
        // Every backup that has a manifest is complete and valid; without a manifest it is absent.
        let verify = try TestProcess.tool("dbverify", ["--files", "all", "--repo", repository], environment: s3.environment())
        XCTAssertEqual(verify.status, 0, verify.standardOutput + verify.standardError)
        XCTAssertFalse(try Catalog(store: direct).entries().isEmpty)
        XCTAssertEqual(try direct.list(prefix: "locks/").map(\.key), [], "every lock was released")
        // The race must really have been run: backups and prunes both got through, and both were turned away.
        XCTAssertGreaterThanOrEqual(outcomes["dbbackup 0"] ?? 0, 5, "\(outcomes)")
        XCTAssertGreaterThanOrEqual(outcomes["dbprune 0"] ?? 0, 2, "\(outcomes)")
        XCTAssertGreaterThanOrEqual((outcomes["dbbackup 21"] ?? 0) + (outcomes["dbprune 21"] ?? 0), 5, "\(outcomes)")
        print("concurrency outcomes: \(outcomes.sorted { $0.key < $1.key })")
    }
}
