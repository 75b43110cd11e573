import ArgumentParser
import Foundation
import RecoveryKit

/// `dbrestore contents <backup>`: what a logical backup holds (issue 18).
public struct ContentsCommand: ToolCommand {
    public static let configuration = CommandConfiguration(
        commandName: "contents",
        abstract: "List what a logical backup holds: schemas, tables (rows, size in the dump), sequences, functions, views, other objects.",
        discussion: """
        Read from the backup's table of contents (toc.json.gz, written by dbbackup next to the dump); \
        for a backup taken before tables of contents existed, from a full scan of its dump (slower; \
        the listing says which). In a repository shared by several databases, \
        'latest' needs --from-database NAME to say whose newest backup it is.

        Examples:
          dbrestore contents latest --repo /var/backups/app
          dbrestore contents latest --from-database billing --repo /var/backups/shared
          dbrestore contents latest --json | jq -r '.tables[] | "\\(.name) \\(.rows)"'
        """)

    @Argument(help: ArgumentHelp("Backup id, unique id prefix, or 'latest'.", valueName: "backup"))
    public var backup: String = "latest"

    @OptionGroup public var from: FromDatabaseOption

    @OptionGroup public var reading: RepositoryReadOptions

    public init() {}

    public func run(in context: RunContext) throws {
        if reading.printConfigIfAsked(context) { return }
        let repository = reading.repository, output = reading.output, settings = context.settings
        let contents = try BackupContents.read(repository: try repository.address(settings), backup: backup, database: from.fromDatabase,
                                               key: try repository.cipherKey(settings),
                                               environment: repository.storageEnvironment(settings), progress: output.progress)
        if output.json { return try printJSON(contents) }
        let source = contents.source == .tableOfContents ? "table of contents, \(contents.accessPoints) access points" : "full scan of the dump (no usable table of contents)"
        print("backup \(contents.backupID)\(contents.database.map { " of database \($0)" } ?? "") (\(source))")
        print("schemas: \(contents.schemas.map(QualifiedNames.display).joined(separator: ", "))")
        var tables = TextTable("TABLE", "ROWS", "SIZE IN DUMP")
        for table in contents.tables {
            tables.add(table.qualified, table.rows.map(String.init) ?? "-", ByteCount.format(table.dumpBytes))
        }
        print(tables.rendered)
        let groups = [("sequences", contents.sequences), ("functions", contents.functions), ("views", contents.views)]
            + contents.other.sorted { $0.key < $1.key }.map { ($0.key.lowercased(), $0.value) }
        for (kind, objects) in groups where !objects.isEmpty {
            print("\(kind) (\(objects.count)): \(objects.map(\.qualified).joined(separator: ", "))")
        }
        contents.notes.forEach { print("note: \($0)") }
    }
}

/// `--from-database NAME` of the commands without a target database of their own (`dbrestore
/// contents`, `dbverify --files`) and of `dbverify`: whose newest backup `latest` is, in a repository
/// shared by several databases.
public struct FromDatabaseOption: ParsableArguments {
    @Option(name: .customLong("from-database"), help: ArgumentHelp(
        "'latest' is this database's newest backup (a repository may hold several databases' backups; dbverify --files all: its backups only); a backup named by its id needs none.",
        valueName: "name"))
    public var fromDatabase: String?

    public init() {}

    public func validate() throws { try Self.validate(fromDatabase) }

    /// A database name has 1 to 63 bytes (every command's `--from-database`).
    static func validate(_ name: String?) throws {
        if let name, name.isEmpty || name.utf8.count > 63 {
            throw ValidationError("--from-database '\(name)' is not a database name: it must have 1 to 63 bytes")
        }
    }
}

/// The selective-restore options of `dbrestore <backup>` (issue 18): `--table`, `--schema` and where
/// the objects go. Registered on the restore command as one option group.
public struct SelectiveRestoreOptions: ParsableArguments {
    @Option(name: .customLong("table"), help: ArgumentHelp("Restore only this table (SCHEMA.NAME; * and ? match, e.g. 'sales.*'); repeatable.", valueName: "schema.name"))
    public var tables: [String] = []

    @Option(name: .customLong("schema"), help: ArgumentHelp("Restore only the tables of this schema (with --into-database: the whole schema); repeatable.", valueName: "name"))
    public var schemas: [String] = []

    @Option(name: .customLong("into-schema"), help: ArgumentHelp("With --table/--schema: create them in this new schema of the live database (default restored_<time>).", valueName: "name"))
    public var intoSchema: String?

    @Option(name: .customLong("into-database"), help: ArgumentHelp("With --table/--schema: create them in this new database instead.", valueName: "name"))
    public var intoDatabase: String?

    @Flag(name: .customLong("replace"), help: "With --table/--schema: replace the live tables in one transaction once the restored rows verify; each old table is kept as <table>_pre_restore_<time>.")
    public var replace = false

    @Flag(name: .customLong("cascade-report"), help: "With --replace: go ahead although views or other tables' keys depend on a table; re-point them and list them.")
    public var cascadeReport = false

    public init() {}

    /// Whether this is a selective restore.
    public var isActive: Bool { !tables.isEmpty || !schemas.isEmpty }

    public func validate() throws {
        guard isActive else {
            if intoSchema != nil || intoDatabase != nil || replace || cascadeReport {
                throw ValidationError("--into-schema, --into-database, --replace and --cascade-report go with --table or --schema")
            }
            return
        }
        if [intoSchema != nil, intoDatabase != nil, replace].filter({ $0 }).count > 1 {
            throw ValidationError("choose one of --into-schema, --into-database and --replace")
        }
        if cascadeReport && !replace { throw ValidationError("--cascade-report goes with --replace") }
        for name in [intoSchema, intoDatabase].compactMap({ $0 }) where name.isEmpty || name.utf8.count > 63 {
            throw ValidationError("'\(name)' is not a usable name: it must have 1 to 63 bytes")
        }
    }

    var destination: SelectiveRestoreConfiguration.Destination {
        if let intoDatabase { return .intoDatabase(intoDatabase) }
        if replace { return .replace }
        return .intoSchema(intoSchema)
    }

    /// Runs the selective restore for `dbrestore <backup> --table …`.
    func run(backup: String, fromDatabase: String?, connection: ConnectionOptions, repository: RepositoryOptions, config: ConfigOptions, output: OutputOptions,
             dryRun: Bool, yes: Bool, in context: RunContext) throws {
        let settings = context.settings
        if config.printIfAsked(context, connection: connection, repository: repository) { return }
        output.begin("dbrestore", labels: ["mode": "selective"].merging(connection.databaseLabel(settings)) { first, _ in first }, in: context)
        var configuration = SelectiveRestoreConfiguration(target: try connection.target(settings), repositories: try repository.addresses(settings), backup: backup)
        configuration.fromDatabase = fromDatabase
        configuration.tables = tables
        configuration.schemas = schemas
        configuration.destination = destination
        configuration.key = try repository.cipherKey(settings)
        configuration.environment = repository.storageEnvironment(settings)
        configuration.cascadeReport = cascadeReport
        configuration.tools = connection.tools(settings)   // --pg-bin / PG_BIN: the pg_dump that fingerprints a --replace copy
        configuration.dryRun = dryRun
        if let seconds = connection.explicitLockWaitSeconds { configuration.lockWaitSeconds = seconds }
        let timeline = output.timeline()
        if dryRun {
            let plan = try SelectiveRestore.plan(configuration)
            if output.json { return try printJSON(plan) }
            return print(plan.lines.joined(separator: "\n"))
        }
        if replace && !yes {
            let plan = try SelectiveRestore.plan(configuration)
            try Confirmation.ask(plan.lines.joined(separator: "\n"), refusal: "dbrestore would replace \(plan.tables.joined(separator: ", ")) in \(plan.database)")
        }
        let report = try SelectiveRestore.execute(configuration, timeline: timeline, progress: output.progress)
        output.succeeded(["restore_duration_seconds": report.durationSeconds, "restore_verified_tables": Double(report.verification.tables.count),
                          "restore_decompressed_bytes": Double(report.read.bytesDecompressed)],
                         summary: "\(report.plan.destination) of \(report.plan.tables.count) table(s) from backup \(report.plan.backupID) in \(String(format: "%.1f", report.durationSeconds)) s",
                         in: context)
        if output.json { return try printJSON(report) }
        let plan = report.plan
        let seconds = String(format: "%.1f", report.durationSeconds)
        switch plan.destination {
        case "into-database": print("restored \(plan.tables.joined(separator: ", ")) from backup \(plan.backupID) into new database \(plan.createdIn) in \(seconds) s; row counts verified")
        case "replace":
            let checked = report.definition.map { "row counts and definition (\($0.actualObjects) schema objects) verified" }
                ?? "row counts verified (the backup has no schema fingerprint: definition not checked)"
            print("replaced \(plan.tables.joined(separator: ", ")) in \(plan.database) from backup \(plan.backupID) in \(seconds) s; \(checked)")
        default: print("restored \(plan.tables.joined(separator: ", ")) from backup \(plan.backupID) into schema \(plan.createdIn) of \(plan.database) in \(seconds) s; row counts verified")
        }
        for (live, aside) in report.keptAs.sorted(by: { $0.key < $1.key }) { print("previous \(live) kept as \(aside)") }
        report.renamedAside.forEach { print("renamed aside: \($0)") }
        report.repointed.forEach { print("re-pointed: \($0)") }
        report.adjusted.forEach { print("adjusted: \($0)") }
        plan.foreignKeysLeftOut.forEach { output.note("left out (references a table outside the selection): \($0)") }
        if !plan.rulesLeftOut.isEmpty { output.note("rules left out of the rescue schema (they would act on the live tables): \(plan.rulesLeftOut.joined(separator: ", "))") }
        if !plan.dependentViews.isEmpty { output.note("views that read these tables, not restored: \(plan.dependentViews.joined(separator: ", "))") }
        output.note("read \(report.read.method): \(ByteCount.format(report.read.bytesDecompressed)) decompressed of a \(ByteCount.format(plan.dumpBytes)) dump")
    }
}
