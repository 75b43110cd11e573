import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// `dbbackup wal-push` under races (issue 16 E3): two pushes of one segment name with different
/// content at the same moment: exactly one wins, the other is refused, the archive holds the winner.
final class WALArchiveTests: XCTestCase {
    private func race(repository: String, environment: [String: String], rounds: Int) throws {
        let work = TestPaths.temporaryDirectory(prefix: "walrace")
        defer { try? FileManager.default.removeItem(atPath: work) }
        for round in 0..<rounds {
            let name = String(format: "0000000100000000000000%02X", round + 1)
            var paths: [String] = []
            for side in 0..<2 {
                try FileManager.default.createDirectory(atPath: "\(work)/\(side)", withIntermediateDirectories: true)
                let path = "\(work)/\(side)/\(name)"
                try Data((0..<65_536).map { UInt8(truncatingIfNeeded: $0 &* (side + 3) &+ round) }).write(to: URL(fileURLWithPath: path))
                paths.append(path)
            }
            let pushes = try paths.map { try TestProcess.start("dbbackup", ["wal-push", $0, "--repo", repository], environment: environment) }
            let errors = pushes.map { OutputCollector(descriptor: $0.standardError, limit: 1 << 16) }
            let codes = pushes.map { $0.waitForExit().exitCode ?? -1 }
            let messages = errors.map { $0.finish() }
            XCTAssertEqual(codes.filter { $0 == 0 }.count, 1, "round \(round): exactly one push may win: \(codes) \(messages)")
            guard let winner = codes.firstIndex(of: 0) else { continue }
            let loser = 1 - winner
            XCTAssertTrue(messages[loser].contains("DIFFERENT content"), "round \(round): \(messages[loser])")
            let fetched = "\(work)/fetched-\(round)"
            let fetch = try TestProcess.tool("dbrestore", ["wal-fetch", name, fetched, "--repo", repository], environment: environment)
            XCTAssertEqual(fetch.status, 0, fetch.standardError)
            XCTAssertEqual(FileManager.default.contents(atPath: fetched), FileManager.default.contents(atPath: paths[winner]),
                           "round \(round): the archive holds the winner's content")
            // The winner's retry is still recognised as already archived.
            XCTAssertEqual(try TestProcess.tool("dbbackup", ["wal-push", paths[winner], "--repo", repository], environment: environment).status, 0)
        }
    }

    func testConcurrentPushesOfDifferentContentToALocalRepository() throws {
        try race(repository: TestPaths.repositoryPath(prefix: "walrepo"), environment: [:], rounds: 10)
    }

    func testConcurrentPushesOfDifferentContentToS3() throws {
        let s3 = try S3Server.shared()
        try race(repository: "s3://\(try s3.createBucket())/wal", environment: s3.environment(), rounds: 10)
    }
}
