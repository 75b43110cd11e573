import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// "Only what we made" under backups/: a `--repo` typo (the repository's own backups/ folder) makes
/// no repository layout there and is told the repository it meant; `dbprune` leaves alone a folder
/// whose name is no backup id, whatever its age; and what a restore says of the pre-restore copies
/// it keeps is true: how many, their size, and the command that drops them now.
final class OnlyWhatWeMadeTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useDatabase(prefix: "ours", seed: "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 50);")
        useLocalRepository()
    }

    @discardableResult
    private func backup() throws -> String {
        let result = try tool("dbbackup", common)
        XCTAssertEqual(result.status, 0, result.standardError)
        return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func makeOld(_ path: String) {
        var times = [timeval(tv_sec: Int(Date().timeIntervalSince1970) - 48 * 3600, tv_usec: 0),
                     timeval(tv_sec: Int(Date().timeIntervalSince1970) - 48 * 3600, tv_usec: 0)]
        XCTAssertEqual(utimes(path, &times), 0, path)
    }

    func testEmergencyWithTheBackupsFolderAsRepoMakesNothingThereAndNamesTheRepository() throws {
        let id = try backup()
        let typo = repository + "/backups"
        let emergency = try tool("dbrestore", ["--emergency", "--database-url", cluster.url(database: database), "--repo", typo])
        XCTAssertEqual(emergency.status, ExitStatus.backupNotFound.rawValue, emergency.standardError)
        XCTAssertTrue(emergency.standardError.contains("give --repo \(repository!)"), emergency.standardError)
        XCTAssertTrue(emergency.standardError.contains("incident record") && emergency.standardError.contains("not a repository"), emergency.standardError)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: typo).sorted(), [id], "no incidents/ or other folder made in backups/")

        let named = try tool("dbrestore", ["latest", "--yes", "--database-url", cluster.url(database: database + "_x"), "--repo", typo])
        XCTAssertEqual(named.status, ExitStatus.backupNotFound.rawValue, named.standardError)
        XCTAssertTrue(named.standardError.contains("give --repo \(repository!)"), named.standardError)

        let list = try tool("dbrestore", ["list", "--repo", typo])
        XCTAssertTrue(list.standardError.contains("give --repo \(repository!)"), list.standardError)
        let prune = try tool("dbprune", ["--repo", typo, "--dry-run"])
        XCTAssertTrue(prune.standardError.contains("give --repo \(repository!)"), prune.standardError)

        // An empty repository that is merely named backups is not taken for a folder inside one.
        let fresh = TestPaths.temporaryDirectory(prefix: "fresh") + "/backups"
        try FileManager.default.createDirectory(atPath: fresh, withIntermediateDirectories: true)
        let empty = try tool("dbrestore", ["list", "--repo", fresh])
        XCTAssertFalse(empty.standardError.contains("give --repo"), empty.standardError)

        // A real repository still gets its incident record.
        XCTAssertEqual(try tool("dbrestore", common + ["--emergency"]).status, 0)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: repository + "/incidents").count, 1)
    }

    func testPruneLeavesAloneFoldersUnderBackupsItDidNotMake() throws {
        let id = try backup()
        // What older versions wrote through a --repo typo, and a folder an operator put there: both two days old.
        let incidents = "\(repository!)/backups/incidents"
        let notes = "\(repository!)/backups/notes"
        for folder in [incidents, notes] {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            let file = folder + "/record.json"
            XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data("{}".utf8)))
            makeOld(file)
            makeOld(folder)
        }
        // A backup folder a killed run left, as old: still garbage.
        let killed = "\(repository!)/backups/20200101T000000Z-dead"
        try FileManager.default.createDirectory(atPath: killed, withIntermediateDirectories: true)
        XCTAssertTrue(FileManager.default.createFile(atPath: killed + "/dump.sql.gz.partial-1", contents: Data([1])))
        makeOld(killed + "/dump.sql.gz.partial-1")

        let dryRun = try tool("dbprune", ["--repo", repository, "--dry-run", "--json"])
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        let garbage = (try JSONSerialization.jsonObject(with: Data(dryRun.standardOutput.utf8)) as? [String: Any])?["garbage"] as? [[String: Any]] ?? []
        let actions = Dictionary(garbage.compactMap { item in (item["folder"] as? String).map { ($0, item["action"] as? String ?? "") } }) { first, _ in first }
        XCTAssertEqual(actions, ["backups/incidents": "not ours, left alone", "backups/notes": "not ours, left alone",
                                 "backups/20200101T000000Z-dead": "delete"], dryRun.standardOutput)

        let prune = try tool("dbprune", ["--repo", repository, "--yes"])
        XCTAssertEqual(prune.status, 0, prune.standardError)
        XCTAssertTrue(prune.standardOutput.contains("not ours, left alone"), prune.standardOutput)
        XCTAssertTrue(FileManager.default.fileExists(atPath: incidents + "/record.json"), "a folder dbbackup did not make is never deleted")
        XCTAssertTrue(FileManager.default.fileExists(atPath: notes + "/record.json"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: killed), "a killed backup's folder is still garbage")
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(repository!)/backups/\(id)/manifest.json"))
    }

    /// A folder named like a backup id that is a symbolic link to files elsewhere, and a killed run's
    /// folder holding a link: an outside attack found `dbprune --yes` deleting the files the links
    /// reached (outside the repository) as garbage. Left alone, the files kept.
    func testPruneNeverDeletesThroughASymbolicLink() throws {
        try backup()
        let outside = TestPaths.temporaryDirectory(prefix: "outside")
        let inner = TestPaths.temporaryDirectory(prefix: "outside-inner")
        for directory in [outside, inner] {
            XCTAssertTrue(FileManager.default.createFile(atPath: directory + "/precious.txt", contents: Data("precious".utf8)))
            makeOld(directory + "/precious.txt")
        }
        let linkedFolder = "\(repository!)/backups/20200101T000000Z-bbbb"
        XCTAssertEqual(symlink(outside, linkedFolder), 0)
        let holding = "\(repository!)/backups/20200101T000000Z-aaaa"
        try FileManager.default.createDirectory(atPath: holding, withIntermediateDirectories: true)
        XCTAssertEqual(symlink(inner, holding + "/sub"), 0)
        makeOld(holding)

        let dryRun = try tool("dbprune", ["--repo", repository, "--dry-run", "--json"])
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        let garbage = (try JSONSerialization.jsonObject(with: Data(dryRun.standardOutput.utf8)) as? [String: Any])?["garbage"] as? [[String: Any]] ?? []
        let actions = Dictionary(garbage.compactMap { item in (item["folder"] as? String).map { ($0, item["action"] as? String ?? "") } }) { first, _ in first }
        XCTAssertEqual(actions, ["backups/20200101T000000Z-bbbb": "not ours, left alone", "backups/20200101T000000Z-aaaa": "not ours, left alone"],
                       dryRun.standardOutput)
        let prune = try tool("dbprune", ["--repo", repository, "--yes"])
        XCTAssertEqual(prune.status, 0, prune.standardError)
        XCTAssertTrue(FileManager.default.fileExists(atPath: outside + "/precious.txt"), "deleted through the link")
        XCTAssertTrue(FileManager.default.fileExists(atPath: inner + "/precious.txt"), "deleted through the link inside the folder")
    }

    func testRestoreSaysHowManyPreRestoreCopiesExistAndTheCommandThatDropsThem() throws {
        try backup()
        var kept: [String] = []
        var last: TestProcess.Result?
        for _ in 0..<3 {
            let restore = try tool("dbrestore", common + ["latest", "--yes"])
            XCTAssertEqual(restore.status, 0, restore.standardError)
            last = restore
            kept = try databases(like: "\(database!)_pre_restore_%")
        }
        XCTAssertEqual(kept.count, 3)
        let said = last?.standardError ?? ""
        XCTAssertTrue(said.contains("3 pre-restore copies of \(database!) exist, holding ") && said.contains(": \(kept[2]) (this run's) and 2 older; "), said)
        XCTAssertTrue(said.contains(PreRestoreCopiesNote.dropCommand), said)
        XCTAssertFalse(said.contains("dbrestore cleanup drops old ones"), said)

        // The defaults keep a week of copies: the plain command drops none, as its table says.
        let plain = try tool("dbrestore", ["cleanup", "--database-url", cluster.url(database: database), "--yes"])
        XCTAssertEqual(plain.status, 0, plain.standardError)
        XCTAssertTrue(plain.standardOutput.contains("younger than 7d"), plain.standardOutput)

        // The command said drops the older copies now and keeps the one that run set aside.
        let command = PreRestoreCopiesNote.dropCommand.split(separator: " ").map(String.init)
        let dropped = try tool(command[0], Array(command.dropFirst()) + ["--database-url", cluster.url(database: database)])
        XCTAssertEqual(dropped.status, 0, dropped.standardError)
        XCTAssertEqual(try databases(like: "\(database!)_pre_restore_%"), [kept[2]], dropped.standardOutput)
    }
}
