import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// `dbrestore --pitr` in a repository holding base backups of two servers (a cluster initialised
/// again, or another one, storing into the same repository): a base backup recovers only with its own
/// server's WAL, so the plan chooses among one server's base backups — the one whose WAL was archived
/// last, or the one `--system-identifier` names — and refuses when neither says.
final class PointInTimeServerChoiceTests: XCTestCase {
    func testThePlanTakesTheBaseBackupOfTheServerWhoseWALItIsOrRefusesNamingTheServers() throws {
        // Server A archives into the repository and has a base backup there.
        let (first, repository, _, connection) = try archivingCluster("servers")
        let firstID = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: repository + "/backups").sorted().last)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, 10)")
        // Several segments archived: A's WAL holds every segment name B's base backup starts at.
        for _ in 0..<4 { try waitForArchive(connection) }

        // Server B (initdb'd on its own), a newer base backup of it stored into the same repository.
        let (second, otherRepository, _, _) = try archivingCluster("otherserver")
        let secondID = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: otherRepository + "/backups").sorted().last)
        XCTAssertGreaterThan(secondID, firstID, "B's base backup is the newest")
        XCTAssertEqual(try TestProcess.run("/bin/cp", ["-a", otherRepository + "/backups/" + secondID, repository + "/backups/"]).status, 0)
        chownToPostgres(repository)
        let systemA = try XCTUnwrap(try first.scalar("SELECT system_identifier::text FROM pg_control_system()", database: "postgres"))
        let systemB = try XCTUnwrap(try second.scalar("SELECT system_identifier::text FROM pg_control_system()", database: "postgres"))
        XCTAssertNotEqual(systemA, systemB)

        func plan(_ extra: [String], repository: String) throws -> (TestProcess.Result, [String: Any]) {
            let result = try asOwner("dbrestore", ["--pitr", "--pgdata", ownedDirectory("pitr-servers-target") + "/data", "--repo", repository,
                                                   "--target", "latest", "--dry-run", "--json"] + extra, cluster: first)
            return (result, (try? JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8))) as? [String: Any] ?? [:])
        }

        // No choice given: A's base backup, the server whose WAL the archive holds, not B's newer one.
        let (chosen, chosenPlan) = try plan([], repository: repository)
        XCTAssertEqual(chosen.status, 0, chosen.standardError)
        XCTAssertEqual(chosenPlan["backup_id"] as? String, firstID, chosen.standardOutput)
        XCTAssertTrue((chosenPlan["system"] as? String ?? "").hasPrefix("\(systemA), whose WAL was archived last"), chosen.standardOutput)
        let skipped = chosenPlan["skipped"] as? [[String: Any]] ?? []
        XCTAssertEqual(skipped.first { $0["id"] as? String == secondID }?["reason"] as? String, "of another server (system \(systemB))")

        // Naming B: its base backup's first segment in this archive is A's, so it cannot recover from it.
        let (other, _) = try plan(["--system-identifier", systemB], repository: repository)
        XCTAssertEqual(other.status, ExitStatus.backupNotFound.rawValue, other.standardError)
        XCTAssertTrue(other.standardError.contains("was written by another server (system \(systemA)), not by its own (system \(systemB))"), other.standardError)
        // --base-backup of B's base backup while A's WAL is recovered: refused, naming why and the option.
        let (otherBase, _) = try plan(["--base-backup", secondID], repository: repository)
        XCTAssertEqual(otherBase.status, ExitStatus.backupNotFound.rawValue, otherBase.standardError)
        XCTAssertTrue(otherBase.standardError.contains("--base-backup \(secondID) cannot recover this server's WAL: it is of another server (system \(systemB))"),
                      otherBase.standardError)
        XCTAssertTrue(otherBase.standardError.contains("--system-identifier \(systemB)"), otherBase.standardError)
        let (unknown, _) = try plan(["--system-identifier", "12345"], repository: repository)
        XCTAssertEqual(unknown.status, ExitStatus.backupNotFound.rawValue, unknown.standardError)
        XCTAssertTrue(unknown.standardError.contains("holds no base backup of system 12345"), unknown.standardError)
        XCTAssertTrue(unknown.standardError.contains(systemA) && unknown.standardError.contains(systemB), unknown.standardError)

        // The same base backups with a WAL that says nothing (none archived): refused, naming both servers and the option.
        let silent = ownedDirectory("pitr-servers-silent") + "/repo"
        XCTAssertEqual(try TestProcess.run("/bin/cp", ["-a", repository, silent]).status, 0)
        try FileManager.default.removeItem(atPath: silent + "/wal")
        chownToPostgres(silent)
        let (refused, _) = try plan([], repository: silent)
        XCTAssertEqual(refused.status, ExitStatus.usage.rawValue, refused.standardError)
        for words in ["holds base backups of 2 servers", "system \(systemA) (newest base backup \(firstID))",
                      "system \(systemB) (newest base backup \(secondID))", "--system-identifier"] {
            XCTAssertTrue(refused.standardError.contains(words), "\(words) not in: \(refused.standardError)")
        }
        XCTAssertEqual(refused.standardError.split(separator: "\n").filter { $0.hasPrefix("dbrestore: error:") }.count, 1, refused.standardError)
        XCTAssertTrue(try TestProcess.tool("dbrestore", ["pitr", "--help"]).standardOutput.contains("--system-identifier"))
    }
}
