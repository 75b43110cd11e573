import Foundation
@testable import RecoveryKit
import XCTest

/// dbrestore's error when recovery stopped: wal-fetch's own words from the recovery log (a damaged
/// segment, another server's) come first; "not in the archive", said at every archive's end, is not one.
final class WALFetchComplaintTests: XCTestCase {
    private func failure(_ text: String) throws -> (String?, WALFetchComplaint?) {
        let log = NSTemporaryDirectory() + "/recovery-\(UUID().uuidString).log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        try text.write(toFile: log, atomically: true, encoding: .utf8)
        return (PointInTimeRestore.recoveryFailure(log: log), WALFetchComplaint.read(log: log))
    }

    func testWALFetchsComplaintAfterTheLastRestoredSegmentIsTheCause() throws {
        let (damaged, complaint) = try failure("""
        2026-11-27 06:20:01.000 UTC [4242] LOG:  restored log file "000000010000000000000003" from archive
        dbrestore: error: cannot fetch WAL file 000000010000000000000004: archived WAL file 000000010000000000000004 is damaged: inflate: invalid code lengths set
        HINT: this segment cannot be replayed: put an intact copy of 000000010000000000000004 into the archive
        2026-11-27 06:20:01.200 UTC [4242] FATAL:  could not restore file "000000010000000000000004" from archive: command not executable
        """)
        XCTAssertTrue(try XCTUnwrap(damaged).hasPrefix("wal-fetch: cannot fetch WAL file 000000010000000000000004: archived WAL file 000000010000000000000004 is damaged"),
                      damaged ?? "")
        XCTAssertTrue(damaged?.contains("(last segment replayed: 000000010000000000000003; the server: FATAL:  could not restore file") == true, damaged ?? "")
        XCTAssertEqual(WALFetchComplaint.hint(complaint, log: "L"), "this segment cannot be replayed: put an intact copy of 000000010000000000000004 into the archive; see L")

        // The archive's end, and a complaint before the last restored segment: neither is the cause.
        let (ended, none) = try failure("""
        dbrestore: error: cannot fetch WAL file 000000010000000000000002: the repository was unreachable
        2026-11-27 06:20:01.000 UTC [4242] LOG:  restored log file "000000010000000000000010" from archive
        dbrestore: error: WAL file 000000010000000000000011 is not in the archive
        HINT: check the archive and the key; PostgreSQL retries the fetch
        2026-11-27 06:20:01.200 UTC [4242] FATAL:  recovery ended before configured recovery target was reached
        """)
        XCTAssertNil(none)
        XCTAssertTrue(ended?.hasPrefix("FATAL:  recovery ended before configured recovery target was reached") == true, ended ?? "")
        XCTAssertTrue(ended?.contains("000000010000000000000011 was not in the archive") == true, ended ?? "")
    }
}
