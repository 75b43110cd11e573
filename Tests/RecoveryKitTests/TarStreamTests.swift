import Foundation
import Gzip
@testable import RecoveryKit
import XCTest

/// The tar walking that the base backup index and the parallel extraction share: an extraction
/// started at any offset, from the position the index recorded there, writes what `tar -x` writes.
final class TarStreamTests: XCTestCase {
    /// A ustar archive (as pg_basebackup writes: files, directories, a symlink) of awkward sizes.
    private func archive() throws -> (bytes: [UInt8], source: String) {
        let source = NSTemporaryDirectory() + "tar-source-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: source + "/base/1", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: source + "/pg_wal", withIntermediateDirectories: true)
        for (name, size) in [("PG_VERSION", 3), ("base/1/empty", 0), ("base/1/511", 511), ("base/1/512", 512), ("base/1/513", 513),
                             ("base/1/big", 70_001), ("global_control", 8192)] {
            let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ size) }
            XCTAssertTrue(FileManager.default.createFile(atPath: source + "/" + name, contents: Data(bytes)))
        }
        chmod(source + "/base/1/511", 0o640)
        chmod(source + "/base", 0o750)
        try FileManager.default.createSymbolicLink(atPath: source + "/pg_tblspc_link", withDestinationPath: "/srv/elsewhere")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/tar")
        process.arguments = ["--format=ustar", "-c", "-f", "-", "-C", source, "PG_VERSION", "base", "pg_wal", "global_control", "pg_tblspc_link"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0)
        return (Array(data), source)
    }

    /// Every entry under `root`: kind, mode, size, link target and modification time, and contents.
    private func tree(_ root: String) throws -> [String: String] {
        var result: [String: String] = [:]
        let enumerator = FileManager.default.enumerator(atPath: root)
        while let name = enumerator?.nextObject() as? String {
            var info = stat()
            XCTAssertEqual(lstat(root + "/" + name, &info), 0)
            var line = "mode \(String(info.st_mode, radix: 8)) owner \(info.st_uid):\(info.st_gid) mtime \(info.st_mtim.tv_sec)"
            if info.st_mode & S_IFMT == S_IFREG {
                line += " contents \(try Data(contentsOf: URL(fileURLWithPath: root + "/" + name)).base64EncodedString())"
            } else if info.st_mode & S_IFMT == S_IFLNK {
                line += " -> \(try FileManager.default.destinationOfSymbolicLink(atPath: root + "/" + name))"
            }
            result[name] = line
        }
        return result
    }

    func testExtractingFromAnyAccessPointInAnyOrderWritesWhatTarWrites() throws {
        let (bytes, source) = try archive()
        defer { try? FileManager.default.removeItem(atPath: source) }
        let reference = NSTemporaryDirectory() + "tar-reference-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: reference, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: reference) }
        let tarx = Process()
        tarx.executableURL = URL(fileURLWithPath: "/bin/tar")
        tarx.arguments = ["-x", "-f", source + ".tar", "-C", reference]
        try Data(bytes).write(to: URL(fileURLWithPath: source + ".tar"))
        defer { unlink(source + ".tar") }
        try tarx.run()
        tarx.waitUntilExit()
        XCTAssertEqual(tarx.terminationStatus, 0)

        // Points inside headers, data and padding, at header starts, and in the end-of-archive blocks;
        // fed in uneven chunks, as the compressor reports them after the bytes went by.
        for step in [97, 512, 1000, 4096] {
            let builder = BaseBackupIndexBuilder(accessPointInterval: 1)
            var fed = 0, compressed: UInt64 = 0
            var points: [UInt64] = []
            var offset = step
            while offset < bytes.count { points.append(UInt64(offset)); offset += step }
            var nextPoint = 0
            while fed < bytes.count {
                let end = min(bytes.count, fed + 333)
                bytes[fed..<end].withUnsafeBytes { builder.write($0) }
                fed = end
                while nextPoint < points.count && points[nextPoint] + 600 < UInt64(fed) {
                    compressed += 10
                    builder.segments.accessPoint(GzipAccessPoint(compressedOffset: compressed, uncompressedOffset: points[nextPoint]))
                    nextPoint += 1
                }
            }
            while nextPoint < points.count {
                compressed += 10
                builder.segments.accessPoint(GzipAccessPoint(compressedOffset: compressed, uncompressedOffset: points[nextPoint]))
                nextPoint += 1
            }
            guard let index = builder.finish(tarBytes: UInt64(bytes.count)) else { return XCTFail("no index: \(builder.failure ?? "")") }
            XCTAssertEqual(index.positions.count, points.count + 1)
            XCTAssertTrue(index.positions.contains { $0?.member == nil && $0 != nil } || step == 512 || step == 4096, "a point in the end-of-archive blocks")

            // Segments written last to first, as threads may finish them.
            let target = NSTemporaryDirectory() + "tar-parallel-" + UUID().uuidString
            try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: target) }
            let starts = [0] + points
            var deferred: [TarMember] = []
            for segment in starts.indices.reversed() {
                let start = Int(starts[segment]), end = segment + 1 < starts.count ? Int(starts[segment + 1]) : bytes.count
                let writer = TarExtractor(root: target, at: UInt64(start), position: index.positions[segment], ownership: .init())
                try bytes[start..<end].withUnsafeBytes { try writer.write($0) }
                try writer.finish()
                deferred += writer.deferred
            }
            try TarExtractor.finishAttributes(deferred, root: target, ownership: .init())
            XCTAssertEqual(try tree(target), try tree(reference), "step \(step)")
        }
    }

    /// Found by an outside attack (a tampered repository, extracted as root): a symlink member followed by
    /// members under it wrote through the link, outside the data directory, and exited 0. The links are
    /// made last, only where nothing of the archive lies on their way; `tar -x` refuses too.
    func testAMemberUnderALinkOfTheArchiveIsNeverWrittenOutsideTheDataDirectory() throws {
        let base = NSTemporaryDirectory() + "tar-escape-" + UUID().uuidString
        let outside = base + "/outside", root = base + "/root"
        try FileManager.default.createDirectory(atPath: outside + "/sub", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: base) }
        let bytes = try tarMadeByPython("""
            link = tarfile.TarInfo("evil"); link.type = tarfile.SYMTYPE; link.linkname = sys.argv[1]; t.addfile(link)
            d = tarfile.TarInfo("evil/sub"); d.type = tarfile.DIRTYPE; t.addfile(d)
            data = b"written outside the data directory"
            f = tarfile.TarInfo("evil/sub/pwned"); f.size = len(data); t.addfile(f, io.BytesIO(data))
            """, outside)

        let writer = TarExtractor(root: root, at: 0, position: nil, ownership: .init())
        try bytes.withUnsafeBytes { try writer.write($0) }
        try writer.finish()
        XCTAssertThrowsError(try TarExtractor.finishAttributes(writer.deferred, root: root, ownership: .init())) { error in
            XCTAssertEqual((error as? RecoveryError)?.code, .backupCorrupt, "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: outside + "/sub/pwned"), "nothing is written through the archive's link")
    }

    /// A tar stream made by Python's tarfile (`t`, ustar), for members `tar -c` cannot make from a tree.
    private func tarMadeByPython(_ members: String, _ arguments: String...) throws -> [UInt8] {
        let make = Process()
        make.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        make.arguments = ["-c", "import io, sys, tarfile\nout = io.BytesIO()\nwith tarfile.open(fileobj=out, mode='w', format=tarfile.USTAR_FORMAT) as t:\n"
                          + members.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n") + "\nsys.stdout.buffer.write(out.getvalue())\n"] + arguments
        let pipe = Pipe()
        make.standardOutput = pipe
        try make.run()
        let bytes = Array(pipe.fileHandleForReading.readDataToEndOfFile())
        make.waitUntilExit()
        XCTAssertEqual(make.terminationStatus, 0)
        return bytes
    }

    /// `tar -x` writes `global/pg_control` last, so a data directory that has one is complete; threads
    /// finish out of order, so it is written under a name of its own and takes its name at the very end.
    func testPgControlTakesItsNameOnlyOnceEverythingIsWritten() throws {
        let root = NSTemporaryDirectory() + "tar-control-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let bytes = try tarMadeByPython("""
            d = tarfile.TarInfo("global"); d.type = tarfile.DIRTYPE; d.mode = 0o700; t.addfile(d)
            f = tarfile.TarInfo("global/pg_control"); f.size = 8192; f.mode = 0o600; t.addfile(f, io.BytesIO(bytes(8192)))
            g = tarfile.TarInfo("PG_VERSION"); g.size = 3; t.addfile(g, io.BytesIO(b"15\\n"))
            """)
        let writer = TarExtractor(root: root, at: 0, position: nil, ownership: .init())
        try bytes.withUnsafeBytes { try writer.write($0) }
        try writer.finish()
        XCTAssertFalse(FileManager.default.fileExists(atPath: root + "/global/pg_control"), "not before every thread is done")
        try TarExtractor.finishAttributes(writer.deferred, root: root, ownership: .init())
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: root + "/global/pg_control")).count, 8192)
        XCTAssertFalse(FileManager.default.fileExists(atPath: root + "/global/pg_control.dbrecovery-partial"))
    }

    func testAStreamTheExtractionCannotWriteGetsNoIndex() throws {
        let (original, source) = try archive()
        defer { try? FileManager.default.removeItem(atPath: source) }
        var bytes = original
        // A hard link's type flag ('1') in the first header, checksum fixed up: valid tar, not ours to write.
        bytes[156] = UInt8(ascii: "1")
        let sum = (0..<512).reduce(0) { $0 + Int((148..<156).contains($1) ? 32 : bytes[$1]) }
        let field = Array(String(format: "%06o", sum).utf8) + [0, 32]
        bytes.replaceSubrange(148..<156, with: field)
        let builder = BaseBackupIndexBuilder(accessPointInterval: 1)
        bytes.withUnsafeBytes { builder.write($0) }
        XCTAssertNil(builder.finish(tarBytes: UInt64(bytes.count)))
        XCTAssertTrue(builder.failure?.contains("neither a file") ?? false, builder.failure ?? "")

        // A name that is not UTF-8 (read with U+FFFD for its bytes) would be written under another name:
        // no index, so `tar -x` extracts it, bytes kept (found by an outside attack).
        let odd = try tarMadeByPython("""
            f = tarfile.TarInfo("odd_\\udcff_latin1.conf"); f.size = 1; t.addfile(f, io.BytesIO(b"x"))
            """)
        let oddBuilder = BaseBackupIndexBuilder(accessPointInterval: 1)
        odd.withUnsafeBytes { oddBuilder.write($0) }
        XCTAssertNil(oddBuilder.finish(tarBytes: UInt64(odd.count)), "no index for a name that is not UTF-8")

        // A damaged header is refused by the parser, not written.
        var damaged = original
        damaged[10] ^= 0x55
        var walker = TarWalker()
        XCTAssertThrowsError(try damaged.withUnsafeBytes { try walker.feed($0) { _ in } })
    }
}
