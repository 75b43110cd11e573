import Foundation
@testable import RecoveryKit
import XCTest

/// Issue 21 attack finding 8: the next pusher cleans what a killed one left in the spool's
/// `status/` (`.ok.partial-*` of a dead process) and verdicts no call took within an hour.
final class WALPushLeftoversTests: XCTestCase {
    func testAPusherRemovesDeadWritersPartialsAndOldUnusedVerdicts() throws {
        let directory = NSTemporaryDirectory() + "dbrecovery-leftovers-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let spool = try WALSpool(directory, repository: "/nowhere", resetOnMismatch: false)
        let old = Date().addingTimeInterval(-2 * WALAsyncPush.unusedVerdictAge)
        func file(_ key: String, modified: Date) throws {
            try spool.files.write(key, contents: Data("x".utf8))
            try FileManager.default.setAttributes([.modificationDate: modified], ofItemAtPath: spool.path(key))
        }
        // A pid no process has (beyond pid_max): its writer is gone.
        try file("status/000000010000000000000001.ok.partial-2147483646-ab12", modified: old)
        try file("status/000000010000000000000002.ok", modified: old)
        try file("status/000000010000000000000003.error", modified: old)
        try file("status/000000010000000000000004.ok", modified: Date())
        try file("queue/000000010000000000000005", modified: old)
        WALAsyncPush.removeLeftovers(in: spool, now: Date())
        let left = try FileManager.default.contentsOfDirectory(atPath: spool.path("status")).sorted()
        XCTAssertEqual(left, ["000000010000000000000004.ok"], "a fresh verdict stays for its call")
        XCTAssertTrue(FileManager.default.fileExists(atPath: spool.path("queue/000000010000000000000005")), "queued segments are never removed")
    }
}
