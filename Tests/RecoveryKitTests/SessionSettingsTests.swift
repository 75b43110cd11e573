@testable import RecoveryKit
import XCTest

/// Which statements of a dump are session settings, and what a connection must run to reach a state.
final class SessionSettingsTests: XCTestCase {
    private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    private func settings(_ statements: [String]) -> SessionSettings {
        var settings = SessionSettings()
        for statement in statements { XCTAssertTrue(settings.absorb(bytes(statement)), statement) }
        return settings
    }

    func testRecognisesEveryFormOfSessionSetting() {
        let cases: [(String, SessionSettings.Change?)] = [
            ("SET default_tablespace = ''", .set("default_tablespace")),
            ("SET search_path TO public, \"Sales\"", .set("search_path")),
            ("set Client_Encoding = 'LATIN1'", .set("client_encoding")),
            ("SET SESSION row_security = off", .set("row_security")),
            ("SET SESSION AUTHORIZATION 'alice'", .set("session_authorization")),
            ("SET ROLE bob", .set("role")),
            ("SET TIME ZONE 'UTC'", .set("timezone")),
            ("SET NAMES 'UTF8'", .set("client_encoding")),
            ("SET SCHEMA 'public'", .set("search_path")),
            ("SET XML OPTION content", .set("xmloption")),
            ("SELECT pg_catalog.set_config('search_path', '', false)", .set("search_path")),
            ("SELECT set_config('Search_Path', 'a, b', FALSE)", .set("search_path")),
            ("RESET default_tablespace", .reset("default_tablespace")),
            ("RESET ROLE", .reset("role")),
            ("RESET SESSION AUTHORIZATION", .reset("session_authorization")),
            ("RESET ALL", .resetAll),
            // Not session settings: transaction-scoped, or something else entirely.
            ("SET LOCAL search_path = x", nil),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", nil),
            ("SET CONSTRAINTS ALL DEFERRED", nil),
            ("SELECT pg_catalog.set_config('search_path', '', true)", nil),
            ("SELECT pg_catalog.setval('public.s', 42, true)", nil),
            ("CREATE TABLE settings (x int)", nil),
        ]
        for (statement, change) in cases {
            XCTAssertEqual(SessionSettings.change(made: bytes(statement)), change, statement)
        }
    }

    func testTheLastSettingWinsAndResetsRemove() {
        let state = settings(["SET default_tablespace = ''", "SET search_path = a", "SET default_tablespace = ts2", "RESET search_path"])
        XCTAssertEqual(state.entries.map(\.name), ["default_tablespace"])
        XCTAssertEqual(state["default_tablespace"], bytes("SET default_tablespace = ts2"))
        let afterAll = settings(["SET ROLE bob", "SET lock_timeout = 0", "RESET ALL"])
        XCTAssertEqual(afterAll.entries.map(\.name), ["role"], "RESET ALL leaves the role")
    }

    func testStandardConformingStrings() {
        XCTAssertTrue(SessionSettings().standardConformingStrings)
        XCTAssertFalse(settings(["SET standard_conforming_strings = off"]).standardConformingStrings)
        XCTAssertFalse(settings(["SET standard_conforming_strings TO 'false'"]).standardConformingStrings)
        XCTAssertFalse(settings(["SET SESSION standard_conforming_strings = OFF"]).standardConformingStrings)
        XCTAssertTrue(settings(["SET standard_conforming_strings = DEFAULT"]).standardConformingStrings)
        XCTAssertFalse(settings(["SELECT pg_catalog.set_config('standard_conforming_strings', 'off', false)"]).standardConformingStrings)
        XCTAssertTrue(settings(["SET standard_conforming_strings = off", "SET standard_conforming_strings = on"]).standardConformingStrings)
        XCTAssertTrue(settings(["SET standard_conforming_strings = off", "RESET standard_conforming_strings"]).standardConformingStrings)
    }

    func testAConnectionRunsOnlyWhatDiffersEncodingFirst() {
        let before = settings(["SET search_path = a", "SET default_tablespace = ''"])
        let after = settings(["SET search_path = a", "SET default_tablespace = ''", "SET default_tablespace = ts2", "SET client_encoding = 'LATIN1'"])
        XCTAssertEqual(after.statements(from: before).map { String(decoding: $0, as: UTF8.self) },
                       ["SET client_encoding = 'LATIN1'", "SET default_tablespace = ts2"])
        XCTAssertEqual(before.statements(from: after).map { String(decoding: $0, as: UTF8.self) },
                       ["RESET client_encoding", "SET default_tablespace = ''"])
        XCTAssertEqual(after.statements(from: after), [])
        XCTAssertEqual(after.statements(from: SessionSettings()).count, 3)
    }

    func testRoleChangesReturnToTheLoginRoleFirst() {
        let asAlice = settings(["SET search_path = a", "SET SESSION AUTHORIZATION alice", "SET ROLE writers"])
        let asBob = settings(["SET search_path = b", "SET SESSION AUTHORIZATION bob"])
        XCTAssertEqual(asBob.statements(from: asAlice).map { String(decoding: $0, as: UTF8.self) },
                       ["RESET ROLE", "RESET SESSION AUTHORIZATION", "SET search_path = b", "SET SESSION AUTHORIZATION bob"])
        XCTAssertEqual(asAlice.statements(from: SessionSettings()).map { String(decoding: $0, as: UTF8.self) },
                       ["SET search_path = a", "SET SESSION AUTHORIZATION alice", "SET ROLE writers"])
    }
}
