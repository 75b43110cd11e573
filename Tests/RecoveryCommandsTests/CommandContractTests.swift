import ArgumentParser
import Foundation
@testable import RecoveryCommands
import RecoveryKit
import XCTest

final class CommandContractTests: XCTestCase {
    static let commands: [(String, ParsableCommand.Type)] = [
        ("dbbackup", BackupCommand.self), ("dbrestore", RestoreCommand.self), ("dbverify", VerifyCommand.self),
        ("dbmigrate", MigrateCommand.self),
        ("dbprune", PruneCommand.self),
    ]

    func testEveryHelpHasExamples() {
        for (name, command) in Self.commands {
            let help = command.helpMessage(columns: 120)
            XCTAssertTrue(help.contains("Examples:"), "\(name) --help has no examples")
            XCTAssertTrue(help.contains(name), name)
        }
    }

    /// Settings are resolved per run from that run's own flags: a `--config` given to one run must
    /// not stay behind in the process for the next (it used to be exported with setenv).
    func testAConfigFileBelongsToTheRunThatNamedIt() throws {
        let sink = try XCTUnwrap(FileHandle(forWritingAtPath: "/dev/null"))
        let directory = NSTemporaryDirectory() + "contract-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory + "/repo", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "repo_path = \"/x\"\n".write(toFile: directory + "/bad.toml", atomically: true, encoding: .utf8)

        XCTAssertEqual(RestoreCommand.runReturningCode(["list", "--repo", directory + "/repo", "--config", directory + "/bad.toml"], standardError: sink),
                       ExitStatus.configuration.rawValue, "a config error is reported, not skipped")
        XCTAssertEqual(RestoreCommand.runReturningCode(["list", "--repo", directory + "/repo", "--json"], standardError: sink),
                       ExitStatus.success.rawValue, "the previous run's --config leaked into this one")
        XCTAssertNil(ProcessInfo.processInfo.environment["DBRECOVERY_CONFIG"])
        // As restore_command, a config error must stop recovery (126), not read as "not in the archive".
        XCTAssertEqual(RestoreCommand.runReturningCode(["wal-fetch", "000000010000000000000001", directory + "/x", "--repo", directory + "/repo",
                                                        "--config", directory + "/bad.toml"], standardError: sink),
                       ExitStatus.walFetchFailed.rawValue)
    }

    /// `dbrestore --drill` and `dbrestore drill` are one command; modes exclude each other and their
    /// options stay with them.
    func testRestoreModesAsFlagsAndAsSubcommands() throws {
        XCTAssertEqual(try RestoreCommand.rewrite(["--drill", "--json"]), ["drill", "--json"])
        XCTAssertEqual(try RestoreCommand.rewrite(["--repo", "/r", "--emergency", "--release", "v1"]), ["emergency", "--repo", "/r", "--release", "v1"])
        XCTAssertEqual(try RestoreCommand.rewrite(["latest", "--emergency"]), ["emergency", "latest"])
        XCTAssertEqual(try RestoreCommand.rewrite(["pitr", "--pitr", "--pgdata", "/d"]), ["pitr", "--pgdata", "/d"])
        XCTAssertEqual(try RestoreCommand.rewrite(["--help"]), ["--help"], "the top-level help stays the top-level help")
        XCTAssertEqual(try RestoreCommand.rewrite(["wal-fetch", "--pitr"]), ["wal-fetch", "--pitr"], "wal-fetch is left to the parser")
        for (arguments, message) in [(["--emergency", "--drill"], "--emergency and --drill cannot be combined"),
                                     (["drill", "--pitr"], "--pitr and drill cannot be combined"),
                                     (["latest", "--port", "5433"], "--port goes with --pitr"),
                                     (["--drill", "--incident-file", "/x"], "--incident-file goes with --emergency; not with --drill"),
                                     (["--pitr", "--release=v1"], "--release goes with --emergency or --drill")] {
            XCTAssertThrowsError(try RestoreCommand.rewrite(arguments)) { error in
                XCTAssertTrue("\(error)".contains(message), "\(arguments): \(error)")
            }
        }
        let parsed = try RestoreCommand.parseAsRoot(try RestoreCommand.rewrite(["--pitr", "--pgdata", "/d", "--target", "latest"]))
        XCTAssertEqual((parsed as? PITRCommand)?.pgdata, "/d")
        XCTAssertTrue(try RestoreCommand.parseAsRoot(try RestoreCommand.rewrite(["--emergency"])) is EmergencyCommand)
        XCTAssertTrue(try RestoreCommand.parseAsRoot(try RestoreCommand.rewrite(["drill"])) is DrillCommand)
        XCTAssertTrue(try RestoreCommand.parseAsRoot(try RestoreCommand.rewrite(["20261124T020000Z-3fa2", "--yes"])) is RestoreBackupCommand)
    }

    /// `--config` and the output flags are found wherever a command keeps them, inside a shared
    /// option group too (emergency and drill: `UnattendedRestoreOptions`; list and contents:
    /// `RepositoryReadOptions`): a run that missed them would ignore the config file and `--quiet`.
    func testConfigAndOutputOptionsAreFoundInsideSharedOptionGroups() throws {
        for arguments in [["--emergency"], ["drill"], ["list"], ["contents", "latest"], ["latest"]] {
            let parsed = try RestoreCommand.parseAsRoot(try RestoreCommand.rewrite(arguments + ["--config", "/etc/x.toml", "--quiet"]))
            XCTAssertEqual(RestoreCommand.configFlag(of: parsed), "/etc/x.toml", "\(arguments)")
            XCTAssertEqual(RestoreCommand.outputOptions(of: parsed)?.logLevel, .error, "\(arguments)")
        }
    }

    func testReadmeExitCodeTableMatchesTheCode() throws {
        let readme = try String(contentsOfFile: TestPathsForCommands.repositoryRoot + "/README.md", encoding: .utf8)
        var documented: [Int32: String] = [:]
        for line in readme.split(separator: "\n") where line.hasPrefix("| ") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            if cells.count >= 2, let code = Int32(cells[0]) { documented[code] = cells[1] }
        }
        let inCode = Dictionary(uniqueKeysWithValues: ExitStatus.allCases.map { ($0.rawValue, $0.name) })
        XCTAssertEqual(documented, inCode)
    }

    func testUsageErrorsExitWithTheUsageCode() {
        let sink = FileHandle(forWritingAtPath: "/dev/null")!
        XCTAssertEqual(BackupCommand.runReturningCode(["--compression-level", "11", "--repo", "/tmp/x"], standardError: sink), ExitStatus.usage.rawValue)
        XCTAssertEqual(BackupCommand.runReturningCode(["--no-such-flag"], standardError: sink), ExitStatus.usage.rawValue)
        XCTAssertEqual(RestoreCommand.runReturningCode(["--emergency", "--drill", "--repo", "/tmp/x"], standardError: sink), ExitStatus.usage.rawValue)
        XCTAssertEqual(VerifyCommand.runReturningCode(["all", "--repo", "/tmp/x"], standardError: sink), ExitStatus.usage.rawValue)
        XCTAssertEqual(BackupCommand.runReturningCode(["--repo", "ftp://x/y"], standardError: sink), ExitStatus.usage.rawValue)
        XCTAssertEqual(MigrateCommand.runReturningCode(["down", "--to", "1", "--steps", "2"], standardError: sink), ExitStatus.usage.rawValue)
        XCTAssertEqual(MigrateCommand.runReturningCode(["down", "--steps", "-1"], standardError: sink), ExitStatus.usage.rawValue)
        XCTAssertEqual(MigrateCommand.runReturningCode(["resolve", "3"], standardError: sink), ExitStatus.usage.rawValue)
    }

    /// A subcommand typed after options: `dbrestore --repo R list` used to go on as a restore of a
    /// backup named "list" (connecting to the server first); `dbmigrate --database-url U up` said
    /// only "Unknown option". Both now name the order that works, without echoing the arguments.
    func testASubcommandAfterOptionsIsNamedWithTheOrderThatWorks() throws {
        let directory = NSTemporaryDirectory() + "contract-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let errors = directory + "/stderr"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for (command, arguments, name) in [(RestoreCommand.self as ParsableCommand.Type, ["--repo", directory + "/repo", "list"], "list"),
                                           (MigrateCommand.self, ["--database-url", "postgresql://app:s3cret@127.0.0.1:1/app", "up", "--dir", directory], "up"),
                                           (BackupCommand.self, ["--repo", directory + "/repo", "wal-push", directory + "/000000010000000000000001"], "wal-push")] {
            XCTAssertTrue(FileManager.default.createFile(atPath: errors, contents: nil))
            let sink = try XCTUnwrap(FileHandle(forWritingAtPath: errors))
            XCTAssertEqual(command.runReturningCode(arguments, standardError: sink), ExitStatus.usage.rawValue, "\(arguments)")
            try sink.close()
            let text = try String(contentsOfFile: errors, encoding: .utf8)
            XCTAssertTrue(text.contains("error: '\(name)' is a subcommand: it comes first, before the options"), text)
            XCTAssertTrue(text.contains("HINT: \(command.configuration.commandName ?? "") \(name) [options]"), text)
            XCTAssertFalse(text.contains("s3cret"), text)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory + "/repo"), "nothing ran")
        // An option's value that only looks like a subcommand is left to the parser.
        XCTAssertNil(RestoreCommand.misplacedSubcommand(["--repo", "list"]))
        XCTAssertNil(MigrateCommand.misplacedSubcommand(["up", "--dir", "status"]))
    }
}

enum TestPathsForCommands {
    static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()
}

final class ConnectionErrorContractTests: XCTestCase {
    /// A malformed port is the operator's typo, not an unreachable server: exit 2, not 10.
    func testAMalformedPortIsAUsageError() throws {
        let sink = FileHandle(forWritingAtPath: "/dev/null") ?? FileHandle.standardError
        let repository = NSTemporaryDirectory() + "port-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: repository) }
        XCTAssertEqual(BackupCommand.runReturningCode(["--database-url", "postgresql://app@127.0.0.1:54x2/app", "--repo", repository],
                                                      standardError: sink), ExitStatus.usage.rawValue)
    }

    func testABadLockWaitIsAUsageError() {
        let sink = FileHandle(forWritingAtPath: "/dev/null") ?? FileHandle.standardError
        XCTAssertEqual(BackupCommand.runReturningCode(["--lock-wait", "forever", "--repo", "/nonexistent"], standardError: sink),
                       ExitStatus.usage.rawValue)
    }
}

final class HelpContractTests: XCTestCase {
    /// `--help`, `-h` and `help` print the help and exit 0 in every tool (they parse into a command
    /// whose run() throws the help request, which must not be reported as a failure).
    func testHelpExitsZeroInEveryTool() {
        let sink = FileHandle(forWritingAtPath: "/dev/null") ?? FileHandle.standardError
        for (name, command) in CommandContractTests.commands {
            // `help` is a subcommand only where there are subcommands (elsewhere it is a positional value).
            let requests = command.configuration.subcommands.isEmpty ? [["--help"], ["-h"]] : [["--help"], ["-h"], ["help"]]
            for arguments in requests {
                XCTAssertEqual(command.runReturningCode(arguments, standardError: sink), ExitStatus.success.rawValue, "\(name) \(arguments)")
            }
        }
    }
}
