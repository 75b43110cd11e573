import Foundation
import PostgresClient

extension String {
    /// Whether two database names are one name to PostgreSQL: the same UTF-8 bytes. Swift's `==`
    /// (and its hashing) treats canonically equivalent text as equal — NFC `café` (U+00E9) and NFD
    /// `café` (e + U+0301) — while PostgreSQL holds those as two databases, and taking one's backups
    /// for the other's restores the wrong data.
    public func isSameDatabaseName(as other: String) -> Bool {
        utf8.elementsEqual(other.utf8)
    }
}

/// A database name as a dictionary key or set member, by its bytes (`isSameDatabaseName`), ordered
/// by its bytes too.
public struct DatabaseNameKey: Hashable, Comparable, Sendable {
    public let name: String

    public init(_ name: String) {
        self.name = name
    }

    public static func == (lhs: DatabaseNameKey, rhs: DatabaseNameKey) -> Bool {
        lhs.name.isSameDatabaseName(as: rhs.name)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(Array(name.utf8))
    }

    public static func < (lhs: DatabaseNameKey, rhs: DatabaseNameKey) -> Bool {
        lhs.name.utf8.lexicographicallyPrecedes(rhs.name.utf8)
    }
}

/// Which server's logical backups of one database stand for "this database".
///
/// Databases of one name on two servers (`app` on A and on B backing up into one shared bucket) are
/// two databases: each manifest records its server's `system_identifier`. So a choice prefers the
/// target server's own backups; when the database's backups come from one server only (or record
/// none: manifests written before it was recorded), those are the database's — restoring onto a new
/// server after the old one died must work with no extra flag; when they come from several servers
/// and none is the target's (or there is no target server), nothing says whose to take: refused,
/// naming the servers. A backup named by its id is never narrowed: the operator chose it.
public struct ServerScope: Sendable {
    /// The one server whose backups count; nil: every backup of the database.
    public let system: String?

    /// Whether `manifest` (a backup of the database) is in scope.
    public func admits(_ manifest: BackupManifest) -> Bool {
        system == nil || manifest.database.systemIdentifier == system
    }

    /// The scope for backups of `database` among `manifests`.
    ///
    /// - Parameters:
    ///   - target: the target server's system identifier; nil when there is none (`dbrestore
    ///     contents`, `dbverify --files`) or it cannot be read.
    ///   - location: the repositories, for the error.
    /// - Throws: `RecoveryError(.backupNotFound)` naming each server (identifier, newest backup) when
    ///   several servers' backups qualify and none is the target's.
    public static func of(_ database: String, among manifests: [BackupManifest], target: String?, location: String) throws -> ServerScope {
        let own = manifests.filter { $0.kind == .logical && $0.database.name.isSameDatabaseName(as: database) }
        if let target, own.contains(where: { $0.database.systemIdentifier == target }) { return ServerScope(system: target) }
        var newest: [String: String] = [:]   // system identifier → its newest backup id
        var unrecorded: String?               // the newest backup that records no server
        for manifest in own {
            guard let system = manifest.database.systemIdentifier else {
                unrecorded = max(unrecorded ?? "", manifest.id)
                continue
            }
            newest[system] = max(newest[system] ?? "", manifest.id)
        }
        // With a target server, backups that record no server may be its own (written before the field was),
        // beside another server's newer ones: which is this database's is not known, so neither is taken
        // (an outside attack had A's own older backup lose to B's newer one). With no target, as before.
        let sources = newest.count + (target != nil && unrecorded != nil && !newest.isEmpty ? 1 : 0)
        guard sources > 1 else { return ServerScope(system: nil) }
        let servers = newest.sorted { $0.value > $1.value }
        let listed = (servers.map { "system \($0.key) (newest backup \($0.value))" }
            + (sources > newest.count ? unrecorded.map { ["backups that record no server (newest \($0))"] } ?? [] : []))
            .joined(separator: ", ")
        let whose = target.map { ", none of them the target server (system \($0))" } ?? ": 'latest' does not say whose"
        throw RecoveryError(
            .backupNotFound,
            "\(location) holds logical backups of database \(database) from \(sources) servers\(whose): \(listed)",
            hint: "name the backup to use by its id (e.g. \(servers[0].value)); dbrestore list --json shows each backup's system_identifier; nothing was touched")
    }

    /// The system identifier of the server `connection` is on; nil when it cannot be read (a role
    /// refused `pg_control_system()`): the choice then goes as with no target server.
    public static func systemIdentifier(of connection: PostgresConnection) -> String? {
        (try? connection.query("SELECT system_identifier::text FROM pg_catalog.pg_control_system()"))?.scalar
    }

    /// `systemIdentifier(of:)` over a connection of its own, for a command that chooses its backup
    /// before it connects; nil when the server cannot be reached (the command's own connection then
    /// says why, with its exit code).
    public static func systemIdentifier(at target: ConnectionTarget, applicationName: String) -> String? {
        guard let connection = try? PostgresConnection(target: target, applicationName: applicationName) else { return nil }
        defer { connection.close() }
        return systemIdentifier(of: connection)
    }
}
