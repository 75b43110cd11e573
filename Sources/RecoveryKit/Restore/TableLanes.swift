import BackupStorage
import Foundation
import PostgresClient
import ProcessSignals
import Synchronization

/// A full restore from a backup with a table of contents: the tables' rows load over `jobs`
/// connections at once, each table whole on one connection, in one transaction that empties it
/// and loads it with `COPY … FREEZE` — the rows are written frozen, so the index builds after them
/// and every later reader need not set and write back hint bits.
///
/// Each connection reads its own part of the dump from the access points (`DumpSegments`: every
/// stored byte is still read, checked and decoded once): the schema first on one connection, then
/// the tables' rows (big tables first, runs of small ones together), then the post-data, which
/// `ParallelLoader.finish()` runs as for a sequential read. The outcome is psql's: tables load in
/// another order only where nothing can tell (`ParallelLoader.rowsMayLoadInLanes`), otherwise the
/// rows are read in dump order as `DumpApplier` reads the whole stream.
enum TableLanes {
    /// The dump's parts: the schema before the first table's rows, the run of tables' rows, the rest.
    struct Parts {
        var schema: Range<UInt64>
        /// Runs of consecutive tables' rows, each loaded on one connection, in the order to start them.
        var tasks: [Range<UInt64>]
        var rest: Range<UInt64>

        /// A run of small tables is loaded together up to about this many bytes of the dump.
        static let smallRun: UInt64 = 16 << 20

        /// nil when the dump has no table rows in its table of contents, or its entries have gaps.
        init?(_ toc: DumpTableOfContents) {
            let entries = toc.entries
            guard let first = entries.firstIndex(where: { $0.kind == "TABLE DATA" }) else { return nil }
            var last = first
            while last + 1 < entries.count, entries[last + 1].kind == "TABLE DATA" { last += 1 }
            let tables = entries[first...last]
            guard zip(tables, tables.dropFirst()).allSatisfy({ $0.end == $1.start }), tables[last].end <= toc.dumpBytes else { return nil }
            schema = 0..<tables[first].start
            rest = tables[last].end..<toc.dumpBytes
            var runs: [Range<UInt64>] = []
            for table in tables {
                if let open = runs.last, open.count < Self.smallRun, table.bytes < Self.smallRun, open.upperBound == table.start {
                    runs[runs.count - 1] = open.lowerBound..<table.end
                } else {
                    runs.append(table.start..<table.end)
                }
            }
            // The big ones first, largest first, so that no connection is left with one at the end;
            // the rest in dump order (a boundary segment shared by neighbours is kept in memory only briefly).
            let total = tables[last].end - tables[first].start
            let big = runs.filter { UInt64($0.count) * 8 >= total }.sorted { $0.count > $1.count }
            tasks = big + runs.filter { UInt64($0.count) * 8 < total }
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
        do {
            let scanner = DumpScanner(backupID: manifest.id) { try loader.handle($0) }
            try segments.read(parts.schema) { try scanner.write($0) }
            try loader.beginData(scanner.settings)
            if loader.rowsMayLoadInLanes {
                try load(parts.tasks, toc: toc, segments: segments, manifest: manifest, loader: loader)
                // The settings the rows' parts made stand for the rest, as in psql's one session.
                for setting in toc.settings where parts.schema.upperBound <= setting.offset && setting.offset < parts.rest.lowerBound {
                    try replay(setting, into: scanner)
                }
                try segments.read(parts.rest) { try scanner.write($0) }
            } else {
                try segments.read(parts.schema.upperBound..<parts.rest.upperBound) { try scanner.write($0) }
            }
            try scanner.finish()
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

    /// Loads the runs of tables over up to `loader.jobs` connections (the loader's own first).
    private static func load(_ tasks: [Range<UInt64>], toc: DumpTableOfContents, segments: DumpSegments, manifest: BackupManifest,
                             loader: ParallelLoader) throws {
        let shared = Shared(tasks: tasks, freeze: try loader.tablesToFreeze())
        var connections = [loader.main]
        defer { connections.dropFirst().forEach { $0.close() } }
        while connections.count < min(loader.jobs, tasks.count), let connection = try loader.extraConnection(required: false) {
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
            } catch {
                shared.fail()
                segments.stop()
                throw error
            }
        }
        let others = connections.dropFirst().map { connection in Background { try run(on: connection) } }
        var errors: [Error] = []
        do { try run(on: loader.main) } catch { errors.append(error) }
        for other in others {
            do { try other.wait() } catch { errors.append(error) }
        }
        // A damaged segment first (the next copy or candidate is tried), then the first real failure.
        let real = errors.filter { !($0 is DumpSegments.Stopped) }
        if let error = real.first(where: { RecoveryError.classify($0).code == .backupCorrupt }) ?? real.first ?? errors.first { throw error }
        for (target, rows) in shared.copies { loader.recordCopy(of: target, rows: rows) }
        if let reason = shared.inexact { loader.markInexact(reason) }
    }

    private static func replay(_ setting: DumpTableOfContents.Setting, into scanner: DumpScanner) throws {
        guard let sql = Data(base64Encoded: setting.sql) else { return }
        try (Array(sql) + Array(";\n".utf8)).withUnsafeBytes { try scanner.write($0) }
    }

    /// What the connections share: the runs still to load, the tables already started, the COPY results.
    private final class Shared: Sendable {
        private struct State {
            var tasks: [Range<UInt64>]
            var started: Set<[UInt8]> = []
            var copies: [(target: [UInt8], rows: Int64)] = []
            var inexact: String?
            var failed = false
        }
        private let state: Mutex<State>
        let freeze: Set<[UInt8]>

        init(tasks: [Range<UInt64>], freeze: Set<[UInt8]>) {
            state = Mutex(State(tasks: tasks))
            self.freeze = freeze
        }

        func next() -> Range<UInt64>? { state.withLock { $0.failed || $0.tasks.isEmpty ? nil : $0.tasks.removeFirst() } }
        func fail() { state.withLock { $0.failed = true } }

        /// Whether this is the first COPY into `target`: only then may it be emptied (a second COPY
        /// into the same table, which pg_dump never writes, adds to the first one's rows).
        func start(_ target: [UInt8]) -> Bool { state.withLock { $0.started.insert(target).inserted } }
        func loaded(_ target: [UInt8], rows: Int64) { state.withLock { $0.copies.append((target, rows)) } }
        func markInexact(_ reason: String) { state.withLock { $0.inexact = $0.inexact ?? reason } }
        var copies: [(target: [UInt8], rows: Int64)] { state.withLock { $0.copies } }
        var inexact: String? { state.withLock { $0.inexact } }
    }

    /// One connection's handling of a run of tables: each COPY in its own transaction, frozen where
    /// the table may be emptied first.
    private final class Lane {
        let connection: LoaderConnection
        let shared: Shared
        private var open: (target: [UInt8], statement: DumpScanner.Statement)?

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
                open = (target, statement)
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
                shared.loaded(current.target, rows: rows)
            } catch {
                throw DumpApplier.failure(error, in: current.statement.excerpt, backupID: connection.backupID)
            }
        }
    }
}
