import Foundation

/// A PostgreSQL server running from a data directory that `dbrestore --pitr` was told to move aside,
/// extract into or empty. Renaming a live server's directory leaves it running from the new name
/// (`pg_ctl -D` can no longer stop it) and a second cluster at the old one; emptying it destroys it.
/// So every such step first asks whether a postmaster runs there — the directory's own
/// `postmaster.pid`, and every postmaster on this host whose data directory lies inside it.
struct LivePostmaster: Equatable {
    let pid: Int32
    /// Where it runs from (its working directory, which PostgreSQL sets to its data directory).
    let dataDirectory: String

    /// The postmaster running from `directory` or from a directory inside it, nil when none does.
    static func find(in directory: String) -> LivePostmaster? {
        let root = canonical(directory)
        if let own = fromPidFile(in: directory, root: root) { return own }
        return runningPostmasters().first { $0.dataDirectory == root || $0.dataDirectory.hasPrefix(root == "/" ? "/" : root + "/") }
    }

    /// The refusal: names the PID and how to stop it; nothing is written.
    static func refusal(_ live: LivePostmaster, of directory: String, step: String) -> RecoveryError {
        let inside = live.dataDirectory == canonical(directory) ? "" : " (its data directory \(live.dataDirectory) is inside it)"
        return RecoveryError(.usage, "refusing to \(step) \(directory): a PostgreSQL server is running from it, postmaster PID \(live.pid)\(inside)",
                             hint: "stop that server first (pg_ctl -D \(live.dataDirectory) stop) if you mean to replace it, or give another --pgdata; nothing was written")
    }

    /// `directory/postmaster.pid` naming a live process that is (or, unreadable, may be) a postmaster
    /// running from `directory`. A stale file (process gone, or its PID now another program's) is none.
    private static func fromPidFile(in directory: String, root: String) -> LivePostmaster? {
        let path = (directory.hasSuffix("/") ? String(directory.dropLast()) : directory) + "/postmaster.pid"
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
              let first = text.split(separator: "\n").first, let pid = Int32(first.trimmingCharacters(in: .whitespaces)), pid > 0 else { return nil }
        guard kill(pid, 0) == 0 || errno == EPERM else { return nil }
        if let cwd = workingDirectory(of: pid) { return cwd == root ? LivePostmaster(pid: pid, dataDirectory: root) : nil }
        // Another user's process: its working directory is not ours to read. Its name still says
        // whether the PID was reused by another program; unreadable, it counts as live.
        if let name = command(of: pid), !isPostgres(name) { return nil }
        return LivePostmaster(pid: pid, dataDirectory: root)
    }

    /// Every postmaster on this host (a `postgres` process whose parent is not one) with its data directory.
    private static func runningPostmasters() -> [LivePostmaster] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> LivePostmaster? in
            guard let pid = Int32(entry), let name = command(of: pid), isPostgres(name) else { return nil }
            if let parent = parentPID(of: pid), let parentName = command(of: parent), isPostgres(parentName) { return nil }
            guard let directory = workingDirectory(of: pid) ?? dataDirectoryArgument(of: pid) else { return nil }
            return LivePostmaster(pid: pid, dataDirectory: directory)
        }
    }

    private static func isPostgres(_ name: String) -> Bool { name == "postgres" || name == "postmaster" }

    private static func command(of pid: Int32) -> String? {
        (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private static func parentPID(of pid: Int32) -> Int32? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        return fields.count > 1 ? Int32(fields[1]) : nil
    }

    private static func workingDirectory(of pid: Int32) -> String? {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/cwd")).map(canonical)
    }

    /// `-D DIR` on a postmaster's command line (readable for any user's process), absolute only.
    private static func dataDirectoryArgument(of pid: Int32) -> String? {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
        let words = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard let index = words.firstIndex(of: "-D"), index + 1 < words.count, words[index + 1].hasPrefix("/") else { return nil }
        return canonical(words[index + 1])
    }

    /// The path with symbolic links resolved (as far as it exists) and no trailing slash.
    static func canonical(_ path: String) -> String {
        var resolved = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        if realpath(path, &resolved) != nil { return String(decoding: resolved.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        let parent = (path as NSString).deletingLastPathComponent
        guard !parent.isEmpty, parent != path else { return path }
        return (canonical(parent) as NSString).appendingPathComponent((path as NSString).lastPathComponent)
    }
}
