import Foundation

/// The sources every setting of one run is resolved from, read once when the run starts and passed
/// down: the environment as the process got it and the config file (parsed once). Precedence is
/// flag > environment > config file > default (`resolve`).
public struct Settings: Sendable {
    /// The process environment, captured once; nothing writes to it.
    public let environment: [String: String]
    /// The config file in force, if any.
    public let configFile: ConfigFile?

    public init(environment: [String: String], configFile: ConfigFile?) {
        self.environment = environment
        self.configFile = configFile
    }

    /// Reads the config file named by `--config`, else `DBRECOVERY_CONFIG`, else the default path if
    /// it exists.
    ///
    /// - Throws: `RecoveryError(.configuration)` for a named file that is missing or invalid, or a
    ///   default file that is invalid: a config error stops the run, it is never skipped.
    public static func load(configFlag: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Settings {
        let named = configFlag ?? environment["DBRECOVERY_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
        let file: ConfigFile?
        if let named {
            file = try ConfigFile.load(named)
        } else {
            file = FileManager.default.fileExists(atPath: ConfigFile.defaultPath) ? try ConfigFile.load(ConfigFile.defaultPath) : nil
        }
        return Settings(environment: environment, configFile: file)
    }

    /// Flag, then the environment variables in order (empty ones count as unset), then the config
    /// file's value; with where it came from, for `--print-config`.
    public func resolve(_ name: String, flag: String?, flagName: String, environment names: [String],
                        file: (ConfigFile) -> String?, fileKey: String) -> ResolvedSetting {
        if let flag { return ResolvedSetting(name: name, value: flag, source: "flag \(flagName)") }
        for variable in names {
            if let value = environment[variable], !value.isEmpty { return ResolvedSetting(name: name, value: value, source: "environment \(variable)") }
        }
        if let configFile, let value = file(configFile) {
            return ResolvedSetting(name: name, value: value, source: "\(configFile.path) (\(fileKey))")
        }
        return ResolvedSetting(name: name, value: nil, source: "not set")
    }
}
