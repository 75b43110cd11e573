import Foundation

/// Named places where the crash tests kill the process (SIGKILL, no cleanup), to prove the next run
/// copes. Armed only by `DBRECOVERY_CRASH_AT=<name>`; a no-op otherwise.
///
/// Points: `capture:after-data` (data committed, no manifest yet), `prune:between-deletes` (a
/// manifest deleted, its data not yet), `restore:after-verify` (scratch or drill database loaded and
/// verified, not yet swapped or dropped), `restore:during-swap` (target closed to new connections, not
/// yet renamed), `migrate:between-steps` (first step of a one-transaction plan done, not committed).
public enum CrashPoint {
    public static func reached(_ name: String) {
        guard let armed = ProcessInfo.processInfo.environment["DBRECOVERY_CRASH_AT"], armed == name else { return }
        kill(getpid(), SIGKILL)
    }
}
