import Foundation
@testable import RecoveryKit
import XCTest

/// The normaliser and the comparison behind schema verification, on pg_dump text (no server).
final class SchemaFingerprintTests: XCTestCase {
    /// Real `pg_dump --schema-only` output (PostgreSQL 15.18), shortened.
    static let dump = """
        --
        -- PostgreSQL database dump
        --

        \\restrict vQVIpo9zHCnk4hbxIQwI1JJDNLCQR7UfGiIcOl7IZVnKRPWqKylvPIRHjdpVe8X

        -- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
        -- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

        SET statement_timeout = 0;
        SET client_encoding = 'UTF8';
        SET standard_conforming_strings = on;
        SELECT pg_catalog.set_config('search_path', '', false);

        --
        -- Name: g(); Type: FUNCTION; Schema: public; Owner: postgres
        --

        CREATE FUNCTION public.g() RETURNS integer
            LANGUAGE plpgsql
            AS $$
        BEGIN

          -- a comment line
          RETURN 1;
        END $$;


        ALTER FUNCTION public.g() OWNER TO postgres;

        SET default_tablespace = '';

        SET default_table_access_method = heap;

        --
        -- Name: users; Type: TABLE; Schema: public; Owner: postgres
        --

        CREATE TABLE public.users (
            id bigint NOT NULL,
            email text NOT NULL
        );


        ALTER TABLE public.users OWNER TO postgres;

        --
        -- Name: TABLE users; Type: COMMENT; Schema: public; Owner: postgres
        --

        COMMENT ON TABLE public.users IS 'the users
        -- not a comment

        (a blank line above)';


        --
        -- Name: users users_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres
        --

        ALTER TABLE ONLY public.users
            ADD CONSTRAINT users_pkey PRIMARY KEY (id);


        SET default_tablespace = ts1;

        --
        -- Name: users_email; Type: INDEX; Schema: public; Owner: postgres; Tablespace: ts1
        --

        CREATE INDEX users_email ON public.users USING btree (email);


        --
        -- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: -; Owner: app
        --

        ALTER DEFAULT PRIVILEGES FOR ROLE app GRANT SELECT ON TABLES TO PUBLIC;


        --
        -- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: -; Owner: postgres
        --

        ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT SELECT ON TABLES TO app;


        --
        -- PostgreSQL database dump complete
        --

        \\unrestrict vQVIpo9zHCnk4hbxIQwI1JJDNLCQR7UfGiIcOl7IZVnKRPWqKylvPIRHjdpVe8X

        """

    private func fingerprint(_ text: String) -> SchemaFingerprint { SchemaFingerprint.of(dump: text) }

    private func digest(_ fingerprint: SchemaFingerprint, _ type: String, _ name: String) -> String? {
        fingerprint.objects.first { $0.type == type && $0.name == name }?.sha256
    }

    private func differences(_ before: String, _ after: String) -> [String] {
        fingerprint(before).differences(from: fingerprint(after)).map(\.description)
    }

    func testObjectsAreCutAtPgDumpHeaders() {
        let objects = fingerprint(Self.dump).objects
        XCTAssertEqual(objects.map { "\($0.type)|\($0.schema)|\($0.name)" }, [
            "SETTINGS|-|(before the first object)", "FUNCTION|public|g()", "TABLE|public|users", "COMMENT|public|TABLE users",
            "CONSTRAINT|public|users users_pkey", "INDEX|public|users_email",
            "DEFAULT ACL|-|DEFAULT PRIVILEGES FOR TABLES", "DEFAULT ACL|-|DEFAULT PRIVILEGES FOR TABLES",
        ])
        XCTAssertEqual(fingerprint(Self.dump).pgDumpVersion, "15.18 (Debian 15.18-0+deb12u1)")
        XCTAssertEqual(fingerprint(Self.dump).serverVersion, "15.18 (Debian 15.18-0+deb12u1)")
        XCTAssertEqual(Set(objects.map(\.sha256)).count, objects.count, "every object hashes its own text")
    }

    /// `ALTER TABLE child INHERIT parent` leaves child's columns in its own order; replaying pg_dump's
    /// `CREATE TABLE child (…) INHERITS (parent)` puts the parent's first (psql does the same), so an
    /// inheriting table's columns count as a set. Any other table's column order still counts.
    func testAnInheritingTablesColumnOrderDoesNotCountAndOthersDoes() {
        func table(_ columns: [String], inherits: Bool) -> String {
            "--\n-- Name: child; Type: TABLE; Schema: public; Owner: postgres\n--\n\nCREATE TABLE public.child (\n"
                + columns.map { "    \($0)" }.joined(separator: ",\n") + "\n)" + (inherits ? "\nINHERITS (public.parent);\n" : ";\n")
        }
        let source = ["b integer", "a integer", "c integer"], replayed = ["a integer", "b integer", "c integer"]
        XCTAssertEqual(fingerprint(table(source, inherits: true)).sha256, fingerprint(table(replayed, inherits: true)).sha256)
        XCTAssertNotEqual(fingerprint(table(source, inherits: false)).sha256, fingerprint(table(replayed, inherits: false)).sha256)
        XCTAssertNotEqual(fingerprint(table(source, inherits: true)).sha256, fingerprint(table(["a integer", "b text", "c integer"], inherits: true)).sha256,
                          "a changed column still counts")
    }

    func testRestrictKeysCommentsAndBlankLinesBetweenStatementsDoNotCount() {
        let other = Self.dump
            .replacingOccurrences(of: "vQVIpo9zHCnk4hbxIQwI1JJDNLCQR7UfGiIcOl7IZVnKRPWqKylvPIRHjdpVe8X", with: "AnotherRandomKeyEveryRun")
            .replacingOccurrences(of: "-- Dumped from database version 15.18", with: "-- Dumped from database version 15.19")
            .replacingOccurrences(of: "-- PostgreSQL database dump complete", with: "-- done")
            .replacingOccurrences(of: "\n\n\nALTER TABLE public.users", with: "\nALTER TABLE public.users")
            .replacingOccurrences(of: "\n\nALTER DEFAULT", with: "\n\n\n\n-- extra\n\nALTER DEFAULT")
        XCTAssertEqual(fingerprint(other).sha256, fingerprint(Self.dump).sha256)
        XCTAssertEqual(differences(Self.dump, other), [])
        XCTAssertNotEqual(fingerprint(Self.dump).sha256, fingerprint(Self.dump.replacingOccurrences(of: "bigint", with: "integer")).sha256)
    }

    func testCommentAndBlankLinesInsideQuotedTextAreContent() {
        let body = Self.dump.replacingOccurrences(of: "\n  -- a comment line\n", with: "\n")
        XCTAssertEqual(differences(Self.dump, body), ["function g() in schema public differs"])
        let blank = Self.dump.replacingOccurrences(of: "BEGIN\n\n", with: "BEGIN\n")
        XCTAssertEqual(differences(Self.dump, blank), ["function g() in schema public differs"])
        let literal = Self.dump.replacingOccurrences(of: "\n-- not a comment\n", with: "\n")
        XCTAssertEqual(differences(Self.dump, literal), ["comment TABLE users in schema public differs"])
        let literalBlank = Self.dump.replacingOccurrences(of: "not a comment\n\n(a blank", with: "not a comment\n(a blank")
        XCTAssertEqual(differences(Self.dump, literalBlank), ["comment TABLE users in schema public differs"])
    }

    func testQuotingFormsAreFollowed() {
        // Each form opens something a naive line filter would misread; the line after it must count.
        let forms = [
            "E'it\\'s\n-- inside\n'", "'it''s\n-- inside\n'", "\"odd\n-- name\"", "$_$ a $$ b\n-- inside\n$_$",
            "$outer$ $inner$ x $inner$\n-- inside\n$outer$", "/* a /* nested */\n-- inside\n*/ 1",
        ]
        for form in forms {
            let dump = "--\n-- Name: f; Type: FUNCTION; Schema: public; Owner: o\n--\n\nSELECT \(form);\n"
            let without = dump.replacingOccurrences(of: "-- inside\n", with: "").replacingOccurrences(of: "-- name", with: "")
            XCTAssertEqual(differences(dump, without), ["function f in schema public differs"], form)
        }
        // A dollar sign that opens nothing ($1, a$b) leaves the next line outside quotes.
        let plain = "--\n-- Name: f; Type: FUNCTION; Schema: public; Owner: o\n--\n\nSELECT $1, a$b;\n-- dropped\n"
        XCTAssertEqual(differences(plain, plain.replacingOccurrences(of: "-- dropped\n", with: "")), [])
        // With standard_conforming_strings off, a backslash escapes a quote in '…' too.
        let old = "SET standard_conforming_strings = off;\n--\n-- Name: f; Type: FUNCTION; Schema: public; Owner: o\n--\n\nSELECT 'a\\'\n-- in\n';\n"
        XCTAssertEqual(differences(old, old.replacingOccurrences(of: "-- in\n", with: "")), ["function f in schema public differs"])
    }

    func testDifferencesNameMissingExtraAndChangedObjects() {
        let broken = Self.dump
            .replacingOccurrences(of: "--\n-- Name: users_email; Type: INDEX; Schema: public; Owner: postgres; Tablespace: ts1\n--\n\nCREATE INDEX users_email ON public.users USING btree (email);\n", with: "")
            .replacingOccurrences(of: "    email text NOT NULL\n", with: "    email text NOT NULL,\n    extra integer\n")
            + "--\n-- Name: junk; Type: TABLE; Schema: public; Owner: postgres\n--\n\nCREATE TABLE public.junk (x integer);\n"
        let expected = fingerprint(Self.dump)
        let report = SchemaVerifier.compare(expected: expected, actual: fingerprint(broken), backupID: "b1", database: "app")
        XCTAssertFalse(report.ok)
        XCTAssertEqual(report.differences.map(\.description), [
            "index users_email in schema public is missing",
            "table junk in schema public is not in the backup",
            "table users in schema public differs",
        ])
        XCTAssertEqual(report.summary, "index users_email in schema public is missing; table junk in schema public is not in the backup; table users in schema public differs")
        XCTAssertNil(report.versionNote)
        XCTAssertTrue(SchemaVerifier.compare(expected: expected, actual: expected, backupID: "b1", database: "app").ok)
    }

    func testTablespacesCountThroughTheHeaderAndSetLinesStayWithTheirObject() {
        // Moving the index changes the index alone (its header names the tablespace).
        let moved = Self.dump.replacingOccurrences(of: "SET default_tablespace = ts1;\n", with: "")
            .replacingOccurrences(of: "; Tablespace: ts1", with: "")
        XCTAssertEqual(differences(Self.dump, moved), ["index users_email in schema public differs"])
        // Without the function, the SET before the table stays with the table: only the function is missing.
        let start = Self.dump.range(of: "--\n-- Name: g(); Type: FUNCTION")?.lowerBound
        let end = Self.dump.range(of: "ALTER FUNCTION public.g() OWNER TO postgres;\n")?.upperBound
        guard let start, let end else { return XCTFail("sample dump changed") }
        var withoutFunction = Self.dump
        withoutFunction.removeSubrange(start..<end)
        XCTAssertEqual(differences(Self.dump, withoutFunction), ["function g() in schema public is missing"])
        // pg_dump writes the access method once, before the first table; without that table it stands
        // before the next one, which must not look changed.
        let table = { (name: String) in "--\n-- Name: \(name); Type: TABLE; Schema: public; Owner: o\n--\n\nCREATE TABLE public.\(name) (x int);\n\n" }
        let set = "SET default_table_access_method = heap;\n\n"
        XCTAssertEqual(differences(set + table("a") + table("b"), set + table("b")), ["table a in schema public is missing"])
        // A table with another access method differs.
        let access = Self.dump.replacingOccurrences(of: "SET default_table_access_method = heap;", with: "SET default_table_access_method = columnar;")
        XCTAssertEqual(differences(Self.dump, access), ["table users in schema public differs"])
    }

    func testObjectsNamedAlikeAreMatchedByTheirText() {
        let first = "--\n-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: -; Owner: app\n--\n\nALTER DEFAULT PRIVILEGES FOR ROLE app GRANT SELECT ON TABLES TO PUBLIC;\n"
        let second = "--\n-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: -; Owner: postgres\n--\n\nALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT SELECT ON TABLES TO app;\n"
        XCTAssertEqual(fingerprint(first + second).sha256, fingerprint(second + first).sha256, "order does not count")
        XCTAssertEqual(differences(first + second, second + first), [])
        XCTAssertEqual(differences(first + second, first + second.replacingOccurrences(of: "TO app", with: "TO other")),
                       ["default acl DEFAULT PRIVILEGES FOR TABLES differs"])
        XCTAssertEqual(differences(first + second, first), ["default acl DEFAULT PRIVILEGES FOR TABLES is missing"])
    }

    func testEncodingsAreComparedAsBytes() {
        // The preamble's client_encoding is part of the schema: a LATIN1 database restored as UTF8 differs.
        XCTAssertEqual(differences(Self.dump, Self.dump.replacingOccurrences(of: "'UTF8'", with: "'LATIN1'")),
                       ["the dump's session settings (client_encoding, standard_conforming_strings) differ"])
        // Names in a LATIN1 dump (é = 0xE9, invalid UTF-8) are read as Latin-1; bytes are hashed untouched.
        var latin1 = Array("SET client_encoding = 'LATIN1';\n--\n-- Name: caf".utf8) + [0xE9]
        latin1 += Array("; Type: TABLE; Schema: public; Owner: o\n--\n\nCREATE TABLE public.caf".utf8) + [0xE9] + Array(" (x text DEFAULT 'Zo".utf8) + [0xEB] + Array("');\n".utf8)
        var normalizer = SchemaNormalizer()
        latin1.withUnsafeBytes { normalizer.write($0) }
        let result = normalizer.finish()
        XCTAssertEqual(result.objects.last?.name, "café")
        var utf8Garbled = latin1
        utf8Garbled.replaceSubrange((utf8Garbled.count - 5)...(utf8Garbled.count - 5), with: [0xC3, 0xAB])
        var other = SchemaNormalizer()
        utf8Garbled.withUnsafeBytes { other.write($0) }
        XCTAssertEqual(result.differences(from: other.finish()).map(\.description), ["table café in schema public differs"])
    }

    func testChunkBoundariesDoNotMatter() {
        let whole = fingerprint(Self.dump)
        for size in [1, 2, 7, 64] {
            var normalizer = SchemaNormalizer()
            let bytes = Array(Self.dump.utf8)
            var offset = 0
            while offset < bytes.count {
                let end = min(bytes.count, offset + size)
                bytes[offset..<end].withUnsafeBytes { normalizer.write($0) }
                offset = end
            }
            XCTAssertEqual(normalizer.finish(), whole, "chunks of \(size) bytes")
        }
        // No trailing newline: the last line still counts.
        XCTAssertNotEqual(fingerprint("SELECT 1;").sha256, fingerprint("SELECT 2;").sha256)
    }

    func testHeadersWithAwkwardNames() {
        XCTAssertEqual(SchemaNormalizer.parseHeader("-- Name: a; Type: b; Type: TABLE; Schema: s; x; Owner: o")?.name, "a; Type: b")
        XCTAssertEqual(SchemaNormalizer.parseHeader("-- Name: a; Type: b; Type: TABLE; Schema: s; x; Owner: o")?.schema, "s; x")
        XCTAssertEqual(SchemaNormalizer.parseHeader("-- Name: t; Type: FK CONSTRAINT; Schema: public; Owner: o; Tablespace: x")?.type, "FK CONSTRAINT")
        XCTAssertNil(SchemaNormalizer.parseHeader("-- Dumped by pg_dump version 15.18"))
        XCTAssertNil(SchemaNormalizer.parseHeader("-- Name: lower; Type: table; Schema: s; Owner: o"))
    }

    func testVersionDifferencesAreNamedInTheReport() {
        let expected = fingerprint(Self.dump)
        let actual = fingerprint(Self.dump.replacingOccurrences(of: "pg_dump version 15.18", with: "pg_dump version 16.4"))
        XCTAssertTrue(SchemaVerifier.compare(expected: expected, actual: actual, backupID: "b", database: "d").ok)
        let changed = fingerprint(Self.dump.replacingOccurrences(of: "pg_dump version 15.18", with: "pg_dump version 16.4")
            .replacingOccurrences(of: "bigint", with: "integer"))
        let report = SchemaVerifier.compare(expected: expected, actual: changed, backupID: "b", database: "d")
        XCTAssertEqual(report.versionNote?.contains("pg_dump 15.18 (Debian 15.18-0+deb12u1), this one with 16.4"), true, report.versionNote ?? "")
    }

    /// What pg_dump 17 and 18 write differently from 15 for the same schema (real output of each):
    /// `SET transaction_timeout = 0;`, and `ALTER VIEW|SEQUENCE|MATERIALIZED VIEW … OWNER TO` (16+)
    /// where 14 and 15 write `ALTER TABLE … OWNER TO`. Neither counts; `ALTER SEQUENCE … OWNED BY` does.
    func testWhatNewerPgDumpsWriteDifferentlyDoesNotCount() {
        let view = "--\n-- Name: v; Type: VIEW; Schema: public; Owner: postgres\n--\n\nCREATE VIEW public.v AS\n SELECT 1 AS one;\n\n\n"
        let old = Self.dump + view + "ALTER TABLE public.v OWNER TO postgres;\n"
        let new = Self.dump.replacingOccurrences(of: "SET statement_timeout = 0;\n", with: "SET statement_timeout = 0;\nSET transaction_timeout = 0;\n")
            + view + "ALTER VIEW public.v OWNER TO postgres;\n"
        XCTAssertEqual(fingerprint(old).sha256, fingerprint(new).sha256)
        XCTAssertEqual(differences(old, Self.dump + view + "ALTER VIEW public.v OWNER TO app;\n"), ["view v in schema public differs"])
        XCTAssertEqual(SchemaNormalizer.ownershipAsTable(Array("ALTER MATERIALIZED VIEW public.m OWNER TO postgres;\n".utf8)),
                       Array("ALTER TABLE public.m OWNER TO postgres;\n".utf8))
        XCTAssertNil(SchemaNormalizer.ownershipAsTable(Array("ALTER SEQUENCE public.s OWNED BY public.t.id;\n".utf8)))
    }

    /// A restore into a newer major: a server-rendered text that differs (a view body, as 16+ no
    /// longer qualifies one-table columns) is listed, not counted; a table that differs, or an object
    /// missing, still fails. Within one major nothing is tolerated.
    func testAcrossMajorsOnlyServerRenderedTextMayDiffer() {
        let view = "--\n-- Name: v; Type: VIEW; Schema: public; Owner: postgres\n--\n\nCREATE VIEW public.v AS\n SELECT users.id\n   FROM public.users;\n"
        let from14 = (Self.dump + view).replacingOccurrences(of: "database version 15.18", with: "database version 14.22")
        let into17 = (Self.dump + view.replacingOccurrences(of: "users.id", with: "id")).replacingOccurrences(of: "database version 15.18", with: "database version 17.10")
        let report = SchemaVerifier.compare(expected: fingerprint(from14), actual: fingerprint(into17), backupID: "b", database: "d")
        XCTAssertTrue(report.ok, report.summary)
        XCTAssertEqual(report.renderedDifferently?.map(\.description), ["view v in schema public differs"])
        XCTAssertTrue(report.summary.contains("1 written differently by the newer server: view v in schema public"), report.summary)

        let sameMajor = SchemaVerifier.compare(expected: fingerprint(from14), actual: fingerprint(into17.replacingOccurrences(of: "17.10", with: "14.22")),
                                               backupID: "b", database: "d")
        XCTAssertFalse(sameMajor.ok)
        let tableChanged = SchemaVerifier.compare(expected: fingerprint(from14), actual: fingerprint(into17.replacingOccurrences(of: "bigint", with: "integer")),
                                                  backupID: "b", database: "d")
        XCTAssertEqual(tableChanged.differences.map(\.description), ["table users in schema public differs"])
        let viewMissing = SchemaVerifier.compare(expected: fingerprint(from14), actual: fingerprint(Self.dump.replacingOccurrences(of: "15.18", with: "17.10")),
                                                 backupID: "b", database: "d")
        XCTAssertEqual(viewMissing.differences.map(\.description), ["view v in schema public is missing"])
    }

    func testALockTimeoutInTheStartupOptionsBecomesPgDumpsLockWait() {
        XCTAssertEqual(SchemaDump.lockWait(in: "-c lock_timeout=2000 -c statement_timeout=5000"), "2000")
        XCTAssertEqual(SchemaDump.lockWait(in: "-c statement_timeout=0 -clock_timeout=5s"), "5s")
        XCTAssertEqual(SchemaDump.lockWait(in: "--lock_timeout='1min'"), "1min")
        XCTAssertNil(SchemaDump.lockWait(in: "-c lock_timeout=0"), "0 means no limit")
        XCTAssertNil(SchemaDump.lockWait(in: "-c statement_timeout=100"))
        XCTAssertNil(SchemaDump.lockWait(in: nil))
    }

    func testManifestsWithoutAFingerprintStillDecode() throws {
        var manifest = BackupManifestTests.sample()
        XCTAssertNil(try BackupManifest.decode(try manifest.encoded(), source: "old").schemaFingerprint)
        manifest.schemaFingerprint = fingerprint(Self.dump)
        let text = String(decoding: try manifest.encoded(), as: UTF8.self)
        XCTAssertTrue(text.contains("\"schema_fingerprint\""), text)
        XCTAssertEqual(try BackupManifest.decode(try manifest.encoded(), source: "new"), manifest)
    }
}
