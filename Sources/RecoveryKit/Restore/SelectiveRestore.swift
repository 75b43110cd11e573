import BackupStorage
import Crypto
import Foundation
import PostgresClient
import ProcessSignals

/// What a selective restore should do (`dbrestore <backup> --table … | --schema …`).
public struct SelectiveRestoreConfiguration {
    /// Where the restored objects go; never over live data without `--replace`.
    public enum Destination: Equatable, Sendable {
        /// A new schema of the live database (nil: `restored_<time>`).
        case intoSchema(String?)
        /// A new database, marked as the tool's.
        case intoDatabase(String)
        /// Replace the live tables, keeping each old one as `<table>_pre_restore_<time>`.
        case replace
    }

    public var target: ConnectionTarget
    public var repositories: [String]
    public var backup: String
    /// `--from-database`: `latest` is this database's newest backup instead of the target's (a
    /// repository may hold several databases' backups). A backup named by its id needs none.
    public var fromDatabase: String?
    /// `SCHEMA.NAME` patterns (`--table`); with `schemas`, at least one pattern must be given.
    public var tables: [String] = []
    /// Schema name patterns (`--schema`).
    public var schemas: [String] = []
    /// Where the objects go; by default, as without `--into-…`, a new schema `restored_<time>`.
    public var destination = Destination.intoSchema(nil)
    /// With `--replace`: go ahead although other objects depend on a table, re-pointing them, and report them.
    public var cascadeReport = false
    public var dryRun = false
    public var key: RepositoryKey? = nil
    /// `--pg-bin`: the pg_dump that fingerprints the copy `--replace` staged.
    public var tools = PostgresTools()
    /// `--lock-wait`: how long `--replace` waits for the live tables' locks. Short by default: while
    /// we wait for ACCESS EXCLUSIVE, every new reader of the table queues behind us.
    public var lockWaitSeconds = SelectiveRestoreConfiguration.defaultReplaceLockWaitSeconds
    public static let defaultReplaceLockWaitSeconds = 5
    /// Where S3 settings are read (flags and the config file, resolved by the command).
    public var environment = ProcessInfo.processInfo.environment

    /// Where from and where to; the selection (`tables`, `schemas`) and the destination are set on the value.
    public init(target: ConnectionTarget, repositories: [String], backup: String) {
        self.target = target
        self.repositories = repositories
        self.backup = backup
    }
}

/// What a selective restore will create, shown before it does it (`--dry-run`, `--json`).
public struct SelectiveRestorePlan: Codable, Sendable {
    public var backupID: String
    public var repository: String
    /// The database the backup was taken of (said in the plan when it is not `database`).
    public var backupDatabase: String? = nil
    public var database: String
    /// `into-schema`, `into-database` or `replace`.
    public var destination: String
    /// The schema (into-schema, replace: the staging schema) or database the objects are created in.
    public var createdIn: String
    public var tables: [String]
    /// Every SQL object that will be created: `KIND: tag in schema`, in the order they are.
    public var objects: [String]
    /// Foreign keys to tables outside the selection, not restored.
    public var foreignKeysLeftOut: [String]
    /// Rules of the selected tables left out of a rescue schema (they would act on live tables).
    public var rulesLeftOut: [String] = []
    /// Views outside the selection that read a selected table (not restored; listed).
    public var dependentViews: [String]
    /// Foreign keys of other tables that reference a selected table (not restored; listed).
    public var referencingForeignKeys: [String]
    /// `table-of-contents` or `full-scan`.
    public var contentsSource: String
    /// Bytes of the uncompressed dump the restore replays (of `dumpBytes`).
    public var replayBytes: UInt64
    public var dumpBytes: UInt64
    /// What is checked before the live tables are touched (`--replace`): row counts, and the copy's
    /// definition against the backup's schema fingerprint when it has one.
    public var checkedBeforeSwap: String? = nil

    /// The plan as text, for `--dry-run` and the prompt.
    public var lines: [String] {
        let whose = backupDatabase.map { $0 == database ? " of database \($0)" : " of database \($0), not of \(database) (named by its id, or --from-database)" } ?? ""
        var lines = ["backup: \(backupID)\(whose) (\(repository)); contents from its \(contentsSource == "full-scan" ? "dump (full scan: it has no table of contents)" : "table of contents")",
                     "tables: \(tables.joined(separator: ", "))",
                     "\(destination) → \(destination == "into-database" ? "new database" : "schema") \(createdIn) of \(destination == "into-database" ? "the server of \(database)" : "database \(database)")",
                     "replays \(ByteCount.format(replayBytes)) of the \(ByteCount.format(dumpBytes)) dump",
                     "SQL objects that would be created (\(objects.count)):"]
        lines += objects.map { "  " + $0 }
        if !foreignKeysLeftOut.isEmpty {
            lines.append("foreign keys to tables outside the selection, left out (add them by hand, or select those tables too):")
            lines += foreignKeysLeftOut.map { "  " + $0 }
        }
        if !rulesLeftOut.isEmpty {
            lines.append("rules left out (in a rescue schema they would act on the live tables; re-create them by hand if needed): \(rulesLeftOut.joined(separator: ", "))")
        }
        if let checkedBeforeSwap { lines.append("checked before the swap: \(checkedBeforeSwap)") }
        if !dependentViews.isEmpty { lines.append("views that read these tables (not restored): \(dependentViews.joined(separator: ", "))") }
        if !referencingForeignKeys.isEmpty { lines.append("foreign keys of other tables that reference these tables (not restored): \(referencingForeignKeys.joined(separator: ", "))") }
        return lines
    }
}

/// How a selective restore went.
public struct SelectiveRestoreReport: Codable, Sendable {
    public var plan: SelectiveRestorePlan
    public var verification: RowCountVerifier.Report
    /// `--replace`: the staged copy's definition compared with the backup's schema fingerprint
    /// (nil: not replaced, or the backup has none).
    public var definition: SchemaVerifier.Report? = nil
    /// `--replace`: live table → the name it is kept under.
    public var keptAs: [String: String]
    /// `--replace`: the live tables' indexes, owned sequences and statistics renamed aside
    /// (`index sales.orders_pkey → orders_pkey_pre_restore_<time>`), shortened ones marked.
    public var renamedAside: [String]
    /// Objects re-pointed at the restored tables (`--replace --cascade-report`).
    public var repointed: [String]
    /// `--replace`: what the swap changed besides names so that the live database keeps working (the
    /// kept copies' keys into live tables dropped, sequences moved on to the live values), and live
    /// columns the backup's definition lacks (the restored table has none of them).
    public var adjusted: [String] = []
    /// `ranged` or `sequential (why)`, and how much was read and decompressed.
    public var read: DumpReadStatistics
    public var durationSeconds: Double
}

/// Restores chosen tables (or schemas) of a logical backup without replacing the database:
/// into a new schema of the live database, into a new database, or in place of the live tables.
///
/// The objects come from the dump itself (pg_dump's statements, bytes untouched except the schema
/// of the restored relations), found by the backup's table of contents; with access points only
/// the pre-data, the chosen tables' rows and the post-data are decompressed. `--into-schema` runs in
/// one transaction on the live database, committed only after the row counts match the manifest and
/// every byte read matched its checksum: a failure leaves the live database as it was. `--replace`
/// commits that staged copy (pg_dump must see it), checks its definition against the backup's schema
/// fingerprint (`StagedDefinitionCheck`), then swaps in a second transaction; a failure after the
/// first commit drops the staged schema again, the live tables untouched.
public enum SelectiveRestore {
    /// Resolves the backup and the selection; changes nothing.
    ///
    /// - Throws: `RecoveryError` (`.usage` for a name not in the backup, with the nearest names; `.backupNotFound`, `.backupCorrupt`).
    public static func plan(_ configuration: SelectiveRestoreConfiguration, timeline: Timeline? = nil) throws -> SelectiveRestorePlan {
        try prepare(configuration, timeline: timeline).plan
    }

    /// Everything `plan` resolves, kept for `execute`.
    struct Prepared {
        var plan: SelectiveRestorePlan
        var manifest: BackupManifest
        var store: BackupStore
        var toc: DumpTableOfContents
        var source: BackupContents.Source
        var selection: TableSelection
        var ranges: [Range<UInt64>]
    }

    static func prepare(_ configuration: SelectiveRestoreConfiguration, timeline: Timeline?) throws -> Prepared {
        guard !configuration.tables.isEmpty || !configuration.schemas.isEmpty else {
            throw RecoveryError(.usage, "a selective restore names no table and no schema", hint: "pass --table SCHEMA.NAME or --schema NAME")
        }
        var chosen: (String, BackupStore, BackupManifest)?
        var firstError: Error?
        // `latest` of a name backed up from several servers is the target server's own (`ServerScope`).
        let targetSystem = configuration.backup == "latest" ? ServerScope.systemIdentifier(at: configuration.target, applicationName: "dbrestore") : nil
        for address in configuration.repositories {
            do {
                let store = try Repository.open(address, create: false, environment: configuration.environment)
                // `latest`: the newest backup of the target database (or --from-database's), not another's in a shared repository.
                chosen = (address, store, try CandidateSelection.named(configuration.backup, fromDatabase: configuration.fromDatabase,
                                                                       into: configuration.target.databaseName, targetSystem: targetSystem, in: store))
                break
            } catch {
                firstError = firstError ?? error
            }
        }
        guard let (repository, store, manifest) = chosen else {
            throw firstError ?? RecoveryError(.usage, "no repository given", hint: "pass --repo or set BACKUP_REPO")
        }
        let (toc, source) = try step(timeline, "read the contents of backup \(manifest.id)") {
            try BackupContents.tableOfContents(of: manifest, from: store, key: configuration.key, progress: nil)
        }
        let intoDatabase: Bool
        if case .intoDatabase = configuration.destination { intoDatabase = true } else { intoDatabase = false }
        let isIntoSchema: Bool
        if case .intoSchema = configuration.destination { isIntoSchema = true } else { isIntoSchema = false }
        let selection = try TableSelection(toc: toc, tablePatterns: configuration.tables, schemaPatterns: configuration.schemas,
                                           supporting: intoDatabase, wholeSchemas: intoDatabase, outsideKeys: configuration.destination == .replace,
                                           rules: !isIntoSchema, exactTables: manifest.tables.map { .init(schema: $0.schema, name: $0.name) },
                                           backupID: manifest.id)
        if let refusal = selection.hierarchyRefusal(replace: configuration.destination == .replace, intoDatabase: intoDatabase, backupID: manifest.id) {
            throw refusal
        }
        let stamp = Timestamp.compact(Date(), separator: "_", zone: "")
        let createdIn: String
        switch configuration.destination {
        case .intoSchema(let name): createdIn = name ?? "restored_\(stamp)"
        case .intoDatabase(let name): createdIn = name
        case .replace: createdIn = "restored_\(stamp)"
        }
        if !intoDatabase, let refusal = selection.oneSchemaRefusal(into: createdIn, replace: configuration.destination == .replace, backupID: manifest.id) {
            throw refusal
        }
        var ranges: [Range<UInt64>] = [0..<toc.preambleEnd]
        for entry in selection.entries {
            if let last = ranges.last, last.upperBound == entry.start {
                ranges[ranges.count - 1] = last.lowerBound..<entry.end
            } else {
                ranges.append(entry.start..<entry.end)
            }
        }
        let rows = Dictionary(manifest.tables.map { (DumpTableOfContents.Name(schema: $0.schema, name: $0.name), $0.rows) }, uniquingKeysWith: { a, _ in a })
        let objects = selection.entries.map { entry -> String in
            let schema = intoDatabase ? entry.schema : entry.schema.map { _ in createdIn }
            var line = "\(entry.kind): \(entry.name)" + (schema.map { " in \($0)" } ?? "")
            if entry.kind == "TABLE DATA", let schema = entry.schema, let count = rows[.init(schema: schema, name: entry.name)] { line += " (\(count) rows)" }
            return line
        }
        func described(_ entry: DumpTableOfContents.Entry) -> String {
            "\(entry.kind): \(entry.name)" + (entry.schema.map { " in \($0)" } ?? "")
                + ((entry.references?.isEmpty ?? true) || !entry.kind.contains("FK") ? "" : " → \(entry.references?.map(\.qualified).joined(separator: ", ") ?? "")")
        }
        let destination: String
        switch configuration.destination {
        case .intoSchema: destination = "into-schema"
        case .intoDatabase: destination = "into-database"
        case .replace: destination = "replace"
        }
        var plan = SelectiveRestorePlan(
            backupID: manifest.id, repository: repository, database: configuration.target.databaseName, destination: destination, createdIn: createdIn,
            tables: selection.tables.map(\.qualified), objects: objects, foreignKeysLeftOut: selection.leftOutForeignKeys.map(described),
            dependentViews: selection.dependentViews.map { DumpTableOfContents.Name(schema: $0.schema ?? "", name: $0.name).qualified },
            referencingForeignKeys: selection.referencingForeignKeys.map(described), contentsSource: source.rawValue,
            replayBytes: ranges.reduce(0) { $0 + ($1.upperBound - $1.lowerBound) }, dumpBytes: toc.dumpBytes)
        plan.rulesLeftOut = selection.leftOutRules.map(described)
        plan.backupDatabase = manifest.database.name
        if configuration.destination == .replace {
            plan.checkedBeforeSwap = manifest.schemaFingerprint == nil
                ? "row counts only (backup \(manifest.id) has no schema fingerprint to check the definition against)"
                : "row counts, and the restored copy's definition (columns, types, defaults, constraints, indexes, triggers, comments, grants) against the backup's schema fingerprint"
        }
        return Prepared(plan: plan, manifest: manifest, store: store, toc: toc, source: source, selection: selection, ranges: ranges)
    }

    /// Restores the selection as planned.
    ///
    /// - Throws: `RecoveryError`; the live database is then as it was (and a new database is dropped).
    public static func execute(_ configuration: SelectiveRestoreConfiguration, timeline: Timeline, progress: ProgressObserver?) throws -> SelectiveRestoreReport {
        let started = Date()
        let prepared = try prepare(configuration, timeline: timeline)
        let store = prepared.store
        // A reader lock: dbprune leaves the backup alone while it is read.
        let reading = try StoreLock.sharedIfWritable(in: store, backupID: prepared.manifest.id, holder: LockHolder(command: "dbrestore"))
        defer { try? reading?.release() }   // a leftover reader record only delays pruning; dbprune removes it once we are gone
        let manifest = try Catalog(store: store).resolve(prepared.manifest.id).unsealed(with: configuration.key)
        var keptAs: [String: String] = [:]
        var repointed: [String] = []
        var renamed: [String] = []
        var adjusted: [String] = []
        var definition: SchemaVerifier.Report?
        let statistics: DumpReadStatistics
        let verification: RowCountVerifier.Report
        switch configuration.destination {
        case .intoDatabase(let name):
            (statistics, verification) = try restoreIntoDatabase(name, prepared, manifest: manifest, configuration, timeline: timeline, progress: progress)
        case .intoSchema, .replace:
            let target = configuration.target
            let loader = try LoaderConnection(target: target, backupID: manifest.id,
                                              maintenanceWorkMem: LoaderConnection.maintenanceWorkMem(in: configuration.environment),
                                              lockWaitSeconds: configuration.lockWaitSeconds)
            defer { loader.close() }
            let connection = loader.connection
            try StagingSchemas.dropLeftovers(on: connection, timeline: timeline)
            // The loader's settings suit a private scratch database; this is the live one.
            try connection.execute(script: "RESET synchronous_commit; BEGIN")
            var committed = false
            defer { if !committed { _ = try? connection.execute(script: "ROLLBACK") } }
            let schema = prepared.plan.createdIn
            try timeline.step("create schema \(schema) in \(target.databaseName)") {
                guard try connection.query("SELECT 1 FROM pg_namespace WHERE nspname = $1", [schema]).rows.isEmpty else {
                    throw RecoveryError(.usage, "schema \(schema) already exists in \(target.databaseName); nothing was changed",
                                        hint: "name a new schema with --into-schema NAME, or drop that one first")
                }
                let note = configuration.destination == .replace ? try StagingSchemas.comment(backup: manifest.id)
                    : "dbrecovery: restored from backup \(manifest.id) at \(Timestamp.format(Date()))"
                try connection.execute(script: "CREATE SCHEMA \(QualifiedNames.quote(schema)); COMMENT ON SCHEMA \(QualifiedNames.quote(schema)) IS \(SQLText.literal(note))")
            }
            let moving = prepared.selection.moved
            statistics = try timeline.step("replay \(prepared.plan.tables.count) table(s) of backup \(manifest.id) into schema \(schema) (\(ByteCount.format(prepared.plan.replayBytes)) of the dump)") {
                try replay(prepared, manifest: manifest, key: configuration.key, on: loader, progress: progress) { sql in
                    try refuseLineBreakNames(in: sql, backupID: manifest.id)
                    return QualifiedNames.rewrite(sql, moving: moving, to: schema)
                }
            }
            verification = try timeline.step("verify row counts of \(prepared.selection.tables.count) table(s)") {
                try verify(prepared.selection.tables, in: { _ in schema }, manifest: manifest, on: connection)
            }
            try refuseStrayRelations(outside: schema, on: connection)
            try connection.execute(script: "COMMIT")
            committed = true
            CrashPoint.reached("replace:after-staging")
            if configuration.destination == .replace {
                // pg_dump sees committed objects only: the staged copy is committed (next to the live
                // tables, which are not touched yet), checked, and dropped again if the swap does not happen.
                var swapped = false
                defer {
                    if !swapped {
                        _ = try? connection.execute(script: "ROLLBACK")
                        do {
                            try loader.limitLockWaits()  // the ROLLBACK undid a SET made in its transaction
                            try connection.execute(script: "DROP SCHEMA \(QualifiedNames.quote(schema)) CASCADE")
                            timeline.note("drop the staged copy", outcome: "dropped schema \(schema); the live tables were not touched")
                        } catch {
                            timeline.note("drop the staged copy", outcome: "failed: \(RecoveryError.classify(error).message); drop it by hand: DROP SCHEMA \(QualifiedNames.quote(schema)) CASCADE")
                        }
                    }
                }
                definition = try StagedDefinitionCheck.verify(prepared.selection, staged: schema, manifest: manifest, target: target,
                                                              server: PostgresMajor(serverVersionNumber: connection.serverVersionNumber),
                                                              tools: configuration.tools, timeline: timeline)
                (keptAs, repointed, renamed, adjusted) = try timeline.step("replace \(prepared.plan.tables.joined(separator: ", ")) in one transaction") {
                    // The swap is one transaction: a deadlock the server broke by aborting it left nothing
                    // changed, so it is run again (as psql users would), a few times.
                    try ServerRetry.run(on: [PostgresError.deadlockDetected], attempts: 4, pause: 0.2, again: { attempt, error in
                        _ = try? connection.execute(script: "ROLLBACK")
                        timeline.note("replace: attempt \(attempt) ended in a deadlock the server broke (\((error as? PostgresError)?.detail ?? "\(error)"))",
                                      outcome: "nothing was changed; trying again")
                    }) {
                        try connection.execute(script: "BEGIN")
                        let done = try replace(prepared.selection, staged: schema, configuration, on: connection)
                        try connection.execute(script: "COMMIT")
                        return done
                    }
                }
                swapped = true
            }
        }
        return SelectiveRestoreReport(plan: prepared.plan, verification: verification, definition: definition, keptAs: keptAs, renamedAside: renamed, repointed: repointed,
                                      adjusted: adjusted,
                                      read: statistics, durationSeconds: Date().timeIntervalSince(started))
    }

    // MARK: - Steps

    /// Replays the chosen parts of the dump on `loader`, each statement rewritten by `rewrite`,
    /// under the session settings psql would have in force there.
    static func replay(_ prepared: Prepared, manifest: BackupManifest, key: RepositoryKey?, on loader: LoaderConnection, progress: ProgressObserver?,
                       rewrite: @escaping ([UInt8]) throws -> [UInt8]) throws -> DumpReadStatistics {
        let scanner = DumpScanner(backupID: manifest.id) { event in
            switch event {
            case .statement(let statement):
                try loader.run(.init(sql: rewrite(statement.sql), settings: statement.settings))
            case .copyStart(let statement):
                try loader.beginCopy(.init(sql: rewrite(statement.sql), settings: statement.settings))
            case .copyRows(let rows):
                try loader.connection.putCopyData(rows)
            case .copyEnd:
                do { _ = try loader.connection.endCopy() } catch {
                    throw DumpApplier.failure(error, in: "COPY", backupID: manifest.id)
                }
            }
        }
        // The settings that stood in the parts skipped are replayed before the next part read, in order.
        let settings = prepared.toc.settings
        var nextSetting = 0
        var expected: UInt64 = 0
        let statistics = try DumpRangeReader.read(prepared.ranges, of: manifest, toc: prepared.source == .tableOfContents ? prepared.toc : nil,
                                                  from: prepared.store, key: key, progress: progress) { offset, bytes in
            if offset != expected {
                while nextSetting < settings.count, settings[nextSetting].offset < offset {
                    if settings[nextSetting].offset >= expected, let sql = Data(base64Encoded: settings[nextSetting].sql) {
                        try (Array(sql) + Array(";\n".utf8)).withUnsafeBytes { try scanner.write($0) }
                    }
                    nextSetting += 1
                }
            }
            try scanner.write(bytes)
            expected = offset + UInt64(bytes.count)
            while nextSetting < settings.count, settings[nextSetting].offset < expected { nextSetting += 1 }
        }
        try scanner.finish()
        return statistics
    }

    /// Refuses a statement that names a relation whose schema or name has a line break, before it runs
    /// in the live database. The selection knows such a name only by its header form (pg_dump writes
    /// the break as a space there), so the rewrite into the rescue (or staging) schema would not move
    /// it and the statement would create or load it in the live schema. The selection refuses the tables
    /// it knows of (`TableSelection`); this is for the rest (a sequence, an index's table, a schema).
    ///
    /// - Throws: `RecoveryError(.usage)`; the restore's transaction is then rolled back, nothing changed.
    static func refuseLineBreakNames(in sql: [UInt8], backupID: String) throws {
        guard let reference = QualifiedNames.references(in: sql).first(where: { $0.parts.prefix(2).contains(where: TableSelection.hasLineBreak) }) else { return }
        let name = DumpTableOfContents.Name(schema: reference.parts[0], name: reference.parts[1])
        let form = DumpTableOfContents.Name(schema: TableSelection.headerForm(name.schema), name: TableSelection.headerForm(name.name))
        throw RecoveryError(.usage, "backup \(backupID) names \(TableSelection.shown(name)), with a line break, which pg_dump's headers (what a selective restore reads) "
                                + "show as \(form.qualified): a restore into a schema of the live database cannot move it by that name; nothing was changed",
                            hint: "restore the selection --into-database NAME, or the whole backup into a new database (dbrestore \(backupID) --database-url postgresql://…/NEWDB)")
    }

    /// Last check before the rescue (or staging) schema is committed: no relation outside `schema`
    /// was created or altered by the restore's transaction (its `pg_class` row written by it), other
    /// than the live tables a staged copy's foreign keys reference (their key triggers). Whatever
    /// escaped the rewrite into `schema` is refused here rather than committed into the live schema.
    ///
    /// - Throws: `RecoveryError(.restoreFailed)` naming the relations; the transaction is then rolled back.
    static func refuseStrayRelations(outside schema: String, on connection: PostgresConnection) throws {
        let stray = try connection.query("""
            SELECT c.oid::pg_catalog.regclass::text FROM pg_catalog.pg_class c
            WHERE c.xmin::text::bigint = pg_catalog.pg_current_xact_id()::text::bigint % 4294967296
              AND c.relnamespace <> $1::regnamespace AND c.relnamespace <> 'pg_toast'::regnamespace
              AND c.oid NOT IN (SELECT k.confrelid FROM pg_catalog.pg_constraint k WHERE k.connamespace = $1::regnamespace AND k.contype = 'f')
            ORDER BY 1
            """, [QualifiedNames.quote(schema)]).rows.compactMap { $0[0] ?? nil }
        guard !stray.isEmpty else { return }
        throw RecoveryError(.restoreFailed, "the restore created or changed \(stray.prefix(5).joined(separator: ", ")) outside schema \(QualifiedNames.display(schema)) "
                                + "of \(connection.target.databaseName): its statements did not all move into that schema; nothing was changed (rolled back)",
                            hint: "restore the selection --into-database NAME instead, and report this with the names above")
    }

    /// Counts the restored tables (where `schema(table)` says they are now) against the manifest.
    ///
    /// - Throws: `RecoveryError(.verificationMismatch)` when a count differs.
    static func verify(_ tables: [DumpTableOfContents.Name], in schema: (DumpTableOfContents.Name) -> String, manifest: BackupManifest,
                       on connection: PostgresConnection) throws -> RowCountVerifier.Report {
        let wanted = Set(tables)   // (schema, name) pairs: "a.b"."c" and "a"."b.c" are two tables
        let expected = manifest.tables.filter { wanted.contains(.init(schema: $0.schema, name: $0.name)) }
        var actual: [BackupManifest.TableRowCount] = []
        for table in tables where expected.contains(where: { $0.schema == table.schema && $0.name == table.name }) {
            let count = try connection.query("SELECT count(*) FROM \(QualifiedNames.quote(schema(table))).\(QualifiedNames.quote(table.name))").scalar
            actual.append(.init(schema: table.schema, name: table.name, rows: Int64(count ?? "") ?? -1))
        }
        let report = RowCountVerifier.compare(expected: expected, actual: actual, backupID: manifest.id, database: connection.target.databaseName)
        guard report.ok else {
            throw RecoveryError(.verificationMismatch, "restored tables do not match backup \(manifest.id): \(report.summary); nothing was changed",
                                hint: "the backup may be damaged; try an older one")
        }
        return report
    }

    /// `--into-database`: a new database (marked as the tool's while it loads, dropped on failure).
    private static func restoreIntoDatabase(_ name: String, _ prepared: Prepared, manifest: BackupManifest, _ configuration: SelectiveRestoreConfiguration,
                                            timeline: Timeline, progress: ProgressObserver?) throws -> (DumpReadStatistics, RowCountVerifier.Report) {
        let admin = try LogicalRestore.connectToMaintenance(configuration.target)
        defer { admin.close() }
        guard try admin.query("SELECT 1 FROM pg_database WHERE datname = $1", [name]).rows.isEmpty else {
            throw RecoveryError(.usage, "database \(name) already exists; nothing was changed", hint: "name a new database with --into-database NAME")
        }
        try ToolDatabases.requireMarkPrivilege(on: admin)
        var created = false
        var done = false
        defer {
            if created && !done {
                do {
                    try DatabaseSwap.dropOwn(name, on: admin)
                    if Interruption.isRequested { CleanupLog.cleaned("dropped the new database \(name)") }
                } catch {
                    timeline.note("drop database \(name)", outcome: "failed: \(RecoveryError.classify(error).message); it is marked, dbrestore cleanup drops it")
                }
            }
        }
        try timeline.step("create database \(name)") {
            try DatabaseSwap.createScratch(name, marker: .init(.scratch, target: name, backup: manifest.id), properties: manifest.databaseProperties, on: admin)
            created = true
        }
        let target = configuration.target.with(database: name)
        let loader = try LoaderConnection(target: target, backupID: manifest.id,
                                          maintenanceWorkMem: LoaderConnection.maintenanceWorkMem(in: configuration.environment))
        defer { loader.close() }
        let statistics = try timeline.step("replay \(prepared.plan.tables.count) table(s) of backup \(manifest.id) into \(name) (\(ByteCount.format(prepared.plan.replayBytes)) of the dump)") {
            try loader.connection.execute(script: "BEGIN")
            let statistics = try replay(prepared, manifest: manifest, key: configuration.key, on: loader, progress: progress) { $0 }
            try loader.connection.execute(script: "COMMIT")
            return statistics
        }
        let verification = try timeline.step("verify row counts of \(prepared.selection.tables.count) table(s)") {
            try verify(prepared.selection.tables, in: \.schema, manifest: manifest, on: loader.connection)
        }
        if let properties = manifest.databaseProperties {
            let warnings = try DatabaseSwap.apply(properties, to: name, on: admin)
            warnings.forEach { timeline.note("database properties of \(name)", outcome: "warning: \($0)") }
        }
        try admin.execute(script: ToolDatabases.markStatement(name, .init(.restored, target: name, backup: manifest.id), on: admin))
        done = true
        return (statistics, verification)
    }

    /// `--replace`, inside the swap's transaction: each live table renamed aside (with its indexes,
    /// owned sequences and statistics, whose names the restored ones take) and the restored one moved
    /// into its schema; the staging schema, empty then, dropped.
    ///
    /// - Returns: live table → the name it is kept under; objects re-pointed; every part renamed aside.
    /// - Throws: `RecoveryError(.restoreFailed)` when other objects depend on a live table and
    ///   `--cascade-report` was not given (listing them).
    private static func replace(_ selection: TableSelection, staged: String, _ configuration: SelectiveRestoreConfiguration,
                                on connection: PostgresConnection) throws -> (kept: [String: String], repointed: [String], renamed: [String], adjusted: [String]) {
        try connection.execute(script: "SET LOCAL lock_timeout = '\(configuration.lockWaitSeconds)s'")
        // A client killed while we wait must not leave the server queueing readers behind its lock request.
        if connection.serverVersionNumber >= 140000 { try connection.execute(script: "SET LOCAL client_connection_check_interval = '1s'") }
        let suffix = "_pre_restore_" + Timestamp.compact(Date(), separator: "_", zone: "")
        var kept: [String: String] = [:]
        var repointed: [String] = []
        var renamed: [String] = []
        var adjusted: [String] = []
        // The live tables replaced, by OID: their own parts (a self-referencing key) are not "other objects".
        var liveOIDs: [DumpTableOfContents.Name: String] = [:]
        for table in selection.tables {
            if let oid = try connection.query("SELECT to_regclass($1)::oid::text", [QualifiedNames.sql(table)]).scalar, !oid.isEmpty { liveOIDs[table] = oid }
        }
        let selectedOIDs = Set(liveOIDs.values)
        // Names in use per schema (relations and statistics, and what the restored tables bring), so the renamed ones are unique.
        var taken: [String: Set<String>] = [:]
        func names(in schema: String) throws -> Set<String> {
            if let known = taken[schema] { return known }
            let rows = try connection.query("""
                SELECT relname FROM pg_catalog.pg_class WHERE relnamespace = $1::regnamespace
                UNION SELECT stxname FROM pg_catalog.pg_statistic_ext WHERE stxnamespace = $1::regnamespace
                """, [QualifiedNames.quote(schema)]).rows
            return Set(rows.compactMap { $0[0] ?? nil }).union(selection.moved.filter { $0.schema == schema }.map(\.name))
        }
        var afterSwap: [String] = []
        for table in selection.tables {
            var sequencesAside: [(name: String, aside: String)] = []
            if let live = liveOIDs[table] {
                let dependents = try Dependent.list(of: live, outside: selectedOIDs, on: connection)
                if !dependents.isEmpty {
                    guard configuration.cascadeReport else {
                        let fixed = dependents.filter { $0.kind == .other }.map(\.description)
                        throw RecoveryError(.restoreFailed, "other objects depend on \(table.qualified): \(dependents.map(\.description).joined(separator: "; ")); nothing was changed",
                                            hint: fixed.isEmpty ? "restore it --into-schema and copy the rows back with SQL, or add --cascade-report to re-point them at the restored table"
                                                : "restore it --into-schema and copy the rows back with SQL; --cascade-report re-points views and foreign keys only, "
                                                    + "not \(fixed.joined(separator: ", ")) (they would stay bound to the kept copy)")
                    }
                    if let unsupported = dependents.first(where: { $0.kind == .other }) {
                        throw RecoveryError(.restoreFailed, "\(unsupported.description) depends on \(table.qualified) and cannot be re-pointed (only views and foreign keys can); nothing was changed",
                                            hint: "restore it --into-schema and copy the rows back with SQL")
                    }
                    for dependent in dependents {
                        if let before = dependent.before { try connection.execute(script: before) }
                        afterSwap.append(dependent.after)
                        repointed.append(dependent.description)
                    }
                }
                // A sequence of the table that other tables' defaults also draw from would stay with the old
                // table (renamed aside) while the restored one counts from the backup's value: duplicates.
                let sharing = try connection.query("""
                    SELECT DISTINCT s.oid::regclass::text, a.adrelid::regclass::text
                    FROM pg_catalog.pg_depend o JOIN pg_catalog.pg_class s ON s.oid = o.objid AND s.relkind = 'S'
                    JOIN pg_catalog.pg_depend u ON u.refclassid = 'pg_catalog.pg_class'::regclass AND u.refobjid = s.oid AND u.classid = 'pg_catalog.pg_attrdef'::regclass
                    JOIN pg_catalog.pg_attrdef a ON a.oid = u.objid
                    WHERE o.classid = 'pg_catalog.pg_class'::regclass AND o.refobjid = $1::oid AND o.deptype IN ('a', 'i') AND a.adrelid <> $1::oid
                    ORDER BY 1, 2
                    """, [live]).rows.compactMap { row in row[0].flatMap { sequence in row[1].map { (sequence, $0) } } }
                if let first = sharing.first {
                    let others = sharing.map(\.1).joined(separator: ", ")
                    throw RecoveryError(.restoreFailed, "\(first.0), owned by \(table.qualified), also feeds the defaults of \(others): --replace would split it in two; nothing was changed",
                                        hint: "restore it --into-schema and copy the rows back with SQL (the live sequence stays shared)")
                }
                var used = try names(in: table.schema)
                // Columns the live table has and the backup's does not (added since): the swap takes them away.
                let newer = try connection.query("""
                    SELECT a.attname FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
                      AND a.attname NOT IN (SELECT b.attname FROM pg_catalog.pg_attribute b WHERE b.attrelid = $2::regclass AND b.attnum > 0 AND NOT b.attisdropped)
                    ORDER BY a.attnum
                    """, [live, QualifiedNames.sql(DumpTableOfContents.Name(schema: staged, name: table.name))]).rows.compactMap { $0[0] ?? nil }
                if !newer.isEmpty {
                    adjusted.append("column\(newer.count == 1 ? "" : "s") \(newer.map(QualifiedNames.display).joined(separator: ", ")) of the live \(table.qualified) "
                                    + "\(newer.count == 1 ? "is" : "are") not in the backup's definition: the restored table has no such column "
                                    + "(the kept copy has it; a migration made after the backup may need to run again)")
                }
                // Indexes (constraint-backed ones rename their constraint too), owned sequences and statistics
                // keep the schema's names free for the restored ones.
                let parts = try connection.query("""
                    SELECT 'INDEX', i.relname FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = $1::oid
                    UNION ALL
                    SELECT 'SEQUENCE', s.relname FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class s ON s.oid = d.objid
                    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refobjid = $1::oid AND s.relkind = 'S' AND d.deptype IN ('a', 'i')
                    UNION ALL
                    SELECT 'STATISTICS', x.stxname FROM pg_catalog.pg_statistic_ext x WHERE x.stxrelid = $1::oid AND x.stxnamespace = $2::regnamespace
                    """, [live, QualifiedNames.quote(table.schema)]).rows
                for part in parts {
                    guard let kind = part[0], let name = part[1] else { continue }
                    let aside = asideName(name, suffix: suffix, taken: &used)
                    if kind == "SEQUENCE" { sequencesAside.append((name, aside)) }
                    try connection.execute(script: "ALTER \(kind) \(QualifiedNames.quote(table.schema)).\(QualifiedNames.quote(name)) RENAME TO \(QualifiedNames.quote(aside))")
                    renamed.append("\(kind.lowercased()) \(DumpTableOfContents.Name(schema: table.schema, name: name).qualified) → \(QualifiedNames.display(aside))"
                                   + (name.utf8.count + suffix.utf8.count > 63 ? " (shortened to 63 bytes, with a digest of its name)" : ""))
                }
                let aside = asideName(table.name, suffix: suffix, taken: &used)
                taken[table.schema] = used
                try connection.execute(script: "ALTER TABLE \(QualifiedNames.sql(table)) RENAME TO \(QualifiedNames.quote(aside))")
                let keptName = DumpTableOfContents.Name(schema: table.schema, name: aside)
                kept[table.qualified] = keptName.qualified
                // The kept copy's keys into live tables would hold their rows (a DELETE of a parent the
                // application no longer uses fails on the kept copy): they go, the copy is for reading.
                let outgoing = try connection.query("""
                    SELECT conname, confrelid::regclass::text FROM pg_catalog.pg_constraint
                    WHERE conrelid = $1::oid AND contype = 'f' AND conparentid = 0 AND confrelid <> conrelid AND NOT (confrelid::text = ANY ($2::text[]))
                    ORDER BY conname
                    """, [live, SQLText.arrayLiteral(selectedOIDs.sorted())]).rows
                for key in outgoing {
                    guard let name = key[0], let referenced = key[1] else { continue }
                    try connection.execute(script: "ALTER TABLE \(QualifiedNames.sql(keptName)) DROP CONSTRAINT \(QualifiedNames.quote(name))")
                    adjusted.append("foreign key \(QualifiedNames.display(name)) of the kept copy \(keptName.qualified) (to \(referenced)) dropped, so that it holds no live rows")
                }
            }
            let stagedTable = DumpTableOfContents.Name(schema: staged, name: table.name)
            try connection.execute(script: "ALTER TABLE \(QualifiedNames.sql(stagedTable)) SET SCHEMA \(QualifiedNames.quote(table.schema))")
            // Its indexes, constraints and owned sequences moved with it; its statistics do not.
            let statistics = try connection.query("SELECT stxname FROM pg_catalog.pg_statistic_ext WHERE stxrelid = $1::regclass AND stxnamespace = $2::regnamespace",
                                                  [QualifiedNames.sql(table), QualifiedNames.quote(staged)]).rows.compactMap { $0[0] ?? nil }
            for name in statistics {
                try connection.execute(script: "ALTER STATISTICS \(QualifiedNames.quote(staged)).\(QualifiedNames.quote(name)) SET SCHEMA \(QualifiedNames.quote(table.schema))")
            }
            // The restored table's sequences would count again from the backup's values and hand out
            // ids the application has used since (rows in the kept copy, references elsewhere): each
            // goes on from the live one's value where that is further along.
            for (name, aside) in sequencesAside {
                let restored = QualifiedNames.sql(DumpTableOfContents.Name(schema: table.schema, name: name))
                let previous = QualifiedNames.sql(DumpTableOfContents.Name(schema: table.schema, name: aside))
                guard try connection.query("SELECT to_regclass($1) IS NOT NULL", [restored]).scalar == "t" else { continue }
                let row = try connection.query("""
                    SELECT r.last_value::text, p.last_value::text,
                           pg_catalog.setval($1::regclass, p.last_value, p.is_called)::text
                    FROM \(restored) r, \(previous) p, pg_catalog.pg_sequence q
                    WHERE q.seqrelid = $1::regclass
                      AND CASE WHEN q.seqincrement > 0 THEN (p.last_value, p.is_called) > (r.last_value, r.is_called)
                               ELSE (-p.last_value, p.is_called) > (-r.last_value, r.is_called) END
                    """, [restored]).rows.first
                if let backupValue = row?[0], let liveValue = row?[1] {
                    adjusted.append("sequence \(DumpTableOfContents.Name(schema: table.schema, name: name).qualified) goes on from the live value \(liveValue) "
                                    + "(the backup had \(backupValue)), so ids used since the backup are not handed out again")
                }
            }
        }
        // Views re-created and keys added back now that the restored tables have the names.
        for statement in afterSwap { try connection.execute(script: statement) }
        // Everything moved with its table; anything else left there means the staging schema is not empty: refuse.
        try connection.execute(script: "DROP SCHEMA \(QualifiedNames.quote(staged)) RESTRICT")
        return (kept, repointed, renamed, adjusted)
    }

    /// `<name><suffix>` when it fits NAMEDATALEN (63 bytes) and is free; else the name shortened,
    /// with 8 hex digits of its sha256 before the suffix (two long names alike stay apart) and, if
    /// that is taken too, a counter. The name chosen is added to `taken`.
    static func asideName(_ name: String, suffix: String, taken: inout Set<String>) -> String {
        var candidate = name + suffix
        if candidate.utf8.count > 63 || taken.contains(candidate) {
            let digest = SHA256.hash(data: Data(name.utf8)).prefix(4).map { String(format: "%02x", $0) }.joined()
            var counter = 1
            repeat {
                candidate = LogicalRestore.identifier(name, suffix: "_" + digest + (counter > 1 ? "_\(counter)" : "") + suffix)
                counter += 1
            } while taken.contains(candidate)
        }
        taken.insert(candidate)
        return candidate
    }

    /// An object outside the selection that depends on a live table `--replace` renames aside.
    struct Dependent {
        enum Kind { case view, foreignKey, other }
        var kind: Kind
        var description: String
        /// Run before the live table is renamed (a key is dropped).
        var before: String?
        /// Run once the restored table has the name: the view re-created from its definition, the key added back (validated).
        var after: String

        /// Views, other tables' foreign keys and anything else that depends on the relation `oid`
        /// (normal dependencies, on it or on its row type, and publications that list it), except parts
        /// of the relations whose OIDs are in `outside`. A key a
        /// partition inherits from its partitioned table's is left to that one (dropped and added with it).
        static func list(of oid: String, outside: Set<String>, on connection: PostgresConnection) throws -> [Dependent] {
            // Run with search_path '' (the dump's): every name comes back qualified.
            let rows = try connection.query("""
                SELECT DISTINCT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid),
                       CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass THEN 'view'
                            WHEN d.classid = 'pg_catalog.pg_constraint'::regclass THEN 'constraint' ELSE 'other' END,
                       CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass THEN (SELECT r.ev_class::regclass::text FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid)
                            WHEN d.classid = 'pg_catalog.pg_constraint'::regclass THEN (SELECT c.conrelid::regclass::text FROM pg_catalog.pg_constraint c WHERE c.oid = d.objid) END,
                       CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass
                            THEN (SELECT c.relkind::text || COALESCE(' WITH (' || pg_catalog.array_to_string(c.reloptions, ', ') || ')', '')
                                         || ' AS ' || pg_catalog.pg_get_viewdef(r.ev_class)
                                  FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class WHERE r.oid = d.objid)
                            WHEN d.classid = 'pg_catalog.pg_constraint'::regclass
                            THEN (SELECT c.contype::text || pg_catalog.quote_ident(c.conname) || ' ' || pg_catalog.pg_get_constraintdef(c.oid) FROM pg_catalog.pg_constraint c WHERE c.oid = d.objid) END,
                       CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass THEN (SELECT r.ev_class::text FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid)
                            WHEN d.classid = 'pg_catalog.pg_constraint'::regclass THEN (SELECT c.conrelid::text FROM pg_catalog.pg_constraint c WHERE c.oid = d.objid)
                            WHEN d.classid = 'pg_catalog.pg_class'::regclass THEN d.objid::text END
                FROM pg_catalog.pg_depend d
                WHERE ((d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = $1::oid AND d.deptype = 'n')
                       -- Functions, columns, types that use the table's row type (or its array) are bound to the
                       -- type, which stays with the kept copy: `f(o orders)` would become `f(o orders_pre_restore_…)`.
                       OR (d.refclassid = 'pg_catalog.pg_type'::regclass AND d.deptype = 'n'
                           AND d.refobjid IN (SELECT c.reltype FROM pg_catalog.pg_class c WHERE c.oid = $1::oid
                                              UNION ALL
                                              SELECT t.typarray FROM pg_catalog.pg_class c JOIN pg_catalog.pg_type t ON t.oid = c.reltype WHERE c.oid = $1::oid))
                       -- A publication's membership (an automatic dependency) stays with the kept copy too: replication would stop.
                       OR (d.classid = 'pg_catalog.pg_publication_rel'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = $1::oid))
                  AND NOT (d.classid = 'pg_catalog.pg_constraint'::regclass
                           AND EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.oid = d.objid AND c.conparentid <> 0))
                  -- The table's own generated-column expressions and policies name its columns: parts of it, not dependents.
                  AND NOT (d.classid = 'pg_catalog.pg_attrdef'::regclass
                           AND EXISTS (SELECT 1 FROM pg_catalog.pg_attrdef a WHERE a.oid = d.objid AND a.adrelid = $1::oid))
                  AND NOT (d.classid = 'pg_catalog.pg_policy'::regclass
                           AND EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.oid = d.objid AND p.polrelid = $1::oid))
                """, [oid]).rows
            return rows.compactMap { row -> Dependent? in
                let description = row[0] ?? "?", owner = row[2] ?? "", detail = row[3] ?? ""
                if let ownerOID = row[4], outside.contains(ownerOID) { return nil }
                switch (row[1], detail.first) {
                case ("view", "v"):
                    return Dependent(kind: .view, description: description, before: nil,
                                     // Its options (security_barrier, check_option, security_invoker) go with it.
                                     after: "CREATE OR REPLACE VIEW \(owner)\(detail.dropFirst())")
                case ("constraint", "f"):
                    let definition = detail.dropFirst()
                    guard let space = definition.firstIndex(of: " ") else { return Dependent(kind: .other, description: description, before: nil, after: "") }
                    let name = definition[..<space]
                    return Dependent(kind: .foreignKey, description: description, before: "ALTER TABLE \(owner) DROP CONSTRAINT \(name)",
                                     after: "ALTER TABLE \(owner) ADD CONSTRAINT \(name) \(definition[definition.index(after: space)...])")
                default:
                    return Dependent(kind: .other, description: description, before: nil, after: "")
                }
            }
        }
    }

    private static func step<T>(_ timeline: Timeline?, _ title: String, _ body: () throws -> T) throws -> T {
        if let timeline { return try timeline.step(title, body) }
        return try body()
    }
}
