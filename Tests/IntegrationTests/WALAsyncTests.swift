@testable import BackupStorage
import Foundation
import PostgresClient
@testable import RecoveryKit
import TestSupport
import XCTest

/// Issue 21 item 4: `wal-push --async` through S3 with 50 ms added to every request acknowledges
/// a segment (exit 0) only once it is stored, byte-exact; a killed pusher acknowledges nothing it
/// did not store and a rerun finishes; `wal-fetch --prefetch` serves exactly what was archived.
final class WALAsyncTests: IntegrationTestCase {
    var work: String!

    override func setUpWithError() throws {
        try useS3Repository(prefix: "wal")
        work = TestPaths.temporaryDirectory(prefix: "walasync")
    }

    private func store() throws -> S3Store {
        try bucketStore(prefix: "wal")
    }

    /// `count` segments of 256 KiB (distinct, partly compressible) in a pg_wal-like directory, each
    /// marked ready as PostgreSQL marks them.
    private func makeSegments(_ count: Int) throws -> [String] {
        let directory = work + "/pg_wal"
        try FileManager.default.createDirectory(atPath: directory + "/archive_status", withIntermediateDirectories: true)
        return try (1...count).map { index in
            let name = String(format: "00000001000000000000%04X", index)
            var generator = SystemRandomNumberGenerator()
            let bytes = (0..<1_048_576).map { offset in offset % 4 == 0 ? UInt8.random(in: 0...255, using: &generator) : UInt8(truncatingIfNeeded: index) }
            try Data(bytes).write(to: URL(fileURLWithPath: "\(directory)/\(name)"))
            _ = FileManager.default.createFile(atPath: "\(directory)/archive_status/\(name).ready", contents: nil)
            return name
        }
    }

    /// What the archive holds for `name`, read past the proxy and decompressed by gzip itself; nil when nothing.
    private func archived(_ name: String) throws -> Data? {
        guard let stored = try? store().read(try WALArchive.key(for: name)) else { return nil }
        let compressed = "\(work!)/\(name).archived.gz"
        try stored.write(to: URL(fileURLWithPath: compressed))
        let gunzip = try TestProcess.run("/bin/gzip", ["-df", compressed])
        XCTAssertEqual(gunzip.status, 0, "\(name): \(gunzip.standardError)")
        defer { try? FileManager.default.removeItem(atPath: "\(work!)/\(name).archived") }
        return FileManager.default.contents(atPath: "\(work!)/\(name).archived")
    }

    /// One archive_command call, as PostgreSQL makes it; on success the segment is marked done.
    private func push(_ name: String, proxy: FaultProxy, spool: String, timeout: Int = 60) throws -> TestProcess.Result {
        let result = try TestProcess.tool("dbbackup", ["wal-push", "\(work!)/pg_wal/\(name)", "--async", "--spool", spool, "--repo", repository,
                                                       "--jobs", "8", "--timeout", String(timeout)],
                                          environment: s3.environment(endpoint: proxy.endpoint))
        if result.status == 0 {
            try? FileManager.default.moveItem(atPath: "\(work!)/pg_wal/archive_status/\(name).ready", toPath: "\(work!)/pg_wal/archive_status/\(name).done")
        }
        return result
    }

    func testAsyncPushAt50msAcknowledgesEverySegmentOnlyOnceStored() throws {
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--delay", "0.05"])
        defer { proxy.stop() }
        let names = try makeSegments(20)
        let spool = work + "/spool"
        for name in names {
            let result = try push(name, proxy: proxy, spool: spool)
            XCTAssertEqual(result.status, 0, result.standardError)
            // Acknowledged means stored: checked at once, past the proxy, byte for byte.
            XCTAssertEqual(try archived(name), FileManager.default.contents(atPath: "\(work!)/pg_wal/\(name)"), "\(name) acknowledged but not stored")
        }
        XCTAssertEqual((try? FileManager.default.contentsOfDirectory(atPath: spool + "/queue")) ?? [], [], "nothing left queued")
    }

    func testAKilledPusherAcknowledgesNothingUnstoredAndARerunFinishes() throws {
        // Slow enough (0.3 s per request) that the segments read ahead are still uploading when the pusher is killed.
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--delay", "0.3"])
        defer { proxy.stop() }
        // Three times --jobs: when the first call returns, the pusher cannot have sent them all.
        let names = try makeSegments(24)
        let spool = work + "/spool"
        XCTAssertEqual(try push(names[0], proxy: proxy, spool: spool).status, 0)
        let pid = try XCTUnwrap(Int32(String(decoding: try Data(contentsOf: URL(fileURLWithPath: spool + "/pusher.pid")), as: UTF8.self)))
        XCTAssertEqual(kill(pid, SIGKILL), 0)
        // The pusher read ahead from archive_status: it was killed with segments still uploading.
        let unstored = try names.filter { try archived($0) == nil }
        XCTAssertFalse(unstored.isEmpty, "the pusher was killed before it had stored every ready segment")
        // Every verdict the killed pusher wrote names a stored segment (it may have died between
        // writing a verdict and removing that queue file).
        for verdict in (try? FileManager.default.contentsOfDirectory(atPath: spool + "/status")) ?? [] where verdict.hasSuffix(".ok") {
            let name = String(verdict.dropLast(3))
            XCTAssertEqual(try archived(name), FileManager.default.contents(atPath: "\(work!)/pg_wal/\(name)"), "\(name) has .ok but is not stored")
        }
        // PostgreSQL goes on calling (with a short timeout some calls may fail: it retries those);
        // every exit 0 is a stored segment, and the calls start a new pusher for what the old one left.
        var acknowledged: Set<String> = [names[0]]
        for round in 0..<3 {
            for name in names where !acknowledged.contains(name) {
                let result = try push(name, proxy: proxy, spool: spool, timeout: round == 0 ? 2 : 60)
                if result.status == 0 {
                    acknowledged.insert(name)
                    XCTAssertEqual(try archived(name), FileManager.default.contents(atPath: "\(work!)/pg_wal/\(name)"), "\(name) acknowledged but not stored")
                } else {
                    XCTAssertEqual(result.status, ExitStatus.repositoryError.rawValue, result.standardError)
                    XCTAssertTrue(result.standardError.contains("was not archived"), result.standardError)
                }
            }
        }
        XCTAssertEqual(acknowledged.count, names.count, "the rerun finishes")
        for name in names {
            XCTAssertEqual(try archived(name), FileManager.default.contents(atPath: "\(work!)/pg_wal/\(name)"), "\(name) stored byte-exact")
        }
    }

    func testAPushErrorIsReportedAndNotAcknowledged() throws {
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: [])
        defer { proxy.stop() }
        let names = try makeSegments(1)
        let spool = work + "/spool"
        // The same name already archived with other content: the pusher's error reaches archive_command.
        try store().write(try WALArchive.key(for: names[0]), contents: Data("not this segment".utf8))
        let result = try push(names[0], proxy: proxy, spool: spool, timeout: 20)
        XCTAssertEqual(result.status, ExitStatus.repositoryError.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("was not archived"), result.standardError)

        let other = try TestProcess.tool("dbbackup", ["wal-push", "\(work!)/pg_wal/\(names[0])", "--async", "--spool", spool, "--repo", "\(work!)/elsewhere"])
        XCTAssertEqual(other.status, ExitStatus.usage.rawValue, "a spool serves one repository: \(other.standardError)")
    }

    /// Issue 21 attack finding 3 (/tmp/attack-restore/async-stale-ok.sh): two clusters share a spool
    /// and a repository. A's call reads A's next segment ahead and the pusher stores it; B's own,
    /// different segment of that name must not be acknowledged by A's `.ok`: B's call pushes its
    /// file the synchronous way, which refuses DIFFERENT content, and the archive keeps A's.
    func testAVerdictForOtherContentUnderTheSameNameIsNotAnAcknowledgement() throws {
        let repository = work + "/repo", spool = work + "/spool"
        let first = "000000010000000000000001", second = "000000010000000000000002"
        func segment(_ directory: String, _ name: String, ready: Bool) throws -> Data {
            try FileManager.default.createDirectory(atPath: "\(work!)/\(directory)/pg_wal/archive_status", withIntermediateDirectories: true)
            let data = Data((0..<1_048_576).map { _ in UInt8.random(in: 0...255) })
            try data.write(to: URL(fileURLWithPath: "\(work!)/\(directory)/pg_wal/\(name)"))
            if ready { _ = FileManager.default.createFile(atPath: "\(work!)/\(directory)/pg_wal/archive_status/\(name).ready", contents: nil) }
            return data
        }
        func push(_ directory: String, _ name: String) throws -> TestProcess.Result {
            try TestProcess.tool("dbbackup", ["wal-push", "\(work!)/\(directory)/pg_wal/\(name)", "--async", "--spool", spool, "--repo", repository,
                                             "--timeout", "20"])
        }
        _ = try segment("A", first, ready: true)
        let secondOfA = try segment("A", second, ready: true)
        let secondOfB = try segment("B", second, ready: false)
        let pushed = try push("A", first)
        XCTAssertEqual(pushed.status, 0, pushed.standardError)
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: "\(spool)/status/\(second).ok"), Date() < deadline { usleep(50_000) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(spool)/status/\(second).ok"), "A's \(second) was read ahead and stored")

        let other = try push("B", second)
        XCTAssertEqual(other.status, ExitStatus.repositoryError.rawValue, "B's segment is not acknowledged: \(other.standardError)")
        XCTAssertTrue(other.standardError.contains("DIFFERENT content"), other.standardError)
        let fetched = work + "/fetched"
        let fetch = try TestProcess.tool("dbrestore", ["wal-fetch", second, fetched, "--repo", repository])
        XCTAssertEqual(fetch.status, 0, fetch.standardError)
        XCTAssertEqual(FileManager.default.contents(atPath: fetched), secondOfA, "the archive keeps A's segment")
        XCTAssertNotEqual(secondOfA, secondOfB)
        // A's own call for the segment is still acknowledged: its content is what was stored.
        XCTAssertEqual(try push("A", second).status, 0)
    }

    /// A verdict is for the file the pusher read, unchanged. A segment read ahead and stored, then
    /// rewritten in place before its call (same inode, same size, its modification time put back):
    /// the call is not acknowledged from the spool, and its synchronous push refuses the DIFFERENT
    /// content. A segment replaced by a copy of the same bytes (another inode) is not that file
    /// either, and the synchronous push acknowledges it: the archive holds exactly those bytes.
    func testAVerdictIsForTheFileReadUnchanged() throws {
        let spool = work + "/spool"
        let names = try makeSegments(3)
        func push(_ name: String) throws -> TestProcess.Result {
            try TestProcess.tool("dbbackup", ["wal-push", "\(work!)/pg_wal/\(name)", "--async", "--spool", spool, "--repo", repository, "--timeout", "20"],
                                 environment: s3.environment())
        }
        XCTAssertEqual(try push(names[0]).status, 0)
        let deadline = Date().addingTimeInterval(20)
        for name in names.dropFirst() {
            while !FileManager.default.fileExists(atPath: "\(spool)/status/\(name).ok"), Date() < deadline { usleep(50_000) }
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(spool)/status/\(name).ok"), "\(name) was read ahead and stored")
        }
        let rewritten = "\(work!)/pg_wal/\(names[1])"
        let original = try XCTUnwrap(FileManager.default.contents(atPath: rewritten))
        var before = stat()
        XCTAssertEqual(stat(rewritten, &before), 0)
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: rewritten))
        try handle.write(contentsOf: Data(original.map { $0 ^ 0xFF }))
        try handle.close()
        var times = [before.st_atim, before.st_mtim]
        XCTAssertEqual(utimensat(AT_FDCWD, rewritten, &times, 0), 0)
        let refused = try push(names[1])
        XCTAssertEqual(refused.status, ExitStatus.repositoryError.rawValue, "a file changed since it was stored is not acknowledged: \(refused.standardError)")
        XCTAssertTrue(refused.standardError.contains("DIFFERENT content"), refused.standardError)

        let copied = "\(work!)/pg_wal/\(names[2])"
        let bytes = try XCTUnwrap(FileManager.default.contents(atPath: copied))
        try bytes.write(to: URL(fileURLWithPath: copied), options: .atomic)
        let copy = try push(names[2])
        XCTAssertEqual(copy.status, 0, "the same bytes in another file are acknowledged by the synchronous push: \(copy.standardError)")
        XCTAssertEqual(try archived(names[2]), bytes)
    }

    /// Two calls for one segment at once (an operator's manual push beside the archiver's): the first
    /// takes the verdict, and the second gets one of its own instead of waiting out its timeout.
    func testTwoCallsForOneSegmentAtOnceAreBothAnswered() throws {
        let spool = work + "/spool", repository = work + "/repo"
        let names = try makeSegments(6)
        for name in names {
            let calls = (0..<2).map { _ in
                Background { try TestProcess.tool("dbbackup", ["wal-push", "\(self.work!)/pg_wal/\(name)", "--async", "--spool", spool,
                                                              "--repo", repository, "--timeout", "20"]) }
            }
            for call in calls {
                let result = try call.wait()
                XCTAssertEqual(result.status, 0, "\(name): \(result.standardError)")
            }
        }
    }

    /// A relative --repo is the repository in the directory of the call (PostgreSQL runs
    /// archive_command in the data directory), whichever call started the pusher: one spool given
    /// `--repo repo` from two data directories is refused for the second, which is another repository.
    /// And a %p that is not there is said as such (exit 1), not as a repository's timeout.
    func testARelativeRepositoryIsTheCallersAndAMissingFileIsSaid() throws {
        let spool = work + "/spool"
        /// archive_command as PostgreSQL runs it: in the data directory, %p relative to it.
        func push(_ name: String, from cluster: String) throws -> TestProcess.Result {
            try TestProcess.run("/bin/sh", ["-c", "cd \"$1\" && exec \"$2\" wal-push \"pg_wal/$3\" --async --spool \"$4\" --repo repo --timeout 20", "sh",
                                            "\(work!)/\(cluster)", TestPaths.executable("dbbackup"), name, spool])
        }
        for cluster in ["a", "b"] {
            try FileManager.default.createDirectory(atPath: "\(work!)/\(cluster)/pg_wal", withIntermediateDirectories: true)
            try Data(repeating: 7, count: 1_048_576).write(to: URL(fileURLWithPath: "\(work!)/\(cluster)/pg_wal/000000010000000000000001"))
        }
        let first = try push("000000010000000000000001", from: "a")
        XCTAssertEqual(first.status, 0, first.standardError)
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(work!)/a/repo/wal/00000001/000000010000000000000001.gz"), "stored where the call named it")
        let second = try push("000000010000000000000001", from: "b")
        XCTAssertEqual(second.status, ExitStatus.usage.rawValue, second.standardError)
        XCTAssertTrue(second.standardError.contains("belongs to repository \(work!)/a/repo, not \(work!)/b/repo"), second.standardError)
        let missing = try push("000000010000000000000002", from: "a")
        XCTAssertEqual(missing.status, ExitStatus.failure.rawValue, missing.standardError)
        XCTAssertTrue(missing.standardError.contains("cannot read WAL file pg_wal/000000010000000000000002: No such file or directory"), missing.standardError)
    }

    /// A pusher that holds the spool but answers nothing (stopped, stuck): the call gives up after
    /// `--timeout` (exit 20, PostgreSQL keeps the file) naming that pusher's pid, not only its log.
    func testATimeoutNamesThePusherThatHoldsTheSpool() throws {
        let spool = work + "/spool", repository = work + "/repo"
        let names = try makeSegments(1)
        try FileManager.default.createDirectory(atPath: spool, withIntermediateDirectories: true)
        try Data(repository.utf8).write(to: URL(fileURLWithPath: spool + "/repository"))
        try Data("424242".utf8).write(to: URL(fileURLWithPath: spool + "/pusher.pid"))
        let lock = open(spool + "/pusher.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        XCTAssertEqual(flock(lock, LOCK_EX | LOCK_NB), 0)
        defer { close(lock) }
        let result = try TestProcess.tool("dbbackup", ["wal-push", "\(work!)/pg_wal/\(names[0])", "--async", "--spool", spool, "--repo", repository,
                                                       "--timeout", "2"])
        XCTAssertEqual(result.status, ExitStatus.repositoryError.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("was not archived within 2 s"), result.standardError)
        XCTAssertTrue(result.standardError.contains("the background pusher (pid 424242 in pusher.pid) holds the spool but gave no verdict"), result.standardError)
    }

    /// The spool deleted and made again for another repository while the first one's pusher still
    /// runs (second attack, F1): what the old pusher stored in its repository never acknowledges a
    /// call for the new one; the segment ends up in the repository its call named.
    func testAPusherOfAReplacedSpoolAcknowledgesNothingForTheNewOne() throws {
        let spool = work + "/spool", first = work + "/repoA", second = work + "/repoB"
        let names = try makeSegments(2)
        func push(_ name: String, into repository: String) throws -> TestProcess.Result {
            try TestProcess.tool("dbbackup", ["wal-push", "\(work!)/pg_wal/\(name)", "--async", "--spool", spool, "--repo", repository, "--timeout", "20"])
        }
        try FileManager.default.removeItem(atPath: "\(work!)/pg_wal/archive_status/\(names[1]).ready")
        XCTAssertEqual(try push(names[0], into: first).status, 0)
        try FileManager.default.removeItem(atPath: spool)
        let result = try push(names[1], into: second)
        XCTAssertEqual(result.status, 0, result.standardError)
        let fetched = work + "/fetched"
        let fetch = try TestProcess.tool("dbrestore", ["wal-fetch", names[1], fetched, "--repo", second])
        XCTAssertEqual(fetch.status, 0, "acknowledged, so in the repository the call named: \(fetch.standardError)")
        XCTAssertEqual(FileManager.default.contents(atPath: fetched), FileManager.default.contents(atPath: "\(work!)/pg_wal/\(names[1])"))
    }

    /// A FIFO in pg_wal marked ready (second attack, F2) is refused, not opened for reading: the
    /// pusher goes on with the other segments, and the call for it says at once what it is.
    func testAFIFOAmongTheReadySegmentsDoesNotHangThePusher() throws {
        let spool = work + "/spool"
        let names = try makeSegments(3)
        try FileManager.default.removeItem(atPath: "\(work!)/pg_wal/\(names[1])")
        XCTAssertEqual(mkfifo("\(work!)/pg_wal/\(names[1])", 0o600), 0)
        func push(_ name: String) throws -> TestProcess.Result {
            try TestProcess.tool("dbbackup", ["wal-push", "\(work!)/pg_wal/\(name)", "--async", "--spool", spool, "--repo", repository, "--timeout", "20"],
                                 environment: s3.environment())
        }
        XCTAssertEqual(try push(names[0]).status, 0)
        let started = Date()
        let fifo = try push(names[1])
        XCTAssertEqual(fifo.status, ExitStatus.failure.rawValue, fifo.standardError)
        XCTAssertTrue(fifo.standardError.contains("it is not a regular file"), fifo.standardError)
        XCTAssertLessThan(Date().timeIntervalSince(started), 10)
        XCTAssertEqual(try push(names[2]).status, 0, "the pusher goes on after the FIFO")
        XCTAssertEqual(try archived(names[2]), FileManager.default.contents(atPath: "\(work!)/pg_wal/\(names[2])"))
    }

    /// A FIFO or a hard link planted in the prefetch spool under a segment's name, with its CRC-32
    /// beside it (second attack, F3): neither blocks the call nor is handed to PostgreSQL; the
    /// segment is fetched from the repository, and what lands at %p has one name.
    func testAFIFOOrAHardLinkInThePrefetchSpoolIsNeverServed() throws {
        let (names, restore) = try archivedForReplay(4)
        let spool = restore.spool, destination = restore.destination
        XCTAssertEqual(try restore.fetch(names[0]).status, 0)
        waitForSpooled(names[1], in: spool)
        waitForSpooled(names[2], in: spool)
        try FileManager.default.removeItem(atPath: "\(spool)/segments/\(names[1])")
        XCTAssertEqual(mkfifo("\(spool)/segments/\(names[1])", 0o600), 0)
        let outside = work + "/outside"
        XCTAssertEqual(link("\(spool)/segments/\(names[2])", outside), 0)
        for name in names.dropFirst().prefix(2) {
            let started = Date()
            let result = try restore.fetch(name)
            XCTAssertEqual(result.status, 0, result.standardError)
            XCTAssertLessThan(Date().timeIntervalSince(started), 10, "\(name): the call did not block")
            XCTAssertEqual(FileManager.default.contents(atPath: destination), FileManager.default.contents(atPath: "\(work!)/pg_wal/\(name)"))
            var status = stat()
            XCTAssertEqual(stat(destination, &status), 0)
            XCTAssertEqual(status.st_nlink, 1, "\(name) at %p shares its inode with another name")
        }
    }

    /// A WAL segment as PostgreSQL writes it, as far as its first page goes: the long page header
    /// (XLP_LONG_HEADER, timeline 1, `xlp_pageaddr` = the segment's start LSN, `xlp_seg_size`).
    private func walSegment(_ name: String, size: Int = 1 << 20) -> Data {
        var bytes = (0..<size).map { _ in UInt8.random(in: 0...255) }
        let log = UInt64(name.dropFirst(8).prefix(8), radix: 16) ?? 0, segment = UInt64(name.suffix(8), radix: 16) ?? 0
        let address = (log * (0x1_0000_0000 / UInt64(size)) + segment) * UInt64(size)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { for (index, byte) in $0.enumerated() { bytes[offset + index] = byte } }
        }
        put(UInt16(0xD116), at: 0); put(UInt16(0x0002), at: 2); put(UInt32(1), at: 4); put(address, at: 8)
        put(UInt32(size), at: 32); put(UInt32(8192), at: 36)
        return Data(bytes)
    }

    /// Issue 21 attack finding 5: a valid gzip in the prefetch spool under a segment's name (here
    /// the stored copy of another segment) is not served as that segment: its page header says what
    /// it is, and the segment is fetched from the repository.
    func testPrefetchServesOnlyWhatIsTheSegmentByItsPageHeader() throws {
        let repository = work + "/repo", pgWAL = work + "/pg_wal"
        try FileManager.default.createDirectory(atPath: pgWAL, withIntermediateDirectories: true)
        let first = "000000010000000000000001", second = "000000010000000000000002"
        for name in [first, second] {
            try walSegment(name).write(to: URL(fileURLWithPath: "\(pgWAL)/\(name)"))
            let pushed = try TestProcess.tool("dbbackup", ["wal-push", "\(pgWAL)/\(name)", "--repo", repository])
            XCTAssertEqual(pushed.status, 0, pushed.standardError)
        }
        XCTAssertTrue(WALSegmentName.headerMatches(try Data(contentsOf: URL(fileURLWithPath: "\(pgWAL)/\(second)")), name: second))
        XCTAssertFalse(WALSegmentName.headerMatches(try Data(contentsOf: URL(fileURLWithPath: "\(pgWAL)/\(first)")), name: second))
        let restore = work + "/restore/pg_wal", spool = work + "/restore/pg_wal/dbrecovery-prefetch"
        try FileManager.default.createDirectory(atPath: spool + "/segments", withIntermediateDirectories: true)
        try Data(repository.utf8).write(to: URL(fileURLWithPath: spool + "/repository"))
        // The other segment, whole and with its own correct CRC-32: only its page header gives it away.
        let planted = try Data(contentsOf: URL(fileURLWithPath: "\(pgWAL)/\(first)"))
        try planted.write(to: URL(fileURLWithPath: "\(spool)/segments/\(second)"))
        try planted.withUnsafeBytes(WALPrefetch.spoolRecord).write(to: URL(fileURLWithPath: "\(spool)/\(WALPrefetch.record(of: second))"))

        let fetched = try TestProcess.tool("dbrestore", ["wal-fetch", second, restore + "/RECOVERYXLOG", "--prefetch", "2", "--repo", repository])
        XCTAssertEqual(fetched.status, 0, fetched.standardError)
        XCTAssertEqual(FileManager.default.contents(atPath: restore + "/RECOVERYXLOG"), FileManager.default.contents(atPath: "\(pgWAL)/\(second)"),
                       "the segment asked for, not the other one planted under its name")
    }

    /// A link planted in the prefetch spool under a segment's name (pointing at a file with the
    /// right bytes and CRC-32 today) is not handed to PostgreSQL: what lands at %p is a regular
    /// file fetched from the repository, not a link whose target can change under recovery.
    func testALinkInThePrefetchSpoolIsNeverServed() throws {
        let repository = work + "/repo", pgWAL = work + "/pg_wal"
        try FileManager.default.createDirectory(atPath: pgWAL, withIntermediateDirectories: true)
        let name = "000000010000000000000002"
        let segment = walSegment(name)
        try segment.write(to: URL(fileURLWithPath: "\(pgWAL)/\(name)"))
        let pushed = try TestProcess.tool("dbbackup", ["wal-push", "\(pgWAL)/\(name)", "--repo", repository])
        XCTAssertEqual(pushed.status, 0, pushed.standardError)
        let restore = work + "/restore/pg_wal", spool = work + "/restore/pg_wal/dbrecovery-prefetch"
        try FileManager.default.createDirectory(atPath: spool + "/segments", withIntermediateDirectories: true)
        try Data(repository.utf8).write(to: URL(fileURLWithPath: spool + "/repository"))
        try FileManager.default.createSymbolicLink(atPath: "\(spool)/segments/\(name)", withDestinationPath: "\(pgWAL)/\(name)")
        try segment.withUnsafeBytes(WALPrefetch.spoolRecord).write(to: URL(fileURLWithPath: "\(spool)/\(WALPrefetch.record(of: name))"))

        let destination = restore + "/RECOVERYXLOG"
        let fetched = try TestProcess.tool("dbrestore", ["wal-fetch", name, destination, "--prefetch", "2", "--repo", repository])
        XCTAssertEqual(fetched.status, 0, fetched.standardError)
        let type = try FileManager.default.attributesOfItem(atPath: destination)[.type] as? FileAttributeType
        XCTAssertEqual(type, .typeRegular, "a regular file at %p, not the planted link")
        XCTAssertEqual(FileManager.default.contents(atPath: destination), segment)
    }

    /// Issue 21 attack finding 6: a read-ahead that failed leaves `status/<name>.error`; the later
    /// call for that segment, once the repository works again, retries instead of reporting it.
    func testAStaleErrorOfAReadAheadIsRetriedByTheCallForThatSegment() throws {
        let repository = work + "/repo", spool = work + "/spool", pgWAL = work + "/pg_wal"
        try FileManager.default.createDirectory(atPath: pgWAL + "/archive_status", withIntermediateDirectories: true)
        let first = "000000010000000000000001", second = "000000010000000000000002"
        for name in [first, second] {
            try walSegment(name).write(to: URL(fileURLWithPath: "\(pgWAL)/\(name)"))
            _ = FileManager.default.createFile(atPath: "\(pgWAL)/archive_status/\(name).ready", contents: nil)
        }
        // The repository cannot take WAL (a file where its wal/ folder goes), even for root.
        try FileManager.default.createDirectory(atPath: repository, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: repository + "/wal", contents: Data("not a folder".utf8))
        func push(_ name: String) throws -> TestProcess.Result {
            try TestProcess.tool("dbbackup", ["wal-push", "\(pgWAL)/\(name)", "--async", "--spool", spool, "--repo", repository, "--timeout", "20"])
        }
        let failed = try push(first)
        XCTAssertEqual(failed.status, ExitStatus.repositoryError.rawValue, failed.standardError)
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: "\(spool)/status/\(second).error"), Date() < deadline { usleep(50_000) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(spool)/status/\(second).error"), "the read-ahead failed too")

        try FileManager.default.removeItem(atPath: repository + "/wal")
        let retried = try push(second)
        XCTAssertEqual(retried.status, 0, "the stale error is not this call's verdict: \(retried.standardError)")
        let fetched = work + "/fetched"
        XCTAssertEqual(try TestProcess.tool("dbrestore", ["wal-fetch", second, fetched, "--repo", repository]).status, 0)
        XCTAssertEqual(FileManager.default.contents(atPath: fetched), FileManager.default.contents(atPath: "\(pgWAL)/\(second)"))
    }

    /// Issue 21 attack finding 7: a spool the PostgreSQL user cannot write is a usage problem
    /// naming the spool (exit 2), not a repository problem. Run as the postgres user, as
    /// archive_command is (root may write anywhere).
    func testAnUnwritableSpoolIsReportedAsTheSpoolsProblem() throws {
        guard getuid() == 0, let postgres = getpwnam("postgres") else {
            return XCTFail("needs root and a postgres user, to run the command as archive_command runs")
        }
        let directory = TestPaths.temporaryDirectory(prefix: "rospool")
        let pgWAL = directory + "/pg_wal", spool = directory + "/spool", repository = directory + "/repo"
        for path in [directory, pgWAL, spool, repository] {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            chown(path, postgres.pointee.pw_uid, postgres.pointee.pw_gid)
        }
        let name = "000000010000000000000001"
        try walSegment(name).write(to: URL(fileURLWithPath: "\(pgWAL)/\(name)"))
        chown("\(pgWAL)/\(name)", postgres.pointee.pw_uid, postgres.pointee.pw_gid)
        chmod(spool, 0o500)
        let result = try TestProcess.run("/usr/sbin/runuser", ["-u", "postgres", "--", TestPaths.executable("dbbackup"), "wal-push",
                                                              "\(pgWAL)/\(name)", "--async", "--spool", spool, "--repo", repository, "--timeout", "5"])
        XCTAssertEqual(result.status, ExitStatus.usage.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("spool directory \(spool) is not writable"), result.standardError)
    }

    func testTheSpoolComesFromTheFlagOrTheConfigFile() throws {
        let names = try makeSegments(1)
        let local = work + "/repo"
        let missing = try TestProcess.tool("dbbackup", ["wal-push", "\(work!)/pg_wal/\(names[0])", "--async", "--repo", local])
        XCTAssertEqual(missing.status, ExitStatus.usage.rawValue, missing.standardError)
        XCTAssertTrue(missing.standardError.contains("[wal] spool"), missing.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: local + "/wal"), "nothing archived")

        let config = work + "/config.toml"
        try "[wal]\nspool = \"\(work!)/configured-spool\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        let pushed = try TestProcess.tool("dbbackup", ["wal-push", "\(work!)/pg_wal/\(names[0])", "--async", "--repo", local],
                                          environment: ["DBRECOVERY_CONFIG": config])
        XCTAssertEqual(pushed.status, 0, pushed.standardError)
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(local)/\(try WALArchive.key(for: names[0]))"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: work + "/configured-spool/repository"))
    }

    func testPrefetchServesExactlyWhatWasArchived() throws {
        let names = try writeWALSegments(12)
        for name in names {
            let result = try TestProcess.tool("dbbackup", ["wal-push", "\(work!)/pg_wal/\(name)", "--repo", repository], environment: s3.environment())
            XCTAssertEqual(result.status, 0, result.standardError)
        }
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--delay", "0.05"])
        defer { proxy.stop() }
        let restoreDirectory = work + "/restore/pg_wal"
        try FileManager.default.createDirectory(atPath: restoreDirectory, withIntermediateDirectories: true)
        let spool = restoreDirectory + "/dbrecovery-prefetch"
        for (index, name) in names.enumerated() {
            if index == 3 {
                // Wait for the prefetcher to hold the next segment, then damage that spool copy: it is
                // not served as it is, the segment is fetched again.
                let spooled = "\(spool)/segments/\(names[4])"
                let deadline = Date().addingTimeInterval(20)
                while !FileManager.default.fileExists(atPath: spooled + ".crc32") && Date() < deadline { usleep(50_000) }
                var data = try Data(contentsOf: URL(fileURLWithPath: spooled))
                data[data.count / 2] ^= 0x20
                try data.write(to: URL(fileURLWithPath: spooled))
            }
            let result = try TestProcess.tool("dbrestore", ["wal-fetch", name, restoreDirectory + "/RECOVERYXLOG", "--prefetch", "4", "--repo", repository],
                                              environment: s3.environment(endpoint: proxy.endpoint))
            XCTAssertEqual(result.status, 0, result.standardError)
            XCTAssertEqual(FileManager.default.contents(atPath: restoreDirectory + "/RECOVERYXLOG"),
                           FileManager.default.contents(atPath: "\(work!)/pg_wal/\(name)"), "\(name) served byte-exact")
        }
        let missing = try TestProcess.tool("dbrestore", ["wal-fetch", "000000010000000000000FFF", restoreDirectory + "/RECOVERYXLOG", "--prefetch", "4",
                                                         "--repo", repository], environment: s3.environment(endpoint: proxy.endpoint))
        XCTAssertEqual(missing.status, ExitStatus.failure.rawValue, "not in the archive: recovery ends there")
    }

    /// PostgreSQL's own archiver calling `wal-push --async` and its own recovery calling
    /// `wal-fetch --prefetch`: every row comes back over several segments, recovery ends where the
    /// archive ends (a segment not found) and the server opens on a new timeline.
    func testAServerArchivingAsynchronouslyRecoversWithPrefetchedWAL() throws {
        let directory = ownedDirectory("async-wal")
        let repository = directory + "/repo", spool = directory + "/spool"
        let archive = "\(TestPaths.executable("dbbackup")) wal-push %p --async --spool \(spool) --repo \(repository)"
        let cluster = try PostgresCluster(archiveCommand: archive)
        defer { cluster.stop() }
        let (database, connection) = try itemsDatabase("asyncwal", on: cluster)
        try physicalBackup(of: database, on: cluster, into: repository)
        for batch in ["A", "B", "C", "D", "E"] {
            try connection.execute(script: "INSERT INTO items (batch) SELECT '\(batch)' FROM generate_series(1, 5000)")
            _ = try connection.query("SELECT pg_switch_wal()")
        }
        try waitForArchive(connection)
        XCTAssertTrue(FileManager.default.fileExists(atPath: spool + "/pusher.pid"), "the archiver's calls went through the pusher")

        let parent = ownedDirectory("async-wal-restore"), data = parent + "/data", port = try freePort()
        let prepared = try asOwner("dbrestore", ["--pitr", "--pgdata", data, "--repo", repository, "--target", "latest", "--port", String(port)],
                                   cluster: cluster)
        XCTAssertEqual(prepared.status, 0, prepared.standardError)
        let settings = try String(contentsOfFile: data + "/postgresql.auto.conf", encoding: .utf8)
        XCTAssertTrue(settings.contains("wal-fetch %f %p "), settings)
        try settings.replacingOccurrences(of: "wal-fetch %f %p ", with: "wal-fetch %f %p --prefetch 4 ")
            .write(toFile: data + "/postgresql.auto.conf", atomically: true, encoding: .utf8)
        defer { stopServer(data) }
        let restored = try startRecovered(data, port: port, database: database, cluster: cluster)
        XCTAssertEqual(try counts(port: port, database: database, cluster: cluster), ["A": "5000", "B": "5000", "C": "5000", "D": "5000", "E": "5000"])
        XCTAssertEqual(try restored.query("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)").scalar, "00000002")
        let log = (try? String(contentsOfFile: data + "/pg_wal/dbrecovery-prefetch/prefetch.log", encoding: .utf8)) ?? ""
        XCTAssertTrue(log.contains("started"), "recovery went through the prefetcher: \(log)")
    }

    /// `count` 1 MiB segments with their page headers in `pg_wal`, as PostgreSQL writes them.
    private func writeWALSegments(_ count: Int) throws -> [String] {
        let directory = work + "/pg_wal"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return try (1...count).map { index in
            let name = String(format: "00000001000000000000%04X", index)
            try walSegment(name).write(to: URL(fileURLWithPath: "\(directory)/\(name)"))
            return name
        }
    }

    /// Archives `names` from pg_wal into `repository` the synchronous way.
    private func archive(_ names: [String], into repository: String, environment: [String: String] = [:]) throws {
        for name in names {
            let pushed = try TestProcess.tool("dbbackup", ["wal-push", "\(work!)/pg_wal/\(name)", "--repo", repository], environment: environment)
            XCTAssertEqual(pushed.status, 0, pushed.standardError)
        }
    }

    /// Where a replay of `count` segments archived in a local repository fetches them:
    /// `restore_command` with `--prefetch 3` into a restored pg_wal, and its default spool.
    private func archivedForReplay(_ count: Int) throws
        -> ([String], (spool: String, destination: String, fetch: (String) throws -> TestProcess.Result)) {
        let repository = work + "/repo", restore = work + "/restore/pg_wal"
        let names = try writeWALSegments(count)
        try archive(names, into: repository)
        try FileManager.default.createDirectory(atPath: restore, withIntermediateDirectories: true)
        let destination = restore + "/RECOVERYXLOG"
        return (names, (restore + "/dbrecovery-prefetch", destination, { name in
            try TestProcess.tool("dbrestore", ["wal-fetch", name, destination, "--prefetch", "3", "--repo", repository])
        }))
    }

    /// Waits until the prefetcher has spooled `name` whole (its CRC-32 written last).
    private func waitForSpooled(_ name: String, in spool: String) {
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: "\(spool)/\(WALPrefetch.record(of: name))") && Date() < deadline { usleep(20_000) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(spool)/\(WALPrefetch.record(of: name))"), "\(name) was prefetched")
    }

    /// A spooled segment damaged (one byte) or cut short after the prefetcher checked it is not
    /// handed to PostgreSQL: the call checks it again and fetches the segment from the repository.
    func testADamagedOrPartialSpoolFileIsNeverServed() throws {
        let (names, restore) = try archivedForReplay(4)
        let spool = restore.spool, destination = restore.destination, fetch = restore.fetch
        XCTAssertEqual(try fetch(names[0]).status, 0)
        waitForSpooled(names[1], in: spool)
        waitForSpooled(names[2], in: spool)
        var damaged = try Data(contentsOf: URL(fileURLWithPath: "\(spool)/segments/\(names[1])"))
        damaged[damaged.count / 3] ^= 0x01
        try damaged.write(to: URL(fileURLWithPath: "\(spool)/segments/\(names[1])"))
        let whole = try Data(contentsOf: URL(fileURLWithPath: "\(spool)/segments/\(names[2])"))
        try whole.prefix(whole.count / 2).write(to: URL(fileURLWithPath: "\(spool)/segments/\(names[2])"))
        for name in names.dropFirst() {
            let result = try fetch(name)
            XCTAssertEqual(result.status, 0, result.standardError)
            XCTAssertEqual(FileManager.default.contents(atPath: destination), FileManager.default.contents(atPath: "\(work!)/pg_wal/\(name)"),
                           "\(name) is the archived segment, not the spool's damaged or partial copy")
        }
    }

    /// At the end of the archive the answer is "not found" (exit 1, nothing written where
    /// PostgreSQL looks), also after the prefetcher has tried the names beyond it, and a partial
    /// download left in the spool under that name is not taken for the segment.
    func testTheEndOfTheArchiveIsNotFound() throws {
        let (names, restore) = try archivedForReplay(3)
        let spool = restore.spool, destination = restore.destination
        for name in names {
            let result = try restore.fetch(name)
            XCTAssertEqual(result.status, 0, result.standardError)
        }
        let beyond = try XCTUnwrap(WALSegmentName.next(after: names[2], segmentSize: 1 << 20))
        // What a killed download leaves: a partial file of the next name, without its CRC-32.
        try FileManager.default.createDirectory(atPath: spool + "/segments", withIntermediateDirectories: true)
        try Data(walSegment(beyond).prefix(1000)).write(to: URL(fileURLWithPath: "\(spool)/segments/\(beyond)"))
        try FileManager.default.removeItem(atPath: destination)
        let missing = try restore.fetch(beyond)
        XCTAssertEqual(missing.status, ExitStatus.failure.rawValue, "not in the archive: recovery ends there. \(missing.standardError)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: destination), "nothing is handed to PostgreSQL for a segment the archive lacks")
    }

    /// `count` segments archived on S3 the synchronous way, and a proxy adding 50 ms to each request
    /// in front of it that counts the GETs of each segment (`gets`, 0 for one never asked for).
    private func archivedBehindCountingProxy(_ count: Int) throws -> ([String], FaultProxy, (String) throws -> Int) {
        let names = try writeWALSegments(count)
        try archive(names, into: repository, environment: s3.environment())
        let stats = work + "/stats.json", bucket = bucket!
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--delay", "0.05", "--stats", stats])
        return (names, proxy, { name in
            let counts = (try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: stats)))) as? [String: [String: Int]] ?? [:]
            return counts["\(bucket)/wal/\(try WALArchive.key(for: name))"]?["gets"] ?? 0
        })
    }

    /// Two restore_command calls at once (the second segment asked for before the first call has
    /// started its prefetcher) leave one prefetcher running, and each segment is downloaded once.
    func testTwoFetchesAtOnceStartOnePrefetcher() throws {
        let (names, proxy, gets) = try archivedBehindCountingProxy(10)
        defer { proxy.stop() }
        let restore = work + "/restore/pg_wal", spool = restore + "/dbrecovery-prefetch"
        try FileManager.default.createDirectory(atPath: restore, withIntermediateDirectories: true)
        let calls = try names.prefix(2).enumerated().map { index, name in
            try TestProcess.start("dbrestore", ["wal-fetch", name, restore + "/RECOVERYXLOG\(index)", "--prefetch", "6", "--repo", repository],
                                  environment: s3.environment(endpoint: proxy.endpoint))
        }
        XCTAssertEqual(calls.map { $0.waitForExit().exitCode }, [0, 0])
        // Wanted by both calls, whichever wrote its list last (PostgreSQL itself never asks for two at once).
        let ahead = names[2..<7]
        for name in ahead { waitForSpooled(name, in: spool) }
        let log = try String(contentsOfFile: spool + "/prefetch.log", encoding: .utf8)
        XCTAssertEqual(log.components(separatedBy: "\n").filter { $0.contains("prefetcher") && $0.hasSuffix("started") }.count, 1,
                       "one prefetcher ran: \(log)")
        for name in ahead {
            XCTAssertEqual(try gets(name), 1, "\(name) downloaded once")
        }
    }

    /// Issue 21 item 4: past the end of the archive the prefetcher asks S3 once, not once per name
    /// it was asked to prefetch (each a GET answered 404, a round trip and CPU); the segments
    /// themselves are still served, and the end is still "not found".
    func testThePrefetcherStopsAskingAtTheEndOfTheArchive() throws {
        let (names, proxy, gets) = try archivedBehindCountingProxy(6)
        defer { proxy.stop() }
        let restore = work + "/restore/pg_wal"
        try FileManager.default.createDirectory(atPath: restore, withIntermediateDirectories: true)
        func fetch(_ name: String) throws -> TestProcess.Result {
            try TestProcess.tool("dbrestore", ["wal-fetch", name, restore + "/RECOVERYXLOG", "--prefetch", "2", "--repo", repository],
                                 environment: s3.environment(endpoint: proxy.endpoint))
        }
        let beyond = try XCTUnwrap(WALSegmentName.next(after: names[5], segmentSize: 1 << 20))
        let further = try XCTUnwrap(WALSegmentName.next(after: beyond, segmentSize: 1 << 20))
        for name in names.prefix(5) {
            XCTAssertEqual(try fetch(name).status, 0)
        }
        // The call for the fifth wanted the sixth and the one after it: the prefetcher found that one missing.
        let deadline = Date().addingTimeInterval(20)
        while try gets(beyond) == 0 && Date() < deadline { usleep(20_000) }
        XCTAssertEqual(try gets(beyond), 1, "the first name past the end was asked for")
        let last = try fetch(names[5])
        XCTAssertEqual(last.status, 0, last.standardError)
        XCTAssertEqual(FileManager.default.contents(atPath: restore + "/RECOVERYXLOG"), FileManager.default.contents(atPath: "\(work!)/pg_wal/\(names[5])"))
        // That call wanted the one past the end and the next: neither is asked for again.
        usleep(1_000_000)
        XCTAssertEqual(try gets(further), 0, "a name after the end of the archive is not asked for")
        XCTAssertEqual(try gets(beyond), 1)
        let missing = try fetch(beyond)
        XCTAssertEqual(missing.status, ExitStatus.failure.rawValue, "the end of the archive is the repository's answer: \(missing.standardError)")
        // (The proxy counts a request once its answer is sent: give it a moment.)
        let counted = Date().addingTimeInterval(10)
        while try gets(beyond) < 2 && Date() < counted { usleep(20_000) }
        XCTAssertEqual(try gets(beyond), 2, "asked by the call itself")
    }
}
