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

    let name: [UInt8]
    /// Bytes of the record stream not yet searched past, and the LSN each page's run of them starts at.
    private var stream: [UInt8] = []
    private var runs: [(offset: Int, lsn: UInt64)] = []
    /// Hits below this LSN were reported by an earlier `feedAll`.
    private var reportedFrom: UInt64 = 0

    init(name: String) {
        self.name = Array(name.utf8) + [0]
    }

    /// Adds a whole segment beginning at LSN `base` (segments given in order, none skipped) and
    /// returns the LSN of the first restore point of that name that begins at or after `from`.
    mutating func feed(_ segment: Data, base: UInt64, from: UInt64) -> UInt64? {
        feedAll(segment, base: base, from: from).first?.lsn
    }

    /// One restore point record of the name: where it begins and its `rp_time`.
    struct Hit: Equatable {
        var lsn: UInt64
        var time: Date
    }

    /// As `feed`, every restore point of that name at or after `from` in the segment (each reported
    /// once, also one found again in the record's worth kept for the next segment).
    mutating func feedAll(_ segment: Data, base: UInt64, from: UInt64) -> [Hit] {
        let bytes = [UInt8](segment)
        let pageSize = Self.pageSize(of: bytes)
        var page = 0
        while page < bytes.count {
            let info = bytes.count >= page + 4 ? UInt16(bytes[page + 2]) | UInt16(bytes[page + 3]) << 8 : 0
            let header = info & WALServer.longHeaderFlag != 0 ? 40 : 24
            let end = min(page + pageSize, bytes.count)
            if page + header < end {
                runs.append((stream.count, base + UInt64(page + header)))
                stream.append(contentsOf: bytes[(page + header)..<end])
            }
            page += pageSize
        }
        let found = search(from: max(from, reportedFrom))
        if let last = found.last { reportedFrom = last.lsn + 1 }
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

    private func search(from: UInt64) -> [Hit] {
        var hits: [Hit] = []
        guard stream.count >= name.count + Self.nameOffset else { return hits }
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
            guard let hit else { return hits }
            let start = hit - Self.nameOffset
            if start >= 0, isRestorePoint(at: start), let lsn = lsn(of: start), lsn % 8 == 0, lsn >= from {
                hits.append(Hit(lsn: lsn, time: time(at: start + 26)))
            }
            position = hit + 1
        }
        return hits
    }

    /// `rp_time`: a TimestampTz, microseconds since 2000-01-01 00:00 UTC (this machine's byte order).
    private func time(at offset: Int) -> Date {
        var micros: Int64 = 0
        for index in (0..<8).reversed() { micros = micros << 8 | Int64(stream[offset + index]) }
        return Date(timeIntervalSince1970: 946_684_800 + Double(micros) / 1_000_000)
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

    /// Every restore point `name` in the archived WAL recovery along `path` replays, oldest first,
    /// each with the timeline it was written on; from segment `first` on (each segment read once, a
    /// gap in the archive starts the stream again after it). `complete`: the search read every
    /// archived segment on the path; a damaged or unreadable one ends it early, with a warning.
    ///
    /// - Throws: `RecoveryError(.configuration)` for WAL encrypted and no key given (as a restore
    ///   says it), storage errors, an interruption.
    static func occurrences(of name: String, along path: [TimelineHistory.Stretch], segmentSize size: UInt64, from first: UInt64 = 0,
                            archive: [StoredObject], store: BackupStore, key: RepositoryKey?) throws -> (hits: [(hit: Hit, timeline: UInt32)], complete: Bool) {
        func timeline(of number: UInt64) -> UInt32 { path.last { $0.begin / size <= number }?.timeline ?? path[0].timeline }
        let archived = Set(archive.map(\.key))
        let numbers = Set(archive.compactMap { object -> UInt64? in
            guard let file = WALArchive.fileName(ofKey: object.key), WALSegmentName.isSegment(file), let onTimeline = WALSegmentName.timelineNumber(of: file),
                  let number = WALSegmentName.segmentNumber(of: file, segmentSize: size), number >= first, timeline(of: number) == onTimeline else { return nil }
            return number
        }).sorted()
        var hits: [(hit: Hit, timeline: UInt32)] = []
        var scan = RestorePointScan(name: name)
        var previous: UInt64?
        for number in numbers {
            let segment = WALSegmentName.name(timeline: timeline(of: number), segmentNumber: number, segmentSize: size)
            let objectKey = try WALArchive.key(for: segment)
            guard archived.contains(objectKey) else { continue }
            try Interruption.check()
            if let previous, previous + 1 != number { scan = RestorePointScan(name: name) }
            previous = number
            let data: Data
            do {
                data = try WALArchive.decompress(try store.read(objectKey), name: segment, objectKey: objectKey, cipherKey: key)
            } catch let error as RecoveryError where error.code != .configuration {
                // Recovery itself says so if it needs this segment; the plan only stops looking.
                logger.warning("restore point '\(name)' not searched for past WAL segment \(segment): \(error.message)")
                return (hits, false)
            }
            hits += scan.feedAll(data, base: number * size, from: 0).map { hit in
                (hit, path.last { $0.begin <= hit.lsn }?.timeline ?? path[0].timeline)
            }
        }
        return (hits, true)
    }
}
