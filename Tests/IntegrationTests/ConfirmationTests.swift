import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// Issue 16 E2: destructive commands never proceed without an explicit yes. No terminal and no
/// `--yes` ⇒ exit 2 naming `--yes`; "n" at the prompt ⇒ exit 4 (declined); nothing changed either way.
final class ConfirmationTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useDatabase(prefix: "confirm", seed: "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")
        useLocalRepository(prefix: "confirm")
    }

    /// Runs a tool with `input` on a pipe (no terminal), as from cron, CI or `ssh host cmd`.
    private func piped(_ tool: String, _ arguments: [String], input: String) throws -> TestProcess.Result {
        var environment = cluster.environment
        environment["PATH"] = ProcessInfo.processInfo.environment["PATH"]
        return try TestProcess.run(TestPaths.executable(tool), arguments, environment: environment, input: Data(input.utf8))
    }

    /// Runs a tool on a pseudo-terminal (util-linux `script`) and types `input`.
    private func atTerminal(_ tool: String, _ arguments: [String], input: String) throws -> TestProcess.Result {
        let quoted = ([TestPaths.executable(tool)] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }
        var environment = cluster.environment
        environment["PATH"] = ProcessInfo.processInfo.environment["PATH"]
        return try TestProcess.run("/usr/bin/script", ["-qec", quoted.joined(separator: " "), "/dev/null"], environment: environment,
                                   input: Data(input.utf8))
    }

    func testRestoreRefusesWithoutATerminalAndDeclinesOnNo() throws {
        _ = try backup()
        try cluster.connect(database: database).execute(script: "INSERT INTO t VALUES (3)")
        let arguments: [String] = ["latest", "--repo", repository, "--database-url", cluster.url(database: database)]
        for answer in ["n\n", "y\n", ""] {
            let refused = try piped("dbrestore", arguments, input: answer)
            XCTAssertEqual(refused.status, ExitStatus.usage.rawValue, "answer \(answer.debugDescription): " + refused.standardError)
            XCTAssertTrue(refused.standardError.contains("--yes") && refused.standardError.contains("not a terminal"), refused.standardError)
        }
        let declined = try atTerminal("dbrestore", arguments, input: "n\n")
        XCTAssertEqual(declined.status, ExitStatus.declined.rawValue, declined.standardOutput + declined.standardError)
        XCTAssertEqual(try cluster.rowCounts(database: database), ["public.t": 3], "the database was changed")

        let confirmed = try atTerminal("dbrestore", arguments, input: "y\n")
        XCTAssertEqual(confirmed.status, 0, confirmed.standardOutput + confirmed.standardError)
        XCTAssertEqual(try cluster.rowCounts(database: database), ["public.t": 2])
    }

    func testPruneRefusesToDeleteWithoutATerminalAndDeclinesOnNo() throws {
        var ids: [String] = []
        for _ in 0..<3 {
            ids.append(try backup())
            Thread.sleep(forTimeInterval: 1.1)
        }
        let policy = TestPaths.temporaryDirectory(prefix: "policy") + "/policy.toml"
        try Data("[local]\nkeep_last = 1\n".utf8).write(to: URL(fileURLWithPath: policy))
        let arguments: [String] = ["--repo", repository, "--policy", policy]
        let refused = try piped("dbprune", arguments, input: "y\n")
        XCTAssertEqual(refused.status, ExitStatus.usage.rawValue, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("would delete 2 backup(s)") && refused.standardError.contains("--yes"), refused.standardError)
        let declined = try atTerminal("dbprune", arguments, input: "n\n")
        XCTAssertEqual(declined.status, ExitStatus.declined.rawValue, declined.standardOutput + declined.standardError)
        let listed = try TestProcess.tool("dbrestore", ["list", "--repo", repository, "--json"])
        XCTAssertTrue(ids.allSatisfy { listed.standardOutput.contains($0) }, "a refused prune deleted a backup")

        // Nothing to delete: no question asked, also without a terminal.
        let pruned = try piped("dbprune", arguments + ["--yes"], input: "")
        XCTAssertEqual(pruned.status, 0, pruned.standardError)
        let nothingLeft = try piped("dbprune", arguments, input: "")
        XCTAssertEqual(nothingLeft.status, 0, nothingLeft.standardError)
    }
}
