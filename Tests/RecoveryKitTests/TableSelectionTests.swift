import PostgresClient
@testable import RecoveryKit
import XCTest

/// Issue 18: which objects a selective restore takes, and how it points them at another schema.
final class TableSelectionTests: XCTestCase {
    typealias Name = DumpTableOfContents.Name

    /// A selective restore that names no table and no schema is refused before any repository or
    /// server is touched (the repository here does not exist).
    func testASelectiveRestoreThatNamesNothingIsAUsageError() throws {
        let configuration = SelectiveRestoreConfiguration(target: try ConnectionTarget("postgresql://app@db.invalid/app"),
                                                          repositories: ["/nonexistent/dbrecovery"], backup: "latest")
        XCTAssertThrowsError(try SelectiveRestore.plan(configuration)) { error in
            XCTAssertEqual((error as? RecoveryError)?.code, .usage, "\(error)")
        }
    }

    func testQualifiedNamesAreFoundOutsideCommentsAndBodiesAndInRegclassLiterals() {
        let sql = Array("""
            ALTER TABLE ONLY sales.orders ALTER COLUMN id SET DEFAULT nextval('sales.orders_id_seq'::regclass) -- sales.not_this
            /* sales.nor_this */ , $f$ sales.orders $f$, 'sales.orders'::text, 'sales.orders is text', "Sales"."Ord""er".col, E'sales.x\\'y'
            """.utf8)
        let found = QualifiedNames.references(in: sql)
        XCTAssertEqual(found.map(\.parts), [["sales", "orders"], ["sales", "orders_id_seq"], ["Sales", "Ord\"er", "col"]])
        XCTAssertEqual(found.map(\.inLiteral), [false, true, false])
    }

    /// Names read back as the server writes them (`regclass::text`, pg_dump's fmtId): keywords and
    /// anything but lower-case letters, digits and `_` quoted.
    func testDisplayQuotesKeywordsAsTheServerDoes() {
        XCTAssertEqual(DumpTableOfContents.Name(schema: "sales", name: "order").qualified, "sales.\"order\"")
        XCTAssertEqual(DumpTableOfContents.Name(schema: "user", name: "orders").qualified, "\"user\".orders")
        XCTAssertEqual(QualifiedNames.display("name"), "name", "an unreserved keyword reads back bare")
        XCTAssertEqual(QualifiedNames.display("a$b"), "\"a$b\"")
        XCTAssertEqual(QualifiedNames.display("Orders"), "\"Orders\"")
    }

    /// `_pre_restore_<time>` names: long ones shortened to 63 bytes with a digest of the whole name, never alike.
    func testNamesRenamedAsideAreUniqueAndFitNamedatalen() {
        let suffix = "_pre_restore_20261126_120000"
        var taken: Set<String> = ["orders"]
        XCTAssertEqual(SelectiveRestore.asideName("orders", suffix: suffix, taken: &taken), "orders" + suffix)
        let long = String(repeating: "é", count: 25)   // 50 bytes
        let first = SelectiveRestore.asideName(long + "_a", suffix: suffix, taken: &taken)
        let second = SelectiveRestore.asideName(long + "_b", suffix: suffix, taken: &taken)
        XCTAssertNotEqual(first, second)
        XCTAssertTrue([first, second].allSatisfy { $0.utf8.count <= 63 && $0.hasSuffix(suffix) && $0.hasPrefix("éé") }, "\(first) \(second)")
        taken.insert("short_pre")
        let clash = SelectiveRestore.asideName("orders", suffix: suffix, taken: &taken)
        XCTAssertNotEqual(clash, "orders" + suffix, "a name already taken gets the digest too")
        XCTAssertTrue(taken.isSuperset(of: [first, second, clash]))
    }

    func testRewriteMovesOnlyTheSelectedRelations() {
        let moving: Set<Name> = [Name(schema: "sales", name: "orders"), Name(schema: "sales", name: "orders_id_seq")]
        func rewrite(_ text: String) -> String {
            String(decoding: QualifiedNames.rewrite(Array(text.utf8), moving: moving, to: "res'cue"), as: UTF8.self)
        }
        XCTAssertEqual(rewrite("ALTER SEQUENCE sales.orders_id_seq OWNED BY sales.orders.id"),
                       "ALTER SEQUENCE \"res'cue\".orders_id_seq OWNED BY \"res'cue\".orders.id")
        XCTAssertEqual(rewrite("SELECT pg_catalog.setval('sales.orders_id_seq', 42, true)"), "SELECT pg_catalog.setval('\"res''cue\".orders_id_seq', 42, true)")
        XCTAssertEqual(rewrite("CREATE TRIGGER t AFTER INSERT ON sales.orders FOR EACH ROW EXECUTE FUNCTION sales.audit()"),
                       "CREATE TRIGGER t AFTER INSERT ON \"res'cue\".orders FOR EACH ROW EXECUTE FUNCTION sales.audit()",
                       "a function of the schema stays where it is (it exists in the live database)")
        XCTAssertEqual(rewrite("CREATE TABLE sales.orders (note text DEFAULT 'sales.orders'::text, kind sales.kind)"),
                       "CREATE TABLE \"res'cue\".orders (note text DEFAULT 'sales.orders'::text, kind sales.kind)",
                       "text that reads like a name is not a relation; a type of the schema stays where it is")
    }

    private func entry(_ kind: String, _ schema: String?, _ name: String, table: Name? = nil, references: [Name]? = nil) -> DumpTableOfContents.Entry {
        .init(kind: kind, schema: schema, name: name, table: table, references: references, start: 0, end: 0)
    }

    private var toc: DumpTableOfContents {
        let orders = Name(schema: "sales", name: "orders"), customers = Name(schema: "crm", name: "customers")
        var entries = [
            entry("SCHEMA", nil, "crm"), entry("SCHEMA", nil, "sales"), entry("FUNCTION", "audit", "note()"),
            entry("TABLE", "crm", "customers"), entry("TABLE", "sales", "orders"), entry("COMMENT", "sales", "TABLE orders"),
            entry("COMMENT", "sales", "COLUMN orders.total"), entry("SEQUENCE", "sales", "orders_id_seq"),
            entry("SEQUENCE OWNED BY", "sales", "orders_id_seq", table: orders), entry("TABLE", "sales", "order_lines"),
            entry("VIEW", "sales", "big_orders", references: [orders]), entry("DEFAULT", "sales", "orders id"),
            entry("TABLE DATA", "crm", "customers"), entry("TABLE DATA", "sales", "orders"), entry("SEQUENCE SET", "sales", "orders_id_seq"),
            entry("CONSTRAINT", "sales", "orders orders_pkey"), entry("INDEX", "sales", "orders_customer", table: orders),
            entry("COMMENT", "sales", "INDEX orders_customer"), entry("TRIGGER", "sales", "orders orders_audit"),
            entry("FK CONSTRAINT", "sales", "orders orders_customer_id_fkey", references: [customers]),
            entry("FK CONSTRAINT", "sales", "order_lines order_lines_order_id_fkey", references: [orders]),
            entry("ACL", nil, "SCHEMA sales"), entry("ACL", "sales", "TABLE orders"), entry("ACL", "sales", "SEQUENCE orders_id_seq"),
            entry("ACL", "crm", "TABLE customers"),
        ]
        for index in entries.indices { entries[index].start = UInt64(index * 10); entries[index].end = UInt64(index * 10 + 10) }
        return DumpTableOfContents(formatVersion: DumpTableOfContents.currentFormatVersion, dumpBytes: UInt64(entries.count * 10), compressedBytes: 0, entries: entries, settings: [], accessPoints: [])
    }

    func testOneTableTakesEverythingThatMakesItUsableAndReportsTheRest() throws {
        let selection = try TableSelection(toc: toc, tablePatterns: ["sales.orders"], schemaPatterns: [], supporting: false, wholeSchemas: false, backupID: "b")
        XCTAssertEqual(selection.tables, [Name(schema: "sales", name: "orders")])
        XCTAssertEqual(selection.entries.map { "\($0.kind): \($0.name)" }, [
            "TABLE: orders", "COMMENT: TABLE orders", "COMMENT: COLUMN orders.total", "SEQUENCE: orders_id_seq", "SEQUENCE OWNED BY: orders_id_seq",
            "DEFAULT: orders id", "TABLE DATA: orders", "SEQUENCE SET: orders_id_seq", "CONSTRAINT: orders orders_pkey", "INDEX: orders_customer",
            "COMMENT: INDEX orders_customer", "TRIGGER: orders orders_audit", "ACL: TABLE orders", "ACL: SEQUENCE orders_id_seq",
        ])
        XCTAssertEqual(selection.leftOutForeignKeys.map(\.name), ["orders orders_customer_id_fkey"])
        XCTAssertEqual(selection.referencingForeignKeys.map(\.name), ["order_lines order_lines_order_id_fkey"])
        XCTAssertEqual(selection.dependentViews.map(\.name), ["big_orders"])
    }

    func testPatternsAndNearestNames() throws {
        let all = try TableSelection(toc: toc, tablePatterns: ["SALES.*"], schemaPatterns: [], supporting: false, wholeSchemas: false, backupID: "b")
        XCTAssertEqual(all.tables.map(\.name), ["orders", "order_lines"], "bare names fold to lower case, * matches")
        XCTAssertEqual(try TableSelection(toc: toc, tablePatterns: ["sales.order?"], schemaPatterns: [], supporting: false, wholeSchemas: false, backupID: "b").tables.map(\.name), ["orders"])
        XCTAssertThrowsError(try TableSelection(toc: toc, tablePatterns: ["\"Sales\".orders"], schemaPatterns: [], supporting: false, wholeSchemas: false, backupID: "b"),
                             "a quoted part matches exactly")
        XCTAssertThrowsError(try TableSelection(toc: toc, tablePatterns: ["sales.ordrs"], schemaPatterns: [], supporting: false, wholeSchemas: false, backupID: "b")) { error in
            let error = RecoveryError.classify(error)
            XCTAssertEqual(error.code, .usage)
            XCTAssertEqual(error.message, "table sales.ordrs is not in backup b")
            XCTAssertTrue(error.hint?.hasPrefix("nearest tables: sales.orders") ?? false, error.hint ?? "")
        }
        XCTAssertThrowsError(try TableSelection(toc: toc, tablePatterns: ["orders"], schemaPatterns: [], supporting: false, wholeSchemas: false, backupID: "b")) { error in
            XCTAssertTrue(RecoveryError.classify(error).message.contains("names no schema"))
        }
    }

    func testASchemaIntoANewDatabaseTakesWhatItsTablesNeed() throws {
        let selection = try TableSelection(toc: toc, tablePatterns: [], schemaPatterns: ["sales"], supporting: true, wholeSchemas: true, backupID: "b")
        let names = selection.entries.map { "\($0.kind): \($0.name)" }
        XCTAssertTrue(names.contains("FUNCTION: note()") && names.contains("SCHEMA: sales") && names.contains("ACL: SCHEMA sales"), "\(names)")
        XCTAssertTrue(names.contains("VIEW: big_orders") && names.contains("FK CONSTRAINT: order_lines order_lines_order_id_fkey"), "\(names)")
        XCTAssertFalse(names.contains("TABLE: customers") || names.contains("TABLE DATA: customers") || names.contains("ACL: TABLE customers"), "\(names)")
        XCTAssertEqual(selection.leftOutForeignKeys.map(\.name), ["orders orders_customer_id_fkey"])
    }

    /// A `<table> <name>` tag whose table name holds a space is split after the longest known table
    /// name; a name with a line break is compared by the form pg_dump's headers give it.
    func testTagsOfTablesWithSpacesAndHeaderFormsOfLineBreaks() {
        let relations: Set<Name> = [Name(schema: "app", name: "a b"), Name(schema: "app", name: "a")]
        XCTAssertEqual(TableSelection.splitTag("a b a b_pkey", schema: "app", relations: relations)?.relation, Name(schema: "app", name: "a b"))
        XCTAssertEqual(TableSelection.splitTag("a b a b_pkey", schema: "app", relations: relations)?.name, "a b_pkey")
        XCTAssertEqual(TableSelection.splitTag("x y_pkey", schema: "app", relations: relations)?.relation, Name(schema: "app", name: "x"), "unknown: the first word")
        XCTAssertNil(TableSelection.splitTag("orders", schema: "app", relations: relations))
        XCTAssertEqual(TableSelection.headerForm("a\r\nb\nc"), "a  b c", "each CR and LF, as pg_dump's sanitize_line")
        XCTAssertFalse(TableSelection.hasLineBreak("a b"))
        XCTAssertEqual(TableSelection.shown(Name(schema: "app", name: "a\nb")), "app.\"a\\nb\"")
    }
}
