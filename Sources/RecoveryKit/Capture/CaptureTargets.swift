import BackupStorage
import Foundation
import PostgresClient
import ProcessSignals

/// The repositories one capture writes to: one stream, compressed once, fanned out to each.
///
/// A repository that fails (cannot be locked, a write, the commit, the manifest) is dropped and its
/// upload aborted; the others go on. Each gets its own manifest, written only after its own copy
/// is complete, naming the other repositories that hold the backup.
final class CaptureTargets {
    struct Target {
        let address: String
        let store: BackupStore
        var lock: RepositoryLock?
        var writer: ObjectWriter?
        var failure: RecoveryError?
    }

    private(set) var targets: [Target] = []

    /// Opens and locks every repository.
    ///
    /// - Throws: the first repository's error when none can be used.
    init(addresses: [String], command: String, environment: [String: String], lockWait: TimeInterval = 0) throws {
        var firstError: Error?
        for address in addresses {
            do {
                let store = try Repository.open(address, create: true, environment: environment)
                let lock = try store.lock(holder: LockHolder(command: command), wait: lockWait)
                for note in lock.notes { TextSink.standardError.write("\(address): \(note)\n") }
                targets.append(Target(address: address, store: store, lock: lock))
            } catch {
                firstError = firstError ?? error
                if addresses.count == 1 { throw error }
                targets.append(Target(address: address, store: FailedStore(address: address), failure: RecoveryError.classify(error)))
            }
        }
        if live.isEmpty, let firstError { throw firstError }
    }

    deinit { releaseLocks() }

    var live: [Int] { targets.indices.filter { targets[$0].failure == nil } }
    /// The repositories still in the run, with their stores.
    var liveStores: [(address: String, store: BackupStore)] { live.map { (targets[$0].address, targets[$0].store) } }
    var succeeded: [String] { live.map { targets[$0].address } }
    var failures: [(address: String, error: RecoveryError)] {
        targets.compactMap { target in target.failure.map { (target.address, $0) } }
    }

    /// Opens a writer for `key` in every live repository.
    func openWriters(_ key: String) throws {
        for index in live {
            do { targets[index].writer = try targets[index].store.makeWriter(key) } catch { fail(index, error) }
        }
        try requireOne()
    }

    /// Writes one chunk to every live repository.
    func write(_ chunk: UnsafeRawBufferPointer) throws {
        for index in live {
            do { try targets[index].writer?.write(chunk) } catch { fail(index, error) }
        }
        try requireOne()
    }

    /// Commits every live writer.
    func commit() throws {
        for index in live {
            do { try targets[index].writer?.commit() } catch { fail(index, error) }
            targets[index].writer = nil
        }
        try requireOne()
    }

    /// Aborts every open writer (the capture failed).
    func abort() {
        for index in targets.indices {
            abortWriter(index)
        }
    }

    /// Deletes `keys` everywhere they were committed (a capture that failed after committing data).
    func delete(_ keys: [String]) {
        for index in live { try? targets[index].store.delete(keys) }
        deleteFromFailed(keys)
    }

    /// Deletes `keys` from the repositories that failed after they were committed there (a disk
    /// full at a second file): without a manifest they would be garbage. A repository that could
    /// not be opened has nothing to delete.
    func deleteFromFailed(_ keys: [String]) {
        for index in targets.indices where targets[index].failure != nil {
            try? targets[index].store.delete(keys)
        }
    }

    /// Writes each live repository's manifest, naming the others that hold the backup.
    func writeManifests(_ manifest: BackupManifest) throws {
        for index in live {
            var copy = manifest
            let others = succeeded.filter { $0 != targets[index].address }
            copy.otherRepositories = others.isEmpty ? nil : others
            let key = "\(manifest.folderKey)/\(BackupManifest.fileName)"
            let contents = try copy.encoded()
            do {
                try targets[index].store.write(key, contents: contents)
            } catch {
                // Every answer lost (a connection cut after the server took the write): the manifest may
                // be stored all the same, and then the backup is complete; deleting its data would
                // destroy a good backup and leave a manifest of missing files.
                if targets[index].store.holds(key, contents: contents) {
                    TextSink.standardError.write("warning: \(targets[index].address): writing the manifest reported a failure (\(RecoveryError.classify(error).message)), but it is stored as written: backup \(manifest.id) is complete\n")
                    continue
                }
                // Without its manifest the data is garbage (a disk full here): remove it now, not a day later.
                // The manifest key first: a write that landed unseen must never name deleted data.
                do { try targets[index].store.delete([key] + manifest.files.map { manifest.key(of: $0) }) } catch let cleanup {
                    TextSink.standardError.write("warning: \(targets[index].address): the data of the failed backup was left: \(cleanup)\n")
                }
                fail(index, error)
            }
        }
        try requireOne()
    }

    func releaseLocks() {
        for index in targets.indices {
            // Reported, not dropped: a lock left behind blocks (or misleads) the next run.
            do { try targets[index].lock?.release() } catch {
                TextSink.standardError.write("warning: \(targets[index].address): the repository lock was not released: \(error)\n")
            }
            targets[index].lock = nil
        }
    }

    /// Aborts one writer; a failed abort is reported, not dropped (the next writer lock removes it).
    private func abortWriter(_ index: Int) {
        do { try targets[index].writer?.abort() } catch {
            TextSink.standardError.write("warning: \(targets[index].address): \(error)\n")
        }
        targets[index].writer = nil
    }

    private func fail(_ index: Int, _ error: Error) {
        abortWriter(index)
        targets[index].failure = RecoveryError.classify(error)
    }

    private func requireOne() throws {
        if live.isEmpty, let first = targets.first?.failure {
            throw targets.count == 1 ? first : RecoveryError(first.code, "every repository failed: " + failures.map { "\($0.address): \($0.error.message)" }.joined(separator: "; "), hint: first.hint)
        }
    }
}

/// Stands in for a repository that could not be opened, so the list of targets stays complete.
private final class FailedStore: BackupStore {
    let location: String
    init(address: String) { location = address }
    var features: StoreFeatures { [] }
    let reads = RepositoryReads()
    private func unavailable() -> StorageError { StorageError(.io, object: location, message: "repository unavailable") }
    func list(prefix: String) throws -> [StoredObject] { throw unavailable() }
    func read(_ key: String) throws -> Data { throw unavailable() }
    func write(_ key: String, contents: Data) throws { throw unavailable() }
    func makeWriter(_ key: String) throws -> ObjectWriter { throw unavailable() }
    func makeReader(_ key: String) throws -> ObjectReader { throw unavailable() }
    func makeReader(_ key: String, range: Range<UInt64>) throws -> ObjectReader { throw unavailable() }
    func delete(_ keys: [String]) throws { throw unavailable() }
    func changeStorageClass(_ key: String, to storageClass: String) throws { throw unavailable() }
    func create(_ key: String, contents: Data) throws -> Bool { throw unavailable() }
    func readVersioned(_ key: String) throws -> VersionedObject { throw unavailable() }
    func delete(_ key: String, ifVersion version: String) throws -> Bool { throw unavailable() }
    func removeLeftovers(before cutoff: Date) throws -> [String] { throw unavailable() }
}

/// The outcome of a capture to one or more repositories.
public struct CaptureResult: Sendable {
    public var manifest: BackupManifest
    /// Repositories that hold the backup.
    public var stored: [String]
    /// Repositories that failed, with why.
    public var failed: [(address: String, error: RecoveryError)]
}

/// What every capture opens first and closes last: its repositories, locked; the backup's id, from
/// the moment it started; and a session on the server.
final class CaptureSession {
    let targets: CaptureTargets
    let startedAt: Date
    let id: String
    let connection: PostgresConnection
    private let tools: PostgresTools

    /// Checks the configuration, then locks every repository, connects, and checks that the role may
    /// take the backup (`BackupPrivileges`).
    ///
    /// - Parameters:
    ///   - command: what the repository lock names as its holder (`dbbackup --physical`).
    ///   - physical: a base backup (it needs REPLICATION as well).
    init(_ configuration: CaptureConfiguration, command: String, physical: Bool) throws {
        try configuration.validate()
        targets = try CaptureTargets(addresses: configuration.repositories, command: command, environment: configuration.environment,
                                     lockWait: configuration.repositoryLockWaitSeconds)
        startedAt = Date()
        id = BackupID.make(at: startedAt)
        do {
            connection = try PostgresConnection(target: configuration.target, applicationName: "dbbackup")
        } catch {
            targets.releaseLocks()
            throw error
        }
        tools = configuration.tools
        do {
            try BackupPrivileges.require(on: connection, physical: physical)
        } catch {
            close()
            throw error
        }
    }

    /// The client program `name` for the server's major, as `fit` asks (pg_dump: that major or newer;
    /// pg_basebackup: that very major).
    func program(_ name: String, fit: PostgresMajor.Fit) throws -> PostgresProgram {
        try tools.program(name, for: PostgresMajor(serverVersionNumber: connection.serverVersionNumber), fit: fit)
    }

    /// Closes the session, then releases the locks (saying so after a signal, where the clean-up log
    /// lists what an interrupted run put right).
    func close() {
        connection.close()
        targets.releaseLocks()
        if Interruption.isRequested { CleanupLog.cleaned("released the repository lock") }
    }
}
