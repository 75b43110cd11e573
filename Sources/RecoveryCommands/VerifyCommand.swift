import ArgumentParser
import Foundation
import PostgresClient
import RecoveryKit

/// `dbverify`: live row counts against a manifest, or stored files against their checksums.
public struct VerifyCommand: ToolCommand {
    public static let configuration = CommandConfiguration(
        commandName: "dbverify",
        abstract: "Check a database against a backup's manifest, or a backup's files against their checksums.",
        discussion: """
        Without --files or --schema (--rows): counts every table's rows in the live database and compares them with the \
        counts recorded in the backup's own snapshot. Exit 0 when all match, 30 on any difference, \
        missing or extra table. Without a backup id: the backup the database was restored from, when \
        dbrestore put it in place, else the newest.
        With --files: re-reads the stored files, checks size, sha256 and the whole gzip stream. No \
        database needed. Exit 23 if any file is damaged. For an incremental base backup it checks every \
        member of its chain, full backup first; a missing member is damage too.
        With --schema: runs pg_dump --schema-only on the live database and compares it, object by \
        object, with the schema fingerprint the backup recorded in its own snapshot. Exit 30 and the \
        differing objects (missing, extra, changed) on any difference.
        In a repository shared by several databases, 'latest' is the target database's newest \
        backup (--from-database NAME: NAME's); with --files and no --from-database, the newest of \
        each database's backups and of each server's base backups.

        Examples:
          dbverify --database-url postgresql://postgres@db1/app \\
              --repo /var/backups/app     # after dbrestore <id>: checks <id>
          dbverify latest --database-url postgresql://postgres@db1/app \\
              --repo /var/backups/app
          dbverify 20261124T020000Z-3fa2 --json
          dbverify --files latest --repo /var/backups/app
          dbverify --files all            # every backup in the repository
          dbverify --files --from-database billing   # billing's newest backup
          dbverify --schema latest        # has the schema drifted since then?
        """,
        version: DBRecoveryVersion.current)

    @Argument(help: ArgumentHelp("Backup id, unique id prefix, 'latest', or with --files also 'all' (default: the backup the database was restored from, else latest).",
                                 valueName: "backup"))
    public var backup: String?

    /// What `dbverify` checks: one mode per run.
    public enum Check: String, EnumerableFlag {
        case rows, files, schema

        public static func help(for value: Check) -> ArgumentHelp? {
            switch value {
            case .rows: return "Compare the live database's row counts with the backup's."
            case .files: return "Check the stored files (size, sha256, gzip stream) instead of a database."
            case .schema: return "Compare the live database's schema (pg_dump --schema-only) with the backup's schema fingerprint."
            }
        }
    }

    @Flag public var check: Check = .rows
    var files: Bool { check == .files }

    @OptionGroup public var from: FromDatabaseOption

    @OptionGroup(title: "Connection") public var connection: ConnectionOptions
    @OptionGroup(title: "Repository") public var repository: RepositoryOptions
    @OptionGroup(title: "Output") public var output: OutputOptions
    @OptionGroup(title: "Configuration") public var config: ConfigOptions

    public init() {}

    public func validate() throws {
        if backup == "all" && !files { throw ValidationError("'all' goes with --files; name one backup to compare a database against") }
    }

    public func run(in context: RunContext) throws {
        if config.printIfAsked(context, connection: files ? nil : connection, repository: repository) { return }
        // The database checked: the target's (rows, schema); with --files, --from-database's or every one.
        let database = files ? ["database": from.fromDatabase ?? BackupManifest.wholeServer] : connection.databaseLabel(context.settings)
        output.begin("dbverify", labels: ["check": check.rawValue].merging(database) { first, _ in first }, in: context)
        let address = try repository.address(context.settings)
        if check == .schema { return try runSchema(repository: address, in: context) }
        if files {
            let reports = try BackupVerification.files(repository: address, backup: backup ?? "latest", database: from.fromDatabase, key: try repository.cipherKey(context.settings),
                                                       progress: output.progress, environment: repository.storageEnvironment(context.settings))
            if output.json { try printJSON(reports) } else {
                var table = TextTable("BACKUP", "DATABASE", "FILE", "STATUS")
                for report in reports {
                    if report.pruned { table.add(report.id, "-", "-", "PRUNED: removed by dbprune during the check (gone, not damaged)") }
                    for file in report.files {
                        table.add(report.id, report.database ?? "-", file.name, file.ok ? "ok" : file.archived ? "ARCHIVED: \(file.problem ?? "")"
                                  : file.optionalIndex ? "WARNING: \(file.problem ?? "") (optional index; the backup restores without it)"
                                  : "DAMAGED: \(file.problem ?? "")")
                    }
                }
                print(table.rendered)
            }
            if let bad = reports.first(where: { !$0.ok && !$0.onlyArchived }) {
                throw RecoveryError(.backupCorrupt, "backup \(bad.id)\(bad.database.flatMap { $0 == BackupManifest.wholeServer ? nil : " of database \($0)" } ?? "") is damaged: \(bad.firstProblem ?? "")",
                                    hint: "do not restore it; dbrestore --emergency skips damaged backups")
            }
            let checked = reports.filter { !$0.pruned }.count
            let pruned = reports.count - checked
            output.succeeded(["verify_ok": 1, "verify_backups": Double(checked)],
                             summary: "\(checked) backup(s) verify" + (pruned > 0 ? "; \(pruned) pruned by dbprune during the check" : ""), in: context)
            if let archived = reports.first(where: { $0.onlyArchived }) {
                throw RecoveryError(.backupArchived, "backup \(archived.id) is archived: needs a restore request",
                                    hint: archived.files.first { $0.archived }?.problem)
            }
            return
        }
        let report = try BackupVerification.rowCounts(repository: address, backup: backup, fromDatabase: from.fromDatabase, target: try connection.target(context.settings),
                                                          environment: repository.storageEnvironment(context.settings))
        if output.json { try printJSON(report) } else {
            if let basis = report.basis { output.note("comparing \(report.database) with backup \(report.backupID) (\(basis))") }
            var table = TextTable("TABLE", "EXPECTED", "ACTUAL", "STATUS")
            for row in report.tables {
                let status = row.status == .mismatch ? "MISMATCH (\(row.difference.map { $0 > 0 ? "+\($0)" : "\($0)" } ?? ""))"
                    : row.status == .ok ? "ok" : row.status.rawValue.uppercased()
                table.add(row.table, row.expected.map(String.init) ?? "-", row.actual.map(String.init) ?? "-", status)
            }
            print(table.rendered)
        }
        guard report.ok else {
            let whose = report.backupDatabase.map { $0 == report.database ? "" : " (of database \($0))" } ?? ""
            throw RecoveryError(.verificationMismatch, "\(report.database) does not match backup \(report.backupID)\(whose): \(report.summary)",
                                hint: "if this follows a restore, restore again; otherwise the data changed since the backup")
        }
        output.succeeded(["verify_ok": 1, "verify_tables": Double(report.tables.count)], summary: report.summary, in: context)
        if !output.json { output.note("\(report.database) matches backup \(report.backupID): \(report.summary)") }
    }

    /// `--schema`: the live database's schema against the backup's fingerprint.
    private func runSchema(repository address: String, in context: RunContext) throws {
        let report = try SchemaVerifier.verify(repository: address, backup: backup, fromDatabase: from.fromDatabase, target: try connection.target(context.settings),
                                               tools: connection.tools(context.settings), environment: repository.storageEnvironment(context.settings))
        if output.json { try printJSON(report) } else if !report.ok {
            var table = TextTable("CHANGE", "TYPE", "SCHEMA", "NAME")
            for difference in report.differences {
                table.add(difference.change.rawValue.uppercased(), difference.type, difference.schema, difference.name)
            }
            print(table.rendered)
        }
        guard report.ok else {
            let whose = report.backupDatabase.map { $0 == report.database ? "" : " (of database \($0))" } ?? ""
            throw RecoveryError(.verificationMismatch, "schema of \(report.database) does not match backup \(report.backupID)\(whose): \(report.summary)",
                                hint: (report.versionNote.map { $0 + "; " } ?? "")
                                    + "if this follows a restore, restore again; otherwise the schema changed since the backup")
        }
        output.succeeded(["verify_ok": 1, "verify_schema_objects": Double(report.actualObjects)], summary: report.summary, in: context)
        if !output.json { output.note("\(report.database) matches backup \(report.backupID): \(report.summary)") }
    }
}
