import ArgumentParser
import BackupStorage
import Foundation
import Gzip
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
        let code = runReturningCode(arguments, standardError: FileHandle.standardError)
        Glibc.exit(code)
    }

    /// Runs the command in-process and returns its exit code (used by tests).
    public static func runReturningCode(_ arguments: [String]?, standardError: FileHandle) -> Int32 {
        let tool = configuration.commandName ?? "dbrecovery"
        // --config must be known before any option group resolves its fallbacks.
        let argv = arguments ?? Array(CommandLine.arguments.dropFirst())
        if let index = argv.firstIndex(of: "--config"), index + 1 < argv.count {
            setenv("DBRECOVERY_CONFIG", argv[index + 1], 1)
        } else if let inline = argv.first(where: { $0.hasPrefix("--config=") }) {
            setenv("DBRECOVERY_CONFIG", String(inline.dropFirst("--config=".count)), 1)
        }
        var command: ParsableCommand
        do {
            command = try parseAsRoot(arguments)
        } catch {
            let code = reportParserError(error, tool: tool, standardError: standardError)
            // `dbrestore wal-fetch` runs as PostgreSQL's restore_command, which reads any exit below 126
            // as "not in the archive" and may end recovery early: a usage error must stop recovery.
            if code == ExitStatus.usage.rawValue, tool == "dbrestore", argv.first == "wal-fetch" {
                return ExitStatus.walFetchFailed.rawValue
            }
            return code
        }
        do {
            try command.run()
            return ExitStatus.success.rawValue
        } catch let code as ArgumentParser.ExitCode {
            // A command's deliberate quiet exit (wal-fetch of an absent .history file): no message.
            return code.rawValue
        } catch let error where isArgumentParserError(error) {
            // `--help` and `help` parse into a HelpCommand whose run() throws the help request.
            return reportParserError(error, tool: tool, standardError: standardError)
        } catch {
            // Every other error reaches the exit-code table, with its own message and a hint.
            let classified = RecoveryError.classify(error).withCleanupSummary()
            RunReporter.current?.failed(classified)
            var text = "\(tool): error: \(classified.message)\n"
            text += "HINT: \(classified.hint ?? classified.code.defaultHint)\n"
            standardError.write(Data(text.utf8))
            return classified.code.rawValue
        }
    }

    /// Whether swift-argument-parser threw `error` (a help request, a validation failure, a clean exit),
    /// as opposed to the command's own work.
    private static func isArgumentParserError(_ error: Error) -> Bool {
        error is ValidationError || error is CleanExit || error is ArgumentParser.ExitCode
            || String(reflecting: type(of: error)).hasPrefix("ArgumentParser.")
    }

    /// Prints an argument-parser error (or `--help`) and returns its exit code: usage errors are 2.
    private static func reportParserError(_ error: Error, tool: String, standardError: FileHandle) -> Int32 {
        let parserCode = exitCode(for: error)
        if parserCode == ArgumentParser.ExitCode.success {
            print(fullMessage(for: error))
            return ExitStatus.success.rawValue
        }
        var message = message(for: error)
        if message.hasPrefix("Error: ") { message.removeFirst("Error: ".count) }
        standardError.write(Data("\(tool): error: \(message)\nHINT: \(tool) --help shows every option with examples\n".utf8))
        return parserCode == ArgumentParser.ExitCode.validationFailure ? ExitStatus.usage.rawValue : parserCode.rawValue
    }
}

/// Prints a value as JSON on stdout, in the toolkit's one JSON style.
func printJSON<T: Encodable>(_ value: T) throws {
    print(try JSONOutput.string(value))
}
