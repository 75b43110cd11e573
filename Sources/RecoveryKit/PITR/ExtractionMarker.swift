import BackupStorage
import Foundation

/// `<pgdata>/.dbrecovery-extracting`: written (naming this run) into the new or empty data directory
/// before the first byte of a base backup goes into it, and removed last, once `global/pg_control`
/// and the recovery settings are in place. A run killed in between (SIGKILL, a power cut, the OOM
/// killer) cannot clean up after itself and leaves it behind, so the next run can tell its own
/// partial extraction (removed, said in one line) from a directory someone else filled (never
/// touched: refused as not empty, as before).
final class ExtractionMarker {
    static let fileName = ".dbrecovery-extracting"

    /// What a non-empty data directory's marker says.
    enum Found {
        /// No marker: the directory is not ours.
        case none
        /// A marker whose run is gone (its holder, nil when the marker was cut short by the kill).
        case abandoned(LockHolder?)
        /// A marker of a run still alive (or on another host, where we cannot tell).
        case running(LockHolder)
    }

    private let directory: String
    private let holder: LockHolder

    private init(directory: String, holder: LockHolder) {
        self.directory = directory
        self.holder = holder
    }

    static func path(in directory: String) -> String {
        (directory.hasSuffix("/") ? String(directory.dropLast()) : directory) + "/" + fileName
    }

    /// How a run whose marker was left behind is named: its holder, or (a marker the kill cut short) none.
    static func killedRun(_ holder: LockHolder?) -> String {
        holder.map { "\($0.description), which was killed" } ?? "a dbrestore --pitr that was killed"
    }

    /// Reads the marker of `directory`, if it has one.
    static func inspect(_ directory: String) -> Found {
        guard let data = FileManager.default.contents(atPath: path(in: directory)) else { return .none }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        // Only this code names a file so: unreadable means the kill cut its writing short.
        guard let holder = try? decoder.decode(LockHolder.self, from: data) else { return .abandoned(nil) }
        return ProcessLiveness.isGone(holder) ? .abandoned(holder) : .running(holder)
    }

    /// Creates `directory` (0700) if needed and writes the marker, durably, before anything else.
    ///
    /// The marker is created exclusively (`O_EXCL`) and the directory looked at again once it is:
    /// two runs that both planned an empty directory cannot both fill it. The second finds the
    /// first's marker, or (the first done already) a directory holding more than its own marker.
    ///
    /// - Parameter needed: about how many bytes the extraction writes, named if the disk is full.
    /// - Throws: `RecoveryError(.usage)` when another run holds or filled the directory (nothing
    ///   of it touched), `.repositoryError` when the disk is full.
    static func begin(in directory: String, command: String, needed: UInt64? = nil) throws -> ExtractionMarker {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let marker = ExtractionMarker(directory: directory, holder: LockHolder(command: command))
        try marker.write(exclusive: true, needed: needed)
        let others = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0 != fileName }.sorted()
        guard others.isEmpty else {
            unlink(path(in: directory))
            throw RecoveryError(.usage, "data directory \(directory) was filled by another run after this one planned it (it holds \(others.prefix(3).joined(separator: ", "))\(others.count > 3 ? ", …" : ""))",
                                hint: "nothing of it was touched; look at what that run restored, or give an empty --pgdata")
        }
        return marker
    }

    /// Writes (again) the marker: a chain's pg_combinebackup needs the directory empty, so the
    /// marker is taken away for it and put back once the rebuilt directory is verified.
    /// `exclusive`: refused when a marker is there already (another run's: a live run holds it).
    func write(exclusive: Bool = false, needed: UInt64? = nil) throws {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = .sortedKeys
        let path = Self.path(in: directory)
        let data = try encoder.encode(holder)
        let file = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | (exclusive ? O_EXCL : O_TRUNC), 0o600)
        guard file >= 0 else {
            let code = errno
            if code == EEXIST && exclusive {
                let by: String
                if case .running(let holder) = Self.inspect(directory) { by = holder.description } else { by = "another dbrestore --pitr" }
                throw RecoveryError(.usage, "data directory \(directory) is being extracted into by \(by): a live run holds it",
                                    hint: "wait for that run to finish, or stop it and run again (a killed run's partial extraction is removed by the next run); nothing was written")
            }
            throw Self.writeFailure(path, code: code, needed: needed)
        }
        var written = 0
        var code: Int32 = 0
        data.withUnsafeBytes { bytes in
            while written < bytes.count {
                let count = Foundation.write(file, bytes.baseAddress.map { $0 + written }, bytes.count - written)
                if count <= 0 { code = count < 0 ? errno : ENOSPC; break }
                written += count
            }
        }
        if code == 0 && fsync(file) != 0 { code = errno }
        close(file)
        guard code == 0 else {
            unlink(path)
            throw Self.writeFailure(path, code: code, needed: needed)
        }
        try LocalStore.syncDirectory(directory)
    }

    /// A marker that cannot be written: a full disk (exit 20, with what the extraction needs) is not
    /// a permission problem.
    private static func writeFailure(_ path: String, code: Int32, needed: UInt64?) -> RecoveryError {
        let reason = String(cString: strerror(code))
        if code == ENOSPC || code == EDQUOT {
            return RecoveryError(.repositoryError, "no space left on device writing \(path): \(reason)",
                                 hint: "free space where --pgdata lies" + (needed.map { " (the base backup needs about \(ByteCount.format($0)))" } ?? "") + "; nothing was extracted")
        }
        return RecoveryError(.failure, "cannot write \(path): \(reason)",
                             hint: "the data directory must be writable by this user; nothing was extracted")
    }

    /// Takes the marker away (for pg_combinebackup, or at the end).
    func remove() throws {
        let path = Self.path(in: directory)
        guard unlink(path) == 0 || errno == ENOENT else {
            throw RecoveryError(.failure, "cannot remove \(path): \(String(cString: strerror(errno)))")
        }
        try LocalStore.syncDirectory(directory)
    }

    /// The last step: the marker goes once the data directory is complete (pg_control is the last
    /// member pg_basebackup writes, so a directory without it is still a partial one).
    func finish() throws {
        let control = (directory.hasSuffix("/") ? String(directory.dropLast()) : directory) + "/global/pg_control"
        guard FileManager.default.fileExists(atPath: control) else {
            throw RecoveryError(.restoreFailed, "the extracted data directory \(directory) has no global/pg_control",
                                hint: "the base backup is incomplete; dbverify --files <id> checks it; the next dbrestore --pitr removes this partial directory")
        }
        try remove()
    }

    /// Removes everything in `directory` but the directory itself (it may be a mount point), the
    /// marker last, so a kill during the removal leaves a directory the next run still knows as ours.
    static func removePartial(in directory: String) throws {
        let manager = FileManager.default
        for name in try manager.contentsOfDirectory(atPath: directory) where name != fileName {
            try manager.removeItem(atPath: (directory as NSString).appendingPathComponent(name))
        }
        let marker = path(in: directory)
        guard unlink(marker) == 0 || errno == ENOENT else {
            throw RecoveryError(.failure, "cannot remove \(marker): \(String(cString: strerror(errno)))")
        }
        try LocalStore.syncDirectory(directory)
    }
}
