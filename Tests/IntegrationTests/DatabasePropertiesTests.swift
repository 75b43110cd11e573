import BackupStorage
import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// What belongs to a database rather than to its dump — encoding, locale, owner, privileges,
/// comment, settings, connection limit — survives a backup and the restore's swap (issue 14.3, 14.5).
final class DatabasePropertiesTests: IntegrationTestCase {

    override func setUpWithError() throws {
        try useCluster()
        useLocalRepository()
    }

    /// `pg_dump` of a database, schema and data, without the per-run `\restrict` tokens.
    private func dump(_ database: String) throws -> String {
        let pgDump = try PostgresTools().path(of: "pg_dump")
        let result = try TestProcess.shell("'\(pgDump)' '\(cluster.url(database: database))' | grep -v -e '^\\\\restrict' -e '^\\\\unrestrict'",
                                           environment: cluster.environment)
        XCTAssertEqual(result.status, 0, result.standardError)
        return result.standardOutput
    }

    private func encoding(_ database: String) throws -> String? {
        try cluster.connect().query("SELECT pg_encoding_to_char(encoding) || ' ' || datcollate || ' ' || datctype FROM pg_database WHERE datname = $1",
                                    [database]).scalar
    }

    private func createLatin1Database(prefix: String) throws -> String {
        let name = "\(prefix)_\(UInt32.random(in: 0...UInt32.max))"
        try cluster.connect().execute(script: "CREATE DATABASE \(name) ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
        return name
    }

    /// Reproduction: `createdb -E LATIN1 -T template0 --locale=C` and a table named `café` →
    /// `dbbackup` exit 12 ("could not import the requested snapshot"): the row counter read the name
    /// in the database's encoding as UTF-8 and asked for a table that does not exist.
    func testLatin1DatabaseWithANonASCIITableNameIsBackedUpAndCounted() throws {
        let source = try createLatin1Database(prefix: "latin")
        try cluster.connect(database: source).execute(script: """
            CREATE SCHEMA données;
            CREATE TABLE café (id int PRIMARY KEY, nom text DEFAULT 'Zoë');
            CREATE TABLE données.élève (id int);
            INSERT INTO café (id) SELECT g FROM generate_series(1, 3) g;
            INSERT INTO données.élève VALUES (1), (2);
            """)
        let common = ["--database-url", cluster.url(database: source), "--repo", repository!]
        let backup = try tool("dbbackup", common)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let id = backup.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        let manifest = try Catalog(store: try LocalStore(root: repository, create: false)).resolve(id)
        XCTAssertEqual(manifest.tables, [.init(schema: "données", name: "élève", rows: 2), .init(schema: "public", name: "café", rows: 3)])
        XCTAssertEqual(manifest.databaseProperties?.encoding, "LATIN1")
        XCTAssertEqual(manifest.databaseProperties?.collate, "C")
        let verify = try tool("dbverify", common + [id])
        XCTAssertEqual(verify.status, 0, verify.standardError + verify.standardOutput)
        XCTAssertTrue(verify.standardOutput.contains(#"public."café""#), "named as SQL reads it: " + verify.standardOutput)
    }

    /// Reproduction: a SQL_ASCII database whose table names hold bytes that are not UTF-8 (pg_dump backs
    /// it up; dbbackup failed with "invalid byte sequence for encoding UTF8" because the row counter
    /// asked the server to convert the names). Two names differing in one such byte stay two tables.
    func testSQLASCIIDatabaseWithNonUTF8TableNamesIsBackedUpRestoredAndVerified() throws {
        let source = "sqlascii_\(UInt32.random(in: 0...UInt32.max))"
        try cluster.connect().execute(script: "CREATE DATABASE \(source) ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
        let connection = try cluster.connect(database: source)
        try connection.execute(script: "SET client_encoding = SQL_ASCII")
        let named: (UInt8) -> [UInt8] = { Array("\"caf".utf8) + [$0] + Array("\"".utf8) }
        try connection.execute(bytes: Array("CREATE TABLE ".utf8) + named(0xE9) + Array(" (v text); CREATE TABLE ".utf8) + named(0xE8)
                                   + Array(" (v text); INSERT INTO ".utf8) + named(0xE9) + Array(" VALUES ('a'), ('b');".utf8))
        connection.close()
        let backup = try tool("dbbackup", ["--database-url", cluster.url(database: source), "--repo", repository!])
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let id = backup.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        let manifest = try Catalog(store: try LocalStore(root: repository, create: false)).resolve(id)
        XCTAssertEqual(manifest.tables, [.init(schema: "public", name: "caf\u{E8}", rows: 0), .init(schema: "public", name: "caf\u{E9}", rows: 2)],
                       "one character per byte that is not UTF-8, so the two names stay apart")

        let restored = "sqlascii_copy_\(UInt32.random(in: 0...UInt32.max))"
        let restore = try tool("dbrestore", [id, "--yes", "--repo", repository!, "--database-url", cluster.url(database: restored)])
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertEqual(try encoding(restored), "SQL_ASCII C C")
        XCTAssertEqual(try cluster.scalar("""
            SELECT string_agg(encode(convert_to(relname::text, 'SQL_ASCII'), 'hex'), ',' ORDER BY relname)
            FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace
            """, database: restored), "636166e8,636166e9", "the names' bytes come back as they were")
        let verify = try tool("dbverify", ["--database-url", cluster.url(database: restored), "--repo", repository!, id])
        XCTAssertEqual(verify.status, 0, verify.standardError + verify.standardOutput)
    }

    /// Reproduction: a LATIN1 database restored as UTF8 (the scratch database was created with the
    /// server's default encoding): the result differs from a psql replay of the same dump.
    func testLatin1DatabaseRestoresWithItsEncodingLikeAPsqlReplay() throws {
        let source = try createLatin1Database(prefix: "latin")
        try cluster.connect(database: source).execute(script: """
            CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL, note text);
            INSERT INTO people VALUES (1, 'Zoë', 'crème brûlée'), (2, 'Ærøskøbing', E'tab\\there'), (3, 'naïve façade', NULL);
            """)
        let backup = try tool("dbbackup", ["--database-url", cluster.url(database: source), "--repo", repository!])
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let id = backup.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)

        // The reference: the same dump replayed by psql into a database created as the source was.
        let replay = try createLatin1Database(prefix: "latin_replay")
        let psql = try PostgresTools().path(of: "psql")
        let replayed = try TestProcess.shell("gunzip -c '\(repository!)/backups/\(id)/dump.sql.gz' | '\(psql)' -X -q -v ON_ERROR_STOP=1 '\(cluster.url(database: replay))'",
                                             environment: cluster.environment)
        XCTAssertEqual(replayed.status, 0, replayed.standardError)

        let restored = "latin_copy_\(UInt32.random(in: 0...UInt32.max))"
        let restore = try tool("dbrestore", [id, "--yes", "--jobs", "2", "--repo", repository!, "--database-url", cluster.url(database: restored)])
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertEqual(try encoding(restored), "LATIN1 C C", "encoding and locale are the source's")
        XCTAssertEqual(try dump(restored), try dump(replay), "identical to the psql replay, schema and data")
        XCTAssertEqual(try cluster.scalar("SELECT string_agg(name, ',' ORDER BY id) FROM people", database: restored), "Zoë,Ærøskøbing,naïve façade")
    }

    /// A snapshot of what the swap must carry over, comparable between two databases.
    private func properties(_ database: String) throws -> [String] {
        let admin = try cluster.connect()
        let row = try admin.query("""
            SELECT pg_get_userbyid(d.datdba)::text, d.datconnlimit::text, coalesce(shobj_description(d.oid, 'pg_database'), '-'),
                   d.datallowconn::text, pg_encoding_to_char(d.encoding), d.datlocprovider::text, coalesce(d.daticulocale, '-')
            FROM pg_database d WHERE d.datname = $1
            """, [database]).rows[0]
        let acl = try admin.query("""
            SELECT coalesce(string_agg(item, ',' ORDER BY item), 'default') FROM (
                SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END || ':' || a.privilege_type || ':' || a.is_grantable AS item
                FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = $1) grants
            """, [database]).scalar ?? "default"
        // The tool's own marker (dbrecovery.marker) is not a property of the source: left out.
        let settings = try admin.query("""
            SELECT coalesce(string_agg(coalesce(r.rolname::text, '*') || ':'
                                       || (SELECT string_agg(c, '|') FROM unnest(s.setconfig) c WHERE c NOT LIKE 'dbrecovery.%'), ',' ORDER BY coalesce(r.rolname::text, '*')), '')
            FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole
            WHERE d.datname = $1
            """, [database]).scalar ?? ""
        return row.values.map { $0 ?? "-" } + [acl, settings]
    }

    /// Reproduction: owner, `REVOKE CONNECT … FROM PUBLIC`, comment, `ALTER DATABASE … SET`,
    /// per-role settings, the connection limit and the ICU locale were lost in the swap — the restored database was
    /// owned by the restoring user and anyone could connect again.
    func testOwnerPrivilegesCommentSettingsAndLimitSurviveTheSwap() throws {
        let suffix = UInt32.random(in: 0...UInt32.max)
        let owner = "owner_\(suffix)", reader = "reader_\(suffix)"
        let database = "props_\(suffix)"
        let admin = try cluster.connect()
        try admin.execute(script: "CREATE ROLE \(owner) LOGIN; CREATE ROLE \(reader) LOGIN")
        try admin.execute(script: "CREATE DATABASE \(database) OWNER \(owner) CONNECTION LIMIT 7 TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'fr-FR'")
        try admin.execute(script: """
            REVOKE CONNECT, TEMPORARY ON DATABASE \(database) FROM PUBLIC;
            GRANT CONNECT ON DATABASE \(database) TO \(reader);
            GRANT CREATE ON DATABASE \(database) TO \(reader) WITH GRANT OPTION;
            COMMENT ON DATABASE \(database) IS 'the app''s database; handle with care';
            ALTER DATABASE \(database) SET work_mem = '12MB';
            ALTER DATABASE \(database) SET search_path = "$user", public, "Odd, schema";
            ALTER ROLE \(reader) IN DATABASE \(database) SET statement_timeout = '5s';
            """)
        try cluster.connect(database: database).execute(script: "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
        let expected = try properties(database)
        XCTAssertTrue(expected[7].contains("\(reader):CONNECT:false") && !expected[7].contains("PUBLIC"), "\(expected)")
        XCTAssertEqual(Array(expected[5...6]), ["i", "fr-FR"], "an ICU database")
        let common = ["--database-url", cluster.url(database: database), "--repo", repository!]
        XCTAssertEqual(try tool("dbbackup", common).status, 0)

        // Drift after the backup, which the restore must undo.
        try admin.execute(script: """
            GRANT CONNECT ON DATABASE \(database) TO PUBLIC;
            COMMENT ON DATABASE \(database) IS NULL;
            ALTER DATABASE \(database) RESET ALL;
            ALTER DATABASE \(database) CONNECTION LIMIT -1;
            """)
        let plan = try tool("dbrestore", common + ["latest", "--dry-run"])
        XCTAssertEqual(plan.status, 0, plan.standardError)
        for shown in ["owner \(owner)", "\(reader) CREATE (grantable)", "\(reader) CONNECT", "connection limit 7", "work_mem=12MB", "settings for role \(reader)"] {
            XCTAssertTrue(plan.standardOutput.contains(shown), "dry-run shows \(shown): \(plan.standardOutput)")
        }
        let restore = try tool("dbrestore", common + ["latest", "--yes"])
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertEqual(try properties(database), expected)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM t", database: database), "100")
        // The settings work as settings, not as one odd string.
        XCTAssertEqual(try cluster.scalar("SHOW search_path", database: database), "\"$user\", public, \"Odd, schema\"")
    }

    /// A backup taken before properties were recorded restores, and says what it could not restore.
    func testOldManifestWithoutPropertiesRestoresWithAWarning() throws {
        let database = try cluster.createDatabase(prefix: "oldmanifest", seed: "CREATE TABLE t AS SELECT g FROM generate_series(1, 10) g")
        let common = ["--database-url", cluster.url(database: database), "--repo", repository!]
        let backup = try tool("dbbackup", common)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let id = backup.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        try editManifest(id) { XCTAssertNotNil($0.removeValue(forKey: "database_properties")) }

        let restore = try tool("dbrestore", common + [id, "--yes"])
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertTrue(restore.standardError.contains("did not record database properties: the owner, privileges, comment, settings, connection limit, encoding and locale"),
                      restore.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM t", database: database), "10")
    }
}
