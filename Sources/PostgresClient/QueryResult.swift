internal import CLibPQ

/// Rows of one statement, copied out of libpq's result so no C memory escapes.
public struct QueryResult: Sendable {
    /// Column names in order.
    public let columns: [String]
    /// Every row; nil is SQL NULL.
    public let rows: [Row]
    /// The command tag's row count (`INSERT 0 5` → 5), or 0.
    public let affectedRows: Int

    /// One row of text values, with typed accessors for the few types we decode.
    public struct Row: Sendable {
        public let values: [String?]
        let columns: [String]

        /// The raw text of column `index`.
        public subscript(index: Int) -> String? { values[index] }

        /// The raw text of the named column.
        public subscript(column: String) -> String? {
            columns.firstIndex(of: column).flatMap { values[$0] }
        }

        /// Column `index` as text.
        /// - Throws: `PostgresError.protocolViolation` if it is NULL.
        public func string(_ index: Int) throws -> String {
            guard index < values.count, let value = values[index] else {
                throw PostgresError(kind: .protocolViolation, operation: "decode column \(index)", message: "unexpected NULL")
            }
            return value
        }

        /// Column `index` as a 64-bit integer.
        /// - Throws: `PostgresError.protocolViolation` if it is NULL or not an integer.
        public func int64(_ index: Int) throws -> Int64 {
            let text = try string(index)
            guard let value = Int64(text) else {
                throw PostgresError(kind: .protocolViolation, operation: "decode column \(index)", message: "'\(text)' is not an integer")
            }
            return value
        }

        /// Column `index` as a boolean (`t` / `f`).
        public func bool(_ index: Int) throws -> Bool {
            try string(index) == "t"
        }
    }

    init(copying result: OpaquePointer?) {
        guard let result else {
            columns = []; rows = []; affectedRows = 0
            return
        }
        let columnCount = Int(PQnfields(result))
        let rowCount = Int(PQntuples(result))
        let columns = (0..<columnCount).map { String(cString: PQfname(result, Int32($0))) }
        self.columns = columns
        rows = (0..<rowCount).map { row in
            Row(values: (0..<columnCount).map { column in
                PQgetisnull(result, Int32(row), Int32(column)) == 1
                    ? nil : String(cString: PQgetvalue(result, Int32(row), Int32(column)))
            }, columns: columns)
        }
        affectedRows = Int(String(cString: PQcmdTuples(result))) ?? 0
    }

    /// The first row's first column, if any.
    public var scalar: String? { rows.first?.values.first ?? nil }
}
