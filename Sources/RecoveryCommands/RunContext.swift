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
        optionGroup(ConfigOptions.self, of: command)?.configFile
    }

    /// The first option group of type `Group` in parsed `arguments`, searching the option groups it
    /// holds too (`list` holds its `ConfigOptions` inside `RepositoryReadOptions`).
    static func optionGroup<Group: ParsableArguments>(_ type: Group.Type, of arguments: Any) -> Group? {
        for child in Mirror(reflecting: arguments).children {
            if let group = child.value as? OptionGroup<Group> { return group.wrappedValue }
            if let nested = child.value as? NestedOptionGroup, let group = optionGroup(type, of: nested.parsedArguments) { return group }
        }
        return nil
    }
}

/// An `@OptionGroup` of any type, so that `optionGroup(_:of:)` can look inside it.
private protocol NestedOptionGroup {
    var parsedArguments: Any { get }
}

extension OptionGroup: NestedOptionGroup {
    fileprivate var parsedArguments: Any { wrappedValue }
}
