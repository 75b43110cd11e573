import Foundation
import PostgresClient
import RecoveryKit
import Synchronization
import XCTest

/// A throwaway PostgreSQL cluster for the tests, started by `scripts/pg-sandbox.sh` on a free
/// loopback port and stopped by its PID when the test process exits.
public final class PostgresCluster: Sendable {
    public let directory: String
    /// URL without the password (the password travels in `PGPASSWORD`, as operators should do it).
    public let url: String
    public let password: String
    public let port: Int
    /// The server's major version and the `bin/` directory of its programs (initdb, pg_dump, …).
    public let major: Int
    public let binDirectory: String

    private static let started = Mutex<[PostgresCluster]>([])
    private static let sharedCluster = Mutex<PostgresCluster?>(nil)

    /// The cluster shared by all tests in this process, started on first use.
    public static func shared() throws -> PostgresCluster {
        try sharedCluster.withLock { shared in
            if let shared { return shared }
            let cluster = try PostgresCluster()
            shared = cluster
            return cluster
        }
    }

    /// Starts a new cluster (for tests that need their own server settings).
    ///
    /// - Parameters:
    ///   - major: a PostgreSQL major installed by `scripts/pg-majors.sh` (nil: 15, Debian's).
    ///   - archiveCommand: sets `archive_mode = on` with this `archive_command`.
    ///   - initdbOptions: passed to initdb (e.g. `--wal-segsize=64`).
    ///   - walStart: the segment the new cluster's WAL begins at (`pg_resetwal -l`), e.g. just before a log boundary.
    public convenience init(major: Int? = nil, archiveCommand: String? = nil, initdbOptions: [String] = [], walStart: String? = nil) throws {
        let directory = TestPaths.temporaryDirectory(prefix: "pg")
        var arguments = ["start", directory]
        if let major { arguments += ["--major", String(major)] }
        if let archiveCommand { arguments += ["--archive-command", archiveCommand] }
        for option in initdbOptions { arguments += ["--initdb-option", option] }
        if let walStart { arguments += ["--wal-start", walStart] }
        try self.init(directory: directory, sandboxArguments: arguments)
    }

    /// Starts a hot standby of `primary` streaming from it (`pg_basebackup -R`, same major, the
    /// primary's settings including its archive_command, which a standby runs only once promoted).
    /// Stopped by PID like every cluster here.
    public static func startStandby(of primary: PostgresCluster) throws -> PostgresCluster {
        let directory = TestPaths.temporaryDirectory(prefix: "pg-standby")
        return try PostgresCluster(directory: directory, sandboxArguments: ["standby", directory, "--primary", primary.directory,
                                                                            "--major", String(primary.major)])
    }

    private init(directory: String, sandboxArguments arguments: [String]) throws {
        self.directory = directory
        let result = try TestProcess.run(TestPaths.repositoryRoot + "/scripts/pg-sandbox.sh", arguments)
        guard result.status == 0 else {
            throw XCTSkip.failure("could not start PostgreSQL (install it with scripts/setup.sh): \(result.standardError)")
        }
        let values = TestProcess.keyValues(result.standardOutput)
        url = values["URL"] ?? ""
        password = values["PASSWORD"] ?? ""
        port = Int(values["PORT"] ?? "") ?? 0
        binDirectory = values["BIN"] ?? ""
        let version = (try? TestProcess.run(binDirectory + "/postgres", ["--version"]).standardOutput) ?? ""
        self.major = Int(version.split(separator: " ").last?.split(separator: ".").first ?? "") ?? 0
        Self.started.withLock { started in
            if started.isEmpty { atexit { PostgresCluster.stopAll() } }
            started.append(self)
        }
    }

    /// Stops this cluster (by the PID the sandbox script recorded).
    public func stop() {
        _ = try? TestProcess.run(TestPaths.repositoryRoot + "/scripts/pg-sandbox.sh", ["stop", directory])
    }

    static func stopAll() {
        let clusters = started.withLock { started in
            defer { started.removeAll() }
            return started
        }
        for cluster in clusters { cluster.stop() }
    }

    /// The last `lines` lines of the server's log (for a failure message that shows what the server did).
    public func serverLogTail(_ lines: Int = 40) -> String {
        let text = (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8)) ?? ""
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    /// Whether the server is in recovery (a standby not yet promoted).
    public func isInRecovery() throws -> Bool {
        try connect().query("SELECT pg_is_in_recovery()").scalar == "t"
    }

    /// Waits until the standby has replayed everything `primary` has written so far.
    public func waitForReplay(of primary: PostgresCluster, timeout: TimeInterval = 60) throws {
        let target = try primary.connect().query("SELECT pg_current_wal_lsn()::text").scalar ?? ""
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let caughtUp = try connect().query("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", [target]).scalar
            if caughtUp == "t" { return }
            usleep(50_000)
        }
        throw XCTSkip.failure("standby on port \(port) did not replay up to \(target) within \(Int(timeout)) s")
    }

    /// Promotes this standby (`pg_promote`, waiting for it) and returns its new timeline.
    @discardableResult
    public func promote() throws -> Int {
        _ = try connect().query("SELECT pg_promote(true, 60)")
        let name = try connect().query("SELECT pg_walfile_name(pg_current_wal_lsn())").scalar ?? ""
        return Int(name.prefix(8), radix: 16) ?? 0
    }

    /// The URL for one database of this cluster.
    public func url(database: String) -> String {
        "postgresql://postgres@127.0.0.1:\(port)/\(database)"
    }

    /// The same URL with the password written into it (to prove it never leaks).
    public func urlWithPassword(database: String) -> String {
        url(database: database).replacingOccurrences(of: "postgres@", with: "postgres:\(password)@")
    }

    /// Environment that lets child tools authenticate.
    public var environment: [String: String] { ["PGPASSWORD": password] }

    /// Opens a libpq connection to one database.
    public func connect(database: String = "postgres") throws -> PostgresConnection {
        try PostgresConnection(target: try ConnectionTarget(url(database: database)).with("password", password),
                               applicationName: "dbrecovery-tests")
    }

    /// Creates a fresh, uniquely named database, runs `seed` in it (the test's tables and rows) and
    /// returns its name.
    public func createDatabase(prefix: String = "t", seed: String? = nil) throws -> String {
        let name = "\(prefix)_\(UInt32.random(in: 0...UInt32.max))"
        let connection = try connect()
        try connection.execute(script: "CREATE DATABASE \(name)")
        if let seed { try connect(database: name).execute(script: seed) }
        return name
    }

    /// Runs SQL in a database and returns the first column of the first row.
    @discardableResult
    public func scalar(_ sql: String, database: String) throws -> String? {
        try connect(database: database).query(sql).scalar
    }

    /// Whether a database exists.
    public func databaseExists(_ name: String) throws -> Bool {
        try connect().query("SELECT 1 FROM pg_database WHERE datname = $1", [name]).rows.count == 1
    }

    /// Exact row counts of every user table in a database.
    public func rowCounts(database: String) throws -> [String: Int64] {
        let counts = try TableCounter.countRows(on: try connect(database: database))
        return Dictionary(uniqueKeysWithValues: counts.map { ($0.qualifiedName, $0.rows) })
    }
}

extension XCTSkip {
    /// Integration tests never skip silently: a missing server is a failure that says what to install.
    static func failure(_ message: String) -> Error {
        NSError(domain: "dbrecovery.tests", code: 1, userInfo: [NSLocalizedDescriptionKey: message])
    }
}
