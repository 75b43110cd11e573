/// Schema-qualified names (`sales.orders`, `"Sales"."Order"`, `sales.orders.id`) in one statement
/// of a dump, outside comments and dollar-quoted bodies, and inside string literals that are a
/// whole name (`nextval('sales.orders_id_seq'::regclass)`, `setval('sales.orders_id_seq', …)`).
///
/// Not a statement splitter (statements come whole from `DumpScanner`/`SQLLexer`): it finds the
/// names pg_dump writes, so a selective restore can tell which table an index or a sequence
/// belongs to and create a table's objects in another schema. pg_dump qualifies every name
/// (`search_path` is empty in its output) and writes no space around the dot.
public struct QualifiedNames {
    /// One qualified name found.
    struct Reference: Equatable {
        /// The parts, unquoted (bare parts folded to lower case, as the server folds them).
        var parts: [String]
        /// Bytes of the first part (the schema) in the statement, quotes included.
        var schemaRange: Range<Int>
        /// Inside a string literal (a regclass or a setval argument).
        var inLiteral: Bool
    }

    /// Every qualified name (two or more parts) in `sql`, in order.
    static func references(in sql: [UInt8]) -> [Reference] {
        var found: [Reference] = []
        var index = 0
        let count = sql.count
        func at(_ position: Int) -> UInt8? { position < count ? sql[position] : nil }
        while index < count {
            let byte = sql[index]
            if byte == UInt8(ascii: "-"), at(index + 1) == UInt8(ascii: "-") {
                while index < count, sql[index] != UInt8(ascii: "\n") { index += 1 }
            } else if byte == UInt8(ascii: "/"), at(index + 1) == UInt8(ascii: "*") {
                var depth = 0
                repeat {
                    if sql[index] == UInt8(ascii: "/"), at(index + 1) == UInt8(ascii: "*") { depth += 1; index += 2 }
                    else if sql[index] == UInt8(ascii: "*"), at(index + 1) == UInt8(ascii: "/") { depth -= 1; index += 2 }
                    else { index += 1 }
                } while depth > 0 && index < count
            } else if byte == UInt8(ascii: "'") {
                index = literal(in: sql, from: index, escapes: false, into: &found)
            } else if byte == UInt8(ascii: "$"), let tagEnd = dollarTagEnd(in: sql, at: index) {
                let tag = Array(sql[index...tagEnd])
                index = tagEnd + 1
                while index < count, !(sql[index] == UInt8(ascii: "$") && sql[index...].starts(with: tag)) { index += 1 }
                index = min(count, index + tag.count)
            } else if isIdentifierStart(byte) || byte == UInt8(ascii: "\"") {
                // E'…' takes backslash escapes; other one-letter prefixes (B, X, N, U&) do not matter here.
                if (byte | 0x20) == UInt8(ascii: "e"), at(index + 1) == UInt8(ascii: "'") {
                    index = literal(in: sql, from: index + 1, escapes: true, into: &found)
                    continue
                }
                let (parts, ranges, end) = chain(in: sql, from: index, to: count)
                if parts.count >= 2, let first = ranges.first { found.append(Reference(parts: parts, schemaRange: first, inLiteral: false)) }
                index = max(end, index + 1)
            } else {
                index += 1
            }
        }
        return found
    }

    /// `sql` with every qualified reference to one of `relations` (schema, name) pointed at
    /// `schema` instead: the schema part replaced by the new one, quoted (and, inside a literal,
    /// with its quotes doubled).
    ///
    /// - Parameter quoting: how the new schema is written: always quoted (the default), or
    ///   `display` to write it as pg_dump does (quoted only where needed).
    static func rewrite(_ sql: [UInt8], moving relations: Set<DumpTableOfContents.Name>, to schema: String,
                        quoting: (String) -> String = quote) -> [UInt8] {
        let matches = references(in: sql).filter { relations.contains(.init(schema: $0.parts[0], name: $0.parts[1])) }
        guard !matches.isEmpty else { return sql }
        var result: [UInt8] = []
        result.reserveCapacity(sql.count + matches.count * schema.utf8.count)
        var copied = 0
        for match in matches {
            result.append(contentsOf: sql[copied..<match.schemaRange.lowerBound])
            var quoted = Array(quoting(schema).utf8)
            if match.inLiteral { quoted = quoted.flatMap { $0 == UInt8(ascii: "'") ? [$0, $0] : [$0] } }
            result.append(contentsOf: quoted)
            copied = match.schemaRange.upperBound
        }
        result.append(contentsOf: sql[copied...])
        return result
    }

    /// An identifier as SQL writes it: always double-quoted (valid for any name, never a keyword).
    static func quote(_ identifier: String) -> String {
        "\"" + identifier.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    /// A name as `--table`/`--schema`, messages and listings show it: bare when it reads back the
    /// same, else quoted — as the server's `quote_ident` writes it (so `sales."order"` matches what
    /// `regclass::text` prints): lower-case letters, digits and `_` only, and no keyword other than unreserved.
    public static func display(_ identifier: String) -> String {
        let bytes = Array(identifier.utf8)
        guard let first = bytes.first, (97...122).contains(first) || first == UInt8(ascii: "_") else { return quote(identifier) }
        let bare = bytes.allSatisfy { (97...122).contains($0) || (48...57).contains($0) || $0 == UInt8(ascii: "_") }
        return bare && !keywords.contains(identifier) ? identifier : quote(identifier)
    }

    /// `schema.name` with both parts always quoted: for SQL and for `to_regclass`.
    static func sql(_ name: DumpTableOfContents.Name) -> String {
        quote(name.schema) + "." + quote(name.name)
    }

    /// PostgreSQL's keywords that are not unreserved (reserved, type/function names, column names;
    /// PostgreSQL 18's kwlist.h, a superset of the older majors'): a bare one does not read back as a name.
    static let keywords: Set<String> = [
        "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "authorization", "between", "bigint", "binary", "bit",
        "boolean", "both", "case", "cast", "char", "character", "check", "coalesce", "collate", "collation", "column", "concurrently", "constraint",
        "create", "cross", "current_catalog", "current_date", "current_role", "current_schema", "current_time", "current_timestamp", "current_user",
        "dec", "decimal", "default", "deferrable", "desc", "distinct", "do", "else", "end", "except", "exists", "extract", "false", "fetch", "float",
        "for", "foreign", "freeze", "from", "full", "grant", "greatest", "group", "grouping", "having", "ilike", "in", "initially", "inner", "inout",
        "int", "integer", "intersect", "interval", "into", "is", "isnull", "join", "json", "json_array", "json_arrayagg", "json_exists",
        "json_object", "json_objectagg", "json_query", "json_scalar", "json_serialize", "json_table", "json_value", "lateral", "leading", "least",
        "left", "like", "limit", "localtime", "localtimestamp", "merge_action", "national", "natural", "nchar", "none", "normalize", "not",
        "notnull", "null", "nullif", "numeric", "offset", "on", "only", "or", "order", "out", "outer", "overlaps", "overlay", "placing", "position",
        "precision", "primary", "real", "references", "returning", "right", "row", "select", "session_user", "setof", "similar", "smallint", "some",
        "substring", "symmetric", "system_user", "table", "tablesample", "then", "time", "timestamp", "to", "trailing", "treat", "trim", "true",
        "union", "unique", "user", "using", "values", "varchar", "variadic", "verbose", "when", "where", "window", "with", "xmlattributes",
        "xmlconcat", "xmlelement", "xmlexists", "xmlforest", "xmlnamespaces", "xmlparse", "xmlpi", "xmlroot", "xmlserialize", "xmltable",
    ]

    /// Parses `part(.part)*` from `start`; returns the unquoted parts, each part's byte range and where it stopped.
    static func chain(in sql: [UInt8], from start: Int, to end: Int) -> (parts: [String], ranges: [Range<Int>], end: Int) {
        let (parts, ranges, stop) = byteChain(in: sql, from: start, to: end)
        return (parts.map(ByteText.utf8OrLatin1), ranges, stop)
    }

    /// `chain` with each unquoted part as its bytes in the dump's encoding, undecoded: what two
    /// names must share to be the same name (decoding may map different bytes to one string).
    static func byteChain(in sql: [UInt8], from start: Int, to end: Int) -> (parts: [[UInt8]], ranges: [Range<Int>], end: Int) {
        var parts: [[UInt8]] = [], ranges: [Range<Int>] = []
        var index = start
        while index < end {
            let partStart = index
            var part: [UInt8] = []
            if sql[index] == UInt8(ascii: "\"") {
                index += 1
                var closed = false
                while index < end {
                    if sql[index] == UInt8(ascii: "\"") {
                        if index + 1 < end, sql[index + 1] == UInt8(ascii: "\"") { part.append(sql[index]); index += 2; continue }
                        index += 1
                        closed = true
                        break
                    }
                    part.append(sql[index])
                    index += 1
                }
                guard closed else { return (parts, ranges, index) }
            } else if isIdentifierStart(sql[index]) {
                while index < end, isIdentifierStart(sql[index]) || (48...57).contains(sql[index]) || sql[index] == UInt8(ascii: "$") {
                    let byte = sql[index]
                    part.append((65...90).contains(byte) ? byte | 0x20 : byte)
                    index += 1
                }
            } else {
                break
            }
            parts.append(part)
            ranges.append(partStart..<index)
            guard index + 1 < end, sql[index] == UInt8(ascii: "."), isIdentifierStart(sql[index + 1]) || sql[index + 1] == UInt8(ascii: "\"") else { break }
            index += 1
        }
        return (parts, ranges, index)
    }

    /// Skips a literal starting at its quote; records it when its whole content is a qualified name.
    private static func literal(in sql: [UInt8], from quote: Int, escapes: Bool, into found: inout [Reference]) -> Int {
        var index = quote + 1
        var plain = true
        while index < sql.count {
            let byte = sql[index]
            if escapes && byte == UInt8(ascii: "\\") { plain = false; index += 2; continue }
            if byte == UInt8(ascii: "'") {
                if index + 1 < sql.count, sql[index + 1] == UInt8(ascii: "'") { plain = false; index += 2; continue }
                break
            }
            index += 1
        }
        let end = min(index, sql.count)
        // Only where pg_dump writes a relation as a literal: `'…'::regclass` and `setval('…', …)`;
        // any other text stays as it is, even when it reads like a name. A name with a quote or
        // backslash in it would need unescaping first; pg_dump's regclass literals have none.
        let regclass = sql[min(end + 1, sql.count)...].starts(with: Array("::regclass".utf8))
        let setval = sql[..<quote].reversed().starts(with: Array("setval(".utf8).reversed())
        if plain, regclass || setval, end > quote + 1 {
            let (parts, ranges, stop) = chain(in: sql, from: quote + 1, to: end)
            if stop == end, parts.count >= 2, let first = ranges.first { found.append(Reference(parts: parts, schemaRange: first, inLiteral: true)) }
        }
        return end + 1
    }

    /// The end of a `$tag$` opening at `index` (a `$` not inside a word, as in psql), or nil.
    private static func dollarTagEnd(in sql: [UInt8], at index: Int) -> Int? {
        if index > 0, isIdentifierStart(sql[index - 1]) || (48...57).contains(sql[index - 1]) { return nil }
        var end = index + 1
        while end < sql.count, isIdentifierStart(sql[end]) || (48...57).contains(sql[end]) { end += 1 }
        return end < sql.count && sql[end] == UInt8(ascii: "$") ? end : nil
    }

    private static func isIdentifierStart(_ byte: UInt8) -> Bool {
        (97...122).contains(byte) || (65...90).contains(byte) || byte == UInt8(ascii: "_") || byte >= 0x80
    }
}
