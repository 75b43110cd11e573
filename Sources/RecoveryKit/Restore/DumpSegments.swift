import BackupStorage
import Foundation
import Gzip
import ProcessSignals

/// A logical backup's dump read by several readers at once, each over its own part of the dump
/// (the schema, a run of tables' rows, the post-data), from the compressed segments between the
/// table of contents' access points. Every segment is fetched, checked against its sha256 and
/// decoded exactly once, by whichever part reaches it first: the segments inside one part stream
/// straight to that part's reader (local: a positioned read; S3: ranged GETs); a segment that holds
/// bytes of more than one part is decoded into memory and each part takes its slice.
///
/// The segments together are the whole file: the table of contents was checked against the
/// manifest's sha256 when it was loaded, and each segment is checked against its own sha256 in it,
/// so once every part has been read every stored byte has been checked, as one sequential pass
/// checks the file's sha256. After a failure, `checkRest()` reads the segments no part reached, so
/// that a damaged file is still told from an error of the server (as `StoredFileStream` does).
///
/// A physical backup's extraction reads `base.tar.gz` the same way, one segment per read, from the
/// access points of its `BaseBackupIndex` (`ParallelExtraction`).
///
/// Thread-safe: the shared state is only touched under `condition`.
final class DumpSegments {
    private let manifest: BackupManifest
    private let file: BackupManifest.File
    private let store: BackupStore
    private let progress: ProgressObserver?
    private let points: [DumpTableOfContents.AccessPoint]
    private let dumpBytes: UInt64
    /// The index the points come from, what a damaged file leaves the operator to do, and the
    /// progress line's verb: a dump's (table of contents, restore) or a base backup's (index, extract).
    private let indexName: String
    private let hint: String
    private let phase: String
    /// How many parts take bytes from each segment (more than one: decoded into memory and shared).
    private let users: [Int]
    private let condition = NSCondition()
    /// Segments a reader has started on (each is read once).
    private var claimed = IndexSet()
    /// Segments read in full and found to match their sha256.
    private var verified = IndexSet()
    /// Shared segments decoded and not yet taken in full by their parts, and the bytes taken so far.
    private var decoded: [Int: [UInt8]] = [:]
    private var taken: [Int: Int] = [:]
    /// Set once a reader failed or the run is stopped: the others stop at the end of their segment.
    private var stopped = false
    private var bytesRead: UInt64 = 0

    /// Why the run stopped early: a reader sees it when another part failed.
    struct Stopped: Error {}

    /// Whether `file` can be read this way: unencrypted (AES-GCM frames are sealed over the whole
    /// compressed stream), with access points that cover it from its first byte.
    static func usable(_ file: BackupManifest.File, toc: DumpTableOfContents) -> Bool {
        usable(file, points: toc.accessPoints, uncompressedBytes: toc.dumpBytes, compressedBytes: toc.compressedBytes)
    }

    /// Whether access points recorded for a file of `uncompressedBytes` (`compressedBytes` stored)
    /// describe `file` (unencrypted) and cover it from its first byte, in order.
    static func usable(_ file: BackupManifest.File, points: [DumpTableOfContents.AccessPoint], uncompressedBytes: UInt64, compressedBytes: UInt64) -> Bool {
        guard file.encryptionKeyFingerprint == nil, compressedBytes == file.storedBytes, let first = points.first,
              first.compressedOffset == 0, first.uncompressedOffset == 0, file.rawBytes == uncompressedBytes else { return false }
        return zip(points, points.dropFirst()).allSatisfy { $0.compressedOffset < $1.compressedOffset && $0.uncompressedOffset < $1.uncompressedOffset }
            && (points.last?.compressedOffset ?? 0) < file.storedBytes && (points.last?.uncompressedOffset ?? 0) < uncompressedBytes
    }

    /// - Parameter boundaries: where the parts that will be read start in the dump (besides 0).
    convenience init(_ file: BackupManifest.File, of manifest: BackupManifest, toc: DumpTableOfContents, store: BackupStore,
                     boundaries: [UInt64], progress: ProgressObserver?) {
        self.init(file, of: manifest, points: toc.accessPoints, uncompressedBytes: toc.dumpBytes, indexName: DumpTableOfContents.fileName,
                  hint: "nothing was applied from it; dbrestore --emergency picks the newest backup that verifies", phase: "restore",
                  store: store, boundaries: boundaries, progress: progress)
    }

    /// - Parameters:
    ///   - points: access points from an index `indexName` (checked against the manifest), the first at 0.
    ///   - boundaries: where the parts that will be read start (besides 0).
    init(_ file: BackupManifest.File, of manifest: BackupManifest, points: [DumpTableOfContents.AccessPoint], uncompressedBytes: UInt64,
         indexName: String, hint: String, phase: String, store: BackupStore, boundaries: [UInt64], progress: ProgressObserver?) {
        self.manifest = manifest
        self.file = file
        self.store = store
        self.progress = progress
        self.points = points
        dumpBytes = uncompressedBytes
        self.indexName = indexName
        self.hint = hint
        self.phase = phase
        var users = [Int](repeating: 1, count: points.count)
        for boundary in boundaries {
            let index = Self.segment(containing: boundary, in: points)
            if points[index].uncompressedOffset < boundary { users[index] += 1 }
        }
        self.users = users
    }

    /// How many segments the file has; segment `index` holds the uncompressed bytes `range(of: index)`.
    var count: Int { points.count }

    func range(of index: Int) -> Range<UInt64> { points[index].uncompressedOffset..<uncompressedEnd(index) }

    /// Hands `sink` the dump's bytes in `range` (which starts and ends at part boundaries), in order.
    ///
    /// - Throws: `RecoveryError(.backupCorrupt)` for a damaged segment; `Stopped` when another part
    ///   failed; whatever `sink` or the store throws.
    func read(_ range: Range<UInt64>, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard !range.isEmpty else { return }
        let last = Self.segment(containing: range.upperBound - 1, in: points)
        var index = Self.segment(containing: range.lowerBound, in: points)
        while index <= last {
            if users[index] > 1 {
                let bytes = try shared(index)
                let start = points[index].uncompressedOffset
                let from = Int(max(range.lowerBound, start) - start), to = Int(min(range.upperBound, uncompressedEnd(index)) - start)
                try bytes[from..<to].withUnsafeBytes { try sink($0) }
                condition.withLock {
                    taken[index, default: 0] += to - from
                    if taken[index] == bytes.count { decoded[index] = nil }
                }
                index += 1
            } else {
                var end = index
                while end < last && users[end + 1] == 1 { end += 1 }
                try stream(index...end, into: sink)
                index = end + 1
            }
        }
    }

    /// Refuses a stored file whose size is not the manifest's (a stat, an S3 HEAD) before any part is
    /// read: ranged reads past a truncated file's end would fail as storage errors, not as damage.
    ///
    /// - Throws: `RecoveryError(.backupCorrupt)`.
    func checkSize() throws {
        let size: UInt64
        do {
            size = try store.objectInfo(manifest.key(of: file)).size
        } catch let error as StorageError where error.kind == .notFound {
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id): \(file.name), named in its manifest, is missing", hint: hint)
        }
        guard size == file.storedBytes else {
            VerificationRecord.forget(manifest, in: store)
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id): \(file.name) does not match its sha256 (file damaged: \(size) bytes stored, its manifest says \(file.storedBytes))",
                                hint: hint)
        }
    }

    /// Stops the other readers at the end of the segment they are in.
    func stop() { condition.withLock { stopped = true; condition.broadcast() } }

    /// Whether every segment of the file has been read and matched its sha256.
    var allVerified: Bool { condition.withLock { verified.count == points.count } }

    /// After a failure: reads and checks the segments no reader reached, so that a damaged file is
    /// reported as damaged (the next copy or candidate is tried) rather than as the error it caused.
    ///
    /// - Throws: `RecoveryError(.backupCorrupt)` if a segment does not match its sha256.
    func checkRest() throws {
        let unread = condition.withLock { IndexSet(integersIn: 0..<points.count).subtracting(claimed) }
        for run in unread.rangeView {
            try pass(run.lowerBound...(run.upperBound - 1), decoder: nil, stopsEarly: false)
        }
    }

    // MARK: - Reading

    /// Decodes a shared segment once (waiting while another part decodes it) and keeps it until
    /// all its parts took their slices.
    private func shared(_ index: Int) throws -> [UInt8] {
        condition.lock()
        while true {
            if let bytes = decoded[index] {
                condition.unlock()
                return bytes
            }
            if stopped {
                condition.unlock()
                throw Stopped()
            }
            if !claimed.contains(index) {
                // Claimed before the lock is let go: a part that comes next waits for these bytes
                // instead of reading the segment a second time (the claim in `pass` comes only after
                // the ranged read has begun, a round trip later on S3).
                claimed.insert(index)
                break
            }
            condition.wait()
        }
        condition.unlock()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(uncompressedEnd(index) - points[index].uncompressedOffset))
        do {
            try pass(index...index, decoder: try decoder(at: index) { bytes.append(contentsOf: $0) }, stopsEarly: false)
        } catch {
            stop()
            throw error
        }
        condition.withLock {
            decoded[index] = bytes
            condition.broadcast()
        }
        return bytes
    }

    /// Streams a run of segments that belong to one part into `sink`.
    private func stream(_ run: ClosedRange<Int>, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        try withoutActuallyEscaping(sink) { sink in
            try pass(run, decoder: try decoder(at: run.lowerBound, sink: sink), stopsEarly: true)
        }
    }

    private func decoder(at index: Int, sink: @escaping (UnsafeRawBufferPointer) throws -> Void) throws -> GzipDecompressor {
        index == 0 ? try GzipDecompressor(sink: sink)
            : try GzipDecompressor(resumingAt: GzipAccessPoint(compressedOffset: points[index].compressedOffset,
                                                               uncompressedOffset: points[index].uncompressedOffset), sink: sink)
    }

    /// Reads a run of segments with one read, checking each against its sha256, decoding into
    /// `decoder` if given. When decoding fails (damaged data, or the sink's error) the segment is
    /// still read to its end and checked: a sha256 that differs is the error reported.
    ///
    /// - Parameter stopsEarly: stop after the current segment once another reader failed.
    private func pass(_ run: ClosedRange<Int>, decoder: GzipDecompressor?, stopsEarly: Bool) throws {
        let reader: ObjectReader
        do {
            reader = try store.makeReader(manifest.key(of: file), range: points[run.lowerBound].compressedOffset..<compressedEnd(run.upperBound))
        } catch let error as StorageError where error.kind == .notFound {
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id): \(file.name), named in its manifest, is missing", hint: hint)
        }
        defer { reader.close() }
        var cursor = SegmentCursor(at: run.lowerBound, points: points, end: compressedEnd)
        var failure: Error?
        var decoded: UInt64 = 0
        func begin(_ index: Int) throws {
            try condition.withLock {
                if stopsEarly && stopped { throw Stopped() }
                claimed.insert(index)
            }
        }
        try begin(run.lowerBound)
        do {
            try ObjectStreaming.forEachChunk(of: reader) { chunk in
                try cursor.feed(chunk, piece: { piece in
                    if failure == nil, let decoder {
                        do { try decoder.write(piece) } catch {
                            if Interruption.isRequested { throw error }
                            failure = error
                        }
                    }
                }, ended: { index, matches, end in
                    guard matches else { throw damaged(index, to: end) }
                    condition.withLock { _ = verified.insert(index) }
                    if let failure { throw failure }
                    if index == run.upperBound { return false }
                    try begin(index + 1)
                    return true
                })
                condition.withLock {
                    bytesRead += UInt64(chunk.count)
                    progress?.progress(phase: "\(phase) \(manifest.id) \(file.name)", bytes: bytesRead, total: file.storedBytes, estimated: false)
                }
            }
            if let decoder, run.lowerBound == 0, run.upperBound == points.count - 1 { try decoder.finish() }
            decoded = decoder?.bytesOut ?? 0
        } catch let error as GzipError {
            VerificationRecord.forget(manifest, in: store)
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id) is damaged: \(file.name): \(error)", hint: hint)
        }
        guard cursor.offset == compressedEnd(run.upperBound) else {
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id): \(file.name) ends at byte \(cursor.offset), before its size in the manifest", hint: hint)
        }
        if decoder != nil, decoded != uncompressedEnd(run.upperBound) - points[run.lowerBound].uncompressedOffset {
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id): \(file.name) does not match its \(indexName) (segments \(run.lowerBound)-\(run.upperBound) decode to \(decoded) bytes)", hint: hint)
        }
    }

    private func damaged(_ index: Int, to end: UInt64) -> Error {
        // The record dbprune trusts in place of a full read must not outlive this finding.
        VerificationRecord.forget(manifest, in: store)
        return RecoveryError(.backupCorrupt, "backup \(manifest.id): \(file.name) does not match its sha256 (file damaged: bytes \(points[index].compressedOffset)-\(end) "
                             + "differ from their sha256 in \(indexName))", hint: hint)
    }

    private func compressedEnd(_ index: Int) -> UInt64 { index + 1 < points.count ? points[index + 1].compressedOffset : file.storedBytes }
    private func uncompressedEnd(_ index: Int) -> UInt64 { index + 1 < points.count ? points[index + 1].uncompressedOffset : dumpBytes }

    /// The last access point at or before `offset` (points are sorted; the first is at 0).
    static func segment(containing offset: UInt64, in points: [DumpTableOfContents.AccessPoint]) -> Int {
        var low = 0, high = points.count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if points[middle].uncompressedOffset <= offset { low = middle } else { high = middle - 1 }
        }
        return low
    }
}

/// Where one ranged read of consecutive segments stands: the segment its next byte belongs to, and
/// that segment's sha256 so far. Cuts each chunk read at the segments' ends, so that every segment is
/// checked against its own sha256 (`DumpSegments`, and `DumpRangeReader` for selective restores).
struct SegmentCursor {
    private(set) var current: Int
    private(set) var offset: UInt64
    private var digest = StreamingDigest()
    private let points: [DumpTableOfContents.AccessPoint]
    private let end: (Int) -> UInt64

    /// - Parameter end: where a segment ends in the compressed file.
    init(at first: Int, points: [DumpTableOfContents.AccessPoint], end: @escaping (Int) -> UInt64) {
        current = first
        offset = points[first].compressedOffset
        self.points = points
        self.end = end
    }

    /// Feeds one chunk of the read: `piece` gets each part of it that lies in one segment; at a
    /// segment's end `ended` gets its index, whether it matched its sha256, and where it ends, and
    /// says whether the read goes on (false: the rest of the chunk is left).
    mutating func feed(_ chunk: UnsafeRawBufferPointer, piece: (UnsafeRawBufferPointer) throws -> Void,
                       ended: (Int, Bool, UInt64) throws -> Bool) throws {
        var start = 0
        while start < chunk.count {
            let take = Int(min(UInt64(chunk.count - start), end(current) - offset))
            let part = UnsafeRawBufferPointer(rebasing: chunk[start..<(start + take)])
            digest.update(part)
            try piece(part)
            offset += UInt64(take)
            start += take
            if offset == end(current) {
                let matches = digest.hexDigest() == points[current].segmentSha256
                digest = StreamingDigest()
                guard try ended(current, matches, offset) else { return }
                current += 1
            }
        }
    }
}
