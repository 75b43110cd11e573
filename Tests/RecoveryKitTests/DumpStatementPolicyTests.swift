@testable import RecoveryKit
import XCTest

/// Issue 21 finding 1: a dump is applied as it streams, before its sha256 is known, so only the
/// statements pg_dump writes may run; anything acting outside the scratch database is refused.
final class DumpStatementPolicyTests: XCTestCase {
    private func allows(_ sql: String, standardConformingStrings: Bool = true) -> Bool {
        DumpStatementPolicy.allows(Array(sql.utf8), standardConformingStrings: standardConformingStrings)
    }

    func testWhatPgDumpWritesIsAllowed() {
        for sql in [
            "SET statement_timeout = 0", "RESET ROLE", "SELECT pg_catalog.set_config('search_path', '', false)",
            "CREATE SCHEMA app", "CREATE EXTENSION IF NOT EXISTS plpgsql WITH SCHEMA pg_catalog", "COMMENT ON EXTENSION plpgsql IS 'x'",
            "CREATE TABLE public.t (\n    id integer NOT NULL\n)", "CREATE UNLOGGED TABLE public.u (id int)",
            "CREATE OR REPLACE VIEW public.v AS\n SELECT 1", "CREATE MATERIALIZED VIEW public.m AS SELECT 1 WITH NO DATA",
            "CREATE UNIQUE INDEX t_i ON public.t USING btree (id)", "CREATE CONSTRAINT TRIGGER x AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION f()",
            "CREATE USER MAPPING FOR app SERVER s OPTIONS (password 'x')", "CREATE DEFAULT CONVERSION public.c FOR 'LATIN1' TO 'UTF8' FROM f",
            "CREATE TEXT SEARCH CONFIGURATION public.c (PARSER = pg_catalog.\"default\")", "CREATE FOREIGN DATA WRAPPER w",
            "CREATE PROCEDURAL LANGUAGE plperl", "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id)",
            "ALTER TABLE public.t OWNER TO app", "ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT SELECT ON TABLES TO r",
            "ALTER LARGE OBJECT 16401 OWNER TO app", "ALTER INDEX public.p_i ATTACH PARTITION public.c_i",
            "COMMENT ON COLUMN public.t.id IS 'the id'", "SECURITY LABEL FOR dummy ON TABLE public.t IS 'x'",
            "GRANT ALL ON TABLE public.t TO app", "GRANT SELECT(id) ON TABLE public.t TO \"read only\"",
            "REVOKE ALL ON SCHEMA public FROM PUBLIC", "GRANT ALL ON LARGE OBJECT 16401 TO app", "GRANT USAGE ON FOREIGN SERVER s TO app",
            "SELECT pg_catalog.setval('public.t_id_seq', 3, true)", "SELECT pg_catalog.setval('public.\"Odd''s\"', 1, false)",
            "SELECT pg_catalog.lo_create('16401')", "SELECT pg_catalog.lo_open('16401', 131072)",
            "SELECT pg_catalog.lowrite(0, '\\x4142')", "SELECT pg_catalog.lo_close(0)",
            "SELECT * FROM pg_catalog.pg_restore_relation_stats(\n\t'version', '180000'::integer,\n\t'relpages', '-1'::integer,\n\t'most_common_freqs', '{0.5}'::real[]\n)",
            "REFRESH MATERIALIZED VIEW public.m", "BEGIN", "COMMIT", "COPY public.t (id) FROM stdin",
            "DROP TABLE IF EXISTS public.t", "INSERT INTO public.t VALUES (1)",
        ] {
            XCTAssertTrue(allows(sql), sql)
        }
    }

    func testStatementsActingOutsideTheScratchDatabaseAreRefused() {
        for sql in [
            "DROP DATABASE app", "DROP DATABASE IF EXISTS other", "CREATE DATABASE x", "ALTER DATABASE app RENAME TO y",
            "CREATE ROLE x SUPERUSER", "CREATE USER x", "CREATE USER mapping", "ALTER ROLE app SUPERUSER", "ALTER USER app PASSWORD 'x'",
            "DROP ROLE app", "CREATE GROUP g", "GRANT pg_read_server_files TO app", "GRANT \"on\" TO app", "REVOKE admin FROM app",
            "GRANT ALL ON DATABASE app TO x", "GRANT SET ON PARAMETER work_mem TO x", "ALTER SYSTEM SET fsync = off",
            "CREATE TABLESPACE t LOCATION '/tmp'", "DROP TABLESPACE t", "COPY public.t TO '/tmp/x'",
            "COPY public.t FROM PROGRAM 'rm -rf /'", "COPY (SELECT 1) TO PROGRAM 'x'", "DO $$BEGIN PERFORM 1; END$$", "CHECKPOINT",
            "SELECT pg_terminate_backend(1)", "SELECT 1", "SELECT pg_catalog.setval('s', 1, true), pg_sleep(10)",
            "SELECT pg_catalog.setval((SELECT 's'), 1, true)", "SELECT pg_catalog.set_config('search_path', current_setting('x'), false)",
            "SELECT pg_catalog.lo_export(16401, '/etc/passwd')", "SELECT pg_catalog.lo_import('/etc/passwd')",
            "VACUUM FULL", "ANALYZE", "CLUSTER", "REINDEX DATABASE app", "LISTEN x", "NOTIFY x", "LOAD 'lib'",
            "COMMENT ON DATABASE app IS 'x'", "COMMENT ON ROLE app IS 'x'", "SECURITY LABEL ON ROLE app IS 'x'",
            "ALTER TABLESPACE t OWNER TO x", "TRUNCATE public.t", "DELETE FROM public.t", "BEGIN; DROP DATABASE app",
            "/* c */ DROP DATABASE app", "SELECT pg_catalog.setval('unterminated",
        ] {
            XCTAssertFalse(allows(sql), sql)
        }
    }

    func testStringsAreReadAsTheSettingsInForceSayNotAsKeywords() {
        // With standard_conforming_strings off, \' does not end the string: the `, pg_sleep(1)` is inside it.
        XCTAssertTrue(allows("SELECT pg_catalog.setval('a\\', pg_sleep(1)', 1, true)", standardConformingStrings: false))
        XCTAssertFalse(allows("SELECT pg_catalog.setval('a\\', pg_sleep(1)', 1, true)", standardConformingStrings: true))
    }

    func testTheRefusalShowsNoLiteral() {
        let statement = DumpScanner.Statement(sql: Array("CREATE ROLE x LOGIN PASSWORD 'Sup3rS3cret'".utf8), settings: SessionSettings())
        let error = DumpStatementPolicy.refusal(statement, backupID: "20260101T000000Z")
        XCTAssertEqual(error.code, .backupCorrupt)
        XCTAssertTrue(error.message.hasPrefix("backup 20260101T000000Z contains a statement pg_dump never writes: CREATE ROLE x LOGIN PASSWORD"), error.message)
        XCTAssertFalse("\(error)".contains("Sup3rS3cret"))
    }

    func testTheScannerRefusesBeforeTheConsumerSeesIt() {
        var seen: [String] = []
        let scanner = DumpScanner(backupID: "b1") { event in
            if case .statement(let statement) = event { seen.append(statement.text) }
        }
        let dump = Array("CREATE TABLE public.t (id int);\nDROP DATABASE app;\nCREATE TABLE public.u (id int);\n".utf8)
        XCTAssertThrowsError(try dump.withUnsafeBytes { try scanner.write($0) }) { error in
            XCTAssertEqual((error as? RecoveryError)?.code, .backupCorrupt)
        }
        XCTAssertEqual(seen, ["CREATE TABLE public.t (id int)"])
    }
}
