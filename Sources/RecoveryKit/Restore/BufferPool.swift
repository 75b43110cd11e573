import Foundation

/// A few emptied byte buffers kept for reuse between threads (a fresh 1 MiB buffer per run of
/// rows costs 256 page faults).
final class BufferPool: @unchecked Sendable {
    // Safe: `buffers` is only touched under `lock`.
    private let lock = NSLock()
    private var buffers: [[UInt8]] = []

    func take(capacity: Int) -> [UInt8] {
        if let buffer = lock.withLock({ buffers.popLast() }) { return buffer }
        var buffer: [UInt8] = []
        buffer.reserveCapacity(capacity)
        return buffer
    }

    /// Takes the buffer (leaving an empty one): it must be the only reference, or a copy is kept.
    func give(_ buffer: inout [UInt8]) {
        buffer.removeAll(keepingCapacity: true)
        let kept = buffer
        buffer = []
        lock.withLock { if buffers.count < 16 { buffers.append(kept) } }
    }
}
