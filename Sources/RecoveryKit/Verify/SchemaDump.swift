import Foundation
import PostgresClient

/// One `pg_dump --schema-only` run, read into a `SchemaFingerprint` on a thread of its own, so a
/// backup can take it side by side with the data dump, in the same snapshot, and stop it when the
/// data dump fails instead of waiting for it (it may be queued behind a lock).
///
/// Its session pins the settings that change how pg_dump prints a schema (`pinnedSettings`, sent as
/// startup options). A connection pooler that refuses startup options (PgBouncer says `unsupported
/// startup parameter: options`) gets one more run without them: the fingerprint is then as the
/// server's own settings print it, which the restore's check, through the same pooler, sees alike.
///
/// `@unchecked Sendable`: `running` and `cancelled` are read and written only under `lock`, and a
/// child is reaped (its PID released) by the reading thread only after it has cleared `running`
/// under that lock, so `cancel()` never signals a PID that could belong to another process.
final class SchemaDump: @unchecked Sendable {
    private let lock = NSLock()
    /// The PID of the pg_dump being read, until the reading thread is about to reap it.
    private var running: pid_t?
    private var cancelled = false
    private var work: Background<SchemaFingerprint>?

    /// Settings that change how pg_dump writes one and the same schema, pinned for its session so that
    /// database- and role-level values (`ALTER DATABASE … SET`, restored separately, and after the check)
    /// and the server's own defaults do not show through: `standard_conforming_strings = off` turns '…'
    /// into E'…' strings, `quote_all_identifiers` quotes every name in view bodies, `TimeZone`,
    /// `bytea_output`, `lc_monetary`, `DateStyle`, `IntervalStyle` and `extra_float_digits` change how
    /// constants in defaults and view bodies are printed. Startup options win over those levels.
    static let pinnedSettings = ["standard_conforming_strings=on", "quote_all_identifiers=off", "TimeZone=UTC", "bytea_output=hex",
                                 "lc_monetary=C", "DateStyle=ISO", "IntervalStyle=postgres", "extra_float_digits=3"]
        .map { "-c " + $0 }.joined(separator: " ")

    /// What PgBouncer answers to startup options it was not told to ignore.
    static let refusedOptions = "unsupported startup parameter"

    /// Starts pg_dump.
    ///
    /// - Parameters:
    ///   - pgDump: the pg_dump program.
    ///   - target: the database; its password travels in the child's environment, never in argv.
    ///   - snapshot: an exported snapshot to dump in (a backup's), or nil for the database as it is now.
    /// - Throws: `RecoveryError(.toolFailed)` if pg_dump cannot be started.
    ///   - schemas: only these schemas (`--schema`, names matched exactly), or every schema when empty.
    ///   - rewrite: applied to the whole text before it is fingerprinted (held in memory then: only for
    ///     small dumps, a selective restore's staged copy); nil streams it.
    init(pgDump: String, target: ConnectionTarget, snapshot: String?, schemas: [String] = [], rewrite: (@Sendable ([UInt8]) -> [UInt8])? = nil) throws {
        let first = try Self.start(pgDump, target: target, snapshot: snapshot, schemas: schemas, pinned: true)
        running = first.pid
        work = Background { [self] in
            do {
                return try read(first, database: target.databaseName, rewrite: rewrite)
            } catch let refused as OptionsRefused {
                let second: ChildProcess? = try lock.withLock {
                    guard !cancelled else { return nil }
                    let child = try Self.start(pgDump, target: target, snapshot: snapshot, schemas: schemas, pinned: false)
                    running = child.pid
                    return child
                }
                guard let second else { throw refused.error }
                do {
                    return try read(second, database: target.databaseName, rewrite: rewrite)
                } catch let again as OptionsRefused {
                    throw again.error
                }
            }
        }
    }

    private static func start(_ pgDump: String, target: ConnectionTarget, snapshot: String?, schemas: [String], pinned: Bool) throws -> ChildProcess {
        var arguments = ["--schema-only", "--no-password"]
        if let snapshot { arguments.append("--snapshot=\(snapshot)") }
        // Double-quoted: pg_dump takes the name exactly, with no pattern characters.
        arguments += schemas.map { "--schema=" + QualifiedNames.quote($0) }
        // pg_dump writes in the database's own encoding unless told otherwise; a PGCLIENTENCODING in
        // the environment (or client_encoding in the URL) would make the same schema hash differently.
        var environment = target.childEnvironment
        environment.removeValue(forKey: "PGCLIENTENCODING")
        let options = ChildProcess.environment(adding: environment)["PGOPTIONS"]
        if let wait = lockWait(in: options) { arguments.append("--lock-wait-timeout=\(wait)") }
        if pinned {
            environment["PGOPTIONS"] = [options, pinnedSettings].compactMap { $0 }.joined(separator: " ")
        }
        return try ChildProcess(executable: pgDump, arguments: arguments, environment: environment,
                                removingEnvironment: ["PGCLIENTENCODING"], stdin: .null, stdout: .pipe, stderr: .pipe)
    }

    /// The `lock_timeout` in startup options (`-c lock_timeout=5s`), if any: pg_dump turns `lock_timeout`
    /// off for its own session, so a bound the operator (or the run) set would not reach its table
    /// locks unless it is passed as `--lock-wait-timeout`.
    static func lockWait(in options: String?) -> String? {
        guard let options, let range = options.range(of: #"lock_timeout=[^\s]+"#, options: .regularExpression) else { return nil }
        let value = options[range].dropFirst("lock_timeout=".count).trimmingCharacters(in: CharacterSet(charactersIn: "'\""))
        return value.isEmpty || value == "0" ? nil : value
    }

    /// Reads one pg_dump to its end (on the background thread) and reaps it.
    private func read(_ child: ChildProcess, database: String, rewrite: (@Sendable ([UInt8]) -> [UInt8])?) throws -> SchemaFingerprint {
        let errors = OutputCollector(descriptor: child.standardError)
        var normalizer = SchemaNormalizer()
        var whole: [UInt8] = []
        let read = Result {
            try PipeReader.forEachChunk(of: child.standardOutput, description: "pg_dump --schema-only output") {
                if rewrite == nil { normalizer.write($0) } else { whole.append(contentsOf: $0) }
            }
        }
        lock.withLock {
            if case .failure = read { kill(child.pid, SIGTERM) }
            running = nil
        }
        let termination = child.waitForExit()
        try read.get()
        if let rewrite { rewrite(whole).withUnsafeBytes { normalizer.write($0) } }
        guard termination.succeeded else {
            let error = RecoveryError(.toolFailed, "pg_dump --schema-only of \(database) \(termination.description): \(errors.mostRelevantLine() ?? "no message")",
                                      hint: "fix the cause above and run again")
            throw errors.finish().contains(Self.refusedOptions) ? OptionsRefused(error: error) : error
        }
        return normalizer.finish()
    }

    /// pg_dump could not connect because its startup options were refused (a connection pooler).
    private struct OptionsRefused: Error {
        let error: RecoveryError
    }

    /// Waits for pg_dump to finish and returns the fingerprint.
    ///
    /// - Throws: `RecoveryError(.toolFailed)` with pg_dump's own message, or the read error.
    func finish() throws -> SchemaFingerprint {
        guard let work else { throw RecoveryError(.failure, "schema dump was not started") }
        return try work.wait()
    }

    /// Stops pg_dump if it is still running and waits for the reading thread; its outcome is dropped
    /// (this is the clean-up path of a run that already failed).
    func cancel() {
        lock.withLock {
            cancelled = true
            if let running { kill(running, SIGTERM) }
        }
        work?.join()
    }
}
