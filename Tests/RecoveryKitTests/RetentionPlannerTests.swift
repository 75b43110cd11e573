import Foundation
@testable import RecoveryKit
import XCTest

final class RetentionPlannerTests: XCTestCase {
    private let none = RetentionPolicy.Tier(keepLast: 0, keepWithin: nil, glacierAfter: nil, snapshots: true)

    private func date(_ text: String) -> Date {
        Timestamp.parse(text.count == 10 ? text + "T12:00:00Z" : text)!
    }

    private func backups(_ times: [String]) -> [RetentionCandidate] {
        times.enumerated().map { index, time in RetentionCandidate(id: "b\(String(format: "%02d", index))-\(time)", takenAt: date(time)) }
    }

    private func kept(_ candidates: [RetentionCandidate], tier: RetentionPolicy.Tier? = nil, daily: Int = 0, weekly: Int = 0,
                      monthly: Int = 0, zone: String = "UTC", now: String = "2030-01-01") throws -> [String: [String]] {
        let decisions = try RetentionPlanner.plan(candidates, tier: tier ?? none,
                                                  snapshots: .init(daily: daily, weekly: weekly, monthly: monthly, timeZone: zone),
                                                  newestVerified: nil, now: date(now))
        var result: [String: [String]] = [:]
        for decision in decisions where decision.action != .delete {
            result[String(decision.id.split(separator: "-", maxSplits: 1)[1])] = decision.keptBy
        }
        return result
    }

    func testSeveralBackupsPerDayKeepTheNewestOfEachDay() throws {
        let list = backups(["2024-03-03T10:00:00Z", "2024-03-03T08:00:00Z", "2024-03-02T23:00:00Z", "2024-03-02T01:00:00Z", "2024-03-01T12:00:00Z"])
        XCTAssertEqual(try kept(list, daily: 2), ["2024-03-03T10:00:00Z": ["daily #1"], "2024-03-02T23:00:00Z": ["daily #2"]])
    }

    func testEmptyDaysAreSkippedNotCounted() throws {
        let list = backups(["2024-03-10", "2024-03-07", "2024-03-01", "2024-02-20"])
        XCTAssertEqual(try kept(list, daily: 3), ["2024-03-10": ["daily #1"], "2024-03-07": ["daily #2"], "2024-03-01": ["daily #3"]])
    }

    func testARuleWithSlotsLeftAlsoKeepsTheOldest() throws {
        let list = backups(["2024-03-10T12:00:00Z", "2024-03-10T06:00:00Z", "2024-03-07T12:00:00Z", "2024-03-07T06:00:00Z"])
        XCTAssertEqual(try kept(list, daily: 5), ["2024-03-10T12:00:00Z": ["daily #1"], "2024-03-07T12:00:00Z": ["daily #2"],
                                                  "2024-03-07T06:00:00Z": ["daily oldest"]])
    }

    func testISOWeeksSpanTheYearBoundary() throws {
        // 2020-12-28 (Mon) … 2021-01-03 (Sun) is ISO week 2020-W53; 2021-01-04 starts 2021-W01.
        let list = backups(["2021-01-04", "2021-01-03", "2020-12-31", "2020-12-28", "2020-12-27"])
        XCTAssertEqual(try kept(list, weekly: 2), ["2021-01-04": ["weekly #1"], "2021-01-03": ["weekly #2"]])
        XCTAssertEqual(try kept(list, weekly: 3), ["2021-01-04": ["weekly #1"], "2021-01-03": ["weekly #2"], "2020-12-27": ["weekly #3"]])
    }

    func testDailyWeeklyAndMonthlyOverlapAndCountIndependently() throws {
        let days = (0..<12).map { offset in
            let day = Calendar(identifier: .gregorian).date(byAdding: .day, value: -offset, to: date("2024-02-05"))!
            return String(Timestamp.format(day).prefix(10))
        }
        XCTAssertEqual(try kept(backups(days), daily: 2, weekly: 2, monthly: 2), [
            "2024-02-05": ["daily #1", "weekly #1", "monthly #1"],
            "2024-02-04": ["daily #2", "weekly #2"],
            "2024-01-31": ["monthly #2"],
        ])
    }

    func testKeepLastOverlapsDaily() throws {
        let tier = RetentionPolicy.Tier(keepLast: 3, keepWithin: nil, glacierAfter: nil, snapshots: true)
        let list = backups(["2024-03-03T10:00:00Z", "2024-03-03T08:00:00Z", "2024-03-03T06:00:00Z", "2024-03-02", "2024-03-01"])
        XCTAssertEqual(try kept(list, tier: tier, daily: 2), [
            "2024-03-03T10:00:00Z": ["last #1", "daily #1"], "2024-03-03T08:00:00Z": ["last #2"],
            "2024-03-03T06:00:00Z": ["last #3"], "2024-03-02": ["daily #2"],
        ])
    }

    func testEqualTimestampsBreakByIDWhateverTheInputOrder() throws {
        let tier = RetentionPolicy.Tier(keepLast: 1, keepWithin: nil, glacierAfter: nil, snapshots: false)
        let a = RetentionCandidate(id: "20240301T120000Z-aaaa", takenAt: date("2024-03-01"))
        let b = RetentionCandidate(id: "20240301T120000Z-bbbb", takenAt: date("2024-03-01"))
        for order in [[a, b], [b, a]] {
            let decisions = try RetentionPlanner.plan(order, tier: tier, snapshots: .init(daily: 0, weekly: 0, monthly: 0, timeZone: "UTC"),
                                                      newestVerified: nil, now: date("2024-04-01"))
            XCTAssertEqual(decisions.map(\.action), [.keep, .delete])
            XCTAssertEqual(decisions[0].id, b.id)
        }
    }

    func testTimeZoneMovesTheDayBoundary() throws {
        // 23:30 UTC on the 1st is 00:30 on the 2nd in Berlin; 22:30 UTC is still the 1st there.
        let list = backups(["2024-03-01T23:30:00Z", "2024-03-01T22:30:00Z", "2024-03-01T12:00:00Z"])
        XCTAssertEqual(try kept(list, daily: 2, zone: "UTC"),
                       ["2024-03-01T23:30:00Z": ["daily #1"], "2024-03-01T12:00:00Z": ["daily oldest"]])
        XCTAssertEqual(try kept(list, daily: 2, zone: "Europe/Berlin"),
                       ["2024-03-01T23:30:00Z": ["daily #1"], "2024-03-01T22:30:00Z": ["daily #2"]])
    }

    func testPinnedAndNewestVerifiedAreAlwaysKeptAndGlacierAfterMovesOldOnes() throws {
        let tier = RetentionPolicy.Tier(keepLast: 1, keepWithin: RetentionDuration(hours: 24 * 90, text: "90d"),
                                        glacierAfter: RetentionDuration(hours: 24 * 30, text: "30d"), snapshots: false)
        var list = backups(["2024-06-01", "2024-05-20", "2024-04-01", "2024-01-01"])
        list[3].pinned = true
        let decisions = try RetentionPlanner.plan(list, tier: tier, snapshots: .init(daily: 0, weekly: 0, monthly: 0, timeZone: "UTC"),
                                                  newestVerified: list[1].id, now: date("2024-06-02"))
        XCTAssertEqual(decisions.map(\.action), [.keep, .keep, .moveToGlacier, .moveToGlacier])
        XCTAssertEqual(decisions[1].keptBy, ["within 90d", "newest verified"])
        XCTAssertEqual(decisions[3].keptBy, ["pinned"])
    }

    func testEveryDeleteAndMoveSaysWhy() throws {
        let snapshots = RetentionPolicy.Snapshots(daily: 1, weekly: 0, monthly: 1, timeZone: "UTC")
        let local = try RetentionPlanner.plan(backups(["2024-03-03", "2024-03-02", "2024-03-01"]), tier: RetentionPolicy.builtIn.local,
                                              snapshots: snapshots, newestVerified: nil, now: date("2024-03-04"))
        XCTAssertEqual(local.map(\.reason), [nil, nil, nil], "a keep has no deletion reason")
        let tenPlusTwo = backups((1...12).map { String(format: "2024-03-%02d", $0) })
        let trimmed = try RetentionPlanner.plan(tenPlusTwo, tier: RetentionPolicy.builtIn.local, snapshots: snapshots,
                                                newestVerified: nil, now: date("2024-03-13"))
        XCTAssertEqual(trimmed.filter { $0.action == .delete }.map(\.reason), ["older than the 10 newest", "older than the 10 newest"])

        let s3 = RetentionPolicy.builtIn.s3
        let old = backups(["2024-06-01", "2024-04-20", "2024-01-10", "2024-01-05"])
        let decisions = try RetentionPlanner.plan(old, tier: s3, snapshots: snapshots, newestVerified: nil, now: date("2024-06-02"))
        XCTAssertEqual(decisions.map(\.action), [.keep, .moveToGlacier, .delete, .delete])
        XCTAssertEqual(decisions[1].reason, "standard→glacier after 30d")
        XCTAssertEqual(decisions[2].reason, "deleted at 90d; not in any daily/monthly slot")
    }

    func testAPolicyThatKeepsNothingIsRefused() {
        let tier = RetentionPolicy.Tier(keepLast: 0, keepWithin: nil, glacierAfter: nil, snapshots: false)
        XCTAssertThrowsError(try RetentionPlanner.plan(backups(["2024-01-01"]), tier: tier,
                                                       snapshots: .init(daily: 0, weekly: 0, monthly: 0, timeZone: "UTC"),
                                                       newestVerified: nil, now: Date())) { error in
            XCTAssertEqual((error as? RecoveryError)?.code, .configuration)
        }
    }

    /// Backups are grouped by database of one server (logical) and by server (physical), and a group's
    /// plan names its group in every decision, in deletion reasons and in the refusal to delete it all.
    /// `app` on servers 7 and 8 are two databases (one server's backups must not push out the
    /// other's), each group's label naming its server since the names alone read the same.
    func testGroupsAreOneDatabaseOrOneServerAndTheirPlansNameThem() throws {
        let all = [manifest("5", kind: .logical, database: "app", system: "7"), manifest("4", kind: .physical, database: "app", system: "7"),
                   manifest("3", kind: .logical, database: "billing", system: "7"), manifest("2", kind: .logical, database: "app", system: "8"),
                   manifest("1", kind: .physical, database: "postgres", system: "7")]
        let groups = RetentionGroup.split(all)
        XCTAssertEqual(groups.map(\.group.label), ["database app of server 7", "database app of server 8", "database billing",
                                                   "physical base backups of server 7"])
        XCTAssertEqual(groups.map { $0.manifests.map(\.id) }, [["5"], ["2"], ["3"], ["4", "1"]], "each group keeps the order it was given")

        let tier = RetentionPolicy.Tier(keepLast: 1, keepWithin: nil, glacierAfter: nil, snapshots: false)
        let snapshots = RetentionPolicy.Snapshots(daily: 0, weekly: 0, monthly: 0, timeZone: "UTC")
        let decisions = try RetentionPlanner.plan(backups(["2024-03-02", "2024-03-01"]), tier: tier, snapshots: snapshots,
                                                  newestVerified: nil, now: date("2024-03-03"), group: groups[0].group)
        XCTAssertEqual(decisions.map(\.group), ["database app of server 7", "database app of server 7"])
        XCTAssertEqual(decisions[1].reason, "older than the 1 newest of database app of server 7")
        let none = RetentionPolicy.Tier(keepLast: 0, keepWithin: nil, glacierAfter: nil, snapshots: false)
        XCTAssertThrowsError(try RetentionPlanner.plan(backups(["2024-01-01"]), tier: none, snapshots: snapshots, newestVerified: nil,
                                                       now: Date(), group: groups[2].group)) { error in
            XCTAssertEqual((error as? RecoveryError)?.message, "the retention policy would delete all 1 backups of database billing; refusing")
        }
    }

    /// Names are compared by their bytes: NFC and NFD `café` (one Swift String) are two groups, their
    /// labels showing the bytes; a backup that recorded no server is a group of its own with the
    /// name's other unrecorded ones (more is kept, never more deleted).
    func testGroupsCompareNamesByBytesAndKeepUnrecordedServersApart() {
        let nfc = String(decoding: [0x63, 0x61, 0x66, 0xC3, 0xA9] as [UInt8], as: UTF8.self)
        let nfd = String(decoding: [0x63, 0x61, 0x66, 0x65, 0xCC, 0x81] as [UInt8], as: UTF8.self)
        let groups = RetentionGroup.split([manifest("4", kind: .logical, database: nfd, system: "7"), manifest("3", kind: .logical, database: nfc, system: "7"),
                                           manifest("2", kind: .logical, database: "app", system: nil), manifest("1", kind: .logical, database: "app", system: "7")])
        XCTAssertEqual(groups.map(\.group.label), ["database app of a server not recorded", "database app of server 7",
                                                   "database \(nfd) (UTF-8 63616665cc81)", "database \(nfc) (UTF-8 636166c3a9)"])
        XCTAssertEqual(groups.map { $0.manifests.map(\.id) }, [["2"], ["1"], ["4"], ["3"]])
    }

    /// Whose backups of `app` a restore onto a server takes (`ServerScope`), found by an outside attack: A's
    /// own backup written before servers were recorded lost to B's newer, recorded one.
    func testBackupsRecordingNoServerBesideAnotherServersAreNotTakenForTheTargets() throws {
        let unrecordedA = manifest("1", kind: .logical, database: "app", system: nil)
        let recordedB = manifest("2", kind: .logical, database: "app", system: "8")
        XCTAssertThrowsError(try ServerScope.of("app", among: [unrecordedA, recordedB], target: "7", location: "repo")) { error in
            XCTAssertTrue("\(error)".contains("backups that record no server (newest 1)") && "\(error)".contains("system 8"), "\(error)")
        }
        // One source only: restores anywhere (a new server after the old one died; a repository from before servers were recorded).
        XCTAssertNil(try ServerScope.of("app", among: [recordedB], target: "7", location: "repo").system)
        XCTAssertNil(try ServerScope.of("app", among: [unrecordedA], target: "7", location: "repo").system)
        // The target's own recorded backups win; without a target, as before.
        XCTAssertEqual(try ServerScope.of("app", among: [unrecordedA, recordedB], target: "8", location: "repo").system, "8")
        XCTAssertNil(try ServerScope.of("app", among: [unrecordedA, recordedB], target: nil, location: "repo").system)
    }

    private func manifest(_ id: String, kind: BackupManifest.Kind, database: String, system: String?) -> BackupManifest {
        var manifest = BackupManifestTests.sample(id: id)
        manifest.kind = kind
        manifest.database.name = database
        manifest.database.systemIdentifier = system
        return manifest
    }
}

final class RetentionPolicyTests: XCTestCase {
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    func testTheShippedDefaultFileEqualsTheBuiltInPolicy() throws {
        XCTAssertEqual(try RetentionPolicy.load(path: Self.root + "/retention/default.toml"), RetentionPolicy.builtIn)
    }

    func testTyposAreErrorsThatNameTheKey() {
        let cases: [(String, String)] = [
            ("[local]\nkeep_lst = 3", "unknown key [local] keep_lst"),
            ("[local]\nkeep_last = -1", "[local] keep_last must be a whole number"),
            ("[s3]\nglacier_after = \"30x\"", "is not a duration"),
            ("[snapshot]\ndaily = 1", "unknown key snapshot"),
            ("[snapshots]\ntime_zone = \"Mars/Olympus\"", "not a known time zone"),
            ("[local\n", "not valid TOML"),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try RetentionPolicy.parse(text, source: "p.toml"), text) { error in
                let error = error as? RecoveryError
                XCTAssertEqual(error?.code, .configuration)
                XCTAssertTrue(error?.message.contains(expected) ?? false, "\(expected) not in \(error?.message ?? "")")
            }
        }
    }

    func testPartialFilesOverrideOnlyWhatTheyName() throws {
        let policy = try RetentionPolicy.parse("[local]\nkeep_last = 3\n[snapshots]\ndaily = 1", source: "p")
        XCTAssertEqual(policy.local.keepLast, 3)
        XCTAssertEqual(policy.snapshots.daily, 1)
        XCTAssertEqual(policy.snapshots.weekly, 4)
        XCTAssertEqual(policy.s3, RetentionPolicy.builtIn.s3)
    }

}
