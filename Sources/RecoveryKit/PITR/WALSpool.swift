import BackupStorage
import Foundation
import ProcessSignals
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What a spool's background worker (the pusher of `wal-push --async`, the prefetcher of
/// `wal-fetch --prefetch`) and the calls that start it are given.
public struct WALSpoolSettings: Sendable {
    public var spool: String
    /// Absolute when local (`RepositoryLocation.absolute`): the worker runs with the working directory
    /// of whichever call started it, and the spool records the repository it serves (a relative
    /// `--repo` given in another data directory is another repository).
    public let repository: String
    /// Segments in flight at once: the pusher's uploads, the prefetcher's downloads ahead.
    public var jobs: Int
    /// The worker exits after this long without work.
    public var idleExit: TimeInterval
    /// What the storage layer reads S3 settings and credentials from; also the worker's environment.
    public var environment: [String: String]

    public init(spool: String, repository: String, jobs: Int, idleExit: TimeInterval = 10,
                environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.spool = spool
        self.repository = (try? RepositoryLocation(parsing: repository).absolute.description) ?? repository
        self.jobs = max(1, jobs)
        self.idleExit = idleExit
        self.environment = environment
    }
}

/// A local directory where WAL waits between PostgreSQL and the repository: `wal-push --async`
/// queues segment paths and status files in it, `wal-fetch --prefetch` keeps segments it downloaded
/// ahead. Its files are written whole or not at all (`put`: a temporary file renamed) but not
/// fsync'd: what must be durable is in the repository before anything is acknowledged.
///
/// A spool belongs to one repository (recorded in `repository`): a segment queued for, or
/// prefetched from, one repository must never be acknowledged against or served from another.
struct WALSpool {
    let directory: String
    let files: LocalStore
    /// The repository this spool serves (as recorded in it).
    let repository: String

    /// Opens (creating) the spool and checks it serves `repository`.
    ///
    /// - Parameter resetOnMismatch: a prefetch spool is only a cache and is emptied when the
    ///   repository changed; a push spool holds acknowledgements and refuses instead.
    /// - Throws: `RecoveryError(.usage)` when the spool cannot be created or written, or belongs
    ///   to another repository.
    init(_ directory: String, repository: String, resetOnMismatch: Bool) throws {
        do {
            files = try LocalStore(root: directory, create: true)
        } catch let error as StorageError {
            throw RecoveryError(.usage, "spool directory \(directory) cannot be used: \(error.message)",
                                hint: "give --spool a local directory the PostgreSQL user may write")
        }
        self.directory = files.root
        self.repository = repository
        // An existing directory this user cannot write is the spool's problem, not the repository's.
        guard access(files.root, W_OK | X_OK) == 0 else {
            throw RecoveryError(.usage, "spool directory \(files.root) is not writable: \(String(cString: strerror(errno)))",
                                hint: "give --spool a local directory the PostgreSQL user may write (chown or chmod it)")
        }
        let recorded = (try? files.read(Self.repositoryKey)).map { String(decoding: $0, as: UTF8.self) }
        if let recorded, recorded != repository {
            guard resetOnMismatch else {
                throw RecoveryError(.usage, "spool \(self.directory) belongs to repository \(recorded), not \(repository)",
                                    hint: "give each repository its own --spool directory")
            }
            try files.delete(try files.list(prefix: "").map(\.key).filter { !$0.hasSuffix(".lock") })
        }
        if recorded != repository { try files.write(Self.repositoryKey, contents: Data(repository.utf8)) }
    }

    private static let repositoryKey = "repository"

    func path(_ key: String) -> String { directory + "/" + key }

    func exists(_ key: String) -> Bool { (try? files.objectInfo(key)) != nil }

    /// Writes `key` whole or not at all (a `*.partial-<pid>-<random>` file renamed, as `LocalStore`
    /// names them, so that `removeLeftovers` knows them) but without fsync: nothing in a spool has
    /// to survive a crash (a lost or torn verdict is answered again by the retry's push, a lost or
    /// damaged segment is caught by its CRC-32), while an fsync costs a trip to a busy disk for every
    /// file of every segment, in the path PostgreSQL waits on. Durability is the repository's.
    func put(_ key: String, _ contents: Data) throws {
        let file = try create(key)
        try contents.withUnsafeBytes { try file.append($0) }
        try file.commit()
    }

    /// A spool file being written piece by piece (a segment as it is decompressed), under its
    /// temporary name until `commit()`; as `put`, whole or not at all, without fsync.
    final class NewFile {
        let final: String
        private let temporary: String
        private var descriptor: Int32

        fileprivate init(final: String) throws {
            self.final = final
            let directory = (final as NSString).deletingLastPathComponent
            try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            temporary = final + ".partial-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
            descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard descriptor >= 0 else { throw Self.failure(temporary, String(cString: strerror(errno))) }
        }

        private static func failure(_ path: String, _ reason: String) -> RecoveryError {
            RecoveryError(.failure, "cannot write \(path) in the spool: \(reason)",
                          hint: "give --spool a local directory the PostgreSQL user may write, with free space")
        }

        /// Appends `bytes`; on failure the temporary file is removed.
        func append(_ bytes: UnsafeRawBufferPointer) throws {
            guard descriptor >= 0 else { throw Self.failure(temporary, "already closed") }
            var offset = 0
            while offset < bytes.count {
                let count = write(descriptor, bytes.baseAddress.map { $0 + offset }, bytes.count - offset)
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else {
                    let reason = String(cString: strerror(count < 0 ? errno : ENOSPC))
                    discard()
                    throw Self.failure(temporary, reason)
                }
                offset += count
            }
        }

        /// Renames the file to its name: from now on readers see it whole.
        func commit() throws {
            guard descriptor >= 0 else { throw Self.failure(temporary, "already closed") }
            close(descriptor)
            descriptor = -1
            guard rename(temporary, final) == 0 else {
                let reason = String(cString: strerror(errno))
                unlink(temporary)
                throw RecoveryError(.failure, "cannot rename \(temporary) to \(final): \(reason)")
            }
        }

        /// Drops what was written (also what `deinit` does to a file never committed).
        func discard() {
            guard descriptor >= 0 else { return }
            close(descriptor)
            descriptor = -1
            unlink(temporary)
        }

        deinit { discard() }
    }

    /// Starts writing `key` (see `NewFile`).
    func create(_ key: String) throws -> NewFile {
        try NewFile(final: path(key))
    }

    /// Removes `keys` that exist (no fsync, see `put`).
    func remove(_ keys: [String]) {
        for key in keys { unlink(path(key)) }
    }

    /// The WAL file names stored under `prefix` (`queue/`), without their suffix, sorted.
    func names(under prefix: String, suffix: String = "") throws -> [String] {
        try files.list(prefix: prefix).map { String($0.key.dropFirst(prefix.count)) }
            .filter { $0.hasSuffix(suffix) && !$0.contains(".partial-") && !$0.contains("/") }
            .map { String($0.dropLast(suffix.count)) }.sorted()
    }

    /// An exclusive `flock` on `name` held until `release()` (or the process ends, however it ends):
    /// one background worker per spool.
    // @unchecked Sendable: `descriptor` changes only in release() (the drain's end, after its workers
    // have joined, or deinit); the workers only read it, in `isCurrent`.
    final class Lock: @unchecked Sendable {
        private var descriptor: Int32
        private let path: String

        fileprivate init(descriptor: Int32, path: String) { (self.descriptor, self.path) = (descriptor, path) }

        /// Whether the lock file this holds is still the one at its path: a spool deleted and made
        /// again (or a spool link pointed elsewhere) has a new lock file, and a worker holding the
        /// old one must stop taking work, which is now another spool's (maybe another repository's).
        var isCurrent: Bool {
            var held = stat(), now = stat()
            return descriptor >= 0 && fstat(descriptor, &held) == 0 && stat(path, &now) == 0 && held.st_dev == now.st_dev && held.st_ino == now.st_ino
        }

        func release() {
            if descriptor >= 0 { close(descriptor) }
            descriptor = -1
        }

        deinit { release() }
    }

    /// Takes the lock without waiting; nil when another process holds it.
    func tryLock(_ name: String) throws -> Lock? {
        let descriptor = open(path(name), O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw RecoveryError(.failure, "cannot open \(path(name)): \(String(cString: strerror(errno)))")
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            close(descriptor)
            return nil
        }
        return Lock(descriptor: descriptor, path: path(name))
    }

    /// Whether a worker holds `name` now.
    func isLocked(_ name: String) throws -> Bool {
        guard let lock = try tryLock(name) else { return true }
        lock.release()
        return false
    }

    /// Starts this executable with `arguments` in a new session, detached from the caller (stdin
    /// and stdout closed, stderr appended to `log` in the spool), so that it outlives the
    /// archive_command or restore_command call that started it. Arguments never hold secrets:
    /// keys and credentials reach the worker through `environment` or a key file path.
    func startDetached(_ arguments: [String], environment: [String: String], log: String) throws {
        let executable = PointInTimeRestore.runningExecutable()
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // POSIX_SPAWN_SETSID (glibc 2.26+), not exported to Swift: a session of its own, so that
        // signals to the caller's process group (the archiver's) do not reach it.
        posix_spawnattr_setflags(&attributes, 0x80)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, path(log), O_WRONLY | O_CREAT | O_APPEND, 0o600)
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        // The storage environment of this run (S3 endpoint and region as resolved from flags and config).
        let environ: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { environ.forEach { free($0) } }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        guard status == 0 else {
            throw RecoveryError(.failure, "cannot start the background WAL worker \(executable): \(String(cString: strerror(status)))")
        }
    }
}

/// A file read where it lies: mapped, so that hashing a 16 MiB segment costs neither a copy nor
/// fresh memory (the calls PostgreSQL waits on do this for every segment).
///
/// - Important: only for files nobody cuts short in place (a WAL segment PostgreSQL is archiving,
///   a committed spool file): touching a page past a new end kills the process by SIGBUS, which
///   archive_command and restore_command report as a failure, never as success.
/// Files arriving in one folder of a spool (a `put` renames each one in), watched with inotify: how a
/// call learns of its verdict the moment the pusher writes it, instead of looking every few
/// milliseconds (each look a few file operations; each wait up to a look's interval more in the
/// path PostgreSQL waits on, one segment after another).
final class Arrivals {
    private let descriptor: Int32

    /// Watches `folder` (created if missing); nil where inotify cannot (the caller then sleeps between looks).
    init?(_ folder: String) {
        try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        descriptor = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard descriptor >= 0 else { return nil }
        guard inotify_add_watch(descriptor, folder, UInt32(IN_MOVED_TO | IN_CREATE)) >= 0 else {
            close(descriptor)
            return nil
        }
    }

    deinit { close(descriptor) }

    /// Returns when a file has arrived since the last call (at once if one already has), or after
    /// `seconds`. A file that arrives between a look and this wait is not missed: its event waits
    /// in the queue.
    func wait(_ seconds: Double) {
        var watched = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&watched, 1, Int32(seconds * 1000)) > 0 else { return }
        var events = [UInt8](repeating: 0, count: 4096)
        while read(descriptor, &events, events.count) > 0 {}
    }
}

/// Reads WAL segments for the pusher into buffers kept from one segment to the next: memory of our
/// own (what is checksummed, compressed and stored is one snapshot of the file, whatever writes to
/// it meanwhile: a mapping let a writer give the CRC, the gzip's CRC and its data different bytes),
/// without fresh pages to fault in for every 16 MiB. Used inside a turn at the CPU (`CPUTurns`), so
/// it holds at most one buffer per core.
final class SegmentBuffers: Sendable {
    private struct Buffer: @unchecked Sendable {
        let memory: UnsafeMutableRawBufferPointer
    }

    private let free = Mutex<[Buffer]>([])

    deinit {
        free.withLock { buffers in buffers.forEach { $0.memory.deallocate() } }
    }

    /// `body` over the bytes of the file at `path`, and the file's identity when it was opened.
    ///
    /// - Throws: `RecoveryError` when it cannot be read (`WALArchive.unreadable`), or what `body` throws.
    func withSegment<T>(_ path: String, _ body: (UnsafeRawBufferPointer, FileIdentity) throws -> T) throws -> T {
        // O_NONBLOCK: a FIFO in pg_wal under a segment's name must not hang the pusher in open (refused below).
        let descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard descriptor >= 0 else { throw WALArchive.unreadable(path) }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0, status.st_mode & S_IFMT == S_IFREG else { throw WALArchive.unreadable(path) }
        let size = Int(status.st_size)
        var buffer = free.withLock { $0.popLast() }
        if let small = buffer, small.memory.count < size {
            small.memory.deallocate()
            buffer = nil
        }
        let memory = buffer?.memory ?? UnsafeMutableRawBufferPointer.allocate(byteCount: max(size, 1), alignment: 4096)
        defer { free.withLock { $0.append(Buffer(memory: memory)) } }
        var filled = 0
        while filled < size {
            let count = pread(descriptor, memory.baseAddress.map { $0 + filled }, size - filled, off_t(filled))
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                if count < 0 { throw WALArchive.unreadable(path) }
                break   // cut short meanwhile: its identity differs now, and no call is acknowledged from the spool
            }
            filled += count
        }
        return try body(UnsafeRawBufferPointer(rebasing: memory[0..<filled]), FileIdentity(status))
    }
}

/// Which file a path names, and when it last changed: device, inode, size, and the modification and
/// status-change times to the nanosecond. A write changes the times, a file renamed into the path
/// has another inode; only a write within the clock tick of a stat taken before it (or through a
/// mapping whose pages were already written) goes unseen, and `WALAsyncPush` checks content beside
/// it for that.
struct FileIdentity: Equatable, CustomStringConvertible {
    let device: UInt64
    let inode: UInt64
    let size: Int64
    let modified: [Int]
    let changed: [Int]

    init(_ status: stat) {
        device = UInt64(status.st_dev)
        inode = UInt64(status.st_ino)
        size = Int64(status.st_size)
        modified = [Int(status.st_mtim.tv_sec), Int(status.st_mtim.tv_nsec)]
        changed = [Int(status.st_ctim.tv_sec), Int(status.st_ctim.tv_nsec)]
    }

    /// The file at `path` now (links followed, as open does); nil when there is none.
    init?(path: String) {
        var status = stat()
        guard stat(path, &status) == 0 else { return nil }
        self.init(status)
    }

    /// `description` read back.
    init?(_ text: Substring) {
        let fields = text.split(separator: ":").map { Int($0) }
        guard fields.count == 7, fields.allSatisfy({ $0 != nil }) else { return nil }
        let values = fields.compactMap { $0 }
        (device, inode, size) = (UInt64(truncatingIfNeeded: values[0]), UInt64(truncatingIfNeeded: values[1]), Int64(values[2]))
        (modified, changed) = (Array(values[3...4]), Array(values[5...6]))
    }

    /// `device:inode:size:mtime-s:mtime-ns:ctime-s:ctime-ns`.
    var description: String {
        ([Int(truncatingIfNeeded: device), Int(truncatingIfNeeded: inode), Int(size)] + modified + changed).map(String.init).joined(separator: ":")
    }
}

enum MappedFile {
    /// `body` over the file's bytes; nil when the file cannot be opened or mapped (or is empty),
    /// for the caller to fall back to reading it.
    ///
    /// - Parameter followingLinks: false for files the spool made itself, which are never links.
    static func read<T>(_ path: String, followingLinks: Bool = true, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T? {
        // O_NONBLOCK: a FIFO where a file should be must not block the open (it is refused below).
        let descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | (followingLinks ? 0 : O_NOFOLLOW))
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var status = stat()
        // A spool's own file (not following links) has one name: a hard link would hand PostgreSQL a
        // file shared with whatever else it names.
        guard fstat(descriptor, &status) == 0, status.st_mode & S_IFMT == S_IFREG, status.st_size > 0,
              followingLinks || status.st_nlink == 1 else { return nil }
        let size = Int(status.st_size)
        guard let mapping = mmap(nil, size, PROT_READ, MAP_SHARED, descriptor, 0), mapping != UnsafeMutableRawPointer(bitPattern: -1) else {
            return nil
        }
        defer { munmap(mapping, size) }
        return try body(UnsafeRawBufferPointer(start: mapping, count: size))
    }
}

/// Runs `work` on `jobs` threads at once and waits for all of them.
enum WorkerThreads {
    /// Microseconds an idle worker waits before looking for work again: the first of a pool looks
    /// often (new work is seen within 10 ms), the rest rarely, so that an idle pool waiting out its
    /// `idleExit` does not take CPU from the processes PostgreSQL is waiting for.
    static func idlePause(_ index: Int) -> useconds_t { index == 0 ? 10_000 : 100_000 }

    /// Runs `work` on `jobs` threads, and `meanwhile` on this one, until all have returned.
    static func run(_ jobs: Int, meanwhile: () -> Void = {}, _ work: @escaping @Sendable (Int) -> Void) {
        let group = DispatchGroup()
        for index in 0..<max(1, jobs) {
            group.enter()
            Thread.detachNewThread {
                work(index)
                group.leave()
            }
        }
        meanwhile()
        group.wait()
    }
}

/// The names a pool of workers has taken, so that no two take the same one and none is taken
/// twice in one worker's life.
final class Claims: Sendable {
    private let taken = Mutex<Set<String>>([])

    /// Takes the first of `names` nobody has taken; nil when all are.
    func claim(from names: [String]) -> String? {
        taken.withLock { taken in
            guard let name = names.first(where: { !taken.contains($0) }) else { return nil }
            taken.insert(name)
            return name
        }
    }
}

/// Takes turns at the CPU-bound part of a worker's job (compressing a segment, decompressing
/// one), at most `slots` at once and the oldest segment first. The workers are many so that
/// their round trips overlap; if all of them compressed at once on a machine with fewer cores,
/// every segment would be ready only when all were, while PostgreSQL waits for the oldest one
/// (archive_command and restore_command are called one segment at a time, in order).
final class CPUTurns: Sendable {
    /// One caller waiting: its name, then the order it came in (two callers of one name each get a turn).
    private struct Ticket: Hashable, Comparable {
        let name: String
        let serial: Int

        static func < (left: Ticket, right: Ticket) -> Bool { (left.name, left.serial) < (right.name, right.serial) }
    }

    private struct State {
        var free: Int
        var serial = 0
        var waiting: Set<Ticket> = []
    }

    private let state: Mutex<State>
    /// Where callers wait for a turn (woken when one is taken or ends), rather than polling: eight threads
    /// looking every millisecond cost more CPU than the turns save.
    private let turnEnded = NSCondition()

    /// - Parameter slots: jobs at once; by default one per core the process may use.
    init(slots: Int = ProcessInfo.processInfo.activeProcessorCount) {
        state = Mutex(State(free: max(1, slots)))
    }

    /// Runs `work` once a slot is free and no older name waits for one.
    func run<T>(_ name: String, _ work: () throws -> T) rethrows -> T {
        let ticket = state.withLock { state in
            state.serial += 1
            let ticket = Ticket(name: name, serial: state.serial)
            state.waiting.insert(ticket)
            return ticket
        }
        // Checked and waited for under the condition's lock, which the end of a turn takes to wake
        // the waiters: no wake-up falls between a check and the wait.
        turnEnded.lock()
        while !state.withLock({ state in
            guard state.free > 0, state.waiting.min() == ticket else { return false }
            state.free -= 1
            state.waiting.remove(ticket)
            return true
        }) {
            turnEnded.wait()
        }
        // The next oldest may be waiting for a slot that is still free.
        turnEnded.broadcast()
        turnEnded.unlock()
        defer {
            state.withLock { $0.free += 1 }
            turnEnded.lock()
            turnEnded.broadcast()
            turnEnded.unlock()
        }
        return try work()
    }
}
