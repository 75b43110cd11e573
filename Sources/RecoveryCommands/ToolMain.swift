import ArgumentParser
import BackupStorage
import Foundation
import Gzip
import Logging
import PostgresClient
import ProcessSignals
import RecoveryKit

extension ParsableCommand {
    /// Parses the command line, runs the command and exits with a code from the `ExitStatus` table.
    ///
    /// Errors are printed as one line, `<tool>: error: <message>`, followed by `HINT: <what to do>`.
    /// SIGINT, SIGTERM and SIGHUP stop the run through its error paths (clean-up included) and exit 130;
    /// a second one exits 130 at once.
    public static func runAsTool(_ arguments: [String]? = nil) -> Never {
        // A dead pipe to pg_dump or psql must surface as EPIPE, not kill us silently.
        signal(SIGPIPE, SIG_IGN)
        #if canImport(Glibc)
        // Every thread (compressors, S3 part uploads) would otherwise get its own malloc arena, and
        // glibc would raise its mmap threshold after the first freed 1 MiB block and start carving
        // blocks from the heap; both made peak RSS creep with the dump's size. Two arenas and a fixed
        // 128 KiB threshold (large buffers always mmapped, returned on free) keep it flat.
        // mallopt is declared in <malloc.h>, which Swift's Glibc module does not export. M_ARENA_MAX is -8.
        if let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") {
            typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
            let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
            _ = mallopt(-8, 2)            // M_ARENA_MAX
            _ = mallopt(-3, 128 * 1024)   // M_MMAP_THRESHOLD
        }
        #endif
        // Before the command starts any thread or child; after mallopt, so the signal thread's arena counts.
        Interruption.installSignalHandlers(tool: configuration.commandName ?? "dbrecovery")
        let code = runReturningCode(arguments, standardError: FileHandle.standardError, bootstrapLogging: true)
        Glibc.exit(checkedStandardOutput(code))
    }

    /// `code`, or 1 when what the run printed on stdout (the backup id, the JSON a pipeline reads)
    /// could not be written — a full disk behind `> file` — which stdio would otherwise let pass as
    /// success, the result lost. A reader that closed its pipe early (`| head -1`) took what it wanted: not a failure.
    private static func checkedStandardOutput(_ code: Int32) -> Int32 {
        // fflush(nil): every output stream (Swift 6 does not let `stdout`, a C global, be named here).
        guard fflush(nil) != 0 else { return code }
        let problem = errno
        if problem == EPIPE { return code }
        let tool = configuration.commandName ?? "dbrecovery"
        let reason = String(cString: strerror(problem))
        TextSink.standardError.write("\(tool): error: could not write the result to stdout: \(reason)\n"
            + "HINT: free space where stdout goes (or send it elsewhere); \(code == 0 ? "the run itself succeeded" : "the run failed too, with exit \(code)")\n")
        return code == 0 ? ExitStatus.failure.rawValue : code
    }

    /// Runs the command in-process and returns its exit code (used by tests).
    ///
    /// - Parameter bootstrapLogging: send swift-log records to stderr at the level the parsed
    ///   command's `--quiet`/`-v` ask for; once per process, so only the tools' `main` sets it.
    public static func runReturningCode(_ arguments: [String]?, standardError handle: FileHandle, bootstrapLogging: Bool = false) -> Int32 {
        // Written with write(2), never FileHandle.write: that traps on a closed stderr (TextSink).
        let standardError = TextSink(descriptor: handle.fileDescriptor)
        let tool = configuration.commandName ?? "dbrecovery"
        let argv = arguments ?? Array(CommandLine.arguments.dropFirst())
        var command: ParsableCommand
        // The help screen a usage error points at: the subcommand's when one was named.
        var helpTopic = Self.helpTopic(tool: tool, arguments: argv)
        var spelled = argv
        do {
            spelled = try (Self.self as? ArgumentRewriting.Type)?.rewrite(argv) ?? argv
            helpTopic = Self.helpTopic(tool: tool, arguments: spelled)
            if let name = misplacedSubcommand(spelled) {
                // Not run in the order that parses: the token might have been an option's value. The
                // arguments are not echoed (a --database-url may carry a password).
                standardError.write("\(tool): error: '\(name)' is a subcommand: it comes first, before the options\nHINT: \(tool) \(name) [options]; \(tool) \(name) --help shows them\n")
                return ExitStatus.usage.rawValue
            }
            command = try parseAsRoot(spelled)
        } catch {
            // A subcommand's own checks can run before the parser has looked at every option: a misspelt
            // option is the cause to name ("--pitr needs a target" for `--target-tme` would mislead).
            let unknown = exitCode(for: error) != ArgumentParser.ExitCode.validationFailure || message(for: error).contains("Unknown option")
                ? nil : unknownOption(in: spelled, helpTopic: helpTopic)
            let code = reportParserError(unknown.map { ValidationError("Unknown option '\($0)'") } ?? error, tool: tool, helpTopic: helpTopic,
                                         standardError: standardError)
            // `dbrestore wal-fetch` runs as PostgreSQL's restore_command, which reads any exit below 126
            // as "not in the archive" and may end recovery early: a usage error must stop recovery.
            if code == ExitStatus.usage.rawValue, tool == "dbrestore", argv.first == "wal-fetch" {
                return ExitStatus.walFetchFailed.rawValue
            }
            return code
        }
        if bootstrapLogging {
            let level = Self.outputOptions(of: command)?.logLevel ?? .notice
            let coloured = StderrLogHandler.wantsColour()
            LoggingSystem.bootstrap { _ in StderrLogHandler(tool: tool, level: level, coloured: coloured) }
        }
        var context: RunContext?
        do {
            if let toolCommand = command as? ToolCommand {
                // Every setting's sources, read once: the command resolves flags against them.
                let settings: Settings
                do {
                    settings = try Settings.load(configFlag: Self.configFlag(of: command))
                } catch let error where command is WALFetchCommand {
                    // As restore_command, anything below 126 would read as "not in the archive".
                    let cause = RecoveryError.classify(error)
                    throw RecoveryError(.walFetchFailed, "cannot fetch WAL: \(cause.message)", hint: cause.hint)
                }
                let runContext = RunContext(settings: settings)
                context = runContext
                try toolCommand.run(in: runContext)
            } else {
                try command.run()
            }
            return ExitStatus.success.rawValue
        } catch let code as ArgumentParser.ExitCode {
            // A command's deliberate quiet exit (wal-fetch of an absent .history file): no message.
            return code.rawValue
        } catch let error where isArgumentParserError(error) {
            // `--help` and `help` parse into a HelpCommand whose run() throws the help request.
            return reportParserError(error, tool: tool, helpTopic: helpTopic, standardError: standardError)
        } catch {
            // Every other error reaches the exit-code table, with its own message and a hint.
            let classified = RecoveryError.classify(error).withCleanupSummary()
            context?.reporter?.failed(classified)
            var text = "\(tool): error: \(classified.message)\n"
            text += "HINT: \(classified.hint ?? classified.code.defaultHint)\n"
            standardError.write(text)
            return classified.code.rawValue
        }
    }

    /// The parsed command's `--json`/`--quiet`/`-v` options, if it has them (wal-push and wal-fetch
    /// do not: they log at the default level into PostgreSQL's log).
    static func outputOptions(of command: ParsableCommand) -> OutputOptions? {
        optionGroup(OutputOptions.self, of: command)
    }

    /// A subcommand written after options (`dbrestore --repo R list`, `dbmigrate --database-url U up`):
    /// the parser reads it as something else (a backup id for dbrestore's default restore) or not at
    /// all ("Unknown option"). Its name, when the arguments with it moved first parse as that subcommand.
    static func misplacedSubcommand(_ arguments: [String]) -> String? {
        guard let first = arguments.first, first.hasPrefix("-"), !["-h", "--help", "--version"].contains(first) else { return nil }
        let names = Set(configuration.subcommands.map { $0._commandName }).subtracting(["help"])
        guard let index = arguments.firstIndex(where: names.contains) else { return nil }
        let reordered = [arguments[index]] + arguments[..<index] + arguments[(index + 1)...]
        do {
            _ = try parseAsRoot(Array(reordered))
            return arguments[index]
        } catch {
            return nil
        }
    }

    /// `tool sub` when the arguments start with one of the tool's subcommands, else `tool`.
    static func helpTopic(tool: String, arguments: [String]) -> String {
        guard let first = arguments.first,
              configuration.subcommands.contains(where: { $0._commandName == first }) else { return tool }
        return "\(tool) \(first)"
    }

    /// Whether swift-argument-parser threw `error` (a help request, a validation failure, a clean exit),
    /// as opposed to the command's own work.
    private static func isArgumentParserError(_ error: Error) -> Bool {
        error is ValidationError || error is CleanExit || error is ArgumentParser.ExitCode
            || String(reflecting: type(of: error)).hasPrefix("ArgumentParser.")
    }

    /// Prints an argument-parser error (or `--help`) and returns its exit code: usage errors are 2.
    private static func reportParserError(_ error: Error, tool: String, helpTopic: String, standardError: TextSink) -> Int32 {
        let parserCode = exitCode(for: error)
        if parserCode == ArgumentParser.ExitCode.success {
            let text = fullMessage(for: error)
            // `tool --help` and `tool help` would show the subcommand list but not the options of what
            // `tool …` runs; print those too, so the screen the usage HINT points at has them all.
            print(text == helpMessage() ? teachingHelp() : text)
            return ExitStatus.success.rawValue
        }
        var message = message(for: error)
        if message.hasPrefix("Error: ") { message.removeFirst("Error: ".count) }
        let suggestion = nearestOption(to: message, helpTopic: helpTopic).map { "did you mean \($0)? " } ?? ""
        standardError.write("\(tool): error: \(message)\nHINT: \(suggestion)\(helpTopic) --help shows every option with examples\n")
        return parserCode == ArgumentParser.ExitCode.validationFailure ? ExitStatus.usage.rawValue : parserCode.rawValue
    }
}

extension ParsableCommand {
    /// For "Unknown option '--emrgency'": the option of the command (or of the subcommand the help topic
    /// names) closest to it, when it is a likely typo (at most 2 edits), from the help text itself.
    static func nearestOption(to message: String, helpTopic: String) -> String? {
        // The parser sometimes suggests one itself.
        guard !message.contains("Did you mean"), let match = message.firstMatch(of: /Unknown option '(--[^'=]+)/) else { return nil }
        let typed = String(match.1)
        let ranked = optionSpellings(helpTopic: helpTopic).map { ($0, Catalog.distance($0, typed)) }.filter { $0.1 <= 2 }.sorted { ($0.1, $0.0) < ($1.1, $1.0) }
        return ranked.first?.0
    }

    /// The first `--option` before `--` in `arguments` that the command (or the subcommand the help
    /// topic names) does not take.
    static func unknownOption(in arguments: [String], helpTopic: String) -> String? {
        // And the hidden ones (the background workers' flags; --yes, which emergency and drill ignore).
        let known = optionSpellings(helpTopic: helpTopic).union(["--help", "--version", "--pusher", "--prefetcher", "--yes"])
        return arguments.prefix { $0 != "--" }.lazy
            .filter { $0.hasPrefix("--") }
            .map { String($0.split(separator: "=", maxSplits: 1).first ?? "") }
            .first { !known.contains($0) }
    }

    /// Every `--option` the help of the command (and of the subcommand the help topic names) shows;
    /// the hidden ones are not there.
    private static func optionSpellings(helpTopic: String) -> Set<String> {
        var help = teachingHelp()
        if let name = helpTopic.split(separator: " ").dropFirst().first,
           let command = configuration.subcommands.first(where: { $0._commandName == String(name) }) {
            help += "\n" + helpMessage(for: command)
        }
        return Set(help.matches(of: /--[a-z][a-z0-9-]*/).map { String($0.0) })
    }
}

/// A tool whose documented spellings the argument parser cannot express directly (`dbrestore
/// --pitr …` for `dbrestore pitr …`) maps them to the parsed form before parsing.
protocol ArgumentRewriting {
    /// The arguments as the parser should see them.
    ///
    /// - Throws: `ValidationError` (a usage error, exit 2) for spellings that contradict each other.
    static func rewrite(_ arguments: [String]) throws -> [String]
}

extension ParsableCommand {
    /// The top-level help of a tool: its overview and examples, the usage and every option of the
    /// default subcommand (what `tool --flag …` runs), then the other subcommands. A tool without a
    /// default subcommand gets the argument parser's own help, which already shows its options.
    static func teachingHelp() -> String {
        let root = helpMessage()
        guard let action = configuration.defaultSubcommand, let actionName = action.configuration.commandName,
              let tool = configuration.commandName else { return root }
        let sections = HelpSections(root)
        let actionSections = HelpSections(helpMessage(for: action))
        // `dbbackup capture [<options>]` reads `dbbackup [capture] [<options>]`: the name is optional.
        let usage = actionSections.usage.replacingOccurrences(of: "USAGE: \(tool) \(actionName) ", with: "USAGE: \(tool) [\(actionName)] ")
        return ([sections.overview, usage] + actionSections.options + sections.subcommands).filter { !$0.isEmpty }.joined(separator: "\n\n")
    }
}

/// The argument parser's help text cut at its section headings (`USAGE:`, `OPTIONS:`, `SUBCOMMANDS:`,
/// an option group's title), so that two help screens can be put together.
struct HelpSections {
    /// Everything before `USAGE:`: the overview, the discussion and its examples.
    var overview = ""
    var usage = ""
    /// The option groups, each with its heading, in order.
    var options: [String] = []
    /// `SUBCOMMANDS:` and the line after it.
    var subcommands: [String] = []

    init(_ text: String) {
        var blocks: [String] = []
        var current: [Substring] = []
        // A heading is an unindented line ending in ':' right after a blank line (or the start).
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let isHeading = (current.last?.isEmpty ?? true) && !line.hasPrefix(" ") && line.hasSuffix(":") && line == line.uppercased()
            let isUsage = line.hasPrefix("USAGE: ")
            if (isHeading || isUsage), !current.isEmpty {
                blocks.append(current.joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines))
                current = []
            }
            current.append(line)
        }
        blocks.append(current.joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines))
        for block in blocks {
            if block.hasPrefix("USAGE: ") {
                usage = block
            } else if block.hasPrefix("SUBCOMMANDS:") {
                subcommands.append(block)
            } else if usage.isEmpty {
                overview += (overview.isEmpty ? "" : "\n\n") + block
            } else {
                options.append(block)
            }
        }
    }
}

/// Prints a value as JSON on stdout, in the toolkit's one JSON style.
func printJSON<T: Encodable>(_ value: T) throws {
    print(try JSONOutput.string(value))
}
