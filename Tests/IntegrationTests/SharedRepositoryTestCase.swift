import Foundation
import TestSupport
import XCTest

/// What the tests of one repository shared by several databases start from: two databases on the
/// shared cluster and logical backups of either into one local repository.
class SharedRepositoryTestCase: IntegrationTestCase {
    /// `app` and `billing`, each with one table (`appTable`: 3 rows, `billingTable`: 2 rows), and a new
    /// local repository named after `prefix`.
    func useTwoDatabases(prefix: String, appTable: String, billingTable: String) throws -> (app: String, billing: String) {
        try useCluster()
        useLocalRepository(prefix: prefix)
        return (try cluster.createDatabase(prefix: "app", seed: "CREATE TABLE \(appTable) (id int); INSERT INTO \(appTable) VALUES (1), (2), (3)"),
                try cluster.createDatabase(prefix: "billing", seed: "CREATE TABLE \(billingTable) (id int); INSERT INTO \(billingTable) VALUES (1), (2)"))
    }

    /// A logical backup of `name` into the repository (`extra` arguments added); its id. On `server`
    /// (an archiving cluster of the test's own) it runs as the server's OS user, who owns that
    /// repository and writes its WAL.
    func backup(of name: String, on server: PostgresCluster? = nil, _ extra: [String] = []) throws -> String {
        let arguments = ["--database-url", (server ?? cluster).url(database: name), "--repo", repository!, "--compression-level", "1"] + extra
        let result = try server.map { try asOwner("dbbackup", arguments, cluster: $0) } ?? tool("dbbackup", arguments)
        XCTAssertEqual(result.status, 0, result.standardError)
        return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func json(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
    }
}
