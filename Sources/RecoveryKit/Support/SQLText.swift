/// SQL text quoting done on this side, for utility statements that take no parameters.
enum SQLText {
    /// A string literal the way `quote_literal` writes it: `'it''s'`, or `E'a\\b'` with a backslash.
    static func literal(_ text: String) -> String {
        var body = ""
        var hasBackslash = false
        for character in text {
            switch character {
            case "'": body += "''"
            case "\\": body += "\\\\"; hasBackslash = true
            default: body.append(character)
            }
        }
        return (hasBackslash ? "E'" : "'") + body + "'"
    }
}

extension SQLText {
    /// A text-array parameter value (`{"a","b \"c\""}`), for `= ANY($1::text[])`.
    static func arrayLiteral(_ values: [String]) -> String {
        "{" + values.map { value in
            var escaped = ""
            for character in value {
                if character == "\"" || character == "\\" { escaped.append("\\") }
                escaped.append(character)
            }
            return "\"" + escaped + "\""
        }.joined(separator: ",") + "}"
    }
}
