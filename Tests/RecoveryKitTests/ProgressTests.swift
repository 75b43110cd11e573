import Foundation
@testable import RecoveryKit
import XCTest

/// The progress line an operator watches: the backup id, a percentage where the size is known, and a
/// rate that belongs to the file being moved (not to the whole run).
final class ProgressTests: XCTestCase {
    private let mebibyte: UInt64 = 1024 * 1024

    func testEachPhaseMeasuresItsOwnRateAndShowsItsShareOfTheTotal() {
        var now = Date(timeIntervalSince1970: 1_000)
        var lines: [String] = []
        let progress = TerminalProgress(clock: { now }, write: { lines.append($0) })

        progress.progress(phase: "verify 20261124T020000Z-3fa2 dump.sql.gz", bytes: 0, total: 100 * mebibyte, estimated: false)
        now += 10
        progress.progress(phase: "verify 20261124T020000Z-3fa2 dump.sql.gz", bytes: 50 * mebibyte, total: 100 * mebibyte, estimated: false)
        XCTAssertEqual(lines.last, "\r\u{1B}[Kverify 20261124T020000Z-3fa2 dump.sql.gz: 50.0 MiB of 100.0 MiB (50%) at 5.0 MiB/s")
        progress.finished()

        // The second backup of `dbverify --files all`, 30 s into the run: its rate starts from its own start.
        now += 20
        progress.progress(phase: "verify 20261125T020000Z-77aa dump.sql.gz", bytes: 0, total: 40 * mebibyte, estimated: false)
        now += 2
        progress.progress(phase: "verify 20261125T020000Z-77aa dump.sql.gz", bytes: 40 * mebibyte, total: 40 * mebibyte, estimated: false)
        XCTAssertEqual(lines.last, "\r\u{1B}[Kverify 20261125T020000Z-77aa dump.sql.gz: 40.0 MiB of 40.0 MiB (100%) at 20.0 MiB/s")
    }

    func testAnEstimateSaysSoAndNeverClaimsTheEnd() {
        XCTAssertEqual(TerminalProgress.line(phase: "dump 20261124T020000Z-3fa2", bytes: 300 * mebibyte, total: 200 * mebibyte, estimated: true, seconds: 10),
                       "dump 20261124T020000Z-3fa2: 300.0 MiB of ~200.0 MiB (~99%) at 30.0 MiB/s")
        XCTAssertEqual(TerminalProgress.line(phase: "restore x dump.sql.gz", bytes: 5, total: nil, estimated: false, seconds: 0.01),
                       "restore x dump.sql.gz: 5 B", "no total: no percentage; no time yet: no rate")
    }
}
