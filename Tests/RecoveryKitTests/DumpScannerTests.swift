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
        var seen: [Seen] = []
        let scanner = DumpScanner { event in
            switch event {
            case .statement(let sql): seen.append(.statement(sql))
            case .copyStart(let sql): seen.append(.copyStart(sql))
            case .copyRows(let bytes):
                let text = String(decoding: bytes, as: UTF8.self)
                if case .rows(let before)? = seen.last { seen[seen.count - 1] = .rows(before + text) } else { seen.append(.rows(text)) }
            case .copyEnd: seen.append(.copyEnd)
            }
        }
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + chunk)
            try bytes[offset..<end].withUnsafeBytes { try scanner.write($0) }
            offset = end
        }
        try scanner.finish()
        return seen
    }

    func testEventsAreTheSameForEveryChunkSize() throws {
        let expected: [Seen] = [
            .statement("SET statement_timeout = 0"),
            .statement("SELECT pg_catalog.set_config('search_path', '', false)"),
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

    func testOtherMetaCommandsAreRefused() {
        XCTAssertThrowsError(try scan("SET a = 1;\n\\! rm -rf /\n", chunk: 5)) { error in
            XCTAssertEqual((error as? RecoveryError)?.code, .backupCorrupt)
            XCTAssertTrue("\(error)".contains("\\!"), "\(error)")
        }
    }

    func testADumpThatEndsInsideRowsIsRefused() {
        XCTAssertThrowsError(try scan("COPY public.t (id) FROM stdin;\n1\n2\n", chunk: 4)) { error in
            XCTAssertEqual((error as? RecoveryError)?.code, .backupCorrupt)
        }
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
