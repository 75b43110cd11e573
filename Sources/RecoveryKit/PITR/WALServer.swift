import BackupStorage
import Foundation
import Gzip

/// Which server wrote an archived WAL segment: the system identifier in the long header of its
/// first page (`XLogLongPageHeaderData.xlp_sysid`). One repository can hold base backups of several
/// servers (a cluster initialised again, a new one archiving into the same repository); a base
/// backup recovers only with its own server's WAL, and PostgreSQL would find out only after the
/// extraction ("WAL file is from different database system").
enum WALServer {
    /// `XLP_LONG_HEADER` in `xlp_info`: the page starts with the long header (every segment's first page).
    static let longHeaderFlag: UInt16 = 0x0002
    /// `xlp_sysid`'s offset: the short header (magic 2, info 2, timeline 4, page address 8,
    /// remaining length 4) padded to 8 bytes.
    private static let systemIdentifierOffset = 24
    private struct Enough: Error {}

    /// The system identifier of the archived WAL file under `key` (`name` for messages); nil when it
    /// is not there or its first page has no long header. The header is read in the byte order of
    /// this machine, as the server wrote it on its own (a repository is restored on the same kind).
    /// Only the object's first bytes are read and inflated (a HEAD and one short ranged GET on S3;
    /// an encrypted file's first frame, authenticated whole): the plan checks several segments of a
    /// WAL range this way (`WALRangeOwnership`).
    ///
    /// - Throws: `RecoveryError` for a damaged or undecryptable file; storage errors.
    static func systemIdentifier(ofKey key: String, name: String, in store: BackupStore, cipherKey: RepositoryKey?) throws -> String? {
        let wanted = systemIdentifierOffset + 8
        var head = Data()
        do {
            let size = try store.objectInfo(key).size
            // Only the first page's header is needed: stop reading and inflating once it is here.
            let decompressor = try GzipDecompressor(outputChunkSize: 8192) { chunk in
                head.append(contentsOf: chunk.prefix(wanted - head.count))
                if head.count >= wanted { throw Enough() }
            }
            var decryptor: StreamDecryptor?
            var buffer = [UInt8](repeating: 0, count: 64 * 1024)
            // A first read the compressed header always fits in; an encrypted file needs its first frame whole.
            var (offset, end) = (UInt64(0), min(size, UInt64(buffer.count)))
            var first = true
            while offset < end {
                let reader = try store.makeReader(key, range: offset..<end)
                defer { reader.close() }
                while true {
                    let count = try buffer.withUnsafeMutableBytes { try reader.read(into: $0) }
                    if count == 0 { break }
                    try buffer.withUnsafeBytes { whole in
                        let chunk = UnsafeRawBufferPointer(rebasing: whole.prefix(count))
                        if first, chunk.starts(with: RepositoryKey.magic) {
                            guard let cipherKey else {
                                throw RecoveryError(.configuration, "archived WAL file \(name) is encrypted and no key was given",
                                                    hint: "pass --encryption-key-file FILE or set DBRECOVERY_ENCRYPTION_KEY")
                            }
                            decryptor = StreamDecryptor(key: cipherKey, object: key) { try decompressor.write($0) }
                        }
                        first = false
                        if let decryptor { try decryptor.write(chunk) } else { try decompressor.write(chunk) }
                    }
                }
                offset = end
                end = decryptor == nil ? size : min(size, UInt64(RepositoryKey.magic.count + 4 + 12 + StreamEncryptor.frameSize + 16))
            }
            // The whole file read and no header: a short file, or one whose first page has none.
            if offset == size {
                try decryptor?.finish()
                try decompressor.finish()
            }
        } catch is Enough {
        } catch let error as StorageError where error.kind == .notFound {
            return nil
        } catch let error as GzipError {
            throw RecoveryError(.backupCorrupt, "archived WAL file \(name) is damaged: \(error)", hint: WALArchive.damagedHint(name))
        }
        return systemIdentifier(ofHeader: head)
    }

    /// `xlp_sysid` of a segment's first bytes, when they hold a long page header.
    static func systemIdentifier(ofHeader head: Data) -> String? {
        let bytes = [UInt8](head)
        guard bytes.count >= systemIdentifierOffset + 8 else { return nil }
        let info = UInt16(bytes[2]) | UInt16(bytes[3]) << 8
        guard info & longHeaderFlag != 0 else { return nil }
        let value = (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[systemIdentifierOffset + $1]) << (8 * UInt64($1)) }
        return String(value)
    }

    /// The archived segment stored last (by the time the repository gives, then by name): the WAL of
    /// the server archiving into the repository now.
    static func newestSegment(in archive: [StoredObject]) -> (key: String, name: String)? {
        let segments = archive.compactMap { object -> (StoredObject, String)? in
            guard let name = WALArchive.fileName(ofKey: object.key), WALSegmentName.isSegment(name) else { return nil }
            return (object, name)
        }
        guard let newest = segments.max(by: { ($0.0.modified ?? .distantPast, $0.1) < ($1.0.modified ?? .distantPast, $1.1) }) else { return nil }
        return (newest.0.key, newest.1)
    }
}

/// The base backups one `dbrestore --pitr` chooses among: one server's. In a repository holding
/// several servers' base backups that is the one `--system-identifier` names, else the one whose
/// WAL was archived last (the server archiving into it now); when neither says, the plan is refused
/// rather than recovering whichever server's base backup happens to be newest.
struct ServerChoice {
    var backups: [BackupManifest]
    /// The other servers' base backups (and those that recorded no server), with why.
    var skipped: [PITRPlan.Skipped] = []
    /// The server chosen and why, for the plan; nil when the repository holds one server's only.
    var note: String?

    /// - Throws: `RecoveryError(.usage)` when the repository holds several servers' base backups and
    ///   the WAL does not tell which (naming them and `--system-identifier`); `.backupNotFound` for a
    ///   `--system-identifier` it holds no base backup of; storage errors.
    static func choose(_ all: [BackupManifest], archive: [StoredObject], store: BackupStore, configuration: PITRConfiguration) throws -> ServerChoice {
        var servers: [String: BackupManifest] = [:]   // each server's newest base backup (`all` is newest first)
        for backup in all { if let system = backup.database.systemIdentifier, servers[system] == nil { servers[system] = backup } }
        let systems = servers.keys.sorted()
        let listed = systems.map { "system \($0) (newest base backup \(servers[$0]?.id ?? "?"))" }.joined(separator: ", ")
        let chosen: String, why: String
        if let named = configuration.systemIdentifier {
            guard servers[named] != nil else {
                throw RecoveryError(.backupNotFound, "repository \(store.location) holds no base backup of system \(named)"
                                    + (systems.isEmpty ? "" : "; it holds base backups of \(listed)"),
                                    hint: "dbrestore list --json shows each backup's system_identifier; nothing was written")
            }
            (chosen, why) = (named, "named by --system-identifier")
        } else {
            guard systems.count > 1 else { return ServerChoice(backups: all) }
            let newest = WALServer.newestSegment(in: archive)
            var owner: String?
            if let newest {
                do {
                    owner = try WALServer.systemIdentifier(ofKey: newest.key, name: newest.name, in: store, cipherKey: configuration.key)
                } catch is RecoveryError {
                    owner = nil   // damaged or sealed with another key: it tells nothing, the operator chooses
                }
            }
            guard let owner, servers[owner] != nil else {
                let wal = newest.map { segment in "the WAL archived last (\(segment.name)) is " + (owner.map { "of system \($0), none of them" } ?? "unreadable") }
                    ?? "it holds no WAL"
                throw RecoveryError(.usage, "repository \(store.location) holds base backups of \(systems.count) servers, \(listed), and \(wal): which to recover is not known",
                                    hint: "choose one with --system-identifier \(systems[0]) (or \(systems.dropFirst().joined(separator: ", "))); nothing was written")
            }
            (chosen, why) = (owner, "whose WAL was archived last (\(newest?.name ?? "?"))")
        }
        var choice = ServerChoice(backups: all.filter { $0.database.systemIdentifier == chosen })
        choice.skipped = all.filter { $0.database.systemIdentifier != chosen }.map { backup in
            PITRPlan.Skipped(id: backup.id, reason: backup.database.systemIdentifier.map { "of another server (system \($0))" }
                             ?? "records no server (taken before dbbackup recorded the system identifier)")
        }
        let others = systems.filter { $0 != chosen }
        choice.note = "\(chosen), \(why)" + (others.isEmpty ? "" : "; the repository also holds base backups of system \(others.joined(separator: ", ")) (--system-identifier chooses)")
        return choice
    }

    /// Why `backup` cannot recover from this archive: its first WAL segment there was written by
    /// another server (its name reused by a cluster initialised again). Nil when it is its own, not
    /// archived (the WAL check says so) or unreadable (recovery says so); only checked when the
    /// repository holds several servers' base backups or one was named.
    func walProblem(of backup: BackupManifest, in store: BackupStore, cipherKey: RepositoryKey?) throws -> String? {
        guard note != nil, let system = backup.database.systemIdentifier, let first = backup.physical?.firstWalSegment,
              let key = try? WALArchive.key(for: first) else { return nil }
        let found: String?
        do { found = try WALServer.systemIdentifier(ofKey: key, name: first, in: store, cipherKey: cipherKey) } catch is RecoveryError { return nil }
        guard let found, found != system else { return nil }
        return "its first WAL segment in the archive, \(first), was written by another server (system \(found)), not by its own (system \(system))"
    }
}
