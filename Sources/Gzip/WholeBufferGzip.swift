internal import CDeflate
internal import CIsal
import Foundation

/// One gzip member made from a whole buffer at once: the same format as `GzipCompressor`
/// (stock `gzip -d` and `GzipDecompressor` read it), for a fraction of zlib's CPU, because it sees
/// the whole input instead of a stream.
///
/// For inputs that are in memory anyway and bounded (a 16 MiB WAL segment): `wal-push` runs on the
/// database server once per segment, `--async` is bound by CPU on a small machine, and compressing
/// was most of each segment's CPU.
public enum WholeBufferGzip {
    /// The CRC-32 of `bytes` (gzip's and zlib's), by libdeflate's carry-less multiply: a 16 MiB WAL
    /// segment in about a millisecond, a tenth of what a SHA-256 of it costs.
    public static func crc32(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        libdeflate_crc32(0, bytes.baseAddress, bytes.count)
    }

    /// Compresses `bytes` by ISA-L's igzip at its level 1 (`IgzipLevel1`): a 16 MiB WAL segment in
    /// 7–14 ms where libdeflate's level 1 takes 60 ms, within 1–4 % of its size (measured on pgbench
    /// WAL and on the benchmark's segments; docs/design-notes.md).
    ///
    /// - Throws: `GzipError(.compression)` when the input is larger than igzip takes at once (2 GiB),
    ///   or igzip refuses it (which its documentation says cannot happen with this output bound).
    public static func compress(_ bytes: UnsafeRawBufferPointer) throws -> Data {
        let bound = IgzipLevel1.bound(bytes.count)
        var output = Data(count: bound)
        let levelBuffer = IgzipLevel1.allocateLevelBuffer()
        defer { levelBuffer.deallocate() }
        let size = try output.withUnsafeMutableBytes { try IgzipLevel1.member(of: bytes, into: $0, levelBuffer: levelBuffer) }
        output.count = size
        return output
    }
}

/// One gzip member by ISA-L's igzip at its level 1, the fastest deflate at hand: five to nine
/// times libdeflate's level 1 for 1–4 % more bytes on WAL, so what "level 1" (fastest) means for
/// WAL segments and for the blocks of dumps and base backups (`ParallelDeflate`). Incompressible
/// input is stored, so a member is at most a little larger than its input.
enum IgzipLevel1 {
    /// Output room that always suffices: stored blocks at worst (5 bytes per 64 KiB block), gzip's
    /// header and trailer, igzip's largest block header.
    static func bound(_ count: Int) -> Int {
        count + (count >> 12) + Int(ISAL_DEF_MAX_HDR_SIZE) + 1024
    }

    /// The working memory a compression needs (about 300 KiB); one per thread, reusable.
    static func allocateLevelBuffer() -> UnsafeMutableRawBufferPointer {
        .allocate(byteCount: Int(dbrecovery_isal_level1_buffer_size), alignment: 64)
    }

    /// Writes `input` as one gzip member into `output` (at least `bound(input.count)` bytes).
    ///
    /// - Returns: the member's size.
    /// - Throws: `GzipError(.compression)` when the input is larger than igzip takes at once (2 GiB),
    ///   or igzip refuses it (its documentation says it cannot with this bound).
    static func member(of input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer,
                       levelBuffer: UnsafeMutableRawBufferPointer) throws(GzipError) -> Int {
        guard input.count < Int(Int32.max) else {
            throw GzipError(kind: .compression, operation: "isal_deflate_stateless", message: "\(input.count) bytes is more than one call takes")
        }
        var stream = isal_zstream()
        isal_deflate_stateless_init(&stream)
        stream.level = 1
        stream.level_buf = levelBuffer.baseAddress?.assumingMemoryBound(to: UInt8.self)
        stream.level_buf_size = UInt32(levelBuffer.count)
        stream.gzip_flag = UInt16(IGZIP_GZIP)
        stream.end_of_stream = 1
        stream.flush = UInt16(NO_FLUSH)
        // igzip only reads its input; its API has no const.
        stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: UInt8.self))
        stream.avail_in = UInt32(input.count)
        stream.next_out = output.baseAddress?.assumingMemoryBound(to: UInt8.self)
        stream.avail_out = UInt32(min(output.count, Int(UInt32.max)))
        let result = isal_deflate_stateless(&stream)
        guard result == COMP_OK, stream.avail_in == 0 else {
            throw GzipError(kind: .compression, operation: "isal_deflate_stateless", message: "igzip failed with \(result) (output room \(output.count) bytes)")
        }
        return Int(stream.total_out)
    }
}

extension WholeBufferGzip {
    /// Decompresses `bytes` when they are exactly one gzip member (what `compress` makes) whose
    /// trailer gives a size of at most `sizeLimit`, checking its CRC-32 and length as zlib does,
    /// about three times as fast as zlib's stream. Nil for anything else (several members, a
    /// damaged or cut-short stream, a size past the limit): the caller then decompresses with
    /// `GzipDecompressor`, which reads every valid stream and says precisely what is wrong with
    /// the others, so the answer never depends on which path ran.
    public static func decompressMember(_ bytes: UnsafeRawBufferPointer, sizeLimit: Int) -> Data? {
        // The trailer's last four bytes: the uncompressed size modulo 2^32 (little-endian).
        guard bytes.count >= 18, let base = bytes.baseAddress else { return nil }
        let trailer = bytes.count - 4
        let size = (0..<4).reduce(0) { $0 | Int(bytes[trailer + $1]) << (8 * $1) }
        guard size <= sizeLimit, let decompressor = libdeflate_alloc_decompressor() else { return nil }
        defer { libdeflate_free_decompressor(decompressor) }
        var output = Data(count: size)
        var consumed = 0, produced = 0
        let result = output.withUnsafeMutableBytes { out in
            libdeflate_gzip_decompress_ex(decompressor, base, bytes.count, out.baseAddress, size, &consumed, &produced)
        }
        guard result == LIBDEFLATE_SUCCESS, consumed == bytes.count, produced == size else { return nil }
        return output
    }
}
