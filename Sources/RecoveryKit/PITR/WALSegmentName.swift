import Foundation
/// WAL positions and file names, computed as PostgreSQL does (`XLogFileName`).
public enum WALSegmentName {
    /// PostgreSQL's default `wal_segment_size` (16 MB); initdb `--wal-segsize` chooses 1 MB to 1 GB.
    public static let defaultSegmentSize: UInt64 = 16 * 1024 * 1024

    /// Parses an LSN written `X/Y` (hex).
    public static func parseLSN(_ text: String) -> UInt64? {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let high = UInt64(parts[0], radix: 16), let low = UInt64(parts[1], radix: 16), low <= UInt64(UInt32.max) else { return nil }
        return high << 32 | low
    }

    /// Formats an LSN as `X/Y`.
    public static func formatLSN(_ lsn: UInt64) -> String {
        String(lsn >> 32, radix: 16, uppercase: true) + "/" + String(lsn & 0xFFFF_FFFF, radix: 16, uppercase: true)
    }

    /// The segment file holding `lsn` on `timeline`, e.g. `000000010000000000000003`.
    public static func segment(containing lsn: UInt64, timeline: Int, segmentSize: UInt64 = defaultSegmentSize) -> String {
        let number = lsn / segmentSize
        let perLogID = 0x1_0000_0000 / segmentSize
        return hex8(UInt64(timeline)) + hex8(number / perLogID) + hex8(number % perLogID)
    }

    /// Whether `size` is one initdb `--wal-segsize` allows: a power of two from 1 MB to 1 GB.
    public static func isSegmentSize(_ size: UInt64) -> Bool {
        size >= 1 << 20 && size <= 1 << 30 && size & (size - 1) == 0
    }

    /// True for a plain segment name (24 hex digits).
    public static func isSegment(_ name: String) -> Bool {
        name.count == 24 && name.allSatisfy(\.isHexDigit)
    }

    /// The timeline of a WAL file name (segment, `.history`, `.backup`, `.partial`).
    public static func timeline(of name: String) -> String? {
        let prefix = name.prefix(8)
        return prefix.count == 8 && prefix.allSatisfy(\.isHexDigit) ? String(prefix).uppercased() : nil
    }

    /// The next segment name on the same timeline.
    public static func next(after name: String, segmentSize: UInt64 = defaultSegmentSize) -> String? {
        guard let timeline = timelineNumber(of: name), let number = segmentNumber(of: name, segmentSize: segmentSize) else { return nil }
        return self.name(timeline: timeline, segmentNumber: number + 1, segmentSize: segmentSize)
    }

    /// The timeline of a segment name as a number (`00000002…` → 2).
    public static func timelineNumber(of name: String) -> UInt32? {
        guard isSegment(name) || name.hasSuffix(".history") || name.hasSuffix(".partial") else { return nil }
        return UInt32(name.prefix(8), radix: 16)
    }

    /// The position of a segment in the WAL, whatever its timeline (PostgreSQL's `XLogSegNo`):
    /// log × segments-per-log + segment. Nil for anything that is not a segment name, or whose low
    /// part does not exist at this segment size (a 64 MB cluster has 64 segments per log, 00…3F).
    public static func segmentNumber(of name: String, segmentSize: UInt64 = defaultSegmentSize) -> UInt64? {
        let characters = Array(name.prefix(24))
        guard characters.count == 24, isSegment(String(characters)),
              let log = UInt64(String(characters[8..<16]), radix: 16), let segment = UInt64(String(characters[16..<24]), radix: 16) else { return nil }
        let perLogID = 0x1_0000_0000 / segmentSize
        guard segment < perLogID else { return nil }
        return log * perLogID + segment
    }

    /// The segment name of position `segmentNumber` on `timeline`.
    public static func name(timeline: UInt32, segmentNumber: UInt64, segmentSize: UInt64 = defaultSegmentSize) -> String {
        let perLogID = 0x1_0000_0000 / segmentSize
        return hex8(UInt64(timeline)) + hex8(segmentNumber / perLogID) + hex8(segmentNumber % perLogID)
    }

    /// Whether `data` is the segment `name` by its own first page: the long page header
    /// (`XLogLongPageHeaderData`, native byte order) has `XLP_LONG_HEADER` set, its `xlp_pageaddr`
    /// is the segment's start LSN (from the name and the header's `xlp_seg_size`), and the file
    /// is `xlp_seg_size` long. The magic differs per major and is not checked.
    public static func headerMatches(_ data: Data, name: String) -> Bool {
        data.withUnsafeBytes { headerMatches(firstBytes: $0, size: UInt64($0.count), name: name) }
    }

    /// `headerMatches` for a file of `size` bytes that starts with `firstBytes` (at least the
    /// 40 bytes of the long page header): what a segment streamed to disk or mapped is checked by.
    public static func headerMatches(firstBytes: UnsafeRawBufferPointer, size: UInt64, name: String) -> Bool {
        let characters = Array(name)
        guard isSegment(name), firstBytes.count >= 40, let log = UInt64(String(characters[8..<16]), radix: 16),
              let segment = UInt64(String(characters[16..<24]), radix: 16) else { return false }
        func integer<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
            T(littleEndian: firstBytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        }
        let info = integer(2, UInt16.self), pageAddress = integer(8, UInt64.self), segmentSize = UInt64(integer(32, UInt32.self))
        guard info & WALServer.longHeaderFlag != 0, isSegmentSize(segmentSize), size == segmentSize else { return false }
        let perLogID = 0x1_0000_0000 / segmentSize
        guard segment < perLogID else { return false }
        return pageAddress == (log * perLogID + segment) * segmentSize
    }

    private static func hex8(_ value: UInt64) -> String {
        let text = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, 8 - text.count)) + text
    }
}
