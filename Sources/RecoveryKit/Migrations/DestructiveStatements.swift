import Foundation

/// Finds `DROP TABLE t` and `ALTER TABLE t DROP COLUMN c` in a script (for warnings only).
enum DestructiveStatements {
    struct Target: Equatable {
        var table: String
        var column: String?
    }

    static func targets(in sql: String) -> [Target] {
        var targets: [Target] = []
        for statement in SQLStatements.split(sql) {
            let words = statement.split(whereSeparator: { $0.isWhitespace || $0 == "," }).map(String.init)
            let upper = words.map { $0.uppercased() }
            if upper.starts(with: ["DROP", "TABLE"]) {
                var names = Array(words.dropFirst(2))
                if names.first?.uppercased() == "IF" { names = Array(names.dropFirst(2)) }
                for name in names where !["CASCADE", "RESTRICT"].contains(name.uppercased()) {
                    targets.append(Target(table: name, column: nil))
                }
            } else if upper.starts(with: ["ALTER", "TABLE"]) {
                var rest = Array(words.dropFirst(2))
                if rest.first?.uppercased() == "IF" { rest = Array(rest.dropFirst(2)) }
                if rest.first?.uppercased() == "ONLY" { rest = Array(rest.dropFirst()) }
                guard let table = rest.first else { continue }
                var index = 1
                while index < rest.count {
                    if rest[index].uppercased() == "DROP", index + 1 < rest.count, rest[index + 1].uppercased() == "COLUMN" {
                        var column = index + 2
                        if column < rest.count, rest[column].uppercased() == "IF" { column += 2 }
                        if column < rest.count { targets.append(Target(table: table, column: rest[column].trimmingCharacters(in: CharacterSet(charactersIn: "\"")))) }
                    }
                    index += 1
                }
            }
        }
        return targets
    }
}
