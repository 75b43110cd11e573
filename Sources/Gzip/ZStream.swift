internal import CZlib

/// Owns one heap-allocated `z_stream`, so its address never moves while zlib holds pointers into it.
final class ZStream {
    enum Direction { case deflate, inflate }

    let stream: UnsafeMutablePointer<z_stream>
    private let direction: Direction

    init(deflateLevel level: Int32) throws {
        direction = .deflate
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        // 15 window bits + 16 selects the gzip wrapper rather than raw zlib.
        try check(CZlib_deflateInit2(stream, level, 15 + 16), "deflateInit2")
    }

    init(inflate: Void) throws {
        direction = .inflate
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        // 15 window bits + 16: gzip only; anything else is not one of our files.
        try check(CZlib_inflateInit2(stream, 15 + 16), "inflateInit2")
    }

    /// Raw deflate (no gzip header or trailer): decoding from an access point inside a member.
    init(rawInflate: Void) throws {
        direction = .inflate
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        try check(CZlib_inflateInit2(stream, -15), "inflateInit2")
    }

    deinit {
        switch direction {
        case .deflate: deflateEnd(stream)
        case .inflate: inflateEnd(stream)
        }
        stream.deallocate()
    }

    /// Checks a zlib return code, turning anything but `Z_OK`, `Z_STREAM_END` and `Z_BUF_ERROR` into a `GzipError`.
    @discardableResult
    func check(_ code: Int32, _ operation: String) throws -> Int32 {
        switch code {
        case Z_OK, Z_STREAM_END, Z_BUF_ERROR:
            return code
        case Z_DATA_ERROR:
            throw GzipError(kind: .corrupt, operation: operation, message: zlibMessage(default: "invalid gzip data"))
        default:
            throw GzipError(kind: direction == .deflate ? .compression : .library, operation: operation, message: zlibMessage(default: "zlib error \(code)"))
        }
    }

    private func zlibMessage(default fallback: String) -> String {
        if let message = stream.pointee.msg { return String(cString: message) }
        return fallback
    }
}
