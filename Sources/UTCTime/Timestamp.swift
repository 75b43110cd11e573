import Foundation

/// Every UTC timestamp the toolkit writes or reads, in one place.
///
/// Its own module because both BackupStorage (SigV4 dates, S3 listings, lock records) and RecoveryKit
/// (manifests, backup ids, names of kept databases) need it and neither may depend on the other;
/// RecoveryKit re-exports it. Built on `Date.ISO8601FormatStyle` and `Calendar` values, which are
/// Sendable: no shared formatter object crosses threads.
public enum Timestamp {
    private static let withFraction = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
    private static let plain = Date.ISO8601FormatStyle()
    private static let calendar: Calendar = {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(secondsFromGMT: 0) ?? .gmt
        return calendar
    }()

    /// `2024-01-15T10:00:00.123Z`: manifests, JSON output, timelines, lock records.
    public static func format(_ date: Date) -> String { withFraction.format(date) }

    /// ISO 8601 with or without a fraction of a second (what `format` writes, and S3's listings).
    public static func parse(_ text: String) -> Date? {
        (try? withFraction.parse(text)) ?? (try? plain.parse(text))
    }

    /// `20240115T100000Z`: backup ids and SigV4's `x-amz-date` (they sort by time as text). With
    /// `separator: "_", zone: ""`, `20240115_100000`, which may stand in a database name.
    public static func compact(_ date: Date, separator: String = "T", zone: String = "Z") -> String {
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        return String(format: "%04d%02d%02d", c.year ?? 0, c.month ?? 0, c.day ?? 0) + separator
            + String(format: "%02d%02d%02d", c.hour ?? 0, c.minute ?? 0, c.second ?? 0) + zone
    }

    /// `2024-01-15 10:00:00.123456+00`: PostgreSQL's `timestamptz` input, to the microsecond
    /// (`recovery_target_time`).
    public static func postgres(_ date: Date) -> String {
        let micros = Int64((date.timeIntervalSince1970 * 1_000_000).rounded())
        let seconds = micros >= 0 ? micros / 1_000_000 : (micros - 999_999) / 1_000_000
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: Date(timeIntervalSince1970: Double(seconds)))
        return String(format: "%04d-%02d-%02d %02d:%02d:%02d.%06lld+00", c.year ?? 0, c.month ?? 0, c.day ?? 0,
                      c.hour ?? 0, c.minute ?? 0, c.second ?? 0, micros - seconds * 1_000_000)
    }

    /// A time an operator typed: `2024-01-15 10:00:00` (UTC unless an offset follows), with an
    /// optional fraction, or ISO 8601.
    public static func parseOperatorTime(_ text: String) -> Date? {
        if let date = parse(text) { return date }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(secondsFromGMT: 0)
        for format in ["yyyy-MM-dd HH:mm:ss", "yyyy-MM-dd HH:mm:ss.SSS", "yyyy-MM-dd HH:mm:ssXXX", "yyyy-MM-dd HH:mm:ss.SSSXXX", "yyyy-MM-dd'T'HH:mm:ss"] {
            formatter.dateFormat = format
            if let date = formatter.date(from: text) { return date }
        }
        return nil
    }
}
