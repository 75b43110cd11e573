import Foundation
import PostgresClient
import ProcessSignals

/// The test-only hooks (`DBRECOVERY_CRASH_AT`, `DBRECOVERY_SIGNAL_AT`/`DBRECOVERY_SIGNAL`,
/// `DBRECOVERY_TEST_DROP_INDEX`), in one place because they are the only code that reads the process
/// environment itself rather than the run's `Settings`: they arm a failure at one point deep inside a
/// run, which only the tests set, and threading them through every configuration would put test
/// concerns into every layer. Unset (as in production), each is a no-op.
enum TestHooks {
    /// The value of a hook's variable, nil when unset or empty.
    static func armed(_ variable: String) -> String? {
        guard let value = ProcessInfo.processInfo.environment[variable], !value.isEmpty else { return nil }
        return value
    }
}

/// Named places where the crash tests kill the process (SIGKILL, no cleanup), to prove the next run
/// copes. Armed only by `DBRECOVERY_CRASH_AT=<name>`; a no-op otherwise.
///
/// Points: `capture:after-data` (data committed, no manifest yet), `prune:between-deletes` (a
/// manifest deleted, its data not yet), `restore:after-verify` (scratch or drill database loaded and
/// verified, not yet swapped or dropped), `restore:during-swap` (target closed to new connections, not
/// yet renamed), `migrate:between-steps` (first step of a one-transaction plan done, not committed),
/// `replace:after-staging` (`dbrestore --table … --replace`: the staged copy committed in the live
/// database, not yet checked or swapped), `pitr:extracting` (half the segments of a base backup
/// extracted from its index, or half its bytes through `tar -x` without one), `pitr:combined` (a
/// chain's last pg_combinebackup has written the data directory, not yet verified or marked again).
///
/// `DBRECOVERY_SIGNAL_AT=<name>` (with `DBRECOVERY_SIGNAL=INT`, `TERM` or `HUP`; TERM by default) makes
/// the process signal itself there instead, as an operator's `kill` at that exact moment would: the
/// signal tests use it for steps too short to hit from outside.
public enum CrashPoint {
    public static func reached(_ name: String) {
        if TestHooks.armed("DBRECOVERY_SIGNAL_AT") == name {
            let signals = ["INT": SIGINT, "TERM": SIGTERM, "HUP": SIGHUP]
            kill(getpid(), signals[TestHooks.armed("DBRECOVERY_SIGNAL") ?? "TERM"] ?? SIGTERM)
            // Give the signal thread time to run the hooks (PQcancel, SIGTERM to children) first.
            usleep(200_000)
        }
        guard TestHooks.armed("DBRECOVERY_CRASH_AT") == name else { return }
        kill(getpid(), SIGKILL)
    }
}

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
        guard let armed = TestHooks.armed(variable) else { return }
        let connection = try PostgresConnection(target: scratch, applicationName: "dbrestore")
        defer { connection.close() }
        let name = armed.split(separator: ".", maxSplits: 1).map { connection.quoteIdentifier(String($0)) }.joined(separator: ".")
        try connection.execute(script: "DROP INDEX \(name)")
    }
}
