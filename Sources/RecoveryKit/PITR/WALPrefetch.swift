import BackupStorage
import Foundation
import Gzip
import ProcessSignals
import Synchronization

/// `dbrestore wal-fetch --prefetch N`: restore_command at WAN latency. Each call asks a
/// background prefetcher for the N segments after its own (`wanted`), starting it if none runs
/// (one per spool, an `flock`; it exits once idle). The prefetcher downloads them several at
/// once and decompresses them in turns, oldest first (`CPUTurns`), each whole in memory; it
/// checks each as a direct fetch would (gzip CRC and length, the cipher's authentication) and by
/// its first page's long header (`WALSegmentName.headerMatches`) before writing it to
/// `segments/<name>` (a temporary file renamed), then writes its CRC-32 under `segments/<name>.crc32`.
///
/// A later call for that segment only maps it once (the CRC-32 and the page header again: a
/// spool file damaged, truncated or planted since is never served) and renames it into place;
/// anything that does not verify is deleted and the segment fetched from the repository, as is a
/// segment the prefetcher does not have. So the answer is always the repository's: "not found"
/// (recovery ends) only when the repository says so. Prefetched segments behind the one asked
/// for are deleted by each call; those ahead of the last one recovery asked for stay until the
/// spool is removed with the data directory (the default spool lies in pg_wal) or the next
/// restore into it.
public enum WALPrefetch {
    static let lockName = "prefetch.lock"
    private static let wantedKey = "wanted"
    /// The cluster's WAL segment size, as the calls found it (for the list a call writes before its own segment is in hand).
    private static let segmentSizeKey = "segment-size"

    /// The default spool: next to where PostgreSQL wants the files (`pg_wal/dbrecovery-prefetch`
    /// under the restored data directory; PostgreSQL ignores directories there).
    public static func defaultSpool(destination: String) -> String {
        let directory = (destination as NSString).deletingLastPathComponent
        return ((directory.isEmpty ? "." : directory) as NSString).appendingPathComponent("dbrecovery-prefetch")
    }

    /// Serves `name` into `destination`, from the spool or the repository.
    ///
    /// - Parameter settings: `jobs` is the number of segments prefetched ahead.
    /// - Returns: false when the file is not in the archive.
    /// - Throws: as `WALArchive.fetch`.
    public static func fetch(name: String, destination: String, settings: WALSpoolSettings, key cipherKey: RepositoryKey?,
                             prefetcherArguments: [String]) throws -> Bool {
        let objectKey = try WALArchive.key(for: name)
        let spool = try WALSpool(settings.spool, repository: settings.repository, resetOnMismatch: true)
        // The prefetcher is downloading it right now: wait for that copy instead of downloading it twice.
        let deadline = Date().addingTimeInterval(30)
        while spool.exists("claims/\(name)") && !spool.exists(record(of: name)) && Date() < deadline, try spool.isLocked(lockName) {
            try Interruption.check()
            usleep(5_000)
        }
        /// A prefetcher for this spool, started unless one runs (a second one started meanwhile exits at once).
        func ensurePrefetcher() throws {
            if try !spool.isLocked(lockName) { try spool.startDetached(prefetcherArguments, environment: settings.environment, log: "prefetch.log") }
        }
        let recordedSize = (try? spool.files.read(segmentSizeKey)).flatMap { UInt64(String(decoding: $0, as: UTF8.self)) }
        var size = serveFromSpool(name, spool: spool, destination: destination)
        if size == nil && WALSegmentName.isSegment(name) {
            // Not prefetched (the first call of a recovery, or one ahead of the prefetcher): a prefetcher
            // is started and told what comes next before this call's own download, so that the next
            // segment downloads while this one does. Its first worker takes the next one at once, the
            // rest a moment later (`WorkerThreads.idlePause`), so it arrives first. The segment size is
            // the one recorded by an earlier call, else PostgreSQL's default; a wrong guess costs a few
            // downloads not asked for, and the list is written again below with this segment's size.
            try ensurePrefetcher()
            try spool.put(wantedKey, wanted(after: name, segmentSize: recordedSize ?? WALSegmentName.defaultSegmentSize, count: settings.jobs))
        }
        if size == nil {
            let store = try Repository.open(settings.repository, create: false, environment: settings.environment)
            let data: Data
            do {
                data = try WALArchive.decompress(try store.read(objectKey), name: name, objectKey: objectKey, cipherKey: cipherKey)
            } catch let error as StorageError where error.kind == .notFound {
                return false
            }
            try WALArchive.install(data, at: destination)
            size = data.count
        }
        guard WALSegmentName.isSegment(name), let size else { return true }
        if recordedSize != UInt64(size) { try spool.put(segmentSizeKey, Data(String(size).utf8)) }
        // Ask for the segments after this one (same timeline, this segment's size) and drop what is behind.
        try spool.put(wantedKey, wanted(after: name, segmentSize: UInt64(size), count: settings.jobs))
        let behind = try spool.files.list(prefix: "segments/").map(\.key).filter { String($0.dropFirst("segments/".count).prefix(24)) < name }
        spool.remove(behind)
        try ensurePrefetcher()
        return true
    }

    /// Where the spool keeps the check of the segment `name`, written once the segment is whole.
    static func record(of name: String) -> String { "segments/\(name).crc32" }

    /// The check of a spooled segment's bytes: their CRC-32 in hex.
    static func spoolRecord(_ bytes: UnsafeRawBufferPointer) -> Data {
        Data(String(WholeBufferGzip.crc32(bytes), radix: 16).utf8)
    }

    /// The `count` segment names after `name` on its timeline, one per line.
    private static func wanted(after name: String, segmentSize: UInt64, count: Int) -> Data {
        var wanted: [String] = []
        var current = name
        for _ in 0..<count {
            guard let next = WALSegmentName.next(after: current, segmentSize: segmentSize) else { break }
            wanted.append(next)
            current = next
        }
        return Data(wanted.joined(separator: "\n").utf8)
    }

    /// Moves the prefetched `name` to `destination` when it is whole and is that segment: its
    /// CRC-32 is the one the prefetcher recorded after checking the download, and its page header
    /// names it. Whatever does not verify is deleted. The file is mapped, not read (`MappedFile`):
    /// besides its CRC (a millisecond), this call only renames it. A CRC-32, not a SHA-256 (a tenth
    /// of the CPU): the record lies beside the file in the same spool, so it guards against damage
    /// (a torn or cut-short file, a flipped bit), which a CRC-32 is made to catch, and not against
    /// whoever could write both; the page header catches a whole other segment put there.
    ///
    /// - Returns: the segment's size, or nil when the spool had no good copy.
    private static func serveFromSpool(_ name: String, spool: WALSpool, destination: String) -> Int? {
        let segment = "segments/\(name)", digest = record(of: name)
        defer { spool.remove([segment, digest]) }   // served or bad: either way not needed again
        guard let recorded = try? spool.files.read(digest) else { return nil }
        let path = spool.path(segment)
        return MappedFile.read(path, followingLinks: false) { bytes -> Int? in
            guard spoolRecord(bytes) == recorded,
                  WALSegmentName.headerMatches(firstBytes: bytes, size: UInt64(bytes.count), name: name) else { return nil }
            if rename(path, destination) != 0 {
                // A --spool on another file system than pg_wal: write the verified bytes instead.
                guard (try? WALArchive.install(Data(bytes), at: destination)) != nil else { return nil }
            }
            return bytes.count
        } ?? nil
    }

    /// The background prefetcher: downloads, checks and spools the wanted segments, several at
    /// once, until nothing has been wanted for `idleExit`. Returns at once when another holds the spool.
    public static func run(settings: WALSpoolSettings, key cipherKey: RepositoryKey?) throws {
        let spool = try WALSpool(settings.spool, repository: settings.repository, resetOnMismatch: true)
        guard let lock = try spool.tryLock(lockName) else { return }
        defer { lock.release() }
        TextSink.standardError.write("prefetcher \(ProcessInfo.processInfo.processIdentifier) started\n")
        // Claims of a prefetcher that was killed: this one holds the lock, so none is live.
        spool.remove(try spool.names(under: "claims/").map { "claims/\($0)" })
        let claims = Claims(), turns = CPUTurns(), end = ArchiveEnd()
        let directory = spool.directory
        let repository = settings.repository
        let idleExit = settings.idleExit
        let environment = settings.environment
        WorkerThreads.run(min(settings.jobs, 8)) { index in
            guard let spool = try? WALSpool(directory, repository: repository, resetOnMismatch: false) else { return }
            var store: BackupStore?
            var idleSince = Date()
            while !Interruption.isRequested {
                let wanted = (try? spool.files.read(wantedKey)).map { String(decoding: $0, as: UTF8.self).split(separator: "\n").map(String.init) } ?? []
                // Each name once per prefetcher: one served already is not downloaded again because an older `wanted` still names it.
                guard let name = claims.claim(from: end.before(wanted).filter { !spool.exists(record(of: $0)) }) else {
                    if Date().timeIntervalSince(idleSince) > idleExit { return }
                    usleep(WorkerThreads.idlePause(index))
                    continue
                }
                idleSince = Date()
                guard let objectKey = try? WALArchive.key(for: name) else { continue }
                // Said in the spool, so that the call for this segment waits for it instead of fetching it too.
                try? spool.put("claims/\(name)", Data())
                defer { spool.remove(["claims/\(name)"]) }
                do {
                    let opened = try store ?? Repository.open(repository, create: false, environment: environment)
                    store = opened
                    let stored = try opened.read(objectKey)
                    // Inflated whole (libdeflate for what wal-push stores, `WALArchive.decompress`) and
                    // checked, then hashed and written to the spool file through a small buffer, a piece
                    // at a time, and renamed into place. One write() of the 16 MiB buffer cost as much CPU
                    // as libdeflate saves (perf: the kernel's copy into the page cache, ten times as long
                    // per byte as from a small buffer, on the 2-core bench machine). The downloads
                    // overlap; the inflating takes turns, oldest first: the next segment recovery asks
                    // for is ready soonest, and at most one segment per core is in memory at once.
                    try turns.run(name) {
                        let data = try WALArchive.decompress(stored, name: name, objectKey: objectKey, cipherKey: cipherKey)
                        guard WALSegmentName.headerMatches(data, name: name) else {
                            throw RecoveryError(.backupCorrupt, "archived WAL file \(name) does not start with its own page header")
                        }
                        let file = try spool.create("segments/\(name)")
                        // Through a small buffer: one write() of the whole 16 MiB cost as much kernel copy time
                        // as libdeflate saves (docs/design-notes.md).
                        let piece = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * 1024, alignment: 4096)
                        defer { piece.deallocate() }
                        try data.withUnsafeBytes { bytes in
                            for start in stride(from: 0, to: bytes.count, by: piece.count) {
                                let count = min(piece.count, bytes.count - start)
                                piece.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[start..<start + count]))
                                try file.append(UnsafeRawBufferPointer(rebasing: piece[0..<count]))
                            }
                        }
                        try file.commit()
                        try spool.put(record(of: name), data.withUnsafeBytes(spoolRecord))
                    }
                } catch let error as StorageError where error.kind == .notFound {
                    // Not archived (yet): the call for it asks the repository itself.
                    end.reached(at: name)
                } catch {
                    // The call for it fetches directly and reports what is wrong.
                    TextSink.standardError.write("prefetch \(name): \(RecoveryError.classify(error).message)\n")
                }
            }
        }
    }
}

/// Where the prefetcher last found the archive ending: the first segment the repository did not
/// have. Names at and after it on its timeline are not asked for, each of them one more GET
/// answered 404 (a round trip, and with URLSession on Linux a core busy for as long). The end
/// is forgotten once recovery has moved past it: a `wanted` list starting after it (the call for
/// that segment found it in the repository) or on another timeline. Until then the calls for
/// those segments ask the repository themselves, so nothing is answered from this.
final class ArchiveEnd: Sendable {
    private let first = Mutex<String?>(nil)

    /// `wanted` less the names at or past the end on its timeline; forgets the end when `wanted`
    /// shows that recovery has moved past it.
    func before(_ wanted: [String]) -> [String] {
        first.withLock { first in
            guard let end = first else { return wanted }
            func atOrPast(_ name: String) -> Bool { name.prefix(8) == end.prefix(8) && name >= end }
            if let next = wanted.first, next.prefix(8) != end.prefix(8) || next > end {
                first = nil
                return wanted
            }
            return wanted.filter { !atOrPast($0) }
        }
    }

    /// The repository does not have `name`.
    func reached(at name: String) {
        first.withLock { first in
            if let end = first, end.prefix(8) == name.prefix(8), end <= name { return }
            first = name
        }
    }
}
