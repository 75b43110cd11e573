import BackupStorage
import Foundation
import PostgresClient
import ProcessSignals

/// A full restore from a backup with a table of contents: the tables' rows load over `jobs`
/// connections at once, each table whole on one connection, in one transaction that empties it
/// and loads it with `COPY … FREEZE` — the rows are written frozen, so the index builds after them
/// and every later reader need not set and write back hint bits.
///
/// Each connection reads its own part of the dump from the access points (`DumpSegments`: every
/// stored byte is still read, checked and decoded once): the schema first on the loader's own
/// connection; then the tables' rows on `jobs` connections (big tables first, runs of small ones
/// together) while the loader's connection reads the rest of the dump; a connection with no table
/// left builds the indexes and keys that open the post-data on tables already loaded, as
/// `pg_restore -j` does; `ParallelLoader.finish()` runs the rest of the post-data as for a
/// sequential read. The outcome is psql's: tables load in another order only where nothing can
/// tell (`ParallelLoader.rowsMayLoadInLanes`, `leadingBuilds`), otherwise the rows are read in
/// dump order as `DumpApplier` reads the whole stream.
enum TableLanes {
    /// The dump's parts: the schema before the first table's rows, the run of tables' rows, the rest.
    struct Parts {
        var schema: Range<UInt64>
        /// Runs of consecutive tables' rows, each loaded on one connection, in the order to start them.
        var tasks: [Range<UInt64>]
        var rest: Range<UInt64>
        /// No table has rows in two places of the dump (pg_dump writes one per table): a table's
        /// indexes may be built once its one COPY is committed.
        var tablesLoadOnce: Bool

        /// A run of small tables is loaded together up to about this many bytes of the dump (less
        /// where a quarter of each connection's share of the rows is less).
        static let smallRun: UInt64 = 16 << 20

        /// nil when the dump has no table rows in its table of contents, or its entries have gaps.
        init?(_ toc: DumpTableOfContents, jobs: Int) {
            let entries = toc.entries
            guard let first = entries.firstIndex(where: { $0.kind == "TABLE DATA" }) else { return nil }
            var last = first
            while last + 1 < entries.count, entries[last + 1].kind == "TABLE DATA" { last += 1 }
            let tables = entries[first...last]
            guard zip(tables, tables.dropFirst()).allSatisfy({ $0.end == $1.start }), tables[last].end <= toc.dumpBytes else { return nil }
            let names = tables.map { DumpTableOfContents.Name(schema: $0.schema ?? "", name: $0.name) }
            tablesLoadOnce = Set(names).count == names.count
            schema = 0..<tables[first].start
            rest = tables[last].end..<toc.dumpBytes
            let total = tables[last].end - tables[first].start
            let small = min(Self.smallRun, total / UInt64(4 * max(1, jobs)))
            var runs: [Range<UInt64>] = []
            for table in tables {
                if let open = runs.last, open.count < small, table.bytes < small, open.upperBound == table.start {
                    runs[runs.count - 1] = open.lowerBound..<table.end
                } else {
                    runs.append(table.start..<table.end)
                }
            }
            // The big ones first, largest first, so that no connection is left with one at the end;
            // the rest in dump order (a boundary segment shared by neighbours is kept in memory only briefly).
            let big = runs.filter { UInt64($0.count) * 8 >= total }.sorted { $0.count > $1.count }
            tasks = big + runs.filter { UInt64($0.count) * 8 < total }
        }

        /// Whether `jobs` connections, one table each, share the rows' work about as well as
        /// rows split over all of them would: the biggest run is at most a quarter more than an
        /// even share. Otherwise (one table holds most rows) the rows are read in dump order and
        /// split over the connections (`ParallelLoader`), without `FREEZE`, which needs one transaction.
        func balanced(over jobs: Int) -> Bool {
            let total = tasks.reduce(0) { $0 + UInt64($1.count) }
            return UInt64(tasks.map(\.count).max() ?? 0) * UInt64(jobs) * 4 <= total * 5
        }

        /// Where the parts start, besides 0.
        var boundaries: [UInt64] { [schema.upperBound] + tasks.map(\.lowerBound) + [rest.lowerBound] }
    }

    /// Replays the dump into the loader's database; see the type's description.
    ///
    /// - Throws: `RecoveryError` (`.backupCorrupt` for a damaged segment, also when a server error
    ///   came first and the rest of the file shows the damage; `.restoreFailed`).
    static func apply(_ manifest: BackupManifest, file: BackupManifest.File, toc: DumpTableOfContents, parts: Parts,
                      store: BackupStore, loader: ParallelLoader, progress: ProgressObserver?) throws -> LoadedRows {
        let segments = DumpSegments(file, of: manifest, toc: toc, store: store, boundaries: parts.boundaries, progress: progress)
        defer { progress?.finished() }
        try segments.checkSize()
        do {
            let scanner = DumpScanner(backupID: manifest.id) { try loader.handle($0) }
            try segments.read(parts.schema) { try scanner.write($0) }
            try loader.beginData(scanner.settings)
            if loader.rowsMayLoadInLanes && parts.balanced(over: loader.jobs) {
                try load(parts, toc: toc, segments: segments, manifest: manifest, loader: loader, scanner: scanner)
            } else {
                try segments.read(parts.schema.upperBound..<parts.rest.upperBound) { try scanner.write($0) }
                try scanner.finish()
            }
            guard segments.allVerified else {
                throw RecoveryError(.backupCorrupt, "backup \(manifest.id): \(file.name) was not read in full from its access points",
                                    hint: "nothing was applied from it; restore another backup")
            }
        } catch {
            segments.stop()
            guard !Interruption.isRequested, RecoveryError.classify(error).code != .backupCorrupt else { throw error }
            // As a sequential read would: the rest of the file is checked, a damaged one is reported as such.
            try segments.checkRest()
            throw error
        }
        return try loader.finish()
    }

    /// Loads the runs of tables over up to `loader.jobs` connections of their own while this thread
    /// reads the rest of the dump into `scanner` (its statements wait in the loader, `setval` runs);
    /// a connection with no table left to load builds the indexes and keys that open the post-data,
    /// on tables whose rows are in.
    private static func load(_ parts: Parts, toc: DumpTableOfContents, segments: DumpSegments, manifest: BackupManifest,
                             loader: ParallelLoader, scanner: DumpScanner) throws {
        let shared = Shared(tasks: parts.tasks, freeze: try loader.tablesToFreeze())
        var connections: [LoaderConnection] = []
        defer { connections.forEach { $0.close() } }
        while connections.count < min(loader.jobs, parts.tasks.count),
              let connection = try loader.extraConnection(required: connections.isEmpty) {
            connections.append(connection)
        }
        func run(on connection: LoaderConnection) throws {
            do {
                while let task = shared.next() {
                    let lane = Lane(connection: connection, shared: shared)
                    let scanner = DumpScanner(backupID: manifest.id) { try lane.handle($0) }
                    for setting in toc.settings where setting.offset < task.lowerBound { try replay(setting, into: scanner) }
                    try segments.read(task) { try scanner.write($0) }
                    try scanner.finish()
                    try lane.commit()
                }
                while let build = shared.nextBuild() {
                    for (index, statement) in build {
                        do {
                            try connection.run(statement)
                        } catch let error as PostgresError where error.sqlState == PostgresError.deadlockDetected {
                            break   // left to the post-data, which retries it alone
                        }
                        shared.built(index)
                    }
                }
            } catch {
                shared.fail()
                segments.stop()
                throw error
            }
        }
        let lanes = connections.map { connection in Background { try run(on: connection) } }
        var errors: [Error] = []
        do {
            // The settings the rows' parts made stand for the rest, as in psql's one session.
            for setting in toc.settings where parts.schema.upperBound <= setting.offset && setting.offset < parts.rest.lowerBound {
                try replay(setting, into: scanner)
            }
            try segments.read(parts.rest) { try scanner.write($0) }
            try scanner.finish()
            shared.publish(parts.tablesLoadOnce ? try loader.leadingBuilds() : [])
        } catch {
            errors.append(error)
            shared.fail()
            segments.stop()
        }
        for lane in lanes {
            do { try lane.wait() } catch { errors.append(error) }
        }
        // A damaged segment first (the next copy or candidate is tried), then the first real failure.
        let real = errors.filter { !($0 is DumpSegments.Stopped) }
        if let error = real.first(where: { RecoveryError.classify($0).code == .backupCorrupt }) ?? real.first ?? errors.first { throw error }
        for (target, rows) in shared.copies { loader.recordCopy(of: target, rows: rows) }
        if let reason = shared.inexact { loader.markInexact(reason) }
        loader.skipPostData(shared.builtStatements)
    }

    private static func replay(_ setting: DumpTableOfContents.Setting, into scanner: DumpScanner) throws {
        guard let sql = Data(base64Encoded: setting.sql) else { return }
        try (Array(sql) + Array(";\n".utf8)).withUnsafeBytes { try scanner.write($0) }
    }

    /// What the connections share: the runs still to load, the tables started and loaded, the COPY
    /// results, the post-data's opening builds. Thread-safe: its state is only touched under `condition`.
    private final class Shared {
        typealias Build = [(index: Int, statement: DumpScanner.Statement)]
        private let condition = NSCondition()
        private var tasks: [Range<UInt64>]
        private var started: Set<[UInt8]> = []
        /// Tables whose rows are committed, as the post-data's statements spell them.
        private var loaded: Set<String> = []
        private var results: [(target: [UInt8], rows: Int64)] = []
        private var reason: String?
        private var failed = false
        /// The opening builds by table (nil until the rest of the dump has been read), and those run.
        private var builds: [(table: String, statements: Build)]?
        private var built: Set<Int> = []
        let freeze: Set<[UInt8]>

        init(tasks: [Range<UInt64>], freeze: Set<[UInt8]>) {
            self.tasks = tasks
            self.freeze = freeze
        }

        func next() -> Range<UInt64>? { condition.withLock { failed || tasks.isEmpty ? nil : tasks.removeFirst() } }

        func fail() {
            condition.withLock {
                failed = true
                condition.broadcast()
            }
        }

        /// Whether this is the first COPY into `target`: only then may it be emptied (a second COPY
        /// into the same table, which pg_dump never writes, adds to the first one's rows).
        func start(_ target: [UInt8]) -> Bool { condition.withLock { started.insert(target).inserted } }

        /// A COPY committed. Only a table emptied and frozen by it (an ordinary table, whole in this
        /// COPY) counts as loaded for its builds: a COPY through a partitioned root loads others.
        func loaded(_ target: [UInt8], rows: Int64, frozen: Bool) {
            condition.withLock {
                results.append((target, rows))
                if frozen { loaded.insert(String(decoding: target, as: UTF8.self)) }
            }
        }

        func markInexact(_ reason: String) { condition.withLock { self.reason = self.reason ?? reason } }
        var copies: [(target: [UInt8], rows: Int64)] { condition.withLock { results } }
        var inexact: String? { condition.withLock { reason } }

        func publish(_ builds: [(table: String, statements: Build)]) {
            condition.withLock {
                self.builds = builds
                condition.broadcast()
            }
        }

        /// The builds of a table whose rows are in, once the rest of the dump has been read; nil when
        /// none is ready (the post-data runs the others).
        func nextBuild() -> Build? {
            condition.withLock {
                while builds == nil && !failed { condition.wait() }
                guard !failed, let index = builds?.firstIndex(where: { loaded.contains($0.table) }) else { return nil }
                return builds?.remove(at: index).statements
            }
        }

        func built(_ index: Int) { condition.withLock { _ = built.insert(index) } }
        var builtStatements: Set<Int> { condition.withLock { built } }
    }

    /// One connection's handling of a run of tables: each COPY in its own transaction, frozen where
    /// the table may be emptied first.
    private final class Lane {
        let connection: LoaderConnection
        let shared: Shared
        private var open: (target: [UInt8], statement: DumpScanner.Statement, frozen: Bool)?

        init(connection: LoaderConnection, shared: Shared) {
            self.connection = connection
            self.shared = shared
        }

        func handle(_ event: DumpScanner.Event) throws {
            switch event {
            case .statement(let statement):
                // pg_dump writes only COPY here (INSERTs with --inserts): run as psql would, counted with count(*).
                try commit()
                shared.markInexact("the dump's rows are not all COPY")
                try connection.run(statement)
            case .copyStart(let statement):
                try commit()
                let target = ParallelLoader.copyTarget(statement.sql)
                let freeze = shared.start(target) && shared.freeze.contains(target)
                try connection.use(statement.settings)
                do {
                    try connection.connection.execute(script: "BEGIN")
                    if freeze { try connection.connection.execute(bytes: Array("TRUNCATE ONLY ".utf8) + target) }
                } catch {
                    throw DumpApplier.failure(error, in: statement.excerpt, backupID: connection.backupID)
                }
                try connection.beginCopy(freeze ? .init(sql: statement.sql + Array(" WITH (FREEZE)".utf8), settings: statement.settings) : statement)
                open = (target, statement, freeze)
            case .copyRows(let rows):
                guard let open else { return }
                do { try connection.connection.putCopyData(rows) } catch {
                    throw DumpApplier.failure(error, in: open.statement.excerpt, backupID: connection.backupID)
                }
            case .copyEnd:
                try commit()
            }
        }

        /// Ends the open COPY and commits its transaction; records the rows the server reported.
        func commit() throws {
            guard let current = open else { return }
            open = nil
            do {
                let rows = try connection.connection.endCopy()
                try connection.connection.execute(script: "COMMIT")
                shared.loaded(current.target, rows: rows, frozen: current.frozen)
            } catch {
                throw DumpApplier.failure(error, in: current.statement.excerpt, backupID: connection.backupID)
            }
        }
    }
}
