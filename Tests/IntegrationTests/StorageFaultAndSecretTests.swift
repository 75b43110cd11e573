import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// A full disk, and secrets: the password must appear nowhere we write or print.
final class StorageFaultAndSecretTests: XCTestCase {
    /// The shared cluster and a new database seeded with `seed`, for a test that mounts a tmpfs; nil
    /// (and the test failed, saying `because`) when the suite does not run as root.
    private func rootOnlyDatabase(_ prefix: String, seed: String, because: String) throws -> (PostgresCluster, String)? {
        guard getuid() == 0 else {
            XCTFail("the \(because) and needs root (run the suite as root, as CI does)")
            return nil
        }
        let cluster = try PostgresCluster.shared()
        return (cluster, try cluster.createDatabase(prefix: prefix, seed: seed))
    }

    func testADiskFullWhileWritingFailsCleanly() throws {
        guard let (cluster, database) = try rootOnlyDatabase("full", seed: """
            CREATE TABLE blobs AS SELECT g, decode(string_agg(md5(g::text || ':' || i::text), ''), 'hex') AS d
            FROM generate_series(1, 500) g, generate_series(1, 500) i GROUP BY g
            """, because: "disk-full test mounts a 3 MiB tmpfs") else { return }
        let mountPoint = TestPaths.temporaryDirectory(prefix: "tmpfs")
        XCTAssertEqual(try TestProcess.run("/bin/mount", ["-t", "tmpfs", "-o", "size=3m", "tmpfs", mountPoint]).status, 0)
        defer { _ = try? TestProcess.run("/bin/umount", [mountPoint]) }
        let repository = mountPoint + "/repo"
        let result = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository], cluster: cluster)
        XCTAssertEqual(result.status, ExitStatus.repositoryError.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("no space left on device"), result.standardError)
        XCTAssertTrue(result.standardError.contains("HINT: free space"), result.standardError)
        let left = (FileManager.default.enumerator(atPath: repository)?.allObjects as? [String] ?? []).filter { $0.hasSuffix(".gz") || $0.contains("partial") || $0.hasSuffix("manifest.json") }
        XCTAssertEqual(left, [], "no manifest and no half-written file remain")
    }

    func testAReadOnlyRepositoryRefusesWritesAndStillRestores() throws {
        guard let (cluster, database) = try rootOnlyDatabase("readonly", seed: "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g",
                                                             because: "read-only test remounts a tmpfs read-only") else { return }
        let mountPoint = TestPaths.temporaryDirectory(prefix: "tmpfs")
        XCTAssertEqual(try TestProcess.run("/bin/mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", mountPoint]).status, 0)
        defer { _ = try? TestProcess.run("/bin/umount", [mountPoint]) }
        let repository = mountPoint + "/repo"
        XCTAssertEqual(try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository], cluster: cluster).status, 0)
        XCTAssertEqual(try TestProcess.run("/bin/mount", ["-o", "remount,ro", mountPoint]).status, 0)

        let backup = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository], cluster: cluster)
        XCTAssertEqual(backup.status, ExitStatus.repositoryError.rawValue, backup.standardError)
        XCTAssertTrue(backup.standardError.contains("read-only file system"), backup.standardError)
        let prune = try TestProcess.tool("dbprune", ["--yes", "--repo", repository])
        XCTAssertEqual(prune.status, ExitStatus.repositoryError.rawValue, prune.standardError)
        // Reading still works: the DBA can restore from a repository mounted read-only.
        XCTAssertEqual(try TestProcess.tool("dbverify", ["--files", "latest", "--repo", repository]).status, 0)
        let target = "fromro_\(UInt32.random(in: 0...UInt32.max))"
        let restore = try TestProcess.tool("dbrestore", ["--from-database", database, "latest", "--yes", "--repo", repository, "--database-url", cluster.url(database: target)], cluster: cluster)
        XCTAssertEqual(restore.status, 0, restore.standardError)
    }

    func testThePasswordAppearsInNoOutputFileOrChildArgv() throws {
        let cluster = try PostgresCluster.shared()
        let database = try cluster.createDatabase(prefix: "secret", seed: "CREATE TABLE t AS SELECT g FROM generate_series(1, 100000) g")
        let work = TestPaths.temporaryDirectory(prefix: "secret")
        let repository = work + "/repo"
        let url = cluster.urlWithPassword(database: database)
        let environment = ["PGPASSWORD": "", "DATABASE_URL": url, "BACKUP_REPO": repository]
        var outputs: [String] = []
        let record = { (result: TestProcess.Result) in outputs += [result.standardOutput, result.standardError] }

        record(try TestProcess.tool("dbbackup", ["--json", "--metrics-file", work + "/backup.prom"], environment: environment))
        record(try TestProcess.tool("dbverify", ["latest", "--json"], environment: environment))
        record(try TestProcess.tool("dbprune", ["--yes", "--metrics-file", work + "/prune.prom"], environment: environment))
        record(try TestProcess.tool("dbrestore", ["list"], environment: environment))
        record(try TestProcess.tool("dbbackup", ["--print-config"], environment: environment))
        record(try TestProcess.tool("dbrestore", ["--drill", "--metrics-file", work + "/drill.prom"], environment: environment))
        record(try TestProcess.tool("dbbackup", ["--database-url", url.replacingOccurrences(of: cluster.password, with: cluster.password + "x")],
                                    environment: environment))   // a failing run prints its error

        // An emergency restore, watching the argv of any child it starts while it runs.
        let restore = try ChildProcess(executable: TestPaths.executable("dbrestore"), arguments: ["--emergency", "--incident-file", work + "/incident.json"],
                                       environment: environment, stdin: .null, stdout: .pipe, stderr: .pipe)
        let restoreOutput = OutputCollector(descriptor: restore.standardOutput)
        let restoreErrors = OutputCollector(descriptor: restore.standardError)
        var arguments: [String] = []
        while kill(restore.pid, 0) == 0 && !waitpidNoHang(restore.pid) {
            for pid in childPIDs(of: restore.pid) {
                arguments.append((try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? "")
            }
            usleep(2_000)
        }
        XCTAssertEqual(restore.waitForExit().exitCode, 0, restoreErrors.finish())
        outputs += [restoreOutput.finish(), restoreErrors.finish()]
        for argv in arguments { XCTAssertFalse(argv.contains(cluster.password), "password on a child's argv: \(argv)") }

        for (index, text) in outputs.enumerated() {
            XCTAssertFalse(text.contains(cluster.password), "output \(index) shows the password")
        }
        let written = (FileManager.default.enumerator(atPath: work)?.allObjects as? [String] ?? [])
            .filter { $0.hasSuffix(".json") || $0.hasSuffix(".prom") || $0.hasSuffix(".lock") }
        XCTAssertGreaterThanOrEqual(written.count, 5, "\(written)")
        for file in written {
            let text = (try? String(contentsOfFile: work + "/" + file, encoding: .utf8)) ?? ""
            XCTAssertFalse(text.contains(cluster.password), "\(file) holds the password")
        }
    }

    /// Issue 16 E7: a malformed connection string never reaches output (stderr, the notify event),
    /// and `--print-config` masks the password however the URL spells it.
    func testMalformedConnectionStringsAreNeverEchoed() throws {
        let secret = "TopSecret" + String(UInt32.random(in: 0...UInt32.max))
        let malformed = [
            "postgresql://app:\(secret)@[::1/app",                      // unterminated IPv6 host: libpq quotes the whole URL
            "postgresql://app:\(secret)%zz@db1/app",                    // bad percent-encoding: quotes the token
            "postgresql://app@db1/app?password=\(secret)&\(secret)",      // query parameter without '='
            "postgresql://app@db1/app?pass%77ord=\(secret)%zz",          // percent-encoded keyword, bad value
            "host=db1 password=\(secret) \(secret)",                      // conninfo word without '='
            "host=db1 \(secret)=x",                                      // unknown keyword (a password typed as one)
        ]
        let receiver = try NotifyReceiver()
        let repository = TestPaths.repositoryPath(prefix: "secretrepo")
        for url in malformed {
            let result = try TestProcess.tool("dbbackup", ["--repo", repository, "--notify-url", receiver.url],
                                              environment: ["DATABASE_URL": url])
            XCTAssertEqual(result.status, ExitStatus.usage.rawValue, "\(url): \(result.standardError)")
            XCTAssertTrue(result.standardError.contains("invalid database URL"), result.standardError)
            XCTAssertFalse(result.standardError.contains(secret) || result.standardOutput.contains(secret), "\(url) echoed: \(result.standardError)")
        }
        let events = receiver.received
        XCTAssertEqual(events.components(separatedBy: "\"exit_code\"").count - 1, malformed.count, events)
        XCTAssertFalse(events.contains(secret), "the notify event holds the password: \(events)")

        for url in ["postgresql://app@db1/app?pass%77ord=\(secret)", "postgresql://app@db1/app?password=\(secret)",
                    "postgresql://app:\(secret)@db1/app", "host=db1 password='\(secret) x'", "host=db1 password = \(secret)"] + malformed {
            let printed = try TestProcess.tool("dbbackup", ["--print-config"], environment: ["DATABASE_URL": url])
            XCTAssertEqual(printed.status, 0, printed.standardError)
            XCTAssertFalse(printed.standardOutput.contains(secret) || printed.standardError.contains(secret), "--print-config showed \(url): \(printed.standardOutput)")
        }
    }

    /// Issue 19: a disk full when the manifest is written (here: no inode left for it) leaves no
    /// complete data file behind, and a failed backup leaves no empty folder. Every inode budget is
    /// tried, from too few for anything to enough for the whole backup, so one of them runs out
    /// exactly at the manifest.
    func testADiskFullAtTheManifestLeavesNoDataFileAndNoEmptyFolder() throws {
        guard let (cluster, database) = try rootOnlyDatabase("inodes", seed: "CREATE TABLE t AS SELECT generate_series(1, 1000) g",
                                                             because: "disk-full test mounts a tmpfs") else { return }
        var succeeded = false
        var failures = 0
        var failedAtManifest = false
        for inodes in 4...24 where !succeeded {
            let mountPoint = TestPaths.temporaryDirectory(prefix: "inodes")
            XCTAssertEqual(try TestProcess.run("/bin/mount", ["-t", "tmpfs", "-o", "size=8m,nr_inodes=\(inodes)", "tmpfs", mountPoint]).status, 0)
            defer {
                _ = try? TestProcess.run("/bin/umount", [mountPoint])
                try? FileManager.default.removeItem(atPath: mountPoint)
            }
            let repository = mountPoint + "/repo"
            let result = try TestProcess.tool("dbbackup", ["--database-url", cluster.url(database: database), "--repo", repository], cluster: cluster)
            if result.status == 0 {
                succeeded = true
                continue
            }
            failures += 1
            failedAtManifest = failedAtManifest || result.standardError.contains("manifest.json")
            XCTAssertEqual(result.status, ExitStatus.repositoryError.rawValue, "nr_inodes=\(inodes): \(result.standardError)")
            let left = FileManager.default.enumerator(atPath: repository + "/backups")?.allObjects as? [String] ?? []
            XCTAssertEqual(left, [], "nr_inodes=\(inodes): a failed backup left \(left)")
        }
        XCTAssertTrue(succeeded, "the largest inode budget should fit the whole backup")
        XCTAssertGreaterThan(failures, 2)
        XCTAssertTrue(failedAtManifest, "no inode budget ran out exactly at the manifest")
    }
}
