import Foundation

/// Splits a SQL script into statements where psql would (`SQLLexer`), so that a failure can name
/// the exact statement.
public enum SQLStatements {
    /// The statements of `script`, trimmed, without their semicolons, without empty ones and
    /// without comment-only ones. A backslash is an ordinary character here: migrations are SQL,
    /// not psql scripts.
    public static func split(_ script: String) -> [String] {
        SQLLexer.statements(in: Array(script.utf8)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The statements of `script` as bytes, exactly as they would reach the server (no decoding:
    /// the script may be in any server encoding).
    public static func split(bytes script: [UInt8]) -> [[UInt8]] {
        SQLLexer.statements(in: script)
    }

    /// The statements of `script` as psql splits them on a server whose `standard_conforming_strings`
    /// is `standardConformingStrings` when the script starts (off: `'it\'s'` is one string).
    public static func split(_ script: String, standardConformingStrings: Bool) -> [String] {
        SQLLexer.statements(in: Array(script.utf8), standardConformingStrings: standardConformingStrings)
            .map { String(decoding: $0, as: UTF8.self) }
    }
}
