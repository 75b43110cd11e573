import BackupStorage
import Foundation

/// Which server's WAL a recovery relies on, by the system identifier in each segment's first page
/// (`xlp_sysid` of `XLogLongPageHeaderData`; `WALServer` reads it). Segment names say nothing about
/// the server: a cluster initialised again, or a second one given the same `--repo`, archives its own
/// `000000010000000000000007` beside (or after) this one's, and wal-push refuses only a name already
/// taken. A recovery that replays into such a segment fails in PostgreSQL ("WAL file is from
/// different database system"), after the extraction and with nothing naming the cause.
///
/// The plan checks the run of segments it counts on (`WALRangeOwnership`); `wal-fetch` checks every
/// segment it hands over (`refuseForeign`), which also covers what the plan's few reads cannot see.
public enum WALOwnership {
    /// The system identifier of the data directory `directory` (the first field of `ControlFileData`
    /// in `global/pg_control`, native byte order); nil when there is none to read.
    static func controlFileSystem(dataDirectory directory: String) -> String? {
        guard let handle = FileHandle(forReadingAtPath: directory + "/global/pg_control") else { return nil }
        defer { try? handle.close() }
        guard let bytes = try? handle.read(upToCount: 8), bytes.count == 8 else { return nil }
        return String(bytes.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
    }

    /// `wal-fetch`: refuses the segment just fetched to `destination` when another server wrote it.
    /// The server being recovered is the one whose data directory restore_command runs in (its
    /// `pg_control`, from the base backup): dbrestore's restore_command and a hand-written one alike.
    /// The file is removed and the refusal is "not found" (exit 1), which PostgreSQL reads as the end
    /// of this server's WAL: recovery ends at the segment before, as at the archive's end, instead
    /// of replaying into another server's WAL (exit 126 would stop recovery with no way past it).
    ///
    /// - Throws: `RecoveryError(.failure)` naming the segment, both servers and the fix.
    public static func refuseForeign(_ name: String, destination: String) throws {
        guard WALSegmentName.isSegment(name) else { return }
        let parent = ((destination as NSString).deletingLastPathComponent as NSString).deletingLastPathComponent
        guard let recovered = controlFileSystem(dataDirectory: parent.isEmpty ? "." : parent),
              let handle = FileHandle(forReadingAtPath: destination) else { return }
        let head = (try? handle.read(upToCount: 64)) ?? Data()
        try? handle.close()
        guard let written = WALServer.systemIdentifier(ofHeader: head), written != recovered else { return }
        unlink(destination)
        throw RecoveryError(.failure,
                            "WAL file \(name) in the archive was written by another server (system \(written)), not the one being recovered "
                            + "(system \(recovered)): not handed to PostgreSQL, recovery ends before it as at the end of this server's WAL",
                            hint: foreignHint)
    }

    /// The fix for another server's segments among this one's.
    static let foreignHint = "two servers archive into one repository under the same WAL names: give each its own --repo; "
        + "this server's WAL past that point is not in this repository (its pg_wal or another repository may hold it)"
}

/// The plan's check of the WAL run it counts on (`PointInTimeRestore.walRun`): whose segments the
/// first one, the last one and, when the last is another server's, the boundary between are. Reading
/// a segment's first page is one short read; the boundary is found by bisection. Another server's
/// names form one stretch at the end of a timeline's run: each name is archived once, by whichever
/// server came first, and a server whose next name the other took archives nothing after it
/// (wal-push refuses that segment, and PostgreSQL retries it before any later one). A foreign
/// segment among this server's all the same (WAL copied in by hand) is not looked for: wal-fetch
/// refuses it when recovery gets there.
final class WALRangeOwnership {
    /// The server being recovered.
    let system: String
    private let store: BackupStore
    private let cipherKey: RepositoryKey?
    /// Each segment's server, read once for all the base backups the plan tries (nil: unknown).
    private var servers: [String: String?] = [:]

    /// Where the last `walRun` stopped at another server's segment.
    struct Stop {
        var segment: String
        var system: String
        var ours: String

        /// One line: the segment, both servers, what it means.
        var description: String {
            "WAL segment \(segment) and later in the archive were written by another server (system \(system)), not this one (system \(ours))"
        }
    }
    var stop: Stop?

    init(system: String, store: BackupStore, cipherKey: RepositoryKey?) {
        self.system = system
        self.store = store
        self.cipherKey = cipherKey
    }

    /// The base backup's server: the one its manifest records, else the one its first segment's
    /// header names. Nil when neither says.
    convenience init?(backup: BackupManifest, store: BackupStore, cipherKey: RepositoryKey?) {
        if let recorded = backup.database.systemIdentifier {
            self.init(system: recorded, store: store, cipherKey: cipherKey)
        } else if let first = backup.physical?.firstWalSegment, let key = try? WALArchive.key(for: first),
                  let found = (try? WALServer.systemIdentifier(ofKey: key, name: first, in: store, cipherKey: cipherKey)) ?? nil {
            self.init(system: found, store: store, cipherKey: cipherKey)
        } else {
            return nil
        }
    }

    /// The server that wrote segment `name`, when it is another one than `system`.
    func otherServer(_ name: String) -> String? {
        if servers[name] == nil {
            // Unreadable (damaged, another key) says nothing here: wal-fetch reports it during recovery.
            let key = try? WALArchive.key(for: name)
            servers[name] = key.flatMap { (try? WALServer.systemIdentifier(ofKey: $0, name: name, in: store, cipherKey: cipherKey)) ?? nil }
        }
        guard let found = servers[name] ?? nil, found != system else { return nil }
        return found
    }

    /// The first segment of `run` (segment numbers, all archived) another server wrote, and that server.
    func firstForeign(in run: ClosedRange<UInt64>, name: (UInt64) -> String) -> (number: UInt64, system: String)? {
        if let other = otherServer(name(run.lowerBound)) { return (run.lowerBound, other) }
        guard var foreign = otherServer(name(run.upperBound)).map({ (run.upperBound, $0) }) else { return nil }
        var ours = run.lowerBound
        while foreign.0 - ours > 1 {
            let middle = ours + (foreign.0 - ours) / 2
            if let other = otherServer(name(middle)) { foreign = (middle, other) } else { ours = middle }
        }
        return (foreign.0, foreign.1)
    }
}

/// What `wal-fetch` said in the recovery log (PostgreSQL's log gets restore_command's stderr) about
/// the segment recovery stopped at: PostgreSQL's own FATAL line only says the command failed
/// ("could not restore file … command not executable"), or nothing at all when it ended recovery.
struct WALFetchComplaint {
    /// `wal-fetch`'s message and hint.
    var message: String
    var hint: String?

    /// The last complaint after the last segment PostgreSQL restored, other than the archive's end
    /// ("is not in the archive", said at the end of every recovery): a damaged segment, another
    /// server's, an unreadable repository.
    static func last(in lines: [String]) -> WALFetchComplaint? {
        let afterRestored = lines.lastIndex { $0.contains("restored log file \"") }.map { lines[($0 + 1)...] } ?? lines[...]
        let prefix = "dbrestore: error: "
        guard let index = afterRestored.lastIndex(where: { $0.hasPrefix(prefix) && !$0.hasSuffix("is not in the archive") }) else { return nil }
        let next = index + 1 < lines.endIndex ? lines[index + 1] : ""
        return WALFetchComplaint(message: String(lines[index].dropFirst(prefix.count)),
                                 hint: next.hasPrefix("HINT: ") ? String(next.dropFirst("HINT: ".count)) : nil)
    }

    /// The complaint in the recovery log at `log`, if any.
    static func read(log: String) -> WALFetchComplaint? {
        guard let text = try? String(contentsOfFile: log, encoding: .utf8) else { return nil }
        return last(in: text.split(separator: "\n").map(String.init))
    }

    /// dbrestore's hint when recovery failed: wal-fetch's fix first, when it complained, then the log.
    static func hint(_ complaint: WALFetchComplaint?, log: String) -> String {
        (complaint?.hint.map { "\($0); " } ?? "") + "see \(log)"
    }
}
