import Foundation
/// WAL positions and file names, computed as PostgreSQL does (`XLogFileName`).
public enum WALSegmentName {
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
    public static func segment(containing lsn: UInt64, timeline: Int, segmentSize: UInt64 = 16 * 1024 * 1024) -> String {
        let number = lsn / segmentSize
        let perLogID = 0x1_0000_0000 / segmentSize
        return hex8(UInt64(timeline)) + hex8(number / perLogID) + hex8(number % perLogID)
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
    public static func next(after name: String, segmentSize: UInt64 = 16 * 1024 * 1024) -> String? {
        let characters = Array(name)
        guard isSegment(name), let timeline = UInt64(String(characters[0..<8]), radix: 16),
              let log = UInt64(String(characters[8..<16]), radix: 16), let segment = UInt64(String(characters[16..<24]), radix: 16) else { return nil }
        let perLogID = 0x1_0000_0000 / segmentSize
        let following = log * perLogID + segment + 1
        return hex8(timeline) + hex8(following / perLogID) + hex8(following % perLogID)
    }

    /// Whether `data` is the segment `name` by its own first page: the long page header
    /// (`XLogLongPageHeaderData`, native byte order) has `XLP_LONG_HEADER` set, its `xlp_pageaddr`
    /// is the segment's start LSN (from the name and the header's `xlp_seg_size`), and the file
    /// is `xlp_seg_size` long. The magic differs per major and is not checked.
    public static func headerMatches(_ data: Data, name: String) -> Bool {
        let characters = Array(name)
        guard isSegment(name), data.count >= 40, let log = UInt64(String(characters[8..<16]), radix: 16),
              let segment = UInt64(String(characters[16..<24]), radix: 16) else { return false }
        func integer<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
            data.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
        }
        let info = integer(2, UInt16.self), pageAddress = integer(8, UInt64.self), segmentSize = UInt64(integer(32, UInt32.self))
        // A power of two from 1 MB to 1 GB, as initdb --wal-segsize allows.
        guard info & 0x0002 != 0, segmentSize >= 1 << 20, segmentSize <= 1 << 30, segmentSize & (segmentSize - 1) == 0,
              UInt64(data.count) == segmentSize else { return false }
        let perLogID = 0x1_0000_0000 / segmentSize
        guard segment < perLogID else { return false }
        return pageAddress == (log * perLogID + segment) * segmentSize
    }

    private static func hex8(_ value: UInt64) -> String {
        let text = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, 8 - text.count)) + text
    }
}
