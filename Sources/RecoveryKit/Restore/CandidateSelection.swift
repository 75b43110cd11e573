import BackupStorage
import Foundation
import Logging

/// Which backup a restore reads, and — for `--emergency` and `--drill` — the next older one when a
/// candidate fails.
///
/// A candidate is skipped, with the reason, for anything that is its own fault: a manifest that
/// does not decode or names paths outside its folder, files that are missing, unreadable, damaged or
/// encrypted with another key, a physical backup, a backup of another database than the one restored
/// (the target's, or `--from-database`'s: one repository may hold several databases' backups), and —
/// in `--emergency` and `--drill` — a logical
/// backup taken from a newer PostgreSQL major than the target server (pg_dump's output loads into
/// the same or a newer major only; at 3 a.m. an older backup that restores beats a refusal). A
/// repository that cannot be listed, or that fails (5xx, timeouts, resets, short reads, I/O errors
/// after the client's retries) while a candidate is checked, stops the search (exit 20): that is the
/// repository's trouble, not the backup's, and an older backup must not be restored because of it.
enum CandidateSelection {
    /// Candidates passed over: at info (`-v`) when the backup itself failed, at debug (`-vv`) when it
    /// was not a candidate at all (physical, another release).
    private static let logger = Logger(label: "dbrecovery.restore")

    struct Choice {
        var manifest: BackupManifest
        /// The repository address the backup is read from.
        var repository: String
        /// Every candidate passed over so far, with why (carried forward).
        var skipped: [RestorePlan.Skipped]
    }

    /// Picks the newest usable candidate not in `excluding` (backup ids).
    ///
    /// One repository, normal mode: the named backup (its files are checked first only when `depth`
    /// is `.full`, for `--dry-run`; a real restore checks them while it streams). Otherwise every
    /// candidate (newest first; in normal mode only the named one) is checked in each repository
    /// that holds it, fastest first, until a copy passes.
    ///
    /// A restore passes `.size`: each file's size from a stat or HEAD, nothing read, so every byte
    /// of the backup is read once, by the restore's own stream, which checks the sha256 at its end
    /// and falls back to the next candidate when it does not match (`LogicalRestore.execute`).
    ///
    /// - Parameters:
    ///   - excluding: backup ids (every copy) or candidate labels (`label(_:in:)`: one copy) not to try.
    ///   - skipped: candidates already passed over (reported again, with the new ones).
    ///   - depth: `.size` (reads nothing), `.checksum`, or `.full` to decompress the whole gzip stream too.
    ///   - serverMajor: the target server's major; in `--emergency` and `--drill` a candidate from a
    ///     newer major is passed over with the reason (a normal restore of it is refused by `checkMajors`).
    ///   - targetSystem: the target server's system identifier: of a database's backups from several
    ///     servers, its own are taken (`ServerScope`); nil when it cannot be read.
    /// - Throws: `RecoveryError` — `.backupNotFound` (nothing left, naming what was skipped and why),
    ///   `.backupCorrupt` (normal mode: the named backup does not verify), or the repository's error.
    static func choose(_ configuration: RestoreConfiguration, excluding: Set<String> = [], skipped: [RestorePlan.Skipped] = [],
                       depth: FileVerifier.Depth, serverMajor: PostgresMajor?, targetSystem: String?,
                       timeline: Timeline?) throws -> Choice {
        var stores: [(String, BackupStore)] = []
        var skipped = skipped
        var openError: Error?
        for address in configuration.repositories {
            do { stores.append((address, try Repository.open(address, create: false, environment: configuration.environment))) } catch {
                openError = openError ?? error
                if !skipped.contains(where: { $0.id == "-" && $0.reason.hasPrefix("repository \(address) ") }) {
                    skipped.append(.init(id: "-", reason: "repository \(address) unavailable: \(RecoveryError.classify(error).message)"))
                }
            }
        }
        guard !stores.isEmpty else { throw openError ?? RecoveryError(.usage, "no repository given") }
        if configuration.mode == .normal && stores.count == 1 {
            let manifest = try named(configuration, targetSystem: targetSystem, in: stores[0].1)
            guard manifest.kind == .logical else {
                throw RecoveryError(.usage, "backup \(manifest.id) is a physical backup",
                                    hint: "restore it with dbrestore --pitr, or name a logical backup")
            }
            if depth == .full {
                let check = try FileVerifier.verify(manifest, in: stores[0].1, depth: .full, cipherKey: configuration.key)
                guard check.ok else {
                    throw RecoveryError(check.onlyArchived ? .backupArchived : .backupCorrupt,
                                        "backup \(manifest.id) does not verify: \(check.firstProblem ?? "files damaged")",
                                        hint: "do not restore it; dbrestore --emergency picks the newest backup that verifies")
                }
            }
            return Choice(manifest: manifest, repository: stores[0].0, skipped: [])
        }
        // Candidate ids, newest first, with the repositories that hold each.
        var holders: [String: [(String, BackupStore, Catalog.Entry)]] = [:]
        for (address, store) in stores {
            let catalog = Catalog(store: store)
            if configuration.mode == .normal {
                guard let manifest = try? named(configuration, targetSystem: targetSystem, in: store) else { continue }  // reported below if no repository has it
                holders[manifest.id, default: []].append((address, store, Catalog.Entry(id: manifest.id, manifest: manifest, problem: nil)))
            } else {
                for entry in try catalog.entries() { holders[entry.id, default: []].append((address, store, entry)) }
            }
        }
        guard !holders.isEmpty else {
            if configuration.mode == .normal { _ = try named(configuration, targetSystem: targetSystem, in: stores[0].1) }
            throw RecoveryError(.backupNotFound, "no backups in \(stores.map(\.0).joined(separator: ", "))",
                                hint: stores.lazy.compactMap { MisplacedRepository.hint(for: $0.1) }.first ?? "there is nothing to restore from; check --repo (or BACKUP_REPO)")
        }
        let alreadySkipped = Set(skipped.map(\.id))
        let source = configuration.sourceDatabase
        // Of the source database's backups from several servers, the target server's own (normal mode
        // resolved `latest` the same way in `named`; a backup named by its id is the operator's choice).
        let scope = configuration.mode == .normal ? ServerScope(system: nil)
            : try ServerScope.of(source, among: holders.values.joined().compactMap(\.2.manifest), target: targetSystem,
                                 location: stores.map(\.0).joined(separator: ", "))
        // Newer backups of other databases passed over, by database (newest first): said once per
        // database in `skipped`, replacing what an earlier call said.
        var otherDatabases: [String: [String]] = [:]
        // The source database's backups from servers out of scope (system identifier → newest id): after
        // a pg_upgrade or an initdb the database's older backups are another server's.
        var otherServers: [String: String] = [:]
        // With --release: pre-deploy snapshots whose state's release nothing recorded (no dbmigrate log).
        var unknownState: [String] = []
        func withOthers(_ skipped: [RestorePlan.Skipped]) -> [RestorePlan.Skipped] {
            skipped.filter { !$0.reason.hasPrefix(otherDatabasePrefix) } + otherDatabases.sorted { $0.key < $1.key }.map { name, ids in
                .init(id: ids.count == 1 ? ids[0] : "\(ids[0]) and \(ids.count - 1) more",
                      reason: "\(otherDatabasePrefix)\(name), not of \(source) (--from-database \(name) restores \(name)'s backups into \(configuration.target.databaseName))")
            }
        }
        for id in holders.keys.sorted(by: >) where !excluding.contains(id) {
            // A repository that fails while this backup is checked (after the S3 client's retries)
            // says nothing about the backup: another repository's copy of it may still be tried,
            // never an older backup instead of it.
            var trouble: RecoveryError?
            defer { if let trouble { timeline?.note("check backup \(id)", outcome: "failed: \(trouble.message)") } }
            for (address, store, entry) in holders[id] ?? [] {
                let label = label(id, in: address, of: configuration)
                if alreadySkipped.contains(label) || excluding.contains(label) { continue }
                guard let manifest = entry.manifest else {
                    skipped.append(.init(id: label, reason: entry.problem ?? "manifest unreadable"))
                    timeline?.note("skip backup \(label)", outcome: entry.problem ?? "manifest unreadable")
                    logger.info("skipped backup \(label): \(entry.problem ?? "manifest unreadable")")
                    continue
                }
                guard manifest.kind == .logical else {
                    logger.debug("skipped backup \(label): physical (dbrestore pitr restores it)")
                    continue
                }
                if configuration.mode != .normal, !manifest.database.name.isSameDatabaseName(as: source) {
                    let name = manifest.database.name
                    if otherDatabases[name]?.contains(id) != true { otherDatabases[name, default: []].append(id) }
                    logger.info("skipped backup \(label): \(otherDatabasePrefix)\(name), not of \(source)")
                    continue
                }
                if !scope.admits(manifest) {
                    let system = manifest.database.systemIdentifier ?? "not recorded"
                    otherServers[system] = max(otherServers[system] ?? "", id)
                    logger.info("skipped backup \(label): of database \(source) on another server (system \(system)), not the target's (system \(scope.system ?? "?"))")
                    continue
                }
                if let release = configuration.release, !manifest.holdsState(ofRelease: release) {
                    if manifest.runningReleases == nil, manifest.isPreDeploySnapshot {
                        unknownState.append("\(id) labelled \(manifest.release ?? "none")")
                    }
                    logger.debug("skipped backup \(label): of release \(manifest.runningReleases?.joined(separator: " = ") ?? manifest.release ?? "none"), not \(release)")
                    continue
                }
                if configuration.mode != .normal, let target = serverMajor, let source = manifest.serverMajor, source > target {
                    let reason = "taken from PostgreSQL \(source), newer than the target server's \(target) "
                        + "(\(RestorePlan.majorRule))"
                    skipped.append(.init(id: label, reason: reason))
                    timeline?.note("skip backup \(label)", outcome: reason)
                    logger.info("skipped backup \(label): \(reason)")
                    continue
                }
                let reason: String
                do {
                    let check = try FileVerifier.verify(manifest, in: store, depth: depth, cipherKey: configuration.key)
                    if check.ok {
                        timeline?.note("chose backup \(manifest.id) from \(address) "
                                       + (depth == .size ? "(files present, sizes match; the sha256 is checked as it streams)" : "(files verify)"))
                        return Choice(manifest: manifest, repository: address, skipped: withOthers(skipped))
                    }
                    reason = check.firstProblem ?? "files do not verify"
                } catch where RecoveryError.isRepositoryTrouble(error) {
                    trouble = trouble ?? RecoveryError.repositoryTrouble(error, repository: address, backup: manifest.id,
                                                                         untouched: "\(configuration.target.databaseName) was not touched")
                    logger.info("backup \(label) could not be checked: \(RecoveryError.classify(error).message)")
                    continue
                } catch {
                    reason = "files cannot be read: \(RecoveryError.classify(error).message)"
                }
                skipped.append(.init(id: label, reason: reason))
                timeline?.note("skip backup \(label)", outcome: reason)
                logger.info("skipped backup \(label): \(reason)")
            }
            if let trouble { throw trouble }
        }
        // Nothing of the database asked for at all: say what the repository holds instead, and the way to it.
        let all = Dictionary(holders.values.joined().compactMap { $0.2.manifest }.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        if configuration.mode != .normal, !all.values.contains(where: { $0.kind == .logical && $0.database.name.isSameDatabaseName(as: source) }) {
            throw noneOfDatabase(configuration, stores: stores.map(\.0), holdings: Catalog.Holdings(Array(all.values), besides: source))
        }
        skipped = withOthers(skipped)
        // Backups that only a newer server can take: the error names their majors and the way out.
        let newerMajors = configuration.mode == .normal ? [] : Set(holders.values.joined().compactMap { holder -> PostgresMajor? in
            guard let manifest = holder.2.manifest, manifest.kind == .logical, let target = serverMajor,
                  let source = manifest.serverMajor, source > target else { return nil }
            if let release = configuration.release, !manifest.holdsState(ofRelease: release) { return nil }
            return source
        })
        throw noneLeft(configuration, stores: stores.map(\.0), skipped: skipped, newerMajors: newerMajors.sorted(), serverMajor: serverMajor,
                       otherServers: otherServers, serverScope: scope, unknownState: unknownState)
    }

    /// How `skipped` starts the reason of a backup of another database.
    static let otherDatabasePrefix = "of database "

    /// The backup a normal restore names: an id (whatever database it is of: the operator chose it;
    /// the plan says whose it is), or `latest`, the newest logical backup of the source database.
    ///
    /// - Throws: `.usage` when `--from-database` contradicts the named backup; `.backupNotFound`
    ///   naming what the repository holds when the source database has no backup in it.
    static func named(_ configuration: RestoreConfiguration, targetSystem: String?, in store: BackupStore) throws -> BackupManifest {
        try named(configuration.backup, fromDatabase: configuration.fromDatabase, into: configuration.target.databaseName,
                  release: configuration.release, targetSystem: targetSystem, in: store)
    }

    /// The backup a restore into database `target` names (a whole-database or a selective restore):
    /// an id, whatever database it is of, or `latest`, the newest logical backup of `fromDatabase`
    /// if given, else of `target` — never the newest of another database sharing the repository, nor
    /// of the same name on another server when the target's own (`targetSystem`) has backups (`ServerScope`).
    ///
    /// - Throws: `.usage` when `fromDatabase` contradicts the named backup; `.backupNotFound`
    ///   naming what the repository holds when the source database has no backup in it.
    static func named(_ reference: String, fromDatabase: String?, into target: String, release: String? = nil,
                      targetSystem: String?, in store: BackupStore) throws -> BackupManifest {
        let catalog = Catalog(store: store)
        let source = fromDatabase ?? target
        let manifest: BackupManifest
        do {
            manifest = try catalog.resolve(reference, database: source, targetSystem: targetSystem)
        } catch let error as RecoveryError where error.code == .backupNotFound && reference == "latest" {
            let manifests = try catalog.manifests()
            // Backups of the name exist (several servers', none the target's): ServerScope's refusal, naming
            // them, is the answer — not "no logical backup", which sent an outside attacker to --pitr.
            guard !manifests.isEmpty,
                  !manifests.contains(where: { $0.kind == .logical && $0.database.name.isSameDatabaseName(as: source) }) else { throw error }
            throw noneOfDatabase(source: source, target: target, release: release, stores: [store.location],
                                 holdings: Catalog.Holdings(manifests, besides: source))
        }
        try Catalog.refuseContradiction(of: manifest, fromDatabase: fromDatabase)
        return manifest
    }

    /// The error when the repositories hold no logical backup of the source database at all: what
    /// they hold instead, and the ways to it (`--from-database`, `dbrestore --pitr`).
    static func noneOfDatabase(_ configuration: RestoreConfiguration, stores: [String], holdings: Catalog.Holdings) -> RecoveryError {
        noneOfDatabase(source: configuration.sourceDatabase, target: configuration.target.databaseName, release: configuration.release,
                       stores: stores, holdings: holdings)
    }

    /// `noneOfDatabase` for a restore of `source`'s backups into `target`.
    static func noneOfDatabase(source: String, target: String, release: String?, stores: [String], holdings: Catalog.Holdings) -> RecoveryError {
        var ways: [String] = []
        let others = holdings.otherDatabases.keys.sorted()
        if let first = others.first {
            ways.append("to restore another database's backup into \(target), name it: --from-database \(first)"
                        + (others.count > 1 ? " (or \(others.dropFirst().joined(separator: ", ")))" : "") + ", or its backup id")
        }
        if holdings.physical > 0 {
            ways.append("a physical base backup restores the whole server into a new data directory: dbrestore --pitr --pgdata DIR --target latest")
        }
        if ways.isEmpty { ways.append("check --repo (or BACKUP_REPO)") }
        let scope = release.map { " (at any release; --release \($0) asked)" } ?? ""
        return RecoveryError(.backupNotFound, "no logical backup of database \(source)\(scope) in \(stores.joined(separator: ", "))\(holdings.clause)",
                             hint: ways.joined(separator: "; ") + "; \(target) was not touched")
    }

    /// How a candidate copy is named in `skipped` and `excluding`: the id, with the repository when
    /// the restore was given several (each holds its own copy, damaged or not).
    static func label(_ id: String, in address: String, of configuration: RestoreConfiguration) -> String {
        configuration.repositories.count > 1 ? "\(id) in \(address)" : id
    }

    /// The error when every candidate was passed over, naming each and why; when some were taken from
    /// a newer major than the target server, naming those majors and the server they need.
    static func noneLeft(_ configuration: RestoreConfiguration, stores: [String], skipped: [RestorePlan.Skipped],
                         newerMajors: [PostgresMajor], serverMajor: PostgresMajor?,
                         otherServers: [String: String] = [:], serverScope: ServerScope = ServerScope(system: nil),
                         unknownState: [String] = []) -> RecoveryError {
        let scope = configuration.release.map { " of release \($0)" } ?? ""
        let listed = skipped.prefix(5).map { "\($0.id): \($0.reason)" }.joined(separator: "; ")
        let more = skipped.count > 5 ? "; and \(skipped.count - 5) more" : ""
        var hint = configuration.release == nil ? "dbverify --files all checks each backup; check another repository" : "drop --release to consider every backup"
        if let release = configuration.release, !unknownState.isEmpty {
            hint = "pre-deploy snapshots taken without dbmigrate's log (\(unknownState.prefix(3).joined(separator: ", "))) name the release about to be deployed, "
                + "so their state is the release before it, not known here: the state of \(release) is in the pre-deploy snapshot of the release deployed after it; "
                + "dbrestore list shows them; restore one by its id; " + hint
        }
        if let oldest = newerMajors.first, let target = serverMajor {
            hint = "backups from PostgreSQL \(newerMajors.map(\.description).joined(separator: ", ")) need a server of that major or newer, "
                + "and the target server is PostgreSQL \(target): restore into a PostgreSQL \(oldest) or newer server (its --database-url, and "
                + "--pg-bin naming its programs if they are not found); " + hint
        }
        if let (system, newest) = otherServers.max(by: { $0.value < $1.value }) {
            // Never taken on its own (a same-named database of another server is another database), but at
            // 3 a.m. after a pg_upgrade these are the database's only good backups: say they exist.
            let more = otherServers.count > 1 ? " and \(otherServers.count - 1) more server(s)" : ""
            hint = "backups of \(configuration.sourceDatabase) from another server were passed over (system \(system), newest \(newest)\(more); "
                + "the target is system \(serverScope.system ?? "?")): if this server was re-created from that one (pg_upgrade, a new initdb), "
                + "restore one by its id: dbrestore \(newest) --yes; " + hint
        }
        return RecoveryError(configuration.mode == .normal ? .backupCorrupt : .backupNotFound,
                             "no backup\(scope) in \(stores.joined(separator: ", ")) restores and verifies" + (skipped.isEmpty ? "" : " (\(skipped.count) skipped: \(listed)\(more))"),
                             hint: hint)
    }
}
