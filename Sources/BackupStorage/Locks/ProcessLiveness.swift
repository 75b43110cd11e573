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
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state), so field 22 is fields[19].
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    /// True when `holder` was written on this host and its process is gone: no process with that
    /// pid, or one started at another time (the pid was reused).
    public static func isGone(_ holder: LockHolder, host: String = ProcessInfo.processInfo.hostName) -> Bool {
        // A pid of 0 or below would address process groups: such a record is not ours, never stale.
        guard holder.host == host, holder.pid > 0 else { return false }
        if kill(holder.pid, 0) != 0 && errno == ESRCH { return true }
        if let recorded = holder.processStart, let current = startTime(of: holder.pid), recorded != current { return true }
        return false
    }
}
