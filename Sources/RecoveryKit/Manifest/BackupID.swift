import Foundation

/// Backup identifiers: UTC `YYYYMMDDTHHMMSSZ` plus four hex digits, so they sort by time.
public enum BackupID {
    /// A new identifier for a backup starting at `date`.
    ///
    /// The suffix carries the millisecond (times 65, plus a random 0…64 to keep two backups of the
    /// same millisecond apart), so that two backups taken within one second still sort in the order
    /// they were taken: `latest` and `--emergency`'s newest-first order go by the id.
    public static func make(at date: Date = Date()) -> String {
        let stamp = Timestamp.compact(date)
        let seconds = date.timeIntervalSince1970
        let millisecond = min(999, max(0, Int((seconds - seconds.rounded(.down)) * 1000)))
        let suffix = String(format: "%04x", millisecond * 65 + Int.random(in: 0...64))
        return "\(stamp)-\(suffix)"
    }

    /// True for strings shaped like an identifier (so folder names of other things are ignored).
    public static func isValid(_ text: String) -> Bool {
        let characters = Array(text.utf8)
        guard characters.count == 21, characters[8] == UInt8(ascii: "T"), characters[15] == UInt8(ascii: "Z"),
              characters[16] == UInt8(ascii: "-") else { return false }
        let digits = characters[0..<8] + characters[9..<15]
        let hex = characters[17...]
        return digits.allSatisfy { (48...57).contains($0) }
            && hex.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }
}
