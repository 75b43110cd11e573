import Foundation
import Synchronization
import UTCTime

/// One place where backups live: a local directory or an S3 prefix, with the same key layout.
///
/// Keys are relative, `/`-separated paths such as `backups/<id>/manifest.json`. Nothing above
/// this protocol knows which backend it holds.
public protocol BackupStore: AnyObject {
    /// Where this store points, for messages (never holds credentials).
    var location: String { get }

    /// The optional operations this backend supports.
    var features: StoreFeatures { get }

    /// Bytes streamed through this store's readers since it was opened (see `RepositoryReads`).
    var reads: RepositoryReads { get }

    /// Every object whose key starts with `prefix`, in key order.
    ///
    /// - Throws: `StorageError`.
    func list(prefix: String) throws -> [StoredObject]

    /// Reads a small object whole (manifests, lock records).
    ///
    /// - Throws: `StorageError.notFound` if it does not exist.
    func read(_ key: String) throws -> Data

    /// Writes a small object atomically: readers see the old object or the new one, never a part.
    ///
    /// - Throws: `StorageError`; on failure nothing is left under `key`.
    func write(_ key: String, contents: Data) throws

    /// Opens a streaming writer. Nothing is visible under `key` until `commit()` succeeds.
    ///
    /// - Throws: `StorageError`.
    func makeWriter(_ key: String) throws -> ObjectWriter

    /// Opens a streaming reader.
    ///
    /// - Throws: `StorageError.notFound` if it does not exist.
    func makeReader(_ key: String) throws -> ObjectReader

    /// Opens a streaming reader of the bytes `range` of an object only (a local seek, S3 ranged
    /// GETs): selective restores read one table's part of a dump without the rest.
    ///
    /// - Throws: `StorageError.notFound` if it does not exist; `StorageError(.io/.remote)` when the
    ///   object ends before `range.upperBound`.
    func makeReader(_ key: String, range: Range<UInt64>) throws -> ObjectReader

    /// The size (and storage class) of one object without reading it: a `stat` locally, a HEAD
    /// request on S3. How a restore checks a candidate backup's files before it streams them once.
    ///
    /// - Throws: `StorageError.notFound` if it does not exist, `.archived` for an S3 object that
    ///   needs a restore request first, `.io` for something that is not a readable object.
    func objectInfo(_ key: String) throws -> StoredObject

    /// Deletes objects in the given order; missing ones are not an error.
    ///
    /// - Important: order matters to callers: manifests are deleted before data, so that a crash
    ///   half-way leaves garbage, never a backup that looks whole.
    /// - Throws: `StorageError`.
    func delete(_ keys: [String]) throws

    /// Moves an object to another storage class (S3 `GLACIER`), keeping its key and content.
    ///
    /// - Throws: `StorageError(.invalidLocation)` on a backend without `.storageClasses`.
    func changeStorageClass(_ key: String, to storageClass: String) throws

    /// Writes a small object only if nothing exists under `key` (S3 `If-None-Match: *`, a local
    /// `link()`): of two concurrent calls exactly one returns true.
    ///
    /// - Important: after a lost reply the retried request finds its own object and returns false;
    ///   callers compare what is stored with what they meant to write.
    /// - Returns: true when this call stored `contents`; false when an object was already there.
    /// - Throws: `StorageError`; on failure nothing new is left under `key`.
    func create(_ key: String, contents: Data) throws -> Bool

    /// Whether `key` holds exactly `contents` now: how a writer confirms that what it created is
    /// what the name holds (a server whose create-if-absent is not atomic can let another writer
    /// replace it). S3 compares the object's MD5 ETag with the MD5 of `contents` (one HEAD) and
    /// reads the object only when the ETag is not an MD5 (SSE-KMS, multipart); elsewhere it reads.
    ///
    /// - Returns: false when the object is missing, differs, or cannot be read.
    func holds(_ key: String, contents: Data) -> Bool

    /// `create`, then `holds` when it stored: true only when this call stored `contents` and the
    /// name holds exactly them now. One call, so that a store can share the work of the two (S3
    /// hashes the body once for Content-MD5 and the ETag check).
    ///
    /// - Returns: false when an object was already there, or another writer replaced this one.
    /// - Throws: `StorageError` from the create.
    func createConfirmed(_ key: String, contents: Data) throws -> Bool

    /// Reads a small object whole with its version (S3 ETag, a digest locally), for `delete(_:ifVersion:)`.
    ///
    /// - Throws: `StorageError.notFound` if it does not exist.
    func readVersioned(_ key: String) throws -> VersionedObject

    /// Deletes `key` only while it still holds the version read earlier (S3 `If-Match` on
    /// DeleteObject; locally under an exclusive `flock` shared by every conditional delete).
    ///
    /// - Returns: true when this call deleted that version; false when the object changed or is gone.
    /// - Throws: `StorageError`.
    func delete(_ key: String, ifVersion version: String) throws -> Bool

    /// Removes what runs killed before `cutoff` left behind: local `*.partial-<pid>-*` files of
    /// processes that are gone, open S3 multipart uploads under the prefix. Called by the holder of
    /// the writer lock, so no other writer's work is in flight.
    ///
    /// - Returns: one line per item removed, and per item that could not be (never dropped silently).
    /// - Throws: `StorageError` when the repository cannot be listed.
    func removeLeftovers(before cutoff: Date) throws -> [String]
}

/// A small object read together with the version that conditional operations compare.
public struct VersionedObject: Sendable {
    public let contents: Data
    public let version: String

    public init(contents: Data, version: String) {
        self.contents = contents
        self.version = version
    }
}

extension BackupStore {
    /// The first `count` bytes of `object` (all of it when shorter): one ranged read, not the whole object.
    ///
    /// - Throws: `StorageError`.
    public func readFirst(_ count: Int, of object: StoredObject) throws -> Data {
        let end = min(object.size, UInt64(count))
        guard end > 0 else { return Data() }
        let reader = try makeReader(object.key, range: 0..<end)
        defer { reader.close() }
        var head = Data(count: Int(end))
        var filled = 0
        while filled < head.count {
            let read = try head.withUnsafeMutableBytes { try reader.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[filled...])) }
            if read == 0 { break }
            filled += read
        }
        return head.prefix(filled)
    }

    /// Reads the object back and compares.
    public func holds(_ key: String, contents: Data) -> Bool {
        (try? read(key)) == contents
    }

    public func createConfirmed(_ key: String, contents: Data) throws -> Bool {
        try create(key, contents: contents) && holds(key, contents: contents)
    }

    /// `objectInfo` from a listing, for stores without a cheaper way (one LIST request).
    public func objectInfo(_ key: String) throws -> StoredObject {
        guard let object = try list(prefix: key).first(where: { $0.key == key }) else {
            throw StorageError(.notFound, object: "\(location)/\(key)", message: "no such object")
        }
        return object
    }

    /// Takes the repository's writer lock (see `StoreLock.exclusive`).
    ///
    /// - Parameters:
    ///   - holder: who is asking (command, pid), shown to whoever finds it locked.
    ///   - wait: seconds to wait while a live process holds it (`--lock-wait`); 0 fails at once.
    /// - Returns: the lock; call `release()` and report what it throws.
    /// - Throws: `StorageError` of kind `.locked` naming the current holder.
    public func lock(holder: LockHolder, wait: TimeInterval = 0) throws -> RepositoryLock {
        try StoreLock.exclusive(in: self, holder: holder, wait: wait)
    }
}

/// Optional capabilities of a store.
public struct StoreFeatures: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// Writes become visible by an atomic rename (local files).
    public static let atomicRename = StoreFeatures(rawValue: 1 << 0)
    /// Durability can be forced with fsync (local files).
    public static let fsync = StoreFeatures(rawValue: 1 << 1)
    /// Objects have storage classes that can be changed (S3).
    public static let storageClasses = StoreFeatures(rawValue: 1 << 2)
}

/// One stored object as listed.
public struct StoredObject: Sendable, Equatable {
    public let key: String
    public let size: UInt64
    public let modified: Date?
    /// Storage class (S3); nil for local files.
    public let storageClass: String?
    /// For a local file reached through a symbolic link below the repository's root: the key of that
    /// link (the first on the way). dbbackup makes no links: an operator's (`backups/` moved to
    /// another disk) or someone else's.
    public let linkedAt: String?

    public init(key: String, size: UInt64, modified: Date?, storageClass: String? = nil, linkedAt: String? = nil) {
        self.key = key
        self.size = size
        self.modified = modified
        self.storageClass = storageClass
        self.linkedAt = linkedAt
    }
}

/// A streaming upload. Call `write` repeatedly, then `commit()` exactly once, or `abort()`.
public protocol ObjectWriter: AnyObject {
    /// Appends bytes.
    /// - Throws: `StorageError` (disk full, connection lost after retries).
    func write(_ bytes: UnsafeRawBufferPointer) throws
    /// Makes the object durable and visible under its key.
    /// - Throws: `StorageError`; then nothing is visible.
    func commit() throws
    /// Discards everything written; safe to call after a failure or twice.
    /// - Throws: `StorageError` when what was written could not be discarded (an S3 multipart
    ///   upload left open); the next writer-lock holder removes it.
    func abort() throws
}

/// A streaming download.
public protocol ObjectReader: AnyObject {
    /// Fills `buffer` from the object; returns 0 at the end.
    /// - Throws: `StorageError`.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    /// Releases the underlying file or connection.
    func close()
}

/// Who holds (or wants) a repository lock.
public struct LockHolder: Codable, Sendable, Equatable, CustomStringConvertible {
    public var command: String
    public var pid: Int32
    public var host: String
    public var since: Date
    /// Unique per acquisition: how an owner recognises its own lock (also after a lost reply).
    public var token: String
    /// Start time of `pid` in clock ticks since boot (`/proc/<pid>/stat`), so that a reused pid
    /// is not mistaken for the holder; nil when unknown (other systems, older records).
    public var processStart: UInt64?

    public init(command: String, pid: Int32 = ProcessInfo.processInfo.processIdentifier,
                host: String = ProcessInfo.processInfo.hostName, since: Date = Date(), token: String = UUID().uuidString) {
        self.command = command
        self.pid = pid
        self.host = host
        self.since = since
        self.token = token
        processStart = ProcessLiveness.startTime(of: pid)
    }

    private enum CodingKeys: String, CodingKey { case command, pid, host, since, token, processStart }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        command = try container.decode(String.self, forKey: .command)
        pid = try container.decode(Int32.self, forKey: .pid)
        host = try container.decode(String.self, forKey: .host)
        since = try container.decode(Date.self, forKey: .since)
        // Records written before owner tokens existed have none: they can never match ours.
        token = try container.decodeIfPresent(String.self, forKey: .token) ?? ""
        processStart = try container.decodeIfPresent(UInt64.self, forKey: .processStart)
    }

    public var description: String {
        "\(command) (pid \(pid) on \(host), since \(Timestamp.format(since)))"
    }
}

/// A held repository lock.
public protocol RepositoryLock: AnyObject {
    /// What taking the lock cleaned up (stale locks reclaimed, leftovers of killed runs removed),
    /// one line each, for the run to say.
    var notes: [String] { get }

    /// Releases the lock: deletes the lock record only if it is still this owner's.
    ///
    /// - Throws: `StorageError` when the record could not be deleted or was no longer ours
    ///   (callers report it: a lock that outlives its run blocks the next one).
    func release() throws
}

/// Bytes one store has streamed through its `ObjectReader`s (backup and WAL files; small
/// whole-object reads such as manifests and lock records are not counted), so a run can report
/// how much it read next to what is stored (`dbrestore --json`: `bytes_read`). Each store owns
/// one: the count belongs to the run that opened the store, not to the process.
public final class RepositoryReads: Sendable {
    private let total = Mutex<UInt64>(0)

    public init() {}

    /// Adds bytes read from a repository object.
    public func add(_ count: Int) {
        guard count > 0 else { return }
        total.withLock { $0 += UInt64(count) }
    }

    /// Everything counted so far by this store.
    public var bytes: UInt64 { total.withLock { $0 } }
}
