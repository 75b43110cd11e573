/// A PostgreSQL major version, and the one place that knows what differs between the majors the
/// tools support (14 to 18): catalogue columns, parameters and statements that exist only from some
/// major on. Every version-dependent query or statement asks here instead of comparing numbers itself.
///
/// The other catalogue reads (`pg_stat_activity`, `pg_stat_archiver`, `pg_control_system()`,
/// `pg_control_checkpoint()`, `pg_locks`, `pg_prepared_xacts`, `pg_class`) are the same in 14 to 18;
/// base backups go through pg_basebackup, never `pg_backup_start` (15+) / `pg_start_backup` (14), and
/// nothing reads the checkpointer statistics that moved to `pg_stat_checkpointer` in 17.
public struct PostgresMajor: Comparable, Hashable, Sendable, CustomStringConvertible {
    /// 14, 15, … (from 10 on a major is one number).
    public let number: Int

    /// The oldest and newest majors the version matrix tests run against.
    public static let supported = 14...18

    public init(_ number: Int) {
        self.number = number
    }

    /// From libpq's `PQserverVersion` / `server_version_num` (150018 → 15).
    public init(serverVersionNumber: Int) {
        number = serverVersionNumber / 10000
    }

    /// From version text: `17.10`, `15.18 (Debian 15.18-0+deb12u1)`, `pg_dump (PostgreSQL) 18.6`,
    /// `18beta2`; nil when no version number is in it.
    public init?(versionText text: String) {
        guard let version = Self.versionNumber(in: text),
              let major = Int(version.prefix { $0.isASCII && $0.isNumber }), major > 0 else { return nil }
        number = major
    }

    /// The first word of `text` that starts with a digit (`15.18` of `pg_dump (PostgreSQL) 15.18 (Debian …)`).
    public static func versionNumber(in text: String) -> String? {
        text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" })
            .first { $0.first?.isNumber == true }.map(String.init)
    }

    public var description: String { String(number) }

    public static func < (lhs: PostgresMajor, rhs: PostgresMajor) -> Bool { lhs.number < rhs.number }

    // MARK: - What differs between majors

    /// `pg_database.datlocprovider` and `CREATE DATABASE … LOCALE_PROVIDER` (15+; 14 has libc only).
    public var hasLocaleProvider: Bool { number >= 15 }

    /// The `pg_database` column holding the ICU (or builtin) locale: `daticulocale` in 15 and 16,
    /// renamed `datlocale` in 17; nil on 14, which has none.
    public var providerLocaleColumn: String? {
        number >= 17 ? "datlocale" : number >= 15 ? "daticulocale" : nil
    }

    /// The `builtin` locale provider and `CREATE DATABASE … BUILTIN_LOCALE` (17+).
    public var hasBuiltinLocaleProvider: Bool { number >= 17 }

    /// `pg_database.daticurules` and `CREATE DATABASE … ICU_RULES` (16+).
    public var hasICURules: Bool { number >= 16 }

    /// `GRANT SET ON PARAMETER` and `has_parameter_privilege` (15+).
    public var hasParameterPrivileges: Bool { number >= 15 }

    /// Session parameters a newer pg_dump writes at the top of every dump that a server of this
    /// major does not know. They set the default (`transaction_timeout = 0`, 17+), so psql's error
    /// for them is harmless, and a restore into this major skips them as psql effectively does.
    public var unknownDumpSettings: Set<String> {
        number >= 17 ? [] : ["transaction_timeout"]
    }

    /// `pg_dump` object types whose text is the server's own rendering of a stored expression
    /// (`pg_get_viewdef`, `pg_get_functiondef`, `pg_get_indexdef`, …). Another major may render the
    /// same definition differently (16 stopped qualifying the columns of a one-table view), so a
    /// restore into a newer major tolerates a changed text for these, never a missing or extra object.
    public static let serverRenderedObjectTypes: Set<String> = [
        "VIEW", "MATERIALIZED VIEW", "RULE", "FUNCTION", "PROCEDURE", "AGGREGATE", "TRIGGER", "POLICY",
        "INDEX", "CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT", "DEFAULT",
    ]

    // MARK: - Which programs fit

    /// How a client program's major must relate to the server's.
    public enum Fit: Sendable {
        /// pg_dump and psql: the server's major or newer (pg_dump refuses a newer server).
        case sameOrNewer
        /// pg_basebackup, pg_combinebackup, pg_verifybackup, pg_ctl, postgres: the server's major only
        /// (a data directory is readable only by the major that wrote it).
        case same

        public func accepts(_ program: PostgresMajor, server: PostgresMajor) -> Bool {
            switch self {
            case .sameOrNewer: return program >= server
            case .same: return program == server
            }
        }

        /// `17 or newer`, `17`.
        public func describe(_ server: PostgresMajor) -> String {
            self == .same ? "\(server)" : "\(server) or newer"
        }
    }
}
