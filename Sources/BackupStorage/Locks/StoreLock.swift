import Foundation
import Logging
import ProcessSignals

/// The repository locks, one design for every backend, built on the store's conditional
/// operations (`create`, `readVersioned`, `delete(_:ifVersion:)`):
///
/// - **Writer lock** `locks/repository.lock` (backups, prune): created only if absent; of two
///   racing processes exactly one creates it, the other is told who holds it.
/// - **Reader locks** `locks/readers/<backup id>/<token>.json` (restores): any number; they never
///   wait for the writer lock, and `dbprune` skips a backup that has a live one.
/// - Every record carries an owner token. A lost reply to the create is recognised by finding
///   our own token; a release deletes the record only while it is still ours (conditional delete).
/// - A record is **stale** only when it was written on this host and its process is gone (no such
///   pid, or the pid now belongs to a process started at another time), or when it is empty (left by
///   a version before owner tokens). A stale record is removed with a conditional delete of exactly
///   the version that was judged stale. Records from other hosts are never removed automatically.
public final class StoreLock: RepositoryLock {
    /// Key of the writer lock.
    public static let writerKey = "locks/repository.lock"

    /// Folder of the reader locks of one backup.
    public static func readerPrefix(_ backupID: String) -> String { "locks/readers/\(backupID)/" }

    private let store: BackupStore
    private let key: String
    /// Who holds it (with the owner token).
    public let holder: LockHolder
    /// Stale records removed while taking this lock, for the run's report.
    public let reclaimed: [LockHolder]
    /// Leftovers of killed runs removed after taking the writer lock (or why one could not be).
    public private(set) var leftovers: [String] = []

    public var notes: [String] {
        reclaimed.map { "removed the stale lock of \($0) (process gone)" } + leftovers
    }
    private var held = true

    private init(store: BackupStore, key: String, holder: LockHolder, reclaimed: [LockHolder]) {
        self.store = store
        self.key = key
        self.holder = holder
        self.reclaimed = reclaimed
    }

    /// A lock that its owner dropped without `release()` is still released, best effort.
    deinit {
        // The explicit release() reports failures; here there is nobody left to report to.
        try? release()
    }

    /// Takes the writer lock, waiting up to `wait` seconds while a live process holds it.
    ///
    /// Without a wait (the default: a cron job that finds the repository busy fails at once, exit
    /// 21) the first live holder ends it. With one (`--lock-wait` given), the lock is tried again
    /// with backoff (`LockWaitBackoff`) until it is free or the wait is over; `waiting` is told once,
    /// naming the holder, so the operator sees why nothing happens. Stale records are reclaimed as
    /// without a wait. A signal ends the wait at once (`Interruption.pause`).
    ///
    /// - Throws: `StorageError(.locked)` naming the holder and what to do; `InterruptedError`.
    public static func exclusive(in store: BackupStore, holder: LockHolder, wait: TimeInterval = 0,
                                 waiting: (String) -> Void = StoreLock.sayOnStderr) throws -> StoreLock {
        let record = try encode(holder)
        var reclaimed: [LockHolder] = []
        let deadline = Date().addingTimeInterval(max(0, wait))
        var backoff = LockWaitBackoff()
        var announced = false
        var handChanges = 0
        while handChanges < 5 {
            if try store.create(writerKey, contents: record) {
                // Read it back: an S3-compatible server that ignores If-None-Match would let a racing
                // create overwrite ours, and two runs would each believe they hold the lock.
                let stored: VersionedObject?
                do {
                    stored = try store.readVersioned(writerKey)
                } catch let error as StorageError where error.kind == .notFound {
                    stored = nil
                }
                guard let stored, let owner = decode(stored.contents), owner.token == holder.token else {
                    throw StorageError(.locked, object: store.location + "/" + writerKey,
                                       message: "repository is locked by \(stored.flatMap { decode($0.contents) }.map { "\($0)" } ?? "another process") (its record replaced ours right after we created it)",
                                       hint: "the storage must honour conditional writes (S3 If-None-Match); with it, this cannot happen")
                }
                return StoreLock(store: store, key: writerKey, holder: holder, reclaimed: reclaimed).removingLeftovers()
            }
            let current: VersionedObject
            do {
                current = try store.readVersioned(writerKey)
            } catch let error as StorageError where error.kind == .notFound {
                handChanges += 1
                continue   // released between our create and our read: try again
            }
            let found = decode(current.contents)
            if let found, found.token == holder.token {
                // Our create took effect but its reply was lost; the retry found our own record.
                return StoreLock(store: store, key: writerKey, holder: holder, reclaimed: reclaimed).removingLeftovers()
            }
            guard isStale(current.contents, found) else {
                let left = deadline.timeIntervalSinceNow
                guard left > 0 else {
                    throw lockedError(store: store, holder: found, waited: wait)
                }
                if !announced {
                    announced = true
                    waiting("waiting up to \(LockWaitBackoff.format(wait)) for the repository lock of \(store.location), held by "
                            + (found.map { "\($0)" } ?? "a record this version cannot read"))
                }
                try Interruption.pause(min(backoff.next(), left))
                continue
            }
            // Delete exactly the stale version; if someone else reclaimed it first, nothing happens.
            if try store.delete(writerKey, ifVersion: current.version), let found { reclaimed.append(found) }
            handChanges += 1
        }
        throw StorageError(.locked, object: store.location + "/" + writerKey,
                           message: "repository lock could not be taken: it changed hands 5 times while we tried",
                           hint: "several runs are starting at once; run again when they are done")
    }

    /// With the writer lock held, nothing of another writer is in flight: what is older than this
    /// lock and belongs to no live process was left by a killed run.
    private func removingLeftovers() -> StoreLock {
        do {
            leftovers = try store.removeLeftovers(before: holder.since)
        } catch {
            // Clean-up is a courtesy to the next run, not a condition of this one (a bucket policy may
            // not allow listing uploads): said, not fatal.
            leftovers = ["could not look for leftovers of interrupted runs: \(error)"]
        }
        return self
    }

    /// Registers a reader of one backup (a restore streaming it). Never waits for the writer lock.
    ///
    /// - Important: read the backup's manifest *after* taking this lock: `dbprune` deletes a
    ///   manifest, then looks for readers again and puts it back if one appeared.
    /// - Throws: `StorageError` when the record cannot be written (e.g. a read-only repository).
    public static func shared(in store: BackupStore, backupID: String, holder: LockHolder) throws -> StoreLock {
        let key = readerPrefix(backupID) + holder.token + ".json"
        // False means our first attempt's reply was lost: the token is ours alone, so it is our record.
        _ = try store.create(key, contents: try encode(holder))
        return StoreLock(store: store, key: key, holder: holder, reclaimed: [])
    }

    /// Like `shared(in:backupID:holder:)`, but a repository this process may not write (mounted
    /// read-only, a read-only S3 policy) or cannot write now (its disk is full: a WAL archive filling
    /// it at night must not stop the 3 a.m. restore) is still read, without a reader lock: nil then.
    /// A `dbprune` cannot take its own lock on such a repository either; a full disk is said (warning).
    ///
    /// - Throws: `StorageError` for any other failure.
    public static func sharedIfWritable(in store: BackupStore, backupID: String, holder: LockHolder) throws -> StoreLock? {
        do {
            return try shared(in: store, backupID: backupID, holder: holder)
        } catch let error as StorageError where error.kind == .readOnly || error.kind == .permissionDenied {
            return nil
        } catch let error as StorageError where error.kind == .diskFull {
            Logger(label: "dbrecovery.locks").warning("backup \(backupID) is read without a reader lock: \(error.description)")
            return nil
        }
    }

    /// The live readers of a backup; stale reader records found on the way are removed (unless
    /// `removeStale` is false, as in a dry run) and returned.
    ///
    /// - Throws: `StorageError` when the lock folder cannot be listed or a stale record not removed.
    public static func readers(of backupID: String, in store: BackupStore, removeStale: Bool = true) throws -> (live: [LockHolder], reclaimed: [LockHolder]) {
        var live: [LockHolder] = []
        var reclaimed: [LockHolder] = []
        for object in try store.list(prefix: readerPrefix(backupID)) where object.key.hasSuffix(".json") {
            let current: VersionedObject
            do {
                current = try store.readVersioned(object.key)
            } catch let error as StorageError where error.kind == .notFound {
                continue   // released since the listing
            }
            let found = decode(current.contents)
            if isStale(current.contents, found) {
                if !removeStale {
                    if let found { reclaimed.append(found) }
                } else if try store.delete(object.key, ifVersion: current.version), let found {
                    reclaimed.append(found)
                }
            } else {
                // An unreadable record counts as a reader: keeping a backup is the safe mistake.
                live.append(found ?? LockHolder(command: "unknown reader", pid: 0, host: "?", since: object.modified ?? Date(), token: ""))
            }
        }
        return (live, reclaimed)
    }

    /// Who holds the writer lock now, without taking it (a dry run only looks); nil when nobody
    /// does or the record is stale. An unreadable record counts as held, by an unknown holder.
    ///
    /// - Throws: `StorageError` when the lock record cannot be read.
    public static func writer(in store: BackupStore) throws -> LockHolder? {
        let current: VersionedObject
        do {
            current = try store.readVersioned(writerKey)
        } catch let error as StorageError where error.kind == .notFound {
            return nil
        }
        let found = decode(current.contents)
        if isStale(current.contents, found) { return nil }
        return found ?? LockHolder(command: "unknown writer", pid: 0, host: "?", since: .distantPast, token: "")
    }

    /// Deletes the lock record if it is still ours.
    ///
    /// - Throws: `StorageError` when the delete failed, or when the record was gone or belonged
    ///   to someone else (then it is left alone).
    public func release() throws {
        guard held else { return }
        held = false
        let current: VersionedObject
        do {
            current = try store.readVersioned(key)
        } catch let error as StorageError where error.kind == .notFound {
            throw StorageError(.locked, object: store.location + "/" + key, message: "our lock was removed by someone else while we held it",
                               hint: "someone deleted the lock by hand; check that no other run worked on the repository at the same time")
        }
        guard Self.decode(current.contents)?.token == holder.token else {
            throw StorageError(.locked, object: store.location + "/" + key,
                               message: "the lock now belongs to \(Self.decode(current.contents).map { "\($0)" } ?? "someone else"); it was left in place",
                               hint: "someone removed our lock while we held it; check that no other run worked on the repository at the same time")
        }
        // False: it vanished between our read and our delete, which only its owner (us) does.
        _ = try store.delete(key, ifVersion: current.version)
    }

    // MARK: - Records

    private static func encode(_ holder: LockHolder) throws -> Data {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = .sortedKeys
        return try encoder.encode(holder)
    }

    static func decode(_ data: Data) -> LockHolder? {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try? decoder.decode(LockHolder.self, from: data)
    }

    /// The README's rules: empty (an older version's released lock file), or written on this host
    /// by a process that is gone. Unreadable records and other hosts' records are never stale.
    private static func isStale(_ contents: Data, _ holder: LockHolder?) -> Bool {
        if contents.isEmpty { return true }
        guard let holder else { return false }
        return ProcessLiveness.isGone(holder)
    }

    private static func lockedError(store: BackupStore, holder: LockHolder?, waited: TimeInterval) -> StorageError {
        let object = store.location + "/" + writerKey
        let after = waited > 0 ? " (still, after waiting \(LockWaitBackoff.format(waited)))" : ""
        guard let holder else {
            return StorageError(.locked, object: object, message: "repository is locked by a record this version cannot read\(after)",
                                hint: "if no other run is active, delete \(object)")
        }
        let wait = waited > 0 ? "raise --lock-wait or run again once it is done" : "wait for it to finish (or give --lock-wait 10m to wait for it)"
        let hint = holder.host == ProcessInfo.processInfo.hostName
            ? "\(wait); the lock is reclaimed automatically once that process is gone"
            : "\(wait); a lock from another host is never reclaimed automatically: if that process is gone, delete \(object)"
        return StorageError(.locked, object: object, message: "repository is locked by \(holder)\(after)", hint: hint)
    }

    /// Where a wait for the writer lock is said by default: stderr, one line (a library has no
    /// output of its own; the tools' logs go to stderr too).
    public static func sayOnStderr(_ line: String) {
        TextSink.standardError.write(line + "\n")
    }
}

/// The pauses between tries while the writer lock is held: 0.1 s, doubling up to 5 s, so that a
/// short holder (another snapshot) is noticed at once and a long one (the nightly backup of a large
/// database) is not polled more than every 5 s (one read of a small object on S3).
struct LockWaitBackoff {
    private var current: TimeInterval = 0.1
    static let longest: TimeInterval = 5

    mutating func next() -> TimeInterval {
        defer { current = min(Self.longest, current * 2) }
        return current
    }

    /// `90 s`, `5 min`, `1 h 30 min`: how long a wait is, as said to the operator.
    static func format(_ seconds: TimeInterval) -> String {
        let whole = Int(seconds.rounded())
        if whole < 120 { return "\(whole) s" }
        if whole < 7200 { return "\(whole / 60) min" + (whole % 60 == 0 ? "" : " \(whole % 60) s") }
        return "\(whole / 3600) h" + (whole % 3600 / 60 == 0 ? "" : " \(whole % 3600 / 60) min")
    }
}
