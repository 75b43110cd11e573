import ArgumentParser
import Foundation
import RecoveryKit

/// What one run of a tool resolved once, when it started, and hands to the command: the settings
/// (environment and config file) and, once the command starts reporting, its monitoring reporter,
/// which the exit path tells about a failure. One per run; nothing process-wide.
public final class RunContext {
    public let settings: Settings
    /// Set by `OutputOptions.begin` when the run writes metrics or posts notifications.
    var reporter: RunReporter?

    public init(settings: Settings) {
        self.settings = settings
    }
}

/// A command that runs with the run's resolved settings rather than reading them itself.
public protocol ToolCommand: ParsableCommand {
    func run(in context: RunContext) throws
}

extension ToolCommand {
    /// Called only when a caller bypasses `runReturningCode`: settings from the process environment
    /// and the default config file.
    public func run() throws {
        try run(in: RunContext(settings: try Settings.load(configFlag: nil)))
    }
}

extension ParsableCommand {
    /// The parsed command's `--config`, if it has one.
    static func configFlag(of command: ParsableCommand) -> String? {
        Mirror(reflecting: command).children.lazy.compactMap { ($0.value as? OptionGroup<ConfigOptions>)?.wrappedValue.configFile }.first
    }
}
