import Foundation

/// Which objects of a backup a selective restore creates, from its table of contents: the
/// selected tables with what makes each usable — definition, rows, defaults, owned and identity
/// sequences (with their values), indexes, constraints, triggers, rules, policies, comments and
/// grants — and, reported rather than restored, the foreign keys to tables outside the selection
/// and the views and keys elsewhere that depend on the selected tables.
struct TableSelection {
    typealias Name = DumpTableOfContents.Name
    typealias Entry = DumpTableOfContents.Entry

    /// The selected tables, in dump order.
    private(set) var tables: [Name] = []
    /// Sequences owned by (or identities of) the selected tables; with `supporting`, also the
    /// sequences their defaults draw from (`nextval('other_seq')`, not owned by them).
    private(set) var sequences: Set<Name> = []
    /// Indexes of the selected tables (constraint-backed ones included: their names are relation names too).
    private(set) var indexes: Set<Name> = []
    /// Extended statistics (`CREATE STATISTICS`) on the selected tables.
    private(set) var statistics: Set<Name> = []
    /// Every entry to replay, in dump order.
    private(set) var entries: [Entry] = []
    /// Foreign keys of selected tables that reference a table outside the selection: left out.
    private(set) var leftOutForeignKeys: [Entry] = []
    /// Foreign keys of tables outside the selection that reference a selected one.
    private(set) var referencingForeignKeys: [Entry] = []
    /// Views (and materialized views) outside the selection that read a selected table.
    private(set) var dependentViews: [Entry] = []
    /// Rules of selected tables left out (a rescue copy's rules would act on the live tables they name).
    private(set) var leftOutRules: [Entry] = []
    /// Every table of the backup that inherits (`INHERITS`), with its parents.
    private var inheritance: [Name: [Name]] = [:]
    /// Every partition of the backup, with its partitioned table.
    private var partitionOf: [Name: Name] = [:]
    /// The backup's partitioned tables.
    private var partitioned = Set<Name>()

    /// Kinds of entries that belong to one relation (everything else supports many: schemas,
    /// types, functions, extensions …).
    static let relationKinds: Set<String> = [
        "TABLE", "FOREIGN TABLE", "TABLE DATA", "VIEW", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA", "SEQUENCE", "SEQUENCE OWNED BY",
        "SEQUENCE SET", "DEFAULT", "CONSTRAINT", "CHECK CONSTRAINT", "FK CONSTRAINT", "INDEX", "INDEX ATTACH", "TABLE ATTACH", "TRIGGER", "RULE", "POLICY",
        "ROW SECURITY", "STATISTICS", "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA",
    ]
    /// Kinds about the source server's operation, not the tables' use: replication (a publication's
    /// membership without the publication fails; with it, a copy would publish) and event triggers.
    private static let sourceOnlyKinds: Set<String> = ["PUBLICATION", "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA", "SUBSCRIPTION",
                                                       "SUBSCRIPTION TABLE", "EVENT TRIGGER"]

    /// Whether an entry is one of `sourceOnlyKinds`, or a comment or label on one: never part of a selective restore.
    private static func sourceOnly(_ entry: Entry) -> Bool {
        if sourceOnlyKinds.contains(entry.kind) { return true }
        guard entry.kind == "COMMENT" || entry.kind == "SECURITY LABEL" else { return false }
        return ["PUBLICATION ", "SUBSCRIPTION ", "EVENT TRIGGER "].contains { entry.name.hasPrefix($0) }
    }

    /// Object words of `COMMENT`/`ACL`/`SECURITY LABEL` tags that name a relation or a part of one.
    private static let relationTagWords = ["TABLE", "VIEW", "MATERIALIZED VIEW", "SEQUENCE", "FOREIGN TABLE", "COLUMN", "INDEX", "CONSTRAINT",
                                           "TRIGGER", "POLICY", "RULE", "STATISTICS"]

    /// Resolves `--table SCHEMA.NAME` and `--schema NAME` patterns (`*` and `?` match any
    /// characters, a double-quoted part matches exactly, a bare one folds to lower case).
    ///
    /// - Parameter supporting: also take every entry that is not one relation's (schemas,
    ///   types, functions, extensions …): what the tables need in a new database. With
    ///   `wholeSchemas`, every object of a selected schema is taken too.
    /// - Throws: `RecoveryError(.usage)` for a pattern that matches nothing, naming the nearest tables.
    /// - Parameter outsideKeys: also replay the selected tables' foreign keys to tables outside the
    ///   selection (`--replace`: the restored table must keep its keys to the live tables; they are
    ///   validated against them in the restore's transaction).
    /// - Parameter rules: replay the selected tables' rules (not into a rescue schema: see `leftOutRules`).
    /// - Parameter exactTables: the backup's tables by their exact names (the manifest's, from the
    ///   catalogue): what tells a name with a line break apart from its header form (`headerForm`).
    /// - Throws: `RecoveryError(.usage)` too when the selection takes a table whose name has a line
    ///   break, or one whose header name it shares (`lineBreakRefusal`).
    init(toc: DumpTableOfContents, tablePatterns: [String], schemaPatterns: [String], supporting: Bool, wholeSchemas: Bool, outsideKeys: Bool = false,
         rules: Bool = true, exactTables: [Name] = [], backupID: String) throws {
        let allTables = toc.entries.filter { $0.kind == "TABLE" || $0.kind == "FOREIGN TABLE" }.compactMap { entry in
            entry.schema.map { Name(schema: $0, name: entry.name) }
        }
        let lineBreakTables = exactTables.filter { Self.hasLineBreak($0.schema) || Self.hasLineBreak($0.name) }
        var chosen = Set<Name>()
        for pattern in tablePatterns {
            let (schemaPattern, namePattern) = try Self.split(pattern)
            if let exact = lineBreakTables.first(where: { schemaPattern.matches($0.schema) && namePattern.matches($0.name) }) {
                throw Self.lineBreakRefusal(exact, allTables: allTables, backupID: backupID)
            }
            let matches = allTables.filter { schemaPattern.matches($0.schema) && namePattern.matches($0.name) }
            guard !matches.isEmpty else {
                let nearest = allTables.map(\.qualified).sorted { Catalog.distance($0, pattern) < Catalog.distance($1, pattern) }.prefix(3)
                throw RecoveryError(.usage, "table \(pattern) is not in backup \(backupID)",
                                    hint: nearest.isEmpty ? "the backup holds no tables" : "nearest tables: \(nearest.joined(separator: ", ")); dbrestore contents \(backupID) lists them all")
            }
            chosen.formUnion(matches)
        }
        let allSchemas = Set(toc.entries.compactMap(\.schema)).union(toc.entries.filter { $0.kind == "SCHEMA" }.map(\.name)).sorted()
        var schemas = Set<String>()
        for pattern in schemaPatterns {
            let part = Self.Part(pattern)
            let matches = allSchemas.filter { part.matches($0) }
            guard !matches.isEmpty else {
                let nearest = allSchemas.sorted { Catalog.distance($0, pattern) < Catalog.distance($1, pattern) }.prefix(3)
                throw RecoveryError(.usage, "schema \(pattern) is not in backup \(backupID)",
                                    hint: "nearest schemas: \(nearest.joined(separator: ", ")); dbrestore contents \(backupID) lists them all")
            }
            schemas.formUnion(matches)
            chosen.formUnion(allTables.filter { matches.contains($0.schema) })
        }
        // A table whose name has a line break is in the table of contents under its header form, which
        // another table's name may be too: a pattern that took that form cannot say which is meant, and
        // the objects found under it would be created (or, in a rescue schema, not moved) by a name
        // their statements do not hold.
        if let exact = lineBreakTables.first(where: { chosen.contains(Name(schema: Self.headerForm($0.schema), name: Self.headerForm($0.name))) }) {
            throw Self.lineBreakRefusal(exact, allTables: allTables, backupID: backupID)
        }
        tables = allTables.filter { chosen.contains($0) }

        // Inheritance and partitions (the restore refuses what it cannot restore exactly: `hierarchyRefusal`).
        for entry in toc.entries {
            guard let schema = entry.schema else { continue }
            if entry.kind == "TABLE", let parents = entry.inherits { inheritance[Name(schema: schema, name: entry.name)] = parents }
            if entry.kind == "TABLE", entry.partitioned == true { partitioned.insert(Name(schema: schema, name: entry.name)) }
            if entry.kind == "TABLE ATTACH", let partition = entry.table, let parent = entry.references?.first { partitionOf[partition] = parent }
        }

        // Owned and identity sequences, the indexes (constraint-backed too) and statistics of each table.
        let relations = Set(toc.entries.filter { ["TABLE", "FOREIGN TABLE", "VIEW", "MATERIALIZED VIEW"].contains($0.kind) }.compactMap { entry in
            entry.schema.map { Name(schema: $0, name: entry.name) }
        })
        var indexes: [Name: Name] = [:], statistics: [Name: Name] = [:]
        let allSequences = Set(toc.entries.filter { $0.kind == "SEQUENCE" }.compactMap { entry in entry.schema.map { Name(schema: $0, name: entry.name) } })
        for entry in toc.entries {
            guard let schema = entry.schema else { continue }
            if entry.kind == "CONSTRAINT", let (table, constraint) = Self.splitTag(entry.name, schema: schema, relations: relations) {
                // Tag "table constraint" (raw names).
                indexes[Name(schema: schema, name: constraint)] = table
            }
            guard let table = entry.table else { continue }
            switch entry.kind {
            case "INDEX": indexes[Name(schema: schema, name: entry.name)] = table
            case "STATISTICS": statistics[Name(schema: schema, name: entry.name)] = table
            default: break
            }
            guard chosen.contains(table) else { continue }
            if entry.kind == "SEQUENCE OWNED BY" || entry.kind == "SEQUENCE" { sequences.insert(Name(schema: schema, name: entry.name)) }
        }
        if supporting {
            // A default that draws from a sequence the table does not own (`nextval('sales.shared_seq')`):
            // the new database needs that sequence too, or the table cannot be created.
            for entry in toc.entries where entry.kind == "DEFAULT" || entry.kind == "TABLE" {
                guard let owner = Self.relation(of: entry, relations: relations, indexes: indexes, statistics: statistics), chosen.contains(owner) else { continue }
                sequences.formUnion((entry.references ?? []).filter { allSequences.contains($0) })
            }
        }
        self.indexes = Set(indexes.filter { chosen.contains($0.value) }.keys)
        self.statistics = Set(statistics.filter { chosen.contains($0.value) }.keys)
        for entry in toc.entries {
            let owner = Self.relation(of: entry, relations: relations, indexes: indexes, statistics: statistics)
            let ownerIsChosen = owner.map { chosen.contains($0) || sequences.contains($0) } ?? false
            if entry.kind == "FK CONSTRAINT" {
                let referenced = entry.references ?? []
                let inside = referenced.allSatisfy { chosen.contains($0) }
                if ownerIsChosen && (inside || outsideKeys) {
                    entries.append(entry)
                } else if ownerIsChosen {
                    leftOutForeignKeys.append(entry)
                } else if referenced.contains(where: { chosen.contains($0) }) {
                    referencingForeignKeys.append(entry)
                }
                continue
            }
            if !rules, ownerIsChosen, entry.kind == "RULE" || (entry.kind == "COMMENT" && entry.name.hasPrefix("RULE ")) {
                if entry.kind == "RULE" { leftOutRules.append(entry) }
                continue
            }
            if entry.kind == "TABLE ATTACH" || entry.kind == "INDEX ATTACH" {
                // Attaches a partition (or its index) to the partitioned table's: only with both in the selection.
                if ownerIsChosen, let parent = entry.references?.first, chosen.contains(parent) { entries.append(entry) }
                continue
            }
            if (entry.kind == "VIEW" || entry.kind == "MATERIALIZED VIEW"), !(wholeSchemas && schemas.contains(entry.schema ?? "")),
               (entry.references ?? []).contains(where: { chosen.contains($0) }) {
                dependentViews.append(entry)
                continue
            }
            if ownerIsChosen {
                entries.append(entry)
            } else if wholeSchemas, let schema = entry.schema, schemas.contains(schema) {
                // A publication's membership (`ALTER PUBLICATION p ADD TABLE …`, filed under the table's
                // schema) is the source's replication, and the publication itself is not brought.
                if Self.sourceOnly(entry) { continue }
                // A view of the schema that reads tables outside it cannot be created without them.
                if (entry.kind == "VIEW" || entry.kind == "MATERIALIZED VIEW"),
                   (entry.references ?? []).contains(where: { allTables.contains($0) && !chosen.contains($0) }) {
                    dependentViews.append(entry)
                    continue
                }
                entries.append(entry)
            } else if wholeSchemas, entry.schema == nil, schemas.contains(where: { entry.name == "SCHEMA \($0)" || entry.name == "SCHEMA \(QualifiedNames.display($0))" }) {
                entries.append(entry)
            } else if supporting, owner == nil, !Self.relationKinds.contains(entry.kind), !Self.namesRelation(entry),
                      !Self.sourceOnly(entry) {
                entries.append(entry)
            }
        }
    }

    /// Whether a name holds a line break (CR or LF), which pg_dump's headers show as a space.
    static func hasLineBreak(_ name: String) -> Bool {
        name.unicodeScalars.contains { $0 == "\n" || $0 == "\r" }
    }

    /// A name as pg_dump's `-- Name:` headers write it (and so the table of contents holds it): each
    /// CR and LF replaced by a space (pg_dump's `sanitize_line`).
    static func headerForm(_ name: String) -> String {
        var scalars = String.UnicodeScalarView()
        scalars.append(contentsOf: name.unicodeScalars.map { $0 == "\n" || $0 == "\r" ? " " : $0 })
        return String(scalars)
    }

    /// A name for a one-line message: as SQL reads it, with a line break written `\n` (`\r`).
    static func shown(_ name: Name) -> String {
        name.qualified.replacingOccurrences(of: "\r", with: "\\r").replacingOccurrences(of: "\n", with: "\\n")
    }

    /// The refusal for a selection that takes `table`, whose name has a line break: the table of
    /// contents knows it (and every object of it) only by its header form, shared with any table
    /// named so, so the restore could neither tell them apart nor move the right names.
    private static func lineBreakRefusal(_ table: Name, allTables: [Name], backupID: String) -> RecoveryError {
        let form = Name(schema: headerForm(table.schema), name: headerForm(table.name))
        let twins = allTables.filter { $0 == form }.count
        let twin = twins > 1 ? " (as they show table \(form.qualified) too)" : ""
        return RecoveryError(.usage, "table \(shown(table)) of backup \(backupID) has a line break in its name, which pg_dump's headers (what a selective restore reads) "
                                + "show as \(form.qualified)\(twin): a selective restore cannot tell its objects apart by name; nothing was changed",
                             hint: "restore the whole backup into a new database (dbrestore \(backupID) --database-url postgresql://…/NEWDB) and copy the table from there, "
                                + "or rename the table without the line break before the next backup")
    }

    /// Why the selected tables cannot go where asked, for tables in an inheritance or partition
    /// hierarchy; nil when they can.
    ///
    /// - Inheritance (`INHERITS`): a child created in a rescue schema attaches to the live parent (whose
    ///   rows then include the copy's), and `--replace` would leave the live hierarchy half old, half new:
    ///   only the whole hierarchy `--into-database` is exact.
    /// - Partitions: `--replace` cannot swap a partitioned table or a partition in place; a partitioned
    ///   table needs all its partitions (`--into-database`); a partition alone goes to a rescue schema or
    ///   a new database as a plain table, to be attached by hand.
    func hierarchyRefusal(replace: Bool, intoDatabase: Bool, backupID: String) -> RecoveryError? {
        let chosen = Set(tables)
        for table in tables {
            let children = inheritance.filter { $0.value.contains(table) }.keys.sorted()
            if let parents = inheritance[table] ?? (children.isEmpty ? nil : []) {
                var hierarchy = Set([table]), queue = [table]
                while let next = queue.popLast() {
                    let related = (inheritance[next] ?? []) + inheritance.filter { $0.value.contains(next) }.keys
                    for other in related where hierarchy.insert(other).inserted { queue.append(other) }
                }
                let relation = parents.isEmpty ? "is inherited by \(children.map(\.qualified).joined(separator: ", "))"
                    : "inherits from \(parents.map(\.qualified).joined(separator: ", "))"
                let all = hierarchy.sorted().map { "--table \($0.qualified)" }.joined(separator: " ")
                if !intoDatabase {
                    return RecoveryError(.usage, "\(table.qualified) \(relation) (INHERITS): \(replace ? "--replace" : "a rescue schema") cannot restore part of an inheritance hierarchy exactly; nothing was changed",
                                         hint: "restore the whole hierarchy into a new database: dbrestore \(backupID) \(all) --into-database NAME")
                }
                let missing = hierarchy.subtracting(chosen).sorted()
                if !missing.isEmpty {
                    return RecoveryError(.usage, "\(table.qualified) \(relation) (INHERITS), but \(missing.map(\.qualified).joined(separator: ", ")) is not selected; nothing was changed",
                                         hint: "select the whole hierarchy: dbrestore \(backupID) \(all) --into-database NAME")
                }
            }
            if replace, partitioned.contains(table) || partitionOf[table] != nil {
                return RecoveryError(.usage, "\(table.qualified) is \(partitioned.contains(table) ? "a partitioned table" : "a partition of \(partitionOf[table]?.qualified ?? "")"): --replace cannot swap it in place; nothing was changed",
                                     hint: "restore partitions with --into-schema or --into-database and attach them by hand (ALTER TABLE … ATTACH PARTITION), or restore the whole schema with --schema NAME --into-database NAME")
            }
            if partitioned.contains(table) {
                if !intoDatabase {
                    return RecoveryError(.usage, "\(table.qualified) is a partitioned table: a rescue schema cannot hold it with its partitions; nothing was changed",
                                         hint: "restore its partitions with --into-schema (each as a plain table), or the table with all its partitions --into-database NAME")
                }
                var partitions = Set<Name>(), queue = [table]
                while let next = queue.popLast() {
                    for (partition, parent) in partitionOf where parent == next && partitions.insert(partition).inserted { queue.append(partition) }
                }
                let missing = partitions.subtracting(chosen).sorted()
                if !missing.isEmpty {
                    let all = ([table] + partitions.sorted()).map { "--table \($0.qualified)" }.joined(separator: " ")
                    return RecoveryError(.usage, "\(table.qualified) is a partitioned table, but its partition(s) \(missing.map(\.qualified).joined(separator: ", ")) are not selected; nothing was changed",
                                         hint: "select them too: dbrestore \(backupID) \(all) --into-database NAME")
                }
            }
        }
        return nil
    }

    /// The relations and statistics whose qualified names move with the tables to another schema.
    var moved: Set<Name> { Set(tables).union(sequences).union(indexes).union(statistics) }

    /// Every name the selection creates in one schema, by namespace: relations (tables, sequences,
    /// indexes) and statistics. A rescue schema (or the staging schema of `--replace`) holds them all.
    var namesCreated: [(relations: Bool, name: Name)] {
        (tables + sequences.sorted() + indexes.sorted()).map { (true, $0) } + statistics.sorted().map { (false, $0) }
    }

    /// Why the selection cannot go into one schema: two objects of one name from different schemas
    /// (`sales.orders` and `archive.orders`, or two indexes named alike); nil when it can.
    func oneSchemaRefusal(into schema: String, replace: Bool, backupID: String) -> RecoveryError? {
        var seen: [String: Name] = [:]
        for (relations, name) in namesCreated {
            let key = (relations ? "r:" : "s:") + name.name
            guard let first = seen[key] else { seen[key] = name; continue }
            guard first != name else { continue }
            let kind = tables.contains(name) && tables.contains(first) ? "tables" : relations ? "relations (tables, sequences or indexes)" : "statistics"
            return RecoveryError(.usage, "\(first.qualified) and \(name.qualified) would both be named \(QualifiedNames.display(name.name)) in schema \(schema): "
                                    + "one schema cannot hold two \(kind) of one name, and they would not be merged; nothing was changed",
                                 hint: replace ? "replace them one at a time (one --table per run)"
                                    : "restore them one at a time, each --into-schema of its own, or together --into-database NAME (which keeps their schemas): dbrestore \(backupID) --table \(first.qualified) --into-schema NAME")
        }
        return nil
    }

    /// The relation an entry belongs to (its table, or the sequence or index it is), nil for others.
    private static func relation(of entry: Entry, relations: Set<Name>, indexes: [Name: Name], statistics: [Name: Name]) -> Name? {
        guard let schema = entry.schema else { return nil }
        if let table = entry.table { return table }
        switch entry.kind {
        case "TABLE", "FOREIGN TABLE", "TABLE DATA", "ROW SECURITY", "SEQUENCE", "SEQUENCE SET", "SEQUENCE OWNED BY", "VIEW", "MATERIALIZED VIEW",
             "MATERIALIZED VIEW DATA":
            return Name(schema: schema, name: entry.name)
        case "DEFAULT", "CONSTRAINT", "CHECK CONSTRAINT", "FK CONSTRAINT", "TRIGGER", "RULE", "POLICY":
            // Tag: "<table> <name>" (raw names).
            return splitTag(entry.name, schema: schema, relations: relations)?.relation
        case "COMMENT", "ACL", "SECURITY LABEL":
            return taggedRelation(entry.name, schema: schema, indexes: indexes, statistics: statistics)
        default:
            return nil
        }
    }

    /// A `<relation> <name>` tag (a constraint, default, trigger, rule or policy) split in two. Both
    /// names are raw and either may hold spaces (`a b a_b_pkey`): the relation is the longest prefix
    /// before a space that names a relation of `schema`, else the text before the first space.
    static func splitTag(_ tag: String, schema: String, relations: Set<Name>) -> (relation: Name, name: String)? {
        let spaces = tag.indices.filter { tag[$0] == " " }
        guard let first = spaces.first else { return nil }
        let space = spaces.last { relations.contains(Name(schema: schema, name: String(tag[..<$0]))) } ?? first
        return (Name(schema: schema, name: String(tag[..<space])), String(tag[tag.index(after: space)...]))
    }

    /// The relation a `COMMENT`/`ACL` tag names: `TABLE orders`, `COLUMN orders.total`,
    /// `SEQUENCE orders_id_seq`, `INDEX orders_customer`, `CONSTRAINT c ON orders`, … (names
    /// quoted as SQL needs).
    private static func taggedRelation(_ tag: String, schema: String, indexes: [Name: Name], statistics: [Name: Name]) -> Name? {
        if tag.hasPrefix("INDEX ") {
            let index = Name(schema: schema, name: unquote(String(tag.dropFirst("INDEX ".count))))
            return indexes[index] ?? index
        }
        if tag.hasPrefix("STATISTICS ") {
            let object = Name(schema: schema, name: unquote(String(tag.dropFirst("STATISTICS ".count))))
            return statistics[object] ?? object
        }
        for word in ["TABLE ", "VIEW ", "MATERIALIZED VIEW ", "SEQUENCE ", "FOREIGN TABLE "] where tag.hasPrefix(word) {
            return Name(schema: schema, name: unquote(String(tag.dropFirst(word.count))))
        }
        if tag.hasPrefix("COLUMN ") {
            let rest = Array(String(tag.dropFirst("COLUMN ".count)).utf8)
            let (parts, _, _) = QualifiedNames.chain(in: rest, from: 0, to: rest.count)
            return parts.count == 2 ? Name(schema: schema, name: parts[0]) : nil
        }
        for word in ["CONSTRAINT ", "TRIGGER ", "POLICY ", "RULE "] where tag.hasPrefix(word) {
            guard let on = tag.range(of: " ON ", options: .backwards) else { return nil }
            return Name(schema: schema, name: unquote(String(tag[on.upperBound...])))
        }
        return nil
    }

    /// Whether a `COMMENT`/`ACL` entry is about a relation (so not a supporting object).
    private static func namesRelation(_ entry: Entry) -> Bool {
        guard ["COMMENT", "ACL", "SECURITY LABEL"].contains(entry.kind) else { return false }
        return relationTagWords.contains { entry.name.hasPrefix($0 + " ") }
    }

    /// A name as pg_dump's tags write it (quoted where SQL needs it) back to the name.
    private static func unquote(_ text: String) -> String {
        let bytes = Array(text.utf8)
        let (parts, _, end) = QualifiedNames.chain(in: bytes, from: 0, to: bytes.count)
        // A quoted name reads back exactly; a bare one is already what pg_dump's tags hold.
        return parts.count == 1 && end == bytes.count && text.hasPrefix("\"") ? parts[0] : text
    }

    /// One part of a pattern: exact when double-quoted, else folded to lower case with `*` and `?` wildcards.
    struct Part {
        let text: String
        let exact: Bool

        init(_ pattern: String) {
            if pattern.count >= 2, pattern.hasPrefix("\""), pattern.hasSuffix("\"") {
                text = String(pattern.dropFirst().dropLast()).replacingOccurrences(of: "\"\"", with: "\"")
                exact = true
            } else {
                text = pattern.lowercased()
                exact = false
            }
        }

        func matches(_ name: String) -> Bool {
            exact ? name == text : Self.glob(Array(text.unicodeScalars), Array(name.unicodeScalars))
        }

        private static func glob(_ pattern: [Unicode.Scalar], _ name: [Unicode.Scalar]) -> Bool {
            var p = 0, n = 0, star = -1, mark = 0
            while n < name.count {
                if p < pattern.count, pattern[p] == "?" || pattern[p] == name[n] {
                    p += 1; n += 1
                } else if p < pattern.count, pattern[p] == "*" {
                    star = p; mark = n; p += 1
                } else if star >= 0 {
                    p = star + 1; mark += 1; n = mark
                } else {
                    return false
                }
            }
            while p < pattern.count, pattern[p] == "*" { p += 1 }
            return p == pattern.count
        }
    }

    /// `SCHEMA.NAME` split at the dot outside double quotes.
    ///
    /// - Throws: `RecoveryError(.usage)` when there is no schema part.
    static func split(_ pattern: String) throws -> (Part, Part) {
        var quoted = false
        for index in pattern.indices {
            let character = pattern[index]
            if character == "\"" { quoted.toggle() }
            if character == ".", !quoted {
                return (Part(String(pattern[..<index])), Part(String(pattern[pattern.index(after: index)...])))
            }
        }
        throw RecoveryError(.usage, "--table \(pattern) names no schema", hint: "write SCHEMA.NAME, e.g. --table public.\(pattern) or --table 'sales.*'")
    }
}
