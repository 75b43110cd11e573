import BackupStorage
import Foundation
import ProcessSignals
import Synchronization

/// Extracts a base backup on several cores from its index (`BaseBackupIndex`): `jobs` threads take
/// the compressed segments in turn, each fetched, checked against its sha256 and decoded once
/// (`DumpSegments`), and each thread writes the files of its own segments straight into the data
/// directory (`TarExtractor`): no ordering between threads, no `tar` child. A file that spans
/// segments is written by each of them at its own offsets. Modes, owners (as root) and times are
/// those `tar -x` gives pg_basebackup's members; the ones later writes would disturb (directories,
/// files split between segments) are set once every thread is done.
///
/// A damaged segment fails the extraction (`backupCorrupt`, naming the file and its bytes); the
/// caller removes what was written, as for a failed `tar -x`. Memory: one segment's buffers per thread.
enum ParallelExtraction {
    static func run(_ file: BackupManifest.File, of manifest: BackupManifest, index: BaseBackupIndex, store: BackupStore,
                    into directory: String, jobs: Int, progress: ProgressObserver?) throws {
        let segments = DumpSegments(file, of: manifest, points: index.accessPoints, uncompressedBytes: index.tarBytes,
                                    indexName: BaseBackupIndex.fileName,
                                    hint: "dbverify --files \(manifest.id) checks the backup; recover from another base backup",
                                    phase: "extract", store: store, boundaries: [], progress: progress)
        try segments.checkSize()
        defer { progress?.finished() }
        let ownership = TarExtractor.Ownership()
        let queue = SegmentQueue(count: segments.count)
        let workers = (0..<max(1, min(jobs, segments.count))).map { _ in
            Background { () -> [TarMember] in
                var deferred: [TarMember] = []
                while let next = queue.next() {
                    let range = segments.range(of: next)
                    let writer = TarExtractor(root: directory, at: range.lowerBound, position: index.positions[next], ownership: ownership)
                    do {
                        try segments.read(range) { try writer.write($0) }
                        try writer.finish()
                    } catch let error as TarFormatError {
                        writer.abandon()
                        segments.stop()
                        // The segment matched its sha256: the stream and its index disagree.
                        throw RecoveryError(.backupCorrupt, "backup \(manifest.id): \(file.name) does not match its \(BaseBackupIndex.fileName) (segment \(next)): \(error.message)",
                                            hint: "dbverify --files \(manifest.id) checks the backup")
                    } catch {
                        writer.abandon()
                        segments.stop()
                        throw error
                    }
                    deferred += writer.deferred
                    if next == segments.count / 2 { CrashPoint.reached("pitr:extracting") }
                }
                return deferred
            }
        }
        var deferred: [TarMember] = []
        var failures: [Error] = []
        for worker in workers {
            do { deferred += try worker.wait() } catch { failures.append(error) }
        }
        // Damage first (it explains the other threads' failures), then whatever else stopped a thread.
        if let damage = failures.first(where: { ($0 as? RecoveryError)?.code == .backupCorrupt }) { throw damage }
        if let failure = failures.first(where: { !($0 is DumpSegments.Stopped) }) ?? failures.first { throw failure }
        guard segments.allVerified else {
            throw RecoveryError(.backupCorrupt, "backup \(manifest.id): \(file.name) was not read in full from its \(BaseBackupIndex.fileName)",
                                hint: "dbverify --files \(manifest.id) checks the backup")
        }
        try TarExtractor.finishAttributes(deferred, root: directory, ownership: ownership)
    }
}

/// Hands out segment numbers in order, each once, to the extraction threads.
private final class SegmentQueue: Sendable {
    private let state: Mutex<Int>
    private let count: Int

    init(count: Int) {
        self.count = count
        state = Mutex(0)
    }

    func next() -> Int? {
        state.withLock { next in
            guard next < count else { return nil }
            defer { next += 1 }
            return next
        }
    }
}

/// Writes the members of one stretch of a tar stream (from any offset whose `TarPosition` is
/// known) under a directory, as `tar -x` writes pg_basebackup's: regular files, directories and
/// symlinks, with the header's mode (less the umask unless root, as tar), as root the header's
/// owner (its user and group names where they exist, else its numbers, as tar), and its time.
final class TarExtractor {
    /// Who extracts: root sets owners and exact modes, anyone else gets modes less the umask.
    struct Ownership: Sendable {
        let isRoot: Bool
        let mask: mode_t

        init() {
            isRoot = geteuid() == 0
            // The umask can only be read by setting it: set back at once, before any thread writes files.
            let current = umask(0o077)
            umask(current)
            mask = current
        }

        /// The mode `tar -x` leaves on a member.
        func mode(of member: TarMember) -> mode_t {
            isRoot ? mode_t(member.mode) : mode_t(member.mode) & ~mask
        }
    }

    private let root: String
    private var walker: TarWalker
    private let ownership: Ownership
    /// The file being written: its descriptor, and whether its header was in this stretch (then its
    /// attributes are set here once its last byte is written; otherwise at the end).
    private var current: (descriptor: Int32, member: TarMember, headerHere: Bool)?
    private var directories = Set<String>()
    private var owners: [String: (uid_t, gid_t)] = [:]
    /// Members whose attributes are set after every thread is done.
    private(set) var deferred: [TarMember] = []

    init(root: String, at offset: UInt64, position: TarPosition?, ownership: Ownership) {
        self.root = root.hasSuffix("/") ? String(root.dropLast()) : root
        walker = TarWalker(at: offset, position: position)
        self.ownership = ownership
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        try walker.feed(bytes) { event in
            switch event {
            case .member(let member, _): try begin(member)
            case .data(let member, let offset, let bytes): try write(bytes, of: member, at: offset)
            case .endBlock: break
            }
        }
    }

    /// The stretch ended: a file it did not finish goes on in the next one.
    func finish() throws {
        guard let current else { return }
        if current.headerHere { deferred.append(current.member) }
        try closeFile(current.descriptor, path(of: current.member))
        self.current = nil
    }

    /// After a failure: closes what is open (the caller removes the directory).
    func abandon() {
        if let current { close(current.descriptor) }
        current = nil
    }

    private func path(of member: TarMember) -> String { Self.path(of: member.name, under: root) }

    /// Where a member is written while the threads run. `global/pg_control` goes to a name of its own
    /// and takes its name last (`finishAttributes`): `tar -x` writes it last, so a directory that has
    /// one is complete, also after a SIGKILL mid-way.
    static func path(of name: String, under root: String) -> String {
        root + "/" + name + (name == controlFile ? partialSuffix : "")
    }

    static let controlFile = "global/pg_control"
    static let partialSuffix = ".dbrecovery-partial"

    private func begin(_ member: TarMember) throws {
        guard member.hasSafePath else { throw TarFormatError(message: "member name \(member.name) leaves the data directory") }
        let path = path(of: member)
        switch member.kind {
        case .directory:
            try makeDirectory(path)
            deferred.append(member)
        case .symlink:
            // Made once every thread is done: while they write, no path under the data directory can
            // lead out of it through a link the archive made (a member under a link would write there).
            deferred.append(member)
        case .file:
            current = (try openFile(member), member, true)
            if member.size == 0 { try complete() }
        case .other:
            throw TarFormatError(message: "\(member.name) is neither a file, a directory nor a symlink")
        }
    }

    private func write(_ bytes: UnsafeRawBufferPointer, of member: TarMember, at offset: UInt64) throws {
        if current == nil {
            // The stretch began inside this file's data: its header (and its creation) is another thread's.
            current = (try openFile(member), member, false)
        }
        guard let descriptor = current?.descriptor, let base = bytes.baseAddress else { return }
        var done = 0
        while done < bytes.count {
            let written = pwrite(descriptor, base + done, bytes.count - done, off_t(offset) + off_t(done))
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { throw failure("write", path(of: member)) }
            done += written
        }
        if offset + UInt64(bytes.count) == member.size { try complete() }
    }

    /// The file's last byte is written: its attributes now if its header was here, else at the end.
    private func complete() throws {
        guard let current else { return }
        self.current = nil
        let path = path(of: current.member)
        if current.headerHere {
            do { try Self.setAttributes(of: current.member, descriptor: current.descriptor, path: path, ownership: ownership, owners: &owners) } catch {
                close(current.descriptor)
                throw error
            }
        } else {
            deferred.append(current.member)
        }
        try closeFile(current.descriptor, path)
    }

    private func openFile(_ member: TarMember) throws -> Int32 {
        try makeParent(of: member.name)
        let path = path(of: member)
        // No O_TRUNC: another thread may already have written a later part of the same file.
        let descriptor = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, mode_t(member.mode) | 0o200)
        guard descriptor >= 0 else { throw failure("create", path) }
        return descriptor
    }

    private func closeFile(_ descriptor: Int32, _ path: String) throws {
        guard close(descriptor) == 0 || errno == EINTR else { throw failure("write", path) }
    }

    /// A directory from its header, or one a member needs before its header was seen (another thread's).
    private func makeDirectory(_ path: String) throws {
        guard !directories.contains(path) else { return }
        if mkdir(path, 0o700) != 0 {
            let error = errno
            if error == ENOENT {
                try makeParent(of: String(path.dropFirst(root.count + 1)))
                guard mkdir(path, 0o700) == 0 || errno == EEXIST else { throw failure("create directory", path) }
            } else {
                var info = stat()
                guard error == EEXIST, lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
                    errno = error
                    throw failure("create directory", path)
                }
            }
        }
        directories.insert(path)
    }

    private func makeParent(of name: String) throws {
        guard let slash = name.lastIndex(of: "/") else { return }
        try makeDirectory(root + "/" + String(name[..<slash]))
    }

    /// The owner `tar -x` run as root gives a member: its user and group names where they exist, else its numbers.
    private static func owner(of member: TarMember, cache: inout [String: (uid_t, gid_t)]) -> (uid_t, gid_t) {
        let key = member.userName + ":" + member.groupName + ":\(member.uid):\(member.gid)"
        if let known = cache[key] { return known }
        let found = (userID(member.userName) ?? member.uid, groupID(member.groupName) ?? member.gid)
        cache[key] = found
        return found
    }

    private func failure(_ action: String, _ path: String) -> RecoveryError {
        let code = errno
        let reason = String(cString: strerror(code))
        // A full disk is exit 20 whichever way the base backup is extracted (as through `tar -x`).
        if code == ENOSPC || code == EDQUOT {
            return RecoveryError(.repositoryError, "no space left on device extracting the base backup: cannot \(action) \(path): \(reason)",
                                 hint: "free space where --pgdata lies, or restore onto a larger file system")
        }
        return RecoveryError(.restoreFailed, "cannot \(action) \(path) extracting the base backup: \(reason)",
                             hint: "fix permissions where --pgdata lies")
    }

    // MARK: - Attributes

    /// Once every thread is done: the symlinks (each only where no link lies on its way: the archive's
    /// links never lead a member out of the data directory), then what later writes would disturb —
    /// files split between segments, directories deepest first (a directory's time changes as entries
    /// appear) — and last `global/pg_control` takes its name.
    static func finishAttributes(_ members: [TarMember], root: String, ownership: Ownership) throws {
        let root = root.hasSuffix("/") ? String(root.dropLast()) : root
        var owners: [String: (uid_t, gid_t)] = [:]
        for link in members where link.kind == .symlink {
            try makeLink(link, root: root, ownership: ownership, owners: &owners)
        }
        var seen = Set<String>()
        let ordered = members.filter { $0.kind == .file } + members.filter { $0.kind == .directory }.sorted { $0.name.count > $1.name.count }
        for member in ordered where seen.insert(member.name).inserted {
            try setAttributes(of: member, descriptor: nil, path: path(of: member.name, under: root), ownership: ownership, owners: &owners)
        }
        let control = path(of: controlFile, under: root)
        if access(control, F_OK) == 0 {
            guard rename(control, root + "/" + controlFile) == 0 else {
                throw RecoveryError(.restoreFailed, "cannot rename \(control) extracting the base backup: \(String(cString: strerror(errno)))",
                                    hint: "fix permissions where --pgdata lies")
            }
        }
    }

    /// A symlink member, refused where a directory on its way is a link (or not a directory).
    private static func makeLink(_ link: TarMember, root: String, ownership: Ownership, owners: inout [String: (uid_t, gid_t)]) throws {
        let parts = link.name.split(separator: "/").map(String.init)
        var parent = root
        for part in parts.dropLast() {
            parent += "/" + part
            var info = stat()
            guard lstat(parent, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
                throw RecoveryError(.backupCorrupt, "the base backup's member \(link.name) lies under \(parent), which is not a directory of the backup",
                                    hint: "dbverify --files checks the backup; recover from another base backup")
            }
        }
        let path = root + "/" + link.name
        guard symlink(link.linkTarget, path) == 0 else {
            let reason = String(cString: strerror(errno))
            throw RecoveryError(.backupCorrupt, "cannot create symlink \(path) extracting the base backup: \(reason) (the archive also has a file or directory there)",
                                hint: "dbverify --files checks the backup; recover from another base backup")
        }
        var times = Self.times(of: link)
        let owner = ownership.isRoot ? Self.owner(of: link, cache: &owners) : nil
        guard owner.map({ lchown(path, $0.0, $0.1) }) ?? 0 == 0, utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW) == 0 else {
            throw RecoveryError(.restoreFailed, "cannot set the owner or time of \(path) extracting the base backup: \(String(cString: strerror(errno)))",
                                hint: "fix permissions where --pgdata lies")
        }
    }

    private static func setAttributes(of member: TarMember, descriptor: Int32?, path: String, ownership: Ownership,
                                      owners: inout [String: (uid_t, gid_t)]) throws {
        func check(_ result: Int32, _ action: String) throws {
            guard result == 0 else {
                let reason = String(cString: strerror(errno))
                throw RecoveryError(.restoreFailed, "cannot \(action) \(path) extracting the base backup: \(reason)",
                                    hint: "fix permissions where --pgdata lies")
            }
        }
        var times = Self.times(of: member)
        let owner = ownership.isRoot ? Self.owner(of: member, cache: &owners) : (0, 0)
        if let descriptor {
            if ownership.isRoot { try check(fchown(descriptor, owner.0, owner.1), "set the owner of") }
            try check(fchmod(descriptor, ownership.mode(of: member)), "set the mode of")
            try check(futimens(descriptor, &times), "set the time of")
        } else {
            if ownership.isRoot { try check(chown(path, owner.0, owner.1), "set the owner of") }
            try check(chmod(path, ownership.mode(of: member)), "set the mode of")
            try check(utimensat(AT_FDCWD, path, &times, 0), "set the time of")
        }
    }

    /// Access time now, modification time the header's (as tar).
    private static func times(of member: TarMember) -> [timespec] {
        [timespec(tv_sec: 0, tv_nsec: utimeNow), timespec(tv_sec: Int(member.modificationTime), tv_nsec: 0)]
    }

    /// glibc's `UTIME_NOW` (a macro the importer does not bring over).
    private static let utimeNow = (1 << 30) - 1

    private static func userID(_ name: String) -> uid_t? {
        entry(named: name, empty: passwd()) { getpwnam_r($0, $1, $2, $3, $4) }?.pw_uid
    }

    private static func groupID(_ name: String) -> gid_t? {
        entry(named: name, empty: group()) { getgrnam_r($0, $1, $2, $3, $4) }?.gr_gid
    }

    /// The user or group database's entry for `name` (`getpwnam_r`, `getgrnam_r`); nil for none. Only its
    /// numbers may be read: its strings point into a buffer that is gone on return.
    private static func entry<Entry>(named name: String, empty: Entry,
                                     _ lookUp: (String, UnsafeMutablePointer<Entry>, UnsafeMutablePointer<CChar>, Int,
                                                UnsafeMutablePointer<UnsafeMutablePointer<Entry>?>) -> Int32) -> Entry? {
        guard !name.isEmpty else { return nil }
        var entry = empty
        var result: UnsafeMutablePointer<Entry>?
        var buffer = [CChar](repeating: 0, count: 4096)
        let size = buffer.count
        guard lookUp(name, &entry, &buffer, size, &result) == 0, result != nil else { return nil }
        return entry
    }
}
