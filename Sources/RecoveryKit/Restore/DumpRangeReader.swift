import BackupStorage
import Foundation
import Gzip

/// Reads parts of a logical backup's dump — the preamble and the objects a selective restore
/// needs — decompressing as little as the table of contents allows.
///
/// - With access points and an unencrypted file: only the compressed segments (access point to
///   access point) that hold a wanted byte are fetched (ranged reads: a local seek, S3 ranged GETs)
///   and decoded from the segment's access point; each segment is checked against its sha256 in
///   the table of contents, as a whole read checks the file's sha256.
/// - Otherwise (an encrypted file: AES-GCM frames are sealed over the whole compressed stream and
///   the table of contents' offsets are into the compressed bytes before sealing; a backup without a
///   table of contents): the whole file is read and checked as a full restore reads it, and only
///   the wanted bytes are handed on.
enum DumpRangeReader {
    /// Hands `sink` the bytes of the dump within `ranges` (sorted, not overlapping), in order,
    /// each call with the dump offset of its first byte.
    ///
    /// - Important: as with a full read, a damaged segment is found only once it has been read:
    ///   callers must not make what they wrote permanent before this returns.
    /// - Throws: `RecoveryError(.backupCorrupt)` for a damaged segment or file; the store's errors.
    static func read(_ ranges: [Range<UInt64>], of manifest: BackupManifest, toc: DumpTableOfContents?, from store: BackupStore,
                     key: RepositoryKey?, progress: ProgressObserver?,
                     into sink: (UInt64, UnsafeRawBufferPointer) throws -> Void) throws -> DumpReadStatistics {
        guard let file = manifest.files.first(where: { $0.name == LogicalCapture.dumpFileName }) else {
            throw RecoveryError(.usage, "backup \(manifest.id) has no \(LogicalCapture.dumpFileName)", hint: "pick a logical backup (dbrestore list shows the kind)")
        }
        let wanted = ranges.filter { !$0.isEmpty }
        // The decompressors keep their sink; none outlives this call.
        return try withoutActuallyEscaping(sink) { sink in
            if let toc, toc.accessPoints.count > 0, file.encryptionKeyFingerprint == nil, toc.compressedBytes == file.storedBytes {
                return try ranged(wanted, file: file, manifest: manifest, toc: toc, store: store, progress: progress, into: sink)
            }
            let why = file.encryptionKeyFingerprint != nil ? "encrypted backup"
                : toc == nil || toc?.accessPoints.isEmpty == true ? "no table of contents" : "table of contents does not match the file's size"
            var statistics = DumpReadStatistics(method: "sequential (\(why))", compressedBytesRead: file.storedBytes, bytesDecompressed: 0, bytesDelivered: 0)
            var position: UInt64 = 0
            var next = 0
            try StoredFileStream.decompress(file, of: manifest, from: store, key: key, phase: "read", progress: progress) { chunk in
                let start = position
                position += UInt64(chunk.count)
                statistics.bytesDecompressed = position
                statistics.bytesDelivered += try deliver(chunk, at: start, ranges: wanted, from: &next, to: sink)
            }
            return statistics
        }
    }

    /// Reads the segments that hold the ranges, each run of adjacent segments with one ranged read.
    private static func ranged(_ ranges: [Range<UInt64>], file: BackupManifest.File, manifest: BackupManifest, toc: DumpTableOfContents,
                               store: BackupStore, progress: ProgressObserver?, into sink: @escaping (UInt64, UnsafeRawBufferPointer) throws -> Void) throws -> DumpReadStatistics {
        let points = toc.accessPoints
        func segment(containing offset: UInt64) -> Int { DumpSegments.segment(containing: offset, in: points) }
        func compressedEnd(_ index: Int) -> UInt64 { index + 1 < points.count ? points[index + 1].compressedOffset : file.storedBytes }
        func uncompressedEnd(_ index: Int) -> UInt64 { index + 1 < points.count ? points[index + 1].uncompressedOffset : toc.dumpBytes }

        var needed = IndexSet()
        for range in ranges { needed.insert(integersIn: segment(containing: range.lowerBound)...segment(containing: range.upperBound - 1)) }
        var statistics = DumpReadStatistics(method: "ranged", compressedBytesRead: 0, bytesDecompressed: 0, bytesDelivered: 0)
        let hint = "nothing was committed from it; restore from another backup (dbrestore list)"
        var next = 0
        for run in needed.rangeView {
            let first = run.lowerBound, last = run.upperBound - 1
            var position = points[first].uncompressedOffset
            var delivered: UInt64 = 0
            let output = { (chunk: UnsafeRawBufferPointer) throws in
                let start = position
                position += UInt64(chunk.count)
                delivered += try deliver(chunk, at: start, ranges: ranges, from: &next, to: sink)
            }
            let decoder = first == 0 ? try GzipDecompressor(sink: output)
                : try GzipDecompressor(resumingAt: GzipAccessPoint(compressedOffset: points[first].compressedOffset,
                                                                   uncompressedOffset: points[first].uncompressedOffset), sink: output)
            let reader = try store.makeReader(manifest.key(of: file), range: points[first].compressedOffset..<compressedEnd(last))
            defer {
                reader.close()
                progress?.finished()
            }
            var cursor = SegmentCursor(at: first, points: points, end: compressedEnd)
            do {
                try ObjectStreaming.forEachChunk(of: reader) { chunk in
                    try cursor.feed(chunk, piece: { try decoder.write($0) }, ended: { index, matches, end in
                        guard matches else {
                            throw RecoveryError(.backupCorrupt, "backup \(manifest.id) is damaged: \(file.name) bytes \(points[index].compressedOffset)-\(end) do not match their sha256 in \(DumpTableOfContents.fileName)", hint: hint)
                        }
                        return true
                    })
                    progress?.progress(phase: "read", bytes: statistics.compressedBytesRead + (cursor.offset - points[first].compressedOffset))
                }
                if last == points.count - 1, first == 0 { try decoder.finish() }
            } catch let error as GzipError {
                throw RecoveryError(.backupCorrupt, "backup \(manifest.id) is damaged: \(file.name): \(error)", hint: hint)
            }
            guard cursor.offset == compressedEnd(last), position == uncompressedEnd(last) else {
                throw RecoveryError(.backupCorrupt, "backup \(manifest.id): \(file.name) does not match its \(DumpTableOfContents.fileName) (segment \(first)-\(last) decodes to \(position - points[first].uncompressedOffset) bytes)", hint: hint)
            }
            statistics.compressedBytesRead += compressedEnd(last) - points[first].compressedOffset
            statistics.bytesDecompressed += position - points[first].uncompressedOffset
            statistics.bytesDelivered += delivered
        }
        return statistics
    }

    /// Hands on the parts of `chunk` (at dump offset `start`) that fall in `ranges`, from range `next` on.
    /// - Returns: bytes handed on.
    private static func deliver(_ chunk: UnsafeRawBufferPointer, at start: UInt64, ranges: [Range<UInt64>], from next: inout Int,
                                to sink: (UInt64, UnsafeRawBufferPointer) throws -> Void) throws -> UInt64 {
        let end = start + UInt64(chunk.count)
        var handed: UInt64 = 0
        while next < ranges.count, ranges[next].upperBound <= start { next += 1 }
        var index = next
        while index < ranges.count, ranges[index].lowerBound < end {
            let from = max(start, ranges[index].lowerBound), to = min(end, ranges[index].upperBound)
            if from < to {
                try sink(from, UnsafeRawBufferPointer(rebasing: chunk[Int(from - start)..<Int(to - start)]))
                handed += to - from
            }
            if ranges[index].upperBound > end { break }
            index += 1
        }
        next = index
        return handed
    }
}

/// How a selective read of a dump went, for the report and the bench.
public struct DumpReadStatistics: Codable, Sendable {
    /// `ranged` or `sequential (why)`.
    public var method: String
    public var compressedBytesRead: UInt64
    public var bytesDecompressed: UInt64
    public var bytesDelivered: UInt64
}
