import Dispatch
internal import CZlib

/// Compresses a stream on several cores into ONE gzip member, the way pigz does: the input is cut
/// into blocks; each block is deflated on its own (primed with the previous block's last 32 KiB as
/// dictionary, so the ratio stays that of plain gzip) and ended with a sync flush; blocks are
/// written in order between one gzip header and one trailer whose CRC-32 is combined from the
/// blocks' CRCs.
final class ParallelDeflate {
    private final class Block: @unchecked Sendable {
        let input: [UInt8]
        let dictionary: [UInt8]
        let isLast: Bool
        var output: [UInt8] = []
        var crc: UInt = 0
        var error: GzipError?
        let done = DispatchSemaphore(value: 0)

        init(input: [UInt8], dictionary: [UInt8], isLast: Bool) {
            self.input = input
            self.dictionary = dictionary
            self.isLast = isLast
        }
    }

    static let dictionarySize = 32 * 1024

    private let level: Int32
    private let blockSize: Int
    private let maximumInFlight: Int
    private let queue = DispatchQueue(label: "dbrecovery.gzip", attributes: .concurrent)
    private let sink: (UnsafeRawBufferPointer) throws -> Void
    private var pending: [UInt8] = []
    private var dictionary: [UInt8] = []
    private var inFlight: [Block] = []
    private var crc: UInt = 0
    private var length: UInt64 = 0
    private(set) var bytesOut: UInt64 = 0
    private var headerWritten = false

    init(level: Int, jobs: Int, blockSize: Int, sink: @escaping (UnsafeRawBufferPointer) throws -> Void) {
        self.level = Int32(level)
        self.blockSize = blockSize
        // Enough blocks in flight to keep every core busy while the oldest is written out; bounded memory.
        maximumInFlight = max(2, jobs * 2)
        self.sink = sink
        pending.reserveCapacity(blockSize)
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let take = min(blockSize - pending.count, bytes.count - offset)
            pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + take)]))
            offset += take
            if pending.count == blockSize { try submit(isLast: false) }
        }
    }

    func finish() throws {
        try submit(isLast: true)
        while !inFlight.isEmpty { try emitOldest() }
        var trailer = [UInt8](repeating: 0, count: 8)
        for index in 0..<4 {
            trailer[index] = UInt8(truncatingIfNeeded: UInt64(crc) >> (8 * UInt64(index)))
            trailer[4 + index] = UInt8(truncatingIfNeeded: length >> (8 * UInt64(index)))
        }
        try emit(trailer)
    }

    private func submit(isLast: Bool) throws {
        let block = Block(input: pending, dictionary: dictionary, isLast: isLast)
        dictionary = Array(pending.suffix(Self.dictionarySize))
        pending.removeAll(keepingCapacity: true)
        if inFlight.count >= maximumInFlight { try emitOldest() }
        inFlight.append(block)
        let level = self.level
        queue.async {
            Self.compress(block, level: level)
            block.done.signal()
        }
    }

    private func emitOldest() throws {
        let block = inFlight.removeFirst()
        block.done.wait()
        if let error = block.error { throw error }
        if !headerWritten {
            headerWritten = true
            // gzip header: magic, deflate, no flags, no mtime, no extra flags, OS = Unix.
            try emit([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3])
        }
        crc = block.input.isEmpty ? crc : crc32_combine(crc, block.crc, Int(block.input.count))
        length += UInt64(block.input.count)
        try emit(block.output)
    }

    private func emit(_ bytes: [UInt8]) throws {
        bytesOut += UInt64(bytes.count)
        try bytes.withUnsafeBytes { try sink($0) }
    }

    /// Raw deflate of one block (no header), primed with the dictionary, ended with a sync flush
    /// (or the final block marker).
    private static func compress(_ block: Block, level: Int32) {
        let stream = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
        stream.initialize(to: z_stream())
        defer {
            deflateEnd(stream)
            stream.deallocate()
        }
        guard CZlib_deflateInit2(stream, level, -15) == Z_OK else {
            block.error = GzipError(kind: .library, operation: "deflateInit2", message: "cannot initialise zlib")
            return
        }
        if !block.dictionary.isEmpty {
            _ = block.dictionary.withUnsafeBufferPointer { deflateSetDictionary(stream, $0.baseAddress, uInt($0.count)) }
        }
        block.crc = block.input.withUnsafeBufferPointer { crc32(0, $0.baseAddress, uInt($0.count)) }
        var output = [UInt8](repeating: 0, count: Int(deflateBound(stream, uLong(block.input.count))) + 64)
        let produced: Int = block.input.withUnsafeBufferPointer { input in
            output.withUnsafeMutableBufferPointer { out in
                stream.pointee.next_in = UnsafeMutablePointer(mutating: input.baseAddress)
                stream.pointee.avail_in = uInt(input.count)
                stream.pointee.next_out = out.baseAddress
                stream.pointee.avail_out = uInt(out.count)
                var code: Int32
                repeat {
                    code = deflate(stream, block.isLast ? Z_FINISH : Z_SYNC_FLUSH)
                } while code == Z_OK && stream.pointee.avail_out > 0 && (block.isLast || stream.pointee.avail_in > 0)
                return out.count - Int(stream.pointee.avail_out)
            }
        }
        output.removeSubrange(produced...)
        block.output = output
    }
}
