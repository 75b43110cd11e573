import BackupStorage
import Foundation
import ProcessSignals

/// Rebuilds a data directory from a chain of incremental base backups with `pg_combinebackup`.
///
/// Members are streamed from the repository (local or S3) one at a time and combined pairwise:
/// the full backup, then each incremental on the result so far. So at most three trees exist at
/// once — the result so far, one extracted incremental, and the next result — instead of every
/// member. Where `pg_combinebackup --link` exists (PostgreSQL 18) unchanged files are hard links
/// into the result so far, which is deleted after each step: the peak is then about the final
/// data directory plus one incremental. Without it (17) the peak is about twice the data directory
/// plus one incremental. Staging lives beside the data directory (same file system, for links).
enum ChainRestore {
    /// Extracts `chain` (root first) into `directory`, which must be new or empty.
    ///
    /// - Throws: `RecoveryError`; everything staged is removed, and so is `directory` (by the caller).
    static func materialize(_ chain: [BackupManifest], from store: BackupStore, into directory: String, key: RepositoryKey?, jobs: Int,
                            tools: PostgresTools, marker: ExtractionMarker, timeline: Timeline, progress: ProgressObserver?) throws {
        guard let root = chain.first, let last = chain.last else { return }
        guard chain.count > 1 else {
            return try timeline.step("extract base backup \(root.id) into \(directory)") {
                try PointInTimeRestore.extract(root, from: store, into: directory, key: key, jobs: jobs, progress: progress)
            }
        }
        let combine = try program("pg_combinebackup", for: root, tools: tools)
        let links = try supportsLinks(combine)
        let stagingDirectory = stagingPrefix(of: directory) + Timestamp.compact(Date(), separator: "_", zone: "")
        // Marked as ours, like the data directory: a run killed while it stages leaves it for the next
        // run of the same data directory to remove (`abandonedStaging`).
        _ = try ExtractionMarker.begin(in: stagingDirectory, command: "dbrestore --pitr")
        defer {
            try? FileManager.default.removeItem(atPath: stagingDirectory)
            if Interruption.isRequested { CleanupLog.cleaned("removed \(stagingDirectory)") }
        }
        var current = stagingDirectory + "/0-" + root.id
        try timeline.step("extract full base backup \(root.id) (chain root) into \(current)") {
            try PointInTimeRestore.extract(root, from: store, into: current, key: key, jobs: jobs, progress: progress)
        }
        for (index, member) in chain.enumerated().dropFirst() {
            let extracted = stagingDirectory + "/\(index)-" + member.id
            try timeline.step("extract incremental \(member.id) into \(extracted)") {
                try PointInTimeRestore.extract(member, from: store, into: extracted, key: key, jobs: jobs, progress: progress)
            }
            let isLast = member.id == last.id
            let output = isLast ? directory : stagingDirectory + "/combined-\(index)"
            if isLast {
                // Empty but for the marker (the plan's check); pg_combinebackup creates it. The marker
                // is back once the rebuilt directory is verified (pg_verifybackup refuses extra files).
                // Meanwhile the staging directory says whose the data directory is: a run killed
                // in between leaves it without a marker of its own, and the next run knows it by this.
                try writeDurably(Data(directory.utf8), to: stagingDirectory + "/" + combiningFileName)
                try marker.remove()
                rmdir(directory)
            }
            var arguments = [current, extracted, "--output", output]
            if links { arguments.append("--link") }
            if !isLast { arguments.append("--no-sync") }   // an intermediate result is deleted in a moment
            try timeline.step("pg_combinebackup \(isLast ? "into \(directory)" : "step \(index) of \(chain.count - 1)")\(links ? " (--link)" : "")") {
                try run(combine, arguments, failure: "combining \(member.id) with the backups before it failed")
            }
            if isLast { CrashPoint.reached("pitr:combined") }
            try FileManager.default.removeItem(atPath: current)
            try FileManager.default.removeItem(atPath: extracted)
            current = output
        }
        chmod(directory, 0o700)
        // pg_combinebackup wrote a backup_manifest for what it built: check every file against it
        // before recovery settings are added (WAL comes from the archive later, so it is not parsed).
        let verify = try program("pg_verifybackup", for: root, tools: tools)
        try timeline.step("pg_verifybackup the rebuilt data directory") {
            try run(verify, ["--no-parse-wal", "--quiet", directory], failure: "the data directory rebuilt from chain \(chain.map(\.id).joined(separator: " → ")) does not match its backup_manifest")
        }
        try marker.write()
    }

    /// In a staging directory: the data directory the last pg_combinebackup writes, while it does.
    static let combiningFileName = "combining-into"

    /// `<pgdata>.dbrestore-chain-`: what the staging directories of a data directory are named.
    static func stagingPrefix(of directory: String) -> String {
        (directory.hasSuffix("/") ? String(directory.dropLast()) : directory) + ".dbrestore-chain-"
    }

    /// Staging directories of `directory` left by runs that are gone (their `ExtractionMarker` says
    /// so; one without a marker, or of a live run, is not listed), each with whether the run was
    /// writing `directory` itself with pg_combinebackup when it died.
    static func abandonedStaging(of directory: String) -> [(path: String, combining: Bool, by: String)] {
        let prefix = stagingPrefix(of: directory)
        let parent = (prefix as NSString).deletingLastPathComponent
        let namePrefix = (prefix as NSString).lastPathComponent
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: parent.isEmpty ? "." : parent)) ?? []).filter { $0.hasPrefix(namePrefix) }.sorted()
        return names.compactMap { name in
            let path = (parent as NSString).appendingPathComponent(name)
            guard case .abandoned(let holder) = ExtractionMarker.inspect(path) else { return nil }
            let combining = FileManager.default.contents(atPath: path + "/" + combiningFileName).map { String(decoding: $0, as: UTF8.self) == directory } ?? false
            return (path, combining, ExtractionMarker.killedRun(holder))
        }
    }

    private static func writeDurably(_ data: Data, to path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: data, attributes: [.posixPermissions: 0o600]) else {
            throw RecoveryError(.failure, "cannot write \(path): \(String(cString: strerror(errno)))")
        }
        try LocalStore.syncDirectory((path as NSString).deletingLastPathComponent)
    }

    /// What a restore of `chain` needs, checked by the plan before anything is written:
    /// pg_combinebackup (found, or the error naming `--pg-bin`), whether it links, and about how much
    /// disk the data directory and staging take at the peak (from the members' tar sizes).
    static func requirements(of chain: [BackupManifest], tools: PostgresTools) throws -> (links: Bool, peakBytes: UInt64) {
        let size = { (manifest: BackupManifest) in manifest.files.first { $0.name == PhysicalCapture.baseFileName }?.rawBytes ?? 0 }
        guard chain.count > 1, let root = chain.first else { return (false, chain.first.map(size) ?? 0) }
        let links = try supportsLinks(try program("pg_combinebackup", for: root, tools: tools))
        _ = try program("pg_verifybackup", for: root, tools: tools)
        let largestIncrement = chain.dropFirst().map(size).max() ?? 0
        // The result so far, one extracted incremental, and the next result (which, with links,
        // shares every unchanged file with the result so far).
        return (links, size(root) * (links ? 1 : 2) + largestIncrement)
    }

    /// pg_combinebackup and pg_verifybackup read a data directory: of the backup's own major (the
    /// plain search only for manifests that predate the recorded version).
    private static func program(_ name: String, for root: BackupManifest, tools: PostgresTools) throws -> String {
        guard let major = root.serverMajor else { return try tools.path(of: name) }
        return try tools.program(name, for: major, fit: .same).path
    }

    /// Whether this pg_combinebackup hard-links unchanged files (`--link`, PostgreSQL 18+).
    private static func supportsLinks(_ combine: String) throws -> Bool {
        let child = try ChildProcess(executable: combine, arguments: ["--help"], stdin: .null, stdout: .pipe, stderr: .null)
        let output = OutputCollector(descriptor: child.standardOutput, limit: 64 * 1024)
        _ = child.waitForExit()
        return output.finish().contains("--link")
    }

    /// Runs pg_combinebackup or pg_verifybackup; a failure names `failure` and the program's own message.
    private static func run(_ program: String, _ arguments: [String], failure: String) throws {
        let child = try ChildProcess(executable: program, arguments: arguments, stdin: .null, stdout: .null, stderr: .pipe)
        let errors = OutputCollector(descriptor: child.standardError)
        let termination = child.waitForExit()
        try Interruption.check()
        guard termination.succeeded else {
            let name = (program as NSString).lastPathComponent
            throw RecoveryError(.restoreFailed, "\(failure): \(name) \(termination.description): \(errors.mostRelevantLine() ?? "no message")",
                                hint: "\(name) must be of the backups' major version (--pg-bin DIR); dbverify --files <id> checks the chain's stored files")
        }
    }
}
