import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// `dbverify --files all` (the weekly verify timer) while `dbprune` runs: a backup being checked
/// is protected by a reader lock as a restore's is, and one pruned before the check reached it is
/// reported as pruned (gone, not damaged), never as a false corruption alarm. On a real S3 server.
final class VerifyDuringPruneTests: XCTestCase {
    func testVerifyAllDuringPruneKeepsTheBackupItChecksAndReportsPrunedOnesAsGone() throws {
        let s3 = try S3Server.shared()
        let cluster = try PostgresCluster.shared()
        let fixture = try S3PruneFixture(backups: 3, prefix: "verify-prune", rows: 5000, s3: s3, cluster: cluster)
        let (repository, ids, policy, store) = (fixture.repository, fixture.ids, fixture.policy, fixture.store)

        // The verify goes through a proxy that answers slowly: newest first, so it is on ids[1] while
        // dbprune (keep 1) would delete ids[1] and ids[0].
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--delay", "0.4"])
        defer { proxy.stop() }
        let verify = try ChildProcess(executable: TestPaths.executable("dbverify"), arguments: ["--files", "all", "--json", "--repo", repository],
                                      environment: s3.environment(endpoint: proxy.endpoint), stdin: .null, stdout: .pipe, stderr: .pipe)
        let verifyOutput = OutputCollector(descriptor: verify.standardOutput, limit: 1 << 20)
        let verifyErrors = OutputCollector(descriptor: verify.standardError, limit: 1 << 20)
        guard try fixture.waitUntil(verify, reads: ids[1], errors: verifyErrors, name: "dbverify") else { return }
        try fixture.pruneKeeps(ids[1], readBy: "dbverify", s3: s3)
        XCTAssertThrowsError(try store.read("backups/\(ids[0])/manifest.json"), "the backup nobody was reading is pruned")

        let ended = verify.waitForExit()
        let errors = verifyErrors.finish()
        XCTAssertEqual(ended.exitCode, 0, "no false corruption alarm: \(errors)")
        XCTAssertFalse(errors.contains("damaged"), errors)
        let reports = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(verifyOutput.finish().utf8)) as? [[String: Any]])
        let byID = Dictionary(uniqueKeysWithValues: reports.compactMap { report in (report["id"] as? String).map { ($0, report) } })
        XCTAssertEqual(Set(byID.keys), Set(ids), "\(reports)")
        XCTAssertEqual(byID[ids[0]]?["pruned"] as? Bool, true, "pruned before the check reached it: gone, not damaged")
        XCTAssertEqual((byID[ids[0]]?["files"] as? [Any])?.count, 0)
        for id in ids.dropFirst() {
            XCTAssertEqual(byID[id]?["pruned"] as? Bool, false, id)
            let files = try XCTUnwrap(byID[id]?["files"] as? [[String: Any]], id)
            XCTAssertFalse(files.isEmpty, id)
            XCTAssertTrue(files.allSatisfy { $0["ok"] as? Bool == true }, "\(id): \(files)")
        }
        XCTAssertEqual(try store.list(prefix: "locks/readers/").map(\.key), [], "dbverify released its reader locks")

        // The text form says so in its own word.
        let text = try TestProcess.tool("dbverify", ["--files", "all", "--repo", repository], environment: s3.environment())
        XCTAssertEqual(text.status, 0, text.standardError)
        XCTAssertFalse(text.standardOutput.contains(ids[0]), "a backup pruned before the run is simply not listed")

        // The next prune deletes ids[1], now that nobody reads it.
        let again = try TestProcess.tool("dbprune", ["--yes", "--repo", repository, "--policy", policy], environment: s3.environment())
        XCTAssertEqual(again.status, 0, again.standardError)
        XCTAssertThrowsError(try store.read("backups/\(ids[1])/manifest.json"))
    }
}
