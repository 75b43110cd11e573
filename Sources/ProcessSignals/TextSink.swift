#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where the tools' messages go (stderr), written with `write(2)` and its errors ignored.
///
/// Why not `FileHandle.write`: it traps when the write fails, and SIGPIPE is ignored (to see EPIPE),
/// so a closed stderr — `dbrestore … 2>&1 | head -1`, an ssh session that dropped (EIO on its pty) —
/// crashed the tool with SIGILL mid-restore, leaving its scratch database behind. A message that cannot
/// be shown is lost; the run goes on, finishes or cleans up, and exits with its own code.
public struct TextSink: Sendable {
    public let descriptor: Int32

    public init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    public static let standardError = TextSink(descriptor: 2)

    /// Writes all of `text`, retrying after a signal interrupted the call; any other failure drops the rest.
    public func write(_ text: String) {
        var bytes = Array(text.utf8)
        var written = 0
        while written < bytes.count {
            let result = bytes.withUnsafeMutableBytes { buffer -> Int in
                guard let base = buffer.baseAddress else { return 0 }
                #if canImport(Glibc)
                return Glibc.write(descriptor, base + written, buffer.count - written)
                #else
                return Darwin.write(descriptor, base + written, buffer.count - written)
                #endif
            }
            if result > 0 {
                written += result
            } else if result < 0 && errno == EINTR {
                continue
            } else {
                return
            }
        }
    }
}
