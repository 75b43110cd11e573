import Foundation
import Logging
@testable import RecoveryCommands
import XCTest

/// What the tools' log lines look like, and when they carry colour.
final class StderrLogHandlerTests: XCTestCase {
    func testLinesNameTheToolAndTheLevelAndCarryColourOnlyWhenAsked() {
        XCTAssertEqual(StderrLogHandler.line(tool: "dbbackup", level: .warning, message: "S3 attempt 1 of 8 failed", metadata: [:], coloured: false),
                       "dbbackup: warning: S3 attempt 1 of 8 failed")
        XCTAssertEqual(StderrLogHandler.line(tool: "dbprune", level: .notice, message: "kept", metadata: ["repo": "/r"], coloured: true),
                       "dbprune: note: kept (repo=/r)")
        XCTAssertEqual(StderrLogHandler.line(tool: "dbbackup", level: .warning, message: "m", metadata: [:], coloured: true),
                       "dbbackup: \u{1B}[33mwarning\u{1B}[0m: m")
    }

    func testColourNeedsATerminalAndNoNO_COLOR() {
        XCTAssertTrue(StderrLogHandler.wantsColour(environment: [:], terminal: true))
        XCTAssertFalse(StderrLogHandler.wantsColour(environment: [:], terminal: false), "piped stderr gets no ANSI codes")
        XCTAssertFalse(StderrLogHandler.wantsColour(environment: ["NO_COLOR": "1"], terminal: true))
        XCTAssertTrue(StderrLogHandler.wantsColour(environment: ["NO_COLOR": ""], terminal: true), "an empty NO_COLOR does not count (no-color.org)")
    }

    func testQuietAndVerboseSetTheLevel() throws {
        func level(_ arguments: [String]) throws -> Logger.Level { try OutputOptions.parse(arguments).logLevel }
        XCTAssertEqual(try level([]), .notice)
        XCTAssertEqual(try level(["-v"]), .info)
        XCTAssertEqual(try level(["-vv"]), .debug)
        XCTAssertEqual(try level(["--verbose", "--verbose"]), .debug)
        XCTAssertEqual(try level(["-q", "-v"]), .error, "--quiet wins")
    }
}

/// The tables `list`, `cleanup` and `dbprune --dry-run` print: one line per row whatever a name holds.
final class TextTableTests: XCTestCase {
    func testAControlCharacterInACellIsShownEscapedAndTheRowStaysOneLine() {
        var table = TextTable("DATABASE", "ROWS")
        table.add("nl\nx", "7")
        table.add("tab\there", "8")
        table.add("café", "9")
        let lines = table.rendered.split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(lines.count, 4, table.rendered)
        XCTAssertTrue(lines[1].hasPrefix(#"nl\nx"#), table.rendered)
        XCTAssertTrue(lines[2].hasPrefix(#"tab\there"#), table.rendered)
        XCTAssertTrue(lines[3].hasPrefix("café"), table.rendered)
    }
}
