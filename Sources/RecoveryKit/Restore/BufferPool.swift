import Foundation
import Synchronization

/// A few emptied byte buffers kept for reuse between threads (a fresh 1 MiB buffer per run of
/// rows costs 256 page faults).
final class BufferPool: Sendable {
    private let buffers = Mutex<[[UInt8]]>([])
    /// Buffers that grew beyond this capacity are let go, not kept: a pool of 16 must not pin
    /// memory a single outsized run once needed.
    private let keepsAtMost: Int

    init(keepsAtMost: Int) { self.keepsAtMost = keepsAtMost }

    func take(capacity: Int) -> [UInt8] {
        if let buffer = buffers.withLock({ $0.popLast() }) { return buffer }
        var buffer: [UInt8] = []
        buffer.reserveCapacity(capacity)
        return buffer
    }

    /// Takes the buffer (leaving an empty one): it must be the only reference, or a copy is kept.
    func give(_ buffer: inout [UInt8]) {
        guard buffer.capacity <= keepsAtMost + keepsAtMost / 4 else {
            buffer = []
            return
        }
        buffer.removeAll(keepingCapacity: true)
        let kept = buffer
        buffer = []
        buffers.withLock { if $0.count < 16 { $0.append(kept) } }
    }
}
