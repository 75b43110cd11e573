import Foundation
import PostgresClient

/// A deliberately broken restore, for the test that proves schema verification catches one: armed
/// only by `DBRECOVERY_TEST_DROP_INDEX=<schema>.<index>` (only tests set it), it drops that index
/// from the scratch database after the load, just before the schema is verified. A no-op otherwise.
public enum RestoreFaultHook {
    /// The environment variable that arms the hook.
    public static let variable = "DBRECOVERY_TEST_DROP_INDEX"

    /// Drops the armed index from `scratch`, if armed.
    ///
    /// - Throws: `PostgresError` if the index cannot be dropped (a test naming a wrong index fails loudly).
    static func breakScratch(_ scratch: ConnectionTarget) throws {
        guard let armed = ProcessInfo.processInfo.environment[variable], !armed.isEmpty else { return }
        let connection = try PostgresConnection(target: scratch, applicationName: "dbrestore")
        defer { connection.close() }
        let name = armed.split(separator: ".", maxSplits: 1).map { connection.quoteIdentifier(String($0)) }.joined(separator: ".")
        try connection.execute(script: "DROP INDEX \(name)")
    }
}
