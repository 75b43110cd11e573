import BackupStorage
import Foundation
import ProcessSignals

/// `dbbackup wal-push --async`: archive_command at WAN latency, like pgBackRest's `archive-async`.
///
/// One archive_command call per segment is bound by round trips (three requests per segment on
/// S3). Here the call copies its segment, and the segments PostgreSQL has marked ready after it
/// (`archive_status/*.ready`), into the spool's `queue/` (fsync'd), makes sure a background pusher
/// runs (one per spool, an `flock`; started detached; it exits once idle), and waits for the
/// pusher's verdict on its own segment: `status/<name>.ok`, written only after `WALArchive.push`
/// returned, that is once the segment is durable in the repository (exit 0: acknowledged), or
/// `status/<name>.error` with the error (non-zero exit, the error on stderr; PostgreSQL retries).
/// The pusher uploads `jobs` segments at once, so by the time PostgreSQL asks for the next segment
/// it is usually stored already and the call returns at once.
///
/// A verdict is for content, not for a name: `.ok` holds the sha256 of what was stored, and a call
/// is acknowledged only when its own file has that digest. A call whose file differs from what was
/// queued or stored under its name (a read-ahead of another cluster's segment, a rebuilt cluster
/// sharing the spool) is not acknowledged from the spool: it pushes its file the synchronous way,
/// which refuses a segment archived with DIFFERENT content, and reports that.
///
/// Nothing is acknowledged that is not stored: a pusher killed mid-way leaves its segments in the
/// queue without `.ok`; the calls waiting for them time out (non-zero, PostgreSQL keeps the files)
/// and the next call starts a new pusher, which stores them (a segment stored before the kill is
/// found already archived, with the same content).
public enum WALAsyncPush {
    public struct Settings: Sendable {
        public var spool: String
        public var repository: String
        /// Segments uploaded at once.
        public var jobs: Int
        /// How long one archive_command call waits for its segment's verdict.
        public var timeout: TimeInterval
        /// The pusher exits after this long without work.
        public var idleExit: TimeInterval
        /// Queued ahead of the segment asked for, from `archive_status/*.ready` (0: only that one).
        public var readAhead: Int
        /// What the storage layer reads S3 settings and credentials from; also the pusher's environment.
        public var environment: [String: String]

        public init(spool: String, repository: String, jobs: Int = 8, timeout: TimeInterval = 60, idleExit: TimeInterval = 10,
                    environment: [String: String] = ProcessInfo.processInfo.environment) {
            self.spool = spool
            self.repository = repository
            self.environment = environment
            self.jobs = max(1, jobs)
            self.timeout = timeout
            self.idleExit = idleExit
            readAhead = 2 * self.jobs
        }
    }

    static let lockName = "pusher.lock"

    /// The archive_command side: queue, make sure a pusher runs, wait for this segment's verdict.
    ///
    /// - Parameters:
    ///   - pusherArguments: the arguments that start the background pusher (this tool's
    ///     `wal-push --pusher …`).
    ///   - key: the repository key, asked for only when the file is pushed synchronously (its
    ///     content differs from what the spool holds under its name).
    /// - Throws: `RecoveryError`: the pusher's error for this segment, a timeout, or the synchronous
    ///   push's error; either way the segment was not acknowledged and PostgreSQL keeps it and retries.
    public static func push(path: String, settings: Settings, pusherArguments: [String], key: () throws -> RepositoryKey?) throws {
        let name = (path as NSString).lastPathComponent
        _ = try WALArchive.key(for: name)
        let spool = try WALSpool(settings.spool, repository: settings.repository, resetOnMismatch: false)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RecoveryError(.failure, "cannot read WAL file \(path)", hint: "archive_command must pass %p, relative to the data directory")
        }
        let digest = sha256(data)
        /// The spool holds other bytes under this name: only the repository can judge this file.
        func pushSynchronously() throws {
            _ = try WALArchive.push(path: path, repository: settings.repository, key: try key(), environment: settings.environment)
        }
        // An error found now was not produced for this call (a read-ahead's, an earlier call's): this
        // call's own attempt is the retry, and its verdict is the one reported.
        switch try takeVerdict(name, digest: digest, spool: spool, reportingErrors: false) {
        case .stored: return
        case .otherContent: return try pushSynchronously()
        case .none: break
        }
        if let queued = try? spool.files.read("queue/\(name)"), sha256(queued) != digest { return try pushSynchronously() }
        try enqueue(name, data: data, spool: spool)
        // What PostgreSQL will ask for next is already waiting in pg_wal: queue it too, so the pusher
        // uploads it while PostgreSQL is still waiting for this one.
        let status = ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent("archive_status")
        let ready = ((try? FileManager.default.contentsOfDirectory(atPath: status)) ?? [])
            .filter { $0.hasSuffix(".ready") }.map { String($0.dropLast(".ready".count)) }
            .filter { $0 > name && (try? WALArchive.key(for: $0)) != nil }.sorted().prefix(settings.readAhead)
        for next in ready {
            let nextPath = ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent(next)
            // Best effort: a file PostgreSQL has removed meanwhile is queued by its own call.
            try? enqueue(next, from: nextPath, spool: spool)
        }
        let deadline = Date().addingTimeInterval(settings.timeout)
        var lastCheck = Date.distantPast
        while Date() < deadline {
            try Interruption.check()
            switch try takeVerdict(name, digest: digest, spool: spool, reportingErrors: true) {
            case .stored: return
            case .otherContent: return try pushSynchronously()
            case .none: break
            }
            if Date().timeIntervalSince(lastCheck) >= 1 {
                // A pusher that exited (idle, killed) is replaced.
                if try !spool.isLocked(lockName) { try spool.startDetached(pusherArguments, environment: settings.environment, log: "pusher.log") }
                lastCheck = Date()
            }
            usleep(10_000)
        }
        throw RecoveryError(.repositoryError, "WAL file \(name) was not archived within \(Int(settings.timeout)) s (queued in \(spool.directory))",
                            hint: "PostgreSQL keeps the file and retries; \(spool.path("pusher.log")) tells what the background pusher did")
    }

    /// A pusher's verdict on a name, as it applies to one caller's content.
    enum Verdict: Equatable {
        /// No verdict yet.
        case none
        /// This content is stored (the `.ok` was taken).
        case stored
        /// What was stored under the name has another sha256 (or the `.ok` names none): not this file's verdict.
        case otherContent
    }

    /// `.stored` (and the `.ok` removed) when `name` is stored with this `digest`; throws the
    /// pusher's error (removed, so that the retry queues the segment again), or with
    /// `reportingErrors` false only removes it.
    private static func takeVerdict(_ name: String, digest: String, spool: WALSpool, reportingErrors: Bool) throws -> Verdict {
        if let ok = try? spool.files.read("status/\(name).ok") {
            try spool.files.delete(["status/\(name).ok"])
            return okDigest(ok) == digest ? .stored : .otherContent
        }
        if let error = try? spool.files.read("status/\(name).error") {
            try spool.files.delete(["status/\(name).error"])
            guard reportingErrors else { return .none }
            throw RecoveryError(.repositoryError, "WAL file \(name) was not archived: \(String(decoding: error, as: UTF8.self))",
                                hint: "PostgreSQL keeps the file and retries; fix the repository named above")
        }
        return .none
    }

    /// The `.ok` file's content: the sha256 of what was stored, and where.
    static func okContents(digest: String, repository: String) -> Data {
        Data("sha256 \(digest)\nstored in \(repository)\n".utf8)
    }

    /// The sha256 an `.ok` file names, if any.
    static func okDigest(_ contents: Data) -> String? {
        String(decoding: contents, as: UTF8.self).split(separator: "\n").first { $0.hasPrefix("sha256 ") }.map { String($0.dropFirst(7)) }
    }

    static func sha256(_ data: Data) -> String {
        var digest = StreamingDigest()
        data.withUnsafeBytes { digest.update($0) }
        return digest.hexDigest()
    }

    /// Copies a segment into `queue/` (atomic, fsync'd) unless it is queued or stored already.
    private static func enqueue(_ name: String, data: Data, spool: WALSpool) throws {
        guard !spool.exists("queue/\(name)"), !spool.exists("status/\(name).ok") else { return }
        try spool.files.write("queue/\(name)", contents: data)
    }

    /// Queues a read-ahead segment from pg_wal.
    private static func enqueue(_ name: String, from path: String, spool: WALSpool) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RecoveryError(.failure, "cannot read WAL file \(path)", hint: "archive_command must pass %p, relative to the data directory")
        }
        try enqueue(name, data: data, spool: spool)
    }

    /// How old a verdict no call took (a read-ahead of a segment PostgreSQL never asked for, a
    /// call that timed out) may get before a pusher deletes it: far beyond any call's wait.
    static let unusedVerdictAge: TimeInterval = 3600

    /// Deletes what killed pushers left (`*.partial-<pid>-*` of processes that are gone) and
    /// verdicts older than `unusedVerdictAge`. Best effort: leftovers only take room.
    static func removeLeftovers(in spool: WALSpool, now: Date) {
        _ = try? spool.files.removeLeftovers(before: now.addingTimeInterval(-60))
        let old = ((try? spool.files.list(prefix: "status/")) ?? []).filter { object in
            (object.key.hasSuffix(".ok") || object.key.hasSuffix(".error"))
                && (object.modified.map { now.timeIntervalSince($0) > unusedVerdictAge } ?? false)
        }
        try? spool.files.delete(old.map(\.key))
    }

    /// The background pusher: uploads queued segments, `jobs` at once, writing each one's verdict,
    /// until the queue has been empty for `idleExit`. Returns at once when another pusher holds the spool.
    public static func drain(settings: Settings, key: RepositoryKey?) throws {
        let spool = try WALSpool(settings.spool, repository: settings.repository, resetOnMismatch: false)
        guard let lock = try spool.tryLock(lockName) else { return }
        defer { lock.release() }
        try spool.files.write("pusher.pid", contents: Data(String(ProcessInfo.processInfo.processIdentifier).utf8))
        removeLeftovers(in: spool, now: Date())
        let claims = Claims()
        let directory = spool.directory
        let repository = settings.repository
        let idleExit = settings.idleExit
        let environment = settings.environment
        WorkerThreads.run(settings.jobs) { _ in
            guard let spool = try? WALSpool(directory, repository: repository, resetOnMismatch: false) else { return }
            var idleSince = Date()
            while !Interruption.isRequested {
                let queued = (try? spool.names(under: "queue/")) ?? []
                guard let name = claims.claim(from: queued) else {
                    if Date().timeIntervalSince(idleSince) > idleExit { return }
                    usleep(20_000)
                    continue
                }
                defer { claims.release(name) }
                // Queued, not yet judged: the queue file is removed only after the verdict is written.
                guard spool.exists("queue/\(name)") else { continue }
                do {
                    // The digest of the bytes pushed, read once: the queue file is replaced only by a new pusher's copy after this one's verdict.
                    let queued = try spool.files.read("queue/\(name)")
                    _ = try WALArchive.push(path: spool.path("queue/\(name)"), repository: repository, key: key, environment: environment)
                    try spool.files.write("status/\(name).ok", contents: okContents(digest: sha256(queued), repository: repository))
                } catch {
                    let failure = RecoveryError.classify(error)
                    try? spool.files.write("status/\(name).error", contents: Data((failure.message + (failure.hint.map { " (\($0))" } ?? "")).utf8))
                }
                try? spool.files.delete(["queue/\(name)"])
                idleSince = Date()
            }
        }
    }
}
