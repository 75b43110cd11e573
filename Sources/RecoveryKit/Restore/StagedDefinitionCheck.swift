import Foundation
import PostgresClient

/// `dbrestore --table … --replace`: before the swap, the staged copy's definition — columns, types,
/// defaults, constraints, indexes, triggers, statistics, comments, grants, owned sequences — is
/// compared with what the backup's schema fingerprint recorded for the same objects, so that a copy
/// the replay got wrong (a statement left out, a name rewritten wrongly) never takes the live
/// table's place. Row counts alone would not see a missing index or a changed default.
///
/// The copy is fingerprinted as the full restore's scratch database is: by `pg_dump --schema-only`
/// (`SchemaDump`), here of the staging schema only, its text pointed back at the tables' own schemas
/// first, so each object hashes as it did in the backup. pg_dump sees only committed objects: the
/// staged copy is committed before this check (and dropped if it fails).
enum StagedDefinitionCheck {
    typealias Name = DumpTableOfContents.Name

    /// pg_dump object types that make up a table's definition (what the swap puts in place).
    static let definitionTypes: Set<String> = [
        "TABLE", "SEQUENCE", "SEQUENCE OWNED BY", "DEFAULT", "CONSTRAINT", "CHECK CONSTRAINT", "FK CONSTRAINT", "INDEX", "TRIGGER", "RULE",
        "POLICY", "ROW SECURITY", "STATISTICS", "COMMENT", "ACL",
    ]

    /// Compares the copy staged in `staged` with the backup's fingerprint of the selected objects.
    ///
    /// - Returns: the comparison, or nil when the backup has no fingerprint (noted on the timeline).
    /// - Throws: `RecoveryError(.verificationMismatch)` naming the objects that differ; pg_dump errors.
    static func verify(_ selection: TableSelection, staged: String, manifest: BackupManifest, target: ConnectionTarget, server: PostgresMajor,
                       tools: PostgresTools, timeline: Timeline) throws -> SchemaVerifier.Report? {
        guard let fingerprint = manifest.schemaFingerprint else {
            timeline.note("warning: definition of the restored copy not verified",
                          outcome: "backup \(manifest.id) has no schema fingerprint (taken before dbbackup recorded one); only row counts were checked")
            return nil
        }
        let origin = origins(of: selection)
        let wanted = Set(origin.map { ObjectKey(type: $0.key.type, schema: $0.value, name: $0.key.name) })
        let expected = fingerprint.objects.filter { wanted.contains(ObjectKey(type: $0.type, schema: $0.schema, name: $0.name)) }
        let relations = Dictionary(grouping: selection.moved, by: \.schema).mapValues { Set($0.map { Name(schema: staged, name: $0.name) }) }
        let program = try SchemaVerifier.pgDump(for: server, expected: fingerprint, tools: tools).path
        let found = try timeline.step("verify the definition of the restored copy (\(expected.count) objects) against backup \(manifest.id)") {
            try SchemaDump(pgDump: program, target: target, snapshot: nil, schemas: [staged], rewrite: { text in
                pointedBack(text, staged: staged, relations: relations, origin: origin)
            }).finish()
        }
        let actual = found.objects.filter { definitionTypes.contains($0.type) && $0.schema != "-" }
        let report = SchemaVerifier.compare(expected: SchemaFingerprint(objects: expected, pgDumpVersion: fingerprint.pgDumpVersion, serverVersion: fingerprint.serverVersion),
                                            actual: SchemaFingerprint(objects: actual, pgDumpVersion: found.pgDumpVersion, serverVersion: found.serverVersion),
                                            backupID: manifest.id, database: target.databaseName)
        guard report.ok else {
            for difference in report.differences.prefix(100) { timeline.note("definition difference", outcome: difference.description) }
            throw RecoveryError(.verificationMismatch, "the restored copy's definition does not match backup \(manifest.id): \(report.summary); the live tables were not touched",
                                hint: "restore it --into-schema to compare by hand, or try an older backup" + (report.versionNote.map { " (\($0))" } ?? ""))
        }
        return report
    }

    struct ObjectKey: Hashable, Sendable {
        var type: String
        var schema: String
        var name: String
    }

    struct TypeAndName: Hashable, Sendable {
        var type: String
        var name: String
    }

    /// Each definition object of the selection (type and pg_dump name) with the schema it comes from.
    static func origins(of selection: TableSelection) -> [TypeAndName: String] {
        var origin: [TypeAndName: String] = [:]
        for entry in selection.entries where definitionTypes.contains(entry.kind) {
            if let schema = entry.schema { origin[TypeAndName(type: entry.kind, name: entry.name)] = schema }
        }
        return origin
    }

    /// pg_dump's text of the staging schema as the backup wrote it: qualified names of the staged
    /// relations and the `Schema:` of each object header pointed back at the schema it came from.
    static func pointedBack(_ text: [UInt8], staged: String, relations: [String: Set<Name>], origin: [TypeAndName: String]) -> [UInt8] {
        var text = text
        for (schema, moved) in relations.sorted(by: { $0.key < $1.key }) { text = QualifiedNames.rewrite(text, moving: moved, to: schema, quoting: QualifiedNames.display) }
        let marker = Array("; Schema: \(staged)".utf8)
        var result: [UInt8] = []
        result.reserveCapacity(text.count)
        for (number, line) in text.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            if number > 0 { result.append(UInt8(ascii: "\n")) }
            guard line.starts(with: Array("-- Name: ".utf8)),
                  let header = SchemaNormalizer.parseHeader(String(decoding: line, as: UTF8.self)), header.schema == staged,
                  let schema = origin[TypeAndName(type: header.type, name: header.name)],
                  let at = lastRange(of: marker, in: Array(line)) else {
                result.append(contentsOf: line)
                continue
            }
            let bytes = Array(line)
            result.append(contentsOf: bytes[..<at.lowerBound])
            result.append(contentsOf: Array("; Schema: \(schema)".utf8))
            result.append(contentsOf: bytes[at.upperBound...])
        }
        return result
    }

    private static func lastRange(of needle: [UInt8], in haystack: [UInt8]) -> Range<Int>? {
        guard haystack.count >= needle.count else { return nil }
        for start in stride(from: haystack.count - needle.count, through: 0, by: -1) where haystack[start..<(start + needle.count)].elementsEqual(needle) {
            return start..<(start + needle.count)
        }
        return nil
    }
}
