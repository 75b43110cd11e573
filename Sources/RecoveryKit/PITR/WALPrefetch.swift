import BackupStorage
import Foundation
import ProcessSignals

/// `dbrestore wal-fetch --prefetch N`: restore_command at WAN latency. Each call serves its segment
/// from the spool when a background prefetcher has downloaded it already (else from the
/// repository, as without `--prefetch`), then asks the prefetcher for the next N segments
/// (`wanted`), starting it if none runs (one per spool, an `flock`; it exits once idle).
///
/// The spool holds segments exactly as stored (compressed, encrypted): what is served is
/// decompressed and checked (gzip CRC and length, the cipher's authentication) on the way out,
/// like a direct fetch, and only served when its first page's long header says it is that segment
/// (`WALSegmentName.headerMatches`): a spool file that does not verify is deleted and the segment
/// fetched from the repository again. Prefetched segments behind the one asked for are deleted by
/// each call; those ahead of the last one recovery asked for stay until the spool is removed with
/// the data directory (the default spool lies in pg_wal) or the next restore into it.
public enum WALPrefetch {
    public struct Settings: Sendable {
        public var spool: String
        public var repository: String
        /// Segments downloaded ahead.
        public var count: Int
        /// The prefetcher exits after this long with nothing left to download.
        public var idleExit: TimeInterval
        /// What the storage layer reads S3 settings and credentials from; also the prefetcher's environment.
        public var environment: [String: String]

        public init(spool: String, repository: String, count: Int, idleExit: TimeInterval = 10,
                    environment: [String: String] = ProcessInfo.processInfo.environment) {
            self.spool = spool
            self.repository = repository
            self.environment = environment
            self.count = max(1, count)
            self.idleExit = idleExit
        }
    }

    static let lockName = "prefetch.lock"
    private static let wantedKey = "wanted"

    /// The default spool: next to where PostgreSQL wants the files (`pg_wal/dbrecovery-prefetch`
    /// under the restored data directory; PostgreSQL ignores directories there).
    public static func defaultSpool(destination: String) -> String {
        let directory = (destination as NSString).deletingLastPathComponent
        return ((directory.isEmpty ? "." : directory) as NSString).appendingPathComponent("dbrecovery-prefetch")
    }

    /// Serves `name` into `destination`, from the spool or the repository.
    ///
    /// - Returns: false when the file is not in the archive.
    /// - Throws: as `WALArchive.fetch`.
    public static func fetch(name: String, destination: String, settings: Settings, key cipherKey: RepositoryKey?,
                             prefetcherArguments: [String]) throws -> Bool {
        let objectKey = try WALArchive.key(for: name)
        let spool = try WALSpool(settings.spool, repository: settings.repository, resetOnMismatch: true)
        var served: Data?
        // The prefetcher is downloading it right now: wait for that copy instead of downloading it twice.
        let deadline = Date().addingTimeInterval(30)
        while spool.exists("claims/\(name)") && !spool.exists("segments/\(name).gz") && Date() < deadline {
            try Interruption.check()
            usleep(10_000)
        }
        if let stored = try? spool.files.read("segments/\(name).gz") {
            // Any valid gzip could lie in the spool: only what is this segment by its own page header is served.
            served = (try? WALArchive.decompress(stored, name: name, objectKey: objectKey, cipherKey: cipherKey))
                .flatMap { WALSegmentName.headerMatches($0, name: name) ? $0 : nil }
            try spool.files.delete(["segments/\(name).gz"])   // served or damaged: either way not needed again
        }
        if served == nil {
            let store = try Repository.open(settings.repository, create: false, environment: settings.environment)
            do {
                served = try WALArchive.decompress(try store.read(objectKey), name: name, objectKey: objectKey, cipherKey: cipherKey)
            } catch let error as StorageError where error.kind == .notFound {
                return false
            }
        }
        guard let data = served else { return false }
        try WALArchive.install(data, at: destination)
        guard WALSegmentName.isSegment(name) else { return true }
        // Ask for the segments after this one (same timeline, this segment's size) and drop what is behind.
        var wanted: [String] = []
        var current = name
        for _ in 0..<settings.count {
            guard let next = WALSegmentName.next(after: current, segmentSize: UInt64(data.count)) else { break }
            wanted.append(next)
            current = next
        }
        let behind = try spool.names(under: "segments/", suffix: ".gz").filter { $0 < name }
        try spool.files.delete(behind.map { "segments/\($0).gz" })
        try spool.files.write(wantedKey, contents: Data(wanted.joined(separator: "\n").utf8))
        if try !spool.isLocked(lockName) { try spool.startDetached(prefetcherArguments, environment: settings.environment, log: "prefetch.log") }
        return true
    }

    /// The background prefetcher: downloads the wanted segments not yet in the spool, several at
    /// once, until nothing has been wanted for `idleExit`. Returns at once when another holds the spool.
    public static func run(settings: Settings) throws {
        let spool = try WALSpool(settings.spool, repository: settings.repository, resetOnMismatch: true)
        guard let lock = try spool.tryLock(lockName) else { return }
        defer { lock.release() }
        // Claims of a prefetcher that was killed: this one holds the lock, so none is live.
        try spool.files.delete(try spool.names(under: "claims/").map { "claims/\($0)" })
        let claims = Claims()
        let directory = spool.directory
        let repository = settings.repository
        let idleExit = settings.idleExit
        let environment = settings.environment
        WorkerThreads.run(min(settings.count, 8)) { _ in
            guard let spool = try? WALSpool(directory, repository: repository, resetOnMismatch: false),
                  let store = try? Repository.open(repository, create: false, environment: environment) else { return }
            var idleSince = Date()
            while !Interruption.isRequested {
                let wanted = (try? spool.files.read(wantedKey)).map { String(decoding: $0, as: UTF8.self).split(separator: "\n").map(String.init) } ?? []
                let missing = wanted.filter { !spool.exists("segments/\($0).gz") && !spool.exists("absent/\($0)") }
                guard let name = claims.claim(from: missing) else {
                    if Date().timeIntervalSince(idleSince) > idleExit { return }
                    usleep(20_000)
                    continue
                }
                defer { claims.release(name) }
                guard let objectKey = try? WALArchive.key(for: name) else { continue }
                // Said in the spool, so that the call for this segment waits for it instead of fetching it too.
                try? spool.files.write("claims/\(name)", contents: Data())
                defer { try? spool.files.delete(["claims/\(name)"]) }
                do {
                    try spool.files.write("segments/\(name).gz", contents: try store.read(objectKey))
                    idleSince = Date()
                } catch let error as StorageError where error.kind == .notFound {
                    // Not archived (yet): the call for it fetches directly; not asked for again by this run.
                    try? spool.files.write("absent/\(name)", contents: Data())
                    idleSince = Date()
                } catch {
                    // Failing downloads do not keep the prefetcher alive: the calls fetch directly.
                    FileHandle.standardError.write(Data("prefetch \(name): \(RecoveryError.classify(error).message)\n".utf8))
                    usleep(500_000)
                }
            }
        }
        try? spool.files.delete(try spool.names(under: "absent/").map { "absent/\($0)" })
    }
}
