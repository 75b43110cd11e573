import Gzip

/// Builds a base backup's index (`BaseBackupIndex`) while pg_basebackup's tar stream is compressed:
/// the compressor's access points with each segment's sha256 (`SegmentDigests`), and where the tar
/// stream stands at each point (the member it falls in), so that an extraction can start at any
/// point without what came before.
///
/// A stream with anything the parallel extraction does not write as `tar -x` would (a member that
/// is not a file, directory or symlink, a name with `..`, a member after the end-of-archive block)
/// leaves the builder `failed`: the backup is stored without an index and extracted by `tar -x`.
/// Memory: the members between the compressor's input and its output (a few MiB of stream).
final class BaseBackupIndexBuilder {
    let segments: SegmentDigests
    private var walker = TarWalker()
    /// The stream's records (a member's header, data and padding, or an end-of-archive block), in
    /// order and contiguous; those before the last access point are dropped.
    private var records: [(start: UInt64, end: UInt64, member: TarMember?)] = []
    /// Access points not yet placed in a record (the compressor may report one before its header is parsed).
    private var pending: [UInt64] = []
    /// One per access point; the first point, the stream's start, is where the first header starts.
    private var positions: [TarPosition?] = [nil]
    private var ended = false
    /// Why no index can be written, once something did not fit.
    private(set) var failure: String?
    private let layout: GzipCompressor.Layout

    init(accessPointInterval: UInt64, layout: GzipCompressor.Layout = .memberPerBlock) {
        self.layout = layout
        segments = SegmentDigests(interval: accessPointInterval)
        segments.onAccessPoint = { [unowned self] point in
            self.pending.append(point.uncompressedOffset)
            self.place()
        }
    }

    /// The next bytes of the uncompressed tar stream.
    func write(_ chunk: UnsafeRawBufferPointer) {
        guard failure == nil else { return }
        do {
            try walker.feed(chunk) { event in
                switch event {
                case .member(let member, let offset):
                    if ended { throw TarFormatError(message: "a member (\(member.name)) after the end-of-archive block") }
                    guard member.kind != .other else { throw TarFormatError(message: "\(member.name) is neither a file, a directory nor a symlink") }
                    guard member.hasSafePath else { throw TarFormatError(message: "member name \(member.name) leaves the data directory") }
                    records.append((offset, offset + member.recordBytes, member))
                case .endBlock(let offset):
                    ended = true
                    records.append((offset, offset + TarMember.blockSize, nil))
                case .data:
                    break
                }
            }
            place()
        } catch {
            failure = "\(error)"
        }
    }

    /// The index, or nil (with `failure` set) when the stream does not allow one.
    ///
    /// - Parameter tarBytes: the uncompressed stream's size.
    func finish(tarBytes: UInt64) -> BaseBackupIndex? {
        let points = segments.finish()
        place()
        if failure == nil && walker.insideMember { failure = "the tar stream ends inside a member" }
        if failure == nil && positions.count != points.count { failure = "\(points.count - positions.count) access points fall outside the tar stream" }
        guard failure == nil else { return nil }
        return BaseBackupIndex(formatVersion: BaseBackupIndex.formatVersion(for: layout), tarBytes: tarBytes, compressedBytes: segments.compressedBytes,
                               accessPoints: points, positions: positions)
    }

    /// Places the pending access points whose record is known; drops the records before them.
    private func place() {
        while let point = pending.first, let index = records.firstIndex(where: { $0.start <= point && point < $0.end }) {
            pending.removeFirst()
            let record = records[index]
            positions.append(record.start == point ? nil : TarPosition(headerOffset: record.start, member: record.member))
            // Later points lie further on: the records before this one are not needed again.
            records.removeFirst(index)
        }
    }
}
