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
