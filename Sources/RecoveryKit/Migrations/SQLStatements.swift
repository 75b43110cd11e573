import Foundation

/// Splits a SQL script into statements where psql would (`SQLLexer`), so that a failure can name
/// the exact statement. Like psql, the lines after a `COPY … FROM STDIN` are its rows, up to a
/// line `\.`: they are never read as SQL.
public enum SQLStatements {
    /// One statement of a script, and the rows a `COPY … FROM STDIN` reads from the script.
    public struct Statement: Sendable, Equatable {
        /// Trimmed, without its semicolon.
        public var sql: String
        /// For `COPY … FROM STDIN`: its rows as they stand in the script (nil for other statements).
        public var copyRows: [UInt8]?
    }

    /// The statements of `script`, trimmed, without their semicolons, without empty ones and
    /// without comment-only ones. A backslash is an ordinary character here: migrations are SQL,
    /// not psql scripts.
    public static func split(_ script: String) -> [String] {
        statements(script).map(\.sql)
    }

    /// The statements of `script` as bytes, exactly as they would reach the server (no decoding:
    /// the script may be in any server encoding).
    public static func split(bytes script: [UInt8]) -> [[UInt8]] {
        SQLLexer.script(script, copiesFromStdin: copiesFromStdin).map(\.sql)
    }

    /// The statements of `script`, with each COPY's rows, as psql splits them on a server whose
    /// `standard_conforming_strings` is `standardConformingStrings` when the script starts (off:
    /// `'it\'s'` is one string).
    public static func statements(_ script: String, standardConformingStrings: Bool = true) -> [Statement] {
        SQLLexer.script(Array(script.utf8), standardConformingStrings: standardConformingStrings, copiesFromStdin: copiesFromStdin)
            .map { Statement(sql: String(decoding: $0.sql, as: UTF8.self), copyRows: $0.copyRows) }
    }

    private static func copiesFromStdin(_ statement: [UInt8]) -> Bool {
        TransactionControl.copiesFromStdin(String(decoding: statement, as: UTF8.self))
    }
}
