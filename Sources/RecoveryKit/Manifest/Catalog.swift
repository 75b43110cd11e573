import BackupStorage
import Foundation
import ProcessSignals

/// The backups in one repository, read from their manifests.
public struct Catalog {
    /// One backup folder that has a manifest: either a readable manifest or the reason it is not.
    public struct Entry: Sendable {
        public let id: String
        public let manifest: BackupManifest?
        /// Why the manifest could not be used (garbage JSON, unknown version, archived).
        public let problem: String?
        /// Whether the manifest is in an archive storage class (S3 GLACIER): readable once restored.
        public var archived = false
    }

    public let store: BackupStore

    public init(store: BackupStore) {
        self.store = store
    }

    /// Every backup folder with a manifest, newest first. Folders without one are in-progress or
    /// garbage and are not listed.
    ///
    /// - Throws: `StorageError` if the repository cannot be listed.
    public func entries() throws -> [Entry] {
        let objects = try store.list(prefix: "backups/")
        var entries: [Entry] = []
        for object in objects {
            let parts = object.key.split(separator: "/")
            guard parts.count == 3, parts[2] == Substring(BackupManifest.fileName) else { continue }
            let id = String(parts[1])
            // Only what dbbackup made: a folder whose name is no backup id (`cp -r ID ID.bak`, an
            // operator's notes) is not a backup, whatever it holds; dbprune lists it "not ours, left alone".
            guard BackupID.isValid(id) else { continue }
            do {
                let manifest = try BackupManifest.decode(try store.read(object.key), source: object.key)
                entries.append(Entry(id: id, manifest: manifest, problem: nil))
            } catch let error as RecoveryError {
                entries.append(Entry(id: id, manifest: nil, problem: error.message))
            } catch let error as StorageError where error.kind == .notFound {
                // Deleted (dbprune) between the listing and the read: the backup no longer exists,
                // exactly as if the listing had come a moment later.
                continue
            } catch let error as StorageError where error.kind == .archived {
                // Moved to GLACIER by a bucket lifecycle rule of the operator's own: that backup cannot be
                // read until it is restored from the archive, and the others are not held up by it.
                entries.append(Entry(id: id, manifest: nil, problem: "its manifest is in \(object.storageClass ?? "GLACIER") (a bucket lifecycle rule moved it): "
                                     + "\(error.description)", archived: true))
            }
        }
        return entries.sorted { $0.id > $1.id }
    }

    /// The manifest of backup `id`, read by a run that has just registered as its reader (restore,
    /// verify); nil once the backup is gone. A `dbprune` that looked for readers before we registered
    /// may be deleting it right now: it deletes the manifest first, looks for readers again, sees us
    /// and puts it back. So a missing manifest whose data is still there is read again for a few
    /// seconds; one whose data is gone too was pruned.
    ///
    /// - Throws: `RecoveryError(.backupCorrupt)` when it does not decode; the store's other errors.
    public func manifestAsReader(_ id: String) throws -> BackupManifest? {
        let folder = "backups/\(id)"
        let key = folder + "/" + BackupManifest.fileName
        var attempt = 0
        while true {
            do {
                return try BackupManifest.decode(try store.read(key), source: key)
            } catch let error as StorageError where error.kind == .notFound {
                if attempt >= 10 || Interruption.isRequested { return nil }
                if try store.list(prefix: folder + "/").isEmpty { return nil }
                attempt += 1
                usleep(300_000)
            }
        }
    }

    /// Readable manifests, newest first.
    public func manifests() throws -> [BackupManifest] {
        try entries().compactMap(\.manifest)
    }

    /// Finds one backup by `latest`, a full id or an unambiguous id prefix.
    ///
    /// - Throws: `RecoveryError(.backupNotFound)` suggesting the nearest ids, or
    ///   `.backupCorrupt` if that backup's manifest is unreadable.
    public func resolve(_ reference: String) throws -> BackupManifest {
        let all = try entries()
        guard !all.isEmpty else {
            if reference != "latest", let pruning = beingDeleted(reference) { throw pruning }
            throw RecoveryError(.backupNotFound, "repository \(store.location) holds no backups",
                                hint: MisplacedRepository.hint(for: store) ?? "take one with: dbbackup --repo \(store.location)")
        }
        let chosen: Entry
        if reference == "latest" {
            guard let newest = all.first(where: { $0.manifest != nil }) else {
                throw RecoveryError(.backupCorrupt, "no backup in \(store.location) has a readable manifest")
            }
            chosen = newest
        } else if let exact = all.first(where: { $0.id == reference }) {
            chosen = exact
        } else {
            let matches = all.filter { $0.id.hasPrefix(reference) }
            if matches.count == 1 {
                chosen = matches[0]
            } else if matches.count > 1 {
                throw RecoveryError(.backupNotFound, "backup id '\(reference)' is ambiguous: \(matches.prefix(5).map(\.id).joined(separator: ", "))",
                                    hint: "give more characters of the id")
            } else {
                if let pruning = beingDeleted(reference) { throw pruning }
                let nearest = all.map(\.id).sorted { Self.distance($0, reference) < Self.distance($1, reference) }.prefix(3)
                throw RecoveryError(.backupNotFound, "no backup '\(reference)' in \(store.location)",
                                    hint: "nearest ids: \(nearest.joined(separator: ", ")); dbrestore list shows all")
            }
        }
        guard let manifest = chosen.manifest else {
            throw RecoveryError(.backupCorrupt, "backup \(chosen.id): \(chosen.problem ?? "manifest unreadable")")
        }
        return manifest
    }

    /// The error for an id (or unique prefix) whose manifest waits in `pruning/`: a prune is deleting
    /// that backup, or was stopped midway (`PendingDeletes`); nil when there is no such record.
    private func beingDeleted(_ reference: String) -> RecoveryError? {
        guard let records = try? store.list(prefix: PendingDeletes.prefix + reference).filter({ $0.key.hasSuffix(".json") }),
              records.count == 1, let record = records.first else { return nil }
        let id = String(record.key.dropFirst(PendingDeletes.prefix.count).dropLast(".json".count))
        return RecoveryError(.backupNotFound, "backup \(id) in \(store.location) is being deleted by dbprune (its manifest waits in \(record.key))",
                             hint: "if no dbprune runs now, the last one was stopped midway: dbprune --dry-run shows whether the next run puts it back (a reader or a rule keeps it) or finishes deleting it")
    }

    /// Finds one backup like `resolve`, except that `latest` is the newest logical backup of
    /// `database` (its name's bytes: `isSameDatabaseName`) from the server `ServerScope` takes: a
    /// repository may hold several databases' backups, one name's from several servers, and physical
    /// base backups, and the newest of those is not the database's newest.
    ///
    /// - Parameter targetSystem: the target server's system identifier (nil: none, or unknown).
    /// - Throws: `RecoveryError(.backupNotFound)` naming what the repository holds instead (`Holdings`),
    ///   or the servers when several servers' backups of the database qualify (`ServerScope`).
    public func resolve(_ reference: String, database: String, targetSystem: String? = nil) throws -> BackupManifest {
        guard reference == "latest" else { return try resolve(reference) }
        let all = try entries()
        let manifests = all.compactMap(\.manifest)
        let scope = try ServerScope.of(database, among: manifests, target: targetSystem, location: store.location)
        if let newest = manifests.first(where: { $0.kind == .logical && $0.database.name.isSameDatabaseName(as: database) && scope.admits($0) }) {
            return newest
        }
        guard !all.isEmpty else { return try resolve(reference) }   // says the repository is empty
        let holdings = Holdings(all.compactMap(\.manifest), besides: database)
        throw RecoveryError(.backupNotFound, "no logical backup of database \(database) in \(store.location)" + holdings.clause,
                            hint: "name the backup to use by its id (dbrestore list shows each backup's database)")
    }

    /// Finds one backup for a command that has no target database of its own (`dbrestore contents`,
    /// `dbverify --files`): `latest` is the newest logical backup of `database` when one is named
    /// (`--from-database`), else of the only database the repository holds logical backups of. In a
    /// repository shared by several databases `latest` alone does not say whose, and the newest
    /// backup of any of them is another database's as often as not: refused, naming the databases.
    /// A repository with no logical backup at all resolves `latest` to its newest backup (a base
    /// backup: the caller says what it can do with one).
    ///
    /// - Throws: `RecoveryError(.usage)` naming the databases when `latest` is ambiguous; what
    ///   `resolve(_:database:)` throws.
    public func resolve(_ reference: String, namedDatabase database: String?) throws -> BackupManifest {
        if let database {
            let manifest = try resolve(reference, database: database)
            try Self.refuseContradiction(of: manifest, fromDatabase: database)
            return manifest
        }
        guard reference == "latest" else { return try resolve(reference) }
        // Names by their bytes: NFC and NFD `café` are two databases (`DatabaseNameKey`).
        let logical = try manifests().filter { $0.kind == .logical }
        let databases: [String] = Set(logical.map { DatabaseNameKey($0.database.name) }).sorted().map { $0.name }
        if databases.count == 1, let only = databases.first { return try resolve(reference, database: only) }
        guard databases.count > 1 else { return try resolve(reference) }
        throw RecoveryError(.usage, "repository \(store.location) holds logical backups of \(databases.count) databases "
                            + "(\(databases.joined(separator: ", "))): 'latest' does not say whose",
                            hint: "name the database: --from-database \(databases[0]) (or \(databases.dropFirst().joined(separator: ", "))), "
                                + "or the backup's id (dbrestore list shows each backup's database)")
    }

    /// Refuses `--from-database NAME` with a backup named by its id that is another database's
    /// logical backup: the operator said two things, and checking, listing or restoring either one
    /// would quietly do what the other did not mean. (A base backup holds every database: no contradiction.)
    ///
    /// - Throws: `RecoveryError(.usage)` naming both databases.
    public static func refuseContradiction(of manifest: BackupManifest, fromDatabase: String?) throws {
        guard let from = fromDatabase, manifest.kind == .logical, !manifest.database.name.isSameDatabaseName(as: from) else { return }
        throw RecoveryError(.usage, "backup \(manifest.id) is of database \(ShellWord.quoted(manifest.database.name)), not \(ShellWord.quoted(from)) as --from-database says",
                            hint: "drop --from-database (a backup named by its id needs none), or name a backup of \(ShellWord.quoted(from)): dbrestore list --from-database \(ShellWord.quoted(from))")
    }

    /// What a repository holds besides the logical backups of one database, for the messages that
    /// say why none of that database's was found.
    public struct Holdings: Sendable {
        /// Logical backups of other databases, by database name.
        public var otherDatabases: [String: Int] = [:]
        /// Physical base backups (of any server).
        public var physical = 0

        public init(_ manifests: [BackupManifest], besides database: String) {
            for manifest in manifests {
                if manifest.kind == .physical {
                    physical += 1
                } else if !manifest.database.name.isSameDatabaseName(as: database) {
                    otherDatabases[manifest.database.name, default: 0] += 1
                }
            }
        }

        /// `; it holds 10 logical backups of database app and 1 physical base backup`, or "" when nothing else.
        public var clause: String {
            var parts = otherDatabases.sorted { $0.key < $1.key }.map { "\($0.value) logical backup\($0.value == 1 ? "" : "s") of database \($0.key)" }
            if physical > 0 { parts.append("\(physical) physical base backup\(physical == 1 ? "" : "s")") }
            return parts.isEmpty ? "" : "; it holds " + parts.joined(separator: ", ")
        }
    }

    /// Levenshtein distance, for suggesting ids (and option spellings) after a typo.
    public static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty { return b.count }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in stride(from: 1, through: b.count, by: 1) {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
}

extension BackupManifest {
    /// How a base backup's database is shown (`dbrestore list`, `dbverify --files`, the metrics'
    /// `database` label): it holds every database of its server.
    public static let wholeServer = "(all)"

    /// Whose backup this is, as listings show it: the database of a logical backup, `(all)` for a base backup.
    public var shownDatabase: String { kind == .physical ? Self.wholeServer : database.name }
}
