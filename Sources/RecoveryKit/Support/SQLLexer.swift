/// Finds statement boundaries in SQL text: top-level semicolons outside quotes ('…', E'…' with
/// backslash escapes, "…"), dollar quotes ($tag$…$tag$) and comments. Streaming: state carries
/// from one call to the next, so a script can be fed line by line (as a restore reads a dump) or
/// whole (as migrations are split). `--` comments are left out of the statements; block comments
/// are kept.
///
/// The one SQL splitter of the toolkit: migrations and restores both use it.
struct SQLLexer {
    private enum State: Equatable {
        case code
        case lineComment
        case blockComment(depth: Int)
        case quoted(UInt8, escapes: Bool)
        case dollarQuoted([UInt8])
    }

    private var state = State.code
    private var statement: [UInt8] = []
    private var hasCode = false

    /// True when a statement has begun and not yet ended (something besides whitespace and comments).
    var inStatement: Bool { hasCode || state != .code && state != .lineComment }

    /// Reads `text` from `offset` until the end of the next statement or the end of `text`.
    ///
    /// Tokens must not be cut in two between calls: feed whole lines (or the whole script).
    /// - Returns: the statement (trimmed, without its semicolon) if one ended, and where reading stopped.
    mutating func next(_ text: UnsafeRawBufferPointer, from offset: Int) -> (statement: String?, offset: Int) {
        var index = offset
        let count = text.count
        func byte(_ at: Int) -> UInt8? { at < count ? text[at] : nil }
        var runStart = index
        func keepRun(upTo end: Int) {
            if end > runStart { statement.append(contentsOf: UnsafeRawBufferPointer(rebasing: text[runStart..<end])) }
        }
        while index < count {
            let character = text[index]
            switch state {
            case .lineComment:
                if character == UInt8(ascii: "\n") {
                    state = .code
                    runStart = index
                }
                index += 1
            case .blockComment(let depth):
                if character == UInt8(ascii: "*"), byte(index + 1) == UInt8(ascii: "/") {
                    state = depth == 1 ? .code : .blockComment(depth: depth - 1)
                    index += 2
                } else if character == UInt8(ascii: "/"), byte(index + 1) == UInt8(ascii: "*") {
                    state = .blockComment(depth: depth + 1)
                    index += 2
                } else {
                    index += 1
                }
            case .quoted(let quote, let escapes):
                if escapes && character == UInt8(ascii: "\\") {
                    index += 2
                } else if character == quote {
                    if byte(index + 1) == quote { index += 2 } else { state = .code; index += 1 }
                } else {
                    index += 1
                }
            case .dollarQuoted(let tag):
                if character == UInt8(ascii: "$"), matches(tag, in: text, at: index) {
                    state = .code
                    index += tag.count
                } else {
                    index += 1
                }
            case .code:
                switch character {
                case UInt8(ascii: "-") where byte(index + 1) == UInt8(ascii: "-"):
                    keepRun(upTo: index)
                    state = .lineComment
                    index += 2
                case UInt8(ascii: "/") where byte(index + 1) == UInt8(ascii: "*"):
                    state = .blockComment(depth: 1)
                    index += 2
                case UInt8(ascii: "'"), UInt8(ascii: "\""):
                    hasCode = true
                    let escapes = character == UInt8(ascii: "'") && index > 0
                        && (text[index - 1] | 0x20) == UInt8(ascii: "e") && (index < 2 || !Self.isIdentifier(text[index - 2]))
                    state = .quoted(character, escapes: escapes)
                    index += 1
                case UInt8(ascii: "$"):
                    hasCode = true
                    if let tag = dollarTag(in: text, at: index) {
                        state = .dollarQuoted(tag)
                        index += tag.count
                    } else {
                        index += 1
                    }
                case UInt8(ascii: ";"):
                    keepRun(upTo: index)
                    return (takeStatement(), index + 1)
                case UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "\t"), UInt8(ascii: "\r"):
                    index += 1
                default:
                    hasCode = true
                    index += 1
                }
            }
        }
        if state != .lineComment { keepRun(upTo: min(index, count)) }
        return (nil, count)
    }

    /// What is left at the end of the text: a last statement without a semicolon, if any.
    mutating func finish() -> String? {
        state = .code
        return takeStatement()
    }

    private mutating func takeStatement() -> String? {
        defer {
            statement.removeAll(keepingCapacity: true)
            hasCode = false
        }
        guard hasCode else { return nil }
        let text = String(decoding: statement, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? nil : text
    }

    private static func isIdentifier(_ byte: UInt8) -> Bool {
        byte >= 0x80 || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "$")
            || (byte | 0x20) >= UInt8(ascii: "a") && (byte | 0x20) <= UInt8(ascii: "z")
            || byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }

    /// `$tag$` or `$$` starting at `index` (not `$1`, not inside an identifier such as `a$b`).
    private func dollarTag(in text: UnsafeRawBufferPointer, at index: Int) -> [UInt8]? {
        if index > 0, Self.isIdentifier(text[index - 1]) { return nil }
        var end = index + 1
        while end < text.count, text[end] != UInt8(ascii: "$"), Self.isIdentifier(text[end]) { end += 1 }
        guard end < text.count, text[end] == UInt8(ascii: "$") else { return nil }
        if end > index + 1, text[index + 1] >= UInt8(ascii: "0"), text[index + 1] <= UInt8(ascii: "9") { return nil }
        return Array(text[index...end])
    }

    private func matches(_ tag: [UInt8], in text: UnsafeRawBufferPointer, at index: Int) -> Bool {
        guard index + tag.count <= text.count else { return false }
        for offset in 0..<tag.count where text[index + offset] != tag[offset] { return false }
        return true
    }
}
