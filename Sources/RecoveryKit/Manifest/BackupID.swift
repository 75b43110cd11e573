import Foundation

/// Backup identifiers: UTC `YYYYMMDDTHHMMSSZ` plus a short random suffix, so they sort by time.
public enum BackupID {
    /// A new identifier for a backup starting at `date`.
    public static func make(at date: Date = Date()) -> String {
        let stamp = Timestamp.compact(date)
        let suffix = String(format: "%04x", UInt16.random(in: 0...UInt16.max))
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
