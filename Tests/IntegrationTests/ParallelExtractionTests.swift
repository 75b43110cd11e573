import BackupStorage
import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// `dbrestore --pitr` extracting a base backup from its index on several threads (issue 21 item 3):
/// the same data directory as the one-pass `tar -x` of the same backup, which still serves backups
/// without an index; a damaged segment is a damaged backup and leaves nothing behind.
final class ParallelExtractionTests: XCTestCase {
    /// Small access points: hundreds of segments, and files split between them.
    private let smallSegments = ["DBRECOVERY_TOC_ACCESS_POINT_KB": "64"]

    private func newestBackup(in repository: String) throws -> String {
        try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: repository + "/backups").sorted().last)
    }

    /// Every entry of a data directory: kind and mode, owner, time and contents (the recovery settings
    /// dbrestore writes afterwards by their mode only: they carry the time of the run). Directories'
    /// times are left out: `tar -x` itself leaves the extraction time on a directory that gets a
    /// member after it set the header's (`global/pg_control` comes last in pg_basebackup's stream).
    private func tree(_ root: String) throws -> [String: String] {
        var result: [String: String] = [:]
        let enumerator = FileManager.default.enumerator(atPath: root)
        while let name = enumerator?.nextObject() as? String {
            var info = stat()
            XCTAssertEqual(lstat(root + "/" + name, &info), 0, name)
            var line = "mode \(String(info.st_mode, radix: 8)) owner \(info.st_uid):\(info.st_gid)"
            if name == "postgresql.auto.conf" || name == "recovery.signal" {
                result[name] = line
                continue
            }
            if info.st_mode & S_IFMT != S_IFDIR { line += " mtime \(info.st_mtim.tv_sec) size \(info.st_size)" }
            if info.st_mode & S_IFMT == S_IFREG {
                var digest = StreamingDigest()
                try Data(contentsOf: URL(fileURLWithPath: root + "/" + name)).withUnsafeBytes { digest.update($0) }
                line += " sha256 \(digest.hexDigest())"
            } else if info.st_mode & S_IFMT == S_IFLNK {
                line += " -> \(try FileManager.default.destinationOfSymbolicLink(atPath: root + "/" + name))"
            }
            result[name] = line
        }
        return result
    }

    /// Fails naming the entries (up to ten) that differ between two trees.
    private func assertSameTree(_ actual: [String: String], _ expected: [String: String], _ label: String, line: UInt = #line) {
        let names = Set(actual.keys).union(expected.keys).sorted().filter { actual[$0] != expected[$0] }
        let shown = names.prefix(10).map { "\($0): \(actual[$0] ?? "missing") vs \(expected[$0] ?? "missing")" }
        XCTAssertTrue(names.isEmpty, "\(label): \(names.count) entries differ: " + shown.joined(separator: "; "), line: line)
    }

    private func extract(_ repository: String, _ extra: [String], cluster: PostgresCluster,
                         environment: [String: String] = [:]) throws -> (TestProcess.Result, String) {
        let directory = ownedDirectory("extract-target") + "/data"
        let result = try asOwner("dbrestore", ["--pitr", "--pgdata", directory, "--repo", repository, "--target", "latest", "-v"] + extra,
                                 cluster: cluster, environment: environment)
        return (result, directory)
    }

    /// A copy of `repository` whose newest backup has no index, as backups taken before indexes existed.
    private func withoutIndex(_ repository: String, id: String) throws -> String {
        let copy = ownedDirectory("extract-older") + "/repo"
        XCTAssertEqual(try TestProcess.run("/bin/cp", ["-a", repository, copy]).status, 0)
        let manifestPath = copy + "/backups/\(id)/manifest.json"
        var manifest = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: manifestPath))) as? [String: Any])
        let files = try XCTUnwrap(manifest["files"] as? [[String: Any]])
        manifest["files"] = files.filter { $0["name"] as? String != "base.index.json.gz" }
        try JSONSerialization.data(withJSONObject: manifest, options: [.prettyPrinted, .sortedKeys]).write(to: URL(fileURLWithPath: manifestPath))
        try FileManager.default.removeItem(atPath: copy + "/backups/\(id)/base.index.json.gz")
        chownToPostgres(copy)
        return copy
    }

    /// A cluster archiving into a new repository, a database `prefix…` with `rows` items, and a base
    /// backup of it (small index segments).
    private func archivingClusterWithABaseBackup(_ prefix: String, rows: Int) throws
        -> (repository: String, cluster: PostgresCluster, database: String, connection: PostgresConnection) {
        let repository = ownedDirectory(prefix + "-repo") + "/repo"
        let cluster = try PostgresCluster(archiveCommand: walPush(into: repository))
        do {
            let (database, connection) = try itemsDatabase(prefix, on: cluster)
            if rows > 0 { try connection.execute(script: "INSERT INTO items (batch) SELECT 'A' FROM generate_series(1, \(rows))") }
            try physicalBackup(of: database, on: cluster, into: repository, environment: smallSegments)
            return (repository, cluster, database, connection)
        } catch {
            cluster.stop()
            throw error
        }
    }

    func testParallelExtractionEqualsTheOnePassExtractionAndRecovers() throws {
        let (repository, cluster, database, connection) = try archivingClusterWithABaseBackup("extract", rows: 50000)
        defer { cluster.stop() }
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'B' FROM generate_series(1, 10)")
        try waitForArchive(connection)
        let id = try newestBackup(in: repository)
        let manifest = try String(contentsOfFile: repository + "/backups/\(id)/manifest.json", encoding: .utf8)
        XCTAssertTrue(manifest.contains("\"base.index.json.gz\""), "the manifest names the index")
        XCTAssertTrue(FileManager.default.fileExists(atPath: repository + "/backups/\(id)/base.index.json.gz"))

        let port = try freePort()
        let (parallel, parallelDirectory) = try extract(repository, ["--jobs", "2", "--port", String(port), "--json"], cluster: cluster)
        XCTAssertEqual(parallel.status, 0, parallel.standardError)
        // Every stored byte of the base backup and its index read once: no segment twice, none skipped.
        let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(parallel.standardOutput.utf8)) as? [String: Any])
        let stored = try ["base.tar.gz", "base.index.json.gz"].map { name in
            try XCTUnwrap(try FileManager.default.attributesOfItem(atPath: repository + "/backups/\(id)/" + name)[.size] as? Int)
        }.reduce(0, +)
        XCTAssertEqual(report["bytes_read"] as? Int, stored)
        XCTAssertTrue(parallel.standardError.contains("from its base.index.json.gz"), parallel.standardError)
        XCTAssertTrue(parallel.standardError.contains("--jobs 2"), parallel.standardError)
        let (single, singleDirectory) = try extract(repository, ["--jobs", "1"], cluster: cluster)
        XCTAssertEqual(single.status, 0, single.standardError)
        XCTAssertTrue(single.standardError.contains("--jobs 1"), single.standardError)

        // The older format: no index, one pass through tar -x; the same data directory.
        let older = try withoutIndex(repository, id: id)
        let (sequential, sequentialDirectory) = try extract(older, [], cluster: cluster)
        XCTAssertEqual(sequential.status, 0, sequential.standardError)
        XCTAssertTrue(sequential.standardError.contains("in one pass (tar -x)"), sequential.standardError)
        let reference = try tree(sequentialDirectory)
        XCTAssertGreaterThan(reference.count, 500, "a whole data directory")
        assertSameTree(try tree(parallelDirectory), reference, "--jobs 2")
        assertSameTree(try tree(singleDirectory), reference, "--jobs 1")

        // A damaged index is optional: a warning, and the one-pass extraction.
        let damagedIndex = ownedDirectory("extract-bad-index") + "/repo"
        XCTAssertEqual(try TestProcess.run("/bin/cp", ["-a", repository, damagedIndex]).status, 0)
        var index = try Data(contentsOf: URL(fileURLWithPath: damagedIndex + "/backups/\(id)/base.index.json.gz"))
        index[index.count / 2] ^= 0xFF
        try index.write(to: URL(fileURLWithPath: damagedIndex + "/backups/\(id)/base.index.json.gz"))
        chownToPostgres(damagedIndex)
        let (fallback, fallbackDirectory) = try extract(damagedIndex, [], cluster: cluster)
        XCTAssertEqual(fallback.status, 0, fallback.standardError)
        XCTAssertTrue(fallback.standardError.contains("base.index.json.gz does not match its sha256"), fallback.standardError)
        assertSameTree(try tree(fallbackDirectory), reference, "damaged index")

        // The parallel extraction starts and recovers.
        let recovered = try startRecovered(parallelDirectory, port: port, database: database, cluster: cluster)
        defer { stopServer(parallelDirectory) }
        XCTAssertEqual(try recovered.query("SELECT batch, count(*)::text FROM items GROUP BY batch ORDER BY 1").rows.map { [$0[0] ?? "", $0[1] ?? ""] },
                       [["A", "50000"], ["B", "10"]])
    }

    /// Gzip members in a stored file, counted by Python's zlib (an outside reader of the format).
    private func gzipMembers(_ path: String) throws -> Int {
        let script = """
            import sys, zlib
            data, members = open(sys.argv[1], 'rb').read(), 0
            while data:
                d = zlib.decompressobj(31); d.decompress(data); assert d.eof; data, members = d.unused_data, members + 1
            print(members)
            """
        let result = try TestProcess.run("/usr/bin/python3", ["-c", script, path])
        XCTAssertEqual(result.status, 0, result.standardError)
        return try XCTUnwrap(Int(result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)))
    }

    /// Base backups are one gzip member per 1 MiB block, compressed by libdeflate (issue 21 item 3);
    /// those already in repositories are one zlib member (`DBRECOVERY_BASE_BACKUP_LAYOUT=single-member`
    /// still writes them). Each extracts from its index on two threads to the same data directory
    /// as its one-pass `tar -x`, passes `dbverify --files`, and stock `gzip -t` / `tar -tz` read it.
    func testBaseBackupsOfBothGzipLayoutsExtractAlikeFromTheirIndexAndInOnePass() throws {
        let (cluster, repository, database, connection) = try archivingCluster("layouts", baseBackup: false)
        // Rows of varied text: several MiB of table, so that the base backup spans many blocks.
        try connection.execute(script: "INSERT INTO items (batch) SELECT md5(g::text) || g FROM generate_series(1, 60000) g")
        try physicalBackup(of: database, on: cluster, into: repository,
                           environment: smallSegments.merging(["DBRECOVERY_BASE_BACKUP_LAYOUT": "single-member"]) { $1 })
        try waitForArchive(connection)
        let older = try newestBackup(in: repository)
        // The repository as it stood with only the older backup: `--target latest` takes that one.
        let olderRepository = ownedDirectory("layouts-older") + "/repo"
        XCTAssertEqual(try TestProcess.run("/bin/cp", ["-a", repository, olderRepository]).status, 0)
        chownToPostgres(olderRepository)
        try connection.execute(script: "INSERT INTO items (batch) SELECT 'B' FROM generate_series(1, 10)")
        try physicalBackup(of: database, on: cluster, into: repository, environment: smallSegments)
        try waitForArchive(connection)
        let newer = try newestBackup(in: repository)
        XCTAssertNotEqual(older, newer)

        for (label, repo, id, members) in [("single member", olderRepository, older, 1...1), ("member per block", repository, newer, 3...Int.max)] {
            let base = repo + "/backups/\(id)/base.tar.gz"
            let count = try gzipMembers(base)
            XCTAssertTrue(members.contains(count), "\(label): \(count) members")
            let stock = try TestProcess.run("/bin/sh", ["-c", "gzip -t \"$1\" && tar -tzf \"$1\" | grep -qx PG_VERSION", "sh", base])
            XCTAssertEqual(stock.status, 0, "\(label): gzip -t / tar -tz: \(stock.standardError)")
            let verify = try asOwner("dbverify", ["--files", id, "--repo", repo], cluster: cluster)
            XCTAssertEqual(verify.status, 0, "\(label): \(verify.standardError)")

            let (parallel, parallelDirectory) = try extract(repo, ["--jobs", "2"], cluster: cluster)
            XCTAssertEqual(parallel.status, 0, "\(label): \(parallel.standardError)")
            XCTAssertTrue(parallel.standardError.contains("from its base.index.json.gz"), "\(label): \(parallel.standardError)")
            let (sequential, sequentialDirectory) = try extract(try withoutIndex(repo, id: id), [], cluster: cluster)
            XCTAssertEqual(sequential.status, 0, "\(label): \(sequential.standardError)")
            XCTAssertTrue(sequential.standardError.contains("in one pass (tar -x)"), "\(label): \(sequential.standardError)")
            let reference = try tree(sequentialDirectory)
            XCTAssertGreaterThan(reference.count, 500, "\(label): a whole data directory")
            assertSameTree(try tree(parallelDirectory), reference, "\(label), --jobs 2")
        }
    }

    /// A SIGKILL halfway through an extraction (no clean-up runs) leaves a partial data directory
    /// with the run's `.dbrecovery-extracting` marker: the same command run again removes it, says
    /// so in one line, and extracts, from the index (`--jobs 2`) and through `tar -x` alike. A
    /// directory without the marker, or whose marker names a live run, is never touched.
    func testARerunAfterAKilledExtractionRemovesItsPartialDirectoryAndNothingElse() throws {
        let (repository, cluster, _, connection) = try archivingClusterWithABaseBackup("extractkill", rows: 20000)
        defer { cluster.stop() }
        try waitForArchive(connection)
        let id = try newestBackup(in: repository)
        let marker = ".dbrecovery-extracting"

        for (label, source, extra) in [("index", repository, ["--jobs", "2"]), ("tar -x", try withoutIndex(repository, id: id), [])] {
            let directory = ownedDirectory("extract-killed-target") + "/data"
            let arguments = ["--pitr", "--pgdata", directory, "--repo", source, "--target", "latest", "-v"] + extra
            let killed = try asOwner("dbrestore", arguments, cluster: cluster, environment: ["DBRECOVERY_CRASH_AT": "pitr:extracting"])
            XCTAssertEqual(killed.status, 128 + SIGKILL, "\(label): \(killed.standardError)")
            let left = try FileManager.default.contentsOfDirectory(atPath: directory)
            XCTAssertTrue(left.contains(marker), "\(label): the killed run left its marker: \(left)")
            XCTAssertGreaterThan(left.count, 1, "\(label): and a partial extraction")
            XCTAssertFalse(FileManager.default.fileExists(atPath: directory + "/global/pg_control"), "\(label): killed before pg_control")

            // The dry run says what it will do, and does not do it.
            let dryRun = try asOwner("dbrestore", arguments + ["--dry-run"], cluster: cluster)
            XCTAssertEqual(dryRun.status, 0, "\(label): \(dryRun.standardError)")
            XCTAssertTrue((dryRun.standardOutput + dryRun.standardError).contains("remove the partial extraction in \(directory)"),
                          "\(label): \(dryRun.standardOutput)\(dryRun.standardError)")
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory).sorted(), left.sorted(), "\(label): the dry run removed nothing")

            let again = try asOwner("dbrestore", arguments, cluster: cluster)
            XCTAssertEqual(again.status, 0, "\(label): \(again.standardError)")
            let said = again.standardError.split(separator: "\n").filter { $0.contains("remove the partial extraction in \(directory)") }
            XCTAssertEqual(said.count, 1, "\(label): said once: \(again.standardError)")
            XCTAssertTrue(said.first?.contains("killed") ?? false, "\(label): \(again.standardError)")
            XCTAssertTrue(FileManager.default.fileExists(atPath: directory + "/global/pg_control"), "\(label): extracted in full")
            XCTAssertTrue(FileManager.default.fileExists(atPath: directory + "/recovery.signal"), "\(label): recovery configured")
            XCTAssertFalse(FileManager.default.fileExists(atPath: directory + "/" + marker), "\(label): the marker goes last")
        }

        // Not ours (no marker): refused as before, every file left.
        let foreign = ownedDirectory("extract-foreign") + "/data"
        try FileManager.default.createDirectory(atPath: foreign + "/base", withIntermediateDirectories: true)
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: foreign + "/base/file"))
        chownToPostgres(foreign)
        let refused = try asOwner("dbrestore", ["--pitr", "--pgdata", foreign, "--repo", repository, "--target", "latest"], cluster: cluster)
        XCTAssertEqual(refused.status, ExitStatus.usage.rawValue, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("is not empty"), refused.standardError)
        XCTAssertEqual(try String(contentsOfFile: foreign + "/base/file", encoding: .utf8), "keep me")

        // A marker whose run is alive (this test process stands in for it): refused, untouched.
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        try encoder.encode(LockHolder(command: "dbrestore --pitr")).write(to: URL(fileURLWithPath: foreign + "/" + marker))
        chownToPostgres(foreign)
        let running = try asOwner("dbrestore", ["--pitr", "--pgdata", foreign, "--repo", repository, "--target", "latest"], cluster: cluster)
        XCTAssertEqual(running.status, ExitStatus.usage.rawValue, running.standardError)
        XCTAssertTrue(running.standardError.contains("is being extracted into by dbrestore --pitr (pid \(getpid())"), running.standardError)
        XCTAssertEqual(try String(contentsOfFile: foreign + "/base/file", encoding: .utf8), "keep me")
    }

    func testADamagedSegmentInTheMiddleIsBackupCorruptAndLeavesNoFiles() throws {
        let (repository, cluster, _, connection) = try archivingClusterWithABaseBackup("extractbad", rows: 0)
        defer { cluster.stop() }
        try waitForArchive(connection)
        let id = try newestBackup(in: repository)

        // SIGTERM halfway: exit 130, one error line, the data directory removed; the next run succeeds.
        let (interrupted, interruptedDirectory) = try extract(repository, ["--jobs", "2"], cluster: cluster,
                                                              environment: ["DBRECOVERY_SIGNAL_AT": "pitr:extracting"])
        XCTAssertEqual(interrupted.status, ExitStatus.interrupted.rawValue, interrupted.standardError)
        XCTAssertTrue(interrupted.standardError.contains("interrupted by SIGTERM"), interrupted.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: interruptedDirectory), "the interrupted extraction removed what it wrote")
        XCTAssertEqual((try? FileManager.default.contentsOfDirectory(atPath: repository + "/locks/holds")) ?? [], [],
                       "the interrupted run's hold on the WAL went with it")
        let (again, _) = try extract(repository, ["--jobs", "2"], cluster: cluster)
        XCTAssertEqual(again.status, 0, again.standardError)

        // The middle segment's compressed bytes, one byte changed (same size: only its sha256 tells).
        let unzipped = try TestProcess.run("/bin/gzip", ["-dc", repository + "/backups/\(id)/base.index.json.gz"])
        let index = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(unzipped.standardOutput.utf8)) as? [String: Any])
        let points = try XCTUnwrap(index["access_points"] as? [[String: Any]])
        XCTAssertGreaterThan(points.count, 10, "many segments")
        let middle = try XCTUnwrap(points[points.count / 2]["compressed_offset"] as? Int)
        let basePath = repository + "/backups/\(id)/base.tar.gz"
        var base = try Data(contentsOf: URL(fileURLWithPath: basePath))
        base[middle + 100] ^= 0x01
        try base.write(to: URL(fileURLWithPath: basePath))

        let (result, directory) = try extract(repository, ["--jobs", "2"], cluster: cluster)
        XCTAssertEqual(result.status, ExitStatus.backupCorrupt.rawValue, result.standardError)
        XCTAssertTrue(result.standardError.contains("base.tar.gz does not match its sha256"), result.standardError)
        XCTAssertTrue(result.standardError.contains("differ from their sha256 in base.index.json.gz"), result.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory), "the extraction removed what it wrote")
    }
}
