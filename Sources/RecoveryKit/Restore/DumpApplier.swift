import BackupStorage
import Foundation
import Gzip
import PostgresClient
import ProcessSignals

/// Replays a logical backup's dump into a (scratch) database over several connections, the way
/// `pg_restore -j` does for custom-format archives, from the plain gzip stream, with the outcome
/// of `gunzip -c dump.sql.gz | psql` whatever `--jobs`:
///
/// 1. schema (everything before the first COPY) on one connection, in dump order;
/// 2. rows: each table's COPY data is cut into runs of about 1 MiB of whole rows, handed to
///    whichever of `jobs` connections has the least queued; each connection commits a table's
///    rows as it moves on. A table whose CHECK constraints (or domains, or generated columns) call
///    functions that could read other tables is loaded as psql loads it: after every table before
///    it is committed, on one connection, committed before any table after it starts;
/// 3. post-data (indexes, constraints, triggers, grants) in dump order, with runs of index and
///    primary-key/unique builds on different tables spread over the connections.
///
/// A backup with a table of contents is read in parts at once instead (`TableLanes`): each table's
/// rows whole on one connection, frozen as they load.
///
/// Every statement and COPY runs under the session settings in force where it stood in the dump
/// (`SessionSettings`), and the dump's bytes reach the server untouched.
enum DumpApplier {
    /// Streams `backups/<id>/dump.sql.gz` → sha256 + gunzip → parsed dump → `jobs` connections.
    ///
    /// - Returns: the rows the server reported for each table's COPYs, where they are exact counts.
    ///
    /// - Important: rows are committed in the target database as they load, and the stream's
    ///   sha256 is only known at its end; callers restore into a scratch database and drop it on
    ///   any failure, which is what keeps a damaged backup from being applied.
    /// - Throws: `RecoveryError` (`.backupCorrupt`, `.restoreFailed`) or `StorageError`.
    @discardableResult
    static func apply(_ manifest: BackupManifest, from store: BackupStore, into target: ConnectionTarget,
                      jobs: Int, maintenanceWorkMem: String, key: RepositoryKey?, progress: ProgressObserver?) throws -> LoadedRows {
        guard manifest.kind == .logical, let file = manifest.files.first(where: { $0.name == LogicalCapture.dumpFileName }) else {
            throw RecoveryError(.usage, "backup \(manifest.id) is a \(manifest.kind.rawValue) backup; a logical restore needs a logical one",
                                hint: "restore physical backups with dbrestore --pitr")
        }
        let loader = try ParallelLoader(target: target, jobs: max(1, jobs), backupID: manifest.id, maintenanceWorkMem: maintenanceWorkMem)
        defer { loader.abandon() }
        if let toc = try tableOfContents(of: manifest, from: store, key: key), DumpSegments.usable(file, toc: toc),
           let parts = TableLanes.Parts(toc, jobs: jobs) {
            return try TableLanes.apply(manifest, file: file, toc: toc, parts: parts, store: store, loader: loader, progress: progress)
        }
        let scanner = DumpScanner(backupID: manifest.id) { try loader.handle($0) }
        try StoredFileStream.decompress(file, of: manifest, from: store, key: key, phase: "restore", progress: progress) { plain in
            try scanner.write(plain)
        }
        try scanner.finish()
        return try loader.finish()
    }

    /// The files of a logical backup a full restore reads, each once: the dump, and its table of
    /// contents when the dump can be read in parts from it (unencrypted).
    static func filesRead(of manifest: BackupManifest) -> [BackupManifest.File] {
        guard let dump = manifest.files.first(where: { $0.name == LogicalCapture.dumpFileName }) else { return manifest.files }
        guard dump.encryptionKeyFingerprint == nil, let toc = manifest.files.first(where: { $0.name == DumpTableOfContents.fileName }),
              toc.encryptionKeyFingerprint == nil else { return [dump] }
        return [dump, toc]
    }

    /// The backup's table of contents, for reading its parts at once (`TableLanes`); nil when it has
    /// none, or an unreadable one: the whole stream is read instead, as for an older backup.
    private static func tableOfContents(of manifest: BackupManifest, from store: BackupStore, key: RepositoryKey?) throws -> DumpTableOfContents? {
        guard filesRead(of: manifest).contains(where: { $0.name == DumpTableOfContents.fileName }) else { return nil }
        do {
            return try DumpTableOfContents.load(of: manifest, from: store, key: key)
        } catch {
            if Interruption.isRequested { throw error }
            return nil
        }
    }

    /// A server error while replaying, as the operator reads it: which statement, what the server said.
    static func failure(_ error: Error, in sql: String, backupID: String) -> Error {
        guard let error = error as? PostgresError else { return error }
        let statement = sql.split(whereSeparator: \.isNewline).first.map { String($0.prefix(80)) } ?? ""
        let untouched = "nothing was applied; the target database is unchanged"
        // A session the server ended mid-COPY often leaves libpq only "server closed the connection
        // unexpectedly", without the SQLSTATE: a lost connection all the same (08006), never the backup's fault.
        let state = error.kind == .connection ? (error.sqlState ?? "08006") : error.sqlState
        let hint = RecoveryError.isServerTrouble(error) ? RecoveryError.serverTroubleHint(state ?? "", untouched: untouched) : untouched
        return RecoveryError(.restoreFailed, "replaying backup \(backupID) failed at `\(statement)`: \(error.message)",
                             hint: hint, serverState: state)
    }
}
