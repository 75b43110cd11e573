import Foundation
import PostgresClient
import RecoveryKit
import TestSupport
import XCTest

/// A lock timeout names who made the statement wait, on a real server.
final class LockBlockersTests: XCTestCase {
    /// A statement that needs ACCESS EXCLUSIVE waits for any holder: when no session queues such a
    /// lock, the oldest transaction holding table locks (idle in transaction here) is named.
    func testATimedOutStatementNamesTheIdleTransactionThatHeldItsTable() throws {
        let cluster = try PostgresCluster.shared()
        let database = try cluster.createDatabase(prefix: "blockers", seed: "CREATE TABLE accounts (id int)")
        let holder = try cluster.connect(database: database)
        try holder.execute(script: "BEGIN; SELECT count(*) FROM accounts;")
        defer { _ = try? holder.execute(script: "ROLLBACK") }

        let target = SessionLimits(lockWaitSeconds: 1).applied(to: try ConnectionTarget(cluster.url(database: database)).with("password", cluster.password))
        let waiter = try PostgresConnection(target: target, applicationName: "dbrecovery-tests")
        var caught: PostgresError?
        do { try waiter.execute(script: "BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE;") } catch let error as PostgresError { caught = error }
        let error = try XCTUnwrap(caught, "the LOCK must time out")
        XCTAssertEqual(error.sqlState, PostgresError.lockNotAvailable)
        let blockers = try XCTUnwrap(error.blockingSessions, "the holder must be named")
        XCTAssertTrue(blockers.contains("pid \(holder.backendPID)"), blockers)
        XCTAssertTrue(blockers.contains("idle in transaction"), blockers)
        XCTAssertFalse(blockers.contains("pid \(waiter.backendPID) "), "the session that timed out is not a suspect: \(blockers)")
        let classified = RecoveryError.classify(error)
        XCTAssertEqual(classified.code, .lockTimeout)
        XCTAssertTrue(classified.message.contains("pid \(holder.backendPID)"), classified.message)
    }
}
