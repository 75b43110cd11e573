import Foundation

/// Splits a SQL script into statements at top-level semicolons, respecting quotes, dollar quotes
/// and comments, so that a failure can name the exact statement.
public enum SQLStatements {
    /// The statements of `script`, trimmed, without empty ones and without comment-only ones.
    public static func split(_ script: String) -> [String] {
        var lexer = SQLLexer()
        var statements: [String] = []
        var utf8 = Array(script.utf8)
        utf8.append(UInt8(ascii: "\n"))
        utf8.withUnsafeBytes { text in
            var offset = 0
            while offset < text.count {
                let (statement, next) = lexer.next(text, from: offset)
                if let statement { statements.append(statement) }
                offset = next
            }
        }
        if let last = lexer.finish() { statements.append(last) }
        return statements
    }
}
