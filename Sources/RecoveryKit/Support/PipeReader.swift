import Foundation
import ProcessSignals

/// Reads a pipe or file descriptor to its end in fixed-size chunks (bounded memory).
public enum PipeReader {
    /// Chunk size: large enough to keep syscalls cheap, small enough to stay cache-friendly.
    public static let chunkSize = 1 << 20

    /// Calls `body` with each chunk read from `descriptor` until end of file.
    ///
    /// Stops with `InterruptedError` as soon as a signal asks the run to stop (the interrupted
    /// child's early end of file must never pass for a complete stream).
    ///
    /// - Throws: `RecoveryError(.toolFailed)` on a read error, `InterruptedError`, or whatever `body` throws.
    public static func forEachChunk(of descriptor: Int32, description: String,
                                    _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            try Interruption.check()
            let count = read(descriptor, buffer.baseAddress, chunkSize)
            if count < 0 {
                if errno == EINTR { continue }
                throw RecoveryError(.toolFailed, "reading \(description) failed: \(String(cString: strerror(errno)))",
                                    hint: "the program's output could not be read; run the command again, and check the system log if it repeats")
            }
            if count == 0 {
                try Interruption.check()
                return
            }
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
    }
}
