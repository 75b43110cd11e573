import Foundation
import RecoveryKit
import Synchronization
import XCTest

/// Paths the tests need: the checkout, the built executables, fresh temporary directories.
public enum TestPaths {
    /// The repository's top directory (found from this source file's path).
    public static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// The directory holding the built products (`.build/debug`), next to the test bundle.
    public static let productsDirectory: String = {
        URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
    }()

    /// Absolute path of one of our executables.
    public static func executable(_ name: String) -> String { productsDirectory + "/" + name }

    private static let created = Mutex<[String]>([])

    /// A new empty directory under the system temporary directory, world-traversable so that the
    /// `postgres` user can use it when the tests run as root.
    ///
    /// Removed when the test process exits, passing or failing (after the servers in it are stopped):
    /// `scripts/test.sh` fails the suite if anything is left in its temporary root.
    public static func temporaryDirectory(prefix: String) -> String {
        let path = NSTemporaryDirectory() + "dbrecovery-\(prefix)-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                 attributes: [.posixPermissions: 0o755])
        created.withLock { created in
            if created.isEmpty { atexit { TestPaths.removeEverything() } }
            created.append(path)
        }
        return path
    }

    /// `<new temporary directory>/repo`: a local repository path that does not exist yet, so that
    /// the first tool to use it creates it as a user's first backup would.
    public static func repositoryPath(prefix: String = "repo") -> String {
        temporaryDirectory(prefix: prefix) + "/repo"
    }

    /// Removes one directory made by `temporaryDirectory(prefix:)` now (a test that cleans up early).
    public static func remove(_ path: String) {
        try? FileManager.default.removeItem(atPath: path)
    }

    /// Stops every server the tests started, then removes every temporary directory.
    static func removeEverything() {
        PostgresCluster.stopAll()
        S3Server.stopShared()
        let paths = created.withLock { created in
            defer { created.removeAll() }
            return created
        }
        for path in paths { try? FileManager.default.removeItem(atPath: path) }
    }
}

/// Runs a program to completion, capturing its output.
public enum TestProcess {
    public struct Result {
        public let status: Int32
        public let standardOutput: String
        public let standardError: String
        public let maxResidentKilobytes: Int
    }

    /// Runs `executable` with `arguments`; stdin from `input` (or /dev/null).
    public static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                           input: Data? = nil) throws -> Result {
        let process = try ChildProcess(executable: executable, arguments: arguments, environment: environment,
                                       stdin: input == nil ? .null : .pipe, stdout: .pipe, stderr: .pipe)
        let output = OutputCollector(descriptor: process.standardOutput, limit: 64 * 1024 * 1024)
        let errors = OutputCollector(descriptor: process.standardError, limit: 1024 * 1024)
        if let input {
            try? input.withUnsafeBytes { try process.writeToStandardInput($0) }
            process.closeStandardInput()
        }
        let termination = process.waitForExit()
        return Result(status: termination.exitCode ?? (128 + (termination.signal ?? 0)),
                      standardOutput: output.finish(), standardError: errors.finish(),
                      maxResidentKilobytes: termination.maxResidentKilobytes)
    }

    /// Runs one of our executables (`dbbackup`, …) with the cluster's password in its environment.
    public static func tool(_ name: String, _ arguments: [String], cluster: PostgresCluster? = nil,
                            environment: [String: String] = [:]) throws -> Result {
        var merged = cluster?.environment ?? [:]
        merged.merge(environment) { _, new in new }
        return try run(TestPaths.executable(name), arguments, environment: merged)
    }

    /// Starts one of our executables without waiting (for kill and concurrency tests).
    public static func start(_ name: String, _ arguments: [String], cluster: PostgresCluster? = nil,
                             environment: [String: String] = [:]) throws -> ChildProcess {
        var merged = cluster?.environment ?? [:]
        merged.merge(environment) { _, new in new }
        return try ChildProcess(executable: TestPaths.executable(name), arguments: arguments, environment: merged,
                                stdin: .null, stdout: .null, stderr: .pipe)
    }

    /// `KEY=VALUE` lines of a sandbox script's output.
    public static func keyValues(_ output: String) -> [String: String] {
        var values: [String: String] = [:]
        for line in output.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { values[parts[0]] = parts[1] }
        }
        return values
    }

    /// Runs a shell pipeline (for the by-hand paths operators use: `gunzip -c | psql`).
    public static func shell(_ script: String, environment: [String: String] = [:]) throws -> Result {
        try run("/bin/bash", ["-c", script], environment: environment)
    }
}

extension ChildProcess {
    /// Waits at most `seconds` for the process to end; past that it is killed (SIGKILL) and the test
    /// fails with `message`, so that a tool that hangs fails its test instead of the whole run.
    @discardableResult
    public func waitForExit(within seconds: TimeInterval, orFail message: @autoclosure () -> String,
                            file: StaticString = #filePath, line: UInt = #line) -> Termination {
        let waiter = Background { self.waitForExit() }
        if !waiter.finished(within: seconds) {
            send(SIGKILL)
            waiter.join()
            XCTFail(message(), file: file, line: line)
        }
        return waitForExit()
    }
}
