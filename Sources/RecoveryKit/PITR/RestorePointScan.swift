import BackupStorage
import Foundation
import Logging
import ProcessSignals

/// Finds a restore point (`pg_create_restore_point`) in archived WAL, so that `--pitr --target-name`
/// can take a base backup that started before it: recovery replays WAL from a base backup's start on
/// only, and a point made before the newest base backup (`dbmigrate`'s, before the nightly one) is
/// never reached from that one.
///
/// A restore point is one WAL record (rmgr XLOG, info `XLOG_RESTORE_POINT` 0x70) of 98 bytes: the
/// 24-byte `XLogRecord` header, `XLR_BLOCK_ID_DATA_SHORT` (255) and its length (72), then
/// `xl_restore_point` {TimestampTz rp_time; char rp_name[64]}. Records run on across page (and
/// segment) boundaries; with each page's header taken out (24 bytes, 40 for a long one) the WAL is
/// one stream of records, searched here for that record with the name, NUL-terminated (the rest of
/// `rp_name` is not cleared by the server). Records start 8-aligned. Byte order is this machine's,
/// as for `WALServer` (a repository is restored on the same kind of machine).
struct RestorePointScan {
    static let recordLength: UInt32 = 98
    static let nameOffset = 24 + 2 + 8
    static let restorePointInfo: UInt8 = 0x70
    static let longHeaderFlag: UInt16 = 0x0002

    let name: [UInt8]
    /// Bytes of the record stream not yet searched past, and the LSN each page's run of them starts at.
    private var stream: [UInt8] = []
    private var runs: [(offset: Int, lsn: UInt64)] = []

    init(name: String) {
        self.name = Array(name.utf8) + [0]
    }

    /// Adds a whole segment beginning at LSN `base` (segments given in order, none skipped) and
    /// returns the LSN of the first restore point of that name that begins at or after `from`.
    mutating func feed(_ segment: Data, base: UInt64, from: UInt64) -> UInt64? {
        let bytes = [UInt8](segment)
        let pageSize = Self.pageSize(of: bytes)
        var page = 0
        while page < bytes.count {
            let info = bytes.count >= page + 4 ? UInt16(bytes[page + 2]) | UInt16(bytes[page + 3]) << 8 : 0
            let header = info & Self.longHeaderFlag != 0 ? 40 : 24
            let end = min(page + pageSize, bytes.count)
            if page + header < end {
                runs.append((stream.count, base + UInt64(page + header)))
                stream.append(contentsOf: bytes[(page + header)..<end])
            }
            page += pageSize
        }
        let found = search(from: from)
        // Keep a record's worth: one may begin at a segment's end and run on into the next.
        let keep = Int(Self.recordLength)
        if stream.count > keep {
            let drop = stream.count - keep
            stream.removeFirst(drop)
            runs = runs.compactMap { run in
                run.offset + pageSize > drop ? (run.offset - drop, run.lsn) : nil
            }
        }
        return found
    }

    private func search(from: UInt64) -> UInt64? {
        guard stream.count >= name.count + Self.nameOffset else { return nil }
        var position = Self.nameOffset
        while position + name.count <= stream.count {
            // memchr and memcmp: a segment is 16 MB, compared in Swift byte by byte it takes seconds in a debug build.
            let hit: Int? = stream.withUnsafeBytes { haystack in
                name.withUnsafeBytes { needle in
                    guard let base = haystack.baseAddress, let wanted = needle.baseAddress else { return nil }
                    var at = position
                    while at + needle.count <= haystack.count {
                        guard let first = memchr(base + at, Int32(name[0]), haystack.count - needle.count + 1 - at) else { return nil }
                        let offset = base.distance(to: UnsafeRawPointer(first))
                        if memcmp(first, wanted, needle.count) == 0 { return offset }
                        at = offset + 1
                    }
                    return nil
                }
            }
            guard let hit else { return nil }
            let start = hit - Self.nameOffset
            if start >= 0, isRestorePoint(at: start), let lsn = lsn(of: start), lsn % 8 == 0, lsn >= from { return lsn }
            position = hit + 1
        }
        return nil
    }

    private func isRestorePoint(at start: Int) -> Bool {
        let length = UInt32(stream[start]) | UInt32(stream[start + 1]) << 8 | UInt32(stream[start + 2]) << 16 | UInt32(stream[start + 3]) << 24
        return length == Self.recordLength && stream[start + 16] == Self.restorePointInfo && stream[start + 17] == 0
            && stream[start + 24] == 0xFF && stream[start + 25] == 72
    }

    /// The LSN of stream offset `offset`: its page's run start plus the distance into it.
    private func lsn(of offset: Int) -> UInt64? {
        guard let run = runs.last(where: { $0.offset <= offset }) else { return nil }
        return run.lsn + UInt64(offset - run.offset)
    }

    /// `xlp_xlog_blcksz` of the segment's long header (offset 36), 8192 when it does not say.
    static func pageSize(of bytes: [UInt8]) -> Int {
        guard bytes.count >= 40 else { return 8192 }
        let size = Int(bytes[36]) | Int(bytes[37]) << 8 | Int(bytes[38]) << 16 | Int(bytes[39]) << 24
        return [1024, 2048, 4096, 8192, 16384, 32768, 65536].contains(size) ? size : 8192
    }
}

extension RestorePointScan {
    private static let logger = Logger(label: "dbrecovery.restore")

    /// The newest of `backups` (newest first, one server's) that started before restore point `name`,
    /// and where the point lies: the WAL is read from the newest one's start to the end of the archive,
    /// then, not found there, from each older one's start to where the previous read began (each
    /// segment read once, plus the one a start lies in). Recovery stops at the first such point after
    /// the base backup's start, as this search does. Nil when no archived WAL holds it (a mistyped
    /// name, a point not yet archived, or a record this search does not know): the caller keeps the
    /// newest base backup and warns.
    ///
    /// - Throws: storage errors, an interruption (a damaged or undecryptable segment ends the search
    ///   with a warning: nil).
    static func locate(_ name: String, among backups: [BackupManifest], archive: [StoredObject], history: TimelineHistory,
                       timeline choice: TimelineChoice, store: BackupStore, key: RepositoryKey?) throws -> (backup: BackupManifest, lsn: UInt64)? {
        let archived = Set(archive.map(\.key))
        var readFrom: UInt64?   // the first segment number an earlier (newer) candidate's read began at
        for backup in backups {
            guard let physical = backup.physical, let start = WALSegmentName.parseLSN(physical.startLsn) else { continue }
            let size = physical.segmentSize
            let backupTimeline = UInt32(clamping: max(1, physical.timeline))
            let target: UInt32
            switch choice {
            case .latest: target = history.latest(from: backupTimeline)
            case .number(let number): target = number
            }
            guard let path = try? history.path(to: target) else { continue }
            var scan = RestorePointScan(name: name)
            let first = start / size
            var number = first
            while readFrom.map({ number <= $0 }) ?? true {
                let timeline = path.last { $0.begin / size <= number }?.timeline ?? backupTimeline
                let segment = WALSegmentName.name(timeline: timeline, segmentNumber: number, segmentSize: size)
                let objectKey = try WALArchive.key(for: segment)
                guard archived.contains(objectKey) else { break }
                try Interruption.check()
                let data: Data
                do {
                    data = try WALArchive.decompress(try store.read(objectKey), name: segment, objectKey: objectKey, cipherKey: key)
                } catch let error as RecoveryError {
                    // Recovery itself says so if it needs this segment; the plan only stops looking.
                    logger.warning("restore point '\(name)' not searched for past WAL segment \(segment): \(error.message)")
                    return nil
                }
                if let lsn = scan.feed(data, base: number * size, from: start) { return (backup, lsn) }
                number += 1
            }
            readFrom = first
        }
        return nil
    }
}
