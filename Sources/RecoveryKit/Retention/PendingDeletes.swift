import BackupStorage
import Foundation

/// A copy of the manifest of each backup `dbprune` is deleting, kept at `pruning/<id>.json` from
/// before the manifest is deleted until the backup's data is gone or its manifest is back.
///
/// Why: a prune deletes a manifest, then looks for readers again and puts it back for one that
/// arrived. If that put-back does not land (S3 failing every attempt, the run killed or stopped
/// between the two), the backup's files would be left without a manifest: invisible to list and
/// restore while a restore reads them, then deleted as garbage. With this copy the next prune
/// undoes the half-done delete (`repair`) and plans that backup again, readers and all.
enum PendingDeletes {
    static let prefix = "pruning/"

    static func key(of id: String) -> String { prefix + id + ".json" }

    /// Records that backup `id` (its manifest `contents`) is about to be deleted.
    ///
    /// - Throws: `StorageError`; then nothing has been deleted yet.
    static func record(_ id: String, manifest contents: Data, in store: BackupStore) throws {
        try store.write(key(of: id), contents: contents)
    }

    /// Forgets the record once the backup is gone or whole again. A record that cannot be removed
    /// now is harmless: the next prune finds the manifest back (or the files gone) and removes it.
    static func forget(_ id: String, in store: BackupStore) -> String? {
        do {
            try store.delete([key(of: id)])
            return nil
        } catch {
            return "warning: the record \(key(of: id)) was not removed (\(RecoveryError.classify(error).message)); the next dbprune removes it"
        }
    }

    /// Writes a deleted manifest back (`why` says what the backup is kept for, in the error). A write whose every answer was lost may have landed all the
    /// same: it is read back, as the capture path reads back its manifest.
    ///
    /// - Returns: a warning when the write reported a failure but the manifest is stored as written.
    /// - Throws: `RecoveryError(.repositoryError)` when it is not stored; the record stays, so the
    ///   next prune puts it back.
    static func putBack(_ id: String, manifest contents: Data, in store: BackupStore, why: String) throws -> String? {
        let manifestKey = "backups/\(id)/\(BackupManifest.fileName)"
        do {
            try store.write(manifestKey, contents: contents)
            return nil
        } catch {
            let failure = RecoveryError.classify(error).message
            if store.holds(manifestKey, contents: contents) {
                return "warning: putting back the manifest of backup \(id) reported a failure (\(failure)), but it is stored as written: the backup is whole"
            }
            throw RecoveryError(.repositoryError,
                                "the manifest of backup \(id) (\(why)) could not be put back: \(failure); its files are untouched",
                                hint: "run dbprune again once the repository answers: it puts the manifest back from \(key(of: id)) before anything else")
        }
    }

    /// What `repair` did or (in a dry run) would do.
    struct Repair {
        var notes: [String] = []
        /// Folders whose manifest a dry run would put back (not garbage).
        var restorable: Set<String> = []
        /// The manifests a dry run would put back: planned as if they were (the real run plans them so).
        var wouldPutBack: [BackupManifest] = []
        /// Folders a stopped prune had begun deleting: garbage now, whatever their age (no backup is
        /// being written into them).
        var halfDeleted: Set<String> = []
    }

    /// Finishes what stopped prunes left (run under the writer lock, before the catalog is read): a
    /// backup whose manifest is gone but whose files are all there (same names and sizes) gets its
    /// manifest back and is planned again like any other; one whose files are partly deleted stays
    /// garbage, never a half backup. Each record is then removed.
    ///
    /// - Throws: `StorageError` when the repository cannot be read; `RecoveryError` when a manifest
    ///   cannot be put back.
    static func repair(in store: BackupStore, dryRun: Bool) throws -> Repair {
        var repair = Repair()
        let records = try store.list(prefix: prefix).filter { $0.key.hasSuffix(".json") }
        guard !records.isEmpty else { return repair }
        let objects = try store.list(prefix: "backups/")
        let sizes = Dictionary(objects.map { ($0.key, $0.size) }, uniquingKeysWith: { first, _ in first })
        for record in records {
            let id = String(record.key.dropFirst(prefix.count).dropLast(".json".count))
            let contents = try store.read(record.key)
            guard let manifest = try? BackupManifest.decode(contents, source: record.key), manifest.id == id else {
                repair.notes.append("warning: \(record.key) is not the manifest of backup \(id); left for you to look at")
                continue
            }
            let manifestKey = manifest.folderKey + "/" + BackupManifest.fileName
            if sizes[manifestKey] == nil {
                let whole = manifest.files.allSatisfy { sizes[manifest.key(of: $0)] == $0.storedBytes }
                if whole {
                    repair.restorable.insert(manifest.folderKey)
                    if dryRun {
                        repair.notes.append("would put back the manifest of backup \(id): a stopped dbprune removed it and its files are whole")
                        repair.wouldPutBack.append(manifest)
                        continue
                    }
                    if let warning = try putBack(id, manifest: contents, in: store, why: "removed by a stopped dbprune") { repair.notes.append(warning) }
                    repair.notes.append("put back the manifest of backup \(id): a stopped dbprune removed it and its files are whole; planned again below")
                } else {
                    repair.halfDeleted.insert(manifest.folderKey)
                    repair.notes.append("backup \(id): a stopped dbprune had begun deleting its files; what is left is garbage\(dryRun ? " (would be deleted)" : ", deleted now")")
                }
            }
            if !dryRun, let warning = forget(id, in: store) { repair.notes.append(warning) }
        }
        return repair
    }
}
