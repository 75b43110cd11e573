import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A repository in a local directory: files 0600, directories 0700, every commit fsynced.
public final class LocalStore: BackupStore {
    /// Absolute path of the repository's root directory.
    public let root: String

    public var location: String { root }

    public var features: StoreFeatures { [.atomicRename, .fsync] }

    public let reads = RepositoryReads()

    /// Opens (and if needed creates) a repository directory.
    ///
    /// - Parameters:
    ///   - root: absolute or relative path.
    ///   - create: create the directory (mode 0700) when missing.
    /// - Throws: `StorageError` when the path is not a usable directory.
    public init(root: String, create: Bool) throws {
        let absolute = root.hasPrefix("/") ? root : FileManager.default.currentDirectoryPath + "/" + root
        self.root = Self.normalise(absolute)
        var info = stat()
        if stat(self.root, &info) != 0 {
            let code = errno
            guard code == ENOENT, create else {
                throw Self.error(code, path: self.root, doing: "open repository")
            }
            try Self.makeDirectories(self.root)
        } else if info.st_mode & S_IFMT != S_IFDIR {
            throw StorageError(.invalidLocation, object: self.root, message: "repository path is not a directory",
                               hint: "point --repo at a directory")
        }
        if access(self.root, W_OK | X_OK) != 0 && !create {
            // Read-only use (list, restore) is fine; writers find out when they write.
        }
    }

    public func list(prefix: String) throws -> [StoredObject] {
        var objects: [StoredObject] = []
        var visited: Set<[UInt64]> = []
        try walk(directory: root, relative: "", prefix: prefix, linkedAt: nil, into: &objects, visited: &visited)
        return objects.sorted { $0.key < $1.key }
    }

    public func read(_ key: String) throws -> Data {
        let path = try self.path(for: key)
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw Self.error(errno, path: path, doing: "read")
        }
        defer { try? handle.close() }
        do {
            return try handle.readToEnd() ?? Data()
        } catch {
            throw StorageError(.io, object: path, message: "read failed: \(error.localizedDescription)")
        }
    }

    public func write(_ key: String, contents: Data) throws {
        let writer = try makeWriter(key)
        do {
            try contents.withUnsafeBytes { try writer.write($0) }
            try writer.commit()
        } catch {
            try? writer.abort()   // local aborts do not fail; a leftover is removed by the next writer
            throw error
        }
    }

    public func makeWriter(_ key: String) throws -> ObjectWriter {
        let path = try self.path(for: key)
        let directory = (path as NSString).deletingLastPathComponent
        try Self.makeDirectories(directory)
        return try LocalFileWriter(finalPath: path, root: root)
    }

    public func makeReader(_ key: String) throws -> ObjectReader {
        let path = try self.path(for: key)
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw Self.error(errno, path: path, doing: "open") }
        return LocalFileReader(descriptor: descriptor, path: path, reads: reads)
    }

    public func makeReader(_ key: String, range: Range<UInt64>) throws -> ObjectReader {
        let path = try self.path(for: key)
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw Self.error(errno, path: path, doing: "open") }
        let reader = LocalFileReader(descriptor: descriptor, path: path, reads: reads, remaining: range.upperBound - range.lowerBound)
        guard lseek(descriptor, off_t(range.lowerBound), SEEK_SET) == off_t(range.lowerBound) else {
            throw Self.error(errno, path: path, doing: "seek")
        }
        return reader
    }

    public func objectInfo(_ key: String) throws -> StoredObject {
        let path = try self.path(for: key)
        var info = stat()
        guard stat(path, &info) == 0 else { throw Self.error(errno, path: path, doing: "stat") }
        guard info.st_mode & S_IFMT == S_IFREG else {
            // Something else where a backup's file should be is that backup's damage (not the disk's
            // trouble, `.io`): `--emergency` passes over it.
            throw StorageError(.invalidLocation, object: path, message: "is not a regular file", hint: "the repository was changed by hand; restore the file from another copy")
        }
        return StoredObject(key: key, size: UInt64(info.st_size),
                            modified: Date(timeIntervalSince1970: TimeInterval(info.st_mtim.tv_sec) + TimeInterval(info.st_mtim.tv_nsec) / 1e9))
    }

    public func delete(_ keys: [String]) throws {
        var touchedDirectories: [String] = []
        for key in keys {
            let path = try self.path(for: key)
            if unlink(path) != 0 && errno != ENOENT {
                throw Self.error(errno, path: path, doing: "delete")
            }
            let directory = (path as NSString).deletingLastPathComponent
            if touchedDirectories.last != directory { touchedDirectories.append(directory) }
            // Make each deletion durable before the next, so the order callers chose survives a crash.
            try Self.syncDirectory(directory)
        }
        // Remove directories that became empty (a backup folder after its last file), deepest first.
        for directory in touchedDirectories.sorted(by: { $0.count > $1.count }) {
            var current = directory
            while current.count > root.count, rmdir(current) == 0 {
                current = (current as NSString).deletingLastPathComponent
            }
        }
    }

    public func changeStorageClass(_ key: String, to storageClass: String) throws {
        throw StorageError(.invalidLocation, object: root, message: "local repositories have no storage classes",
                           hint: "glacier_after applies to S3 repositories; remove it from the [local] tier")
    }

    public func create(_ key: String, contents: Data) throws -> Bool {
        let path = try self.path(for: key)
        let directory = (path as NSString).deletingLastPathComponent
        var attempt = 0
        while true {
            attempt += 1
            try Self.makeDirectories(directory)
            // Write and fsync a private file, then link() it under the final name: link never replaces
            // an existing file, so of two racing creators exactly one succeeds.
            let writer: LocalFileWriter
            do {
                writer = try LocalFileWriter(finalPath: path, root: root)
            } catch let error as StorageError where error.kind == .notFound && attempt < 3 {
                continue   // the folder was removed as empty (a released reader lock's) just now: make it again
            }
            defer { writer.abort() }   // removes the temporary name
            try contents.withUnsafeBytes { try writer.write($0) }
            return try writer.commitIfAbsent()
        }
    }

    /// No read-back: link() is the create-if-absent and never replaces a file, so a name this call
    /// linked holds what it wrote.
    public func createConfirmed(_ key: String, contents: Data) throws -> Bool {
        try create(key, contents: contents)
    }

    public func readVersioned(_ key: String) throws -> VersionedObject {
        let contents = try read(key)
        return VersionedObject(contents: contents, version: Self.version(of: contents))
    }

    public func delete(_ key: String, ifVersion version: String) throws -> Bool {
        let path = try self.path(for: key)
        // Every conditional delete of this repository holds one flock, so the read, the compare
        // and the unlink are one step for the others; the kernel drops it if we die.
        let guardDirectory = root + "/locks"
        try Self.makeDirectories(guardDirectory)
        let guardPath = guardDirectory + "/.conditional-delete"
        let descriptor = open(guardPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw Self.error(errno, path: guardPath, doing: "open") }
        defer { Glibc.close(descriptor) }
        while flock(descriptor, LOCK_EX) != 0 {
            guard errno == EINTR else { throw Self.error(errno, path: guardPath, doing: "lock") }
        }
        let current: Data
        do {
            current = try read(key)
        } catch let error as StorageError where error.kind == .notFound {
            return false
        }
        guard Self.version(of: current) == version else { return false }
        if unlink(path) != 0 {
            if errno == ENOENT { return false }
            throw Self.error(errno, path: path, doing: "delete")
        }
        let folder = (path as NSString).deletingLastPathComponent
        try Self.syncDirectory(folder)
        // A reader lock's folder (locks/readers/<id>) goes with its last record.
        if folder != root && folder != guardDirectory { rmdir(folder) }
        return true
    }

    public func removeLeftovers(before cutoff: Date) throws -> [String] {
        var lines: [String] = []
        for object in try list(prefix: "") {
            guard let marker = object.key.range(of: ".partial-", options: .backwards),
                  let pid = Int32(object.key[marker.upperBound...].prefix { $0 != "-" }), pid > 0,
                  (object.modified ?? cutoff) < cutoff else { continue }
            // Only a writer whose process is gone: a live wal-push (which takes no lock) keeps its file.
            guard (kill(pid, 0) != 0 && errno == ESRCH) || ProcessLiveness.hasExited(pid) else { continue }
            let path = root + "/" + object.key
            if unlink(path) == 0 || errno == ENOENT {
                lines.append("removed \(object.key) (\(object.size) bytes), left by killed process \(pid)")
                if object.key.hasPrefix("backups/") {
                    rmdir((path as NSString).deletingLastPathComponent)   // its backup folder, if now empty
                }
            } else {
                lines.append("could not remove \(object.key), left by killed process \(pid): \(String(cString: strerror(errno)))")
            }
        }
        return lines
    }

    /// A local object's version: the sha256 of its contents (lock records hold a unique token).
    private static func version(of contents: Data) -> String {
        SHA256.hash(data: contents).map { String(format: "%02x", $0) }.joined()
    }

    // MARK: - Paths

    /// Maps a key to a path, refusing keys that could escape the repository.
    func path(for key: String) throws -> String {
        let parts = key.split(separator: "/", omittingEmptySubsequences: false)
        guard !key.isEmpty, !key.hasPrefix("/"), !parts.contains(where: { $0 == ".." || $0 == "." || $0.isEmpty }) else {
            throw StorageError(.invalidLocation, object: key, message: "invalid object key")
        }
        return root + "/" + key
    }

    /// Symlinks inside the repository are followed (a symlinked `backups/` is common when it lives
    /// on another disk), for every command alike, since every command lists through here; a
    /// directory reached twice (a symlink loop) is listed once.
    private func walk(directory: String, relative: String, prefix: String, linkedAt: String?, into objects: inout [StoredObject],
                      visited: inout Set<[UInt64]>) throws {
        var directoryInfo = stat()
        if stat(directory, &directoryInfo) == 0 {
            guard visited.insert([UInt64(directoryInfo.st_dev), UInt64(directoryInfo.st_ino)]).inserted else { return }
        }
        guard let stream = opendir(directory) else {
            if errno == ENOENT { return }
            throw Self.error(errno, path: directory, doing: "list")
        }
        defer { closedir(stream) }
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                raw.bindMemory(to: CChar.self).baseAddress.map { String(cString: $0) } ?? ""
            }
            if name.isEmpty || name == "." || name == ".." { continue }
            let key = relative.isEmpty ? name : relative + "/" + name
            // Skip subtrees that cannot match the prefix.
            guard key.hasPrefix(prefix) || prefix.hasPrefix(key + "/") else { continue }
            var info = stat()
            guard stat(directory + "/" + name, &info) == 0 else { continue }   // a dangling symlink lists as nothing
            // Followed (a backups/ or wal/ moved to another disk lists as before), but marked where: garbage
            // collection never deletes through a link inside a backup's folder.
            var link = stat()
            let linked = linkedAt ?? (lstat(directory + "/" + name, &link) == 0 && link.st_mode & S_IFMT == S_IFLNK ? key : nil)
            if info.st_mode & S_IFMT == S_IFDIR {
                try walk(directory: directory + "/" + name, relative: key, prefix: prefix, linkedAt: linked, into: &objects, visited: &visited)
            } else if info.st_mode & S_IFMT == S_IFREG, key.hasPrefix(prefix) {
                let modified = Date(timeIntervalSince1970: Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9)
                objects.append(StoredObject(key: key, size: UInt64(info.st_size), modified: modified, linkedAt: linked))
            }
        }
    }

    private static func normalise(_ path: String) -> String {
        var components: [Substring] = []
        for part in path.split(separator: "/") where part != "." {
            if part == ".." { _ = components.popLast() } else { components.append(part) }
        }
        return "/" + components.joined(separator: "/")
    }

    static func makeDirectories(_ path: String) throws {
        var current = ""
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o700) != 0 && errno != EEXIST {
                throw error(errno, path: current, doing: "create directory")
            }
        }
    }

    /// Makes a directory's entries (a rename, a new or deleted file) durable.
    ///
    /// - Throws: `StorageError` when the directory cannot be opened or fsync fails: invariant 1
    ///   (a backup exists only when durable) rests on it.
    public static func syncDirectory(_ path: String) throws {
        let descriptor = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { throw error(errno, path: path, doing: "open directory for fsync") }
        defer { close(descriptor) }
        // EINVAL: the file system cannot sync directories (some FUSE/network mounts); nothing to do.
        if fsync(descriptor) != 0 && errno != EINVAL { throw error(errno, path: path, doing: "fsync directory") }
    }

    /// Turns an errno into a `StorageError` that says what to do.
    static func error(_ code: Int32, path: String, doing operation: String) -> StorageError {
        let reason = String(cString: strerror(code))
        switch code {
        case ENOENT:
            return StorageError(.notFound, object: path, message: "\(operation): no such file or directory")
        case EACCES, EPERM:
            return StorageError(.permissionDenied, object: path, message: "\(operation): permission denied",
                                hint: "run as the user that owns the repository, or fix its permissions (directories 0700, files 0600)")
        case ENOSPC, EDQUOT:
            return StorageError(.diskFull, object: path, message: "\(operation): no space left on device",
                                hint: "free space on the repository's file system, then run again (dbprune needs a few KiB for its lock: "
                                + "if it cannot run, move the oldest backups/<id> folders or old wal/ segments elsewhere first)")
        case EROFS:
            return StorageError(.readOnly, object: path, message: "\(operation): read-only file system",
                                hint: "remount the repository read-write or choose another --repo")
        case EISDIR:
            return StorageError(.invalidLocation, object: path, message: "\(operation): is a directory, not a file",
                                hint: "the repository was changed by hand; restore the file from another copy")
        case ENOTDIR:
            return StorageError(.invalidLocation, object: path, message: "\(operation): a path component is not a directory",
                                hint: "point --repo at a directory")
        default:
            return StorageError(.io, object: path, message: "\(operation): \(reason)")
        }
    }
}

/// Writes to `<final>.partial-<pid>-<random>` and renames on commit, fsyncing file and directory.
final class LocalFileWriter: ObjectWriter {
    private let finalPath: String
    private let temporaryPath: String
    private var descriptor: Int32
    private var done = false

    /// The folder to remove on abort if that leaves it empty (never the repository's root).
    private let emptyFolder: String?

    init(finalPath: String, root: String) throws {
        self.finalPath = finalPath
        let folder = (finalPath as NSString).deletingLastPathComponent
        emptyFolder = folder == root ? nil : folder
        // The pid tells the next run whose file this is; the random part keeps threads apart.
        temporaryPath = finalPath + ".partial-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
        descriptor = open(temporaryPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw LocalStore.error(errno, path: temporaryPath, doing: "create") }
    }

    deinit { abort() }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard var base = bytes.baseAddress else { return }
        var remaining = bytes.count
        while remaining > 0 {
            let written = Glibc.write(descriptor, base, remaining)
            if written < 0 {
                if errno == EINTR { continue }
                throw LocalStore.error(errno, path: finalPath, doing: "write")
            }
            remaining -= written
            base += written
        }
    }

    func commit() throws {
        guard !done else { return }
        if fsync(descriptor) != 0 { throw LocalStore.error(errno, path: finalPath, doing: "fsync") }
        if close(descriptor) != 0 { throw LocalStore.error(errno, path: finalPath, doing: "close") }
        descriptor = -1
        if rename(temporaryPath, finalPath) != 0 { throw LocalStore.error(errno, path: finalPath, doing: "rename") }
        done = true
        try LocalStore.syncDirectory((finalPath as NSString).deletingLastPathComponent)
    }

    /// Like `commit()`, but publishes with `link()`, which never replaces an existing file.
    ///
    /// - Returns: false (and nothing changed) when `finalPath` already exists.
    func commitIfAbsent() throws -> Bool {
        if fsync(descriptor) != 0 { throw LocalStore.error(errno, path: finalPath, doing: "fsync") }
        if close(descriptor) != 0 { throw LocalStore.error(errno, path: finalPath, doing: "close") }
        descriptor = -1
        if link(temporaryPath, finalPath) != 0 {
            let code = errno
            if code == EEXIST { return false }
            if code == EPERM || code == EOPNOTSUPP || code == ENOSYS {
                // vfat, some FUSE and SMB mounts: no hard links, hence no create-if-absent.
                throw StorageError(.io, object: finalPath, message: "the file system does not support hard links, which repository locks and WAL archiving need",
                                   hint: "put the repository on a local POSIX file system (ext4, xfs, zfs) or NFS")
            }
            throw LocalStore.error(code, path: finalPath, doing: "link")
        }
        // The temporary name goes in abort(); the final name is now durable only with the directory.
        try LocalStore.syncDirectory((finalPath as NSString).deletingLastPathComponent)
        return true
    }

    func abort() {
        guard !done else { return }
        done = true
        if descriptor >= 0 { close(descriptor) }
        descriptor = -1
        unlink(temporaryPath)
        // A failed backup's folder must not linger empty; rmdir fails (and that is right) if anything
        // else is in it, such as a file another writer committed.
        if let emptyFolder { rmdir(emptyFolder) }
    }
}

final class LocalFileReader: ObjectReader {
    private var descriptor: Int32
    private let path: String
    /// The store's counter, told every byte read.
    private let reads: RepositoryReads
    /// For a ranged reader: bytes still to read (nil: to the end of the file).
    private var remaining: UInt64?

    init(descriptor: Int32, path: String, reads: RepositoryReads, remaining: UInt64? = nil) {
        self.descriptor = descriptor
        self.path = path
        self.reads = reads
        self.remaining = remaining
    }

    deinit { close() }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let wanted = remaining.map { Int(min(UInt64(buffer.count), $0)) } ?? buffer.count
        if wanted == 0 { return 0 }
        while true {
            let count = Glibc.read(descriptor, buffer.baseAddress, wanted)
            if count > 0 {
                reads.add(count)
                if let left = remaining { remaining = left - UInt64(count) }
            }
            if count == 0, let left = remaining, left > 0 {
                throw StorageError(.io, object: path, message: "file ends \(left) bytes before the range read from it (truncated)")
            }
            if count >= 0 { return count }
            if errno != EINTR { throw LocalStore.error(errno, path: path, doing: "read") }
        }
    }

    func close() {
        if descriptor >= 0 { Glibc.close(descriptor) }
        descriptor = -1
    }
}
