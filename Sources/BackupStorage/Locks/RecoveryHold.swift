import Foundation
import UTCTime

/// A hold: what one prepared point-in-time recovery will still read from the repository, kept
/// from `dbprune` until that recovery ends.
///
/// `dbrestore --pitr` without `--start` (or a server replaying for hours) reads its WAL through
/// `wal-fetch` long after dbrestore exited, when no reader lock is held any more; a nightly prune
/// would delete that WAL (and the base backup) under it. The hold lives beside the lock records,
/// `locks/holds/<id>.json`, and is deleted by the server's `recovery_end_command`
/// (`dbrestore wal-release <id>`), by hand (`dbprune --release-hold <id>`), or by the run that
/// wrote it when that run fails before the data directory is prepared. A hold older than
/// `[prune] hold_expiry` protects nothing any more (dbprune warns of it on every run before).
public struct RecoveryHold: Codable, Sendable, Equatable {
    /// `<time>-<8 hex>`: sorts by creation, and is all the release needs.
    public var id: String
    /// The base backup the recovery was prepared from.
    public var backupID: String
    /// Every backup it needs: the chain of an incremental, full backup first (just `backupID` otherwise).
    public var backups: [String]
    /// The timelines recovery follows, from the base backup's on (a switch adds the next).
    public var timelines: [UInt32]
    /// The first WAL segment recovery reads (the base backup's first); all after it on `timelines` are held.
    public var firstSegment: String
    /// The recovery target, as the plan said it (`time 2024-01-15 10:00:00+00`, `the end of the archived WAL`).
    public var target: String
    /// Where the recovery was prepared: host and data directory.
    public var host: String
    public var dataDirectory: String
    public var createdAt: Date
    /// Who wrote it (`dbrestore --pitr`), for messages.
    public var command: String

    /// `id` nil: a new one, made of `createdAt`.
    public init(id: String? = nil, backupID: String, backups: [String], timelines: [UInt32], firstSegment: String,
                target: String, host: String = ProcessInfo.processInfo.hostName, dataDirectory: String, createdAt: Date = Date(),
                command: String = "dbrestore --pitr") {
        // Whole seconds: the time reads back exactly as written, so every message names the same one.
        let createdAt = Date(timeIntervalSinceReferenceDate: createdAt.timeIntervalSinceReferenceDate.rounded(.down))
        self.id = id ?? Self.newID(at: createdAt)
        self.backupID = backupID
        self.backups = backups
        self.timelines = timelines
        self.firstSegment = firstSegment
        self.target = target
        self.host = host
        self.dataDirectory = dataDirectory
        self.createdAt = createdAt
        self.command = command
    }

    /// "the recovery prepared at db2:/srv/pg/restored at 2026-11-27T02:00:00.000Z": how every message names it.
    public var preparedBy: String { "the recovery prepared at \(host):\(dataDirectory) at \(Timestamp.format(createdAt))" }

    /// A new id: the creation time (sorts) and 8 random hex digits (unique).
    public static func newID(at date: Date = Date()) -> String {
        Timestamp.compact(date) + "-" + String(UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(8)).lowercased()
    }

    /// Whether `text` can be a hold id: letters, digits and `-` only, so an id typed by hand can
    /// never name a key outside `locks/holds/` (`../`).
    public static func isValidID(_ text: String) -> Bool {
        !text.isEmpty && text.count <= 64 && text.allSatisfy { ($0.isASCII && ($0.isLetter || $0.isNumber)) || $0 == "-" }
    }

    // MARK: - In the repository

    /// Folder of the hold records.
    public static let prefix = "locks/holds/"

    public static func key(of id: String) -> String { prefix + id + ".json" }

    /// The id a record's key names (what `--release-hold` takes).
    public static func id(ofKey key: String) -> String { String(key.dropFirst(prefix.count).dropLast(".json".count)) }

    /// One record found under `locks/holds/`: the hold, or why it could not be read.
    public struct Stored: Sendable {
        public var key: String
        public var hold: RecoveryHold?
        /// When the object was last written (for an unreadable record's age).
        public var modified: Date?
        /// The id its key names (what `--release-hold` takes).
        public var id: String { RecoveryHold.id(ofKey: key) }
    }

    /// Writes this hold (create-if-absent: a retry after a lost reply finds its own record).
    ///
    /// - Throws: `StorageError` when it cannot be written (read-only repository, full disk).
    public func write(to store: BackupStore) throws {
        _ = try store.create(Self.key(of: id), contents: try Self.encode(self))
    }

    /// Every hold record in the repository, oldest first. A record that vanished since the listing
    /// (released meanwhile) is left out; one that cannot be decoded is returned with `hold` nil.
    ///
    /// - Throws: `StorageError` when the folder cannot be listed or a record not read.
    public static func all(in store: BackupStore) throws -> [Stored] {
        var found: [Stored] = []
        for object in try store.list(prefix: prefix) where object.key.hasSuffix(".json") {
            let data: Data
            do {
                data = try store.read(object.key)
            } catch let error as StorageError where error.kind == .notFound {
                continue
            }
            found.append(Stored(key: object.key, hold: decode(data), modified: object.modified))
        }
        return found.sorted { $0.key < $1.key }
    }

    /// Deletes the hold `id`; false when there was none (already released).
    ///
    /// - Throws: `StorageError` when the delete fails.
    @discardableResult
    public static func release(_ id: String, in store: BackupStore) throws -> Bool {
        let key = key(of: id)
        do {
            _ = try store.readVersioned(key)
        } catch let error as StorageError where error.kind == .notFound {
            return false
        }
        try store.delete([key])
        return true
    }

    static func encode(_ hold: RecoveryHold) throws -> Data {
        let encoder = JSONEncoder()
        // As Timestamp.format writes it, as every message names the hold's time.
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(Timestamp.format(date))
        }
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        return try encoder.encode(hold)
    }

    public static func decode(_ data: Data) -> RecoveryHold? {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let container = try decoder.singleValueContainer()
            let text = try container.decode(String.self)
            guard let date = Timestamp.parse(text) else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "not an ISO 8601 time: \(text)")
            }
            return date
        }
        return try? decoder.decode(RecoveryHold.self, from: data)
    }
}
