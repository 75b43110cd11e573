import BackupStorage
import Foundation
import Gzip
import PostgresClient
import ProcessSignals

/// Streams a child program's stdout through gzip into one repository object: the one path every
/// capture (pg_dump, pg_basebackup) takes, with sha256 and sizes computed on the way.
enum StreamCapture {
    /// Runs the program and stores its output under `key`.
    ///
    /// - Important: the object becomes visible only if the program succeeded and the store committed it.
    ///   An interruption (SIGINT, SIGTERM, SIGHUP) stops the program and aborts the partial object.
    /// - Parameters:
    ///   - lockWait: for pg_dump: the target and `--lock-wait`, to name the session that blocked it
    ///     when it gave up waiting for a table lock.
    ///   - contents: for pg_dump: builds the dump's table of contents from the stream, with access
    ///     points into the compressed stream every `contents.accessPointInterval` bytes.
    ///   - splice: for pg_dump: puts the tables' entries the backup copied itself into its output.
    ///   - layout: gzip layout of the stored object (`GzipCompressor.Layout`).
    ///   - segments: records the compressor's access points with each segment's sha256 (the dump's
    ///     table of contents brings its own; pg_basebackup's base backup index passes one).
    /// - Returns: the file entry for the manifest and the program's stderr (its last 16 KiB).
    /// - Throws: `RecoveryError(.toolFailed)` with the program's own message, `RecoveryError(.lockTimeout)`,
    ///   `InterruptedError`, or the store's error.
    static func run(executable: String, arguments: [String], environment: [String: String], targets: CaptureTargets, key storeKey: String,
                    level: Int, jobs: Int, layout: GzipCompressor.Layout = .singleMember, key: RepositoryKey? = nil, progress: ProgressObserver?, phase: String, estimate: UInt64? = nil,
                    lockWait: (target: ConnectionTarget, seconds: Int)? = nil,
                    observe: ((UnsafeRawBufferPointer) -> Void)? = nil, contents: DumpContentsBuilder? = nil,
                    splice: DataSectionSplicer? = nil, segments: SegmentDigests? = nil,
                    beforeCommit: () throws -> Void = {}) throws -> (BackupManifest.File, String) {
        try targets.openWriters(storeKey)
        var committed = false
        var committing = false
        defer {
            if !committed {
                targets.abort()
                // A signal that cut the final request (the single PUT, CompleteMultipartUpload) may have come after
                // the server had the whole object: remove it, so that no data without a manifest is left to prune.
                if committing && Interruption.isRequested { targets.delete([storeKey]) }
                if Interruption.isRequested { CleanupLog.cleaned("removed the partial \(storeKey)") }
            }
        }

        let child = try ChildProcess(executable: executable, arguments: arguments, environment: environment,
                                     stdin: .null, stdout: .pipe, stderr: .pipe)
        let errors = OutputCollector(descriptor: child.standardError)
        let name = (executable as NSString).lastPathComponent
        let upload = try CompressedUpload(targets: targets, storeKey: storeKey, level: level, jobs: jobs, layout: layout, key: key,
                                          segments: segments ?? contents?.segments)
        // What goes into the stored object: the program's output, with the tables' own entries spliced in.
        let deliver = { (chunk: UnsafeRawBufferPointer) throws in
            observe?(chunk)
            contents?.write(chunk)
            try upload.write(chunk)
            progress?.progress(phase: phase, bytes: upload.compressor.bytesIn, total: estimate, estimated: true)
        }
        // A dump cut short by pg_dump's own failure has no place for the entries: pg_dump's error is the one to report.
        var spliceFailure: Error?
        do {
            try PipeReader.forEachChunk(of: child.standardOutput, description: "\(name) output") { chunk in
                if let splice { try splice.write(chunk, to: deliver) } else { try deliver(chunk) }
            }
            do { try splice?.finish(to: deliver) } catch { spliceFailure = error }
            if spliceFailure == nil { try upload.finish() }
        } catch {
            child.send(SIGTERM)
            child.waitForExit()
            progress?.finished()
            throw error
        }
        let termination = child.waitForExit()
        progress?.finished()
        // A child stopped by our forwarded SIGTERM ends like a failure (or, at worst, like a short stream).
        try Interruption.check()
        guard termination.succeeded else {
            let reason = errors.mostRelevantLine() ?? "no message"
            if let lockWait, let relation = lockWaitFailure(errors.finish()) {
                let blockers = LockBlockers.describe(target: lockWait.target).map { "; \($0)" } ?? "; the blocking session has ended since"
                throw RecoveryError(.lockTimeout, "\(name) waited longer than --lock-wait (\(lockWait.seconds) s) for a lock on \(relation)\(blockers)",
                                    hint: "end or wait for the session named (SELECT pg_terminate_backend(pid) ends it), or raise --lock-wait; nothing was stored")
            }
            // A missing privilege is the server's refusal, exit 11 as for our own statements (pg_dump
            // is the first to read each table now that row counts come from its output).
            if Self.privilegeFailure(errors.finish()) {
                let grant = reason.contains("large object")
                    ? "grant the role dbbackup connects as SELECT on the large object named (GRANT SELECT ON LARGE OBJECT <oid> TO <role>)"
                    : "grant the role dbbackup connects as SELECT on the table named (pg_dump reads every table)"
                throw RecoveryError(.databaseError, "\(name) \(termination.description): \(reason)",
                                    hint: grant + ", or back up as a role that can; nothing was stored")
            }
            throw RecoveryError(.toolFailed, "\(name) \(termination.description): \(reason)",
                                hint: "fix the cause above and run dbbackup again; nothing was stored")
        }
        if let spliceFailure { throw spliceFailure }
        try beforeCommit()
        try Interruption.check()
        committing = true
        try targets.commit()
        committed = true
        return (upload.file, errors.finish())
    }

    /// Stores a small object (a table of contents) as the capture stores its data: gzip, the
    /// repository cipher when there is a key, sha256 and sizes for the manifest.
    ///
    /// - Throws: the store's error; then nothing is left under `storeKey`.
    static func store(_ bytes: Data, targets: CaptureTargets, key storeKey: String, level: Int, key: RepositoryKey?) throws -> BackupManifest.File {
        try targets.openWriters(storeKey)
        do {
            let upload = try CompressedUpload(targets: targets, storeKey: storeKey, level: level, jobs: 1, key: key, segments: nil)
            try bytes.withUnsafeBytes { try upload.write($0) }
            try upload.finish()
            try targets.commit()
            return upload.file
        } catch {
            targets.abort()
            // As in `run`: a signal may have cut a final PUT the server had already taken.
            if Interruption.isRequested { targets.delete([storeKey]) }
            throw error
        }
    }

    /// Whether pg_dump stopped on the server's refusal of a privilege (`ERROR:  permission denied for table …`).
    static func privilegeFailure(_ stderr: String) -> Bool {
        stderr.contains("ERROR:  permission denied")
    }

    /// The table pg_dump gave up locking (`--lock-wait-timeout` runs its LOCK TABLE under a
    /// statement_timeout), from its stderr; nil when it failed for another reason.
    static func lockWaitFailure(_ stderr: String) -> String? {
        let timedOut = stderr.contains("canceling statement due to statement timeout") || stderr.contains("canceling statement due to lock timeout")
            || stderr.contains("could not obtain lock on relation")
        guard timedOut else { return nil }
        if let start = stderr.range(of: "LOCK TABLE ") {
            let relation = stderr[start.upperBound...].prefix { $0 != " " && $0 != "\n" }
            if !relation.isEmpty { return String(relation) }
        }
        if let start = stderr.range(of: "could not obtain lock on relation \"") {
            let relation = stderr[start.upperBound...].prefix { $0 != "\"" }
            if !relation.isEmpty { return String(relation) }
        }
        return "a table"
    }
}

/// Bytes on their way into the repositories: gzip, then the repository cipher when there is a
/// key, with the sha256 and sizes the manifest records. The one write pipeline of every capture.
private final class CompressedUpload {
    let compressor: GzipCompressor
    private let encryptor: StreamEncryptor?
    private let digest: DigestBox
    private let name: String
    private let level: Int
    private let keyFingerprint: String?

    /// The digest and size of the stored bytes, shared with the sink closures.
    private final class DigestBox {
        var digest = StreamingDigest()
        var storedBytes: UInt64 = 0
    }

    init(targets: CaptureTargets, storeKey: String, level: Int, jobs: Int, layout: GzipCompressor.Layout = .singleMember, key: RepositoryKey?,
         segments: SegmentDigests?) throws {
        let digest = DigestBox()
        let store = { (chunk: UnsafeRawBufferPointer) throws in
            digest.digest.update(chunk)
            digest.storedBytes += UInt64(chunk.count)
            try targets.write(chunk)
        }
        // Compressed bytes go to the stores directly, or through the repository cipher first.
        let encryptor = try key.map { try StreamEncryptor(key: $0, object: storeKey, sink: store) }
        compressor = try GzipCompressor(level: level, jobs: jobs, layout: layout, accessPointInterval: segments?.interval ?? 0,
                                        onAccessPoint: segments.map { segments in { segments.accessPoint($0) } }) { chunk in
            segments?.compressed(chunk)
            if let encryptor { try encryptor.write(chunk) } else { try store(chunk) }
        }
        self.encryptor = encryptor
        self.digest = digest
        name = (storeKey as NSString).lastPathComponent
        self.level = level
        keyFingerprint = key?.fingerprint
    }

    func write(_ chunk: UnsafeRawBufferPointer) throws {
        try compressor.write(chunk)
    }

    func finish() throws {
        try compressor.finish()
        try encryptor?.finish()
    }

    /// The manifest's entry for what was stored.
    var file: BackupManifest.File {
        var file = BackupManifest.File(name: name, rawBytes: compressor.bytesIn, storedBytes: digest.storedBytes, sha256: digest.digest.hexDigest(),
                                       compression: "gzip", compressionLevel: level)
        file.encryptionKeyFingerprint = keyFingerprint
        return file
    }
}
