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

    /// The inverse of `postgres`: a `timestamptz` as PostgreSQL prints it in ISO style, any offset
    /// (`2024-01-15 10:00:00.123456+00`, `…+05:30`), as in timeline history files.
    public static func parsePostgres(_ text: String) -> Date? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        // An offset is part of this form (a sign after the date and time).
        guard let sign = trimmed.lastIndex(where: { $0 == "+" || $0 == "-" }), trimmed.distance(from: trimmed.startIndex, to: sign) >= 19 else { return nil }
        return operatorMicroseconds(trimmed).map { Date(timeIntervalSince1970: Double($0) / 1_000_000) }
    }

    /// A time an operator typed: `2024-01-15 10:00:00` (UTC unless an offset follows), with an
    /// optional fraction, or ISO 8601. The fraction is kept to the microsecond, as PostgreSQL keeps
    /// a `timestamptz` (`operatorMicroseconds`): `postgres` writes the operator's digits back exactly.
    public static func parseOperatorTime(_ text: String) -> Date? {
        if let micros = operatorMicroseconds(text) { return Date(timeIntervalSince1970: Double(micros) / 1_000_000) }
        return parse(text)
    }

    /// `YYYY-MM-DD HH:MM:SS` (or `T` between), an optional fraction (rounded to the microsecond, as
    /// PostgreSQL rounds input), then nothing (UTC), `Z`, or an offset `±HH`, `±HH:MM`, `±HHMM` (psql
    /// prints `+00`): microseconds since 1970, in integers, so no digit is lost (a `Date` made from
    /// them is a Double within 0.3 µs of it for centuries either side of now, and `postgres` rounds
    /// back to the same microsecond). Nil for anything else or an impossible date.
    public static func operatorMicroseconds(_ text: String) -> Int64? {
        let bytes = Array(text.trimmingCharacters(in: .whitespaces).utf8)
        var position = 0
        func number(_ digits: Int) -> Int64? {
            guard position + digits <= bytes.count else { return nil }
            var value: Int64 = 0
            for byte in bytes[position..<(position + digits)] {
                guard (0x30...0x39).contains(byte) else { return nil }
                value = value * 10 + Int64(byte - 0x30)
            }
            position += digits
            return value
        }
        func expect(_ characters: String) -> Bool {
            guard position < bytes.count, characters.utf8.contains(bytes[position]) else { return false }
            position += 1
            return true
        }
        guard let year = number(4), expect("-"), let month = number(2), expect("-"), let day = number(2), expect(" T"),
              let hour = number(2), expect(":"), let minute = number(2), expect(":"), let second = number(2) else { return nil }
        var micros: Int64 = 0
        if expect(".") {
            let start = position
            while position < bytes.count, (0x30...0x39).contains(bytes[position]) { position += 1 }
            let digits = bytes[start..<position].map { Int64($0 - 0x30) }
            guard !digits.isEmpty else { return nil }
            for index in 0..<6 { micros = micros * 10 + (index < digits.count ? digits[index] : 0) }
            if digits.count > 6 && digits[6] >= 5 { micros += 1 }
        }
        var offset: Int64 = 0
        if position < bytes.count, !expect("Zz") {
            guard bytes[position] == 0x2B || bytes[position] == 0x2D else { return nil }
            let sign: Int64 = bytes[position] == 0x2D ? -1 : 1
            position += 1
            guard let hours = number(2), hours <= 15 else { return nil }
            var minutes: Int64 = 0
            if position < bytes.count {
                _ = expect(":")
                guard let value = number(2), value <= 59 else { return nil }
                minutes = value
            }
            offset = sign * (hours * 3600 + minutes * 60)
        }
        guard position == bytes.count, (1...12).contains(month), day >= 1, day <= daysIn(month: month, year: year),
              hour <= 23, minute <= 59, second <= 59 else { return nil }
        let seconds = daysSince1970(year: year, month: month, day: day) * 86_400 + hour * 3600 + minute * 60 + second - offset
        return seconds * 1_000_000 + micros
    }

    private static func daysIn(month: Int64, year: Int64) -> Int64 {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
    private static func daysSince1970(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }
}
