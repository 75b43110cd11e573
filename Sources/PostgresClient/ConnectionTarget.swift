#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
internal import CLibPQ

/// Where and as whom to connect: parsed once from a URL or conninfo string by libpq itself.
///
/// Anything not given falls back to libpq's own defaults (PG* environment, `.pgpass`,
/// the local socket), exactly as `psql` behaves. The password is kept apart so it can be handed
/// to child processes through their environment and never through argv.
public struct ConnectionTarget: Sendable, Equatable {
    /// Parsed keyword/value pairs, in libpq's order, excluding empty values.
    public private(set) var parameters: [(keyword: String, value: String)]
    /// libpq's environment-variable name for each keyword (`host` → `PGHOST`).
    private let environmentNames: [String: String]

    public static func == (lhs: ConnectionTarget, rhs: ConnectionTarget) -> Bool {
        lhs.parameters.elementsEqual(rhs.parameters) { $0.keyword == $1.keyword && $0.value == $1.value }
    }

    /// Parses a `postgresql://` URL or a `key=value` conninfo string; nil means "libpq defaults".
    ///
    /// - Throws: `PostgresError.invalidConnectionString` with libpq's reason. The input itself
    ///   is never echoed, since it may hold a password.
    public init(_ connectionString: String?) throws {
        var errorMessage: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(connectionString ?? "", &errorMessage) else {
            let reason = errorMessage.map { String(cString: $0) } ?? "out of memory"
            PQfreemem(errorMessage)
            throw PostgresError(kind: .invalidConnectionString, operation: "parse database URL",
                                message: Self.withoutEchoedInput(reason.trimmingTrailingNewlines()))
        }
        defer { PQconninfoFree(options) }
        var parameters: [(String, String)] = []
        var environmentNames: [String: String] = [:]
        var option = options
        while let keyword = option.pointee.keyword {
            let name = String(cString: keyword)
            if let envvar = option.pointee.envvar { environmentNames[name] = String(cString: envvar) }
            if let value = option.pointee.val, value.pointee != 0 {
                parameters.append((name, String(cString: value)))
            }
            option += 1
        }
        self.parameters = parameters
        self.environmentNames = environmentNames
    }

    /// The value given for a libpq keyword such as `dbname`, `host` or `user`, if any.
    public func value(_ keyword: String) -> String? {
        parameters.last { $0.keyword == keyword }?.value
    }

    /// The database this target names, falling back to `PGDATABASE`, then the user name, as libpq does.
    public var databaseName: String {
        if let name = value("dbname") { return name }
        return ProcessEnvironment.value("PGDATABASE") ?? userName
    }

    /// The user this target connects as, falling back to `PGUSER` and then the OS user.
    public var userName: String {
        value("user") ?? ProcessEnvironment.value("PGUSER") ?? ProcessEnvironment.value("USER") ?? "postgres"
    }

    /// The same server and credentials, connecting to another database.
    public func with(database: String) -> ConnectionTarget {
        var copy = self
        copy.parameters.removeAll { $0.keyword == "dbname" }
        copy.parameters.append(("dbname", database))
        return copy
    }

    /// The same target with one more parameter (replacing an earlier value of the same keyword).
    public func with(_ keyword: String, _ value: String) -> ConnectionTarget {
        var copy = self
        copy.parameters.removeAll { $0.keyword == keyword }
        copy.parameters.append((keyword, value))
        return copy
    }

    /// Environment variables that make libpq-based child programs (pg_dump, psql) connect to
    /// this target, password included, so that nothing secret is ever placed on their argv.
    public var childEnvironment: [String: String] {
        var environment: [String: String] = [:]
        for (keyword, value) in parameters {
            if let name = environmentNames[keyword] { environment[name] = value }
        }
        return environment
    }

    /// libpq's parse error without the pieces of input it quotes (`invalid URI query parameter:
    /// "…"` may quote a password, or the whole URL): the kind of problem stays, the input goes.
    static func withoutEchoedInput(_ message: String) -> String {
        if message.hasPrefix("missing \"=\" after") {
            return "missing \"=\" after a keyword in the connection string (the input is not shown: it may hold a password)"
        }
        guard let quote = message.firstIndex(of: "\"") else { return message }
        var kept = String(message[..<quote])
        while let last = kept.last, last == " " || last == ":" { kept.removeLast() }
        return (kept.isEmpty ? "malformed connection string" : kept) + " (the input is not shown: it may hold a password)"
    }

    /// A connection string as it may be shown (`--print-config`): parsed by libpq, so that every
    /// spelling of the password keyword (`password=`, `?password=`, `?pass%77ord=`, `:pw@`) is
    /// caught, and printed as `user@host:port/database` plus `password ****` when one was given.
    public static func displayable(_ connectionString: String) -> String {
        guard let target = try? ConnectionTarget(connectionString) else { return "(not a valid connection string; not shown)" }
        return target.redactedDescription + (target.value("password") != nil ? " password ****" : "")
    }

    /// `user@host:port/database`, never the password; for messages and logs.
    public var redactedDescription: String {
        let host = value("host") ?? value("hostaddr") ?? ProcessEnvironment.value("PGHOST") ?? "local socket"
        let port = value("port") ?? ProcessEnvironment.value("PGPORT") ?? "5432"
        return "\(userName)@\(host):\(port)/\(databaseName)"
    }
}

extension String {
    func trimmingTrailingNewlines() -> String {
        var text = self
        while let last = text.last, last == "\n" || last == "\r" || last == " " { text.removeLast() }
        return text
    }
}
