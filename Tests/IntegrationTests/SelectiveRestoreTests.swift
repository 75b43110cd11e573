import BackupStorage
import Foundation
import Gzip
@testable import RecoveryKit
import TestSupport
import XCTest

/// Issue 18: a backup's contents, its table of contents and access points.
final class SelectiveRestoreTests: IntegrationTestCase {
    /// Small access-point spacing, so that a small test dump has several.
    let environment = ["DBRECOVERY_TOC_ACCESS_POINT_KB": "64"]

    override func setUpWithError() throws {
        // Three schemas with keys between them; text that looks like pg_dump's headers inside rows
        // and inside a function body must not be taken for objects.
        try useDatabase(prefix: "selective", seed: """
            CREATE SCHEMA crm; CREATE SCHEMA sales; CREATE SCHEMA audit;
            CREATE TABLE crm.customers (id bigint PRIMARY KEY, name text NOT NULL);
            CREATE TABLE sales.orders (id serial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES crm.customers, total numeric(10,2) NOT NULL,
                                       note text, CHECK (total >= 0));
            CREATE INDEX orders_customer ON sales.orders (customer_id);
            CREATE TABLE sales.order_lines (order_id int REFERENCES sales.orders, line int, amount numeric, PRIMARY KEY (order_id, line));
            CREATE TABLE audit.events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, what text);
            CREATE FUNCTION audit.note() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
            -- Name: fake_in_function; Type: TABLE; Schema: sales; Owner: nobody
              INSERT INTO audit.events (what) VALUES (TG_OP || ' ' || TG_TABLE_NAME); RETURN NEW;
            END $$;
            CREATE TRIGGER orders_audit AFTER INSERT ON sales.orders FOR EACH ROW EXECUTE FUNCTION audit.note();
            CREATE VIEW sales.big_orders AS SELECT * FROM sales.orders WHERE total > 900;
            COMMENT ON TABLE sales.orders IS 'one row per order';
            INSERT INTO crm.customers SELECT g, 'customer ' || g FROM generate_series(1, 500) g;
            INSERT INTO sales.orders (customer_id, total, note)
                SELECT 1 + g % 500, (g % 1000)::numeric, repeat('padding so the dump spans several access points ', 4) FROM generate_series(1, 20000) g;
            INSERT INTO sales.orders (customer_id, total, note) VALUES (1, 1, E'\\n-- Name: fake_in_rows; Type: TABLE; Schema: sales; Owner: nobody\\n');
            INSERT INTO sales.order_lines SELECT id, 1, total FROM sales.orders;
            """)
        useLocalRepository()
    }

    override var toolEnvironment: [String: String] { environment }

    private func contents(_ arguments: [String]) throws -> [String: Any] {
        let result = try TestProcess.tool("dbrestore", ["contents"] + arguments + ["--json"], cluster: cluster)
        XCTAssertEqual(result.status, 0, result.standardError)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any], result.standardOutput)
    }

    private func gunzip(_ path: String) throws -> [UInt8] {
        var plain: [UInt8] = []
        let decompressor = try GzipDecompressor { plain.append(contentsOf: $0) }
        try decompressor.write(Array(try Data(contentsOf: URL(fileURLWithPath: path))))
        try decompressor.finish()
        return plain
    }

    private func names(_ listing: [String: Any], _ key: String) -> Set<String> {
        Set(((listing[key] as? [[String: Any]]) ?? []).map { "\($0["schema"] as? String ?? "").\($0["name"] as? String ?? "")" })
    }

    func testContentsListsTheBackupFromItsTableOfContents() throws {
        let id = try backup()
        let folder = "\(repository!)/backups/\(id)"
        let manifest = try Catalog(store: try LocalStore(root: repository, create: false)).resolve(id)
        XCTAssertEqual(manifest.files.map(\.name), ["dump.sql.gz", "toc.json.gz"], "the table of contents is listed in the manifest with its checksum")
        XCTAssertEqual(try TestProcess.tool("dbverify", ["--files", id, "--repo", repository]).status, 0, "dbverify checks the table of contents too")

        let listing = try contents([id, "--repo", repository])
        XCTAssertEqual(listing["source"] as? String, "table-of-contents")
        XCTAssertTrue(Set(listing["schemas"] as? [String] ?? []).isSuperset(of: ["audit", "crm", "sales"]), "\(listing["schemas"] ?? "")")
        let tables = try XCTUnwrap(listing["tables"] as? [[String: Any]])
        var rows: [String: Int64] = [:], sizes: [String: Int64] = [:]
        for table in tables {
            let name = "\(table["schema"] as? String ?? "").\(table["name"] as? String ?? "")"
            rows[name] = (table["rows"] as? NSNumber)?.int64Value
            sizes[name] = (table["dump_bytes"] as? NSNumber)?.int64Value
        }
        XCTAssertEqual(rows, ["crm.customers": 500, "sales.orders": 20001, "sales.order_lines": 20001, "audit.events": 20001])
        XCTAssertGreaterThan(sizes["sales.orders"] ?? 0, 20001 * 200, "orders' rows take most of the dump")
        XCTAssertLessThan(sizes["crm.customers"] ?? 0, sizes["sales.orders"] ?? 0)
        XCTAssertTrue(names(listing, "sequences").isSuperset(of: ["sales.orders_id_seq", "audit.events_id_seq"]), "\(names(listing, "sequences"))")
        XCTAssertEqual(names(listing, "functions"), ["audit.note()"])
        XCTAssertEqual(names(listing, "views"), ["sales.big_orders"])
        let other = try XCTUnwrap(listing["other"] as? [String: Any])
        XCTAssertTrue(names(other, "INDEX").contains("sales.orders_customer"), "\(other.keys)")
        XCTAssertTrue(names(other, "FK CONSTRAINT").contains("sales.orders orders_customer_id_fkey"))
        XCTAssertTrue(names(other, "TRIGGER").contains("sales.orders orders_audit"))
        let everything = tables.map { "\($0["name"] ?? "")" } + other.values.flatMap { ($0 as? [[String: Any]] ?? []).map { "\($0["name"] ?? "")" } }
        XCTAssertFalse(everything.contains { $0.hasPrefix("fake_in") }, "a header-like line inside rows or a function body is not an object")
        XCTAssertGreaterThan((listing["access_points"] as? Int) ?? 0, 3)

        // The offsets are right: each entry starts at its header in the dump, and each access
        // point decodes on its own to the dump from its offset on, matching its segment digest.
        let dump = try gunzip(folder + "/dump.sql.gz")
        let toc = try JSONOutput.decoder().decode(DumpTableOfContents.self, from: Data(try gunzip(folder + "/toc.json.gz")))
        XCTAssertEqual(toc.dumpBytes, UInt64(dump.count))
        for entry in toc.entries {
            let head = String(decoding: dump[Int(entry.start)..<min(dump.count, Int(entry.start) + 200)], as: UTF8.self)
            XCTAssertTrue(head.hasPrefix("-- Name: \(entry.name); Type: \(entry.kind);") || head.hasPrefix("-- Data for Name: \(entry.name); Type: \(entry.kind);"), head)
        }
        let orders = try XCTUnwrap(toc.entries.first { $0.kind == "TABLE DATA" && $0.name == "orders" })
        let rowsText = String(decoding: dump[Int(orders.start)..<Int(orders.end)], as: UTF8.self)
        XCTAssertTrue(rowsText.contains("COPY sales.orders (id, customer_id, total, note) FROM stdin;") && rowsText.contains("\n\\.\n"))
        let stored = Array(try Data(contentsOf: URL(fileURLWithPath: folder + "/dump.sql.gz")))
        for (index, point) in toc.accessPoints.enumerated() {
            let end = index + 1 < toc.accessPoints.count ? Int(toc.accessPoints[index + 1].compressedOffset) : stored.count
            var digest = StreamingDigest()
            stored[Int(point.compressedOffset)..<end].withUnsafeBytes { digest.update($0) }
            XCTAssertEqual(digest.hexDigest(), point.segmentSha256, "segment \(index)")
            guard index > 0 else { continue }
            var decoded: [UInt8] = []
            let decompressor = try GzipDecompressor(resumingAt: GzipAccessPoint(compressedOffset: point.compressedOffset, uncompressedOffset: point.uncompressedOffset)) {
                decoded.append(contentsOf: $0)
            }
            try decompressor.write(Array(stored[Int(point.compressedOffset)...]))
            XCTAssertTrue(decoded == Array(dump[Int(point.uncompressedOffset)...]), "access point \(index) decodes to other bytes")
        }
        // Still one gzip member that stock gunzip | psql restores.
        let gunzipCheck = try TestProcess.shell("gzip -t '\(folder)/dump.sql.gz' && gzip -dc '\(folder)/dump.sql.gz' | tail -c 200 | grep -q 'PostgreSQL database dump complete'")
        XCTAssertEqual(gunzipCheck.status, 0, gunzipCheck.standardError)

        let text = try TestProcess.tool("dbrestore", ["contents", id, "--repo", repository])
        XCTAssertEqual(text.status, 0, text.standardError)
        XCTAssertTrue(text.standardOutput.contains("sales.orders") && text.standardOutput.contains("20001") && text.standardOutput.contains("table of contents"),
                      text.standardOutput)
    }

    /// Backups taken before tables of contents existed: the same listing from a full scan.
    func testContentsOfABackupWithoutTableOfContentsScansTheDump() throws {
        let id = try backup()
        let withTOC = try contents([id, "--repo", repository])
        // Make it look like an old backup: no toc.json.gz, not in the manifest.
        let store = try LocalStore(root: repository, create: false)
        var manifest = try Catalog(store: store).resolve(id)
        manifest.files.removeAll { $0.name == "toc.json.gz" }
        try store.write("backups/\(id)/manifest.json", contents: try manifest.encoded())
        try store.delete(["backups/\(id)/toc.json.gz"])

        let scanned = try contents(["latest", "--repo", repository])
        XCTAssertEqual(scanned["source"] as? String, "full-scan")
        for key in ["schemas", "tables", "sequences", "functions", "views", "other"] {
            XCTAssertEqual(NSDictionary(dictionary: ["v": scanned[key] ?? 0]), NSDictionary(dictionary: ["v": withTOC[key] ?? 0]), "\(key) differs between the scan and the table of contents")
        }
    }

    /// An encrypted repository: the table of contents is encrypted like the dump, and read with the key.
    func testContentsOfAnEncryptedBackupNeedsTheKey() throws {
        let keyFile = TestPaths.temporaryDirectory(prefix: "key") + "/repository.key"
        try ("selective-" + UUID().uuidString).write(toFile: keyFile, atomically: true, encoding: .utf8)
        let id = try backup(["--encryption-key-file", keyFile])
        let manifest = try Catalog(store: try LocalStore(root: repository, create: false)).resolve(id)
        XCTAssertEqual(manifest.files.map { $0.encryptionKeyFingerprint != nil }, [true, true], "the table of contents is encrypted like the dump")
        let stored = try Data(contentsOf: URL(fileURLWithPath: "\(repository!)/backups/\(id)/toc.json.gz"))
        XCTAssertNil(String(data: stored, encoding: .utf8).flatMap { $0.contains("orders") ? $0 : nil }, "no plaintext names in the stored table of contents")
        let listing = try contents([id, "--repo", repository, "--encryption-key-file", keyFile])
        XCTAssertEqual(listing["source"] as? String, "table-of-contents")
        XCTAssertEqual(((listing["tables"] as? [[String: Any]]) ?? []).count, 4)
        let noKey = try TestProcess.tool("dbrestore", ["contents", id, "--repo", repository], cluster: cluster)
        XCTAssertNotEqual(noKey.status, 0)
        XCTAssertTrue(noKey.standardError.contains("--encryption-key-file"), noKey.standardError)
    }
}

/// Issue 18: restoring one table, one schema, or in place.
extension SelectiveRestoreTests {
    private func restore(_ arguments: [String], environment extra: [String: String] = [:]) throws -> TestProcess.Result {
        try TestProcess.tool("dbrestore", arguments + common, cluster: cluster, environment: environment.merging(extra) { _, new in new })
    }

    private func query(_ sql: String) throws -> [[String?]] {
        let connection = try cluster.connect(database: database)
        defer { connection.close() }
        return try connection.query(sql).rows.map(\.values)
    }

    /// The acceptance case: an UPDATE without WHERE; the table comes back next to the live one.
    func testOneTableIntoARescueSchemaNextToTheLiveOne() throws {
        let id = try backup()
        let before = try query("SELECT sum(total)::text, count(*)::text FROM sales.orders")[0]
        try cluster.connect(database: database).execute(script: "UPDATE sales.orders SET total = 0")

        let dryRun = try restore(["latest", "--table", "sales.orders", "--into-schema", "rescue", "--dry-run"])
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        for object in ["TABLE: orders in rescue", "TABLE DATA: orders in rescue (20001 rows)", "SEQUENCE: orders_id_seq in rescue", "DEFAULT: orders id in rescue",
                       "CONSTRAINT: orders orders_pkey in rescue", "INDEX: orders_customer in rescue", "TRIGGER: orders orders_audit in rescue",
                       "COMMENT: TABLE orders in rescue", "SEQUENCE SET: orders_id_seq in rescue"] {
            XCTAssertTrue(dryRun.standardOutput.contains("  " + object + "\n"), "dry run lacks \(object):\n\(dryRun.standardOutput)")
        }
        XCTAssertTrue(dryRun.standardOutput.contains("FK CONSTRAINT: orders orders_customer_id_fkey in sales → crm.customers"), dryRun.standardOutput)
        XCTAssertTrue(dryRun.standardOutput.contains("left out"), dryRun.standardOutput)
        XCTAssertTrue(dryRun.standardOutput.contains("views that read these tables (not restored): sales.big_orders"), dryRun.standardOutput)
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_namespace WHERE nspname = 'rescue'")[0][0], "0", "a dry run changes nothing")

        let result = try restore(["latest", "--table", "sales.orders", "--into-schema", "rescue", "--json"])
        XCTAssertEqual(result.status, 0, result.standardError)
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any], result.standardOutput)
        XCTAssertEqual((report["plan"] as? [String: Any])?["backup_id"] as? String, id)
        XCTAssertEqual(((report["verification"] as? [String: Any])?["tables"] as? [[String: Any]])?.first?["status"] as? String, "ok")
        XCTAssertEqual((report["read"] as? [String: Any])?["method"] as? String, "ranged")

        XCTAssertEqual(try query("SELECT sum(total)::text, count(*)::text FROM rescue.orders")[0], before, "the backup's rows")
        XCTAssertEqual(try query("SELECT sum(total)::text FROM sales.orders")[0][0], "0.00", "the live table is untouched")
        // Indexes, constraints, the check, the default from its own sequence, the trigger, the comment.
        XCTAssertEqual(Set(try query("SELECT indexname FROM pg_indexes WHERE schemaname = 'rescue'").map { $0[0] ?? "" }), ["orders_pkey", "orders_customer"])
        XCTAssertEqual(Set(try query("SELECT conname || ':' || contype::text FROM pg_constraint WHERE conrelid = 'rescue.orders'::regclass").map { $0[0] ?? "" }),
                       ["orders_pkey:p", "orders_total_check:c"], "the key to crm.customers is left out, as the run says")
        XCTAssertEqual(try query("SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'rescue.orders'::regclass")[0][0],
                       "nextval('rescue.orders_id_seq'::regclass)")
        XCTAssertEqual(try query("SELECT last_value::text FROM rescue.orders_id_seq")[0][0], "20001")
        XCTAssertEqual(try query("SELECT tgname FROM pg_trigger WHERE tgrelid = 'rescue.orders'::regclass AND NOT tgisinternal")[0][0], "orders_audit")
        XCTAssertEqual(try query("SELECT obj_description('rescue.orders'::regclass, 'pg_class')")[0][0], "one row per order")
        XCTAssertEqual(try query("SELECT count(*)::text FROM audit.events")[0][0], "20001", "no trigger fired while the rows loaded")

        // The README's one statement that copies the rows back.
        try cluster.connect(database: database).execute(script: "UPDATE sales.orders o SET total = r.total FROM rescue.orders r WHERE r.id = o.id")
        XCTAssertEqual(try query("SELECT sum(total)::text, count(*)::text FROM sales.orders")[0], before)

        // The rescue schema exists now: a second run refuses instead of writing into it.
        let again = try restore(["latest", "--table", "sales.orders", "--into-schema", "rescue"])
        XCTAssertEqual(again.status, 2, again.standardError)
        XCTAssertTrue(again.standardError.contains("schema rescue already exists"), again.standardError)
    }

    func testAnUnknownTableIsRefusedWithTheNearestNames() throws {
        try backup()
        let result = try restore(["latest", "--table", "sales.ordrs", "--into-schema", "rescue"])
        XCTAssertEqual(result.status, 2, result.standardError)
        XCTAssertTrue(result.standardError.contains("table sales.ordrs is not in backup"), result.standardError)
        XCTAssertTrue(result.standardError.contains("nearest tables: sales.orders"), result.standardError)
        let schema = try restore(["latest", "--schema", "sale"])
        XCTAssertEqual(schema.status, 2, schema.standardError)
        XCTAssertTrue(schema.standardError.contains("nearest schemas: sales"), schema.standardError)
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_namespace WHERE nspname LIKE 'rescue%' OR nspname LIKE 'restored%'")[0][0], "0")
    }
}

/// Issue 18: `--replace` and `--into-database`.
extension SelectiveRestoreTests {
    /// pg_dump of the database without the named tables (and their sequences), `\restrict` keys dropped.
    private func dumpExcluding(_ patterns: [String]) throws -> String {
        let pgDump = try PostgresTools().path(of: "pg_dump")
        let result = try TestProcess.run(pgDump, ["--no-password", "-d", cluster.url(database: database)] + patterns.flatMap { ["--exclude-table", $0] },
                                         environment: cluster.environment)
        XCTAssertEqual(result.status, 0, result.standardError)
        return result.standardOutput.split(separator: "\n", omittingEmptySubsequences: false)
            .filter { !$0.hasPrefix("\\restrict") && !$0.hasPrefix("\\unrestrict") }.joined(separator: "\n")
    }

    func testReplaceBringsBackADroppedTableAndChangesNothingElse() throws {
        let role = "reporting_\(UUID().uuidString.prefix(8).lowercased())"
        try cluster.connect(database: database).execute(script: """
            CREATE ROLE \(role);
            GRANT USAGE ON SCHEMA sales TO \(role);
            GRANT SELECT ON sales.orders TO \(role);
            GRANT USAGE ON SEQUENCE sales.orders_id_seq TO \(role);
            COMMENT ON COLUMN sales.orders.total IS 'gross, in EUR';
            """)
        try backup()
        try cluster.connect(database: database).execute(script: "DROP TABLE sales.orders CASCADE; INSERT INTO crm.customers VALUES (9999, 'after the backup')")
        let surroundings = try dumpExcluding(["sales.orders", "sales.orders_id_seq"])

        let result = try restore(["latest", "--table", "sales.orders", "--replace", "--yes"])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertTrue(result.standardOutput.contains("replaced sales.orders"), result.standardOutput)

        XCTAssertEqual(try query("SELECT count(*)::text, sum(total)::text FROM sales.orders")[0][0], "20001")
        XCTAssertEqual(Set(try query("SELECT indexname FROM pg_indexes WHERE schemaname = 'sales' AND tablename = 'orders'").map { $0[0] ?? "" }),
                       ["orders_pkey", "orders_customer"])
        XCTAssertEqual(try query("SELECT last_value::text FROM sales.orders_id_seq")[0][0], "20001")
        XCTAssertEqual(try query("SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'sales.orders'::regclass")[0][0],
                       "nextval('sales.orders_id_seq'::regclass)")
        XCTAssertEqual(try query("SELECT has_table_privilege('\(role)', 'sales.orders', 'SELECT')::text, has_table_privilege('\(role)', 'sales.orders', 'INSERT')::text")[0],
                       ["true", "false"])
        XCTAssertEqual(try query("SELECT has_sequence_privilege('\(role)', 'sales.orders_id_seq', 'USAGE')::text")[0][0], "true")
        XCTAssertEqual(try query("SELECT col_description('sales.orders'::regclass, 3)")[0][0], "gross, in EUR")
        XCTAssertEqual(try query("SELECT obj_description('sales.orders'::regclass, 'pg_class')")[0][0], "one row per order")
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_namespace WHERE nspname LIKE 'restored\\_%'")[0][0], "0", "the staging schema is gone")
        XCTAssertEqual(try dumpExcluding(["sales.orders", "sales.orders_id_seq"]), surroundings, "everything else is exactly as it was")
        XCTAssertEqual(try query("SELECT count(*)::text FROM sales.orders WHERE id = 20001")[0][0], "1")
        try cluster.connect(database: database).execute(script: "INSERT INTO sales.orders (customer_id, total) VALUES (1, 5)")
        XCTAssertEqual(try query("SELECT max(id)::text FROM sales.orders")[0][0], "20002", "the sequence goes on from the backup's value")
    }

    /// The live table exists and other objects depend on it: refused, unless --cascade-report.
    func testReplaceOfALiveTableKeepsItAsideAndRepointsOnlyWhenTold() throws {
        try backup()
        try cluster.connect(database: database).execute(script: "UPDATE sales.orders SET total = 0")
        let refused = try restore(["latest", "--table", "sales.orders", "--replace", "--yes"])
        XCTAssertEqual(refused.status, 31, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("other objects depend on sales.orders") && refused.standardError.contains("big_orders")
                      && refused.standardError.contains("order_lines_order_id_fkey") && refused.standardError.contains("--cascade-report"), refused.standardError)
        XCTAssertEqual(try query("SELECT sum(total)::text FROM sales.orders")[0][0], "0.00", "refused: nothing changed")
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_namespace WHERE nspname LIKE 'restored\\_%'")[0][0], "0")

        let result = try restore(["latest", "--table", "sales.orders", "--replace", "--cascade-report", "--yes"])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertTrue(result.standardOutput.contains("re-pointed: view sales.big_orders") || result.standardOutput.contains("re-pointed: rule _RETURN on view sales.big_orders"),
                      result.standardOutput)
        XCTAssertNotEqual(try query("SELECT sum(total)::text FROM sales.orders")[0][0], "0.00")
        let aside = try XCTUnwrap(try query("SELECT relname FROM pg_class WHERE relnamespace = 'sales'::regnamespace AND relname LIKE 'orders\\_pre\\_restore\\_%' AND relkind = 'r'").first?[0] ?? nil)
        XCTAssertEqual(try query("SELECT sum(total)::text FROM sales.\(aside)")[0][0], "0.00", "the old table is kept, never dropped")
        // The view and the key now read the restored table.
        XCTAssertEqual(try query("SELECT count(*)::text FROM sales.big_orders")[0][0], try query("SELECT count(*)::text FROM sales.orders WHERE total > 900")[0][0])
        XCTAssertEqual(try query("SELECT confrelid::regclass::text FROM pg_constraint WHERE conname = 'order_lines_order_id_fkey'")[0][0], "sales.orders")
    }

    /// Row counts alone would let a copy with another definition replace the live table: here an
    /// event trigger of the live database adds a column to every new table. The staged copy is
    /// compared with the backup's schema fingerprint and refused; the live table is untouched.
    func testReplaceChecksTheRestoredDefinitionAgainstTheBackupsFingerprint() throws {
        try backup()
        try cluster.connect(database: database).execute(script: """
            DROP VIEW sales.big_orders; ALTER TABLE sales.order_lines DROP CONSTRAINT order_lines_order_id_fkey;
            UPDATE sales.orders SET total = 0;
            CREATE FUNCTION public.stamp_new_tables() RETURNS event_trigger LANGUAGE plpgsql AS $$
            DECLARE created record;
            BEGIN
              FOR created IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE TABLE' LOOP
                EXECUTE format('ALTER TABLE %s ADD COLUMN stamped_at timestamptz DEFAULT now()', created.object_identity);
              END LOOP;
            END $$;
            CREATE EVENT TRIGGER stamp_new_tables ON ddl_command_end WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION public.stamp_new_tables();
            """)
        let dryRun = try restore(["latest", "--table", "sales.orders", "--replace", "--dry-run"])
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        XCTAssertTrue(dryRun.standardOutput.contains("checked before the swap: row counts, and the restored copy's definition"), dryRun.standardOutput)

        let refused = try restore(["latest", "--table", "sales.orders", "--replace", "--yes"])
        XCTAssertEqual(refused.status, 30, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("definition does not match backup") && refused.standardError.contains("table orders in schema sales differs")
                      && refused.standardError.contains("live tables were not touched"), refused.standardError)
        XCTAssertEqual(try query("SELECT sum(total)::text FROM sales.orders")[0][0], "0.00", "the live table is untouched")
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_namespace WHERE nspname LIKE 'restored\\_%'")[0][0], "0", "the staged copy is dropped")
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_class WHERE relname LIKE 'orders\\_pre\\_restore\\_%'")[0][0], "0")

        try cluster.connect(database: database).execute(script: "DROP EVENT TRIGGER stamp_new_tables")
        let result = try restore(["latest", "--table", "sales.orders", "--replace", "--yes", "--json"])
        XCTAssertEqual(result.status, 0, result.standardError)
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any], result.standardOutput)
        let definition = try XCTUnwrap(report["definition"] as? [String: Any], result.standardOutput)
        XCTAssertEqual(definition["ok"] as? Bool, true)
        // The table, its sequence, default, keys, check, index, trigger and comment at least.
        XCTAssertGreaterThanOrEqual(number(definition["expected_objects"]), 9, "\(definition)")
        XCTAssertEqual(number(definition["expected_objects"]), number(definition["actual_objects"]))
        XCTAssertNotEqual(try query("SELECT sum(total)::text FROM sales.orders")[0][0], "0.00")
    }

    func testASchemaIntoANewDatabase() throws {
        let id = try backup()
        let target = "\(database!)_sales"
        let result = try restore(["latest", "--schema", "sales", "--into-database", target])
        XCTAssertEqual(result.status, 0, result.standardError)
        defer { _ = try? cluster.connect().execute(script: "DROP DATABASE IF EXISTS \(target)") }
        let copy = try cluster.connect(database: target)
        defer { copy.close() }
        XCTAssertEqual(try copy.query("SELECT count(*)::text FROM sales.orders").scalar, "20001")
        XCTAssertEqual(try copy.query("SELECT count(*)::text FROM sales.order_lines").scalar, "20001")
        XCTAssertEqual(try copy.query("SELECT count(*)::text FROM sales.big_orders").scalar, try query("SELECT count(*)::text FROM sales.big_orders")[0][0], "the schema's view came too")
        XCTAssertEqual(try copy.query("SELECT confrelid::regclass::text FROM pg_constraint WHERE conname = 'order_lines_order_id_fkey'").scalar, "sales.orders",
                       "keys inside the selection are restored")
        XCTAssertEqual(try copy.query("SELECT count(*)::text FROM pg_constraint WHERE conname = 'orders_customer_id_fkey'").scalar, "0", "the key to crm is left out")
        XCTAssertEqual(try copy.query("SELECT to_regclass('crm.customers')::text").scalar, nil, "no table outside the selection")
        XCTAssertEqual(try copy.query("SELECT count(*)::text FROM pg_proc WHERE proname = 'note'").scalar, "1", "the trigger's function is there")
        let marker = try cluster.connect().query("SELECT setconfig::text FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = $1", [target]).scalar ?? ""
        XCTAssertTrue(marker.contains("dbrecovery.marker") && marker.contains("restored") && marker.contains(id), marker)

        let exists = try restore(["latest", "--schema", "sales", "--into-database", target])
        XCTAssertEqual(exists.status, 2, exists.standardError)
        XCTAssertTrue(exists.standardError.contains("database \(target) already exists"), exists.standardError)
    }
}

/// Issue 18: where the bytes come from — ranged reads on local files and S3, checksums on the
/// ranges read, encrypted backups and backups without a table of contents.
extension SelectiveRestoreTests {
    private func readStatistics(_ result: TestProcess.Result) throws -> [String: Any] {
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any], result.standardOutput)
        return try XCTUnwrap(report["read"] as? [String: Any])
    }

    private func number(_ value: Any?) -> Int64 { (value as? NSNumber)?.int64Value ?? -1 }

    /// A small table from S3: only the segments that hold the pre-data, its rows and the post-data are fetched.
    func testASmallTableFromS3IsReadWithRangedGetsOnly() throws {
        let s3 = try S3Server.shared()
        let bucket = try s3.createBucket()
        let s3Environment = s3.environment().merging(environment) { _, new in new }
        let repository = "s3://\(bucket)/app"
        let url = cluster.url(database: database)
        // Rows that compress poorly, dumped after crm.customers': a dump of many segments, most of which the restore skips.
        try cluster.connect(database: database).execute(script: "CREATE TABLE sales.zz_bulk (id int, digest text); INSERT INTO sales.zz_bulk SELECT g, md5(g::text) FROM generate_series(1, 250000) g")
        let backup = try TestProcess.tool("dbbackup", ["--database-url", url, "--repo", repository], cluster: cluster, environment: s3Environment)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        try cluster.connect(database: database).execute(script: "DELETE FROM crm.customers WHERE id > 100 AND NOT EXISTS (SELECT 1 FROM sales.orders WHERE customer_id = crm.customers.id)")

        // Through the fault proxy, which counts the GET bytes of each object independently of the tool.
        let statsFile = TestPaths.temporaryDirectory(prefix: "proxy") + "/stats.json"
        let proxy = try FaultProxy(upstreamPort: s3.port, arguments: ["--stats", statsFile])
        defer { proxy.stop() }
        let proxied = s3Environment.merging(["AWS_ENDPOINT_URL_S3": proxy.endpoint]) { _, new in new }
        let result = try TestProcess.tool("dbrestore", ["latest", "--table", "crm.customers", "--into-schema", "rescue", "--json", "--database-url", url, "--repo", repository],
                                          cluster: cluster, environment: proxied)
        XCTAssertEqual(result.status, 0, result.standardError)
        let manifest = try Catalog(store: try Repository.open(repository, create: false, environment: s3Environment)).resolve("latest")
        let id = manifest.id
        let stored = Int64(try XCTUnwrap(manifest.files.first { $0.name == "dump.sql.gz" }).storedBytes)
        let stats = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: statsFile))) as? [String: [String: Int]] ?? [:]
        let got = Int64(stats["\(bucket)/app/backups/\(id)/dump.sql.gz"]?["get_bytes"] ?? -1)
        XCTAssertGreaterThan(got, 0, "\(stats)")
        XCTAssertLessThan(got, stored / 4, "the ranged GETs fetch far less than the dump's \(stored) stored bytes: \(stats)")
        let read = try readStatistics(result)
        XCTAssertEqual(number(read["compressed_bytes_read"]), got, "the tool's own count agrees with the proxy's")
        XCTAssertEqual(read["method"] as? String, "ranged")
        let plan = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any])?["plan"] as? [String: Any])
        XCTAssertLessThan(number(read["bytes_decompressed"]), number(plan["dump_bytes"]) / 2, "most of the dump (orders' rows) is never decompressed: \(read)")
        XCTAssertEqual(try query("SELECT count(*)::text FROM rescue.customers")[0][0], "500")
    }

    /// A damaged byte in the segment a selective restore reads: refused before anything is committed.
    func testADamagedSegmentIsFoundAndNothingIsCommitted() throws {
        let id = try backup()
        let folder = "\(repository!)/backups/\(id)"
        let toc = try JSONOutput.decoder().decode(DumpTableOfContents.self, from: Data(try gunzip(folder + "/toc.json.gz")))
        let orders = try XCTUnwrap(toc.entries.first { $0.kind == "TABLE DATA" && $0.name == "orders" })
        // A segment wholly inside orders' rows.
        let inside = try XCTUnwrap(toc.accessPoints.indices.dropLast().first { index in
            toc.accessPoints[index].uncompressedOffset > orders.start && toc.accessPoints[index + 1].uncompressedOffset < orders.end
        })
        let path = folder + "/dump.sql.gz"
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        let position = Int(toc.accessPoints[inside].compressedOffset + toc.accessPoints[inside + 1].compressedOffset) / 2
        data[position] ^= 0x01
        try data.write(to: URL(fileURLWithPath: path))

        let other = try restore(["latest", "--table", "crm.customers", "--into-schema", "rescue_customers", "--json"])
        XCTAssertEqual(other.status, 0, "a table whose segments are intact still restores: \(other.standardError)")
        let damaged = try restore(["latest", "--table", "sales.orders", "--into-schema", "rescue_orders"])
        XCTAssertEqual(damaged.status, 23, damaged.standardError)
        XCTAssertTrue(damaged.standardError.contains("do not match their sha256") || damaged.standardError.contains("is damaged"), damaged.standardError)
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_namespace WHERE nspname = 'rescue_orders'")[0][0], "0", "nothing committed")
    }

    /// Encrypted: the frames are sealed over the whole compressed stream, so the dump is read
    /// whole (and checked whole) and only the table's part replayed.
    func testAnEncryptedBackupRestoresOneTableBySequentialRead() throws {
        let keyFile = TestPaths.temporaryDirectory(prefix: "key") + "/repository.key"
        try ("selective-" + UUID().uuidString).write(toFile: keyFile, atomically: true, encoding: .utf8)
        try backup(["--encryption-key-file", keyFile])
        let result = try restore(["latest", "--table", "sales.orders", "--into-schema", "rescue", "--encryption-key-file", keyFile, "--json"])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertEqual(try readStatistics(result)["method"] as? String, "sequential (encrypted backup)")
        XCTAssertEqual(try query("SELECT count(*)::text FROM rescue.orders")[0][0], "20001")
    }

    /// A backup taken before tables of contents existed: found by a full scan, restored the same.
    func testABackupWithoutTableOfContentsRestoresOneTable() throws {
        let id = try backup()
        let store = try LocalStore(root: repository, create: false)
        var manifest = try Catalog(store: store).resolve(id)
        manifest.files.removeAll { $0.name == "toc.json.gz" }
        try store.write("backups/\(id)/manifest.json", contents: try manifest.encoded())
        try store.delete(["backups/\(id)/toc.json.gz"])

        let result = try restore(["latest", "--table", "sales.order_lines", "--table", "sales.orders", "--into-schema", "rescue", "--json"])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertEqual(try readStatistics(result)["method"] as? String, "sequential (no table of contents)")
        XCTAssertEqual(try query("SELECT count(*)::text FROM rescue.order_lines")[0][0], "20001")
        XCTAssertEqual(try query("SELECT confrelid::regclass::text FROM pg_constraint WHERE conrelid = 'rescue.order_lines'::regclass AND contype = 'f'")[0][0],
                       "rescue.orders", "a key between two selected tables points at the restored one")
    }
}

/// Issue 18: identity columns keep their sequence state.
extension SelectiveRestoreTests {
    func testAnIdentityTableKeepsItsSequenceState() throws {
        try backup()
        let result = try restore(["latest", "--table", "audit.events", "--into-schema", "rescue"])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertEqual(try query("SELECT attidentity::text FROM pg_attribute WHERE attrelid = 'rescue.events'::regclass AND attname = 'id'")[0][0], "a")
        XCTAssertEqual(try query("SELECT pg_get_serial_sequence('rescue.events', 'id')")[0][0], "rescue.events_id_seq")
        XCTAssertEqual(try query("SELECT last_value::text FROM rescue.events_id_seq")[0][0], "20001")
        XCTAssertEqual(try query("SELECT last_value::text FROM audit.events_id_seq")[0][0], "20001", "the live sequence is its own")
        try cluster.connect(database: database).execute(script: "INSERT INTO rescue.events (what) VALUES ('next')")
        XCTAssertEqual(try query("SELECT max(id)::text FROM rescue.events")[0][0], "20002")
    }
}

/// Issue 18, the attack on selective restore: what must never touch live data wrongly.
extension SelectiveRestoreTests {
    /// The table of contents is an optional index: without it (or with it garbled) the newest backup
    /// stays the one `--emergency` restores, `dbverify --files` warns, and a selective restore scans.
    func testAMissingOrDamagedTableOfContentsNeverCostsTheNewestBackup() throws {
        try backup()
        try cluster.connect(database: database).execute(script: "INSERT INTO crm.customers VALUES (7777, 'only in the newest backup')")
        let newest = try backup()
        let toc = "\(repository!)/backups/\(newest)/toc.json.gz"
        for damage in ["garbled", "missing"] {
            if damage == "garbled" {
                try Data(repeating: 0x5A, count: 200).write(to: URL(fileURLWithPath: toc))
            } else {
                try FileManager.default.removeItem(atPath: toc)
            }
            let verify = try TestProcess.tool("dbverify", ["--files", newest, "--repo", repository], cluster: cluster)
            XCTAssertEqual(verify.status, 0, "\(damage): \(verify.standardError)")
            XCTAssertTrue(verify.standardOutput.contains("WARNING") && !verify.standardOutput.contains("DAMAGED"), "\(damage): \(verify.standardOutput)")

            let selective = try restore([newest, "--table", "crm.customers", "--into-schema", "rescue_\(damage)"])
            XCTAssertEqual(selective.status, 0, "\(damage): \(selective.standardError)")
            XCTAssertTrue(selective.standardError.contains("reading the whole dump instead"), "\(damage): says it falls back: \(selective.standardError)")
            XCTAssertEqual(try query("SELECT count(*)::text FROM rescue_\(damage).customers")[0][0], "501")

            let target = "\(database!)_emergency_\(damage)"
            defer { _ = try? cluster.connect().execute(script: "DROP DATABASE IF EXISTS \(target) WITH (FORCE)") }
            let emergency = try TestProcess.tool("dbrestore", ["--from-database", database!, "--emergency", "--repo", repository, "--database-url", cluster.url(database: target)], cluster: cluster)
            XCTAssertEqual(emergency.status, 0, "\(damage): \(emergency.standardError)")
            XCTAssertTrue(emergency.standardOutput.contains("from backup \(newest)"), "\(damage): the newest backup is restored: \(emergency.standardOutput)")
            let copy = try cluster.connect(database: target)
            defer { copy.close() }
            XCTAssertEqual(try copy.query("SELECT count(*)::text FROM crm.customers WHERE id = 7777").scalar, "1", damage)
        }
    }

    /// An inheritance child in a rescue schema would attach to the live parent: refused, with the way that works.
    func testInheritanceGoesOnlyWholeIntoANewDatabase() throws {
        try cluster.connect(database: database).execute(script: """
            CREATE TABLE sales.parent (id int); CREATE TABLE sales.child () INHERITS (sales.parent);
            INSERT INTO sales.parent VALUES (1), (2); INSERT INTO sales.child VALUES (10), (11), (12);
            """)
        try backup()
        for arguments in [["--table", "sales.child", "--into-schema", "rescue"], ["--table", "sales.parent", "--into-schema", "rescue"],
                          ["--table", "sales.child", "--replace", "--yes"], ["--table", "sales.child", "--into-database", "\(database!)_half"]] {
            let refused = try restore(["latest"] + arguments)
            XCTAssertEqual(refused.status, 2, "\(arguments): \(refused.standardError)")
            XCTAssertTrue(refused.standardError.contains("INHERITS") && refused.standardError.contains("--table sales.child --table sales.parent --into-database"),
                          "\(arguments): \(refused.standardError)")
        }
        XCTAssertEqual(try query("SELECT count(*)::text FROM sales.parent")[0][0], "5", "the live parent is untouched")
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_namespace WHERE nspname = 'rescue'")[0][0], "0", "refused before anything")
        XCTAssertFalse(try cluster.databaseExists("\(database!)_half"))

        let target = "\(database!)_hierarchy"
        defer { _ = try? cluster.connect().execute(script: "DROP DATABASE IF EXISTS \(target) WITH (FORCE)") }
        let whole = try restore(["latest", "--table", "sales.parent", "--table", "sales.child", "--into-database", target])
        XCTAssertEqual(whole.status, 0, whole.standardError)
        let copy = try cluster.connect(database: target)
        defer { copy.close() }
        XCTAssertEqual(try copy.query("SELECT count(*)::text FROM sales.parent").scalar, "5")
        XCTAssertEqual(try copy.query("SELECT count(*)::text FROM ONLY sales.parent").scalar, "2")
    }

    /// Partitions: never swapped in place; a partition alone is a plain table in a rescue schema;
    /// a partitioned table goes with all its partitions into a new database; other tables ignore them.
    func testPartitionedTablesAreRestoredOnlyWhereExact() throws {
        try cluster.connect(database: database).execute(script: """
            CREATE TABLE sales.events (id int, at date) PARTITION BY RANGE (at);
            CREATE INDEX events_at ON sales.events (at);
            CREATE TABLE sales.events_2024 PARTITION OF sales.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
            CREATE TABLE sales.events_2025 PARTITION OF sales.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
            INSERT INTO sales.events SELECT g, date '2024-01-01' + g FROM generate_series(1, 600) g;
            """)
        try backup()
        try cluster.connect(database: database).execute(script: "DELETE FROM sales.events_2024 WHERE id < 100")
        for (arguments, words) in [(["--table", "sales.events", "--replace", "--yes"], "partitioned table"),
                                   (["--table", "sales.events_2024", "--replace", "--yes"], "partition of sales.events"),
                                   (["--table", "sales.events", "--into-schema", "rescue"], "partitioned table"),
                                   (["--table", "sales.events", "--into-database", "\(database!)_half"], "sales.events_2025")] {
            let refused = try restore(["latest"] + arguments)
            XCTAssertEqual(refused.status, 2, "\(arguments): \(refused.standardError)")
            XCTAssertTrue(refused.standardError.contains(words), "\(arguments): \(refused.standardError)")
        }
        XCTAssertEqual(try query("SELECT count(*)::text FROM sales.events")[0][0], "501", "refused: the live table is as it was")

        let alone = try restore(["latest", "--table", "sales.events_2024", "--into-schema", "rescue"])
        XCTAssertEqual(alone.status, 0, alone.standardError)
        XCTAssertEqual(try query("SELECT count(*)::text FROM rescue.events_2024")[0][0], "365")
        XCTAssertEqual(try query("SELECT relispartition::text FROM pg_class WHERE oid = 'rescue.events_2024'::regclass")[0][0], "false", "a plain table")
        XCTAssertEqual(try query("SELECT count(*)::text FROM sales.events")[0][0], "501", "the live partitioned table did not gain it")

        let unrelated = "\(database!)_orders", whole = "\(database!)_events"
        defer { _ = try? cluster.connect().execute(script: "DROP DATABASE IF EXISTS \(unrelated) WITH (FORCE); DROP DATABASE IF EXISTS \(whole) WITH (FORCE)") }
        let other = try restore(["latest", "--table", "crm.customers", "--into-database", unrelated])
        XCTAssertEqual(other.status, 0, "an unrelated table ignores the backup's partitions: \(other.standardError)")
        let all = try restore(["latest", "--table", "sales.events*", "--into-database", whole])
        XCTAssertEqual(all.status, 0, all.standardError)
        let copy = try cluster.connect(database: whole)
        defer { copy.close() }
        XCTAssertEqual(try copy.query("SELECT count(*)::text FROM sales.events").scalar, "600")
        XCTAssertEqual(try copy.query("SELECT count(*)::text FROM pg_inherits WHERE inhparent = 'sales.events'::regclass").scalar, "2", "partitions attached")
        XCTAssertEqual(try copy.query("SELECT count(*)::text FROM pg_inherits WHERE inhparent = 'sales.events_at'::regclass").scalar, "2", "partition indexes attached")
    }

    /// `--replace` keeps the table's keys to live tables, its views' options and its generated
    /// columns; a sequence shared with another table is refused; a rescue copy gets no rules.
    func testReplaceKeepsKeysViewOptionsAndRefusesSharedSequences() throws {
        try cluster.connect(database: database).execute(script: """
            CREATE VIEW sales.secure_orders WITH (security_barrier = true) AS SELECT * FROM sales.orders WHERE total > 0 WITH CASCADED CHECK OPTION;
            CREATE TABLE crm.scores (id int PRIMARY KEY, points numeric, doubled numeric GENERATED ALWAYS AS (points * 2) STORED);
            INSERT INTO crm.scores VALUES (1, 5), (2, 7);
            CREATE TABLE crm.notes (id int PRIMARY KEY, body text);
            CREATE TABLE crm.notes_log (note_id int, body text);
            CREATE RULE notes_logged AS ON INSERT TO crm.notes DO ALSO INSERT INTO crm.notes_log VALUES (NEW.id, NEW.body);
            INSERT INTO crm.notes VALUES (1, 'kept');
            CREATE TABLE crm.borrower (id int DEFAULT nextval('sales.orders_id_seq'));
            """)
        try backup()
        try cluster.connect(database: database).execute(script: "UPDATE crm.scores SET points = 0; UPDATE sales.orders SET total = 1")

        let shared = try restore(["latest", "--table", "sales.orders", "--replace", "--cascade-report", "--yes"])
        XCTAssertEqual(shared.status, 31, shared.standardError)
        XCTAssertTrue(shared.standardError.contains("sales.orders_id_seq") && shared.standardError.contains("crm.borrower"), shared.standardError)
        XCTAssertEqual(try query("SELECT sum(total)::text FROM sales.orders")[0][0], "20001.00", "refused: nothing changed")

        try cluster.connect(database: database).execute(script: "DROP TABLE crm.borrower")
        let replaced = try restore(["latest", "--table", "sales.orders", "--replace", "--cascade-report", "--yes"])
        XCTAssertEqual(replaced.status, 0, replaced.standardError)
        XCTAssertEqual(try query("""
            SELECT confrelid::regclass::text, convalidated::text FROM pg_constraint WHERE conrelid = 'sales.orders'::regclass AND contype = 'f'
            """), [["crm.customers", "true"]], "the key to the live customers is back, validated")
        XCTAssertEqual(try query("SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = 'sales.secure_orders'::regclass")[0][0],
                       "security_barrier=true,check_option=cascaded")

        let generated = try restore(["latest", "--table", "crm.scores", "--replace", "--yes"])
        XCTAssertEqual(generated.status, 0, "a generated column is part of the table, not a dependent: \(generated.standardError)")
        XCTAssertEqual(try query("SELECT sum(doubled)::text FROM crm.scores")[0][0], "24")

        let rescue = try restore(["latest", "--table", "crm.notes", "--into-schema", "rescue"])
        XCTAssertEqual(rescue.status, 0, rescue.standardError)
        XCTAssertTrue(rescue.standardError.contains("rules left out") && rescue.standardError.contains("notes_logged"), rescue.standardError)
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_rules WHERE schemaname = 'rescue'")[0][0], "0")
        try cluster.connect(database: database).execute(script: "INSERT INTO rescue.notes VALUES (2, 'copy')")
        XCTAssertEqual(try query("SELECT count(*)::text FROM crm.notes_log")[0][0], "1", "writing the rescue copy leaves live tables alone (1: the live insert)")
    }

    /// An application session that read the live table and then draws from its sequence while the swap
    /// waits for the table: a deadlock, which the server breaks by aborting the swap's transaction.
    /// Nothing was changed by it, so the swap runs again once the session has moved on.
    func testReplaceRunsTheSwapAgainAfterADeadlockWithAnApplicationSession() throws {
        try backup()
        try execute("DROP VIEW sales.big_orders; ALTER TABLE sales.order_lines DROP CONSTRAINT order_lines_order_id_fkey; UPDATE sales.orders SET total = 0")
        // The swap's session checks for the deadlock first (3 s), so it is the one aborted.
        try execute("ALTER DATABASE \(database!) SET deadlock_timeout = '3s'")
        let application = try cluster.connect(database: database)
        defer { application.close() }
        try application.execute(script: "SET deadlock_timeout = '100s'; BEGIN; SELECT count(*) FROM sales.orders")
        let process = try TestProcess.start("dbrestore", ["latest", "--table", "sales.orders", "--replace", "--yes", "--lock-wait", "60s"] + common,
                                            cluster: cluster, environment: environment)
        let errors = OutputCollector(descriptor: process.standardError, limit: 1024 * 1024)
        let watcher = try cluster.connect(database: database)
        defer { watcher.close() }
        let waitingForTable = """
            SELECT count(*)::text FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE NOT l.granted AND a.application_name = 'dbrestore' AND l.relation = 'sales.orders'::regclass
            """
        let deadline = Date().addingTimeInterval(120)
        while try watcher.query(waitingForTable).scalar == "0", !errors.ended, Date() < deadline { usleep(20_000) }
        XCTAssertEqual(try watcher.query(waitingForTable).scalar, "1", "the swap waits for the application's lock")
        // The application now wants the sequence the swap has renamed: each waits for the other.
        try application.execute(script: "SELECT nextval('sales.orders_id_seq'); COMMIT")
        let exit = process.waitForExit()
        let standardError = errors.finish()
        XCTAssertEqual(exit.exitCode, 0, standardError)
        XCTAssertTrue(standardError.contains("deadlock"), "the retry is on the timeline: \(standardError)")
        XCTAssertNotEqual(try query("SELECT sum(total)::text FROM sales.orders")[0][0], "0.00", "the backup's rows are live")
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_class WHERE relname LIKE 'orders\\_pre\\_restore\\_%' AND relkind = 'r'")[0][0], "1",
                       "the old table is kept aside once")
    }

    /// Found under live traffic: the kept copy's keys into live tables held the application's rows, the
    /// restored sequence handed out ids the application had used since the backup, and a column added
    /// since went away without a word. Now the keys go, the sequence goes on from the live value, and
    /// the column is named.
    func testReplaceLeavesTheApplicationWorking() throws {
        try backup()
        try execute("""
            INSERT INTO crm.customers VALUES (900, 'new customer');
            INSERT INTO sales.orders (customer_id, total) SELECT 900, 5 FROM generate_series(1, 50);
            ALTER TABLE sales.orders ADD COLUMN email text;
            """)
        let liveMax = try query("SELECT max(id)::text FROM sales.orders")[0][0] ?? ""
        let result = try restore(["latest", "--table", "sales.orders", "--replace", "--cascade-report", "--yes"])
        XCTAssertEqual(result.status, 0, result.standardError)
        let kept = try XCTUnwrap(try query("SELECT relname FROM pg_class WHERE relname LIKE 'orders\\_pre\\_restore\\_%' AND relkind = 'r'").first?[0] ?? nil)
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_constraint WHERE conrelid = 'sales.\(kept)'::regclass AND contype = 'f'")[0][0], "0",
                       "the kept copy holds no live rows through its keys")
        try execute("DELETE FROM crm.customers WHERE id = 900")
        XCTAssertGreaterThan(Int(try query("SELECT nextval('sales.orders_id_seq')::text")[0][0] ?? "") ?? 0, Int(liveMax) ?? .max,
                             "no id the application used is handed out again")
        XCTAssertTrue(result.standardOutput.contains("adjusted: sequence sales.orders_id_seq goes on from the live value \(liveMax)"), result.standardOutput)
        XCTAssertTrue(result.standardOutput.contains("adjusted: column email of the live sales.orders is not in the backup's definition"), result.standardOutput)
        XCTAssertTrue(result.standardOutput.contains("adjusted: foreign key orders_customer_id_fkey of the kept copy sales.\(kept) (to crm.customers) dropped"),
                      result.standardOutput)
    }

    /// A key to a partitioned table has a copy on the referencing table per partition (`conparentid`);
    /// dropping the kept copy's key drops those with it (found by an outside attack: the swap failed).
    func testReplaceOfATableWithAKeyToAPartitionedTable() throws {
        try execute("""
            CREATE TABLE sales.parts (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
            CREATE TABLE sales.parts_1 PARTITION OF sales.parts FOR VALUES IN ('east');
            CREATE TABLE sales.parts_2 PARTITION OF sales.parts FOR VALUES IN ('west');
            INSERT INTO sales.parts VALUES (1, 'east'), (2, 'west');
            CREATE TABLE sales.picks (id int PRIMARY KEY, part int, region text, FOREIGN KEY (part, region) REFERENCES sales.parts);
            INSERT INTO sales.picks VALUES (1, 1, 'east'), (2, 2, 'west');
            """)
        try backup()
        try execute("DELETE FROM sales.picks WHERE id = 2")
        let result = try restore(["latest", "--table", "sales.picks", "--replace", "--yes"])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertEqual(try query("SELECT count(*)::text FROM sales.picks")[0][0], "2")
        XCTAssertTrue(result.standardOutput.contains("adjusted: foreign key picks_part_region_fkey of the kept copy"), result.standardOutput)
    }

    /// The dump's own `SET lock_timeout = 0` used to lift `--lock-wait` while the copy was staged in the
    /// live database: a key to a table an application had locked waited as long as that transaction, and
    /// every application session queued behind it.
    func testReplaceStagingWaitsNoLongerThanLockWait() throws {
        try backup()
        let application = try cluster.connect(database: database)
        defer { application.close() }
        try application.execute(script: "BEGIN; UPDATE crm.customers SET name = name WHERE id = 1")
        let process = try TestProcess.start("dbrestore", ["latest", "--table", "sales.orders", "--replace", "--cascade-report", "--yes", "--lock-wait", "2"] + common,
                                            cluster: cluster, environment: environment)
        let errors = OutputCollector(descriptor: process.standardError, limit: 1024 * 1024)
        let exit = process.waitForExit(within: 60, orFail: "dbrestore --replace waited for the application's lock beyond --lock-wait")
        let standardError = errors.finish()
        try application.execute(script: "COMMIT")
        XCTAssertNotEqual(exit.exitCode, 0, standardError)
        XCTAssertTrue(standardError.contains("lock"), standardError)
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_namespace WHERE nspname LIKE 'restored\\_%'")[0][0], "0", "the staged copy is gone")
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_class WHERE relname LIKE 'orders\\_pre\\_restore\\_%'")[0][0], "0", "the live table is untouched")
    }

    /// A `--replace` killed once its staged copy is committed leaves that schema, with keys into the live
    /// tables, in the live database. The next selective restore drops it (its run is gone) and says so.
    func testAStagedCopyLeftByAKilledReplaceIsDroppedByTheNextRun() throws {
        try backup()
        let killed = try restore(["latest", "--table", "sales.orders", "--replace", "--cascade-report", "--yes"],
                                 environment: ["DBRECOVERY_CRASH_AT": "replace:after-staging"])
        XCTAssertEqual(killed.status, 128 + SIGKILL, killed.standardError)
        let left = try query("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'restored\\_%'").compactMap { $0[0] ?? nil }
        XCTAssertEqual(left.count, 1, "the killed run left its staged copy: \(left)")
        // Anyone may write a comment: schemas that carry the same one but are not named as staging is,
        // or that something outside them uses, are never dropped.
        let comment = try query("SELECT obj_description('\(left[0])'::regnamespace, 'pg_namespace')")[0][0] ?? ""
        try execute("""
            CREATE SCHEMA reports; CREATE TABLE reports.monthly (id int);
            CREATE SCHEMA restored_20200101_000000; CREATE TABLE restored_20200101_000000.kept (id int);
            CREATE VIEW public.uses_kept AS SELECT * FROM restored_20200101_000000.kept;
            """)
        for schema in ["reports", "restored_20200101_000000"] {
            try execute("COMMENT ON SCHEMA \(schema) IS '\(comment.replacingOccurrences(of: "'", with: "''"))'")
        }
        let next = try restore(["latest", "--table", "sales.orders", "--replace", "--cascade-report", "--yes"])
        XCTAssertEqual(next.status, 0, next.standardError)
        XCTAssertTrue(next.standardError.contains("drop \(left.first ?? "?"), the staged copy of a --replace killed before it ended"), next.standardError)
        XCTAssertEqual(try query("SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname LIKE 'restored\\_%' OR nspname = 'reports'")[0][0],
                       "reports,restored_20200101_000000", "only the killed run's staged copy is dropped")
        XCTAssertEqual(try query("SELECT count(*)::text FROM public.uses_kept")[0][0], "0")
    }

    /// `--replace` waits briefly for its lock (readers queue behind it), then fails with the table intact.
    func testReplaceGivesUpQuicklyOnALockedTable() throws {
        try backup()
        let holder = try cluster.connect(database: database)
        defer { holder.close() }
        try holder.execute(script: "BEGIN; SELECT count(*) FROM crm.customers")
        let started = Date()
        let waited = try restore(["latest", "--table", "crm.customers", "--replace", "--cascade-report", "--yes"])
        XCTAssertNotEqual(waited.status, 0, waited.standardError)
        XCTAssertLessThan(Date().timeIntervalSince(started), 60, "5 s lock wait by default, not minutes")
        XCTAssertTrue(waited.standardError.contains("lock"), waited.standardError)
        try holder.execute(script: "COMMIT")
        XCTAssertEqual(try query("SELECT count(*)::text FROM crm.customers")[0][0], "500")
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_namespace WHERE nspname LIKE 'restored\\_%'")[0][0], "0")

        // Ctrl-C while it waits (a long --lock-wait): the waiting statement is cancelled, exit 130, table intact.
        try holder.execute(script: "BEGIN; SELECT count(*) FROM crm.customers")
        let process = try TestProcess.start("dbrestore", ["latest", "--table", "crm.customers", "--replace", "--cascade-report", "--yes", "--lock-wait", "5m"] + common,
                                            cluster: cluster, environment: environment)
        usleep(3_000_000)
        let signalled = Date()
        process.send(SIGINT)
        XCTAssertEqual(process.waitForExit(within: 30, orFail: "dbrestore --replace did not stop within 30 s of SIGINT").exitCode,
                       ExitStatus.interrupted.rawValue)
        XCTAssertLessThan(Date().timeIntervalSince(signalled), 10, "the lock wait is cancelled, not sat out")
        try holder.execute(script: "COMMIT")
        XCTAssertEqual(try query("SELECT count(*)::text FROM crm.customers")[0][0], "500")
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_namespace WHERE nspname LIKE 'restored\\_%'")[0][0], "0")
    }
}

/// Issue 18, the gaps an attacker found: long and colliding names, keywords, partitioned
/// referrers, shared sequences, statistics and comments on constraint indexes.
extension SelectiveRestoreTests {
    private func execute(_ sql: String) throws {
        let connection = try cluster.connect(database: database)
        defer { connection.close() }
        try connection.execute(script: sql)
    }

    /// `_pre_restore_<time>` names of long index names: shortened to 63 bytes, kept apart, reported.
    func testReplaceRenamesLongNamesAsideUniquelyAndSaysSo() throws {
        let long = String(repeating: "l", count: 50)
        try execute("""
            CREATE TABLE sales.ledger (id int CONSTRAINT \(long)_pk PRIMARY KEY, a int, b int);
            CREATE INDEX \(long)_a ON sales.ledger (a);
            CREATE INDEX \(long)_b ON sales.ledger (b);
            INSERT INTO sales.ledger SELECT g, g, g FROM generate_series(1, 100) g;
            """)
        try backup()
        try execute("DELETE FROM sales.ledger WHERE id > 10")
        let result = try restore(["latest", "--table", "sales.ledger", "--replace", "--yes"])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertEqual(try query("SELECT count(*)::text FROM sales.ledger")[0][0], "100")
        XCTAssertEqual(Set(try query("SELECT indexname FROM pg_indexes WHERE schemaname = 'sales' AND tablename = 'ledger'").map { $0[0] ?? "" }),
                       ["\(long)_pk", "\(long)_a", "\(long)_b"], "the restored table has the backup's names")
        let aside = try query("SELECT indexname FROM pg_indexes WHERE schemaname = 'sales' AND tablename LIKE 'ledger\\_pre\\_restore\\_%'").map { $0[0] ?? "" }
        XCTAssertEqual(Set(aside).count, 3, "three distinct names: \(aside)")
        XCTAssertTrue(aside.allSatisfy { $0.utf8.count <= 63 && $0.contains("_pre_restore_") }, "\(aside)")
        XCTAssertEqual(try query("SELECT count(*)::text FROM sales.ledger_pre_restore_\(aside[0].components(separatedBy: "_pre_restore_")[1])")[0][0], "10",
                       "the old table is kept with its rows")
        for index in ["\(long)_pk", "\(long)_a", "\(long)_b"] {
            XCTAssertTrue(result.standardOutput.contains("renamed aside: index sales.\(index) → ") && result.standardOutput.contains("(shortened to 63 bytes"), result.standardOutput)
        }
    }

    /// Two tables (or two indexes) of one name from different schemas never merge into one schema.
    func testSameNamesFromTwoSchemasAreRefusedIntoOneSchema() throws {
        try execute("""
            CREATE TABLE sales.notes (id int PRIMARY KEY, body text); CREATE TABLE audit.notes (id int PRIMARY KEY, body text);
            INSERT INTO sales.notes VALUES (1, 'sales'); INSERT INTO audit.notes VALUES (1, 'audit'), (2, 'audit');
            CREATE TABLE sales.a (at date); CREATE INDEX by_date ON sales.a (at); CREATE TABLE audit.b (at date); CREATE INDEX by_date ON audit.b (at);
            """)
        try backup()
        let refused = try restore(["latest", "--table", "*.notes", "--into-schema", "rescue"])
        XCTAssertEqual(refused.status, 2, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("would both be named notes in schema rescue") && refused.standardError.contains("one at a time")
                      && refused.standardError.contains("--into-database"), refused.standardError)
        XCTAssertEqual(try query("SELECT to_regnamespace('rescue')::text")[0][0], nil, "nothing was created")
        let indexes = try restore(["latest", "--table", "sales.a", "--table", "audit.b", "--into-schema", "rescue"])
        XCTAssertEqual(indexes.status, 2, indexes.standardError)
        XCTAssertTrue(indexes.standardError.contains("would both be named by_date"), indexes.standardError)
        let replace = try restore(["latest", "--table", "*.notes", "--replace", "--yes"])
        XCTAssertEqual(replace.status, 2, replace.standardError)
        XCTAssertTrue(replace.standardError.contains("replace them one at a time"), replace.standardError)

        let target = "\(database!)_notes"
        defer { _ = try? cluster.connect().execute(script: "DROP DATABASE IF EXISTS \(target)") }
        let copy = try restore(["latest", "--table", "*.notes", "--into-database", target])
        XCTAssertEqual(copy.status, 0, copy.standardError)
        let connection = try cluster.connect(database: target)
        defer { connection.close() }
        XCTAssertEqual(try connection.query("SELECT (SELECT count(*) FROM sales.notes)::text || '/' || (SELECT count(*) FROM audit.notes)::text").scalar, "1/2")
    }

    /// Tables named by keywords, one with a key to itself: quoted everywhere, restored and replaced.
    func testKeywordTablesWithASelfReferencingKey() throws {
        try execute("""
            CREATE TABLE sales."order" (id int PRIMARY KEY, parent int REFERENCES sales."order", "select" text);
            CREATE TABLE sales."user" (id int PRIMARY KEY);
            INSERT INTO sales."order" VALUES (1, NULL, 'root'), (2, 1, 'child'), (3, 2, 'grandchild');
            INSERT INTO sales."user" VALUES (1);
            """)
        let id = try backup()
        let listing = try TestProcess.tool("dbrestore", ["contents", id, "--repo", repository], cluster: cluster)
        XCTAssertEqual(listing.status, 0, listing.standardError)
        XCTAssertTrue(listing.standardOutput.contains("sales.\"order\"") && listing.standardOutput.contains("sales.\"user\""), listing.standardOutput)
        let json = try contents([id, "--repo", repository])
        let qualified = Set(((json["tables"] as? [[String: Any]]) ?? []).compactMap { $0["qualified"] as? String })
        XCTAssertTrue(qualified.isSuperset(of: ["sales.\"order\"", "sales.\"user\"", "sales.orders"]), "\(qualified)")

        let rescue = try restore(["latest", "--table", "sales.\"order\"", "--table", "sales.user", "--into-schema", "rescue", "--json"])
        XCTAssertEqual(rescue.status, 0, rescue.standardError)
        XCTAssertEqual(try query("SELECT count(*)::text FROM rescue.\"order\"")[0][0], "3")
        XCTAssertEqual(try query("SELECT confrelid::regclass::text FROM pg_constraint WHERE conrelid = 'rescue.\"order\"'::regclass AND contype = 'f'")[0][0],
                       "rescue.\"order\"", "the key points at the copy itself")

        try execute("DELETE FROM sales.\"order\" WHERE id = 3")
        let replaced = try restore(["latest", "--table", "sales.order", "--replace", "--yes"])
        XCTAssertEqual(replaced.status, 0, replaced.standardError)
        XCTAssertTrue(replaced.standardOutput.contains("previous sales.\"order\" kept as sales.order_pre_restore_"), replaced.standardOutput)
        XCTAssertEqual(try query("SELECT count(*)::text FROM sales.\"order\"")[0][0], "3")
        XCTAssertEqual(try query("SELECT confrelid::regclass::text FROM pg_constraint WHERE conrelid = 'sales.\"order\"'::regclass AND contype = 'f'")[0][0],
                       "sales.\"order\"")
    }

    /// A partitioned table whose key references the replaced table: listed once, re-pointed with its partitions.
    func testAPartitionedReferrerIsListedAndRepointed() throws {
        try execute("""
            CREATE TABLE sales.shipments (order_id int REFERENCES sales.orders, at date NOT NULL) PARTITION BY RANGE (at);
            CREATE TABLE sales.shipments_2024 PARTITION OF sales.shipments FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
            CREATE TABLE sales.shipments_2025 PARTITION OF sales.shipments FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
            INSERT INTO sales.shipments SELECT id, date '2024-06-01' + (id % 400) FROM sales.orders WHERE id <= 1000;
            """)
        try backup()
        let plan = try restore(["latest", "--table", "sales.orders", "--replace", "--dry-run"])
        XCTAssertEqual(plan.status, 0, plan.standardError)
        XCTAssertTrue(plan.standardOutput.contains("FK CONSTRAINT: shipments shipments_order_id_fkey in sales → sales.orders"), plan.standardOutput)
        XCTAssertFalse(plan.standardOutput.contains("shipments_2024"), "partitions inherit the key; they are not listed apart: \(plan.standardOutput)")

        let refused = try restore(["latest", "--table", "sales.orders", "--replace", "--yes"])
        XCTAssertEqual(refused.status, 31, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("shipments_order_id_fkey on table sales.shipments") && !refused.standardError.contains("sales.shipments_2024"),
                      refused.standardError)

        let result = try restore(["latest", "--table", "sales.orders", "--replace", "--cascade-report", "--yes"])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertTrue(result.standardOutput.contains("re-pointed: constraint shipments_order_id_fkey on table sales.shipments"), result.standardOutput)
        let keys = try query("""
            SELECT conrelid::regclass::text, confrelid::regclass::text, convalidated::text FROM pg_constraint
            WHERE contype = 'f' AND conrelid::regclass::text LIKE 'sales.shipments%' ORDER BY 1
            """)
        XCTAssertEqual(keys.map { $0.compactMap { $0 } }, [["sales.shipments", "sales.orders", "true"], ["sales.shipments_2024", "sales.orders", "true"],
                                                          ["sales.shipments_2025", "sales.orders", "true"]], "the key and its partitions' copies reference the restored table")
    }

    /// --into-database: a default drawing from a sequence the table does not own brings that sequence along.
    func testASharedSequenceComesAlongIntoANewDatabase() throws {
        try execute("""
            CREATE SEQUENCE sales.ticket_numbers START 1000;
            CREATE TABLE sales.tickets (id bigint DEFAULT nextval('sales.ticket_numbers') PRIMARY KEY, what text);
            CREATE TABLE sales.refunds (id bigint DEFAULT nextval('sales.ticket_numbers') PRIMARY KEY);
            INSERT INTO sales.tickets (what) SELECT 'ticket ' || g FROM generate_series(1, 5) g; INSERT INTO sales.refunds DEFAULT VALUES;
            """)
        try backup()
        let target = "\(database!)_tickets"
        defer { _ = try? cluster.connect().execute(script: "DROP DATABASE IF EXISTS \(target)") }
        let plan = try restore(["latest", "--table", "sales.tickets", "--into-database", target, "--dry-run"])
        XCTAssertTrue(plan.standardOutput.contains("SEQUENCE: ticket_numbers in sales"), plan.standardOutput)
        let result = try restore(["latest", "--table", "sales.tickets", "--into-database", target])
        XCTAssertEqual(result.status, 0, result.standardError)
        let connection = try cluster.connect(database: target)
        defer { connection.close() }
        XCTAssertEqual(try connection.query("SELECT last_value::text FROM sales.ticket_numbers").scalar, "1005", "at the backup's value")
        XCTAssertEqual(try connection.query("INSERT INTO sales.tickets (what) VALUES ('new') RETURNING id::text").scalar, "1006")
        XCTAssertEqual(try connection.query("SELECT to_regclass('sales.refunds')::text").scalar, nil, "the other table drawing from it is not restored")
    }

    /// Extended statistics and comments on constraint-backed indexes come with the table, into a rescue schema and in place.
    func testStatisticsAndCommentsOnConstraintIndexesAreRestored() throws {
        try execute("""
            CREATE STATISTICS sales.orders_customer_total (dependencies, ndistinct) ON customer_id, total FROM sales.orders;
            COMMENT ON STATISTICS sales.orders_customer_total IS 'planner hint';
            COMMENT ON INDEX sales.orders_pkey IS 'one row per id';
            COMMENT ON INDEX sales.orders_customer IS 'by customer';
            """)
        try backup()
        let result = try restore(["latest", "--table", "sales.orders", "--into-schema", "rescue"])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertEqual(try query("SELECT stxnamespace::regnamespace::text, stxrelid::regclass::text FROM pg_statistic_ext WHERE stxname = 'orders_customer_total' ORDER BY 1").map { $0.compactMap { $0 } },
                       [["rescue", "rescue.orders"], ["sales", "sales.orders"]])
        XCTAssertEqual(try query("SELECT obj_description('rescue.orders_pkey'::regclass, 'pg_class'), obj_description('rescue.orders_customer'::regclass, 'pg_class')")[0],
                       ["one row per id", "by customer"])
        XCTAssertEqual(try query("SELECT obj_description(oid, 'pg_statistic_ext') FROM pg_statistic_ext WHERE stxnamespace = 'rescue'::regnamespace")[0][0], "planner hint")
        try execute("COMMENT ON INDEX sales.orders_customer IS 'changed live'")

        let replaced = try restore(["latest", "--table", "sales.orders", "--replace", "--cascade-report", "--yes"])
        XCTAssertEqual(replaced.status, 0, replaced.standardError)
        XCTAssertTrue(replaced.standardOutput.contains("renamed aside: statistics sales.orders_customer_total → orders_customer_total_pre_restore_"), replaced.standardOutput)
        XCTAssertEqual(try query("SELECT stxname FROM pg_statistic_ext WHERE stxrelid = 'sales.orders'::regclass")[0][0], "orders_customer_total")
        XCTAssertEqual(try query("SELECT obj_description('sales.orders_pkey'::regclass, 'pg_class'), obj_description('sales.orders_customer'::regclass, 'pg_class')")[0],
                       ["one row per id", "by customer"], "the backup's comments, on the restored indexes")
    }

    /// A table of contents of an older format (before statistics were tied to their table) or of a
    /// newer one than this dbrecovery knows (another gzip layout, say) is passed over quietly: the
    /// stream is scanned, as for a backup taken before tables of contents existed.
    func testAnOlderOrNewerTableOfContentsIsPassedOverForAScan() throws {
        for version in [1, DumpTableOfContents.currentFormatVersion + 1] {
            let id = try backup()
            let folder = "\(repository!)/backups/\(id)"
            let rewrite = try TestProcess.shell("""
                cd '\(folder)' && gunzip -c toc.json.gz | sed 's/"format_version" *: *[0-9]*/"format_version" : \(version)/' | gzip > toc.old \
                  && mv toc.old toc.json.gz && gunzip -c toc.json.gz | grep -c '"format_version" : \(version)' >/dev/null \
                  && echo "$(stat -c %s toc.json.gz) $(sha256sum toc.json.gz | cut -c1-64) $(gunzip -c toc.json.gz | wc -c)"
                """)
            XCTAssertEqual(rewrite.status, 0, rewrite.standardError)
            let fields = rewrite.standardOutput.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            XCTAssertEqual(fields.count, 3, rewrite.standardOutput)
            try editManifest(id) { manifest in
                manifest["files"] = (manifest["files"] as? [[String: Any]] ?? []).map { file in
                    guard file["name"] as? String == "toc.json.gz" else { return file }
                    return file.merging(["stored_bytes": Int(fields[0]) ?? 0, "sha256": fields[1], "raw_bytes": Int(fields[2]) ?? 0]) { _, new in new }
                }
            }
            let schema = "rescue_toc_v\(version)"
            let selective = try restore([id, "--table", "crm.customers", "--into-schema", schema])
            XCTAssertEqual(selective.status, 0, "format \(version): \(selective.standardError)")
            XCTAssertFalse(selective.standardError.contains("does not describe its dump"), "format \(version) is not damage: \(selective.standardError)")
            XCTAssertEqual(try query("SELECT count(*)::text FROM \(schema).customers")[0][0], "500", "format \(version)")
        }
    }

    /// Issue 21: dumps are one libdeflate gzip member per 1 MiB block, their table of contents format
    /// 3 (each access point a member's start); backups already in repositories are one zlib member
    /// with a format-2 table of contents (`DBRECOVERY_DUMP_LAYOUT=single-member` still writes them).
    /// Both are read from their access points: a whole restore over two connections and a one-table
    /// restore (ranged reads) bring back the source's rows, and stock `gzip -t` / `gunzip | psql` read both.
    func testDumpsOfBothGzipLayoutsRestoreWholeAndSelectivelyFromTheirAccessPoints() throws {
        let older = try tool("dbbackup", common, environment: ["DBRECOVERY_DUMP_LAYOUT": "single-member"])
        XCTAssertEqual(older.status, 0, older.standardError)
        let newer = try backup()
        // Level 0 (stored) is one zlib member whatever the layout asked for: its table of contents says 2.
        let stored = try backup(["--compression-level", "0"])
        let tables = ["crm.customers", "sales.orders", "sales.order_lines", "audit.events"]
        func digests(_ database: String, schema: (String) -> String = { $0 }) throws -> [String] {
            let connection = try cluster.connect(database: database)
            defer { connection.close() }
            return try tables.map { table in
                try connection.query("SELECT count(*) || ' ' || md5(string_agg(t::text, ',' ORDER BY t::text)) FROM \(schema(table)) t").scalar ?? ""
            }
        }
        let source = try digests(database)

        for (label, id, version, members) in [("single member", older.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines), 2, 1...1),
                                              ("member per block", newer, 3, 3...Int.max), ("level 0, stored", stored, 2, 1...1)] {
            let folder = "\(repository!)/backups/\(id)"
            let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: folder + "/dump.sql.gz")))
            let counter = try GzipDecompressor { _ in }
            try counter.write(bytes)
            try counter.finish()
            XCTAssertTrue(members.contains(counter.membersCompleted), "\(label): \(counter.membersCompleted) members")
            let toc = try JSONOutput.decoder().decode(DumpTableOfContents.self, from: Data(try gunzip(folder + "/toc.json.gz")))
            XCTAssertEqual(toc.formatVersion, version, label)
            XCTAssertGreaterThan(toc.accessPoints.count, 2, label)
            for point in toc.accessPoints.dropFirst() {
                XCTAssertEqual(bytes[Int(point.compressedOffset)] == 0x1f, version == 3, "\(label): a member starts at each access point in the new layout only")
            }

            let restored = "layout_\(UInt32.random(in: 0...UInt32.max))"
            let whole = try tool("dbrestore", [id, "--yes", "--json", "--jobs", "2", "--repo", repository, "--database-url", cluster.url(database: restored)])
            XCTAssertEqual(whole.status, 0, "\(label): \(whole.standardError)")
            XCTAssertEqual(try digests(restored), source, "\(label): the whole restore")

            let schema = "rescue_" + label.replacingOccurrences(of: " ", with: "_").filter { $0.isLetter || $0 == "_" }
            let selective = try restore([id, "--table", "sales.orders", "--into-schema", schema, "--json"])
            XCTAssertEqual(selective.status, 0, "\(label): \(selective.standardError)")
            let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(selective.standardOutput.utf8)) as? [String: Any], selective.standardOutput)
            XCTAssertEqual((report["read"] as? [String: Any])?["method"] as? String, "ranged", label)
            XCTAssertEqual(try digests(database) { $0 == "sales.orders" ? "\(schema).orders" : $0 }, source, "\(label): the one-table restore")

            let replayed = try cluster.createDatabase(prefix: "replayed")
            let stock = try TestProcess.shell("set -o pipefail; gzip -t '\(folder)/dump.sql.gz' && gunzip -c '\(folder)/dump.sql.gz' | psql -v ON_ERROR_STOP=1 -q -X '\(cluster.url(database: replayed))' >/dev/null",
                                              environment: cluster.environment)
            XCTAssertEqual(stock.status, 0, "\(label): gzip -t / gunzip | psql: \(stock.standardError)")
            XCTAssertEqual(try digests(replayed), source, "\(label): gunzip | psql")
        }
    }
}

/// Round 7 (attack on restore fidelity): names with line breaks, row-type users and publications.
extension SelectiveRestoreTests {
    /// pg_dump's headers write a line break in a name as a space: `app."a⏎b"` and `app."a b"` look
    /// alike in the table of contents. A selection that takes either is refused before anything is
    /// created; a line-break name the selection does not know (an owned sequence) is refused as its
    /// statement comes, inside the restore's transaction. Nothing is ever created in the live schema.
    func testALineBreakInANameIsRefusedAndNothingLandsInTheLiveSchema() throws {
        try execute("""
            CREATE SCHEMA app;
            CREATE TABLE app."a b" (id int PRIMARY KEY); INSERT INTO app."a b" SELECT generate_series(1, 3);
            CREATE TABLE app."a\nb" (id int PRIMARY KEY); INSERT INTO app."a\nb" SELECT generate_series(1, 5);
            CREATE TABLE app.tickets (id int PRIMARY KEY, n int); INSERT INTO app.tickets VALUES (1, 1);
            CREATE SEQUENCE app."ticket\nnumbers" OWNED BY app.tickets.n;
            """)
        let id = try backup()
        // The listing says what it cannot show: the two tables look alike there, so neither's rows are shown.
        let listing = try contents([id, "--repo", repository])
        let alike = ((listing["tables"] as? [[String: Any]]) ?? []).filter { $0["qualified"] as? String == "app.\"a b\"" }
        XCTAssertEqual(alike.count, 2, "\(listing["tables"] ?? "")")
        XCTAssertTrue(alike.allSatisfy { $0["rows"] == nil || $0["rows"] is NSNull }, "\(alike)")
        XCTAssertTrue((listing["notes"] as? [String] ?? []).contains { $0.hasPrefix("table app.\"a\\nb\" has a line break in its name") }, "\(listing["notes"] ?? "")")
        try execute("DROP TABLE app.\"a\nb\"")
        func live(_ name: String) throws -> Bool { try query("SELECT to_regclass('app.\"\(name)\"') IS NOT NULL")[0][0] == "t" }
        func schemas() throws -> String? { try query("SELECT string_agg(nspname, ',') FROM pg_namespace WHERE nspname LIKE 'rescue%' OR nspname LIKE 'restored\\_%'")[0][0] }

        for arguments in [["--table", "app.\"a b\"", "--into-schema", "rescue"], ["--table", "app.\"a b\"", "--replace", "--yes"],
                          ["--table", "app.\"a\nb\"", "--into-schema", "rescue"], ["--table", "app.*", "--into-schema", "rescue"],
                          ["--schema", "app", "--into-database", "\(database!)_app"]] {
            let refused = try restore([id] + arguments)
            XCTAssertEqual(refused.status, 2, "\(arguments): \(refused.standardError)")
            XCTAssertTrue(refused.standardError.contains("table app.\"a\\nb\" of backup \(id) has a line break in its name")
                          && refused.standardError.contains("app.\"a b\"") && refused.standardError.contains("nothing was changed"), refused.standardError)
            XCTAssertFalse(try live("a\nb"), "\(arguments): the lost table is not re-created in the live schema")
            XCTAssertNil(try schemas(), "\(arguments): no rescue or staging schema is left")
        }
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_database WHERE datname = '\(database!)_app'")[0][0], "0")

        // The owned sequence's header name is `ticket numbers`, which the rewrite into the rescue schema
        // would not match: refused inside the transaction, before its CREATE SEQUENCE runs in app.
        try execute("DROP SEQUENCE app.\"ticket\nnumbers\"")
        let sequence = try restore([id, "--table", "app.tickets", "--into-schema", "rescue"])
        XCTAssertEqual(sequence.status, 2, sequence.standardError)
        XCTAssertTrue(sequence.standardError.contains("names app.\"ticket\\nnumbers\", with a line break") && sequence.standardError.contains("nothing was changed"),
                      sequence.standardError)
        XCTAssertFalse(try live("ticket\nnumbers"), "the sequence is not created in the live schema")
        XCTAssertNil(try schemas())
    }

    /// A table named with a space (no line break): its constraints' tags (`x y x y_pkey`) are matched
    /// to it, so the restored copy has its key and `--replace` passes the definition check.
    func testATableNamedWithASpaceKeepsItsConstraints() throws {
        try execute("""
            CREATE TABLE sales."x y" (id int PRIMARY KEY, n int DEFAULT 7 CHECK (n > 0)); INSERT INTO sales."x y" (id) SELECT generate_series(1, 4);
            """)
        try backup()
        try execute("DELETE FROM sales.\"x y\" WHERE id > 2")
        let rescue = try restore(["latest", "--table", "sales.\"x y\"", "--into-schema", "rescue"])
        XCTAssertEqual(rescue.status, 0, rescue.standardError)
        XCTAssertEqual(Set(try query("SELECT contype::text FROM pg_constraint WHERE conrelid = 'rescue.\"x y\"'::regclass").map { $0[0] ?? "" }), ["p", "c"])
        XCTAssertEqual(try query("SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'rescue.\"x y\"'::regclass")[0][0], "7")

        let replaced = try restore(["latest", "--table", "sales.\"x y\"", "--replace", "--yes"])
        XCTAssertEqual(replaced.status, 0, replaced.standardError)
        XCTAssertEqual(try query("SELECT count(*)::text FROM sales.\"x y\"")[0][0], "4")
        XCTAssertEqual(try query("SELECT count(*)::text FROM pg_constraint WHERE conrelid = 'sales.\"x y\"'::regclass AND contype = 'p'")[0][0], "1")
    }

    /// Functions taking or returning the table's row type, columns of that type (or its array), and a
    /// publication listing the table are bound to the live table's OID: `--replace` would leave them on
    /// the kept copy. Refused, naming them, nothing changed. A publication is left out of `--schema
    /// … --into-database` (its membership without the publication failed the restore).
    func testRowTypeUsersAndPublicationsStopAReplaceAndStayOutOfANewDatabase() throws {
        try execute("""
            CREATE TABLE crm.plans (id int PRIMARY KEY, fee numeric); INSERT INTO crm.plans VALUES (1, 10), (2, 20);
            CREATE FUNCTION crm.plan_fee(p crm.plans) RETURNS numeric LANGUAGE sql AS 'SELECT p.fee';
            CREATE FUNCTION crm.cheap_plans() RETURNS SETOF crm.plans LANGUAGE sql AS 'SELECT * FROM crm.plans WHERE fee < 15';
            CREATE TABLE crm.plan_snapshots (snap crm.plans);
            CREATE TABLE crm.plan_history (snaps crm.plans[]);
            CREATE PUBLICATION pub_plans FOR TABLE crm.plans;
            COMMENT ON PUBLICATION pub_plans IS 'to the billing replica';
            """)
        try backup()
        let copy = "\(database!)_crm"
        defer { _ = try? cluster.connect().execute(script: "DROP DATABASE IF EXISTS \(copy)") }
        let schema = try restore(["latest", "--schema", "crm", "--into-database", copy])
        XCTAssertEqual(schema.status, 0, schema.standardError)
        let connection = try cluster.connect(database: copy)
        XCTAssertEqual(try connection.query("SELECT count(*)::text FROM crm.plans").scalar, "2")
        XCTAssertEqual(try connection.query("SELECT count(*)::text FROM pg_publication").scalar, "0", "the copy publishes nothing")
        connection.close()

        try execute("UPDATE crm.plans SET fee = 0")
        for extra in [[], ["--cascade-report"]] {
            let refused = try restore(["latest", "--table", "crm.plans", "--replace", "--yes"] + extra)
            XCTAssertEqual(refused.status, 31, refused.standardError)
            XCTAssertTrue(refused.standardError.contains("crm.plans") && refused.standardError.contains("nothing was changed"), refused.standardError)
            if extra.isEmpty {
                for dependent in ["function crm.plan_fee(crm.plans)", "function crm.cheap_plans()", "column snap of table crm.plan_snapshots",
                                  "column snaps of table crm.plan_history", "pub_plans"] {
                    XCTAssertTrue(refused.standardError.contains(dependent), "\(dependent) is named: \(refused.standardError)")
                }
                XCTAssertTrue(refused.standardError.contains("--cascade-report re-points views and foreign keys only"), "the hint does not promise a re-point: \(refused.standardError)")
            } else {
                XCTAssertTrue(refused.standardError.contains("cannot be re-pointed"), refused.standardError)
            }
            XCTAssertEqual(try query("SELECT sum(fee)::text FROM crm.plans")[0][0], "0", "refused: the live table is untouched")
            XCTAssertEqual(try query("SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = 'pub_plans'").map { $0[0] ?? "" }, ["crm.plans"])
            XCTAssertEqual(try query("SELECT pg_get_function_arguments('crm.plan_fee'::regproc)")[0][0], "p crm.plans")
            XCTAssertEqual(try query("SELECT count(*)::text FROM pg_class WHERE relname LIKE 'plans\\_pre\\_restore%' OR relnamespace::regnamespace::text LIKE 'restored\\_%'")[0][0], "0")
        }

        try execute("DROP FUNCTION crm.plan_fee(crm.plans), crm.cheap_plans(); DROP TABLE crm.plan_snapshots, crm.plan_history; DROP PUBLICATION pub_plans")
        let replaced = try restore(["latest", "--table", "crm.plans", "--replace", "--yes"])
        XCTAssertEqual(replaced.status, 0, replaced.standardError)
        XCTAssertEqual(try query("SELECT sum(fee)::text FROM crm.plans")[0][0], "30")
    }

    /// The last check before a rescue (or staging) schema is committed: a relation the transaction
    /// created or changed outside it is refused; a live table a staged key references is not.
    func testARelationWrittenOutsideTheRescueSchemaStopsTheCommit() throws {
        let connection = try cluster.connect(database: database)
        defer { connection.close() }
        try connection.execute(script: """
            BEGIN; CREATE SCHEMA rescue_check; CREATE TABLE rescue_check.t (id bigint REFERENCES crm.customers, body text);
            CREATE INDEX ON rescue_check.t (id); CREATE SEQUENCE rescue_check.s;
            """)
        XCTAssertNoThrow(try SelectiveRestore.refuseStrayRelations(outside: "rescue_check", on: connection), "its own objects, toast and a key's live target")
        try connection.execute(script: "CREATE TABLE sales.escaped (id int)")
        XCTAssertThrowsError(try SelectiveRestore.refuseStrayRelations(outside: "rescue_check", on: connection)) { error in
            let failure = RecoveryError.classify(error)
            XCTAssertEqual(failure.code, .restoreFailed)
            XCTAssertTrue(failure.message.contains("sales.escaped") && failure.message.contains("outside schema rescue_check"), failure.message)
        }
        try connection.execute(script: "ROLLBACK; BEGIN; CREATE SCHEMA rescue_check; ALTER TABLE sales.orders ADD COLUMN late int")
        XCTAssertThrowsError(try SelectiveRestore.refuseStrayRelations(outside: "rescue_check", on: connection), "a live table altered")
        try connection.execute(script: "ROLLBACK")
    }
}
