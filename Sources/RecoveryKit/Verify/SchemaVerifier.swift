import Foundation
import PostgresClient

/// Schema verification: fingerprints a database as `pg_dump --schema-only` sees it and compares
/// it with the fingerprint a backup recorded in its own snapshot.
///
/// Used three ways: by `dbbackup` (in the exported snapshot, next to the data dump), by every
/// logical restore before the swap (a difference refuses it), and by `dbverify --schema`.
public enum SchemaVerifier {
    /// The comparison of one database with one backup's fingerprint.
    public struct Report: Codable, Sendable {
        public var backupID: String
        public var database: String
        /// True when no object differs.
        public var ok: Bool
        public var expectedObjects: Int
        public var actualObjects: Int
        /// Objects missing, extra or changed, by type, schema and name.
        public var differences: [SchemaFingerprint.Difference]
        /// Set when the backup's fingerprint was made by another pg_dump or server version, which may
        /// write the same schema differently.
        public var versionNote: String?
        /// Across majors (a restore into a newer one): objects whose server-rendered text differs
        /// (a view body, an index definition), not counted as differences (see `PostgresMajor.serverRenderedObjectTypes`).
        public var renderedDifferently: [SchemaFingerprint.Difference]? = nil
        /// The database the backup was taken of (`dbverify --schema`: said when it is not `database`).
        public var backupDatabase: String? = nil

        /// One line naming the first few differences, e.g. `index users_email in schema public is missing`.
        public var summary: String {
            if ok {
                guard let rendered = renderedDifferently, !rendered.isEmpty else { return "all \(actualObjects) schema objects match" }
                return "all \(actualObjects) schema objects are there; \(rendered.count) written differently by the newer server: "
                    + rendered.prefix(3).map { SchemaFingerprint.Object(type: $0.type, schema: $0.schema, name: $0.name, sha256: "").label }.joined(separator: ", ")
                    + (rendered.count > 3 ? " and \(rendered.count - 3) more" : "")
            }
            let more = differences.count > 3 ? " and \(differences.count - 3) more" : ""
            return differences.prefix(3).map(\.description).joined(separator: "; ") + more
        }
    }

    // MARK: - Entry points

    /// Fingerprints the schema of the database `target` names.
    ///
    /// - Parameters:
    ///   - pgDump: the pg_dump program.
    ///   - target: the database; its password travels in the child's environment, never in argv.
    ///   - snapshot: an exported snapshot to dump in (a backup's), or nil for the database as it is now.
    /// - Throws: `RecoveryError(.toolFailed)` with pg_dump's own message.
    public static func fingerprint(pgDump: String, target: ConnectionTarget, snapshot: String? = nil) throws -> SchemaFingerprint {
        try SchemaDump(pgDump: pgDump, target: target, snapshot: snapshot).finish()
    }

    /// Checks a restored scratch database against the backup before the swap; a backup without a
    /// fingerprint (taken before dbbackup recorded one) is let through with a warning on the timeline.
    ///
    /// - Important: a difference throws, and the caller drops the scratch database: the target is untouched.
    /// - Returns: the comparison, or nil when the backup has no fingerprint.
    /// - Throws: `RecoveryError(.restoreFailed)` naming the differing objects (each also noted on the
    ///   timeline); `RecoveryError(.toolFailed)` when pg_dump fails.
    @discardableResult
    public static func verifyRestore(_ manifest: BackupManifest, scratch: ConnectionTarget, server: PostgresMajor, tools: PostgresTools,
                                     timeline: Timeline) throws -> Report? {
        guard let expected = manifest.schemaFingerprint else {
            timeline.note("warning: schema of \(scratch.databaseName) not verified",
                          outcome: "backup \(manifest.id) has no schema fingerprint (taken before dbbackup recorded one)")
            return nil
        }
        return try timeline.step("verify schema of \(scratch.databaseName) (\(expected.objects.count) objects) against backup \(manifest.id)") {
            try RestoreFaultHook.breakScratch(scratch)
            let actual = try fingerprint(pgDump: try pgDump(for: server, expected: expected, tools: tools).path, target: scratch)
            let report = compare(expected: expected, actual: actual, backupID: manifest.id, database: scratch.databaseName)
            guard report.ok else {
                for difference in report.differences.prefix(100) {
                    timeline.note("schema difference", outcome: difference.description)
                }
                throw RecoveryError(.restoreFailed, "restored schema does not match backup \(manifest.id): \(report.summary)",
                                    hint: "the target database was not touched; try an older backup"
                                        + (report.versionNote.map { " (\($0))" } ?? ""))
            }
            for difference in report.renderedDifferently ?? [] {
                timeline.note("schema across majors", outcome: "\(difference.description) as the newer server writes it (tolerated)")
            }
            return report
        }
    }

    /// `dbverify --schema`: compares the live database `target` with one backup's fingerprint.
    ///
    /// - Parameters:
    ///   - backup: an id, prefix or `latest` (nil means `latest`: the newest logical backup of
    ///     `target`'s database, or of `fromDatabase`).
    ///   - fromDatabase: `--from-database`: whose newest backup `latest` is, when not the target's.
    /// - Throws: `RecoveryError(.backupNotFound)` when the backup has no fingerprint; repository,
    ///   database and pg_dump errors.
    public static func verify(repository: String, backup: String?, fromDatabase: String? = nil, target: ConnectionTarget, tools: PostgresTools,
                              environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Report {
        let store = try Repository.open(repository, create: false, environment: environment)
        // Connect first, so that an unreachable server or wrong password gets its own exit code and
        // hint, and `latest` of a name backed up from several servers is this server's own (`ServerScope`).
        let connection = try PostgresConnection(target: target, applicationName: "dbverify")
        let server = PostgresMajor(serverVersionNumber: connection.serverVersionNumber)
        let targetSystem = ServerScope.systemIdentifier(of: connection)
        connection.close()
        // `latest` is the target database's newest backup, not another database's in a shared repository.
        let manifest = try Catalog(store: store).resolve(backup ?? "latest", database: fromDatabase ?? target.databaseName, targetSystem: targetSystem)
        try Catalog.refuseContradiction(of: manifest, fromDatabase: fromDatabase)
        guard let expected = manifest.schemaFingerprint else {
            throw RecoveryError(.backupNotFound, manifest.kind == .physical
                                    ? "backup \(manifest.id) is a physical backup; only logical backups record a schema fingerprint"
                                    : "backup \(manifest.id) has no schema fingerprint (taken before dbbackup recorded one)",
                                hint: "name a logical backup taken by this dbbackup version (dbrestore list shows them)")
        }
        let actual = try fingerprint(pgDump: try pgDump(for: server, expected: expected, tools: tools).path, target: target)
        var report = compare(expected: expected, actual: actual, backupID: manifest.id, database: target.databaseName)
        report.backupDatabase = manifest.database.name
        return report
    }

    /// The pg_dump to fingerprint a database with: of the server's major or newer, and no older than
    /// the pg_dump that made the backup's fingerprint (which objects a pg_dump writes depends on its
    /// own major: 15 and later write the `public` schema of a 14 server, 14 does not), its major preferred.
    ///
    /// - Throws: `RecoveryError(.toolFailed)` when none fits.
    public static func pgDump(for server: PostgresMajor, expected: SchemaFingerprint?, tools: PostgresTools) throws -> PostgresProgram {
        let made = expected?.pgDumpVersion.flatMap(PostgresMajor.init(versionText:))
        return try tools.program("pg_dump", for: max(server, made ?? server), fit: .sameOrNewer)
    }

    /// The pure comparison (unit-tested without a server).
    public static func compare(expected: SchemaFingerprint, actual: SchemaFingerprint, backupID: String, database: String) -> Report {
        var differences = expected.differences(from: actual)
        var rendered: [SchemaFingerprint.Difference]?
        if let was = expected.serverVersion.flatMap(PostgresMajor.init(versionText:)),
           let now = actual.serverVersion.flatMap(PostgresMajor.init(versionText:)), was < now {
            let tolerated = { (difference: SchemaFingerprint.Difference) in
                difference.change == .changed && PostgresMajor.serverRenderedObjectTypes.contains(difference.type)
            }
            rendered = differences.filter(tolerated)
            differences.removeAll(where: tolerated)
        }
        var note: String?
        let versions = [(expected.pgDumpVersion, actual.pgDumpVersion, "pg_dump"), (expected.serverVersion, actual.serverVersion, "server")]
        if let (was, now, what) = versions.first(where: { $0.0 != nil && $0.1 != nil && $0.0 != $0.1 }) {
            note = "the backup's fingerprint was taken with \(what) \(was ?? "?"), this one with \(now ?? "?"); some differences may be how they write the same schema"
        }
        return Report(backupID: backupID, database: database, ok: differences.isEmpty, expectedObjects: expected.objects.count,
                      actualObjects: actual.objects.count, differences: differences, versionNote: note,
                      renderedDifferently: rendered.flatMap { $0.isEmpty ? nil : $0 })
    }
}
