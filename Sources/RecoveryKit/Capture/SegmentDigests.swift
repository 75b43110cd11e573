import Gzip

/// The access points the compressor reports while a file is written, each with the sha256 of the
/// compressed bytes from it to the next one: what lets a reader start at any point and check every
/// segment it reads, as a whole read checks the file's sha256. Shared by the dump's table of
/// contents (`DumpContentsBuilder`) and the base backup index (`BaseBackupIndexBuilder`).
final class SegmentDigests {
    /// Uncompressed distance between the access points the compressor is asked for.
    let interval: UInt64
    private(set) var points: [DumpTableOfContents.AccessPoint] = []
    /// Compressed (not encrypted) bytes seen so far.
    private(set) var compressedBytes: UInt64 = 0
    private var pendingPoint = GzipAccessPoint(compressedOffset: 0, uncompressedOffset: 0)
    private var segment = StreamingDigest()
    private var closed = false
    /// Told of each access point as it is reported (the base backup index places it in the tar stream).
    var onAccessPoint: ((GzipAccessPoint) -> Void)?

    init(interval: UInt64) {
        self.interval = interval
    }

    /// The next compressed bytes (as the compressor hands them out, before any encryption).
    func compressed(_ chunk: UnsafeRawBufferPointer) {
        compressedBytes += UInt64(chunk.count)
        segment.update(chunk)
    }

    /// An access point, reported by the compressor before its first compressed byte.
    func accessPoint(_ point: GzipAccessPoint) {
        closeSegment()
        pendingPoint = point
        onAccessPoint?(point)
    }

    /// Every access point with its segment's sha256, the last segment closed at the end of the file.
    func finish() -> [DumpTableOfContents.AccessPoint] {
        if !closed {
            closeSegment()
            closed = true
        }
        return points
    }

    private func closeSegment() {
        points.append(.init(compressedOffset: pendingPoint.compressedOffset, uncompressedOffset: pendingPoint.uncompressedOffset,
                            segmentSha256: segment.hexDigest()))
        segment = StreamingDigest()
    }
}
