@testable import RecoveryKit
import XCTest

/// The plain-dump reader a restore is built on: the same events however the stream is cut.
final class DumpScannerTests: XCTestCase {
    private let dump = #"""
        --
        -- PostgreSQL database dump
        --

        \restrict abc123

        SET statement_timeout = 0;
        SELECT pg_catalog.set_config('search_path', '', false);

        CREATE FUNCTION public.f() RETURNS text
            LANGUAGE sql
            AS $_$SELECT 'COPY x FROM stdin;
        \.
        ;'$_$;

        CREATE TABLE public.t (id integer, note text DEFAULT E'it\'s; -- not a comment');

        --
        -- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: postgres
        --

        COPY public.t (id, note) FROM stdin;
        1	a;b
        2	\\. not the end
        3	\N
        \\.	a first column that starts with an escaped backslash
        \.


        COPY public.empty (id) FROM stdin;
        \.


        SELECT pg_catalog.setval('public.s', 42, true);

        ALTER TABLE ONLY public.t
            ADD CONSTRAINT t_pkey PRIMARY KEY (id);

        \unrestrict abc123

        """#

    private enum Seen: Equatable {
        case statement(String), copyStart(String), rows(String), copyEnd
    }

    /// Events with adjacent row runs merged (how rows are cut into runs depends on the chunks).
    private func scan(_ text: String, chunk: Int) throws -> [Seen] {
        try scan(bytes: Array(text.utf8), chunk: chunk).seen
    }

    /// Events, and the statements with the settings they carry.
    private func scan(bytes: [UInt8], chunk: Int) throws -> (seen: [Seen], statements: [DumpScanner.Statement], rows: [UInt8]) {
        var seen: [Seen] = []
        var statements: [DumpScanner.Statement] = []
        var rows: [UInt8] = []
        let scanner = DumpScanner(backupID: "test") { event in
            switch event {
            case .statement(let statement):
                seen.append(.statement(statement.text))
                statements.append(statement)
            case .copyStart(let statement):
                seen.append(.copyStart(statement.text))
                statements.append(statement)
            case .copyRows(let bytes):
                rows.append(contentsOf: bytes)
                let text = String(decoding: bytes, as: UTF8.self)
                if case .rows(let before)? = seen.last { seen[seen.count - 1] = .rows(before + text) } else { seen.append(.rows(text)) }
            case .copyEnd: seen.append(.copyEnd)
            }
        }
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + chunk)
            try bytes[offset..<end].withUnsafeBytes { try scanner.write($0) }
            offset = end
        }
        try scanner.finish()
        return (seen, statements, rows)
    }

    func testEventsAreTheSameForEveryChunkSize() throws {
        // Session settings are not statements of their own: they travel with the statements after them.
        let expected: [Seen] = [
            .statement("CREATE FUNCTION public.f() RETURNS text\n    LANGUAGE sql\n    AS $_$SELECT 'COPY x FROM stdin;\n\\.\n;'$_$"),
            .statement("CREATE TABLE public.t (id integer, note text DEFAULT E'it\\'s; -- not a comment')"),
            .copyStart("COPY public.t (id, note) FROM stdin"),
            .rows("1\ta;b\n2\t\\\\. not the end\n3\t\\N\n\\\\.\ta first column that starts with an escaped backslash\n"),
            .copyEnd,
            .copyStart("COPY public.empty (id) FROM stdin"),
            .copyEnd,
            .statement("SELECT pg_catalog.setval('public.s', 42, true)"),
            .statement("ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id)"),
        ]
        for chunk in [1, 2, 3, 7, 64, 1 << 20] {
            XCTAssertEqual(try scan(dump, chunk: chunk), expected, "chunks of \(chunk) bytes")
        }
    }

    /// The backup's row counts: one per COPY block, its lines, however the stream is cut; names as
    /// the header's bytes (quotes undone, never decoded) in the dump's client_encoding.
    func testCopyBlocksAreCountedByLinesAndNamedByTheirBytes() throws {
        func blocks(_ bytes: [UInt8], chunk: Int) throws -> CopyRowCounts? {
            let builder = DumpContentsBuilder(backupID: "test")
            var offset = 0
            while offset < bytes.count {
                let end = min(bytes.count, offset + chunk)
                bytes[offset..<end].withUnsafeBytes { builder.write($0) }
                offset = end
            }
            _ = builder.finish()
            return builder.copyRowCounts
        }
        for chunk in [1, 2, 3, 7, 64, 1 << 20] {
            let counts = try XCTUnwrap(try blocks(Array(dump.utf8), chunk: chunk))
            XCTAssertEqual(counts.blocks.map { "\(String(decoding: $0.schema, as: UTF8.self)).\(String(decoding: $0.name, as: UTF8.self)):\($0.rows)" },
                           ["public.t:4", "public.empty:0"], "chunks of \(chunk) bytes")
            XCTAssertNil(counts.encoding)
        }
        let latin1 = Array("SET client_encoding = 'LATIN1';\nCOPY \"Odd \"\"S\"\".x\".\"caf".utf8) + [0xE9] + Array("\" (v) FROM stdin;\n1\n\n\\.\n".utf8)
        let counts = try XCTUnwrap(try blocks(latin1, chunk: 5))
        XCTAssertEqual(counts.encoding, "LATIN1")
        XCTAssertEqual(counts.blocks.map(\.schema), [Array("Odd \"S\".x".utf8)])
        XCTAssertEqual(counts.blocks.map(\.name), [Array("caf".utf8) + [0xE9]])
        XCTAssertEqual(counts.blocks.map(\.rows), [2], "an empty line is a row (a table without columns)")
    }

    func testEveryStatementCarriesTheSettingsInForceWhereItStood() throws {
        let dump = """
            SET default_tablespace = '';
            CREATE TABLE public.a (id int);
            COPY public.a (id) FROM stdin;
            1
            \\.
            SET default_tablespace = ts2;
            CREATE INDEX a_id ON public.a USING btree (id);
            SET default_tablespace = '';
            RESET default_tablespace;
            ALTER TABLE ONLY public.a ADD CONSTRAINT a_pkey PRIMARY KEY (id);

            """
        let statements = try scan(bytes: Array(dump.utf8), chunk: 5).statements
        XCTAssertEqual(statements.map(\.text), ["CREATE TABLE public.a (id int)", "COPY public.a (id) FROM stdin",
                                                "CREATE INDEX a_id ON public.a USING btree (id)",
                                                "ALTER TABLE ONLY public.a ADD CONSTRAINT a_pkey PRIMARY KEY (id)"])
        let tablespaces = statements.map { $0.settings["default_tablespace"].map { String(decoding: $0, as: UTF8.self) } }
        XCTAssertEqual(tablespaces, ["SET default_tablespace = ''", "SET default_tablespace = ''", "SET default_tablespace = ts2", nil])
    }

    func testStandardConformingStringsOffChangesHowStringsAreRead() throws {
        let dump = "SET standard_conforming_strings = off;\nCOMMENT ON TABLE t IS 'a\\'; b';\nSET standard_conforming_strings = on;\nCOMMENT ON TABLE t IS 'c\\';\n"
        XCTAssertEqual(try scan(dump, chunk: 3), [.statement("COMMENT ON TABLE t IS 'a\\'; b'"), .statement("COMMENT ON TABLE t IS 'c\\'")])
    }

    func testBytesOfStatementsAndRowsAreUntouched() throws {
        // LATIN1: SET client_encoding, a default 'Zoë', a row with ë and a CR LF line.
        let create: [UInt8] = Array("CREATE TABLE public.caf".utf8) + [0xE9] + Array(" (n text DEFAULT 'Zo".utf8) + [0xEB] + Array("')".utf8)
        let rows: [UInt8] = Array("Zo".utf8) + [0xEB, 0x0D, 0x0A] + Array("\\.x\n".utf8)
        let dump = Array("SET client_encoding = 'LATIN1';\n".utf8) + create + Array(";\nCOPY public.caf".utf8) + [0xE9]
            + Array(" (n) FROM stdin;\n".utf8) + rows + Array("\\.\r\n".utf8)
        for chunk in [1, 4, 1 << 16] {
            let scanned = try scan(bytes: dump, chunk: chunk)
            XCTAssertEqual(scanned.statements.first?.sql, create)
            XCTAssertEqual(scanned.statements.first?.settings["client_encoding"], Array("SET client_encoding = 'LATIN1'".utf8))
            XCTAssertEqual(scanned.rows, rows, "rows end at the line that is exactly \\. (CR LF allowed)")
        }
    }

    /// A row longer than a piece (a 200 MB document in production, 9 to 40 bytes here) is never held
    /// whole: it is handed over in pieces as its bytes arrive, and the pieces, the row counts and the
    /// end of the rows are the same wherever the stream is cut — right after a backslash of `\\`, inside
    /// `\.`, between CR and LF, inside the end-of-data line.
    func testRowsLongerThanAPieceAreHandedOverInPiecesWhereverTheStreamIsCut() throws {
        let longEscapes: String = String(repeating: "\\\\", count: 9) + "\\.\\N\\r\\n\\t" + String(repeating: "x\\\\", count: 5)
        let backslashes: String = String(repeating: "\\", count: 41)
        let lines: [String] = [
            "1\tshort\n",
            "2\t" + longEscapes + "\n",
            "\\\\.\tstarts with an escaped backslash and a dot, and is long\n",
            "3\tCR LF line, long enough to be cut into pieces\r\n",
            "\\\\.\n",
            "\n",
            "4\t" + backslashes + "\n",
        ]
        let rows: String = lines.joined()
        let ys: String = String(repeating: "y", count: 30)
        let head: String = "SET client_encoding = 'UTF8';\nCOPY public.t (id, note) FROM stdin;\n"
        let tail: String = "\\.\r\nCOPY public.u (id) FROM stdin;\n" + ys + "\n\\.\nSELECT pg_catalog.setval('public.s', 42, true);\n"
        let dump: [UInt8] = Array((head + rows + tail).utf8)
        let expectedRows: [UInt8] = Array((rows + ys + "\n").utf8)
        for piece in [4, 5, 8, 9, 16, 33] {
            for chunk in Array(1...24) + [37, 64, 1 << 16] {
                var events: [String] = []
                var handed: [UInt8] = []
                var largest = 0
                var counts: [Int64] = []
                var scanner: DumpScanner?
                scanner = DumpScanner(backupID: "test", rowPieceBytes: piece) { event in
                    switch event {
                    case .statement(let statement): events.append(statement.text)
                    case .copyStart(let statement): events.append(statement.text)
                    case .copyRows(let bytes):
                        handed.append(contentsOf: bytes)
                        largest = max(largest, bytes.count)
                    case .copyEnd:
                        events.append("end")
                        counts.append(scanner?.copyRowCount ?? -1)
                    }
                }
                var offset = 0
                while offset < dump.count {
                    let end = min(dump.count, offset + chunk)
                    try dump[offset..<end].withUnsafeBytes { try scanner?.write($0) }
                    offset = end
                }
                try scanner?.finish()
                let cut = "pieces of \(piece) bytes, chunks of \(chunk)"
                XCTAssertEqual(events, ["COPY public.t (id, note) FROM stdin", "end", "COPY public.u (id) FROM stdin", "end",
                                        "SELECT pg_catalog.setval('public.s', 42, true)"], cut)
                XCTAssertEqual(handed, expectedRows, cut)
                XCTAssertEqual(counts, [7, 1], cut)
                XCTAssertLessThanOrEqual(largest, max(piece, chunk), "\(cut): a row was held whole")
            }
        }
    }

    func testOtherMetaCommandsAreRefused() {
        XCTAssertThrowsError(try scan("SET a = 1;\n\\! rm -rf /\n", chunk: 5)) { error in
            XCTAssertEqual((error as? RecoveryError)?.code, .backupCorrupt)
            XCTAssertTrue("\(error)".contains("\\!"), "\(error)")
        }
    }

    /// Excerpts name a failed statement in errors and the run log: no literal of it, which may hold a secret.
    func testExcerptsNeverShowLiterals() {
        func excerpt(_ sql: String) -> String { DumpScanner.Statement(sql: Array(sql.utf8), settings: SessionSettings()).excerpt }
        let subscription = excerpt("CREATE SUBSCRIPTION s CONNECTION 'host=db password=Sup3rS3cret' PUBLICATION p WITH (connect = false);")
        XCTAssertEqual(subscription, "CREATE SUBSCRIPTION s CONNECTION …")
        XCTAssertFalse(excerpt("CREATE USER MAPPING FOR app SERVER s OPTIONS (password E'x\\' secret');").contains("secret"))
        XCTAssertFalse(excerpt("ALTER ROLE a PASSWORD $p$secret$p$;").contains("secret"))
        XCTAssertEqual(excerpt("CREATE TABLE public.t (\n    id integer\n);"), "CREATE TABLE public.t (…")
        XCTAssertEqual(excerpt("ALTER TABLE public.t OWNER TO app"), "ALTER TABLE public.t OWNER TO app")
    }

    func testADumpThatEndsInsideRowsIsRefused() {
        XCTAssertThrowsError(try scan("COPY public.t (id) FROM stdin;\n1\n2\n", chunk: 4)) { error in
            XCTAssertEqual((error as? RecoveryError)?.code, .backupCorrupt)
        }
    }

    func testTheTableOfACopyIsReadAsWritten() {
        XCTAssertEqual(ParallelLoader.copyTarget(Array("COPY public.t (id, note) FROM stdin".utf8)), Array("public.t".utf8))
        XCTAssertEqual(ParallelLoader.copyTarget(Array("COPY \"Sales; Q1\".\"order \"\"lines\"\" x\" (id) FROM stdin".utf8)),
                       Array("\"Sales; Q1\".\"order \"\"lines\"\" x\"".utf8))
        XCTAssertEqual(ParallelLoader.copyTarget([0x43, 0x4F, 0x50, 0x59, 0x20, 0x63, 0xE9, 0x20, 0x46]), [0x63, 0xE9])
    }

    func testIndexAndKeyBuildsAreGroupedByTable() {
        XCTAssertEqual(ParallelLoader.parallelKey("CREATE INDEX a ON public.t USING btree (x)"), "public.t")
        XCTAssertEqual(ParallelLoader.parallelKey("CREATE UNIQUE INDEX a ON ONLY public.p USING btree (x)"), "public.p")
        XCTAssertEqual(ParallelLoader.parallelKey("ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id)"), "public.t")
        XCTAssertNil(ParallelLoader.parallelKey("ALTER TABLE ONLY public.c\n    ADD CONSTRAINT c_fk FOREIGN KEY (p) REFERENCES public.t(id)"))
        XCTAssertNil(ParallelLoader.parallelKey("CREATE TRIGGER x BEFORE INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION f()"))
        XCTAssertNil(ParallelLoader.parallelKey("ALTER INDEX public.p_idx ATTACH PARTITION public.c_idx"))
    }
}
