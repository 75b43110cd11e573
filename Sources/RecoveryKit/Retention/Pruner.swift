import BackupStorage
import Foundation
import Logging
import ProcessSignals

/// Settings of one `dbprune` run.
public struct PruneConfiguration {
    public var repository: String
    public var policy: RetentionPolicy
    public var dryRun: Bool
    /// The time backup ages are judged at (`--as-of`, else the real time).
    public var now: Date
    /// How long a backup's verification record (`verified-at.json`) spares re-reading it
    /// (`[prune] reverify_after` in the config file).
    public var reverifyAfter: RetentionDuration = VerificationRecord.defaultInterval
    /// How long a recovery's hold keeps what it names (`[prune] hold_expiry`, `--hold-expiry`).
    public var holdExpiry: RetentionDuration = HeldRecoveries.defaultExpiry
    /// The time what is under way is judged at — a recovery's hold, the grace of a folder without a
    /// manifest (a backup being written), a verification record written: `now` in a dry run (a preview of
    /// a prune at that time), the real time in a run that deletes, so that `--as-of` in the future never
    /// lets a recovery still being prepared or replayed lose what it holds, nor a running backup its files.
    public var underWayJudgedAt: Date { dryRun ? now : min(now, Date()) }
    /// Called with the plan (under the lock, before anything is deleted) when the run would delete
    /// something; throwing stops the run with nothing changed. Nil: no confirmation needed.
    public var confirm: ((PruneReport) throws -> Void)?
    /// What the storage layer reads S3 settings from (see `Repository.open`).
    public var environment = ProcessInfo.processInfo.environment
    /// `--lock-wait`: seconds to wait for the repository lock while a backup or another prune holds
    /// it; 0 (not given) fails at once, exit 21.
    public var lockWaitSeconds: TimeInterval = 0

    public init(repository: String, policy: RetentionPolicy = .builtIn, dryRun: Bool = false, now: Date = Date(),
                confirm: ((PruneReport) throws -> Void)? = nil) {
        self.repository = repository
        self.policy = policy
        self.dryRun = dryRun
        self.now = now
        self.confirm = confirm
    }
}

/// What a prune run decided and did.
public struct PruneReport: Codable, Sendable {
    /// One backup folder without a manifest.
    public struct Garbage: Codable, Sendable {
        public var folder: String
        public var ageHours: Double
        /// `delete`, `in progress` for a folder a backup may still be writing (kept), or `not ours`
        /// for a folder whose name is no backup id: dbbackup did not make it, so it is left alone.
        public var action: String
        /// Why: the lock holder writing it, the grace period it is within, or its age past it.
        public var reason: String
    }

    public var repository: String
    public var tier: String
    public var dryRun: Bool
    public var decisions: [RetentionDecision]
    /// Backups whose manifest cannot be read: never deleted, always reported.
    public var unreadable: [String]
    /// Backups whose manifest is archived (S3 GLACIER): never deleted, always reported.
    public var archived: [String]
    public var garbage: [Garbage]
    public var wal: WALRetention.Plan
    /// Backups newer than the newest one that verifies, with why they do not.
    public var unverified: [String]
    /// How the newest backup that verifies was found to: read in full now, or its recent record.
    public var verification: String?
    /// Backups the plan would delete but a restore is reading (reader lock): kept this time.
    public var beingRead: [String] = []
    /// What the rules were applied to, group by group (`RetentionGroup`): one database's logical
    /// backups, one server's base backups; each with its own newest verified backup.
    public var groups: [Group] = []
    /// What the run cleaned up or could not (stale locks removed, a failed lock release), and a
    /// warning per recovery hold.
    public var notes: [String] = []
    /// The holds of prepared recoveries (`RecoveryHold`), with their age and whether they still protect.
    public var holds: [HeldRecoveries.Status] = []
    public var kept: Int { decisions.filter { $0.action != .delete }.count }
    public var deleted: Int { decisions.filter { $0.action == .delete }.count }

    /// One group the rules were applied to on their own.
    public struct Group: Codable, Sendable {
        /// As decisions name it: `database app`, `physical base backups of server 7301…`.
        public var group: String
        public var kind: BackupManifest.Kind
        /// A logical group's database.
        public var database: String?
        /// A physical group's server (nil also for base backups that did not record it).
        public var systemIdentifier: String?
        public var backups: Int
        public var kept = 0
        public var deleted = 0
        /// The group's newest backup whose files verify (always kept), and how that was found.
        public var newestVerified: String?
        public var verification: String?
        /// The group's backups newer than that one, with why they do not verify.
        public var unverified: [String]
    }

    /// Counts each group's kept and deleted backups from the decisions as they stand.
    mutating func countGroups() {
        for index in groups.indices {
            let mine = decisions.filter { $0.group == groups[index].group }
            groups[index].kept = mine.filter { $0.action != .delete }.count
            groups[index].deleted = mine.filter { $0.action == .delete }.count
        }
    }
}

/// Applies a retention policy to one repository.
public enum Pruner {
    /// Each decision at debug (`-vv`); what the run passed over (a backup being read, a backup in
    /// progress) at info (`-v`).
    private static let logger = Logger(label: "dbrecovery.prune")

    /// Plans and (unless dry-run) applies retention.
    ///
    /// - Important: deletes manifest first, then data, so a crash half-way leaves garbage, never a
    ///   backup that looks whole; a copy of the manifest (`PendingDeletes`) lets the next run undo a
    ///   delete that stopped before the data went. Pinned backups, the newest backup that verifies and
    ///   backups with an unreadable manifest are never deleted.
    /// - Throws: `RecoveryError`; `StorageError` if the repository cannot be read or is locked.
    public static func run(_ configuration: PruneConfiguration, progress: ProgressObserver? = nil) throws -> PruneReport {
        try run(configuration, store: try Repository.open(configuration.repository, create: false, environment: configuration.environment),
                progress: progress)
    }

    /// The same on an already open store (tests wrap a real store to observe the order of deletions).
    public static func run(_ configuration: PruneConfiguration, store: BackupStore, progress: ProgressObserver? = nil) throws -> PruneReport {
        let lock = configuration.dryRun ? nil : try StoreLock.exclusive(in: store, holder: LockHolder(command: "dbprune"), wait: configuration.lockWaitSeconds)
        var report: PruneReport
        do {
            report = try prune(configuration, store: store, progress: progress)
        } catch {
            // The prune failure is what the operator must see; a release failure too, on the same line.
            do { try lock?.release() } catch let releaseError {
                throw RecoveryError(RecoveryError.classify(error).code,
                                    "\(RecoveryError.classify(error).message); also, the lock was not released: \(releaseError)",
                                    hint: RecoveryError.classify(error).hint)
            }
            throw error
        }
        report.notes = (lock?.notes ?? []) + report.notes
        do { try lock?.release() } catch { report.notes.append("warning: the repository lock was not released: \(error)") }
        return report
    }

    private static func prune(_ configuration: PruneConfiguration, store: BackupStore, progress: ProgressObserver?) throws -> PruneReport {
        let tierName = try Repository.tierName(configuration.repository)
        let tier = tierName == "s3" ? configuration.policy.s3 : configuration.policy.local
        // First what stopped prunes left half-done: a backup whose manifest went but whose files stayed.
        let repair = try PendingDeletes.repair(in: store, dryRun: configuration.dryRun)

        let objects = try store.list(prefix: "backups/")
        // A manifest copied into another folder (cp -a X X-copy) names a backup that is not its
        // folder's: acting on it would delete the wrong folder, so it counts as unreadable.
        var entries = try Catalog(store: store).entries().map { entry -> Catalog.Entry in
            guard let manifest = entry.manifest, manifest.id != entry.id else { return entry }
            return Catalog.Entry(id: entry.id, manifest: nil,
                                 problem: "manifest names backup \(manifest.id) but lies in folder backups/\(entry.id) (a copied folder?)")
        }
        // A dry run plans what it would put back as the real run will, newest first like the catalog.
        entries = (entries + repair.wouldPutBack.map { Catalog.Entry(id: $0.id, manifest: $0, problem: nil) }).sorted { $0.id > $1.id }
        let manifests = entries.compactMap(\.manifest)
        let listing = Dictionary(objects.map { ($0.key, $0) }, uniquingKeysWith: { first, _ in first })
        let classes = Dictionary(objects.map { ($0.key, $0.storageClass) }, uniquingKeysWith: { first, _ in first })
        // Every rule applies within one group: one database's logical backups, one server's base backups.
        var decisions: [RetentionDecision] = []
        var groups: [PruneReport.Group] = []
        for (group, members) in RetentionGroup.split(manifests) {
            var verified = try newestVerified(in: members, trustRecords: true, configuration: configuration, store: store,
                                              listing: listing, progress: progress)
            let candidates = members.map { manifest in
                RetentionCandidate(id: manifest.id, takenAt: manifest.startedAt, pinned: manifest.pinned,
                                   storageClass: manifest.files.first.flatMap { classes[manifest.key(of: $0)] ?? nil })
            }
            var planned = try RetentionPlanner.plan(candidates, tier: tier, snapshots: configuration.policy.snapshots,
                                                    newestVerified: verified.id, now: configuration.now, group: group)
            // Bit rot can keep size and modification time: before deleting on a record's word alone
            // while fewer than 2 backups of the group would be kept, its newest is read in full after all.
            if verified.onlyRecord, planned.contains(where: { $0.action == .delete }), planned.filter({ $0.action != .delete }).count < 2 {
                verified = try newestVerified(in: members, trustRecords: false, configuration: configuration, store: store,
                                              listing: listing, progress: progress)
                planned = try RetentionPlanner.plan(candidates, tier: tier, snapshots: configuration.policy.snapshots,
                                                    newestVerified: verified.id, now: configuration.now, group: group)
            }
            decisions += planned
            groups.append(PruneReport.Group(group: group.label, kind: group.kind, database: group.kind == .logical ? group.name : nil,
                                            systemIdentifier: group.kind == .physical ? group.name : group.system, backups: members.count,
                                            newestVerified: verified.id, verification: verified.verification, unverified: verified.unverified))
        }
        decisions.sort { ($0.takenAt, $0.id) > ($1.takenAt, $1.id) }
        let unverified = groups.flatMap(\.unverified)
        let verifications = groups.compactMap { group in group.verification.map { (group.group, $0) } }
        let verification = verifications.isEmpty ? nil : groups.count == 1 ? verifications[0].1
            : verifications.map { "\($0.0): \($0.1)" }.joined(separator: "; ")
        var beingRead: [String] = []
        var notes: [String] = repair.notes
        // A --repo that is a folder inside a repository (…/backups) would prune nothing, silently.
        if entries.isEmpty, let hint = MisplacedRepository.hint(for: store) { notes.append("warning: no backups here; \(hint)") }
        // A backup a restore is reading is kept this time, and the WAL it needs with it.
        for index in decisions.indices where decisions[index].action != .keep {
            if let readers = try readers(of: decisions[index].id, in: store, removeStale: !configuration.dryRun, notes: &notes) {
                beingRead.append("\(decisions[index].id): being read by \(readers)")
                logger.info("skipped deleting backup \(decisions[index].id): being read by \(readers)")
                decisions[index].action = .keep
                decisions[index].keptBy.append("being read")
            }
        }
        // What a prepared recovery will still read (its hold) is kept, until the hold expires.
        var holds = try HeldRecoveries.load(from: store, now: configuration.underWayJudgedAt, expiry: configuration.holdExpiry)
        HeldRecoveries.keep(&decisions, holds: holds)
        protectChains(&decisions, manifests: manifests)
        // A dry run holds no lock, so a backup being written now may be found half-written: it is in progress.
        let writer: LockHolder? = configuration.dryRun ? try StoreLock.writer(in: store) : nil
        let garbage = findGarbage(objects: objects, withManifest: Set(entries.map(\.id)), policy: configuration.policy,
                                  now: configuration.underWayJudgedAt, writer: writer).filter { !repair.restorable.contains($0.folder) }
            .map { item in
                // What a stopped prune had begun deleting is no backup in progress: it goes now, not after the grace period.
                guard repair.halfDeleted.contains(item.folder), item.action != "delete" else { return item }
                return PruneReport.Garbage(folder: item.folder, ageHours: item.ageHours, action: "delete",
                                           reason: "no manifest; a stopped dbprune had begun deleting this backup")
            }
        for decision in decisions {
            logger.debug("\(decision.action.rawValue) backup \(decision.id): \((decision.keptBy + [decision.reason].compactMap { $0 }).joined(separator: ", "))")
        }
        for item in garbage where item.action != "delete" {
            logger.info("skipped \(item.folder): \(item.reason)")
        }
        let walKeys = try store.list(prefix: "wal/").map(\.key)
        func walPlan() -> WALRetention.Plan {
            let keptIDs = Set(decisions.filter { $0.action != .delete }.map(\.id))
            return WALRetention.plan(keys: walKeys, keptPhysical: manifests.filter { keptIDs.contains($0.id) }.compactMap(\.physical),
                                     holds: HeldRecoveries.wal(holds))
        }
        var wal = walPlan()

        let unusable = entries.filter { $0.manifest == nil }
        var report = PruneReport(repository: store.location, tier: tierName, dryRun: configuration.dryRun, decisions: decisions,
                                 unreadable: unusable.filter { !$0.archived }.map { "\($0.id): \($0.problem ?? "unreadable")" },
                                 archived: unusable.filter(\.archived).map(\.id),
                                 garbage: garbage, wal: wal, unverified: unverified, verification: verification)
        report.groups = groups
        report.countGroups()
        if !configuration.dryRun, let confirm = configuration.confirm,
           report.deleted > 0 || !wal.delete.isEmpty || garbage.contains(where: { $0.action == "delete" }) {
            try confirm(report)
        }
        if !configuration.dryRun {
            let byID = Dictionary(manifests.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
            for (index, decision) in decisions.enumerated() where decision.action == .delete {
                try Interruption.check()   // between backups, never between a manifest and its data
                guard let manifest = byID[decision.id] else { continue }
                // A backup kept for a reader after planning keeps its chain too.
                protectChains(&decisions, manifests: manifests)
                guard decisions[index].action == .delete else { continue }
                let folder = manifest.folderKey + "/"
                let manifestKey = folder + BackupManifest.fileName
                let others = objects.map(\.key).filter { $0.hasPrefix(folder) && $0 != manifestKey }
                let manifestBytes = try store.read(manifestKey)
                // Until the data is gone or the manifest back, a copy says what to put back if this run stops.
                try PendingDeletes.record(manifest.id, manifest: manifestBytes, in: store)
                // Two calls: a store may delete one batch in any order, and the manifest must go first.
                try store.delete([manifestKey])
                CrashPoint.reached("prune:between-deletes")
                // A restore registers as a reader before it reads the manifest: one that read it before
                // the delete is visible now. Put the manifest back and keep the backup for it.
                if let readers = try readers(of: manifest.id, in: store, removeStale: true, notes: &notes) {
                    if let warning = try PendingDeletes.putBack(manifest.id, manifest: manifestBytes, in: store, why: "being read by \(readers)") {
                        notes.append(warning)
                    }
                    if let warning = PendingDeletes.forget(manifest.id, in: store) { notes.append(warning) }
                    beingRead.append("\(manifest.id): being read by \(readers)")
                    logger.info("skipped deleting backup \(manifest.id): being read by \(readers)")
                    decisions[index].action = .keep
                    decisions[index].keptBy.append("being read")
                    continue
                }
                try store.delete(others)
                if let warning = PendingDeletes.forget(manifest.id, in: store) { notes.append(warning) }
            }
            // Readers that arrived during the deletions keep their WAL too, and so do holds written meanwhile.
            holds = try HeldRecoveries.load(from: store, now: configuration.underWayJudgedAt, expiry: configuration.holdExpiry)
            wal = walPlan()
            for decision in decisions where decision.action == .moveToGlacier {
                try Interruption.check()
                guard let manifest = byID[decision.id] else { continue }
                for file in manifest.files {
                    try store.changeStorageClass(manifest.key(of: file), to: "GLACIER")
                }
            }
            for item in garbage where item.action == "delete" {
                try store.delete(objects.map(\.key).filter { $0.hasPrefix(item.folder + "/") })
            }
            // WAL last: the base backups it belonged to are gone by now.
            try store.delete(wal.delete)
        }
        report.decisions = decisions
        report.countGroups()
        report.wal = wal
        report.beingRead = beingRead
        report.holds = holds
        report.notes = notes + HeldRecoveries.warnings(holds, expiry: configuration.holdExpiry, dryRun: configuration.dryRun)
        // S3 expires on its own what a bucket rule tells it to, and no hold can stop that (WAL is never under such a rule).
        if tierName == "s3", holds.contains(where: \.protecting), let days = LifecycleRule.expirationDays(tier: tier) {
            report.notes.append("warning: this tier's bucket rule (dbprune --apply-lifecycle) expires backups/ objects after \(days) days on S3's own, "
                                + "which a hold cannot stop: a held base backup older than that is deleted by S3 under its recovery")
        }
        return report
    }

    /// The newest backup of one group that verifies (`members` newest first), with what was found of
    /// the newer ones that do not.
    private struct Verified {
        var id: String?
        var unverified: [String] = []
        /// How it was found to verify: read in full now, or its recent record.
        var verification: String?
        /// Whether `id` rests on a record alone (no read this run).
        var onlyRecord = false
    }

    /// Finds the newest backup of `members` that verifies, newest first; with `trustRecords`, a fresh
    /// record of an unchanged backup stands in for reading it.
    private static func newestVerified(in members: [BackupManifest], trustRecords: Bool, configuration: PruneConfiguration, store: BackupStore,
                                       listing: [String: StoredObject], progress: ProgressObserver?) throws -> Verified {
        var found = Verified()
        for manifest in members {
            // A recent record of a full read, with every file unchanged since, spares reading it again.
            let stored = VerificationRecord.load(for: manifest, in: store, listing: listing)
            var recordNote = " (no record yet)"
            switch stored {
            case .none: break
            case .corrupt: recordNote = " (corrupt record, re-reading)"
            case .record(let record):
                if let staleness = record.staleness(for: manifest, listing: listing, now: configuration.now, interval: configuration.reverifyAfter) {
                    recordNote = " (record not used: \(staleness))"
                } else if !trustRecords {
                    recordNote = " (its record alone would have vouched for the only backup kept: re-read)"
                } else {
                    found.id = manifest.id
                    found.onlyRecord = true
                    found.verification = "backup \(manifest.id): verified \(Timestamp.format(record.verifiedAt)) (its record in the repository; "
                        + "read again after \(configuration.reverifyAfter.text) or when a file changes)"
                    return found
                }
            }
            let check = try FileVerifier.verify(manifest, in: store, depth: .checksum, progress: progress)
            if check.ok {
                found.id = manifest.id
                found.verification = "backup \(manifest.id): read in full, sha256 and size match" + recordNote
                if !configuration.dryRun {
                    // Best effort: without the record the next run reads the backup again, nothing worse.
                    do {
                        let data = try JSONOutput.encoder().encode(VerificationRecord(manifest: manifest, listing: listing, at: configuration.underWayJudgedAt))
                        try store.write(VerificationRecord.key(of: manifest), contents: data)
                    } catch {
                        found.verification? += "; the record could not be written: \(RecoveryError.classify(error).message)"
                    }
                }
                return found
            }
            // A record must not outlive the read that found the backup damaged.
            if stored.exists, !configuration.dryRun, !check.onlyArchived { VerificationRecord.forget(manifest, in: store) }
            found.unverified.append("\(manifest.id): \(check.firstProblem ?? "does not verify")")
        }
        return found
    }

    /// Keeps every backup a kept incremental depends on ("parent of <id>"): deleting one would leave
    /// the incremental unrestorable.
    static func protectChains(_ decisions: inout [RetentionDecision], manifests: [BackupManifest]) {
        let kept = Set(decisions.filter { $0.action != .delete }.map(\.id))
        let needed = IncrementalChain.parentsNeeded(byKept: kept, in: manifests)
        for index in decisions.indices where decisions[index].action == .delete {
            guard let child = needed[decisions[index].id] else { continue }
            decisions[index].action = .keep
            decisions[index].keptBy.append("parent of \(child)")
        }
    }

    /// The live readers of a backup as one phrase, or nil when none; stale reader records are removed and noted.
    private static func readers(of backupID: String, in store: BackupStore, removeStale: Bool, notes: inout [String]) throws -> String? {
        let found = try StoreLock.readers(of: backupID, in: store, removeStale: removeStale)
        notes += found.reclaimed.map { "\(removeStale ? "removed" : "would remove") the stale reader lock of \($0) on backup \(backupID) (process gone)" }
        return found.live.isEmpty ? nil : found.live.map { "\($0)" }.joined(separator: ", ")
    }

    /// Folders under `backups/` that have no manifest: removed once older than the grace period and
    /// not changed since `writer` (a live holder of the writer lock) took it; until then "in progress".
    /// The plan's action for a folder under backups/ that the tools did not make.
    public static let notOurs = "not ours, left alone"

    static func findGarbage(objects: [StoredObject], withManifest: Set<String>, policy: RetentionPolicy, now: Date,
                            writer: LockHolder? = nil) -> [PruneReport.Garbage] {
        var newestChange: [String: Date] = [:]
        var linked: Set<String> = []
        for object in objects {
            let parts = object.key.split(separator: "/")
            guard parts.count >= 3 else { continue }
            let folder = "backups/\(parts[1])"
            guard !withManifest.contains(String(parts[1])) else { continue }
            let modified = object.modified ?? now
            newestChange[folder] = max(newestChange[folder] ?? .distantPast, modified)
            // A link that is the folder or lies inside it (not one above it: backups/ itself moved to another disk).
            if let link = object.linkedAt, link == folder || link.hasPrefix(folder + "/") { linked.insert(folder) }
        }
        return newestChange.keys.sorted().map { folder in
            let changed = newestChange[folder] ?? now
            let age = now.timeIntervalSince(changed)
            let hours = (age / 360).rounded() / 10
            // "Only what we made" (DESIGN.md): a folder a backup writes is named by its id; anything
            // else (an incident record written into backups/ by a --repo typo, a file an operator
            // put there) is neither in progress nor garbage, whatever its age.
            guard BackupID.isValid(String(folder.dropFirst("backups/".count))) else {
                return PruneReport.Garbage(folder: folder, ageHours: hours, action: notOurs,
                                           reason: "not a backup: its name is no backup id, so dbbackup did not make it; left alone")
            }
            // dbbackup writes no symbolic links: what a link reaches lies outside the repository, and
            // deleting through it deleted an operator's files there.
            guard !linked.contains(folder) else {
                return PruneReport.Garbage(folder: folder, ageHours: hours, action: notOurs,
                                           reason: "not a backup: it is (or holds) a symbolic link to files outside the repository, which dbbackup does not make; left alone")
            }
            if let writer, changed >= writer.since {
                return PruneReport.Garbage(folder: folder, ageHours: hours, action: "in progress", reason: "no manifest yet; \(writer) is writing")
            }
            if age < policy.garbageGracePeriod.seconds {
                return PruneReport.Garbage(folder: folder, ageHours: hours, action: "in progress",
                                           reason: "no manifest yet; changed \(hours)h ago, within the \(policy.garbageGracePeriod) grace period")
            }
            return PruneReport.Garbage(folder: folder, ageHours: hours, action: "delete",
                                       reason: "no manifest; unchanged for longer than the \(policy.garbageGracePeriod) grace period")
        }
    }
}
