internal import CZlib

/// Streams bytes through zlib's deflate into one gzip stream that stock `gzip -d` reads, on one
/// core or several.
///
/// Push-based: call `write(_:)` with each chunk of input and `finish()` once; compressed bytes are
/// handed to `sink` in order as soon as they are ready, so memory stays bounded (with `jobs` > 1:
/// about 2 × jobs blocks of `blockSize`).
public final class GzipCompressor {
    /// The level backups use unless told otherwise: 5. On pg_dump text and base backups it comes
    /// within 0.5 % of level 6's size (smaller on some dumps) for about 25 % less CPU, and the
    /// compressor, not pg_dump, sets the pace of a backup. `--compression-level 6` gives gzip -6.
    public static let defaultLevel = 5

    /// How the gzip file is laid out. Both are standard gzip: `gzip -d`, `tar -xz`, Python's
    /// `gzip` and `GzipDecompressor` read every file of either.
    public enum Layout: Sendable {
        /// One member (zlib; pigz's layout with several jobs): the smallest output.
        case singleMember
        /// One member per input block, each compressed whole by libdeflate: about 2.4× less CPU
        /// than zlib at level 6 for about 1 % more bytes at 1 MiB blocks, and every member decodes
        /// on its own. Level 0 (store) is always `singleMember`.
        case memberPerBlock
    }

    /// The layout a compressor at `level` writes when asked for `layout`: level 0 (store) is always
    /// one member (what an index of the file records must say so).
    public static func effectiveLayout(_ layout: Layout, level: Int) -> Layout {
        level == 0 ? .singleMember : layout
    }

    /// Total bytes given to `write(_:)`.
    public private(set) var bytesIn: UInt64 = 0
    /// Total compressed bytes handed to the sink.
    public var bytesOut: UInt64 { parallel?.bytesOut ?? serialBytesOut }

    private var serialBytesOut: UInt64 = 0
    private let zstream: ZStream?
    private let parallel: ParallelDeflate?
    private let sink: (UnsafeRawBufferPointer) throws -> Void
    private var output: UnsafeMutableRawBufferPointer
    private var finished = false
    /// Serial engine: uncompressed distance between access points (0: none), and where the next one falls.
    private let accessPointInterval: UInt64
    private var nextAccessPoint: UInt64
    private let onAccessPoint: ((GzipAccessPoint) -> Void)?

    /// Creates a compressor.
    ///
    /// - Parameters:
    ///   - level: zlib level, 0 (store) to 9 (smallest); 6 matches `gzip -6`.
    ///   - jobs: cores to compress on; 1 compresses on the calling thread.
    ///   - blockSize: with `jobs` > 1, the input block each core compresses at a time.
    ///   - outputChunkSize: size of the buffer handed to `sink` (one core, single member).
    ///   - layout: one member, or one per block (with any `jobs`; see `Layout`).
    ///   - accessPointInterval: if not 0, about every this many input bytes the stream gets a point
    ///     where decompression can start without what came before (see `GzipAccessPoint`); the
    ///     output stays one ordinary gzip member (a member's start, one member per block).
    ///   - onAccessPoint: told of each access point just before its first compressed byte reaches `sink`.
    ///   - sink: receives compressed bytes; valid only during the call.
    /// - Throws: `GzipError` if zlib cannot be initialised or the level is out of range.
    public init(level: Int = GzipCompressor.defaultLevel, jobs: Int = 1, blockSize: Int = 1 << 20, outputChunkSize: Int = 256 * 1024,
                layout: Layout = .singleMember, accessPointInterval: UInt64 = 0, onAccessPoint: ((GzipAccessPoint) -> Void)? = nil,
                sink: @escaping (UnsafeRawBufferPointer) throws -> Void) throws {
        guard (0...9).contains(level) else {
            throw GzipError(kind: .compression, operation: "deflateInit2", message: "compression level \(level) is outside 0...9")
        }
        self.accessPointInterval = accessPointInterval
        nextAccessPoint = accessPointInterval
        self.onAccessPoint = onAccessPoint
        let layout = Self.effectiveLayout(layout, level: level)
        if jobs > 1 || layout == .memberPerBlock {
            zstream = nil
            parallel = ParallelDeflate(level: level, jobs: max(1, jobs), blockSize: max(blockSize, 64 * 1024), layout: layout,
                                       accessPointInterval: accessPointInterval, onAccessPoint: onAccessPoint, sink: sink)
        } else {
            zstream = try ZStream(deflateLevel: Int32(level))
            parallel = nil
        }
        self.sink = sink
        output = .allocate(byteCount: max(4096, outputChunkSize), alignment: 16)
    }

    deinit { output.deallocate() }

    /// Compresses one chunk of input.
    ///
    /// - Throws: `GzipError`, or whatever `sink` throws.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        precondition(!finished, "write after finish")
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        if let parallel {
            bytesIn += UInt64(bytes.count)
            return try parallel.write(bytes)
        }
        guard let stream = zstream?.stream else { return }
        var offset = 0
        while offset < bytes.count {
            // A full flush where an access point falls: byte-aligned, and nothing after it refers
            // back before it, so decompression can start there with an empty window.
            if accessPointInterval > 0 && bytesIn >= nextAccessPoint {
                stream.pointee.next_in = nil
                stream.pointee.avail_in = 0
                repeat { try deflateStep(flush: Z_FULL_FLUSH) } while stream.pointee.avail_out == 0
                onAccessPoint?(GzipAccessPoint(compressedOffset: serialBytesOut, uncompressedOffset: bytesIn))
                nextAccessPoint = bytesIn + accessPointInterval
            }
            var take = bytes.count - offset
            if accessPointInterval > 0 { take = min(take, Int(nextAccessPoint - bytesIn)) }
            stream.pointee.next_in = UnsafeMutablePointer(mutating: (base + offset).assumingMemoryBound(to: Bytef.self))
            stream.pointee.avail_in = uInt(take)
            while stream.pointee.avail_in > 0 {
                try deflateStep(flush: Z_NO_FLUSH)
            }
            offset += take
            bytesIn += UInt64(take)
        }
    }

    /// Convenience for `[UInt8]` input.
    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// Flushes the last compressed bytes and the gzip trailer (CRC-32 and length).
    ///
    /// - Throws: `GzipError`, or whatever `sink` throws.
    public func finish() throws {
        guard !finished else { return }
        finished = true
        if let parallel { return try parallel.finish() }
        guard let zstream else { return }
        zstream.stream.pointee.next_in = nil
        zstream.stream.pointee.avail_in = 0
        while try deflateStep(flush: Z_FINISH) != Z_STREAM_END {}
    }

    @discardableResult
    private func deflateStep(flush: Int32) throws -> Int32 {
        guard let zstream else { return Z_STREAM_END }
        let stream = zstream.stream
        stream.pointee.next_out = output.baseAddress?.assumingMemoryBound(to: Bytef.self)
        stream.pointee.avail_out = uInt(output.count)
        let code = try zstream.check(deflate(stream, flush), "deflate")
        let produced = output.count - Int(stream.pointee.avail_out)
        if produced > 0 {
            serialBytesOut += UInt64(produced)
            try sink(UnsafeRawBufferPointer(rebasing: output[0..<produced]))
        }
        return code
    }
}

/// A place inside one gzip member where decompression can start, as in zlib's `zran.c`: the
/// compressed offset (from the start of the file), the uncompressed offset of the first byte
/// decoded from there. Every access point this compressor makes is byte-aligned (bit offset 0)
/// and nothing after it refers back before it, so the 32 KiB window zran keeps is empty here:
/// `GzipDecompressor(resumingAt:)` needs nothing else. In the member-per-block layout an access
/// point is the first byte of a member (its gzip header).
public struct GzipAccessPoint: Equatable, Sendable, Codable {
    public var compressedOffset: UInt64
    public var uncompressedOffset: UInt64

    public init(compressedOffset: UInt64, uncompressedOffset: UInt64) {
        self.compressedOffset = compressedOffset
        self.uncompressedOffset = uncompressedOffset
    }
}
