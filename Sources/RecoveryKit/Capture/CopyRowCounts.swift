/// The rows pg_dump wrote for each table, counted from the dump's `COPY … FROM stdin` blocks while
/// the dump streams past (`DumpContentsBuilder`): in COPY's text format every row is one line, so
/// these are exactly the rows a restore loads, read in the dump's own snapshot by pg_dump itself,
/// with no second scan of the tables (`TableCounter.rows(from:…)` turns them into the manifest's counts).
struct CopyRowCounts {
    /// One COPY block: the table's name as the header spells it, unquoted, in the dump's encoding.
    struct Block {
        var schema: [UInt8]
        var name: [UInt8]
        var rows: Int64
    }

    /// In the dump's order.
    var blocks: [Block] = []
    /// The dump's `client_encoding` where its first COPY block stood: the encoding of the names in
    /// the headers (pg_dump sets it once, before any data).
    var encoding: String?
    /// Excerpts of COPY statements whose table could not be told (not a `schema.table` name, or
    /// under another encoding): pg_dump writes none; a table they would have filled has no block.
    var unreadable: [String] = []
}
