import Dispatch
import Foundation
import Synchronization
internal import CZlib
internal import CDeflate

/// Compresses a stream on several cores, in one of two layouts (`GzipCompressor.Layout`):
///
/// - one gzip member, the way pigz does: the input is cut into blocks; each block is deflated by
///   zlib on its own (primed with the previous block's last 32 KiB as dictionary, so the ratio
///   stays that of plain gzip) and ended with a sync flush; blocks are written in order between
///   one gzip header and one trailer whose CRC-32 is combined from the blocks' CRCs;
/// - one gzip member per block, each made whole by libdeflate (about 2.4× less CPU than zlib at
///   level 6, for about 1 % more bytes at 1 MiB blocks: no block sees the one before), or at
///   level 1 by ISA-L's igzip (`IgzipLevel1`: a fifth of libdeflate level 1's CPU). Every block
///   then decodes on its own from its first byte.
///
/// Memory is allocated once: a fixed set of slots (2 × jobs), each with its input and output
/// buffers and its own zlib stream, is reused block after block. (A profile of the first version,
/// which allocated fresh buffers per block, showed about 500 page faults per MiB of input.)
/// At most `jobs` blocks compress at once: block k runs on serial lane k mod jobs; the other slots
/// only wait, filled, to be written out.
final class ParallelDeflate {
    /// One block's buffers and zlib state; owned by the writer except while a worker compresses it.
    // @unchecked Sendable: one owner at a time — the writer fills it, one worker compresses it, `done` hands it back.
    private final class Slot: @unchecked Sendable {
        let input: UnsafeMutableBufferPointer<UInt8>
        var inputCount = 0
        let dictionary: UnsafeMutableBufferPointer<UInt8>
        var dictionaryCount = 0
        let output: UnsafeMutableBufferPointer<UInt8>
        var outputCount = 0
        var isLast = false
        /// Set on a block compressed without a dictionary: decompression can start at its first byte.
        var isAccessPoint = false
        /// Uncompressed offset of the block's first byte.
        var uncompressedStart: UInt64 = 0
        var crc: UInt = 0
        var error: GzipError?
        let done = DispatchSemaphore(value: 0)
        private let stream: UnsafeMutablePointer<z_stream>
        private let ready: Bool
        /// Set in the member-per-block layout: what makes each block a whole gzip member.
        private let memberCompressor: MemberCompressor?

        private enum MemberCompressor {
            case libdeflate(OpaquePointer)
            /// Level 1, with igzip's working memory.
            case igzip(UnsafeMutableRawBufferPointer)
        }

        init(blockSize: Int, level: Int32, layout: GzipCompressor.Layout) {
            input = .allocate(capacity: blockSize)
            dictionary = .allocate(capacity: ParallelDeflate.dictionarySize)
            stream = .allocate(capacity: 1)
            stream.initialize(to: z_stream())
            switch layout {
            case .memberPerBlock where level == 1:
                memberCompressor = .igzip(IgzipLevel1.allocateLevelBuffer())
                ready = true
                output = .allocate(capacity: IgzipLevel1.bound(blockSize))
            case .memberPerBlock:
                let compressor = libdeflate_alloc_compressor(level)
                memberCompressor = compressor.map { .libdeflate($0) }
                ready = compressor != nil
                output = .allocate(capacity: compressor.map { libdeflate_gzip_compress_bound($0, blockSize) } ?? 64)
            case .singleMember:
                memberCompressor = nil
                ready = CZlib_deflateInit2(stream, level, -15) == Z_OK
                // deflateBound for a raw stream, plus room for the sync-flush marker.
                output = .allocate(capacity: ready ? Int(deflateBound(stream, uLong(blockSize))) + 64 : 64)
            }
        }

        deinit {
            switch memberCompressor {
            case .libdeflate(let compressor): libdeflate_free_compressor(compressor)
            case .igzip(let levelBuffer): levelBuffer.deallocate()
            case nil: if ready { deflateEnd(stream) }
            }
            stream.deallocate()
            input.deallocate()
            dictionary.deallocate()
            output.deallocate()
        }

        /// Compresses the block. Runs on a worker.
        func compress() {
            if let memberCompressor { return compressMember(memberCompressor) }
            guard ready, deflateReset(stream) == Z_OK else {
                error = GzipError(kind: .compression, operation: "deflateInit2", message: "cannot initialise zlib")
                return
            }
            if dictionaryCount > 0 {
                _ = deflateSetDictionary(stream, dictionary.baseAddress, uInt(dictionaryCount))
            }
            crc = crc32(0, input.baseAddress, uInt(inputCount))
            stream.pointee.next_in = input.baseAddress
            stream.pointee.avail_in = uInt(inputCount)
            stream.pointee.next_out = output.baseAddress
            stream.pointee.avail_out = uInt(output.count)
            var code: Int32
            repeat {
                code = deflate(stream, isLast ? Z_FINISH : Z_SYNC_FLUSH)
            } while code == Z_OK && stream.pointee.avail_out > 0 && (isLast || stream.pointee.avail_in > 0)
            if isLast ? code != Z_STREAM_END : stream.pointee.avail_in > 0 {
                error = GzipError(kind: .compression, operation: "deflate", message: "zlib stopped with code \(code)")
            }
            outputCount = output.count - Int(stream.pointee.avail_out)
        }

        /// The block as one whole gzip member (header, deflate stream, CRC-32 and length).
        private func compressMember(_ compressor: MemberCompressor) {
            switch compressor {
            case .libdeflate(let compressor):
                outputCount = libdeflate_gzip_compress(compressor, input.baseAddress, inputCount, output.baseAddress, output.count)
                // The output holds the bound, so 0 (did not fit) cannot happen; checked all the same.
                if outputCount == 0 {
                    error = GzipError(kind: .compression, operation: "libdeflate_gzip_compress", message: "a block did not fit its bound of \(output.count) bytes")
                }
            case .igzip(let levelBuffer):
                do {
                    outputCount = try IgzipLevel1.member(of: UnsafeRawBufferPointer(start: input.baseAddress, count: inputCount),
                                                         into: UnsafeMutableRawBufferPointer(output), levelBuffer: levelBuffer)
                } catch {
                    self.error = error
                }
            }
        }
    }

    static let dictionarySize = 32 * 1024

    private let level: Int32
    private let layout: GzipCompressor.Layout
    private let blockSize: Int
    private let maximumInFlight: Int
    /// One serial queue per job: `jobs` lanes, so never more than `jobs` blocks compress at once.
    private let lanes: [DispatchQueue]
    private var blocksSubmitted = 0
    private let concurrency = ConcurrencyGauge()
    /// The most blocks ever compressing at the same time (at most `jobs`; for tests).
    var peakConcurrentBlocks: Int { concurrency.peak }
    private let sink: (UnsafeRawBufferPointer) throws -> Void
    /// The block being filled by `write(_:)`.
    private var current: Slot?
    private var free: [Slot] = []
    private var inFlight: [Slot] = []
    private var slotsMade = 0
    private var crc: UInt = 0
    private var length: UInt64 = 0
    private(set) var bytesOut: UInt64 = 0
    private var headerWritten = false
    private var blocksEmitted = 0
    /// Uncompressed bytes handed to blocks so far.
    private var submittedBytes: UInt64 = 0
    /// Uncompressed distance between access points; 0: none.
    private let accessPointInterval: UInt64
    private var lastAccessPoint: UInt64 = 0
    /// Told of each access point just before its first compressed byte reaches the sink.
    private let onAccessPoint: ((GzipAccessPoint) -> Void)?

    init(level: Int, jobs: Int, blockSize: Int, layout: GzipCompressor.Layout = .singleMember, accessPointInterval: UInt64 = 0,
         onAccessPoint: ((GzipAccessPoint) -> Void)? = nil, sink: @escaping (UnsafeRawBufferPointer) throws -> Void) {
        self.level = Int32(level)
        self.layout = layout
        self.blockSize = blockSize
        self.accessPointInterval = accessPointInterval
        self.onAccessPoint = onAccessPoint
        // Enough blocks in flight to keep every core busy while the oldest is written out; bounded memory.
        maximumInFlight = max(2, jobs * 2)
        lanes = (0..<max(1, jobs)).map { DispatchQueue(label: "dbrecovery.gzip.\($0)") }
        self.sink = sink
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let slot = try current ?? takeSlot()
            current = slot
            let take = min(blockSize - slot.inputCount, bytes.count - offset)
            UnsafeMutableRawBufferPointer(rebasing: UnsafeMutableRawBufferPointer(slot.input)[slot.inputCount..<(slot.inputCount + take)])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + take)]))
            slot.inputCount += take
            offset += take
            if slot.inputCount == blockSize { try submit(slot, isLast: false) }
        }
    }

    func finish() throws {
        try submit(try current ?? takeSlot(), isLast: true)
        while !inFlight.isEmpty { try emitOldest() }
        // Each member carries its own trailer.
        if layout == .memberPerBlock { return }
        var trailer = [UInt8](repeating: 0, count: 8)
        for index in 0..<4 {
            trailer[index] = UInt8(truncatingIfNeeded: UInt64(crc) >> (8 * UInt64(index)))
            trailer[4 + index] = UInt8(truncatingIfNeeded: length >> (8 * UInt64(index)))
        }
        try trailer.withUnsafeBytes { try emit($0) }
    }

    /// A free slot: a recycled one, a new one while under the limit, or the oldest in flight once written out.
    private func takeSlot() throws -> Slot {
        if free.isEmpty {
            if slotsMade < maximumInFlight {
                slotsMade += 1
                free.append(Slot(blockSize: blockSize, level: level, layout: layout))
            } else {
                try emitOldest()
            }
        }
        let slot = free.removeLast()
        slot.inputCount = 0
        slot.isAccessPoint = false
        return slot
    }

    private func submit(_ slot: Slot, isLast: Bool) throws {
        current = nil
        slot.isLast = isLast
        // The next block is primed with this block's last 32 KiB.
        let tail = min(slot.inputCount, Self.dictionarySize)
        slot.uncompressedStart = submittedBytes
        submittedBytes += UInt64(slot.inputCount)
        if !isLast {
            let next = try takeSlot()
            // Every accessPointInterval bytes a block starts without the previous block's tail as
            // dictionary: it then decodes on its own from its first (byte-aligned, after the
            // previous block's sync flush) byte, with an empty window. Costs one block's worth of
            // ratio per interval (a few hundred bytes). In the member-per-block layout every block
            // could be one; they are reported at the same interval, so an index stays as small.
            next.isAccessPoint = accessPointInterval > 0 && submittedBytes - lastAccessPoint >= accessPointInterval
            if next.isAccessPoint { lastAccessPoint = submittedBytes }
            if next.isAccessPoint || layout == .memberPerBlock {
                next.dictionaryCount = 0
            } else {
                next.dictionaryCount = tail
                _ = UnsafeMutableBufferPointer(rebasing: next.dictionary[0..<tail])
                    .initialize(from: slot.input[(slot.inputCount - tail)..<slot.inputCount])
            }
            current = next
        }
        inFlight.append(slot)
        let lane = lanes[blocksSubmitted % lanes.count]
        blocksSubmitted += 1
        let concurrency = self.concurrency
        lane.async {
            concurrency.enter()
            slot.compress()
            concurrency.leave()
            slot.done.signal()
        }
    }

    private func emitOldest() throws {
        let slot = inFlight.removeFirst()
        slot.done.wait()
        if let error = slot.error { throw error }
        if layout == .memberPerBlock {
            // An empty last block adds no member, unless it is the only one (a gzip file has at least one).
            if slot.inputCount == 0 && slot.isLast && blocksEmitted > 0 { slot.outputCount = 0 }
            blocksEmitted += 1
        } else if !headerWritten {
            headerWritten = true
            // gzip header: magic, deflate, no flags, no mtime, no extra flags, OS = Unix.
            try ([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3] as [UInt8]).withUnsafeBytes { try emit($0) }
        }
        if slot.isAccessPoint && slot.inputCount > 0 {
            onAccessPoint?(GzipAccessPoint(compressedOffset: bytesOut, uncompressedOffset: slot.uncompressedStart))
        }
        crc = slot.inputCount == 0 ? crc : crc32_combine(crc, slot.crc, Int(slot.inputCount))
        length += UInt64(slot.inputCount)
        if slot.outputCount > 0 { try emit(UnsafeRawBufferPointer(UnsafeMutableBufferPointer(rebasing: slot.output[0..<slot.outputCount]))) }
        slot.dictionaryCount = 0
        free.append(slot)
    }

    private func emit(_ bytes: UnsafeRawBufferPointer) throws {
        bytesOut += UInt64(bytes.count)
        try sink(bytes)
    }
}

/// Counts blocks compressing right now and remembers the peak.
private final class ConcurrencyGauge: Sendable {
    private let counts = Mutex<(current: Int, highest: Int)>((0, 0))

    func enter() {
        counts.withLock {
            $0.current += 1
            $0.highest = max($0.highest, $0.current)
        }
    }

    func leave() { counts.withLock { $0.current -= 1 } }

    var peak: Int { counts.withLock { $0.highest } }
}
