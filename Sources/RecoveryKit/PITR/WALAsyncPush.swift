import BackupStorage
import Foundation
import Gzip
import ProcessSignals
import Synchronization

/// `dbbackup wal-push --async`: archive_command at WAN latency, like pgBackRest's `archive-async`.
///
/// One archive_command call per segment is bound by round trips and by one process doing
/// everything in turn. Here a background pusher (one per spool, an `flock`; started detached by
/// the first call that needs it; it exits once idle) uploads `jobs` segments at once, compressing
/// each in its own thread, and reads ahead by itself: besides the segments the calls queue, it
/// takes every segment PostgreSQL has marked ready (`archive_status/*.ready` next to the queued
/// ones), oldest first. PostgreSQL keeps a `.ready` segment in pg_wal until archive_command
/// succeeds for it, so the pusher reads it there: the spool's `queue/<name>` holds the segment's
/// path, not a copy. A call waits for the pusher's verdict on its own segment:
/// `status/<name>.ok`, written only after `WALArchive.store` returned, that is once the segment is
/// durable and confirmed in the repository, the same evidence the synchronous push acts on (exit
/// 0: acknowledged); or `status/<name>.error` with the error (non-zero exit, the error on stderr;
/// PostgreSQL retries). By the time PostgreSQL asks for the next segment it is usually stored
/// already and the call returns at once.
///
/// A verdict is for a file, not for a name: `.ok` names the file the pusher read (device, inode,
/// size, modification and change times, unchanged from before the read to after it) and the CRC-32
/// of its bytes, and a call is acknowledged only when its own file is that file, unchanged, with
/// those bytes. A stat and a CRC-32 (about a millisecond, where a SHA-256 of the segment in the call
/// and again in the pusher took an eighth of all the CPU a segment costs): any write moves the file's
/// times, a file put in its place has another inode, and the CRC catches a write within the clock
/// tick of the pusher's stat. A call whose file is not that one (a read-ahead of another cluster's
/// segment, a rebuilt cluster sharing the spool, a copy) is not acknowledged from the spool: it
/// pushes its file the synchronous way, which compares it with the archived copy byte for byte:
/// the same bytes are acknowledged, DIFFERENT content is refused and reported.
///
/// Nothing is acknowledged that is not stored: a pusher killed mid-way leaves no `.ok` for what it
/// had not stored; the calls waiting for those time out (non-zero, PostgreSQL keeps the files)
/// or see a new pusher, started by the next call, store them (a segment stored before the kill is
/// found already archived, with the same content).
public enum WALAsyncPush {
    static let lockName = "pusher.lock"

    /// The archive_command side: queue, make sure a pusher runs, wait for this segment's verdict.
    ///
    /// - Parameters:
    ///   - timeout: how long this call waits for its segment's verdict.
    ///   - pusherArguments: the arguments that start the background pusher (this tool's
    ///     `wal-push --pusher …`).
    ///   - key: the repository key, asked for only when the file is pushed synchronously (its
    ///     content differs from what the spool says was stored under its name).
    /// - Throws: `RecoveryError`: the pusher's error for this segment, a timeout, or the synchronous
    ///   push's error; either way the segment was not acknowledged and PostgreSQL keeps it and retries.
    public static func push(path: String, settings: WALSpoolSettings, timeout: TimeInterval, pusherArguments: [String],
                            key: () throws -> RepositoryKey?) throws {
        let name = (path as NSString).lastPathComponent
        _ = try WALArchive.key(for: name)
        // A file that cannot be read is this call's problem, said now (not a timeout, not the repository's).
        try WALArchive.requireReadable(path)
        let spool = try WALSpool(settings.spool, repository: settings.repository, resetOnMismatch: false)
        /// The spool's verdict is not for this file: only the repository can judge it.
        func pushSynchronously() throws {
            _ = try WALArchive.push(path: path, repository: settings.repository, key: try key(), environment: settings.environment)
        }
        // An error found now was not produced for this call (a read-ahead's, an earlier call's): this
        // call's own attempt is the retry, and its verdict is the one reported.
        switch try takeVerdict(name, path: path, spool: spool, reportingErrors: false) {
        case .stored: return
        case .otherFile: return try pushSynchronously()
        case .none: break
        }
        // Where the pusher reads it (PostgreSQL runs archive_command in the data directory, %p relative to it).
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        if !spool.exists("queue/\(name)") { try spool.put("queue/\(name)", Data(absolute.utf8)) }
        // Answered or given up: this call's entry is not work any more (a retry queues it again).
        defer { spool.remove(["queue/\(name)"]) }
        // Watched from before the first look, so that a verdict written after it wakes the wait at once.
        let arrivals = Arrivals(spool.path("status"))
        let deadline = Date().addingTimeInterval(timeout)
        var lastCheck = Date.distantPast
        while Date() < deadline {
            if Date().timeIntervalSince(lastCheck) >= 1 {
                // A pusher that exited (idle, killed) is replaced.
                if try !spool.isLocked(lockName) { try spool.startDetached(pusherArguments, environment: settings.environment, log: "pusher.log") }
                lastCheck = Date()
            }
            try Interruption.check()
            switch try takeVerdict(name, path: path, spool: spool, reportingErrors: true) {
            case .stored: return
            case .otherFile: return try pushSynchronously()
            case .none: break
            }
            // Another call for the same segment took the verdict, and the pusher's answer removed the
            // entry: queued again, so that this call gets a verdict of its own (the store finds the
            // segment archived and compares) instead of waiting out its timeout.
            if !spool.exists("queue/\(name)") { try spool.put("queue/\(name)", Data(absolute.utf8)) }
            // Woken by a verdict (this call's or another's), else at most 50 ms to look at the pusher and the signals.
            if let arrivals { arrivals.wait(0.05) } else { usleep(5_000) }
        }
        // Which pusher held the spool (a stopped or stuck one logs nothing), or that none ran at all.
        let pusher = (try? spool.isLocked(lockName)) == true
            ? "the background pusher (pid \((try? spool.files.read("pusher.pid")).map { String(decoding: $0, as: UTF8.self) } ?? "?") in pusher.pid) holds the spool but gave no verdict: look at it (stopped? stuck?) and at \(spool.path("pusher.log"))"
            : "no background pusher runs now: \(spool.path("pusher.log")) tells what the last one did (empty: it never started, e.g. dbbackup cannot run as the PostgreSQL user)"
        throw RecoveryError(.repositoryError, "WAL file \(name) was not archived within \(Int(timeout)) s (queued in \(spool.directory))",
                            hint: "PostgreSQL keeps the file and retries; \(pusher)")
    }

    /// A pusher's verdict on a name, as it applies to one caller's file.
    enum Verdict: Equatable {
        /// No verdict yet.
        case none
        /// This file is stored (the `.ok` was taken).
        case stored
        /// What was stored under the name was read from another file, or from this one before it
        /// changed (or the `.ok` does not say): not this file's verdict.
        case otherFile
    }

    /// `.stored` (and the `.ok` removed) when `name` is stored from the file at `path` as it is now;
    /// throws the pusher's error (removed, so that the retry queues the segment again), or with
    /// `reportingErrors` false only removes it.
    private static func takeVerdict(_ name: String, path: String, spool: WALSpool, reportingErrors: Bool) throws -> Verdict {
        if let ok = try? spool.files.read("status/\(name).ok") {
            spool.remove(["status/\(name).ok"])
            return StoredFile(ok)?.matches(path, repository: spool.repository) == true ? .stored : .otherFile
        }
        if let error = try? spool.files.read("status/\(name).error") {
            spool.remove(["status/\(name).error"])
            guard reportingErrors else { return .none }
            throw RecoveryError(.repositoryError, "WAL file \(name) was not archived: \(String(decoding: error, as: UTF8.self))",
                                hint: "PostgreSQL keeps the file and retries; fix the repository named above")
        }
        return .none
    }

    /// What an `.ok` says was stored: the file read (when it did not change while it was read), the
    /// CRC-32 of its bytes, and the repository it was stored in.
    struct StoredFile: Equatable {
        let file: FileIdentity
        let crc: UInt32
        /// Where: a pusher of a spool that was deleted and made again for another repository may still
        /// write into the new one what it stored in the old.
        let repository: String

        init(file: FileIdentity, crc: UInt32, repository: String) {
            (self.file, self.crc, self.repository) = (file, crc, repository)
        }

        /// An `.ok` file's content read back; nil when it names no file (one read while it changed,
        /// or written by another version).
        init?(_ contents: Data) {
            var file: FileIdentity?, crc: UInt32?, repository: String?
            for line in String(decoding: contents, as: UTF8.self).split(separator: "\n") {
                if line.hasPrefix("file ") { file = FileIdentity(line.dropFirst(5)) }
                if line.hasPrefix("crc32 ") { crc = UInt32(line.dropFirst(6), radix: 16) }
                if line.hasPrefix("stored in ") { repository = String(line.dropFirst(10)) }
            }
            guard let file, let crc, let repository else { return nil }
            self.init(file: file, crc: crc, repository: repository)
        }

        /// The `.ok` file's content.
        var contents: Data {
            Data("file \(file)\ncrc32 \(String(crc, radix: 16))\nstored in \(repository)\n".utf8)
        }

        /// Whether the file at `path` is this one, unchanged, stored in `repository`: its identity first
        /// (a stat), then its bytes' CRC-32.
        func matches(_ path: String, repository: String) -> Bool {
            guard self.repository == repository, FileIdentity(path: path) == file else { return false }
            return MappedFile.read(path, WholeBufferGzip.crc32) == crc
        }
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
        spool.remove(old.map(\.key))
    }

    /// The background pusher: uploads queued and ready segments, `jobs` at once, oldest first,
    /// writing each one's verdict, until there has been nothing to do for `idleExit`. Returns at
    /// once when another pusher holds the spool.
    ///
    /// - Parameter checkRepository: whether the repository may take what `key` writes (its
    ///   encryption, `RepositoryEncryption.checkWrite`): round trips, run while the first segments
    ///   are compressed; nothing is stored before it passes. When it throws, the segments taken
    ///   meanwhile are answered with its error (their calls report it at once, PostgreSQL keeps the
    ///   files) and the pusher exits, so that the next call starts one with its own options.
    public static func drain(settings: WALSpoolSettings, key: RepositoryKey?, checkRepository: () throws -> Void) throws {
        let spool = try WALSpool(settings.spool, repository: settings.repository, resetOnMismatch: false)
        guard let lock = try spool.tryLock(lockName) else { return }
        defer { lock.release() }
        try spool.put("pusher.pid", Data(String(ProcessInfo.processInfo.processIdentifier).utf8))
        removeLeftovers(in: spool, now: Date())
        let work = PushWork(), turns = CPUTurns(), check = RepositoryCheck(), buffers = SegmentBuffers()
        let directory = spool.directory
        let repository = settings.repository
        let idleExit = settings.idleExit
        let environment = settings.environment
        WorkerThreads.run(settings.jobs, meanwhile: { check.decide(checkRepository) }) { index in
            guard let spool = try? WALSpool(directory, repository: repository, resetOnMismatch: false) else { return }
            var store: BackupStore?
            var idleSince = Date()
            // A failed check answers what was taken while it ran, then takes nothing more: the call
            // for the next segment starts a pusher with its own options.
            // A spool deleted and made again (or a link moved) is another spool: its work is not ours.
            while !Interruption.isRequested && !check.failed && lock.isCurrent {
                guard let segment = work.claim(in: spool) else {
                    if Date().timeIntervalSince(idleSince) > idleExit { return }
                    usleep(WorkerThreads.idlePause(index))
                    continue
                }
                do {
                    if check.failed { try check.wait() }
                    let opened = try store ?? Repository.open(repository, create: true, environment: environment)
                    store = opened
                    // Read, checksum and compress in turns, oldest first (the call PostgreSQL waits on is
                    // for the oldest); the uploads overlap.
                    let (compressed, stored) = try turns.run(segment.name) {
                        try buffers.withSegment(segment.path) { bytes, identity in
                            let crc = WholeBufferGzip.crc32(bytes)
                            let compressed = try WALArchive.compress(bytes, objectKey: try WALArchive.key(for: segment.name), cipherKey: key)
                            // The file as it was opened, if it still is: else no call is acknowledged from the spool.
                            return (compressed, FileIdentity(path: segment.path) == identity ? StoredFile(file: identity, crc: crc, repository: repository) : nil)
                        }
                    }
                    try check.wait()
                    // No look-up first: a segment already stored (by a pusher killed before its verdict)
                    // is found by the create-if-absent and compared there (the file read again for that).
                    _ = try WALArchive.store(compressed: compressed, of: { try WALArchive.readSegment(segment.path) }, name: segment.name, in: opened, key: key)
                    try spool.put("status/\(segment.name).ok", stored?.contents ?? Data("stored in \(repository)\n".utf8))
                } catch {
                    let failure = RecoveryError.classify(error)
                    let text = failure.message + (failure.hint.map { " (\($0))" } ?? "")
                    do {
                        try spool.put("status/\(segment.name).error", Data(text.utf8))
                    } catch {
                        // The call will time out; the log says why (with the verdict it could not get).
                        TextSink.standardError.write("\(segment.name): \(text); and its verdict could not be written: \(RecoveryError.classify(error).message)\n")
                    }
                }
                // Answered: a call killed while waiting must not leave its entry to be pushed again and again.
                spool.remove(["queue/\(segment.name)"])
                work.finish(segment.name)
                idleSince = Date()
            }
        }
    }
}

/// The pusher's check of the repository, decided once while the workers compress: they wait for
/// it before storing anything.
final class RepositoryCheck: Sendable {
    private enum State {
        case pending
        case passed
        case failed(RecoveryError)
    }

    private let state = Mutex(State.pending)
    private let decided = NSCondition()

    /// Runs the check and tells the waiting workers.
    func decide(_ check: () throws -> Void) {
        let outcome: State
        do {
            try check()
            outcome = .passed
        } catch {
            outcome = .failed(RecoveryError.classify(error))
        }
        decided.lock()
        state.withLock { $0 = outcome }
        decided.broadcast()
        decided.unlock()
    }

    /// True once the check has failed.
    var failed: Bool {
        state.withLock { if case .failed = $0 { return true } else { return false } }
    }

    /// Returns once the check has passed; throws its error when it failed.
    func wait() throws {
        decided.lock()
        defer { decided.unlock() }
        while true {
            switch state.withLock({ $0 }) {
            case .passed: return
            case .failed(let error): throw error
            case .pending: decided.wait()
            }
        }
    }
}

/// What the pusher's threads share: the segments waiting (queued by calls, or ready in a pg_wal
/// the queue named), the ones being pushed, and the ones this pusher has answered, so that a
/// segment still marked ready while PostgreSQL takes its verdict is not pushed twice.
final class PushWork: Sendable {
    struct Segment: Sendable {
        let name: String
        let path: String
    }

    private struct State {
        var waiting: [String: String] = [:]
        var inFlight: Set<String> = []
        var answered: Set<String> = []
        var directories: Set<String> = []
        var scanned = Date.distantPast
    }

    private let state = Mutex(State())

    /// The oldest segment waiting, taken by this thread; looks at the spool's queue and at
    /// archive_status (at most every 20 ms, only when nothing is waiting). Nil when there is nothing.
    func claim(in spool: WALSpool) -> Segment? {
        let scan = state.withLock { state in
            guard state.waiting.isEmpty, Date().timeIntervalSince(state.scanned) >= 0.02 else { return nil as Set<String>? }
            state.scanned = Date()
            return state.directories
        }
        if let directories = scan {
            let queued = Self.queued(in: spool)
            let ready = Self.ready(in: directories.union(queued.values.map { ($0 as NSString).deletingLastPathComponent }))
            let verdicts = Set(((try? spool.files.list(prefix: "status/")) ?? []).map { String($0.key.dropFirst("status/".count)) })
            state.withLock { state in
                for (name, path) in queued where !state.inFlight.contains(name) {
                    // A call queued it (again): its verdict is wanted even if this pusher gave one before.
                    state.answered.remove(name)
                    state.waiting[name] = path
                    state.directories.insert((path as NSString).deletingLastPathComponent)
                }
                for (name, path) in ready where state.waiting[name] == nil && !state.inFlight.contains(name) && !state.answered.contains(name)
                    && !verdicts.contains(name + ".ok") {
                    state.waiting[name] = path
                }
            }
        }
        return state.withLock { state in
            guard let name = state.waiting.keys.min(), let path = state.waiting.removeValue(forKey: name) else { return nil }
            state.inFlight.insert(name)
            return Segment(name: name, path: path)
        }
    }

    /// `name` has its verdict.
    func finish(_ name: String) {
        state.withLock { state in
            state.inFlight.remove(name)
            state.answered.insert(name)
        }
    }

    /// The calls' queue: name → path of the segment in pg_wal.
    private static func queued(in spool: WALSpool) -> [String: String] {
        var queued: [String: String] = [:]
        for name in (try? spool.names(under: "queue/")) ?? [] {
            guard let path = try? spool.files.read("queue/\(name)") else { continue }
            queued[name] = String(decoding: path, as: UTF8.self)
        }
        return queued
    }

    /// The WAL files PostgreSQL has marked ready in these pg_wal directories: name → path.
    private static func ready(in directories: Set<String>) -> [String: String] {
        var ready: [String: String] = [:]
        for directory in directories {
            let status = (directory as NSString).appendingPathComponent("archive_status")
            for file in (try? FileManager.default.contentsOfDirectory(atPath: status)) ?? [] where file.hasSuffix(".ready") {
                let name = String(file.dropLast(".ready".count))
                guard (try? WALArchive.key(for: name)) != nil else { continue }
                ready[name] = (directory as NSString).appendingPathComponent(name)
            }
        }
        return ready
    }
}
