import Foundation
import PostgresClient

/// What belongs to a database rather than to its contents: encoding and locale, owner, privileges,
/// comment, `ALTER DATABASE … SET` and per-role settings, connection limit, `datallowconn`.
///
/// A plain `pg_dump` (without `--create`) writes none of these, so they are recorded in the manifest
/// at backup time, in the dump's snapshot, and applied to the scratch database before the swap.
/// The tool's own marker (`dbrecovery.marker`) is never recorded.
public struct DatabaseProperties: Codable, Equatable, Sendable {
    /// One privilege of `datacl` (from `aclexplode`).
    public struct Grant: Codable, Equatable, Sendable, Hashable {
        /// The role granted to; nil is PUBLIC.
        public var grantee: String?
        /// `CONNECT`, `CREATE` or `TEMPORARY`.
        public var privilege: String
        public var grantable: Bool
    }

    /// `ALTER ROLE … IN DATABASE … SET` settings of one role.
    public struct RoleSettings: Codable, Equatable, Sendable {
        public var role: String
        /// `name=value` entries as `pg_db_role_setting` holds them.
        public var settings: [String]
    }

    /// Server encoding name, e.g. `LATIN1`.
    public var encoding: String
    public var collate: String
    public var ctype: String
    /// `libc`, `icu` or `builtin`.
    public var localeProvider: String
    /// The ICU (or builtin) locale, when the provider is not libc.
    public var providerLocale: String?
    public var owner: String
    /// Explicit privileges; nil when the database has the default ones (owner all, PUBLIC connect and temp).
    public var privileges: [Grant]?
    public var comment: String?
    /// -1 is no limit.
    public var connectionLimit: Int
    public var allowConnections: Bool
    /// `ALTER DATABASE … SET` entries (`name=value`), in catalogue order.
    public var settings: [String]
    public var roleSettings: [RoleSettings]
    /// ICU tailoring rules (`CREATE DATABASE … ICU_RULES`, PostgreSQL 16+); nil when none, and in
    /// backups taken before they were recorded.
    public var icuRules: String? = nil

    /// The parameter that holds the tool's own marker; never recorded or restored as a setting.
    static let markerParameter = "dbrecovery.marker"

    /// Reads the properties of the connection's current database.
    ///
    /// - Throws: `PostgresError` if the catalogue cannot be read.
    public static func read(on connection: PostgresConnection) throws -> DatabaseProperties {
        let major = PostgresMajor(serverVersionNumber: connection.serverVersionNumber)
        let provider = major.hasLocaleProvider
            ? "CASE d.datlocprovider WHEN 'c' THEN 'libc' WHEN 'i' THEN 'icu' WHEN 'b' THEN 'builtin' ELSE d.datlocprovider::text END"
            : "'libc'"
        let providerLocale = major.providerLocaleColumn.map { "d.\($0)" } ?? "NULL::text"
        let icuRules = major.hasICURules ? "d.daticurules" : "NULL::text"
        let row = try connection.query("""
            SELECT pg_catalog.pg_encoding_to_char(d.encoding), d.datcollate::text, d.datctype::text, \(provider), \(providerLocale),
                   pg_catalog.pg_get_userbyid(d.datdba)::text, (d.datacl IS NULL),
                   pg_catalog.shobj_description(d.oid, 'pg_database'), d.datconnlimit::text, d.datallowconn, \(icuRules)
            FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()
            """).rows.first
        guard let row else {
            throw PostgresError(kind: .query, operation: "read database properties", message: "current database not in pg_database")
        }
        let privileges = try row.bool(6) ? nil : try connection.query("""
            SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END, a.privilege_type, a.is_grantable
            FROM pg_catalog.pg_database d, pg_catalog.aclexplode(d.datacl) a
            WHERE d.datname = pg_catalog.current_database() ORDER BY 1 NULLS FIRST, 2
            """).rows.map { Grant(grantee: $0[0], privilege: try $0.string(1), grantable: try $0.bool(2)) }
        let settingRows = try connection.query("""
            SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(s.setrole)::text END, u.entry
            FROM pg_catalog.pg_db_role_setting s
            JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
            CROSS JOIN LATERAL unnest(s.setconfig) WITH ORDINALITY AS u(entry, position)
            WHERE d.datname = pg_catalog.current_database() AND NOT starts_with(u.entry, 'dbrecovery.')
            ORDER BY s.setrole <> 0, 1, u.position
            """).rows
        var settings: [String] = []
        var roleSettings: [RoleSettings] = []
        for setting in settingRows {
            let entry = try setting.string(1)
            guard let role = setting[0] else { settings.append(entry); continue }
            if roleSettings.last?.role == role { roleSettings[roleSettings.count - 1].settings.append(entry) } else {
                roleSettings.append(RoleSettings(role: role, settings: [entry]))
            }
        }
        return DatabaseProperties(
            encoding: try row.string(0), collate: try row.string(1), ctype: try row.string(2), localeProvider: try row.string(3),
            providerLocale: row[4], owner: try row.string(5), privileges: privileges, comment: row[7],
            connectionLimit: Int(try row.int64(8)), allowConnections: try row.bool(9), settings: settings, roleSettings: roleSettings,
            icuRules: row[10])
    }

    /// A copy to show (`--dry-run`, the prompt, JSON plans, incident records): values of settings
    /// whose name suggests a secret (`app.jwt_secret`, `*password*`, `*token*`, `*key*`) masked. The
    /// restore itself applies the manifest's own values.
    public var maskedForDisplay: DatabaseProperties {
        func mask(_ entry: String) -> String {
            guard let equals = entry.firstIndex(of: "=") else { return entry }
            let name = entry[..<equals].lowercased()
            let secret = ["password", "passwd", "secret", "token", "key", "credential"].contains { name.contains($0) }
            return secret ? String(entry[...equals]) + "********" : entry
        }
        var copy = self
        copy.settings = settings.map(mask)
        copy.roleSettings = roleSettings.map { RoleSettings(role: $0.role, settings: $0.settings.map(mask)) }
        return copy
    }

    /// The properties as lines for a person (`--dry-run`, the prompt).
    public var lines: [String] {
        var lines = ["encoding \(encoding), collate \(collate), ctype \(ctype), provider \(localeProvider)"
                     + (providerLocale.map { " (\($0))" } ?? "") + (icuRules.map { ", ICU rules \"\($0)\"" } ?? "")]
        lines.append("owner \(owner); privileges: " + (privileges.map(Self.describe) ?? "default"))
        lines.append("connection limit \(connectionLimit == -1 ? "none" : String(connectionLimit))"
                     + (allowConnections ? "" : "; connections not allowed") + (comment.map { "; comment \"\($0)\"" } ?? ""))
        if !settings.isEmpty { lines.append("settings: " + settings.joined(separator: ", ")) }
        for role in roleSettings { lines.append("settings for role \(role.role): " + role.settings.joined(separator: ", ")) }
        return lines
    }

    static func describe(_ grants: [Grant]) -> String {
        if grants.isEmpty { return "none" }
        return grants.map { "\($0.grantee ?? "PUBLIC") \($0.privilege)\($0.grantable ? " (grantable)" : "")" }.joined(separator: ", ")
    }
}

extension BackupManifest {
    private var sealedPropertiesObject: String { "\(folderKey)/database-properties" }

    /// Records the database's properties; with a repository key, the parts that may hold secrets
    /// (settings, per-role settings, comment) are sealed, and only the rest stays readable without the key.
    mutating func record(_ properties: DatabaseProperties, key: RepositoryKey?) throws {
        guard let key else {
            databaseProperties = properties
            return
        }
        var clear = properties
        clear.settings = []
        clear.roleSettings = []
        clear.comment = nil
        databaseProperties = clear
        sealedDatabaseProperties = try key.seal(JSONEncoder().encode(properties), object: sealedPropertiesObject).base64EncodedString()
    }

    /// The manifest with its sealed properties opened (what a restore applies).
    ///
    /// - Throws: `RecoveryError(.configuration)` when they are sealed and no key, or another key, is given.
    public func unsealed(with key: RepositoryKey?) throws -> BackupManifest {
        guard let sealed = sealedDatabaseProperties else { return self }
        // The same key checks, and messages, as for the backup's files.
        guard let file = files.first, let key = try StoredFileStream.key(for: file, of: self, given: key),
              let data = Data(base64Encoded: sealed) else {
            throw RecoveryError(.backupCorrupt, "backup \(id)'s manifest holds sealed database properties but its files are not encrypted",
                                hint: "restore another backup")
        }
        var copy = self
        copy.databaseProperties = try JSONDecoder().decode(DatabaseProperties.self, from: key.open(data, object: sealedPropertiesObject))
        copy.sealedDatabaseProperties = nil
        return copy
    }
}
