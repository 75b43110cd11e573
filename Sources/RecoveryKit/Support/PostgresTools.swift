import Foundation

/// A PostgreSQL program found for one job, with the version it reported (recorded in manifests).
public struct PostgresProgram: Codable, Equatable, Sendable {
    /// `pg_dump`, `pg_basebackup`, …
    public var name: String
    public var path: String
    /// The program's own `--version` line, e.g. `pg_dump (PostgreSQL) 17.10`.
    public var version: String
    /// The major of `version`.
    public var major: Int
}

/// Finds the PostgreSQL programs that fit the server they work with: pg_dump and psql of the
/// server's major or newer, pg_basebackup, pg_combinebackup, pg_verifybackup, pg_ctl and postgres of
/// the same major. Each candidate is asked its `--version`; the directory name is not trusted.
///
/// Where it looks: a directory the user named (`--pg-bin`, else `PG_BIN`, else `pg_bin` in the
/// config file) and nowhere else, so a choice made on purpose is never silently replaced; otherwise
/// `/usr/lib/postgresql/<major>/bin` (Debian, Ubuntu), the cache `scripts/pg-majors.sh` installs into
/// (`$DBRECOVERY_PG_CACHE/<major>/bin`, else `/var/cache/dbrecovery/postgresql/<major>/bin` and
/// `~/.cache/dbrecovery/postgresql/<major>/bin`), then `PATH`. The server's own major is preferred,
/// then the nearest newer one.
public struct PostgresTools: Sendable {
    /// A directory given explicitly, if any.
    public let explicitDirectory: String?
    /// Where `explicitDirectory` came from, for messages (`--pg-bin`, `PG_BIN`, a config file).
    public let explicitSource: String
    private let environment: [String: String]

    /// - Parameters:
    ///   - directory: the directory the user named; nil looks at `PG_BIN`, then searches.
    ///   - source: where `directory` came from, as messages should name it.
    public init(directory: String? = nil, source: String = "--pg-bin", environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.environment = environment
        if let directory, !directory.isEmpty {
            explicitDirectory = directory
            explicitSource = source
        } else if let fromEnvironment = environment["PG_BIN"], !fromEnvironment.isEmpty {
            explicitDirectory = fromEnvironment
            explicitSource = "PG_BIN"
        } else {
            explicitDirectory = nil
            explicitSource = "not set"
        }
    }

    /// The program of a major that fits a server of major `server`.
    ///
    /// - Parameters:
    ///   - name: `pg_dump`, `pg_basebackup`, `pg_ctl`, …
    ///   - server: the server's major (for a restore: the server or data directory it goes into).
    ///   - fit: `.sameOrNewer` for pg_dump and psql, `.same` for the programs that read or write a data directory.
    /// - Throws: `RecoveryError(.toolFailed)` naming the major needed, what was found, and how to get
    ///   the right one (`--pg-bin`, `PG_BIN`, `scripts/pg-majors.sh install N`, the apt package).
    public func program(_ name: String, for server: PostgresMajor, fit: PostgresMajor.Fit) throws -> PostgresProgram {
        var found: [PostgresProgram] = []
        var seen = Set<String>()
        var bestNewer: PostgresProgram?
        for candidate in candidates(name, preferring: server) {
            let resolved = URL(fileURLWithPath: candidate).resolvingSymlinksInPath().path
            guard FileManager.default.isExecutableFile(atPath: candidate), seen.insert(resolved).inserted,
                  let program = Self.probe(name, at: candidate) else { continue }
            found.append(program)
            let major = PostgresMajor(program.major)
            if major == server { return program }
            if fit.accepts(major, server: server), major < PostgresMajor(bestNewer?.major ?? .max) { bestNewer = program }
        }
        if let bestNewer { return bestNewer }
        throw notFound(name, server: server, fit: fit, found: found)
    }

    /// Any version of a program, for work that no server decides (and for tests): the named
    /// directory, else `PATH`, else the newest `/usr/lib/postgresql/<major>/bin`.
    ///
    /// - Throws: `RecoveryError(.toolFailed)` saying what to install when it is nowhere.
    public func path(of program: String) throws -> String {
        var candidates: [String] = []
        if let explicitDirectory {
            candidates.append(explicitDirectory + "/" + program)
        } else {
            candidates += searchPath.map { "\($0)/\(program)" }
            candidates += Self.majors(in: "/usr/lib/postgresql").sorted(by: >).map { "/usr/lib/postgresql/\($0)/bin/\(program)" }
        }
        if let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) {
            return found
        }
        let place = explicitDirectory.map { "in \($0) (\(explicitSource))" } ?? "on PATH or in /usr/lib/postgresql/*/bin"
        throw RecoveryError(.toolFailed, "\(program) not found \(place)",
                            hint: "install the PostgreSQL client programs (apt-get install postgresql-client-15) or pass --pg-bin DIR")
    }

    // MARK: - Search

    /// Every place to look, in order: the named directory alone, else the server's major in the
    /// Debian layout and the caches, then `PATH`, then the other majors there.
    func candidates(_ name: String, preferring server: PostgresMajor) -> [String] {
        if let explicitDirectory { return [explicitDirectory + "/" + name] }
        let roots = ["/usr/lib/postgresql"] + cacheDirectories
        var majors = Set<Int>()
        for root in roots { majors.formUnion(Self.majors(in: root)) }
        let exact = roots.map { "\($0)/\(server.number)/bin/\(name)" }
        let onPath = searchPath.map { "\($0)/\(name)" }
        let others = majors.subtracting([server.number]).sorted().flatMap { major in roots.map { "\($0)/\(major)/bin/\(name)" } }
        return exact + onPath + others
    }

    /// The directories `scripts/pg-majors.sh` installs majors into.
    var cacheDirectories: [String] {
        if let cache = environment["DBRECOVERY_PG_CACHE"], !cache.isEmpty { return [cache] }
        var directories = ["/var/cache/dbrecovery/postgresql"]
        if let xdg = environment["XDG_CACHE_HOME"], !xdg.isEmpty {
            directories.append(xdg + "/dbrecovery/postgresql")
        } else if let home = environment["HOME"], !home.isEmpty {
            directories.append(home + "/.cache/dbrecovery/postgresql")
        }
        return directories
    }

    private var searchPath: [String] {
        (environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").map(String.init)
    }

    /// The numeric subdirectories of `root` (`14`, `17`, …).
    private static func majors(in root: String) -> [Int] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).compactMap(Int.init)
    }

    /// Runs `path --version`; nil when it does not answer like a PostgreSQL program.
    static func probe(_ name: String, at path: String) -> PostgresProgram? {
        guard let child = try? ChildProcess(executable: path, arguments: ["--version"], stdin: .null, stdout: .pipe, stderr: .null) else { return nil }
        let output = OutputCollector(descriptor: child.standardOutput, limit: 4096)
        let line = output.finish().split(separator: "\n").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        guard child.waitForExit().succeeded, line.contains("PostgreSQL"), let major = PostgresMajor(versionText: line) else { return nil }
        return PostgresProgram(name: name, path: path, version: line, major: major.number)
    }

    // MARK: - Messages

    private func notFound(_ name: String, server: PostgresMajor, fit: PostgresMajor.Fit, found: [PostgresProgram]) -> RecoveryError {
        let needed = "\(name) \(fit.describe(server))"
        let what = found.isEmpty ? "none was found" : "found " + found.map { "\($0.major) (\($0.path))" }.joined(separator: ", ")
        let package = ["pg_dump", "psql", "pg_basebackup"].contains(name) ? "postgresql-client-\(server)" : "postgresql-\(server)"
        let fix = "scripts/pg-majors.sh install \(server), or apt-get install \(package) (PGDG), or point --pg-bin DIR / PG_BIN at a directory holding \(needed)"
        if let explicitDirectory {
            let reason = found.first.map { fit == .same ? "is \($0.major), and it must be the server's own major" : "is \($0.major), older than the server's" }
            let problem = reason.map { "\(name) in \(explicitDirectory) (\(explicitSource)) \($0)" } ?? "\(name) not found in \(explicitDirectory) (\(explicitSource))"
            return RecoveryError(.toolFailed, "the server is PostgreSQL \(server), which needs \(needed); \(problem)", hint: fix)
        }
        return RecoveryError(.toolFailed, "the server is PostgreSQL \(server), which needs \(needed); \(what) "
                                + "(looked in /usr/lib/postgresql/\(server)/bin, \(cacheDirectories.map { "\($0)/\(server)/bin" }.joined(separator: ", ")), PATH)",
                             hint: fix)
    }
}
