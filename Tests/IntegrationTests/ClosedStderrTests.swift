import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// A closed stderr — `dbrestore … 2>&1 | head -1`, an ssh session that dropped at 3 a.m. — loses the
/// messages, not the run: an outside attack found every tool crashing with SIGILL (exit 132) at its
/// first message after the reader went away, a restore leaving its scratch database behind.
final class ClosedStderrTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useDatabase(prefix: "stderr", seed: "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 500);")
        useLocalRepository()
    }

    func testARestoreWhoseStderrIsClosedFinishesAndLeavesNoScratchDatabase() throws {
        let id = try backup()
        try cluster.connect(database: database).execute(script: "DELETE FROM t WHERE id > 100")
        let restore = try TestProcess.run("/bin/bash", ["-c", "exec 3>&1; set -o pipefail; \"$0\" \"$@\" 2>&1 1>&3 3>&- | true",
                                                        TestPaths.executable("dbrestore"), id, "--yes"] + common, environment: cluster.environment)
        XCTAssertEqual(restore.status, 0, "dbrestore crashed on a closed stderr: \(restore.standardOutput)")
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM t", database: database), "500")
        let scratch = try cluster.scalar("SELECT count(*) FROM pg_database WHERE datname LIKE '\(database ?? "")\\_restore\\_%'", database: "postgres")
        XCTAssertEqual(scratch, "0", "a scratch database was left")

        let backup = try TestProcess.run("/bin/bash", ["-c", "exec 3>&1; set -o pipefail; \"$0\" \"$@\" 2>&1 1>&3 3>&- | true",
                                                       TestPaths.executable("dbbackup")] + common, environment: cluster.environment)
        XCTAssertEqual(backup.status, 0, "dbbackup crashed on a closed stderr")
        let listed = backup.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(try tool("dbverify", ["--files", listed, "--repo", repository!]).status, 0, "the backup is not whole: \(listed)")
    }

    /// The other side: stdout on a full disk (`dbbackup > /dev/full` stands for `id=$(…) ` into a file
    /// that cannot grow). The backup id a pipeline reads is lost, so the run must not say success;
    /// a reader that stops early (`| head -1`) is no failure.
    func testAResultThatCannotBeWrittenToStdoutIsAFailureThatSaysSo() throws {
        let full = try TestProcess.run("/bin/bash", ["-c", "\"$0\" \"$@\" > /dev/full", TestPaths.executable("dbbackup")] + common,
                                       environment: cluster.environment)
        XCTAssertEqual(full.status, ExitStatus.failure.rawValue, full.standardError)
        XCTAssertTrue(full.standardError.contains("could not write the result to stdout") && full.standardError.contains("the run itself succeeded"),
                      full.standardError)
        let early = try TestProcess.run("/bin/bash", ["-c", "set -o pipefail; \"$0\" list --repo \"$1\" | head -c 1 > /dev/null",
                                                      TestPaths.executable("dbrestore"), repository!])
        XCTAssertEqual(early.status, 0, early.standardError)
    }
}
