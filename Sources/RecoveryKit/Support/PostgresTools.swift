import Foundation

/// Finds the PostgreSQL client programs: `--pg-bin`, then `PG_BIN`, then `PATH`, then the newest
/// `/usr/lib/postgresql/<major>/bin`.
public struct PostgresTools: Sendable {
    /// A directory given explicitly, if any.
    public let explicitDirectory: String?

    public init(directory: String? = nil) {
        explicitDirectory = directory ?? ProcessInfo.processInfo.environment["PG_BIN"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The absolute path of a program such as `pg_dump`.
    ///
    /// - Throws: `RecoveryError(.toolFailed)` saying what to install when it is nowhere.
    public func path(of program: String) throws -> String {
        var candidates: [String] = []
        if let explicitDirectory {
            candidates.append(explicitDirectory + "/" + program)
        } else {
            let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
            candidates += path.split(separator: ":").map { "\($0)/\(program)" }
            let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
            for version in versions.compactMap(Int.init).sorted(by: >) {
                candidates.append("/usr/lib/postgresql/\(version)/bin/\(program)")
            }
        }
        if let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) {
            return found
        }
        let place = explicitDirectory.map { "in \($0)" } ?? "on PATH or in /usr/lib/postgresql/*/bin"
        throw RecoveryError(.toolFailed, "\(program) not found \(place)",
                            hint: "install the PostgreSQL client programs (apt-get install postgresql-client-15) or pass --pg-bin DIR")
    }
}
