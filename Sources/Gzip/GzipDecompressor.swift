internal import CZlib

/// Streams gzip input back to the original bytes, accepting multi-member files (as `gzip -d` does).
///
/// Push-based: feed compressed chunks to `write(_:)`; decompressed bytes go to `sink`.
/// `finish()` fails if the input stopped before a member's trailer, so a truncated file is
/// never mistaken for a short one.
public final class GzipDecompressor {
    /// Compressed bytes consumed.
    public private(set) var bytesIn: UInt64 = 0
    /// Decompressed bytes handed to the sink.
    public private(set) var bytesOut: UInt64 = 0
    /// Number of complete gzip members seen.
    public private(set) var membersCompleted = 0

    private let zstream: ZStream
    private let sink: (UnsafeRawBufferPointer) throws -> Void
    private var output: UnsafeMutableRawBufferPointer
    /// True between the end of one member and the first byte of the next.
    private var atMemberBoundary = true

    /// True when decoding raw deflate from an access point: the member's end is the end.
    private var fromAccessPoint: Bool
    /// From an access point, until the first byte tells whether it is raw deflate or a member's start.
    private var layoutUnknown = false
    /// Raw mode: the deflate stream ended (what follows is the gzip trailer, not checked here).
    public private(set) var reachedEnd = false

    /// Creates a decompressor that starts at an access point the compressor reported: feed it the
    /// stored bytes from `point.compressedOffset` on. The point is either inside the one member
    /// (`GzipCompressor.Layout.singleMember`: raw deflate from there) or a member's first byte
    /// (`.memberPerBlock`: members from there, as from the start of a file); the first byte tells
    /// which, as 0x1f, a gzip header's first byte, cannot start raw deflate (it would be a final
    /// block of the reserved type 3).
    ///
    /// - Important: inside a member its CRC-32 and length cannot be checked; callers check the
    ///   compressed bytes they read against digests of their own.
    /// - Throws: `GzipError` if zlib cannot be initialised.
    public init(resumingAt point: GzipAccessPoint, outputChunkSize: Int = 256 * 1024, sink: @escaping (UnsafeRawBufferPointer) throws -> Void) throws {
        zstream = try ZStream(rawInflate: ())
        fromAccessPoint = true
        layoutUnknown = true
        atMemberBoundary = false
        self.sink = sink
        output = .allocate(byteCount: max(4096, outputChunkSize), alignment: 16)
    }

    /// Creates a decompressor.
    ///
    /// - Parameters:
    ///   - outputChunkSize: size of the buffer handed to `sink`.
    ///   - sink: receives decompressed bytes; valid only during the call.
    /// - Throws: `GzipError` if zlib cannot be initialised.
    public init(outputChunkSize: Int = 256 * 1024, sink: @escaping (UnsafeRawBufferPointer) throws -> Void) throws {
        zstream = try ZStream(inflate: ())
        fromAccessPoint = false
        self.sink = sink
        output = .allocate(byteCount: max(4096, outputChunkSize), alignment: 16)
    }

    deinit { output.deallocate() }

    /// Decompresses one chunk of gzip input.
    ///
    /// - Throws: `GzipError.corrupt` on damaged data, or whatever `sink` throws.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        bytesIn += UInt64(bytes.count)
        let stream = zstream.stream
        if layoutUnknown {
            layoutUnknown = false
            if bytes[0] == 0x1f {
                // A member starts here: read gzip members (15 window bits + 16) from here on.
                fromAccessPoint = false
                try zstream.check(inflateReset2(stream, 15 + 16), "inflateReset2")
            }
        }
        stream.pointee.next_in = UnsafeMutablePointer(mutating: base.assumingMemoryBound(to: Bytef.self))
        stream.pointee.avail_in = uInt(bytes.count)
        while stream.pointee.avail_in > 0 && !reachedEnd {
            if atMemberBoundary { atMemberBoundary = false }
            stream.pointee.next_out = output.baseAddress?.assumingMemoryBound(to: Bytef.self)
            stream.pointee.avail_out = uInt(output.count)
            let code = try zstream.check(inflate(stream, Z_NO_FLUSH), "inflate")
            let produced = output.count - Int(stream.pointee.avail_out)
            if produced > 0 {
                bytesOut += UInt64(produced)
                try sink(UnsafeRawBufferPointer(rebasing: output[0..<produced]))
            }
            if code == Z_STREAM_END && fromAccessPoint {
                reachedEnd = true
            } else if code == Z_STREAM_END {
                membersCompleted += 1
                atMemberBoundary = true
                // Another member may follow; inflateReset keeps the allocation and starts over.
                try zstream.check(inflateReset(stream), "inflateReset")
            } else if code == Z_BUF_ERROR && produced == 0 && stream.pointee.avail_in > 0 {
                throw GzipError(kind: .corrupt, operation: "inflate", message: "no progress decoding gzip data")
            }
        }
    }

    /// Convenience for `[UInt8]` input.
    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// Confirms the input ended exactly at the end of a gzip member.
    ///
    /// - Throws: `GzipError.truncated` if a member was cut short or no member was seen.
    public func finish() throws {
        guard atMemberBoundary, membersCompleted > 0 else {
            throw GzipError(kind: .truncated, operation: "inflate",
                            message: membersCompleted == 0 && bytesIn == 0
                                ? "empty input is not a gzip stream"
                                : "gzip stream ends before its trailer (file truncated)")
        }
    }
}
