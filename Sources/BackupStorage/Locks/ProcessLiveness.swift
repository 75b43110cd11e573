import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Whether the process named in a lock record still runs on this host.
public enum ProcessLiveness {
    /// The start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`), or
    /// nil where there is no `/proc` or the process does not exist.
    public static func startTime(of pid: Int32) -> UInt64? {
        guard let fields = statFields(of: pid), fields.count > 19 else { return nil }
        // fields[0] is field 3 (state), so field 22 is fields[19].
        return UInt64(fields[19])
    }

    /// True for a zombie (state `Z`, or `X` dead): it has exited, and only its parent has not yet
    /// collected it (a supervisor or container entrypoint that does not wait), so `kill(pid, 0)` still
    /// succeeds on it although it holds nothing.
    public static func hasExited(_ pid: Int32) -> Bool {
        guard let state = statFields(of: pid)?.first else { return false }
        return state == "Z" || state == "X"
    }

    /// The fields of `/proc/<pid>/stat` from field 3 (state) on; nil without `/proc` or the process.
    private static func statFields(of pid: Int32) -> [Substring]? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
        return text[text.index(after: close)...].split(separator: " ")
    }

    /// True when `holder` was written on this host and its process is gone: no process with that
    /// pid, or one started at another time (the pid was reused).
    public static func isGone(_ holder: LockHolder, host: String = ProcessInfo.processInfo.hostName) -> Bool {
        // A pid of 0 or below would address process groups: such a record is not ours, never stale.
        guard holder.host == host, holder.pid > 0 else { return false }
        if kill(holder.pid, 0) != 0 && errno == ESRCH { return true }
        if hasExited(holder.pid) { return true }
        if let recorded = holder.processStart, let current = startTime(of: holder.pid), recorded != current { return true }
        return false
    }
}
