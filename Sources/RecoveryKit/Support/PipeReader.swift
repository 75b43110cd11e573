import Foundation

/// Reads a pipe or file descriptor to its end in fixed-size chunks (bounded memory).
public enum PipeReader {
    /// Chunk size: large enough to keep syscalls cheap, small enough to stay cache-friendly.
    public static let chunkSize = 1 << 20

    /// Calls `body` with each chunk read from `descriptor` until end of file.
    ///
    /// - Throws: `RecoveryError(.failure)` on a read error, or whatever `body` throws.
    public static func forEachChunk(of descriptor: Int32, description: String,
                                    _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let count = read(descriptor, buffer.baseAddress, chunkSize)
            if count < 0 {
                if errno == EINTR { continue }
                throw RecoveryError(.failure, "reading \(description) failed: \(String(cString: strerror(errno)))")
            }
            if count == 0 { return }
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
    }
}
