import Foundation
@testable import RecoveryKit
import XCTest

/// The pure rules of incremental chains: which backup a new incremental chains on, which members a
/// restore needs, and which backups prune must keep for a kept incremental.
final class IncrementalChainTests: XCTestCase {
    private func physical(_ id: String, parent: String? = nil, root: String? = nil, system: String = "7", timeline: Int = 1,
                          serverManifest: Bool = true) -> BackupManifest {
        var manifest = BackupManifestTests.sample(id: id, release: nil)
        manifest.kind = .physical
        manifest.database.systemIdentifier = system
        manifest.tables = []
        manifest.files = [.init(name: PhysicalCapture.baseFileName, rawBytes: 10, storedBytes: 5, sha256: "ab", compression: "gzip", compressionLevel: 5)]
        if serverManifest {
            manifest.files.append(.init(name: IncrementalChain.serverManifestFileName, rawBytes: 10, storedBytes: 5, sha256: "cd", compression: "gzip", compressionLevel: 5))
        }
        manifest.physical = .init(startLsn: "0/2000028", stopLsn: "0/2000100", timeline: timeline,
                                  firstWalSegment: "000000010000000000000002", lastWalSegment: "000000010000000000000002")
        manifest.incremental = parent.map { .init(parent: $0, chainRoot: root ?? $0) }
        return manifest
    }

    func testTheParentIsTheNewestBaseBackupOfTheSameSystemAndTimeline() throws {
        let full = physical("20261120T020000Z-0001")
        let incremental = physical("20261121T020000Z-0002", parent: full.id)
        let otherSystem = physical("20261122T020000Z-0003", system: "8")
        let otherTimeline = physical("20261123T020000Z-0004", timeline: 2)
        let logical = BackupManifestTests.sample(id: "20261124T020000Z-0005")
        let chosen = try IncrementalChain.parent(systemIdentifier: "7", timeline: 1, in: [full, incremental, otherSystem, otherTimeline, logical], repository: "r")
        XCTAssertEqual(chosen.id, incremental.id)

        XCTAssertThrowsError(try IncrementalChain.parent(systemIdentifier: "9", timeline: 1, in: [full], repository: "r")) { error in
            XCTAssertEqual((error as? RecoveryError)?.code, .backupNotFound)
            XCTAssertTrue((error as? RecoveryError)?.hint?.contains("dbbackup --physical") ?? false)
        }
        // A base backup taken before backup_manifest was stored cannot be a parent.
        let old = physical("20261125T020000Z-0006", serverManifest: false)
        XCTAssertThrowsError(try IncrementalChain.parent(systemIdentifier: "7", timeline: 1, in: [full, old], repository: "r")) { error in
            XCTAssertTrue((error as? RecoveryError)?.message.contains("20261125T020000Z-0006 has no stored backup_manifest") ?? false, "\(error)")
        }
    }

    func testMembersRunFromTheFullBackupAndAMissingOneIsNamed() throws {
        let full = physical("20261120T020000Z-0001")
        let first = physical("20261121T020000Z-0002", parent: full.id)
        let second = physical("20261122T020000Z-0003", parent: first.id, root: full.id)
        XCTAssertEqual(try IncrementalChain.members(of: second, in: [second, full, first]).map(\.id), [full.id, first.id, second.id])
        XCTAssertEqual(try IncrementalChain.members(of: full, in: [full]).map(\.id), [full.id])
        XCTAssertThrowsError(try IncrementalChain.members(of: second, in: [full, second])) { error in
            XCTAssertEqual((error as? RecoveryError)?.code, .backupNotFound)
            XCTAssertTrue((error as? RecoveryError)?.message.contains("needs \(first.id)") ?? false, "\(error)")
        }
        // A manifest naming itself as parent is a loop, not an endless walk.
        let loop = physical("20261123T020000Z-0004", parent: "20261123T020000Z-0004")
        XCTAssertThrowsError(try IncrementalChain.members(of: loop, in: [loop]))
    }

    func testEveryAncestorOfAKeptIncrementalIsNeededAndNamesItsChild() {
        let full = physical("20261120T020000Z-0001")
        let first = physical("20261121T020000Z-0002", parent: full.id)
        let second = physical("20261122T020000Z-0003", parent: first.id, root: full.id)
        let otherFull = physical("20261119T020000Z-0000")
        let all = [full, first, second, otherFull]
        XCTAssertEqual(IncrementalChain.parentsNeeded(byKept: [second.id], in: all), [first.id: second.id, full.id: first.id])
        XCTAssertEqual(IncrementalChain.parentsNeeded(byKept: [first.id], in: all), [full.id: first.id])
        XCTAssertEqual(IncrementalChain.parentsNeeded(byKept: [full.id, otherFull.id], in: all), [:])
    }

    func testPruneKeepsTheChainOfAKeptIncrementalAndSaysWhy() {
        let full = physical("20261120T020000Z-0001")
        let first = physical("20261121T020000Z-0002", parent: full.id)
        let second = physical("20261122T020000Z-0003", parent: first.id, root: full.id)
        func decision(_ id: String, _ action: RetentionDecision.Action) -> RetentionDecision {
            RetentionDecision(id: id, takenAt: Date(), ageDays: 0, storageClass: nil, action: action, keptBy: action == .keep ? ["last #1"] : [])
        }
        var decisions = [decision(second.id, .keep), decision(first.id, .delete), decision(full.id, .delete)]
        Pruner.protectChains(&decisions, manifests: [full, first, second])
        XCTAssertEqual(decisions.map(\.action), [.keep, .keep, .keep])
        XCTAssertEqual(decisions[1].keptBy, ["parent of \(second.id)"])
        XCTAssertEqual(decisions[2].keptBy, ["parent of \(first.id)"])
    }

    func testTheChainRoundTripsThroughTheManifestAndABadParentIsRefused() throws {
        let manifest = physical("20261121T020000Z-0002", parent: "20261120T020000Z-0001")
        let text = String(decoding: try manifest.encoded(), as: UTF8.self)
        XCTAssertTrue(text.contains("\"chain_root\" : \"20261120T020000Z-0001\""), text)
        XCTAssertEqual(try BackupManifest.decode(try manifest.encoded(), source: "t"), manifest)
        let hostile = physical("20261121T020000Z-0002", parent: "../../etc")
        XCTAssertThrowsError(try BackupManifest.decode(try hostile.encoded(), source: "t"))
    }
}
