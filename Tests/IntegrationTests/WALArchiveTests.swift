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
                try Data((0..<1_048_576).map { UInt8(truncatingIfNeeded: $0 &* (side + 3) &+ round) }).write(to: URL(fileURLWithPath: path))
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

    /// A file named like a segment (or a `.partial` one) that is not a segment's size — cut short,
    /// empty, or someone else's — is refused at once (exit 1, its size named), synchronously and
    /// with `--async`, and nothing is stored under the segment's name; `.history` files, which are
    /// small, and whole segments of every size PostgreSQL allows are archived.
    func testAFileNamedLikeASegmentButNotOfASegmentsSizeIsRefused() throws {
        let work = TestPaths.temporaryDirectory(prefix: "walsize")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let repository = TestPaths.repositoryPath(prefix: "walsize")
        let refused: [(String, Int)] = [("000000010000000000000001", 0), ("000000010000000000000002", 65_536),
                                        ("000000010000000000000003", (1 << 20) - 1), ("000000010000000000000004", 3 << 20),
                                        ("000000010000000000000005.partial", 8192)]
        for (name, size) in refused {
            try Data(repeating: 5, count: size).write(to: URL(fileURLWithPath: "\(work)/\(name)"))
            for extra in [[], ["--async", "--spool", work + "/spool"]] {
                let push = try TestProcess.tool("dbbackup", ["wal-push", "\(work)/\(name)", "--repo", repository] + extra)
                XCTAssertEqual(push.status, 1, "\(name) \(extra): \(push.standardError)")
                XCTAssertTrue(push.standardError.contains("WAL file \(work)/\(name) is \(size) bytes, not a segment's size"), push.standardError)
                XCTAssertTrue(push.standardError.contains("PostgreSQL archives whole segments only"), push.standardError)
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(repository)/wal/00000001/\(name).gz"), "\(name) was stored")
        }
        let accepted: [(String, Int)] = [("00000002.history", 42), ("000000010000000000000006", 1 << 20), ("000000010000000000000007", 2 << 20),
                                         ("000000010000000000000008.partial", 1 << 20)]
        for (name, size) in accepted {
            try Data(repeating: 6, count: size).write(to: URL(fileURLWithPath: "\(work)/\(name)"))
            let push = try TestProcess.tool("dbbackup", ["wal-push", "\(work)/\(name)", "--repo", repository])
            XCTAssertEqual(push.status, 0, "\(name): \(push.standardError)")
        }
    }

    /// wal-push stores a segment as one gzip member, which wal-fetch (and the prefetcher) inflate
    /// whole with libdeflate; any other stream goes through the streaming decompressor. Either way
    /// a valid stream gives the segment back exactly, and a damaged one stops recovery (exit 126)
    /// naming the damage, with nothing written where PostgreSQL looks.
    func testAFetchedSegmentIsCheckedHoweverItIsInflated() throws {
        let work = TestPaths.temporaryDirectory(prefix: "walinflate")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let repository = TestPaths.repositoryPath(prefix: "walinflate")
        let name = "000000010000000000000007", fetched = "\(work)/fetched"
        let segment = Data((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: (($0 / 3) &* 7) ^ ($0 >> 9)) })
        try segment.write(to: URL(fileURLWithPath: "\(work)/\(name)"))
        let push = try TestProcess.tool("dbbackup", ["wal-push", "\(work)/\(name)", "--repo", repository])
        XCTAssertEqual(push.status, 0, push.standardError)
        let object = "\(repository)/wal/00000001/\(name).gz"
        let stored = try XCTUnwrap(FileManager.default.contents(atPath: object))
        func fetch(_ contents: Data) throws -> TestProcess.Result {
            try contents.write(to: URL(fileURLWithPath: object))
            unlink(fetched)
            return try TestProcess.tool("dbrestore", ["wal-fetch", name, fetched, "--repo", repository])
        }
        // Two gzip members, as `cat a.gz b.gz` or another archiver may leave them.
        let split = Process()
        split.executableURL = URL(fileURLWithPath: "/bin/sh")
        split.arguments = ["-c", "cd '\(work)' && head -c 500000 \(name) | gzip -1 > two.gz && tail -c +500001 \(name) | gzip -6 >> two.gz"]
        try split.run()
        split.waitUntilExit()
        let twoMembers = try XCTUnwrap(FileManager.default.contents(atPath: "\(work)/two.gz"))
        for (label, contents) in [("as pushed", stored), ("two members", twoMembers)] {
            let result = try fetch(contents)
            XCTAssertEqual(result.status, 0, "\(label): \(result.standardError)")
            XCTAssertEqual(FileManager.default.contents(atPath: fetched), segment, label)
        }
        var flipped = stored, wrongCRC = stored, wrongLength = stored
        flipped[flipped.count / 2] ^= 0x10
        wrongCRC[wrongCRC.count - 8] ^= 0x01
        wrongLength[wrongLength.count - 1] ^= 0x01
        let damaged = [("a flipped byte", flipped), ("cut short", stored.prefix(stored.count - 100)), ("a wrong CRC", wrongCRC),
                       ("a wrong length", wrongLength), ("a second member cut short", stored + twoMembers.prefix(100))]
        for (label, contents) in damaged {
            let result = try fetch(Data(contents))
            XCTAssertEqual(result.status, 126, "\(label): \(result.standardError)")
            XCTAssertTrue(result.standardError.contains("is damaged"), "\(label): \(result.standardError)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: fetched), "\(label): nothing is written at %p")
        }
    }
}
