import Foundation
import ProcessSignals

/// Named places where the crash tests kill the process (SIGKILL, no cleanup), to prove the next run
/// copes. Armed only by `DBRECOVERY_CRASH_AT=<name>`; a no-op otherwise.
///
/// Points: `capture:after-data` (data committed, no manifest yet), `prune:between-deletes` (a
/// manifest deleted, its data not yet), `restore:after-verify` (scratch or drill database loaded and
/// verified, not yet swapped or dropped), `restore:during-swap` (target closed to new connections, not
/// yet renamed), `migrate:between-steps` (first step of a one-transaction plan done, not committed).
///
/// `DBRECOVERY_SIGNAL_AT=<name>` (with `DBRECOVERY_SIGNAL=INT`, `TERM` or `HUP`; TERM by default) makes
/// the process signal itself there instead, as an operator's `kill` at that exact moment would: the
/// signal tests use it for steps too short to hit from outside.
public enum CrashPoint {
    public static func reached(_ name: String) {
        let environment = ProcessInfo.processInfo.environment
        if environment["DBRECOVERY_SIGNAL_AT"] == name {
            let signals = ["INT": SIGINT, "TERM": SIGTERM, "HUP": SIGHUP]
            kill(getpid(), signals[environment["DBRECOVERY_SIGNAL"] ?? "TERM"] ?? SIGTERM)
            // Give the signal thread time to run the hooks (PQcancel, SIGTERM to children) first.
            usleep(200_000)
        }
        guard let armed = environment["DBRECOVERY_CRASH_AT"], armed == name else { return }
        kill(getpid(), SIGKILL)
    }
}
