import BackupStorage
import Foundation
import Gzip

/// Streams a child program's stdout through gzip into one repository object: the one path every
/// capture (pg_dump, pg_basebackup) takes, with sha256 and sizes computed on the way.
enum StreamCapture {
    /// Runs the program and stores its output under `key`.
    ///
    /// - Important: the object becomes visible only if the program succeeded and the store committed it.
    /// - Returns: the file entry for the manifest and the program's stderr (its last 16 KiB).
    /// - Throws: `RecoveryError(.toolFailed)` with the program's own message, or the store's error.
    static func run(executable: String, arguments: [String], environment: [String: String], targets: CaptureTargets, key storeKey: String,
                    level: Int, jobs: Int, key: RepositoryKey? = nil, progress: ProgressObserver?, phase: String,
                    observe: ((UnsafeRawBufferPointer) -> Void)? = nil, beforeCommit: () throws -> Void = {}) throws -> (BackupManifest.File, String) {
        try targets.openWriters(storeKey)
        var committed = false
        defer { if !committed { targets.abort() } }

        let child = try ChildProcess(executable: executable, arguments: arguments, environment: environment,
                                     stdin: .null, stdout: .pipe, stderr: .pipe)
        let errors = OutputCollector(descriptor: child.standardError)
        let name = (executable as NSString).lastPathComponent
        var digest = StreamingDigest()
        var storedBytes: UInt64 = 0
        let store = { (chunk: UnsafeRawBufferPointer) throws in
            digest.update(chunk)
            storedBytes += UInt64(chunk.count)
            try targets.write(chunk)
        }
        // Compressed bytes go to the stores directly, or through the repository cipher first.
        let encryptor = try key.map { try StreamEncryptor(key: $0, object: storeKey, sink: store) }
        let compressor = try GzipCompressor(level: level, jobs: jobs) { chunk in
            if let encryptor { try encryptor.write(chunk) } else { try store(chunk) }
        }
        do {
            try PipeReader.forEachChunk(of: child.standardOutput, description: "\(name) output") { chunk in
                observe?(chunk)
                try compressor.write(chunk)
                progress?.progress(phase: phase, bytes: compressor.bytesIn)
            }
            try compressor.finish()
            try encryptor?.finish()
        } catch {
            child.send(SIGTERM)
            child.waitForExit()
            progress?.finished()
            throw error
        }
        let termination = child.waitForExit()
        progress?.finished()
        guard termination.succeeded else {
            let reason = errors.mostRelevantLine() ?? "no message"
            throw RecoveryError(.toolFailed, "\(name) \(termination.description): \(reason)",
                                hint: "fix the cause above and run dbbackup again; nothing was stored")
        }
        try beforeCommit()
        try targets.commit()
        committed = true
        var file = BackupManifest.File(name: (storeKey as NSString).lastPathComponent, rawBytes: compressor.bytesIn,
                                       storedBytes: storedBytes, sha256: digest.hexDigest(), compression: "gzip", compressionLevel: level)
        file.encryptionKeyFingerprint = key?.fingerprint
        return (file, errors.finish())
    }
}
