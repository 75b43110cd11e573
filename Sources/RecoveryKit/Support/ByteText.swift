/// Bytes that the server sent as names or hex, turned into text without losing them: the one place
/// where names in an encoding that is not UTF-8 (SQL_ASCII, a dump's LATIN1 headers) become Strings.
enum ByteText {
    /// The bytes written as lower- or upper-case hex digits (`encode(…, 'hex')`); nil for anything else.
    static func bytes(hex: String) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard digits.count.isMultiple(of: 2) else { return nil }
        func value(_ digit: UInt8) -> UInt8? {
            switch digit {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return digit - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return digit - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return digit - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var index = 0
        while index + 1 < digits.count {
            guard let high = value(digits[index]), let low = value(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }

    /// The bytes as lower-case hex digits (what `decode(…, 'hex')` reads back).
    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        text.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// One character per byte (Latin-1), so that distinct byte strings stay distinct texts.
    static func latin1(_ bytes: [UInt8]) -> String {
        String(String.UnicodeScalarView(bytes.map { Unicode.Scalar($0) }))
    }

    /// UTF-8 when the bytes are, else one character per byte.
    static func utf8OrLatin1(_ bytes: [UInt8]) -> String {
        String(validating: bytes, as: UTF8.self) ?? latin1(bytes)
    }

    /// The bytes `utf8OrLatin1` made `text` of, given which way it read them (`wasUTF8`); nil if
    /// `text` could not have come from Latin-1.
    static func bytes(of text: String, wasUTF8: Bool) -> [UInt8]? {
        if wasUTF8 { return Array(text.utf8) }
        let scalars = text.unicodeScalars.map(\.value)
        return scalars.allSatisfy { $0 < 256 } ? scalars.map { UInt8($0) } : nil
    }
}
