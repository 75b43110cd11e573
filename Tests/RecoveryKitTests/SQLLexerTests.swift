@testable import RecoveryKit
import XCTest

/// psql's splitting rules (`psqlscan.l`), one test per rule, on bytes.
final class SQLLexerTests: XCTestCase {
    /// Statements of `script` as psql would split it, decoded for comparison.
    private func split(_ script: String, standardConformingStrings: Bool = true, metaCommands: Bool = true) -> [String] {
        split(bytes: Array(script.utf8), standardConformingStrings: standardConformingStrings, metaCommands: metaCommands)
            .map { String(decoding: $0, as: UTF8.self) }
    }

    private func split(bytes script: [UInt8], standardConformingStrings: Bool = true, metaCommands: Bool = true) -> [[UInt8]] {
        var lexer = SQLLexer(recognizesMetaCommands: metaCommands)
        lexer.standardConformingStrings = standardConformingStrings
        var statements: [[UInt8]] = []
        var lines = script.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        if script.last == UInt8(ascii: "\n") { lines.removeLast() }
        for line in lines {
            Array(line).withUnsafeBytes { line in
                guard lexer.startLine(empty: line.isEmpty) else { return }
                var offset = 0
                while offset < line.count {
                    let (piece, next) = lexer.next(in: line, from: offset)
                    switch piece {
                    case .statement(let sql)?: statements.append(sql)
                    case .metaCommand(let range)?: statements.append(Array("META:".utf8) + Array(line[range]))
                    case nil: break
                    }
                    offset = next
                }
            }
        }
        if let last = lexer.finish() { statements.append(last) }
        return statements
    }

    func testASemicolonInsideParenthesesDoesNotEndTheStatement() {
        XCTAssertEqual(split("CREATE RULE r AS ON INSERT TO a DO ALSO (INSERT INTO b VALUES (new.x); INSERT INTO c VALUES (1));\nSELECT 1;"), [
            "CREATE RULE r AS ON INSERT TO a DO ALSO (INSERT INTO b VALUES (new.x); INSERT INTO c VALUES (1))",
            "SELECT 1",
        ])
        // pg_dump's layout of a multi-action rule, over several lines.
        XCTAssertEqual(split("CREATE RULE r AS\n    ON INSERT TO public.a DO ( INSERT INTO public.b (x)\n  VALUES (new.x);\n INSERT INTO public.c (x)\n  VALUES (new.x);\n);\nSELECT 2;").count, 2)
        // An unbalanced closing parenthesis does not go below zero.
        XCTAssertEqual(split("SELECT 1);SELECT 2;"), ["SELECT 1)", "SELECT 2"])
    }

    func testBeginAtomicBodiesOfFunctionsAndProceduresAreOneStatement() {
        XCTAssertEqual(split("CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT a + 1; END; SELECT 2;"), [
            "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT a + 1; END",
            "SELECT 2",
        ])
        // As pg_dump writes it.
        XCTAssertEqual(split("""
            CREATE FUNCTION public.f(a integer) RETURNS integer
                LANGUAGE sql
                BEGIN ATOMIC
             SELECT (f.a + 1);
            END;
            SELECT 2;
            """), ["CREATE FUNCTION public.f(a integer) RETURNS integer\n    LANGUAGE sql\n    BEGIN ATOMIC\n SELECT (f.a + 1);\nEND", "SELECT 2"])
        // CASE … END inside the body; OR REPLACE; PROCEDURE; any letter case.
        XCTAssertEqual(split("create or replace procedure p() language sql begin atomic select case when true then 1 else 2 end; insert into t values (1); end; SELECT 3;").count, 2)
        XCTAssertEqual(split("CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE 1 WHEN 1 THEN 2 END; END;SELECT 4;").count, 2)
        // CASE outside a BEGIN is not counted; BEGIN inside parentheses is not counted.
        XCTAssertEqual(split("CREATE FUNCTION f() RETURNS int RETURN CASE WHEN true THEN 1 END; SELECT 1;").count, 2)
        XCTAssertEqual(split("CREATE FUNCTION f(begin int) RETURNS int RETURN 1; SELECT 1;").count, 2)
        // psql's heuristic, kept as it is: a bare `begin` outside parentheses opens a block.
        XCTAssertEqual(split("CREATE FUNCTION f(begin int) RETURNS int RETURN begin; SELECT 1;").count, 1)
        // Only CREATE [OR REPLACE] FUNCTION|PROCEDURE open a block: a transaction's BEGIN does not.
        XCTAssertEqual(split("BEGIN; SELECT 1; END;"), ["BEGIN", "SELECT 1", "END"])
        XCTAssertEqual(split("CREATE TABLE begin (x int); SELECT 1;").count, 2)
        // A dollar-quoted PL/pgSQL body has no identifiers for the lexer.
        XCTAssertEqual(split("CREATE FUNCTION g() RETURNS int LANGUAGE plpgsql AS $$BEGIN RETURN 1; END$$; SELECT 1;").count, 2)
    }

    func testDollarQuotes() {
        XCTAssertEqual(split("SELECT $fn$ a; $$ ; $$ $x$;$x$ $fn$; SELECT $_$;$_$;"), ["SELECT $fn$ a; $$ ; $$ $x$;$x$ $fn$", "SELECT $_$;$_$"])
        // `$junk$tag$`: the tag closes even when glued to another delimiter.
        XCTAssertEqual(split("SELECT $tag$ x $junk$tag$; SELECT 1;"), ["SELECT $tag$ x $junk$tag$", "SELECT 1"])
        // `$1` is a parameter, `a$b$c` an identifier, `$a` (no closing dollar) no quote.
        XCTAssertEqual(split("SELECT $1, a$b$c; SELECT $a;"), ["SELECT $1, a$b$c", "SELECT $a"])
        // Across lines, empty lines kept inside the quote.
        XCTAssertEqual(split("SELECT $$a;\n\nb$$;"), ["SELECT $$a;\n\nb$$"])
    }

    func testStringsWithDoublingAndEscapes() {
        XCTAssertEqual(split("SELECT 'it''s; fine'; SELECT 2;"), ["SELECT 'it''s; fine'", "SELECT 2"])
        XCTAssertEqual(split("SELECT E'it\\'s; x', e'\\\\'; SELECT 2;"), ["SELECT E'it\\'s; x', e'\\\\'", "SELECT 2"])
        // In a standard string a backslash is an ordinary character.
        XCTAssertEqual(split("SELECT 'a\\'; SELECT 2;"), ["SELECT 'a\\'", "SELECT 2"])
        // U&'…' takes no backslash escapes; U&"…" is an identifier.
        XCTAssertEqual(split("SELECT U&'d\\0061t\\'; SELECT u&\"a;\"\"b\";"), ["SELECT U&'d\\0061t\\'", "SELECT u&\"a;\"\"b\""])
        // B'…', X'…', N'…'.
        XCTAssertEqual(split("SELECT B'1;0', x'A;F', N'n;'; SELECT 2;").count, 2)
        // A prefix letter inside an identifier is not a prefix.
        XCTAssertEqual(split("SELECT type'a\\'; SELECT 2;"), ["SELECT type'a\\'", "SELECT 2"])
        // A number followed by E: realfail gives the E back, so E'…' takes escapes.
        XCTAssertEqual(split("SELECT 1e'\\';'; SELECT 2;"), ["SELECT 1e'\\';'", "SELECT 2"])
    }

    func testStandardConformingStringsOff() {
        XCTAssertEqual(split("SELECT 'a\\'; b'; SELECT 2;", standardConformingStrings: false), ["SELECT 'a\\'; b'", "SELECT 2"])
    }

    func testQuotedIdentifiers() {
        XCTAssertEqual(split("CREATE TABLE \"a;b\" (\"x\"\"; y\" int, \"--\" int, \"/*\" int); SELECT 1;"),
                       ["CREATE TABLE \"a;b\" (\"x\"\"; y\" int, \"--\" int, \"/*\" int)", "SELECT 1"])
    }

    func testCommentsBeforeAStatementDroppedInsideKept() {
        XCTAssertEqual(split("/* a /* b; */ c; */ SELECT 1; SELECT 2 /* ; */;"), ["/* a /* b; */ c; */ SELECT 1", "SELECT 2 /* ; */"])
        XCTAssertEqual(split("-- before\nSELECT 1 -- ; not here\n, 2; -- after\n"), ["SELECT 1 -- ; not here\n, 2"])
        XCTAssertEqual(split("SELECT 1 +-- comment\n 2;"), ["SELECT 1 +-- comment\n 2"])
        // Statements of nothing but comments are not statements.
        XCTAssertEqual(split("/* only; */;\n-- only\n;"), [])
        XCTAssertEqual(split("SELECT '--', '/*';"), ["SELECT '--', '/*'"])
    }

    func testLinesAreJoinedAsPsqlJoinsThem() {
        // Leading whitespace dropped; empty lines outside quotes skipped; CR kept.
        XCTAssertEqual(split("  \n\tSELECT\n\n  1\r\n;"), ["SELECT\n  1"])
        XCTAssertEqual(split("SELECT 'a\r\nb';"), ["SELECT 'a\r\nb'"])
        // A string continues after a newline only within a line (psql never sees the \n between lines).
        XCTAssertEqual(split("SELECT 'a'\r'b;';"), ["SELECT 'a'\r'b;'"])
        // A last statement without a semicolon is sent at the end, as psql sends it.
        XCTAssertEqual(split("SELECT 1; SELECT 2"), ["SELECT 1", "SELECT 2"])
    }

    func testMetaCommands() {
        XCTAssertEqual(split("\\restrict abc\nSELECT 1;\n\\unrestrict abc\n"), ["META:\\restrict abc", "SELECT 1", "META:\\unrestrict abc"])
        // `\;` is a semicolon that does not end the statement.
        XCTAssertEqual(split("SELECT 1 \\; SELECT 2;"), ["SELECT 1 ; SELECT 2"])
        // Inside quotes a backslash is data; migrations have no meta-commands at all.
        XCTAssertEqual(split("SELECT '\\x';"), ["SELECT '\\x'"])
        XCTAssertEqual(split("SELECT 1 \\ 2;", metaCommands: false), ["SELECT 1 \\ 2"])
    }

    func testBytesAreNeverDecoded() {
        // LATIN1: 'Zoë' and a table named café; a high byte is an identifier character, so
        // `café$x$` is one identifier, not the start of a dollar quote.
        let latin1: [UInt8] = Array("CREATE TABLE caf".utf8) + [0xE9] + Array("$x$ (n text DEFAULT 'Zo".utf8) + [0xEB]
            + Array("');\nSELECT 1;".utf8)
        let statements = split(bytes: latin1)
        XCTAssertEqual(statements.count, 2)
        XCTAssertEqual(statements.first, Array(latin1.prefix(latin1.count - ";\nSELECT 1;".utf8.count)))
        // Invalid UTF-8 of every kind passes through byte for byte.
        let garbage: [UInt8] = Array("SELECT '".utf8) + [0xFF, 0xC3, 0x28, 0x80, 0xFE] + Array("';".utf8)
        XCTAssertEqual(split(bytes: garbage), [Array(garbage.dropLast())])
    }

    func testMigrationsSplitTheSameWay() {
        XCTAssertEqual(SQLStatements.split("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\nCREATE RULE r AS ON INSERT TO a DO ALSO (NOTIFY a; NOTIFY b);"), [
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
            "CREATE RULE r AS ON INSERT TO a DO ALSO (NOTIFY a; NOTIFY b)",
        ])
        XCTAssertEqual(SQLStatements.split(bytes: [0x53, 0x45, 0x4C, 0x45, 0x43, 0x54, 0x20, 0x27, 0xE9, 0x27, 0x3B]),
                       [[0x53, 0x45, 0x4C, 0x45, 0x43, 0x54, 0x20, 0x27, 0xE9, 0x27]])
    }

    /// psql reads the lines after `COPY … FROM STDIN` as its rows, up to a line `\.`: semicolons,
    /// quotes and backslashes in them are data, and a statement after the COPY on its line runs after it.
    func testTheLinesAfterCopyFromStdinAreItsRows() {
        let script = "CREATE TABLE t (a text);\ncopy t (a) from stdin with (format text); SELECT 'after';\n"
            + "x; y\n'quote\n\\N\n$$\n\\.\nSELECT 2;\nCOPY t FROM STDIN;\nlast row, no \\. line\n"
        XCTAssertEqual(SQLStatements.statements(script), [
            .init(sql: "CREATE TABLE t (a text)"),
            .init(sql: "copy t (a) from stdin with (format text)", copyRows: Array("x; y\n'quote\n\\N\n$$\n".utf8)),
            .init(sql: "SELECT 'after'"),
            .init(sql: "SELECT 2"),
            .init(sql: "COPY t FROM STDIN", copyRows: Array("last row, no \\. line\n".utf8)),
        ])
        XCTAssertEqual(SQLStatements.statements("COPY t FROM STDIN").first?.copyRows, [], "a COPY at the end reads no rows")
        XCTAssertEqual(SQLStatements.split("COPY (SELECT 1 FROM stdin) TO STDOUT;\nSELECT 1;"), ["COPY (SELECT 1 FROM stdin) TO STDOUT", "SELECT 1"],
                       "a COPY out reads no rows")
        XCTAssertFalse(TransactionControl.copiesFromStdin("COPY t (stdin) TO STDOUT"))
        XCTAssertTrue(TransactionControl.copiesFromStdin("/* c */ COPY \"from\" (stdout, x) FROM STDIN WITH (FORMAT csv)"))
    }

    /// A database or role with `standard_conforming_strings = off`: psql reads the server's setting
    /// and lexes `'…'` with backslash escapes from the first line; a SET changes it, RESET returns to it.
    func testScriptsStartWithTheServersStandardConformingStrings() {
        let script = "INSERT INTO t SELECT 'x\\'; y';\nSET search_path = public;\nSELECT 'a\\'; b';\n"
            + "SET standard_conforming_strings = on;\nSELECT 'c\\';\nRESET standard_conforming_strings;\nSELECT 'd\\'; e';\n"
        XCTAssertEqual(SQLStatements.statements(script, standardConformingStrings: false).map(\.sql), [
            "INSERT INTO t SELECT 'x\\'; y'", "SET search_path = public", "SELECT 'a\\'; b'",
            "SET standard_conforming_strings = on", "SELECT 'c\\'", "RESET standard_conforming_strings", "SELECT 'd\\'; e'",
        ])
        XCTAssertEqual(SQLStatements.statements("SELECT 'x\\'; y';", standardConformingStrings: true).map(\.sql), ["SELECT 'x\\'", "y';"], "on: the string ends at the quote after the backslash")
    }
}
