import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// The archive_command of a cluster archiving into `repository` (`dbbackup wal-push`), with
/// `environment` assigned before it as a shell would.
func walPush(into repository: String, environment: [String: String] = [:]) -> String {
    let assignments = environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value) " }.joined()
    return "\(assignments)\(TestPaths.executable("dbbackup")) wal-push %p --repo \(repository)"
}

/// What the physical backup and point-in-time recovery tests share: tools run as the server's OS
/// user, directories it owns, archive waits, and `dbrestore --pitr --start` into a fresh directory.
extension XCTestCase {
    /// Runs one of our tools as the PostgreSQL OS user when the tests run as root (the server and
    /// its archive_command run as that user, and so must whoever owns the archive and data directories).
    func asOwner(_ tool: String, _ arguments: [String], cluster: PostgresCluster, environment: [String: String] = [:]) throws -> TestProcess.Result {
        var merged = cluster.environment
        merged.merge(environment) { _, new in new }
        if getuid() == 0 {
            return try TestProcess.run("/usr/bin/setpriv", ["--reuid=postgres", "--regid=postgres", "--init-groups", TestPaths.executable(tool)] + arguments,
                                       environment: merged)
        }
        return try TestProcess.run(TestPaths.executable(tool), arguments, environment: merged)
    }

    /// A new database on `cluster` with the `items` table the physical tests count batches in
    /// (`counts`), and a connection to it.
    func itemsDatabase(_ prefix: String, on cluster: PostgresCluster) throws -> (name: String, connection: PostgresConnection) {
        let name = try cluster.createDatabase(prefix: prefix, seed: "CREATE TABLE items (id serial PRIMARY KEY, batch text)")
        return (name, try cluster.connect(database: name))
    }

    /// A new cluster archiving into `repository` (a new one when nil) with `dbbackup wal-push`, an `items`
    /// database on it and one base backup of that taken; the cluster stops when the test ends.
    func archivingCluster(_ prefix: String, repository given: String? = nil, environment: [String: String] = [:], baseBackup: Bool = true) throws
        -> (cluster: PostgresCluster, repository: String, database: String, connection: PostgresConnection) {
        let repository = given ?? ownedDirectory(prefix + "-repo") + "/repo"
        let cluster = try PostgresCluster(archiveCommand: walPush(into: repository, environment: environment))
        addTeardownBlock { cluster.stop() }
        let (database, connection) = try itemsDatabase(prefix, on: cluster)
        if baseBackup { try physicalBackup(of: database, on: cluster, into: repository, environment: environment) }
        return (cluster, repository, database, connection)
    }

    /// `dbbackup --physical` of `database` into `repository`, run as the server's OS user; asserts it
    /// succeeded and returns its result (`--json` in `extra` for the summary).
    @discardableResult
    func physicalBackup(of database: String, on cluster: PostgresCluster, into repository: String, _ extra: [String] = [],
                        environment: [String: String] = [:]) throws -> TestProcess.Result {
        let result = try asOwner("dbbackup", ["--physical", "--database-url", cluster.url(database: database), "--repo", repository] + extra,
                                 cluster: cluster, environment: environment)
        XCTAssertEqual(result.status, 0, result.standardError)
        return result
    }

    func ownedDirectory(_ prefix: String) -> String {
        let path = TestPaths.temporaryDirectory(prefix: prefix)
        if getuid() == 0 { chownToPostgres(path) }
        return path
    }

    func chownToPostgres(_ path: String) {
        _ = try? TestProcess.run("/bin/chown", ["-R", "postgres:postgres", path])
    }

    func freePort() throws -> Int {
        let result = try TestProcess.run("/usr/bin/env", ["python3", "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"])
        return Int(result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }

    /// Stops a server dbrestore started, by the PID in its postmaster.pid.
    func stopServer(_ directory: String) {
        guard let text = try? String(contentsOfFile: directory + "/postmaster.pid", encoding: .utf8),
              let pid = Int32(text.split(separator: "\n").first ?? "") else { return }
        kill(pid, SIGINT)
        for _ in 0..<100 where kill(pid, 0) == 0 { usleep(100_000) }
    }

    /// Starts the server of a data directory `dbrestore --pitr` prepared (its parent made the
    /// server's OS user's; the log beside it), waits until recovery has ended, and connects to
    /// `database` on it. The caller stops it with `stopServer`.
    /// `environment`: what its restore_command needs (an S3 repository's settings).
    func startRecovered(_ directory: String, port: Int, database: String, cluster: PostgresCluster,
                        environment: [String: String] = [:]) throws -> PostgresConnection {
        let parent = (directory as NSString).deletingLastPathComponent, log = parent + "/server.log"
        chownToPostgres(parent)
        let started = try TestProcess.run("/usr/bin/setpriv", ["--reuid=postgres", "--regid=postgres", "--init-groups", cluster.binDirectory + "/pg_ctl",
                                                              "-D", directory, "-l", log, "-w", "-t", "120", "start"], environment: environment)
        XCTAssertEqual(started.status, 0, started.standardError + ((try? String(contentsOfFile: log, encoding: .utf8)) ?? ""))
        let connection = try PostgresConnection(target: try ConnectionTarget("postgresql://postgres@127.0.0.1:\(port)/\(database)").with("password", cluster.password))
        let deadline = Date().addingTimeInterval(120)
        while try connection.query("SELECT pg_is_in_recovery()").scalar == "t" && Date() < deadline { usleep(100_000) }
        return connection
    }

    func waitForArchive(_ connection: PostgresConnection) throws {
        // A record first: with nothing written since the last switch (a backup's end), pg_switch_wal()
        // switches nothing and names a segment that would never be archived.
        _ = try connection.query("SELECT pg_logical_emit_message(false, 'dbrecovery-tests', 'archive')")
        let segment = try connection.query("SELECT pg_walfile_name(pg_switch_wal())").scalar ?? ""
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let last = try connection.query("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").scalar ?? ""
            if last >= segment { return }
            usleep(100_000)
        }
        let archiver = try connection.query("SELECT coalesce(last_archived_wal, '-') || ', last failed: ' || coalesce(last_failed_wal, '-') || ' (' || failed_count || ' failures)' FROM pg_stat_archiver").scalar ?? ""
        XCTFail("WAL segment \(segment) was never archived; last archived: \(archiver) (the server's log says why)")
    }

    func recover(_ target: [String], repository: String, cluster: PostgresCluster, environment: [String: String] = [:]) throws -> (TestProcess.Result, String, Int) {
        let parent = ownedDirectory("pitr-target")
        let directory = parent + "/data"
        let port = try freePort()
        let result = try asOwner("dbrestore", ["--pitr", "--pgdata", directory, "--repo", repository, "--port", String(port), "--start", "--json",
                                               "--database-url", "postgresql://postgres@127.0.0.1/postgres"] + target,
                                 cluster: cluster, environment: environment)
        return (result, directory, port)
    }

    /// Recovers with `target` (`recover`), checks that it succeeded and that the recovered server's
    /// `items` hold `expected` rows per batch, then stops that server.
    func assertRecovers(_ target: [String], repository: String, cluster: PostgresCluster, database: String, holding expected: [String: String],
                        file: StaticString = #filePath, line: UInt = #line) throws {
        let (result, directory, port) = try recover(target, repository: repository, cluster: cluster)
        defer { stopServer(directory) }
        XCTAssertEqual(result.status, 0, result.standardError, file: file, line: line)
        XCTAssertEqual(try counts(port: port, database: database, cluster: cluster), expected, file: file, line: line)
    }

    func counts(port: Int, database: String, cluster: PostgresCluster) throws -> [String: String] {
        let connection = try PostgresConnection(target: try ConnectionTarget("postgresql://postgres@127.0.0.1:\(port)/\(database)").with("password", cluster.password))
        return Dictionary(uniqueKeysWithValues: try connection.query("SELECT batch, count(*)::text FROM items GROUP BY batch").rows.map { ($0[0] ?? "", $0[1] ?? "") })
    }
}
