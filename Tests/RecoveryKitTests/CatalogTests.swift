import BackupStorage
import Foundation
@testable import RecoveryKit
import XCTest

final class CatalogTests: XCTestCase {
    var store: LocalStore!

    override func setUpWithError() throws {
        let root = NSTemporaryDirectory() + "catalog-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: root) }
        store = try LocalStore(root: root, create: true)
    }

    private func add(_ id: String) throws {
        try store.write("backups/\(id)/manifest.json", contents: try BackupManifestTests.sample(id: id).encoded())
    }

    func testListsNewestFirstAndIgnoresFoldersWithoutManifest() throws {
        try add("20261101T020000Z-0001")
        try add("20261103T020000Z-0003")
        try store.write("backups/20261104T020000Z-0004/dump.sql.gz", contents: Data([1, 2, 3]))
        try store.write("backups/20261102T020000Z-0002/manifest.json", contents: Data("{garbage".utf8))
        let entries = try Catalog(store: store).entries()
        XCTAssertEqual(entries.map(\.id), ["20261103T020000Z-0003", "20261102T020000Z-0002", "20261101T020000Z-0001"])
        XCTAssertNotNil(entries[1].problem)
        XCTAssertEqual(try Catalog(store: store).resolve("latest").id, "20261103T020000Z-0003")
    }

    func testResolvesPrefixesAndSuggestsNearestIDs() throws {
        try add("20261101T020000Z-0001")
        try add("20261103T020000Z-0003")
        let catalog = Catalog(store: store)
        XCTAssertEqual(try catalog.resolve("20261101").id, "20261101T020000Z-0001")
        XCTAssertThrowsError(try catalog.resolve("2026110")) { error in
            XCTAssertTrue((error as? RecoveryError)?.message.contains("ambiguous") ?? false)
        }
        XCTAssertThrowsError(try catalog.resolve("20261103T020000Z-0004")) { error in
            let error = error as? RecoveryError
            XCTAssertEqual(error?.code, .backupNotFound)
            XCTAssertTrue(error?.hint?.hasPrefix("nearest ids: 20261103T020000Z-0003") ?? false, error?.hint ?? "")
        }
    }

    func testEmptyRepositoryIsNotFound() throws {
        XCTAssertThrowsError(try Catalog(store: store).resolve("latest")) { error in
            XCTAssertEqual((error as? RecoveryError)?.code, .backupNotFound)
        }
    }
}
