import Foundation

/// Splits a SQL script into statements at top-level semicolons, respecting quotes, dollar quotes
/// and comments, so that a failure can name the exact statement.
public enum SQLStatements {
    /// The statements of `script`, trimmed, without empty ones and without comment-only ones.
    public static func split(_ script: String) -> [String] {
        var statements: [String] = []
        var current = ""
        var hasCode = false
        let characters = Array(script)
        var index = 0
        func flush() {
            let trimmed = current.trimmingCharacters(in: .whitespacesAndNewlines)
            if hasCode && !trimmed.isEmpty { statements.append(trimmed) }
            current = ""
            hasCode = false
        }
        while index < characters.count {
            let character = characters[index]
            let next: Character? = index + 1 < characters.count ? characters[index + 1] : nil
            if character == "-" && next == "-" {
                while index < characters.count && characters[index] != "\n" { current.append(characters[index]); index += 1 }
                continue
            }
            if character == "/" && next == "*" {
                var depth = 0
                repeat {
                    if characters[index] == "/" && index + 1 < characters.count && characters[index + 1] == "*" {
                        depth += 1; current += "/*"; index += 2; continue
                    }
                    if characters[index] == "*" && index + 1 < characters.count && characters[index + 1] == "/" {
                        depth -= 1; current += "*/"; index += 2; continue
                    }
                    current.append(characters[index]); index += 1
                } while depth > 0 && index < characters.count
                continue
            }
            if character == "'" || character == "\"" {
                hasCode = true
                current.append(character); index += 1
                while index < characters.count {
                    current.append(characters[index])
                    if characters[index] == character {
                        if index + 1 < characters.count && characters[index + 1] == character {
                            current.append(characters[index + 1]); index += 2; continue
                        }
                        index += 1
                        break
                    }
                    index += 1
                }
                continue
            }
            if character == "$", let tag = dollarTag(characters, at: index) {
                hasCode = true
                current += tag
                index += tag.count
                while index < characters.count {
                    if characters[index] == "$", dollarTag(characters, at: index) == tag {
                        current += tag; index += tag.count; break
                    }
                    current.append(characters[index]); index += 1
                }
                continue
            }
            if character == ";" {
                flush()
                index += 1
                continue
            }
            if !character.isWhitespace { hasCode = true }
            current.append(character)
            index += 1
        }
        flush()
        return statements
    }

    /// `$tag$` or `$$` starting at `index`, if any.
    private static func dollarTag(_ characters: [Character], at index: Int) -> String? {
        var end = index + 1
        while end < characters.count, characters[end].isLetter || characters[end].isNumber || characters[end] == "_" {
            end += 1
        }
        guard end < characters.count, characters[end] == "$" else { return nil }
        if end > index + 1, characters[index + 1].isNumber { return nil }   // $1 is a parameter
        return String(characters[index...end])
    }
}
